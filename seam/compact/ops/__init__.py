"""One handler per kind of graph node: how it is recognised, what it does to constant channels,
which input channels it needs, which it keeps, how liveness and channel ties flow through it,
and how it is rewritten in the compact graph.

Like Torch-Pruning's one pruner per layer type, each :class:`OpHandler` subclass holds
everything the passes (``seam.compact.passes``) need to know about one kind of op;
:func:`classify` picks the handler for a node. By family: ``base`` (the opaque handler,
inputs, outputs, shape queries, and :class:`CompactBuilder`, all a handler's rewrite sees of
the rewriter), ``weighted`` (conv, linear), ``channelwise`` (:class:`ChannelMap` s:
activations, pooling, BatchNorm, flatten, slicing, padding, cat: output channel ``j`` is
input ``src_arg[j]``'s channel ``src_ch[j]``, or the constant ``fill`` where ``src_arg`` is
-1, so their channels are kept or removed together), ``add`` (residual adds), ``registry``
(:func:`classify`). Anything not recognised is a plain :class:`OpHandler`, which is opaque:
every channel it reads or writes is kept.
"""

from seam.compact.graph import internal_error
from seam.compact.ops.add import AddOp
from seam.compact.ops.base import (
    ALWAYS_LIVE,
    CompactBuilder,
    InputOp,
    OpHandler,
    OutputOp,
    ShapeOp,
    base_type,
    pairs,
)
from seam.compact.ops.channelwise import (
    BatchNormOp,
    CatOp,
    ChannelMap,
    ElementwiseOp,
    FlattenOp,
    GetItemOp,
    MeanOp,
    PadOp,
    PoolOp,
)
from seam.compact.ops.registry import classify
from seam.compact.ops.weighted import ConvOp, LinearOp, WeightedOp

__all__ = ["ALWAYS_LIVE", "AddOp", "BatchNormOp", "CatOp", "ChannelMap", "CompactBuilder", "ConvOp", "ElementwiseOp",
           "FlattenOp", "GetItemOp", "InputOp", "LinearOp", "MeanOp", "OpHandler", "OutputOp", "PadOp", "PoolOp",
           "ShapeOp", "WeightedOp", "base_type", "classify", "internal_error", "pairs"]
