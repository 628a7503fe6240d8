"""The handler base class, the opaque / input / output / shape handlers, the helpers the
handler families share, and :class:`CompactBuilder`: the part of the rewriter a handler sees."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Protocol

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from seam.compact.graph import TracedGraph

__all__ = ["ALWAYS_LIVE", "CompactBuilder", "InputOp", "OpHandler", "OutputOp", "ShapeOp", "base_type", "call_arg",
           "nans", "pairs", "removed_layer_entry"]


class CompactBuilder(Protocol):
    """What a handler's :meth:`OpHandler.rewrite` may read and do while the compact graph is
    built (``seam.compact.rewriter.Rewriter`` implements it). Handlers see nothing else of
    the rewriter, so its state stays in one place."""

    def kept(self, n: fx.Node) -> torch.Tensor:
        """bool [C]: the channels of ``n`` present in the compact model."""

    def constants(self, n: fx.Node) -> torch.Tensor:
        """float64 [C]: the constant value of each channel of ``n``, NaN where variable."""

    def lookup(self, n: fx.Node) -> fx.Node:
        """The compact graph's node for the original node ``n``."""

    def call_module(self, target: str, module: nn.Module, args: tuple) -> fx.Node:
        """A call of the new ``module``, registered under ``target`` (made unique)."""

    def call_function(self, fn: Callable, args: tuple, kwargs: dict[str, Any] | None = None) -> fx.Node:
        """A call of ``fn`` in the compact graph."""

    def copy_node(self, n: fx.Node) -> fx.Node:
        """``n`` as it is, with a copy of the module or attribute it uses."""

    def fresh_name(self, prefix: str) -> str:
        """``prefix_1``, ``prefix_2``, ...: a new name for a module the compaction adds."""

    def record_layer(self, target: str, entry: dict[str, Any]) -> None:
        """The report entry of layer ``target`` (``type``, ``in`` / ``out`` as ``[before, after]``, ...)."""

    def record_removed(self, target: str, entry: dict[str, Any]) -> None:
        """Like :meth:`record_layer`, for a layer with no channel left."""

    def count_kept_zeros(self, count: int) -> None:
        """Add ``count`` zero weights that the compact model still holds."""

    def count_fold_params(self, count: int) -> None:
        """Add ``count`` numbers that the compact model adds to hold folded constants."""


# --- helpers ----------------------------------------------------------------------------------

ALWAYS_LIVE = "always live"  # the liveness source of a channel that varies whatever the keeps


def base_type(m: nn.Module) -> type:
    """The module's class, seen through ``torch.nn.utils.parametrize`` (masks still attached)."""
    if parametrize.is_parametrized(m):
        return type(m).__bases__[0]
    return type(m)


def pairs(w: torch.Tensor) -> torch.Tensor:
    """[O, I, *kernel] -> [O, I, prod(kernel)] (also for empty tensors and linear weights)."""
    return w.reshape(w.shape[0], w.shape[1], math.prod(w.shape[2:]))


def nans(c: int) -> torch.Tensor:
    """float64 [c] of NaN: ``c`` variable channels."""
    return torch.full((c,), math.nan, dtype=torch.float64)


def call_arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` (positional) or ``name`` (keyword) of a call node."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def removed_layer_entry(g: TracedGraph, node: fx.Node, x: fx.Node, module: nn.Module) -> dict[str, Any]:
    """The report entry of a layer on input ``x`` with no channel left."""
    return {"type": base_type(module).__name__, "in": [g.channels(x), 0], "out": [g.channels(node), 0]}


# --- the base handler: opaque ops ------------------------------------------------------------


class OpHandler:
    """A node the analysis does not understand: all channels of its inputs and output are kept.

    One instance per graph node; ``inputs`` are the channel tensors (nodes) it reads.
    Subclasses override :meth:`match` (recognise a node), :meth:`constants`,
    :meth:`need_inputs`, :meth:`keep`, :meth:`live_sources`, :meth:`ties` and :meth:`rewrite`.
    """

    keeps_all = True  # every output channel is kept, and the node is never removed
    pure = False  # may be erased from the compact graph when nothing reads it
    needs_first = True  # match() needs a channel-tensor first argument and output

    def __init__(self, node: fx.Node, inputs: list[fx.Node] | None = None):
        self.node = node
        self.inputs = list(inputs or [])

    @classmethod
    def match(cls, g: TracedGraph, node: fx.Node, x: fx.Node | None) -> OpHandler | None:
        """The handler for ``node`` (first channel argument ``x``), or None if this kind does not fit."""
        return None

    def constants(self, g: TracedGraph, cval: dict) -> torch.Tensor:
        """float64 [C]: each output channel's constant value, NaN where variable."""
        return nans(g.channels(self.node))

    def need_inputs(self, g: TracedGraph, need: dict, cval: dict, must_exist: set) -> None:
        """Mark the input channels that the kept output channels read (``need[input]``, in place).

        ``must_exist`` collects inputs that must stay in the graph even with no channel needed.
        """
        for i in self.inputs:
            need[i][:] = True

    def keep(self, g: TracedGraph, need: dict, keep: dict) -> torch.Tensor:
        """The output channels present in the compact model (inputs' ``keep`` already known)."""
        return need[self.node].clone()

    def live_sources(self, g: TracedGraph, sources: dict[fx.Node, list[Counter]]) -> list[Counter]:
        """Per output channel, the multiset of sources its liveness is made of (``sources``:
        the inputs' already). A source is :data:`ALWAYS_LIVE`, or ``(conv/linear node, row)``:
        live as far as the row is kept and any input channel of that layer is live (a removed
        row's channel is a constant, which the compact model folds away), or a key that
        ``seam.compact.liveness`` puts in for a channel it has already evaluated; handlers pass
        keys on without looking inside. A channel is live when any of its sources is; one with
        no source is a constant. An opaque op's channels always vary."""
        return [Counter({ALWAYS_LIVE: 1}) for _ in range(g.channels(self.node))]

    def _tied_sources(self, g: TracedGraph, sources: dict[fx.Node, list[Counter]]) -> list[Counter]:
        """Each output channel made of the sources of the input channels it is tied to."""
        out = [Counter() for _ in range(g.channels(self.node))]
        for dst, x, src in self.ties(g):
            for d, s in zip(dst.tolist(), src.tolist()):
                out[d].update(sources[x][s])
        return out

    def ties(self, g: TracedGraph) -> list[tuple[torch.Tensor, fx.Node, torch.Tensor]]:
        """``(output channels, input, its channels)``: channels that a channel search must keep
        or remove together (the same channel, or summed by an add). Empty for an opaque op."""
        return []

    def removed(self, g: TracedGraph, rw: CompactBuilder) -> None:
        """Called instead of :meth:`rewrite` when no output channel is kept."""

    def rewrite(self, g: TracedGraph, rw: CompactBuilder) -> fx.Node:
        """The node's replacement in the compact graph."""
        return rw.copy_node(self.node)


class InputOp(OpHandler):
    """A model input: all its channels exist."""


class OutputOp(OpHandler):
    """The model output: reads all channels of what it returns."""

    keeps_all = False


class ShapeOp(OpHandler):
    """``x.size(d)`` (d != 1) or ``x.dim()``: needs ``x`` to exist, not any channel of it."""

    keeps_all = False
    pure = True
    needs_first = False

    @classmethod
    def match(cls, g, node, x):
        if node.op != "call_method" or not node.args or not g.is_ch(node.args[0]):
            return None
        if node.target == "size":
            dim = call_arg(node, 1, "dim")
            if not isinstance(dim, int) or dim % g.ndim(node.args[0]) == 1:
                return None
        return cls(node, [node.args[0]])

    def need_inputs(self, g, need, cval, must_exist):
        must_exist.update(self.inputs)
