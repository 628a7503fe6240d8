"""Channel-wise ops: output channel ``j`` is one input's channel (or a constant ``fill``), so
the channels of input and output are kept or removed together. Activations, identities,
eval-BatchNorm, pooling, spatial means, flatten, slicing, constant padding and cat."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from seam.compact.graph import TracedGraph, internal_error
from seam.compact.ops.add import is_add
from seam.compact.ops.base import OpHandler, call_arg, nans, removed_layer_entry

__all__ = ["ACT_FUNCTIONS", "ACT_METHODS", "ACT_MODULES", "IDENTITY_METHODS", "PAD_FUNCTIONS", "BatchNormOp", "CatOp",
           "ChannelMap", "ElementwiseOp", "FlattenOp", "GetItemOp", "MeanOp", "PadOp", "PoolOp"]

ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Sigmoid,
               nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus)
ACT_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.hardtanh,
                 F.hardswish, F.hardsigmoid, F.mish, F.softplus, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh}
ACT_METHODS = {"relu", "sigmoid", "tanh"}
IDENTITY_METHODS = {"contiguous", "clone"}
PAD_FUNCTIONS = {F.pad, torch._C._nn.pad}

ConstFn = Callable[[torch.Tensor], torch.Tensor]


def _identity_const(c: torch.Tensor) -> torch.Tensor:
    return c


def _zero_only_const(c: torch.Tensor) -> torch.Tensor:
    # zero-padded average pooling: only a zero channel stays constant at the borders
    return torch.where(c == 0, c, torch.full_like(c, math.nan))


def _apply_const(fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype, ndim: int) -> ConstFn:
    """Constant transfer through an elementwise / channel-wise function, run as the model runs it."""

    def transfer(c: torch.Tensor) -> torch.Tensor:
        var = torch.isnan(c)
        x = torch.where(var, torch.zeros_like(c), c).to(dtype).view(1, -1, *([1] * (ndim - 2)))
        with torch.no_grad():
            y = fn(x).reshape(-1).to(torch.float64)
        return torch.where(var, torch.full_like(y, math.nan), y)

    return transfer


def _norm_dims(dims: Any, ndim: int) -> list[int] | None:
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return [d % ndim for d in dims]


class ChannelMap(OpHandler):
    """Output channel ``j`` is channel ``src_ch[j]`` of input ``src_arg[j]`` (-1: the constant ``fill``).

    ``const_fn`` maps an input's channel constants to its contribution's constants. The
    output keeps exactly the channels of its inputs that it maps (channels are tied), and
    is rewritten as a copy of the node.
    """

    keeps_all = False
    pure = True

    def __init__(self, node: fx.Node, inputs: list[fx.Node], src_arg: torch.Tensor, src_ch: torch.Tensor,
                 fill: float = 0.0, const_fn: ConstFn = _identity_const):
        super().__init__(node, inputs)
        self.src_arg, self.src_ch, self.fill, self.const_fn = src_arg, src_ch, fill, const_fn

    @classmethod
    def same(cls, node: fx.Node, x: fx.Node, channels: int, const_fn: ConstFn = _identity_const, **kw: Any):
        """Channel ``j`` of the output is channel ``j`` of ``x``."""
        return cls(node, [x], torch.zeros(channels, dtype=torch.long), torch.arange(channels), const_fn=const_fn,
                   **kw)

    def constants(self, g, cval):
        out = nans(g.channels(self.node))
        per_input = [self.const_fn(cval[i]) for i in self.inputs]
        for a, vals in enumerate(per_input):
            sel = self.src_arg == a
            out[sel] = vals[self.src_ch[sel]]
        out[self.src_arg < 0] = self.fill
        return out

    def need_inputs(self, g, need, cval, must_exist):
        out = need[self.node]
        for a, x in enumerate(self.inputs):
            sel = (self.src_arg == a) & out
            need[x][self.src_ch[sel]] = True
        if out.any():
            must_exist.add(self.inputs[0])

    def live_sources(self, g, sources):
        # a `fill` channel has no source (a constant); an input's constant channel stays one
        # (approximate where spatial padding or padded pooling makes it vary at the borders)
        return self._tied_sources(g, sources)

    def ties(self, g):
        sels = [(self.src_arg == a).nonzero().flatten() for a in range(len(self.inputs))]
        return [(sel, x, self.src_ch[sel]) for x, sel in zip(self.inputs, sels)]

    def keep(self, g, need, keep):
        k = need[self.node].clone()
        for a, x in enumerate(self.inputs):
            sel = self.src_arg == a
            k[sel] = keep[x][self.src_ch[sel]]
        if (need[self.node] & ~k).any():
            raise internal_error(f"{self.node.name} needs channels its input lost")
        return k


class ElementwiseOp(ChannelMap):
    """Activations, identities (``nn.Identity``, eval dropout, ``contiguous``, ``clone``)."""

    @classmethod
    def match(cls, g, node, x):
        fn = cls._function(g, node)
        if fn is None or g.shapes[node] != g.shapes[x]:
            return None
        return cls.same(node, x, g.channels(x), _apply_const(fn, g.dtypes[x], g.ndim(x)))

    @staticmethod
    def _function(g: TracedGraph, node: fx.Node) -> Callable | None:
        """The function the node applies, without side effects (for the constant transfer)."""
        identity = lambda v: v  # noqa: E731
        if node.op == "call_module":
            m = g.modules[node.target]
            if isinstance(m, ACT_MODULES):
                fn = copy.deepcopy(m)
                if hasattr(fn, "inplace"):
                    fn.inplace = False
                return fn
            if isinstance(m, nn.Identity) or (isinstance(m, nn.modules.dropout._DropoutNd) and not m.training):
                return identity
            return None
        if node.op == "call_method":
            if len(node.args) != 1 or node.kwargs:
                return None
            return getattr(torch, node.target) if node.target in ACT_METHODS else identity
        t = node.target
        if t is F.dropout:
            return identity if node.kwargs.get("training", True) is False and len(node.args) == 1 else None
        args, kwargs = node.args[1:], dict(node.kwargs)
        if any(isinstance(a, fx.Node) for a in list(args) + list(kwargs.values())):
            return None
        kwargs.pop("inplace", None)
        return lambda v: t(v, *args, **kwargs)


class BatchNormOp(ChannelMap):
    """Eval-mode ``BatchNorm1d`` / ``BatchNorm2d`` (exact class): sliced to the kept channels."""

    @classmethod
    def match(cls, g, node, x):
        m = g.modules[node.target]
        if type(m) not in (nn.BatchNorm1d, nn.BatchNorm2d):
            return None
        if m.training or m.running_mean is None or g.ndim(x) not in ((2, 3) if isinstance(m, nn.BatchNorm1d) else (4,)):
            return None
        if g.shapes[node] != g.shapes[x]:
            return None
        op = cls.same(node, x, g.channels(x), _apply_const(m, g.dtypes[x], g.ndim(x)))
        op.module = m
        return op

    def removed(self, g, rw):
        rw.record_removed(self.node.target, removed_layer_entry(g, self.node, self.inputs[0], self.module))

    def rewrite(self, g, rw):
        x, n, k = self.inputs[0], self.node, rw.kept(self.node)
        out = rw.call_module(n.target, self._sliced(k), (rw.lookup(x),))
        rw.record_layer(n.target, {"type": type(self.module).__name__, "in": [g.channels(x), int(rw.kept(x).sum())],
                                   "out": [g.channels(n), int(k.sum())]})
        return out

    def _sliced(self, k: torch.Tensor) -> nn.Module:
        m = self.module
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


class PoolOp(ChannelMap):
    """2-D max / average / adaptive pooling: per channel, so constants stay constant, except
    that zero-padded average pooling keeps only zero constant (borders average in the pad)."""

    @classmethod
    def match(cls, g, node, x):
        if g.ndim(x) != 4:
            return None
        if node.op == "call_module":
            m = g.modules[node.target]
            if isinstance(m, nn.MaxPool2d) and m.return_indices:
                return None
            if isinstance(m, nn.AvgPool2d):
                pads = m.padding if isinstance(m.padding, tuple) else (m.padding,)
                exact = all(p == 0 for p in pads) and not m.ceil_mode and m.divisor_override is None
                return cls.same(node, x, g.channels(x), _identity_const if exact else _zero_only_const)
            return cls.same(node, x, g.channels(x))
        if g.shapes[node][:2] != g.shapes[x][:2]:
            return None
        return cls.same(node, x, g.channels(x), _zero_only_const if node.target is F.avg_pool2d else _identity_const)


class MeanOp(ChannelMap):
    """``mean`` over spatial dims only (dims >= 2)."""

    @classmethod
    def match(cls, g, node, x):
        dims = _norm_dims(call_arg(node, 1, "dim"), g.ndim(x))
        extra = set(node.kwargs) - {"dim", "keepdim"}
        if dims is None or extra or any(d < 2 for d in dims) or len(node.args) > 3:
            return None
        if g.shapes[node][:2] != g.shapes[x][:2]:
            return None
        return cls.same(node, x, g.channels(x))


class FlattenOp(ChannelMap):
    """Flatten from dim >= 2 (channels unchanged), or ``[N, C, *S] -> [N, C*prod(S)]`` (flatten
    from dim 1, ``view`` / ``reshape(n, -1)``): output feature ``j`` is channel ``j // prod(S)``."""

    @classmethod
    def match(cls, g, node, x):
        if node.op == "call_module":
            m = g.modules[node.target]
            return cls._flatten(g, node, x, m.start_dim, m.end_dim)
        if node.target in ("view", "reshape"):
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            if node.kwargs or not shape or shape[-1] != -1 or len(shape) != 2 or shape[0] == -1:
                return None
            return cls._blocks(g, node, x)
        return cls._flatten(g, node, x, call_arg(node, 1, "start_dim", 0), call_arg(node, 2, "end_dim", -1))

    @classmethod
    def _flatten(cls, g: TracedGraph, node: fx.Node, x: fx.Node, start: int, end: int) -> ChannelMap | None:
        nd = g.ndim(x)
        start, end = start % nd, end % nd
        if start >= 2:
            return cls.same(node, x, g.channels(x))
        if start == 1 and end == nd - 1:
            return cls._blocks(g, node, x)
        return None

    @classmethod
    def _blocks(cls, g: TracedGraph, node: fx.Node, x: fx.Node) -> ChannelMap | None:
        sx, so = g.shapes[x], g.shapes[node]
        per = math.prod(sx[2:])
        if len(so) != 2 or so[0] != sx[0] or so[1] != sx[1] * per:
            return None
        c_out = so[1]
        return cls(node, [x], torch.zeros(c_out, dtype=torch.long), torch.arange(c_out) // per)


class GetItemOp(ChannelMap):
    """``x[:, :, ...]`` with plain slices: batch and channel dims untouched."""

    @classmethod
    def match(cls, g, node, x):
        idx = node.args[1]
        if not isinstance(idx, tuple):
            idx = (idx,)
        if not all(isinstance(i, slice) for i in idx) or len(idx) > g.ndim(x):
            return None
        if any(not isinstance(v, (int, type(None))) for i in idx for v in (i.start, i.stop, i.step)):
            return None
        if any(i != slice(None) for i in idx[:2]):
            return None
        return cls.same(node, x, g.channels(x))


class PadOp(ChannelMap):
    """Constant ``F.pad``; channel padding (option-A shortcuts) adds ``fill`` channels that the
    rewrite drops when nothing needs them."""

    def __init__(self, *args: Any, pad: tuple = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pad = pad

    @classmethod
    def match(cls, g, node, x):
        pad, mode, value = call_arg(node, 1, "pad"), call_arg(node, 2, "mode", "constant"), call_arg(node, 3, "value")
        value = 0.0 if value is None else value
        nd = g.ndim(x)
        if mode != "constant" or not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) for p in pad):
            return None
        if not isinstance(value, (int, float)) or len(pad) % 2 or len(pad) > 2 * (nd - 1):
            return None
        pad = tuple(pad) + (0,) * (2 * (nd - 1) - len(pad))  # through the channel dim
        before, after = pad[2 * (nd - 2)], pad[2 * (nd - 2) + 1]
        c_in = g.channels(x)
        c_out = before + c_in + after
        if before < 0 or after < 0 or g.channels(node) != c_out:
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

        return cls(node, [x], src_arg, src_ch, fill=fill, const_fn=const_fn, pad=pad)

    def need_inputs(self, g, need, cval, must_exist):
        # Padding channels that an add keeps in its output are kept here too: a wider pad
        # costs nothing, while an add whose inputs keep different channels must align them.
        fills = self.src_arg < 0
        for user in self.node.users:
            if is_add(user) and g.is_ch(user) and g.shapes[user] == g.shapes[self.node]:
                need[self.node] |= need[user] & fills
        super().need_inputs(g, need, cval, must_exist)

    def rewrite(self, g, rw):
        x = self.inputs[0]
        nd, k = g.ndim(x), rw.kept(self.node)
        c_before = self.pad[2 * (nd - 2)]
        pad = list(self.pad)
        pad[2 * (nd - 2)] = int(k[:c_before].sum())
        pad[2 * (nd - 2) + 1] = int(k[c_before + g.channels(x):].sum())
        while pad and pad[-1] == 0 and pad[-2] == 0 and len(pad) > 2:
            pad = pad[:-2]
        if all(p == 0 for p in pad):
            return rw.lookup(x)
        return rw.call_function(F.pad, (rw.lookup(x), tuple(pad)), {"mode": "constant", "value": self.fill})


class CatOp(ChannelMap):
    """``torch.cat`` along channels of distinct tensors; inputs with no kept channel are left out."""

    needs_first = False

    @classmethod
    def match(cls, g, node, x):
        tensors = call_arg(node, 0, "tensors")
        dim = call_arg(node, 1, "dim", 0)
        if not isinstance(tensors, (list, tuple)) or not tensors or not all(g.is_ch(t) for t in tensors):
            return None
        if not isinstance(dim, int) or dim % g.ndim(tensors[0]) != 1 or set(node.kwargs) - {"tensors", "dim"}:
            return None
        if len(set(tensors)) != len(tensors):
            return None
        src_arg = torch.cat([torch.full((g.channels(t),), a, dtype=torch.long) for a, t in enumerate(tensors)])
        src_ch = torch.cat([torch.arange(g.channels(t)) for t in tensors])
        return cls(node, list(tensors), src_arg, src_ch)

    def rewrite(self, g, rw):
        present = [rw.lookup(x) for x in self.inputs if rw.kept(x).any()]
        dim = call_arg(self.node, 1, "dim", 0)
        return present[0] if len(present) == 1 else rw.call_function(torch.cat, (present,), {"dim": dim})
