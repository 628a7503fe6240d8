"""Modules of a compact model: a convolution with folded constant inputs, a channel-aligned add."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelAdd", "FoldedConv2d", "index_plan"]

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
        if torch.compiler.is_compiling():
            # torch.export / compile: the map is part of the graph (a cache entry would be
            # a tensor attribute assigned during tracing)
            ones = torch.ones(1, 1, height, width, dtype=k.dtype, device=k.device)
            return F.conv2d(ones, k, None, self.stride, self.padding, self.dilation)
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



def index_plan(idx: list[int], full: int) -> Any:
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
        engine runs fast. Used by ``seam.deploy.onnx`` only (see ``export_form`` there).
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
