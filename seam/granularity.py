"""What one mask score decides: a single weight (the paper) or a whole output channel.

Both search the same objective, CE + alpha x (share of the weights kept), with the same
straight-through estimator; they differ in how the masks attach to the model and in how the
kept share is counted. ``weight`` (the default) reproduces the paper: the result is sparse,
faster on a sparse engine (DeepSparse) only. ``channel`` removes whole filters, so the compact
export (``seam.compact``) is a smaller dense model (with independent residual scores not yet a
faster one: see the README).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from seam.compact import ChannelCost
from seam.masking import attach_masks, binarize, retention

NAMES = ("weight", "channel")


class Granularity(Protocol):
    def attach(self, model: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, nn.Module]:
        """Register the masks on ``model``'s conv/linear tensors; by tensor name."""

    def retention(self, masks: dict[str, nn.Module]) -> torch.Tensor:
        """The share of the weights kept, differentiable in the scores."""


class WeightGranularity:
    """One score per weight and bias entry: the kept share is the share of kept entries."""

    def attach(self, model, skip=()):
        return attach_masks(model, skip=skip)

    def retention(self, masks):
        return retention(masks)


class ChannelGranularity:
    """One score per output channel of each conv/linear, shared by its filter and bias. The kept
    share counts what the compact model keeps: a removed channel takes its filter and bias,
    and (it is a constant, folded away) its consumers' input slices (:class:`ChannelCost`).

    Channels joined by a residual add keep independent scores: the add's output channel lives
    while any input's does, and the compact export aligns inputs whose kept channels differ.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor):
        self.cost = ChannelCost(model, example_input)
        self._rows: dict[str, nn.Module] = {}

    def attach(self, model, skip=()):
        masks = attach_masks(model, skip=skip, per_channel=True)
        # a layer's weight and bias masks share one score tensor: one entry per layer
        self._rows = {name.rpartition(".")[0]: m for name, m in masks.items()}
        return masks

    def retention(self, masks):
        keep = {layer: binarize(m.scores) for layer, m in self._rows.items()}
        return self.cost(keep) / self.cost.total


def granularity(name: str, model: nn.Module, example_input: torch.Tensor) -> Granularity:
    """The granularity called ``name`` (``reengineer.granularity``) for ``model``; the channel
    count traces ``model`` once on ``example_input`` (a normalised batch)."""
    if name == "weight":
        return WeightGranularity()
    if name == "channel":
        return ChannelGranularity(model, example_input)
    raise ValueError(f"granularity must be one of {NAMES}, got {name!r}")
