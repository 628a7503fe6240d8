"""What one mask score decides: a single weight (the paper) or a whole output channel.

Both search the same objective, CE + alpha x (share kept: of the weights, as in the paper,
or with ``reengineer.cost: macs`` of the multiply-accumulates), with the same
straight-through estimator; they differ in how the masks attach to the model and in how the
kept share is counted. ``weight`` (the default) reproduces the paper: the result is sparse,
faster on a sparse engine (DeepSparse) only. ``channel`` removes whole channels, so the
compact export (``seam.compact``) is a smaller, plain dense model.
"""

from __future__ import annotations

from typing import Protocol, get_args

import torch
from torch import nn
from torch.nn.utils import parametrize

from seam.compact import ChannelCost
from seam.core.params import ReengineerParams
from seam.models.masks import (
    MASKABLE,
    ChannelGate,
    ChannelScoreMask,
    attach_masks,
    maskable_tensors,
    norms_after,
    retention,
)

# the choices params.yaml allows (its schema is where they are declared)
NAMES = get_args(ReengineerParams.model_fields["granularity"].annotation)
COSTS = get_args(ReengineerParams.model_fields["cost"].annotation)


class Granularity(Protocol):
    def attach(self, model: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, nn.Module]:
        """Register the masks on ``model``'s conv/linear tensors; by tensor name."""

    def retention(self, masks: dict[str, nn.Module]) -> torch.Tensor:
        """The share kept (of the weights, or of the MACs), differentiable in the scores."""


class WeightGranularity:
    """One score per weight and bias entry: the kept share is the share of kept entries (with
    ``macs``, each counted once per output position of its layer)."""

    def __init__(self, model: nn.Module | None = None, example_input: torch.Tensor | None = None,
                 macs: bool = False):
        self.weights = _per_entry_macs(model, example_input) if macs else None

    def attach(self, model, skip=()):
        return attach_masks(model, skip=skip)

    def retention(self, masks):
        return retention(masks, self.weights)


class ChannelGranularity:
    """One score per output channel of each conv/linear, shared by its filter, its bias and the
    BatchNorm channel right after it: a removed channel is exactly zero, so the compact model
    only slices (no constant to fold). Rows that feed the same channels of a residual sum
    share one score (:meth:`ChannelCost.row_groups`): every input of the add keeps the same
    channels, so the compact add stays a plain add. The kept share counts what the compact
    model keeps (:class:`ChannelCost`): a removed channel takes its filter and bias and its
    consumers' input slices (with ``macs``, each weight once per output position).
    ``round_to``: each conv keeps a multiple of this many channels, the extra ones chosen by
    score (:class:`seam.models.masks.ChannelGate`); a unit the output cannot do without keeps one
    block.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, round_to: int = 1, macs: bool = False):
        self.cost = ChannelCost(model, example_input, macs=macs)
        self.round_to = round_to
        self.groups = self.cost.row_groups()
        self.norms = norms_after(model)
        self.output_layers = self.cost.output_layers()
        self._rows: dict[str, ChannelScoreMask] = {}

    def attach(self, model, skip=()):
        masks = attach_masks(model, skip=skip, groups=self.groups, block=self.round_to)
        self._rows = {name.rpartition(".")[0]: m for name, m in masks.items()}
        self._keep_vital_units(next(iter(self._rows.values())).gate)
        for layer, norm in self.norms.items():
            if layer in self._rows:
                gate_norm(model.get_submodule(norm), self._rows[layer])
        return masks

    @property
    def rows(self) -> dict[str, ChannelScoreMask]:
        """The weight's channel mask of every masked layer, by layer name (after :meth:`attach`)."""
        return self._rows

    def _keep_vital_units(self, gate: ChannelGate) -> None:
        # The output layer keeps every row: the compact model keeps them anyway (the output
        # shows them), and with them gone the head's ReLU saw no positive input (a search
        # with cost macs kept 1 of 10 rows, positive on 0.6% of images, and lost all gradient).
        # Any other unit (a layer's channels, or a residual stream's) without which the output
        # no longer depends on the input keeps one block: removing it all would end the search.
        outputs = [set(self._rows[layer].index.tolist()) for layer in self.output_layers if layer in self._rows]
        for i, unit in enumerate(gate.units):
            if set(unit.tolist()) in outputs:
                gate.require(i, len(unit))
                continue
            keep = {layer: (~torch.isin(m.index, unit)).float() for layer, m in self._rows.items()}
            if not self.cost.output_varies(keep):
                gate.require(i, gate.blocks[i])

    def retention(self, masks):
        keep = {layer: m.row_keep() for layer, m in self._rows.items()}
        return self.cost(keep) / self.cost.total


def gate_norm(norm: nn.Module, row_mask: ChannelScoreMask) -> None:
    """Multiply ``norm``'s weight and bias by the conv's channel keep (same scores)."""
    for pname in ("weight", "bias"):
        if getattr(norm, pname, None) is not None:
            parametrize.register_parametrization(
                norm, pname, ChannelScoreMask(getattr(norm, pname), row_mask.gate, row_mask.index))


def granularity(name: str, model: nn.Module, example_input: torch.Tensor, *, round_to: int = 1,
                cost: str = "weights") -> Granularity:
    """The granularity called ``name`` (``reengineer.granularity``) for ``model``, whose kept share
    counts ``cost``: ``weights`` (the paper) or ``macs`` (multiply-accumulates). The channel
    count, and the MACs, trace ``model`` once on ``example_input`` (a normalised batch).
    ``round_to``: see :class:`ChannelGranularity`."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    if name == "weight":
        return WeightGranularity(model, example_input, macs=cost == "macs")
    if name == "channel":
        return ChannelGranularity(model, example_input, round_to, macs=cost == "macs")
    raise ValueError(f"granularity must be one of {NAMES}, got {name!r}")


def _per_entry_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Per masked tensor name: the output positions of its layer (a weight's MACs per image)."""
    positions: dict[str, int] = {}

    def record(name: str):
        return lambda module, args, out: positions.__setitem__(name, out[0, 0].numel())

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if isinstance(m, MASKABLE)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return {name: positions.get(name.rpartition(".")[0], 1) for name, _, _ in maskable_tensors(model)}
