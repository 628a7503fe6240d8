"""Compaction: turn a masked (re-engineered) model into a smaller *dense* model with the same
predictions, by removing channels that the masks made dead.

SeaM masks are unstructured, so a masked model is as large and as slow as the original in a
dense engine. Whole channels often end up dead, though, and those can be cut out:

    compact_model, report = compact(model, example_input)

How it works (model-agnostic, on a ``torch.fx`` graph):

1. Trace a copy of the model with ``torch.fx`` (``torch.nn`` modules are leaves, custom
   modules are traced through) and record every node's output shape on ``example_input``
   (``torch.fx.passes.shape_prop.ShapeProp``).
2. Forward **constant analysis**: every channel (dim 1) of every tensor is either a known
   constant (same value at every position and for every input) or variable. A conv row whose
   weights are all zero outputs its bias; eval-BatchNorm maps a constant ``x`` to
   ``(x - mean) / sqrt(var + eps) * gamma + beta``; ReLU maps ``k`` to ``max(k, 0)``; adds
   add constants; option-A channel padding creates zero channels; pooling keeps constants,
   except average pooling with padding (then only zero stays constant).
3. Backward **need analysis** in reverse topological order (one pass over a DAG reaches the
   fixed point): a channel is needed when a kept output of a consumer reads it (a conv or
   linear row with a non-zero weight on it, an add output channel, anything we do not
   understand, the model output). Constant channels are not needed by conv/linear/add
   consumers: their contribution is folded (below).
4. Channels tied by channel-wise ops (BatchNorm, activations, pooling, slicing, flatten,
   channel padding, cat) are kept or removed together. Residual adds do *not* tie their
   inputs: an add is rewritten as a :class:`ChannelAdd` that aligns inputs whose kept
   channels differ (index_add) and adds the folded constants of removed constant inputs.
   So a dead residual branch (constant after BN) reduces to ``shortcut + constant``. An
   option-A shortcut's zero padding channels stay where the add keeps that channel (a wider
   pad costs nothing; aligning the add's inputs costs an index-add) and disappear elsewhere.
   A channel search (``seam.reengineer.granularity``) gives every input of an add the same channels,
   so its adds stay plain.
5. Rewrite: convs / linears / BNs are sliced to their kept rows and columns, pads get new
   amounts, cats lose empty inputs; everything else is copied. The result is checked on
   ``example_input`` against the original; a mismatch raises :class:`CompactError` rather
   than returning a wrong model.

The code, each module importing only those listed before it: ``modules`` holds the compact
model's own layers, ``graph`` the trace, ``ops`` one handler per kind of op (how it is
recognised and what it does in each pass; a package by op family: ``base``, ``add``,
``weighted``, ``channelwise``, and ``registry``, which picks the handler), ``passes`` the
analysis passes, ``rewriter`` the rewrite (handlers reach it only through the small
``ops.base.CompactBuilder`` protocol, so they never import it), ``liveness`` the channel
liveness a channel search counts (index tensors compiled once, a few tensor ops per tracked
tensor per call), ``core`` the driver :func:`compact` and :class:`ChannelCost`.

Anything not understood (a custom op, a multiplication, an in-place op that others observe,
BatchNorm/dropout in training mode, grouped convs, ...) is treated as opaque: all channels of
its inputs and outputs are kept, so the result stays exact, only less compact.

Design decision: non-zero constant channels feeding a zero-padded conv
-------------------------------------------------------------------
A removed input channel that is a constant ``k`` contributes ``k * (sum of the kernel taps that
fall inside the image)`` to the conv output: constant in the interior but not at the borders,
so folding ``k * sum(W)`` into the bias would be wrong at the borders. We **fold it exactly**
instead of keeping the channel: the removed channels' kernels are summed into one
``[C_out, 1, kh, kw]`` kernel ``sum_i k_i W[:, i]`` (a buffer, ``FoldedConv2d.const_kernel``), and
the conv adds ``conv2d(ones(1, 1, H, W), const_kernel)`` (same stride/padding/dilation), which is
exactly that border-aware contribution. It is computed per input size and cached, so the
compact model still accepts any input size (a fixed ``[C_out, H, W]`` map would tie it to
the example's size). Why fold rather than keep: a dead conv row becomes the non-zero
constant ``max(beta - gamma*mean/sqrt(var+eps), 0)`` whenever its BN shift is positive, and
keeping it would keep the producer's (all-zero) row, its BN channel and a column in every
consumer; the fold costs ``C_out*kh*kw`` numbers per conv (less than one input channel's
weights), is exact at every position, and adds one tiny conv per new input size. Where the
padding cannot break constancy (no padding, or a reflect / replicate / circular padding mode)
and for linear layers, the constant folds into the bias.

The compact model is an ``fx.GraphModule`` in eval mode, meant for inference: its BatchNorms
and folded constants assume eval-mode statistics, as the masked model does. To store it for
another stage, use ``seam.models.archive.save_exported`` (a ``torch.export`` archive that loads
without this package and without unpickling).

A problem with the user's model (not an ``nn.Module``, training mode, not traceable, result
not exact) raises :class:`CompactError`; an inconsistency inside the passes is a bug and
raises a ``RuntimeError`` ("internal error: ...") with its traceback.
"""

from seam.compact.core import ChannelCost, compact, count_params
from seam.compact.graph import CompactError
from seam.compact.modules import ChannelAdd, FoldedConv2d

__all__ = ["ChannelCost", "CompactError", "ChannelAdd", "FoldedConv2d", "compact", "count_params"]
