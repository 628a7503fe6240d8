"""Residual adds: inputs are not tied, each gives its kept channels, and removed constant input
channels fold into a :class:`~seam.compact.modules.ChannelAdd` constant."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from seam.compact.graph import internal_error
from seam.compact.modules import ChannelAdd, index_plan
from seam.compact.ops.base import CompactBuilder, OpHandler

__all__ = ["ADD_FUNCTIONS", "AddOp", "is_add"]

ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}


def is_add(node: fx.Node) -> bool:
    """True for a call of an add (function or ``Tensor.add``), whatever its arguments."""
    return ((node.op == "call_function" and node.target in ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target == "add"))


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

    def live_sources(self, g, sources):
        return self._tied_sources(g, sources)  # a channel of the sum varies if any input's does

    def ties(self, g):
        every = torch.arange(g.channels(self.node))
        return [(every, x, every) for x in self.inputs]

    def rewrite(self, g, rw):
        src, dst, args, const = self._plan(rw)
        has_const = bool((const != 0).any())
        plain = all(s is None and d is None for s, d in zip(src, dst)) and not has_const
        if len(args) == 1 and plain:
            return args[0]
        if len(args) == 2 and plain:
            return rw.call_function(operator.add, tuple(args))
        module = ChannelAdd(len(const), src, dst, const.to(g.dtypes[self.node]) if has_const else None)
        return rw.call_module(rw.fresh_name("compact_add"), module, tuple(args))

    def _plan(self, rw: CompactBuilder) -> tuple[list, list, list, torch.Tensor]:
        """Per input still present: its source and output channel plans and node; the folded constant."""
        k_out = rw.kept(self.node)
        n_out = int(k_out.sum())
        pos_out = torch.full((len(k_out),), -1, dtype=torch.long)
        pos_out[k_out] = torch.arange(n_out)
        const = torch.full((n_out,), float(self.scalar), dtype=torch.float64)
        src, dst, args = [], [], []
        for x in self.inputs:
            kx, cx = rw.kept(x), rw.constants(x)
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
