"""The driver: trace, classify, run the passes, check the compact model, report."""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten

from seam.compact.graph import CompactError, TracedGraph, internal_error, trace
from seam.compact.modules import FoldedConv2d
from seam.compact.ops import WeightedOp, classify
from seam.compact.liveness import LivenessPlan
from seam.compact.passes import channel_groups, constants, keeps, mutated_late, needs
from seam.compact.rewriter import Rewriter
from seam.models.masks import MASKABLE

__all__ = ["ChannelCost", "compact", "count_params"]


def _conv_like(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear))


def count_params(model: nn.Module) -> int:
    """Conv + linear weights and biases (and folded-constant kernels) of ``model``."""
    total = 0
    for m in model.modules():
        if _conv_like(m):
            total += m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        if isinstance(m, FoldedConv2d):
            total += m.const_kernel.numel()
    return total


def compact(model: nn.Module, example_input: torch.Tensor, *, atol: float = 1e-4) -> tuple[nn.Module, dict]:
    """A dense model without the dead channels of ``model``, and a report.

    ``model`` (left unchanged) is typically a re-engineered model with masked weights zeroed;
    ``example_input`` fixes the shapes of the trace and checks the result: if the compact
    model's output differs from ``model``'s by more than ``atol`` (relative to the output's
    scale) a :class:`CompactError` is raised.

    Report keys: ``params_before`` / ``params_after`` (conv + linear weights and biases, plus
    folded-constant kernels after), ``zero_weights_before``, ``zero_weights_removed``,
    ``structural_zero_share`` (= removed / before), ``nonzero_weights_removed``,
    ``fold_params`` (folded-constant kernels and new biases), ``layers`` (per conv / linear /
    BatchNorm: ``in`` and ``out`` channels as ``[before, after]``, ``folded_inputs``),
    ``channels_removed`` (layer -> output channels removed), ``removed_layers`` (layers with
    no channel left), ``max_abs_diff`` on ``example_input``.
    """
    _check_arguments(model, example_input)
    device = example_input.device
    # The analysis and the rewrite run on a CPU copy; the result moves to the input's device.
    g = TracedGraph(trace(copy.deepcopy(model).cpu()), example_input.detach().cpu())
    ops = {n: classify(g, n) for n in g.nodes}
    mutated = mutated_late(g, ops)
    with torch.no_grad():
        cval = constants(g, ops, mutated)
        need = needs(g, ops, cval)
        keep = keeps(g, ops, need)
        new_gm, report = Rewriter(g, ops, cval, keep).run()
        new_gm.eval()
        got = new_gm(example_input.detach().cpu())
    report["max_abs_diff"] = _max_diff(g.reference, got, atol)
    report["params_before"] = count_params(model)
    report["params_after"] = count_params(new_gm)
    return new_gm.to(device), _finish_report(model, report)


class ChannelCost:
    """How many of ``model``'s conv/linear weights and biases a set of kept output channels
    leaves in the compact model: a layer keeps (its kept rows) x (its live input channels) x
    (kernel entries), plus its kept bias entries. An input channel is live when it still
    varies with the input (``seam.compact.liveness``): a removed channel is a constant, which
    the compact model folds into its consumers, so removing it also removes their input slices.

    Traced once on ``example_input``; calling it on ``{module name: [C_out] keep in [0, 1]}``
    (missing modules keep every row) is differentiable in the keeps, and takes a few tensor
    ops per conv/linear input, not per op of the model (a channel search calls it on every
    batch). A layer the analysis does not follow counts as its rows times their full width.
    ``macs``: count each weight once per output position (multiply-accumulates, what a dense
    engine computes) instead of once.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, macs: bool = False):
        self.g = TracedGraph(trace(copy.deepcopy(model).cpu().eval()), example_input.detach().cpu())
        self.ops = {n: classify(self.g, n) for n in self.g.nodes}
        self.inputs = {op.node.target: op.inputs[0] for op in self.ops.values() if isinstance(op, WeightedOp)}
        # per layer: rows, entries per row, entries per (row, input channel), bias entries per row
        self.shapes = {name: (m.weight.shape[0], m.weight[0].numel(), m.weight[0, 0].numel(), int(m.bias is not None))
                       for name, m in model.named_modules() if isinstance(m, MASKABLE)}
        # per layer: what one weight counts (its output positions, for MACs)
        self.positions = {op.node.target: math.prod(self.g.shapes[op.node][2:]) if macs else 1
                          for op in self.ops.values() if isinstance(op, WeightedOp)}
        self.total = sum(rows * (width + bias) * self.positions.get(name, 1)
                         for name, (rows, width, _, bias) in self.shapes.items())
        self._outputs = [x for op in self.ops.values() if op.node.op == "output" for x in op.inputs]
        self.plan = LivenessPlan(self.g, self.ops, {name: shape[0] for name, shape in self.shapes.items()},
                                 self._outputs)
        self._terms = self._term_factors()
        self._devices: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def _term_factors(self) -> tuple[torch.Tensor, ...]:
        """Per layer (``shapes`` order), the factors of its count ``rows * (width + bias) *
        positions``, where width = (live input channels) x kernel, or the full width for a
        layer the analysis does not follow: [tracked tensors, layers] 0/1, which tensor is
        its input (a product, not an index: several layers may read one tensor, and the
        gradient of an index sums theirs in a different order on every GPU run); kernel;
        the fixed part; positions."""
        tensor_of = {n: t for t, n in enumerate(self.plan.nodes)}
        reads = torch.zeros(len(self.plan.nodes), len(self.shapes), dtype=torch.float64)
        kernel, fixed, positions = [], [], []
        for k, (name, (_, width, per_channel, bias)) in enumerate(self.shapes.items()):
            x = self.inputs.get(name)
            if x is not None:
                reads[tensor_of[x], k] = 1
            kernel.append(per_channel if x is not None else 0)
            fixed.append(bias if x is not None else width + bias)
            positions.append(self.positions.get(name, 1))
        return reads, torch.tensor(kernel, dtype=torch.float64), torch.tensor(fixed, dtype=torch.float64), \
            torch.tensor(positions, dtype=torch.float64)

    def row_groups(self) -> dict[str, torch.Tensor]:
        """Per conv/linear module: a group id per output row. Rows in one group feed the same
        channels of a residual sum (``passes.channel_groups``), so a channel search gives them
        one score: removing one alone would leave the sum's channel alive."""
        groups = self._channel_groups
        return {op.node.target: groups[op.node] for op in self.ops.values() if isinstance(op, WeightedOp)}

    def output_layers(self) -> set[str]:
        """The conv/linear modules whose rows are the model's output channels (through
        channel-wise ops): the compact model keeps those rows, since the output shows them."""
        groups = self._channel_groups
        out = {int(i) for op in self.ops.values() if op.node.op == "output"
               for x in op.inputs if x in groups for i in groups[x]}
        return {name for name, rows in self.row_groups().items() if set(rows.tolist()) <= out}

    @functools.cached_property
    def _channel_groups(self) -> dict:
        return channel_groups(self.g, self.ops)

    def output_varies(self, keep: dict[str, torch.Tensor]) -> bool:
        """Whether the model's output still depends on its input with these rows kept."""
        with torch.no_grad():
            maxes = self.plan(self.plan.flat_keep(keep)).maxes
        return any(bool(maxes[self.plan.nodes.index(x)] > 0) for x in self._outputs)

    def live(self, keep: dict[str, torch.Tensor]) -> dict[fx.Node, torch.Tensor]:
        """Per conv/linear input and model output (by traced node): which channels still vary
        with the input, in [0, 1], differentiable in ``keep``."""
        return self.plan.channels(self.plan(self.plan.flat_keep(keep)).live)

    def __call__(self, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = self.plan.flat_keep(keep)
        sums = self.plan.sums(self.plan(flat).live)
        reads, kernel, fixed, positions = self._factors(sums)
        # a product and a sum, not a matmul, which autocast would run in bfloat16: exact, one term per layer
        width = (sums[:, None] * reads).sum(0) * kernel + fixed
        counts = self.plan.kept_rows(flat) * width * positions
        # summed in float64: a MACs count passes 2^24, beyond which float32 drops units
        return counts.double().sum().to(counts.dtype)

    def _factors(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`_term_factors` on ``like``'s device and in its dtype (all exact there)."""
        key = (like.device, like.dtype)
        if key not in self._devices:
            self._devices[key] = tuple(t.to(like.device, like.dtype) for t in self._terms)
        return self._devices[key]


def _check_arguments(model: nn.Module, example_input: torch.Tensor) -> None:
    if not isinstance(model, nn.Module):
        raise CompactError(f"compact needs an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise CompactError("example_input must be a tensor")
    training = [name for name, m in model.named_modules()
                if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))]
    if training:
        raise CompactError(f"{training[0]} is in training mode; compaction is exact for inference only: "
                           "call model.eval() first")


def _max_diff(reference: object, got: object, atol: float) -> float:
    """Max |reference - got| over the output tensors; a CompactError beyond ``atol`` (times the scale)."""
    ref_flat, _ = tree_flatten(reference)
    got_flat, _ = tree_flatten(got)
    diff = 0.0
    if len(ref_flat) != len(got_flat):
        raise internal_error("the compact model's output structure differs")
    for r, g in zip(ref_flat, got_flat):
        if isinstance(r, torch.Tensor):
            if not isinstance(g, torch.Tensor) or r.shape != g.shape:
                raise internal_error("the compact model's output shape differs")
            if r.numel():
                d = float((r.double() - g.double()).abs().max())
                diff = max(diff, d)
                scale = max(1.0, float(r.double().abs().max()))
                if not math.isfinite(d) or d > atol * scale:
                    raise CompactError(f"compaction is not exact on the example input (max |diff| {d:.3g}); "
                                       "refusing to return a wrong model")
    return diff


def _finish_report(model: nn.Module, report: dict) -> dict:
    """The public report: weight counts of ``model`` and the rewrite's layer report."""
    zeros_before = 0
    nonzero_before = 0
    for m in {id(m): m for m in model.modules() if _conv_like(m)}.values():
        for t in (m.weight, m.bias):
            if t is not None:
                z = int((t.detach() == 0).sum())
                zeros_before += z
                nonzero_before += t.numel() - z
    zeros_kept = report.pop("_zeros_kept")
    removed_zero = max(0, zeros_before - zeros_kept)
    kept_original = report["params_after"] - report["fold_params"]
    removed_total = max(0, report["params_before"] - kept_original)
    out = {
        "params_before": report["params_before"],
        "params_after": report["params_after"],
        "fold_params": report["fold_params"],
        "zero_weights_before": zeros_before,
        "zero_weights_removed": removed_zero,
        "structural_zero_share": removed_zero / zeros_before if zeros_before else 0.0,
        "nonzero_weights_removed": max(0, removed_total - removed_zero),
        "channels_removed": {k: v["out"][0] - v["out"][1] for k, v in report["layers"].items()
                             if v["out"][0] != v["out"][1]},
        "removed_layers": report["removed_layers"],
        "layers": report["layers"],
        "max_abs_diff": report["max_abs_diff"],
    }
    return out
