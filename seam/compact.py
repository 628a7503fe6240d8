"""Compaction: turn a masked (re-engineered) model into a smaller *dense* model with the same
predictions, by removing channels that the masks made dead.

SeaM masks are unstructured, so a masked model is as large and as slow as the original in a
dense engine. Whole channels often end up dead, though, and those can be cut out:

    compact_model, report = compact(model, example_input)

How it works (model-agnostic, on a ``torch.fx`` graph):

1. Trace a copy of the model with ``torch.fx`` (``torch.nn`` modules are leaves, custom
   modules are traced through) and record every node's output shape on ``example_input``.
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
   So a dead residual branch (constant after BN) reduces to ``shortcut + constant``, and an
   option-A shortcut's zero padding channels disappear.
5. Rewrite: convs / linears / BNs are sliced to their kept rows and columns, pads get new
   amounts, cats lose empty inputs; everything else is copied. The result is checked on
   ``example_input`` against the original; a mismatch raises :class:`CompactError` rather
   than returning a wrong model.

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
and folded constants assume eval-mode statistics, as the masked model does.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_flatten

from seam.errors import SeamError

__all__ = ["CompactError", "ChannelAdd", "FoldedConv2d", "compact", "count_params"]


class CompactError(SeamError, ValueError):
    """The model cannot be traced or compacted exactly."""


# --- modules of the compact model -------------------------------------------------------------


class FoldedConv2d(nn.Conv2d):
    """``Conv2d`` plus the exact contribution of removed constant input channels.

    ``const_kernel`` ``[C_out, 1, kh, kw]`` is ``sum_i k_i * W[:, i]`` over the removed channels
    ``i`` (constant ``k_i``); the forward pass adds ``conv2d(ones(1, 1, H, W), const_kernel)`` with
    this conv's stride/padding/dilation, i.e. what those channels contributed, borders
    included. The map depends only on the input's spatial size and is cached per size.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        self.register_buffer("const_kernel", torch.zeros(self.out_channels, 1, kh, kw,
                                                         dtype=self.weight.dtype, device=self.weight.device))
        self._const_maps: dict[tuple, torch.Tensor] = {}

    def const_map(self, height: int, width: int) -> torch.Tensor:
        """``[1, C_out, H_out, W_out]``: what the removed constant channels add at each position."""
        k = self.const_kernel
        key = (height, width, k.device, k.dtype)
        entry = self._const_maps.get(key)
        if entry is None or entry[0] is not k or entry[1] != k._version:
            ones = torch.ones(1, 1, height, width, dtype=k.dtype, device=k.device)
            with torch.no_grad():
                value = F.conv2d(ones, k, None, self.stride, self.padding, self.dilation)
            if len(self._const_maps) > 16:
                self._const_maps.clear()
            entry = self._const_maps[key] = (k, k._version, value)
        return entry[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.const_map(x.shape[-2], x.shape[-1])

    def __getstate__(self) -> dict:
        # copies and pickles start with an empty cache
        state = dict(self.__dict__)
        state["_const_maps"] = {}
        return state


def _index_plan(idx: list[int], full: int) -> Any:
    """None for 0..full-1, a (start, stop) pair for a contiguous range, else a LongTensor."""
    if idx == list(range(full)):
        return None
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return (idx[0], idx[0] + len(idx))
    return torch.tensor(idx, dtype=torch.long)


class ChannelAdd(nn.Module):
    """Sum of tensors whose kept channels differ, plus folded constants (channel dim 1).

    Input ``j`` contributes its channels ``src[j]`` (None: all) to output positions
    ``dst[j]`` (None: all, in order); ``const`` (``[C_out]``) holds the values of removed
    constant channels and scalar addends.
    """

    def __init__(self, num_channels: int, src: list[Any], dst: list[Any], const: torch.Tensor | None):
        super().__init__()
        self.num_channels = num_channels
        self._src_kind, self._dst_kind = [], []
        for j, (s, d) in enumerate(zip(src, dst)):
            self._src_kind.append(self._store(f"src{j}", s))
            self._dst_kind.append(self._store(f"dst{j}", d))
        if const is not None:
            self.register_buffer("const", const)
        else:
            self.const = None

    def _store(self, name: str, plan: Any) -> Any:
        if isinstance(plan, torch.Tensor):
            self.register_buffer(name, plan, persistent=False)
            return "index"
        return plan  # None or (start, stop)

    def _get(self, kinds: list, prefix: str, j: int) -> Any:
        kind = kinds[j]
        return getattr(self, f"{prefix}{j}") if kind == "index" else kind

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = None
        pending = []
        for j, x in enumerate(xs):
            src = self._get(self._src_kind, "src", j)
            if isinstance(src, tuple):
                x = x[:, src[0]:src[1]]
            elif src is not None:
                x = x.index_select(1, src)
            dst = self._get(self._dst_kind, "dst", j)
            if dst is None:
                out = x if out is None else out + x
            else:
                pending.append((x, dst))
        for x, dst in pending:
            if out is None:
                out = x.new_zeros((x.shape[0], self.num_channels, *x.shape[2:]))
            if isinstance(dst, tuple):
                dst = torch.arange(dst[0], dst[1], device=x.device)
            out = out.index_add(1, dst, x)
        if self.const is not None:
            out = out + self.const.view(1, -1, *([1] * (out.dim() - 2)))
        return out

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, inputs={len(self._src_kind)}, const={self.const is not None}"

    def export_form(self) -> nn.Module:
        """The same sum with each scattered input placed by a fixed 0/1 1x1 convolution.

        ``index_add`` exports to ONNX ScatterElements (plus Shape/Expand for the zeros),
        which onnxruntime runs about 3x slower than the whole rest of a compact ResNet20;
        a 1x1 convolution with a 0/1 placement matrix is the same exact sum in ops every
        engine runs fast. Used by ``seam.export`` only (see ``export_form`` there).
        """
        return _ChannelAddByConv(self)


class _ChannelAddByConv(nn.Module):
    """``ChannelAdd`` for 4-D inputs, placing channels with 0/1 1x1 convolutions instead of index_add."""

    def __init__(self, add: ChannelAdd):
        super().__init__()
        self.add = add
        self.placements: list[str | None] = []
        for j, dst_kind in enumerate(add._dst_kind):
            dst = add._get(add._dst_kind, "dst", j)
            if dst is None:
                self.placements.append(None)
                continue
            idx = torch.arange(dst[0], dst[1]) if isinstance(dst, tuple) else dst.cpu()
            weight = torch.zeros(add.num_channels, len(idx), 1, 1)
            weight[idx, torch.arange(len(idx)), 0, 0] = 1.0
            self.register_buffer(f"place{j}", weight, persistent=False)
            self.placements.append(f"place{j}")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if any(x.dim() != 4 for x in xs):
            return self.add(*xs)
        out = None
        for j, x in enumerate(xs):
            src = self.add._get(self.add._src_kind, "src", j)
            if isinstance(src, tuple):
                x = x[:, src[0]:src[1]]
            elif src is not None:
                x = x.index_select(1, src)
            if self.placements[j] is not None:
                x = F.conv2d(x, getattr(self, self.placements[j]))
            out = x if out is None else out + x
        if self.add.const is not None:
            out = out + self.add.const.view(1, -1, 1, 1)
        return out


# --- what each graph node does to channels ----------------------------------------------------

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Sigmoid,
                nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus)
_ACT_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.hardtanh,
                  F.hardswish, F.hardsigmoid, F.mish, F.softplus, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh}
_ACT_METHODS = {"relu", "sigmoid", "tanh"}
_IDENTITY_METHODS = {"contiguous", "clone"}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}
_PAD_FUNCTIONS = {F.pad, torch._C._nn.pad}
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


@dataclass
class _Op:
    kind: str  # input | conv | linear | map | add | output | shape | unknown
    inputs: list = field(default_factory=list)  # channel-tensor nodes it reads
    module: nn.Module | None = None
    # map: output channel j <- inputs[src_arg[j]] channel src_ch[j]; src_arg -1: constant `fill`
    src_arg: torch.Tensor | None = None
    src_ch: torch.Tensor | None = None
    fill: float = 0.0
    const_fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # on each input's constants
    rewrite: str = "copy"  # map: copy | bn | pad | cat
    scalar: float = 0.0  # add: sum of number addends
    pad: tuple = ()


def _base_type(m: nn.Module) -> type:
    """The module's class, seen through ``torch.nn.utils.parametrize`` (masks still attached)."""
    if parametrize.is_parametrized(m):
        return type(m).__bases__[0]
    return type(m)


def _identity_const(c: torch.Tensor) -> torch.Tensor:
    return c


def _zero_only_const(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c == 0, c, torch.full_like(c, math.nan))


def _apply_const(fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype, ndim: int):
    """Constant transfer through an elementwise / channel-wise function, run as the model runs it."""

    def transfer(c: torch.Tensor) -> torch.Tensor:
        var = torch.isnan(c)
        x = torch.where(var, torch.zeros_like(c), c).to(dtype).view(1, -1, *([1] * (ndim - 2)))
        with torch.no_grad():
            y = fn(x).reshape(-1).to(torch.float64)
        return torch.where(var, torch.full_like(y, math.nan), y)

    return transfer


def _map_op(node_inputs: list, channels: int, rewrite: str = "copy", const_fn=_identity_const,
            module: nn.Module | None = None) -> _Op:
    return _Op("map", inputs=node_inputs, src_arg=torch.zeros(channels, dtype=torch.long),
               src_ch=torch.arange(channels), const_fn=const_fn, rewrite=rewrite, module=module)


def _norm_dims(dims: Any, ndim: int) -> list[int] | None:
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return [d % ndim for d in dims]


class _Analysis:
    def __init__(self, gm: fx.GraphModule, shapes: dict, dtypes: dict):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.shapes = shapes
        self.dtypes = dtypes
        self.nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}

    def is_ch(self, n: Any) -> bool:
        return isinstance(n, fx.Node) and self.shapes.get(n) is not None and len(self.shapes[n]) >= 2

    def channels(self, n: fx.Node) -> int:
        return self.shapes[n][1]

    def tensor_inputs(self, node: fx.Node) -> list:
        return [n for n in node.all_input_nodes if self.is_ch(n)]

    def unknown(self, node: fx.Node) -> _Op:
        return _Op("unknown", inputs=self.tensor_inputs(node))

    # classify ------------------------------------------------------------------------------

    def classify(self, node: fx.Node) -> _Op:
        if node.op == "placeholder":
            return _Op("input") if self.is_ch(node) else _Op("unknown")
        if node.op == "output":
            return _Op("output", inputs=self.tensor_inputs(node))
        if node.op in ("call_module", "call_function", "call_method") and self._inplace(node):
            # An in-place op is left as it is (opaque) unless it is a pure activation.
            if not (node.op == "call_module" and isinstance(self.modules[node.target], _ACT_MODULES)) and not (
                    node.op == "call_function" and node.target in _ACT_FUNCTIONS):
                return self.unknown(node)
        try:
            if node.op == "call_module":
                op = self._classify_module(node, self.modules[node.target])
            elif node.op == "call_function":
                op = self._classify_function(node)
            elif node.op == "call_method":
                op = self._classify_method(node)
            else:
                op = None
        except (TypeError, ValueError, IndexError, KeyError):
            op = None
        return op if op is not None else self.unknown(node)

    def _inplace(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op == "call_function":
            return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))
        if node.op == "call_method":
            return node.target.endswith("_") and not node.target.startswith("__")
        return False

    def _first(self, node: fx.Node, ndims: tuple[int, ...] | None = None) -> fx.Node | None:
        if not node.args or not self.is_ch(node.args[0]) or not self.is_ch(node):
            return None
        x = node.args[0]
        if ndims is not None and len(self.shapes[x]) not in ndims:
            return None
        return x

    def _elementwise(self, node: fx.Node, x: fx.Node, fn) -> _Op | None:
        if self.shapes[node] != self.shapes[x]:
            return None
        return _map_op([x], self.channels(x), const_fn=_apply_const(fn, self.dtypes[x], len(self.shapes[x])))

    def _classify_module(self, node: fx.Node, m: nn.Module) -> _Op | None:
        if len(node.args) != 1 or node.kwargs:
            return None
        x = self._first(node)
        if x is None:
            return None
        nd = len(self.shapes[x])
        base = _base_type(m)
        if base in (nn.Conv2d, FoldedConv2d):
            if m.groups != 1 or nd != 4:
                return None
            return _Op("conv", inputs=[x], module=m)
        if base is nn.Linear:
            return _Op("linear", inputs=[x], module=m) if nd == 2 else None
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            if m.training or m.running_mean is None or nd not in ((2, 3) if isinstance(m, nn.BatchNorm1d) else (4,)):
                return None
            op = self._elementwise(node, x, m)
            if op is not None:
                op.rewrite, op.module = "bn", m
            return op
        if isinstance(m, _ACT_MODULES):
            fn = copy.deepcopy(m)
            if hasattr(fn, "inplace"):
                fn.inplace = False
            return self._elementwise(node, x, fn)
        if isinstance(m, nn.Identity) or (isinstance(m, nn.modules.dropout._DropoutNd) and not m.training):
            return self._elementwise(node, x, lambda t: t)
        if isinstance(m, (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and nd == 4:
            if isinstance(m, nn.MaxPool2d) and m.return_indices:
                return None
            return _map_op([x], self.channels(x))
        if isinstance(m, nn.AvgPool2d) and nd == 4:
            pads = m.padding if isinstance(m.padding, tuple) else (m.padding,)
            exact = all(p == 0 for p in pads) and not m.ceil_mode and m.divisor_override is None
            return _map_op([x], self.channels(x), const_fn=_identity_const if exact else _zero_only_const)
        if isinstance(m, nn.Flatten):
            return self._flatten(node, x, m.start_dim, m.end_dim)
        return None

    def _flatten(self, node: fx.Node, x: fx.Node, start: int, end: int) -> _Op | None:
        nd = len(self.shapes[x])
        start, end = start % nd, end % nd
        if start >= 2:
            return _map_op([x], self.channels(x))
        if start == 1 and end == nd - 1:
            return self._blocks(node, x)
        return None

    def _blocks(self, node: fx.Node, x: fx.Node) -> _Op | None:
        """[N, C, *S] -> [N, C*prod(S)]: output feature j comes from channel j // prod(S)."""
        sx, so = self.shapes[x], self.shapes[node]
        per = math.prod(sx[2:])
        if len(so) != 2 or so[0] != sx[0] or so[1] != sx[1] * per:
            return None
        c_out = so[1]
        return _Op("map", inputs=[x], src_arg=torch.zeros(c_out, dtype=torch.long),
                   src_ch=torch.arange(c_out) // per, const_fn=_identity_const)

    def _classify_function(self, node: fx.Node) -> _Op | None:
        t = node.target
        if t in _ADD_FUNCTIONS:
            return self._add(node)
        if t is torch.cat:
            return self._cat(node)
        x = self._first(node)
        if x is None:
            return None
        nd = len(self.shapes[x])
        if t in _ACT_FUNCTIONS:
            args, kwargs = node.args[1:], dict(node.kwargs)
            if any(isinstance(a, fx.Node) for a in list(args) + list(kwargs.values())):
                return None
            kwargs.pop("inplace", None)
            return self._elementwise(node, x, lambda v: t(v, *args, **kwargs))
        if t is operator.getitem:
            return self._getitem(node, x)
        if t in _PAD_FUNCTIONS:
            return self._pad(node, x)
        if t is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, x, start, end)
        if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d) and nd == 4:
            if self.shapes[node][:2] != self.shapes[x][:2]:
                return None
            return _map_op([x], self.channels(x))
        if t is F.avg_pool2d and nd == 4 and self.shapes[node][:2] == self.shapes[x][:2]:
            return _map_op([x], self.channels(x), const_fn=_zero_only_const)
        if t is torch.mean:
            return self._mean(node, x)
        if t is F.dropout and node.kwargs.get("training", True) is False and len(node.args) == 1:
            return self._elementwise(node, x, lambda v: v)
        return None

    def _classify_method(self, node: fx.Node) -> _Op | None:
        name = node.target
        if name == "size" or name == "dim":
            if not node.args or not self.is_ch(node.args[0]):
                return None
            if name == "size":
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                if not isinstance(dim, int) or dim % len(self.shapes[node.args[0]]) == 1:
                    return None
            return _Op("shape", inputs=[node.args[0]])
        if name == "add":
            return self._add(node)
        x = self._first(node)
        if x is None:
            return None
        if name in _ACT_METHODS and len(node.args) == 1 and not node.kwargs:
            return self._elementwise(node, x, getattr(torch, name))
        if name in _IDENTITY_METHODS and len(node.args) == 1 and not node.kwargs:
            return self._elementwise(node, x, lambda v: v)
        if name == "mean":
            return self._mean(node, x)
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, x, start, end)
        if name in ("view", "reshape"):
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            if node.kwargs or not shape or shape[-1] != -1 or len(shape) != 2 or shape[0] == -1:
                return None
            return self._blocks(node, x)
        return None

    def _mean(self, node: fx.Node, x: fx.Node) -> _Op | None:
        nd = len(self.shapes[x])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = _norm_dims(dims, nd)
        extra = set(node.kwargs) - {"dim", "keepdim"}
        if dims is None or extra or any(d < 2 for d in dims) or len(node.args) > 3:
            return None
        if self.shapes[node][:2] != self.shapes[x][:2]:
            return None
        return _map_op([x], self.channels(x))

    def _getitem(self, node: fx.Node, x: fx.Node) -> _Op | None:
        idx = node.args[1]
        if not isinstance(idx, tuple):
            idx = (idx,)
        if not all(isinstance(i, slice) for i in idx) or len(idx) > len(self.shapes[x]):
            return None
        if any(not isinstance(v, (int, type(None))) for i in idx for v in (i.start, i.stop, i.step)):
            return None
        if any(i != slice(None) for i in idx[:2]):
            return None
        return _map_op([x], self.channels(x))

    def _pad(self, node: fx.Node, x: fx.Node) -> _Op | None:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        value = 0.0 if value is None else value
        nd = len(self.shapes[x])
        if mode != "constant" or not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) for p in pad):
            return None
        if not isinstance(value, (int, float)) or len(pad) % 2 or len(pad) > 2 * (nd - 1):
            return None
        pad = tuple(pad) + (0,) * (2 * (nd - 1) - len(pad))  # through the channel dim
        before, after = pad[2 * (nd - 2)], pad[2 * (nd - 2) + 1]
        if before < 0 or after < 0:
            return None
        c_in = self.channels(x)
        c_out = before + c_in + after
        if self.channels(node) != c_out:
            return None
        src_arg = torch.full((c_out,), -1, dtype=torch.long)
        src_arg[before:before + c_in] = 0
        src_ch = torch.zeros(c_out, dtype=torch.long)
        src_ch[before:before + c_in] = torch.arange(c_in)
        spatial = any(p != 0 for p in pad[: 2 * (nd - 2)])
        fill = float(value)

        def const_fn(c: torch.Tensor) -> torch.Tensor:
            # spatial padding with `fill` keeps a channel constant only when it equals `fill`
            return torch.where(c == fill, c, torch.full_like(c, math.nan)) if spatial else c

        return _Op("map", inputs=[x], src_arg=src_arg, src_ch=src_ch, fill=fill, const_fn=const_fn,
                   rewrite="pad", pad=pad)

    def _cat(self, node: fx.Node) -> _Op | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not tensors or not all(self.is_ch(t) for t in tensors):
            return None
        nd = len(self.shapes[tensors[0]])
        if not isinstance(dim, int) or dim % nd != 1 or set(node.kwargs) - {"tensors", "dim"}:
            return None
        if len(set(tensors)) != len(tensors):
            return None
        src_arg = torch.cat([torch.full((self.channels(t),), a, dtype=torch.long) for a, t in enumerate(tensors)])
        src_ch = torch.cat([torch.arange(self.channels(t)) for t in tensors])
        return _Op("map", inputs=list(tensors), src_arg=src_arg, src_ch=src_ch, const_fn=_identity_const, rewrite="cat")

    def _add(self, node: fx.Node) -> _Op | None:
        if not self.is_ch(node):
            return None
        args = list(node.args)
        kwargs = dict(node.kwargs)
        if node.target is torch.add or node.op == "call_method":
            if kwargs.pop("alpha", 1) != 1 or kwargs:
                return None
        elif kwargs:
            return None
        if len(args) != 2:
            return None
        inputs, scalar = [], 0.0
        for a in args:
            if isinstance(a, fx.Node):
                if not self.is_ch(a) or self.shapes[a] != self.shapes[node]:
                    return None
                inputs.append(a)
            elif isinstance(a, (int, float)) and not isinstance(a, bool):
                scalar += a
            else:
                return None
        if not inputs or len(set(inputs)) != len(inputs):
            return None
        return _Op("add", inputs=inputs, scalar=scalar)


# --- the compaction ---------------------------------------------------------------------------


def _pairs(w: torch.Tensor) -> torch.Tensor:
    """[O, I, *kernel] -> [O, I, prod(kernel)] (also for empty tensors and linear weights)."""
    return w.reshape(w.shape[0], w.shape[1], math.prod(w.shape[2:]))


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


def _pads_break_constants(m: nn.Conv2d) -> bool:
    """True when zero padding makes a constant input non-constant near the borders."""
    if m.padding_mode != "zeros":
        return False
    if isinstance(m.padding, str):
        return m.padding != "valid"
    return any(p != 0 for p in m.padding)


class _Record(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict = {}
        self.dtypes: dict = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and n.op != "output":
            self.shapes[n] = tuple(out.shape)
            self.dtypes[n] = out.dtype
        return out


class _Tracer(fx.Tracer):
    """``torch.nn`` modules and this module's own layers are leaves; custom modules are traced."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (FoldedConv2d, ChannelAdd)) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...)
        raise CompactError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "compact needs a model without data-dependent control flow") from exc


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
    if not isinstance(model, nn.Module):
        raise CompactError(f"compact needs an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise CompactError("example_input must be a tensor")
    training = [name for name, m in model.named_modules()
                if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))]
    if training:
        raise CompactError(f"{training[0]} is in training mode; compaction is exact for inference only: "
                           "call model.eval() first")
    device = example_input.device
    # The analysis and the rewrite run on a CPU copy; the result moves to the input's device.
    work = copy.deepcopy(model).cpu()
    example_input = example_input.detach().cpu()
    gm = _trace(work)
    rec = _Record(gm)
    with torch.no_grad():
        reference = rec.run(example_input)
    an = _Analysis(gm, rec.shapes, rec.dtypes)
    nodes = an.nodes
    ops = {n: an.classify(n) for n in nodes}

    # In-place ops: a tensor mutated by one node and read by later nodes is treated as variable.
    mutated_late = set()
    for n in nodes:
        if n.op != "placeholder" and an._inplace(n) and n.args and isinstance(n.args[0], fx.Node):
            target = n.args[0]
            if any(an.order[u] > an.order[n] for u in target.users if u is not n):
                # Later readers see the mutated values: no constant is assumed for them, and the
                # in-place op is copied as it is (the compact graph keeps the node order).
                mutated_late.add(target)
                if ops[n].kind == "map":
                    ops[n] = an.unknown(n)

    with torch.no_grad():
        cval = _constants(an, ops, mutated_late)
        need = _needs(an, ops, cval)
        keep = _keeps(an, ops, need)
        new_gm, report = _rewrite(an, ops, cval, keep)
        new_gm.eval()
        got = new_gm(example_input)

    ref_flat, _ = tree_flatten(reference)
    got_flat, _ = tree_flatten(got)
    diff = 0.0
    if len(ref_flat) != len(got_flat):
        raise CompactError("internal error: the compact model's output structure differs")
    for r, g in zip(ref_flat, got_flat):
        if isinstance(r, torch.Tensor):
            if not isinstance(g, torch.Tensor) or r.shape != g.shape:
                raise CompactError("internal error: the compact model's output shape differs")
            if r.numel():
                d = float((r.double() - g.double()).abs().max())
                diff = max(diff, d)
                scale = max(1.0, float(r.double().abs().max()))
                if not math.isfinite(d) or d > atol * scale:
                    raise CompactError(f"compaction is not exact on the example input (max |diff| {d:.3g}); "
                                       "refusing to return a wrong model")
    report["max_abs_diff"] = diff
    report["params_before"] = count_params(model)
    report["params_after"] = count_params(new_gm)
    return new_gm.to(device), _finish_report(model, report)


def _constants(an: _Analysis, ops: dict, mutated_late: set) -> dict:
    """Per channel node: float64 [C], the constant value of each channel, NaN where variable."""
    cval: dict = {}
    for n in an.nodes:
        if not an.is_ch(n):
            continue
        op = ops[n]
        c = an.channels(n)
        out = torch.full((c,), math.nan, dtype=torch.float64)
        if op.kind == "conv" or op.kind == "linear":
            m = op.module
            x = op.inputs[0]
            cin = cval[x]
            w = m.weight.detach().double()
            nz = _pairs(w != 0).any(2)
            var_in = torch.isnan(cin)
            safe = torch.where(var_in, torch.zeros_like(cin), cin)
            wsum = _pairs(w).sum(2)
            out = wsum @ safe
            if m.bias is not None:
                out = out + m.bias.detach().double()
            bad = (nz & var_in[None]).any(1)
            if op.kind == "conv" and _pads_break_constants(m):
                bad |= (nz & ~var_in[None] & (safe != 0)[None]).any(1)
                if isinstance(m, FoldedConv2d):
                    bad |= (m.const_kernel.detach().reshape(c, -1) != 0).any(1)
            out = torch.where(bad, torch.full_like(out, math.nan), out)
        elif op.kind == "map":
            per_input = [op.const_fn(cval[i]) for i in op.inputs]
            for a, vals in enumerate(per_input):
                sel = op.src_arg == a
                out[sel] = vals[op.src_ch[sel]]
            out[op.src_arg < 0] = op.fill
        elif op.kind == "add":
            out = torch.full((c,), float(op.scalar), dtype=torch.float64)
            for i in op.inputs:
                out = out + cval[i]
        if n in mutated_late:
            out = torch.full((c,), math.nan, dtype=torch.float64)
        cval[n] = out
    return cval


def _needs(an: _Analysis, ops: dict, cval: dict) -> dict:
    """Reverse topological pass: which channels must be materialised in the compact model."""
    need = {n: torch.zeros(an.channels(n), dtype=torch.bool) for n in an.nodes if an.is_ch(n)}
    must_exist: set = set()
    for n in reversed(an.nodes):
        op = ops[n]
        if an.is_ch(n):
            if op.kind in ("input", "unknown"):
                need[n][:] = True
            if n in must_exist and not need[n].any():
                # Something needs this tensor's shape (or a kept op needs an input): keep one
                # channel, preferably a variable one.
                var = torch.isnan(cval[n]).nonzero()
                need[n][int(var[0]) if len(var) else 0] = True
        if op.kind in ("output", "unknown"):
            for i in op.inputs:
                need[i][:] = True
        elif op.kind == "shape":
            must_exist.update(op.inputs)
        elif op.kind in ("conv", "linear"):
            rows = need[n]
            if rows.any():
                x = op.inputs[0]
                w = op.module.weight.detach()
                reads = _pairs(w[rows] != 0).any(2).any(0)
                need[x] |= reads & torch.isnan(cval[x])
                must_exist.add(x)
        elif op.kind == "map":
            out = need[n]
            for a, x in enumerate(op.inputs):
                sel = (op.src_arg == a) & out
                need[x][op.src_ch[sel]] = True
            if out.any():
                must_exist.add(op.inputs[0])
        elif op.kind == "add":
            out = need[n]
            got = False
            for x in op.inputs:
                reads = out & torch.isnan(cval[x])
                need[x] |= reads
                got = got or bool(reads.any())
            if out.any() and not got:
                # every kept output channel is a folded constant: one input still gives the shape
                must_exist.add(max(op.inputs, key=lambda x: int(torch.isnan(cval[x]).sum())))
    return need


def _keeps(an: _Analysis, ops: dict, need: dict) -> dict:
    """Channels present in the compact model: needed ones, closed under channel-wise ties."""
    keep = {}
    for n in an.nodes:
        if not an.is_ch(n):
            continue
        op = ops[n]
        if op.kind == "map":
            k = need[n].clone()
            for a, x in enumerate(op.inputs):
                sel = op.src_arg == a
                k[sel] = keep[x][op.src_ch[sel]]
            if (need[n] & ~k).any():
                raise CompactError(f"internal error: {n.name} needs channels its input lost")
            keep[n] = k
        else:
            keep[n] = need[n].clone()
    return keep


def _new_bn(m: nn.Module, k: torch.Tensor) -> nn.Module:
    new = type(m)(int(k.sum()), eps=m.eps, momentum=m.momentum, affine=m.affine,
                  track_running_stats=m.track_running_stats)
    new = new.to(device=m.running_mean.device, dtype=m.running_mean.dtype)
    with torch.no_grad():
        new.running_mean.copy_(m.running_mean[k])
        new.running_var.copy_(m.running_var[k])
        new.num_batches_tracked.copy_(m.num_batches_tracked)
        if m.affine:
            new.weight.copy_(m.weight.detach()[k])
            new.bias.copy_(m.bias.detach()[k])
    return new.eval()


def _new_weighted(m: nn.Module, kind: str, kin: torch.Tensor, kout: torch.Tensor, cin: torch.Tensor,
                  name: str) -> tuple[nn.Module, dict]:
    """Slice a conv / linear to kept rows and columns; fold removed constant input channels."""
    w = m.weight.detach()
    b = m.bias.detach() if m.bias is not None else None
    rows = w[kout]
    dropped = ~kin
    wd = rows[:, dropped].double()
    cd = cin[dropped]
    nz = _pairs(wd != 0).any(2)
    if (nz & torch.isnan(cd)[None]).any():
        raise CompactError(f"internal error: {name} reads a removed variable channel")
    safe = torch.where(torch.isnan(cd), torch.zeros_like(cd), cd)
    contrib = (wd * safe.view(1, -1, *([1] * (wd.dim() - 2)))).sum(1, keepdim=True)  # [O, 1, *k]
    has_fold = bool((contrib != 0).any())
    border = kind == "conv" and has_fold and (_pads_break_constants(m) or isinstance(m, FoldedConv2d))
    new_bias = b[kout].double() if b is not None else None
    if has_fold and not border:
        s = contrib.reshape(contrib.shape[0], -1).sum(1)
        new_bias = s if new_bias is None else new_bias + s
    n_in, n_out = int(kin.sum()), int(kout.sum())
    bias = new_bias is not None
    dd = {"device": w.device, "dtype": w.dtype}
    if kind == "linear":
        new = nn.Linear(n_in, n_out, bias=bias, **dd)
    else:
        cls = FoldedConv2d if border or isinstance(m, FoldedConv2d) else nn.Conv2d
        new = cls(n_in, n_out, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                  groups=1, bias=bias, padding_mode=m.padding_mode, **dd)
    with torch.no_grad():
        new.weight.copy_(rows[:, kin])
        if bias:
            new.bias.copy_(new_bias.to(w.dtype))
        if isinstance(new, FoldedConv2d):
            k = contrib if border else torch.zeros_like(contrib)
            if isinstance(m, FoldedConv2d):
                k = k + m.const_kernel.detach()[kout].double()
            new.const_kernel.copy_(k.to(w.dtype))
    info = {"folded_inputs": int((nz.any(0) & (safe != 0)).sum()), "border_fold": border,
            "fold_params": (new.const_kernel.numel() if isinstance(new, FoldedConv2d) and not isinstance(m, FoldedConv2d) else 0)
            + (n_out if bias and b is None else 0)}
    return new.eval(), info


def _rewrite(an: _Analysis, ops: dict, cval: dict, keep: dict) -> tuple[fx.GraphModule, dict]:
    graph = fx.Graph()
    env: dict = {}
    attrs: dict = {}
    used_targets: set = set()
    layers: dict = {}
    removed_layers: list = []
    zeros_kept = 0
    fold_params = 0

    def lookup(n: fx.Node) -> fx.Node:
        v = env.get(n)
        if v is None:
            raise CompactError(f"internal error: {n.name} was removed but is still read")
        return v

    def target_for(t: str) -> str:
        name, i = t, 1
        while name in used_targets:
            name, i = f"{t}_{i}", i + 1
        used_targets.add(name)
        return name

    def copy_node(n: fx.Node) -> fx.Node:
        if n.op in ("call_module", "get_attr"):
            if n.target not in attrs:
                obj = an.gm.get_submodule(n.target) if n.op == "call_module" else _get_attr(an.gm, n.target)
                attrs[n.target] = copy.deepcopy(obj)
                used_targets.add(n.target)
        return graph.node_copy(n, lookup)

    add_count = 0
    for n in an.nodes:
        op = ops[n]
        if an.is_ch(n) and not keep[n].any() and op.kind not in ("input", "unknown"):
            env[n] = None
            if op.kind in ("conv", "linear") or op.rewrite == "bn":
                m = op.module
                x = op.inputs[0]
                layers[n.target] = {"type": _base_type(m).__name__, "in": [an.channels(x), 0], "out": [an.channels(n), 0]}
                removed_layers.append(n.target)
            continue
        if op.kind in ("conv", "linear"):
            m, x = op.module, op.inputs[0]
            kin, kout = keep[x], keep[n]
            new, info = _new_weighted(m, op.kind, kin, kout, cval[x], n.target)
            fold_params += info.pop("fold_params")
            t = target_for(n.target)
            attrs[t] = new
            env[n] = graph.call_module(t, (lookup(x),))
            w = m.weight.detach()
            zeros_kept += int((w[kout][:, kin] == 0).sum())
            if m.bias is not None:
                zeros_kept += int((m.bias.detach()[kout] == 0).sum())
            layers[n.target] = {"type": _base_type(m).__name__,
                                "in": [an.channels(x), int(kin.sum())], "out": [an.channels(n), int(kout.sum())], **info}
        elif op.kind == "map" and op.rewrite == "bn":
            x = op.inputs[0]
            t = target_for(n.target)
            attrs[t] = _new_bn(op.module, keep[n])
            env[n] = graph.call_module(t, (lookup(x),))
            layers[n.target] = {"type": type(op.module).__name__, "in": [an.channels(x), int(keep[x].sum())],
                                "out": [an.channels(n), int(keep[n].sum())]}
        elif op.kind == "map" and op.rewrite == "pad":
            x = op.inputs[0]
            nd = len(an.shapes[x])
            k = keep[n]
            c_before = op.pad[2 * (nd - 2)]
            c_in = an.channels(x)
            nb = int(k[:c_before].sum())
            na = int(k[c_before + c_in:].sum())
            pad = list(op.pad)
            pad[2 * (nd - 2)], pad[2 * (nd - 2) + 1] = nb, na
            while pad and pad[-1] == 0 and pad[-2] == 0 and len(pad) > 2:
                pad = pad[:-2]
            if all(p == 0 for p in pad):
                env[n] = lookup(x)
            else:
                env[n] = graph.call_function(F.pad, (lookup(x), tuple(pad)), {"mode": "constant", "value": op.fill})
        elif op.kind == "map" and op.rewrite == "cat":
            present = [lookup(x) for x in op.inputs if keep[x].any()]
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            env[n] = present[0] if len(present) == 1 else graph.call_function(torch.cat, (present,), {"dim": dim})
        elif op.kind == "add":
            k_out = keep[n]
            pos_out = torch.full((len(k_out),), -1, dtype=torch.long)
            pos_out[k_out] = torch.arange(int(k_out.sum()))
            const = torch.full((int(k_out.sum()),), float(op.scalar), dtype=torch.float64)
            src, dst, args = [], [], []
            for x in op.inputs:
                kx = keep[x]
                present_out = k_out & kx  # channels this input provides to the output
                folded = k_out & ~kx
                if torch.isnan(cval[x][folded]).any():
                    raise CompactError(f"internal error: {n.name} lost a variable input channel")
                const[pos_out[folded]] += cval[x][folded]
                if not present_out.any():
                    continue
                # positions among x's kept channels, and among the output's
                pos_x = torch.cumsum(kx.long(), 0) - 1
                src.append(_index_plan(pos_x[present_out].tolist(), int(kx.sum())))
                dst.append(_index_plan(pos_out[present_out].tolist(), int(k_out.sum())))
                args.append(lookup(x))
            if not args:
                raise CompactError(f"internal error: {n.name} has no input left")
            has_const = bool((const != 0).any())
            if len(args) == 1 and src[0] is None and dst[0] is None and not has_const:
                env[n] = args[0]
            elif len(args) == 2 and all(s is None and d is None for s, d in zip(src, dst)) and not has_const:
                env[n] = graph.call_function(operator.add, tuple(args))
            else:
                dtype = an.dtypes[n]
                module = ChannelAdd(int(k_out.sum()), src, dst, const.to(dtype) if has_const else None)
                add_count += 1
                t = target_for(f"compact_add_{add_count}")
                attrs[t] = module
                env[n] = graph.call_module(t, tuple(args))
        else:
            env[n] = copy_node(n)

    # Drop what nothing reads any more (only ops known to be pure; never in-place or opaque ones).
    pure = {v for n, v in env.items() if v is not None and ops[n].kind in ("conv", "linear", "map", "add", "shape")
            and not an._inplace(n)}
    for node in reversed(list(graph.nodes)):
        if node in pure and not node.users:
            graph.erase_node(node)
    graph.lint()
    try:
        new_gm = fx.GraphModule(attrs, graph, class_name="CompactModel")
    except Exception as exc:
        raise CompactError(f"internal error: cannot build the compact model ({exc})") from exc
    report = {"layers": layers, "removed_layers": removed_layers, "fold_params": fold_params,
              "_zeros_kept": zeros_kept}
    return new_gm, report


def _get_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _finish_report(model: nn.Module, report: dict) -> dict:
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
