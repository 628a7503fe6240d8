"""Which handler a node gets: the tables from module types, functions and method names to
handler classes, and :func:`classify`, which asks the chosen class to match the node."""

from __future__ import annotations

import operator
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from seam.compact.graph import TracedGraph
from seam.compact.ops.add import ADD_FUNCTIONS, AddOp
from seam.compact.ops.base import InputOp, OpHandler, OutputOp, ShapeOp
from seam.compact.ops.channelwise import (
    ACT_FUNCTIONS,
    ACT_METHODS,
    ACT_MODULES,
    IDENTITY_METHODS,
    PAD_FUNCTIONS,
    BatchNormOp,
    CatOp,
    ElementwiseOp,
    FlattenOp,
    GetItemOp,
    MeanOp,
    PadOp,
    PoolOp,
)
from seam.compact.ops.weighted import ConvOp, LinearOp

__all__ = ["classify"]

# Leaf modules, by isinstance, first match wins (a handler's match() makes the exact checks).
_MODULE_HANDLERS: list[tuple[tuple[type, ...], type[OpHandler]]] = [
    ((nn.Conv2d,), ConvOp),
    ((nn.Linear,), LinearOp),
    ((nn.BatchNorm1d, nn.BatchNorm2d), BatchNormOp),
    (ACT_MODULES + (nn.Identity, nn.modules.dropout._DropoutNd), ElementwiseOp),
    ((nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d), PoolOp),
    ((nn.Flatten,), FlattenOp),
]
_FUNCTION_HANDLERS: dict[Callable, type[OpHandler]] = {
    **dict.fromkeys(ADD_FUNCTIONS, AddOp),
    torch.cat: CatOp,
    **dict.fromkeys(ACT_FUNCTIONS | {F.dropout}, ElementwiseOp),
    operator.getitem: GetItemOp,
    **dict.fromkeys(PAD_FUNCTIONS, PadOp),
    torch.flatten: FlattenOp,
    **dict.fromkeys((F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, F.avg_pool2d), PoolOp),
    torch.mean: MeanOp,
}
_METHOD_HANDLERS: dict[str, type[OpHandler]] = {
    "size": ShapeOp, "dim": ShapeOp, "add": AddOp,
    **dict.fromkeys(ACT_METHODS | IDENTITY_METHODS, ElementwiseOp),
    "mean": MeanOp, "flatten": FlattenOp, "view": FlattenOp, "reshape": FlattenOp,
}


def _handler_class(g: TracedGraph, node: fx.Node) -> type[OpHandler] | None:
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs:  # a leaf module called on one tensor
            return None
        m = g.modules[node.target]
        return next((cls for types, cls in _MODULE_HANDLERS if isinstance(m, types)), None)
    if node.op == "call_function":
        return _FUNCTION_HANDLERS.get(node.target)
    if node.op == "call_method":
        return _METHOD_HANDLERS.get(node.target)
    return None


def _is_activation(g: TracedGraph, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(g.modules[node.target], ACT_MODULES)
    return node.op == "call_function" and node.target in ACT_FUNCTIONS


def classify(g: TracedGraph, node: fx.Node) -> OpHandler:
    """The handler for ``node``; an opaque :class:`OpHandler` when no kind fits."""
    if node.op == "placeholder":
        return InputOp(node) if g.is_ch(node) else OpHandler(node)
    if node.op == "output":
        return OutputOp(node, g.tensor_inputs(node))
    opaque = OpHandler(node, g.tensor_inputs(node))
    if g.inplace(node) and not _is_activation(g, node):
        return opaque  # an in-place op is left as it is unless it is a pure activation
    try:
        cls = _handler_class(g, node)
        if cls is None:
            return opaque
        x = g.first(node) if cls.needs_first else None
        if cls.needs_first and x is None:
            return opaque
        return cls.match(g, node, x) or opaque
    except (TypeError, ValueError, IndexError, KeyError):  # unusual arguments: not understood
        return opaque
