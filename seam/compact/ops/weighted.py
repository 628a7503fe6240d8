"""Convolutions and linear layers: sliced to their kept rows and columns, removed constant input
channels folded into the bias or (zero-padded convs) into ``FoldedConv2d.const_kernel``."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from seam.compact.graph import internal_error
from seam.compact.modules import FoldedConv2d
from seam.compact.ops.base import OpHandler, base_type, pairs, removed_layer_entry

__all__ = ["ConvOp", "LinearOp", "WeightedOp"]


def _pads_break_constants(m: nn.Conv2d) -> bool:
    """True when zero padding makes a constant input non-constant near the borders."""
    if m.padding_mode != "zeros":
        return False
    if isinstance(m.padding, str):
        return m.padding != "valid"
    return any(p != 0 for p in m.padding)


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

    def live_sources(self, g, sources):
        # row r is its own source: kept or not, and with no live input every row is a constant
        return [Counter({(self.node, r): 1}) for r in range(g.channels(self.node))]

    def removed(self, g, rw):
        rw.record_removed(self.node.target, removed_layer_entry(g, self.node, self.inputs[0], self.module))

    def rewrite(self, g, rw):
        m, x, n = self.module, self.inputs[0], self.node
        kin, kout = rw.kept(x), rw.kept(n)
        new, info = self._sliced(kin, kout, rw.constants(x))
        rw.count_fold_params(info.pop("fold_params"))
        out = rw.call_module(n.target, new, (rw.lookup(x),))
        w = m.weight.detach()
        rw.count_kept_zeros(int((w[kout][:, kin] == 0).sum()))
        if m.bias is not None:
            rw.count_kept_zeros(int((m.bias.detach()[kout] == 0).sum()))
        rw.record_layer(n.target, {"type": base_type(m).__name__, "in": [g.channels(x), int(kin.sum())],
                                   "out": [g.channels(n), int(kout.sum())], **info})
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
