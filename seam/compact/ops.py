"""One handler per kind of graph node: how it is recognised, what it does to constant channels,
which input channels it needs, and how it is rewritten in the compact graph.

Like Torch-Pruning's one pruner per layer type, each :class:`OpHandler` subclass holds
everything the passes (``seam.compact.passes``) need to know about one kind of op;
:func:`classify` picks the handler for a node. Channel-wise ops (activations, pooling,
BatchNorm, flatten, slicing, padding, cat) are :class:`ChannelMap` s: output channel ``j`` is
input ``src_arg[j]``'s channel ``src_ch[j]`` (or the constant ``fill`` where ``src_arg`` is -1),
so their channels are kept or removed together. Anything not recognised is a plain
:class:`OpHandler`, which is opaque: every channel it reads or writes is kept.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from seam.compact.graph import TracedGraph, internal_error
from seam.compact.modules import ChannelAdd, FoldedConv2d, index_plan

if TYPE_CHECKING:
    from seam.compact.passes import Rewriter

__all__ = ["OpHandler", "classify", "pairs"]

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Sigmoid,
                nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus)
_ACT_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.hardtanh,
                  F.hardswish, F.hardsigmoid, F.mish, F.softplus, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh}
_ACT_METHODS = {"relu", "sigmoid", "tanh"}
_IDENTITY_METHODS = {"contiguous", "clone"}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}
_PAD_FUNCTIONS = {F.pad, torch._C._nn.pad}

ConstFn = Callable[[torch.Tensor], torch.Tensor]


# --- helpers ----------------------------------------------------------------------------------


def base_type(m: nn.Module) -> type:
    """The module's class, seen through ``torch.nn.utils.parametrize`` (masks still attached)."""
    if parametrize.is_parametrized(m):
        return type(m).__bases__[0]
    return type(m)


def pairs(w: torch.Tensor) -> torch.Tensor:
    """[O, I, *kernel] -> [O, I, prod(kernel)] (also for empty tensors and linear weights)."""
    return w.reshape(w.shape[0], w.shape[1], math.prod(w.shape[2:]))


def _nans(c: int) -> torch.Tensor:
    return torch.full((c,), math.nan, dtype=torch.float64)


def _pads_break_constants(m: nn.Conv2d) -> bool:
    """True when zero padding makes a constant input non-constant near the borders."""
    if m.padding_mode != "zeros":
        return False
    if isinstance(m.padding, str):
        return m.padding != "valid"
    return any(p != 0 for p in m.padding)


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


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` (positional) or ``name`` (keyword) of a call node."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


# --- the base handler: opaque ops ------------------------------------------------------------


class OpHandler:
    """A node the analysis does not understand: all channels of its inputs and output are kept.

    One instance per graph node; ``inputs`` are the channel tensors (nodes) it reads.
    Subclasses override :meth:`match` (recognise a node), :meth:`constants`,
    :meth:`need_inputs`, :meth:`keep` and :meth:`rewrite`.
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
        return _nans(g.channels(self.node))

    def need_inputs(self, g: TracedGraph, need: dict, cval: dict, must_exist: set) -> None:
        """Mark the input channels that the kept output channels read (``need[input]``, in place).

        ``must_exist`` collects inputs that must stay in the graph even with no channel needed.
        """
        for i in self.inputs:
            need[i][:] = True

    def keep(self, g: TracedGraph, need: dict, keep: dict) -> torch.Tensor:
        """The output channels present in the compact model (inputs' ``keep`` already known)."""
        return need[self.node].clone()

    def live(self, g: TracedGraph, live: dict, rows: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """[C] in [0, 1], differentiable in ``rows``: which output channels still vary with the
        input when each conv/linear keeps only the output rows ``rows[module name]`` gives (1:
        kept). A removed row's channel is a constant, which the compact model folds away.
        An opaque op keeps everything. ``like`` gives the dtype and device."""
        return like.new_ones(g.channels(self.node))

    def ties(self, g: TracedGraph) -> list[tuple[torch.Tensor, fx.Node, torch.Tensor]]:
        """``(output channels, input, its channels)``: channels that a channel search must keep
        or remove together (the same channel, or summed by an add). Empty for an opaque op."""
        return []

    def removed(self, rw: Rewriter) -> None:
        """Called instead of :meth:`rewrite` when no output channel is kept."""

    def rewrite(self, rw: Rewriter) -> fx.Node:
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
            dim = _arg(node, 1, "dim")
            if not isinstance(dim, int) or dim % g.ndim(node.args[0]) == 1:
                return None
        return cls(node, [node.args[0]])

    def need_inputs(self, g, need, cval, must_exist):
        must_exist.update(self.inputs)


# --- convolutions and linear layers -----------------------------------------------------------


class WeightedOp(OpHandler):
    """A layer ``y = W x + b`` over channels: sliced to kept rows and columns.

    Removed constant input channels are folded into the bias (or, for a zero-padded conv,
    into ``FoldedConv2d.const_kernel``, see the package docstring).
    """

    keeps_all = False
    pure = True
    module_type: type = nn.Module
    ndim = 0  # the input rank this layer is handled for

    def __init__(self, node: fx.Node, x: fx.Node, module: nn.Module):
        super().__init__(node, [x])
        self.module = module

    @classmethod
    def match(cls, g, node, x):
        m = g.modules[node.target]
        return cls(node, x, m) if cls._fits(m, g.ndim(x)) else None

    @classmethod
    def _fits(cls, m: nn.Module, ndim: int) -> bool:
        return base_type(m) is cls.module_type and ndim == cls.ndim

    def _border_variable(self, nz: torch.Tensor, var_in: torch.Tensor, safe: torch.Tensor) -> Any:
        """Rows that padding makes non-constant at the borders (none for a linear layer)."""
        return False

    def _border_fold(self, has_fold: bool) -> bool:
        """True when removed constant inputs must be folded border-aware (not into the bias)."""
        return False

    def constants(self, g, cval):
        m, x = self.module, self.inputs[0]
        cin = cval[x]
        w = m.weight.detach().double()
        nz = pairs(w != 0).any(2)
        var_in = torch.isnan(cin)
        safe = torch.where(var_in, torch.zeros_like(cin), cin)
        out = pairs(w).sum(2) @ safe
        if m.bias is not None:
            out = out + m.bias.detach().double()
        bad = (nz & var_in[None]).any(1)
        bad |= self._border_variable(nz, var_in, safe)
        return torch.where(bad, torch.full_like(out, math.nan), out)

    def need_inputs(self, g, need, cval, must_exist):
        rows = need[self.node]
        if rows.any():
            # constant input channels are folded, so only variable ones a kept row reads are needed
            x = self.inputs[0]
            reads = pairs(self.module.weight.detach()[rows] != 0).any(2).any(0)
            need[x] |= reads & torch.isnan(cval[x])
            must_exist.add(x)

    def live(self, g, live, rows, like):
        kept = rows.get(self.node.target)
        if kept is None:
            kept = like.new_ones(g.channels(self.node))
        return kept * live[self.inputs[0]].max()  # with no live input, every row is a constant

    def removed(self, rw):
        rw.layers[self.node.target] = {"type": base_type(self.module).__name__,
                                       "in": [rw.g.channels(self.inputs[0]), 0],
                                       "out": [rw.g.channels(self.node), 0]}
        rw.removed_layers.append(self.node.target)

    def rewrite(self, rw):
        m, x, n = self.module, self.inputs[0], self.node
        kin, kout = rw.keep[x], rw.keep[n]
        new, info = self._sliced(kin, kout, rw.cval[x])
        rw.fold_params += info.pop("fold_params")
        out = rw.call_module(n.target, new, (rw.lookup(x),))
        w = m.weight.detach()
        rw.zeros_kept += int((w[kout][:, kin] == 0).sum())
        if m.bias is not None:
            rw.zeros_kept += int((m.bias.detach()[kout] == 0).sum())
        rw.layers[n.target] = {"type": base_type(m).__name__, "in": [rw.g.channels(x), int(kin.sum())],
                               "out": [rw.g.channels(n), int(kout.sum())], **info}
        return out

    def _sliced(self, kin: torch.Tensor, kout: torch.Tensor, cin: torch.Tensor) -> tuple[nn.Module, dict]:
        """The layer cut to rows ``kout`` and columns ``kin``, removed constant inputs folded."""
        m = self.module
        w = m.weight.detach()
        b = m.bias.detach() if m.bias is not None else None
        rows = w[kout]
        nz, safe, contrib = self._fold(rows, kin, cin)
        has_fold = bool((contrib != 0).any())
        border = self._border_fold(has_fold)
        new_bias = b[kout].double() if b is not None else None
        if has_fold and not border:
            s = contrib.reshape(contrib.shape[0], -1).sum(1)
            new_bias = s if new_bias is None else new_bias + s
        bias = new_bias is not None
        new = self._build(int(kin.sum()), int(kout.sum()), bias, border)
        with torch.no_grad():
            new.weight.copy_(rows[:, kin])
            if bias:
                new.bias.copy_(new_bias.to(w.dtype))
            self._copy_const_kernel(new, contrib, border, kout)
        new_kernel = isinstance(new, FoldedConv2d) and not isinstance(m, FoldedConv2d)
        info = {"folded_inputs": int((nz.any(0) & (safe != 0)).sum()), "border_fold": border,
                "fold_params": (new.const_kernel.numel() if new_kernel else 0)
                + (int(kout.sum()) if bias and b is None else 0)}
        return new.eval(), info

    def _fold(self, rows: torch.Tensor, kin: torch.Tensor, cin: torch.Tensor) -> tuple:
        """Per kept row, ``sum_i k_i W[:, i]`` over removed constant inputs ``i`` ([O, 1, *kernel])."""
        dropped = ~kin
        wd = rows[:, dropped].double()
        cd = cin[dropped]
        nz = pairs(wd != 0).any(2)
        if (nz & torch.isnan(cd)[None]).any():
            raise internal_error(f"{self.node.target} reads a removed variable channel")
        safe = torch.where(torch.isnan(cd), torch.zeros_like(cd), cd)
        contrib = (wd * safe.view(1, -1, *([1] * (wd.dim() - 2)))).sum(1, keepdim=True)
        return nz, safe, contrib

    def _build(self, n_in: int, n_out: int, bias: bool, border: bool) -> nn.Module:
        raise NotImplementedError

    def _copy_const_kernel(self, new: nn.Module, contrib: torch.Tensor, border: bool, kout: torch.Tensor) -> None:
        """Only a conv has one."""


class LinearOp(WeightedOp):
    """``nn.Linear`` on ``[N, C]``: constant inputs fold into the bias."""

    module_type = nn.Linear
    ndim = 2

    def _build(self, n_in, n_out, bias, border):
        w = self.module.weight
        return nn.Linear(n_in, n_out, bias=bias, device=w.device, dtype=w.dtype)


class ConvOp(WeightedOp):
    """Ungrouped ``nn.Conv2d`` (or an earlier compaction's ``FoldedConv2d``) on ``[N, C, H, W]``."""

    module_type = nn.Conv2d
    ndim = 4

    @classmethod
    def _fits(cls, m, ndim):
        return base_type(m) in (nn.Conv2d, FoldedConv2d) and m.groups == 1 and ndim == 4

    def _border_variable(self, nz, var_in, safe):
        m = self.module
        if not _pads_break_constants(m):
            return False
        # zero padding: a non-zero constant input makes the output vary near the borders
        bad = (nz & ~var_in[None] & (safe != 0)[None]).any(1)
        if isinstance(m, FoldedConv2d):
            bad |= (m.const_kernel.detach().reshape(nz.shape[0], -1) != 0).any(1)
        return bad

    def _border_fold(self, has_fold):
        return has_fold and (_pads_break_constants(self.module) or isinstance(self.module, FoldedConv2d))

    def _build(self, n_in, n_out, bias, border):
        m = self.module
        cls = FoldedConv2d if border or isinstance(m, FoldedConv2d) else nn.Conv2d
        return cls(n_in, n_out, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                   groups=1, bias=bias, padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)

    def _copy_const_kernel(self, new, contrib, border, kout):
        if not isinstance(new, FoldedConv2d):
            return
        k = contrib if border else torch.zeros_like(contrib)
        if isinstance(self.module, FoldedConv2d):
            k = k + self.module.const_kernel.detach()[kout].double()
        new.const_kernel.copy_(k.to(self.module.weight.dtype))


# --- channel-wise ops -------------------------------------------------------------------------


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
        self._plans: dict[torch.device, list] = {}  # see _gather_plan

    @classmethod
    def same(cls, node: fx.Node, x: fx.Node, channels: int, const_fn: ConstFn = _identity_const, **kw: Any):
        """Channel ``j`` of the output is channel ``j`` of ``x``."""
        return cls(node, [x], torch.zeros(channels, dtype=torch.long), torch.arange(channels), const_fn=const_fn,
                   **kw)

    def constants(self, g, cval):
        out = _nans(g.channels(self.node))
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

    def live(self, g, live, rows, like):
        # a `fill` channel is a constant; an input's constant channel stays one (approximate
        # where spatial padding or padded pooling makes it vary at the borders)
        out = like.new_zeros(g.channels(self.node))
        for x, (dst, src) in zip(self.inputs, self._gather_plan(like.device)):
            out = out.index_put((dst,), live[x][src])
        return out

    def ties(self, g):
        return [(dst, x, src) for x, (dst, src) in zip(self.inputs, self._gather_plan(torch.device("cpu")))]

    def _gather_plan(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per input: (output channels it gives, its channels they are), on ``device``; built
        once per device, since :meth:`live` runs on every training batch."""
        if device not in self._plans:
            sels = [(self.src_arg == a).nonzero().flatten() for a in range(len(self.inputs))]
            self._plans[device] = [(sel.to(device), self.src_ch[sel].to(device)) for sel in sels]
        return self._plans[device]

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
            if isinstance(m, _ACT_MODULES):
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
            return getattr(torch, node.target) if node.target in _ACT_METHODS else identity
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

    def removed(self, rw):
        x = self.inputs[0]
        rw.layers[self.node.target] = {"type": base_type(self.module).__name__, "in": [rw.g.channels(x), 0],
                                       "out": [rw.g.channels(self.node), 0]}
        rw.removed_layers.append(self.node.target)

    def rewrite(self, rw):
        x, n, k = self.inputs[0], self.node, rw.keep[self.node]
        out = rw.call_module(n.target, self._sliced(k), (rw.lookup(x),))
        rw.layers[n.target] = {"type": type(self.module).__name__, "in": [rw.g.channels(x), int(rw.keep[x].sum())],
                               "out": [rw.g.channels(n), int(k.sum())]}
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
        dims = _norm_dims(_arg(node, 1, "dim"), g.ndim(x))
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
        return cls._flatten(g, node, x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))

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
        pad, mode, value = _arg(node, 1, "pad"), _arg(node, 2, "mode", "constant"), _arg(node, 3, "value")
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
            if _is_add(user) and g.is_ch(user) and g.shapes[user] == g.shapes[self.node]:
                need[self.node] |= need[user] & fills
        super().need_inputs(g, need, cval, must_exist)

    def rewrite(self, rw):
        x = self.inputs[0]
        nd, k = rw.g.ndim(x), rw.keep[self.node]
        c_before = self.pad[2 * (nd - 2)]
        pad = list(self.pad)
        pad[2 * (nd - 2)] = int(k[:c_before].sum())
        pad[2 * (nd - 2) + 1] = int(k[c_before + rw.g.channels(x):].sum())
        while pad and pad[-1] == 0 and pad[-2] == 0 and len(pad) > 2:
            pad = pad[:-2]
        if all(p == 0 for p in pad):
            return rw.lookup(x)
        return rw.graph.call_function(F.pad, (rw.lookup(x), tuple(pad)), {"mode": "constant", "value": self.fill})


class CatOp(ChannelMap):
    """``torch.cat`` along channels of distinct tensors; inputs with no kept channel are left out."""

    needs_first = False

    @classmethod
    def match(cls, g, node, x):
        tensors = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        if not isinstance(tensors, (list, tuple)) or not tensors or not all(g.is_ch(t) for t in tensors):
            return None
        if not isinstance(dim, int) or dim % g.ndim(tensors[0]) != 1 or set(node.kwargs) - {"tensors", "dim"}:
            return None
        if len(set(tensors)) != len(tensors):
            return None
        src_arg = torch.cat([torch.full((g.channels(t),), a, dtype=torch.long) for a, t in enumerate(tensors)])
        src_ch = torch.cat([torch.arange(g.channels(t)) for t in tensors])
        return cls(node, list(tensors), src_arg, src_ch)

    def rewrite(self, rw):
        present = [rw.lookup(x) for x in self.inputs if rw.keep[x].any()]
        dim = _arg(self.node, 1, "dim", 0)
        return present[0] if len(present) == 1 else rw.graph.call_function(torch.cat, (present,), {"dim": dim})


# --- residual adds ----------------------------------------------------------------------------


class AddOp(OpHandler):
    """``a + b`` of same-shape tensors (or a tensor and a number ``scalar``).

    Inputs are not tied: each provides its kept channels, and removed constant input
    channels fold into a :class:`ChannelAdd` constant.
    """

    keeps_all = False
    pure = True
    needs_first = False

    def __init__(self, node: fx.Node, inputs: list[fx.Node], scalar: float):
        super().__init__(node, inputs)
        self.scalar = scalar

    @classmethod
    def match(cls, g, node, x):
        if not g.is_ch(node):
            return None
        kwargs = dict(node.kwargs)
        if node.target is torch.add or node.op == "call_method":
            if kwargs.pop("alpha", 1) != 1:
                return None
        if kwargs or len(node.args) != 2:
            return None
        inputs, scalar = [], 0.0
        for a in node.args:
            if isinstance(a, fx.Node):
                if not g.is_ch(a) or g.shapes[a] != g.shapes[node]:
                    return None
                inputs.append(a)
            elif isinstance(a, (int, float)) and not isinstance(a, bool):
                scalar += a
            else:
                return None
        if not inputs or len(set(inputs)) != len(inputs):
            return None
        return cls(node, inputs, scalar)

    def constants(self, g, cval):
        out = torch.full((g.channels(self.node),), float(self.scalar), dtype=torch.float64)
        for i in self.inputs:
            out = out + cval[i]
        return out

    def need_inputs(self, g, need, cval, must_exist):
        out = need[self.node]
        got = False
        for x in self.inputs:
            reads = out & torch.isnan(cval[x])
            need[x] |= reads
            got = got or bool(reads.any())
        if out.any() and not got:
            # every kept output channel is a folded constant: one input still gives the shape
            must_exist.add(max(self.inputs, key=lambda x: int(torch.isnan(cval[x]).sum())))

    def live(self, g, live, rows, like):
        dead = like.new_ones(g.channels(self.node))
        for x in self.inputs:  # a channel of the sum varies if any input's does
            dead = dead * (1 - live[x])
        return 1 - dead

    def ties(self, g):
        every = torch.arange(g.channels(self.node))
        return [(every, x, every) for x in self.inputs]

    def rewrite(self, rw):
        src, dst, args, const = self._plan(rw)
        has_const = bool((const != 0).any())
        plain = all(s is None and d is None for s, d in zip(src, dst)) and not has_const
        if len(args) == 1 and plain:
            return args[0]
        if len(args) == 2 and plain:
            return rw.graph.call_function(operator.add, tuple(args))
        module = ChannelAdd(len(const), src, dst, const.to(rw.g.dtypes[self.node]) if has_const else None)
        rw.add_count += 1
        return rw.call_module(f"compact_add_{rw.add_count}", module, tuple(args))

    def _plan(self, rw: Rewriter) -> tuple[list, list, list, torch.Tensor]:
        """Per input still present: its source and output channel plans and node; the folded constant."""
        k_out = rw.keep[self.node]
        n_out = int(k_out.sum())
        pos_out = torch.full((len(k_out),), -1, dtype=torch.long)
        pos_out[k_out] = torch.arange(n_out)
        const = torch.full((n_out,), float(self.scalar), dtype=torch.float64)
        src, dst, args = [], [], []
        for x in self.inputs:
            kx, cx = rw.keep[x], rw.cval[x]
            present_out = k_out & kx  # channels this input provides to the output
            folded = k_out & ~kx
            if torch.isnan(cx[folded]).any():
                raise internal_error(f"{self.node.name} lost a variable input channel")
            const[pos_out[folded]] += cx[folded]
            if not present_out.any():
                continue
            pos_x = torch.cumsum(kx.long(), 0) - 1  # positions among x's kept channels
            src.append(index_plan(pos_x[present_out].tolist(), int(kx.sum())))
            dst.append(index_plan(pos_out[present_out].tolist(), n_out))
            args.append(rw.lookup(x))
        if not args:
            raise internal_error(f"{self.node.name} has no input left")
        return src, dst, args, const


# --- which handler a node gets ----------------------------------------------------------------

# Leaf modules, by isinstance, first match wins (a handler's match() makes the exact checks).
_MODULE_HANDLERS: list[tuple[tuple[type, ...], type[OpHandler]]] = [
    ((nn.Conv2d,), ConvOp),
    ((nn.Linear,), LinearOp),
    ((nn.BatchNorm1d, nn.BatchNorm2d), BatchNormOp),
    (_ACT_MODULES + (nn.Identity, nn.modules.dropout._DropoutNd), ElementwiseOp),
    ((nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d), PoolOp),
    ((nn.Flatten,), FlattenOp),
]
_FUNCTION_HANDLERS: dict[Callable, type[OpHandler]] = {
    **dict.fromkeys(_ADD_FUNCTIONS, AddOp),
    torch.cat: CatOp,
    **dict.fromkeys(_ACT_FUNCTIONS | {F.dropout}, ElementwiseOp),
    operator.getitem: GetItemOp,
    **dict.fromkeys(_PAD_FUNCTIONS, PadOp),
    torch.flatten: FlattenOp,
    **dict.fromkeys((F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, F.avg_pool2d), PoolOp),
    torch.mean: MeanOp,
}
_METHOD_HANDLERS: dict[str, type[OpHandler]] = {
    "size": ShapeOp, "dim": ShapeOp, "add": AddOp,
    **dict.fromkeys(_ACT_METHODS | _IDENTITY_METHODS, ElementwiseOp),
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


def _is_add(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target == "add"))


def _is_activation(g: TracedGraph, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(g.modules[node.target], _ACT_MODULES)
    return node.op == "call_function" and node.target in _ACT_FUNCTIONS


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
