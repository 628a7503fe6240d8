"""The passes over the classified graph: constants forward, needs backward, keeps forward, and
what a channel search counts with: each channel's liveness sources and the channel ties (the
rewrite is ``rewriter``)."""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from seam.compact.graph import TracedGraph
from seam.compact.ops import ChannelMap, OpHandler

__all__ = ["channel_groups", "constants", "keeps", "mutated_late", "needs"]


def mutated_late(g: TracedGraph, ops: dict[fx.Node, OpHandler]) -> set[fx.Node]:
    """Tensors mutated in place by one node and read by later nodes.

    Later readers see the mutated values, so no constant is assumed for such a tensor, and
    the in-place op becomes opaque (copied as it is: the compact graph keeps the node order).
    ``ops`` is updated in place.
    """
    mutated = set()
    for n in g.nodes:
        if n.op != "placeholder" and g.inplace(n) and n.args and isinstance(n.args[0], fx.Node):
            target = n.args[0]
            if any(g.order[u] > g.order[n] for u in target.users if u is not n):
                mutated.add(target)
                if isinstance(ops[n], ChannelMap):
                    ops[n] = OpHandler(n, g.tensor_inputs(n))
    return mutated


def constants(g: TracedGraph, ops: dict, mutated: set) -> dict[fx.Node, torch.Tensor]:
    """Per channel node: float64 [C], the constant value of each channel, NaN where variable."""
    cval: dict = {}
    for n in g.nodes:
        if g.is_ch(n):
            out = ops[n].constants(g, cval)
            cval[n] = torch.full((g.channels(n),), math.nan, dtype=torch.float64) if n in mutated else out
    return cval


def channel_groups(g: TracedGraph, ops: dict) -> dict[fx.Node, torch.Tensor]:
    """Per channel node: a group id per channel. Channels an op ties (``OpHandler.ties``: the
    same channel through BatchNorm, activations, pooling, padding; the inputs and output of a
    residual add) share a group, found by union-find over every (node, channel)."""
    base, total = {}, 0
    for n in g.nodes:
        if g.is_ch(n):
            base[n], total = total, total + g.channels(n)
    parent = list(range(total))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n in base:
        for dst, x, src in ops[n].ties(g):
            for a, b in zip((dst + base[n]).tolist(), (src + base[x]).tolist()):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    return {n: torch.tensor([find(base[n] + c) for c in range(g.channels(n))]) for n in base}


def needs(g: TracedGraph, ops: dict, cval: dict) -> dict[fx.Node, torch.Tensor]:
    """Reverse topological pass: which channels must be materialised in the compact model."""
    need = {n: torch.zeros(g.channels(n), dtype=torch.bool) for n in g.nodes if g.is_ch(n)}
    must_exist: set = set()
    for n in reversed(g.nodes):
        op = ops[n]
        if g.is_ch(n):
            if op.keeps_all:
                need[n][:] = True
            if n in must_exist and not need[n].any():
                # Something needs this tensor's shape (or a kept op needs an input): keep one
                # channel, preferably a variable one.
                var = torch.isnan(cval[n]).nonzero()
                need[n][int(var[0]) if len(var) else 0] = True
        op.need_inputs(g, need, cval, must_exist)
    return need


def keeps(g: TracedGraph, ops: dict, need: dict) -> dict[fx.Node, torch.Tensor]:
    """Channels present in the compact model: needed ones, closed under channel-wise ties."""
    keep: dict = {}
    for n in g.nodes:
        if g.is_ch(n):
            keep[n] = ops[n].keep(g, need, keep)
    return keep
