"""The traced model: an ``fx`` graph with every node's output shape and dtype on the example input
(``torch.fx`` ``ShapeProp``)."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from seam.compact.modules import ChannelAdd, FoldedConv2d
from seam.core.errors import SeamError

__all__ = ["CompactError", "TracedGraph", "internal_error", "trace"]

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class CompactError(SeamError, ValueError):
    """The model cannot be traced or compacted exactly."""


def internal_error(message: str) -> Exception:
    """The exception for a bug in the compaction, not in the user's model.

    A plain RuntimeError, not a :class:`CompactError`: stages print a SeamError as one line
    without a traceback, and a bug needs its traceback.
    """
    return RuntimeError(f"internal error: {message}")


class _Tracer(fx.Tracer):
    """``torch.nn`` modules and this package's own layers are leaves; custom modules are traced."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (FoldedConv2d, ChannelAdd)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as an ``fx.GraphModule``; a :class:`CompactError` if fx cannot trace it."""
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...)
        raise CompactError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "compact needs a model without data-dependent control flow") from exc


class TracedGraph:
    """A traced model run once on the example input: node shapes, dtypes, order and helpers."""

    def __init__(self, gm: fx.GraphModule, example_input: torch.Tensor):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        with torch.no_grad():
            self.reference = ShapeProp(gm).propagate(example_input)
        # Nodes whose output is one tensor; ShapeProp also annotates tuples of tensors (and the
        # output node), which have no channel dim of their own.
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.dtypes: dict[fx.Node, torch.dtype] = {}
        for n in gm.graph.nodes:
            meta = n.meta.get("tensor_meta")
            if isinstance(meta, TensorMetadata) and n.op != "output":
                self.shapes[n] = tuple(meta.shape)
                self.dtypes[n] = meta.dtype
        self.nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}

    def is_ch(self, n: Any) -> bool:
        """True for a node whose output is a tensor with a channel dimension (dim 1)."""
        return isinstance(n, fx.Node) and self.shapes.get(n) is not None and len(self.shapes[n]) >= 2

    def channels(self, n: fx.Node) -> int:
        return self.shapes[n][1]

    def ndim(self, n: fx.Node) -> int:
        return len(self.shapes[n])

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if self.is_ch(n)]

    def first(self, node: fx.Node) -> fx.Node | None:
        """The first argument when it and the node's output are channel tensors, else None."""
        if not node.args or not self.is_ch(node.args[0]) or not self.is_ch(node):
            return None
        return node.args[0]

    def inplace(self, node: fx.Node) -> bool:
        """True for a node that (by its name or flag) writes into its first argument."""
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op == "call_function":
            return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))
        if node.op == "call_method":
            return node.target.endswith("_") and not node.target.startswith("__")
        return False

    def get_attr(self, target: str) -> Any:
        obj: Any = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj
