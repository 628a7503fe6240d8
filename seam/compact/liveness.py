"""Channel liveness as a few tensor ops: what a channel search's cost needs on every batch.

A channel is *live* when it still varies with the input, given the output rows each
conv/linear keeps (``keep``: 0/1, or in between, differentiable). The handlers say what each
channel's liveness is made of (``OpHandler.live_sources``): a multiset of sources, each
:data:`ALWAYS_LIVE` (worth 1) or row ``r`` of a conv/linear node ``w``, worth
``keep[w][r] * s[x]``, where the gate ``s[x]`` is the largest liveness of ``w``'s input ``x``
(with no live input, every row is a constant). A channel is worth its one source, or the
noisy-or ``1 - prod(1 - source)`` of several (a source counted twice counts twice), or 0
with none.

:class:`LivenessPlan` compiles this once per model into index tensors, and evaluates every
tracked tensor (the layers' inputs, the outputs) at once: a gather of the sources, a
product, a padded max per tensor. The gates depend on each other in the layers' order, a
chain as long as the model is deep, so the forward pass finds them by fixed-point
iteration from ``s = 1`` everywhere: each pass settles at least one more link of the chain,
and a search rarely leaves a layer without live input, so one or two passes do (each ends
in a check that waits for a GPU, as ``ChannelGate``'s rounding already does every step). The
backward pass is written out (``_LiveChannels``): by the implicit function theorem on
``s = F(s, keep)``, whose ``J = dF/ds`` is strictly lower triangular in the graph's order,
the chain through every later gate is one small triangular solve with ``I - J^T``.

This gives the values of a walk over the graph in which each op maps its inputs' liveness
to its output's (a conv: ``keep * max(live[input])``, a channel-wise op: a gather, an add:
``1 - prod(1 - live[input])``; ``tests/test_granularity.py`` keeps it as the reference):
exactly where every keep is 0 or 1 (as in a search), else up to the rounding of a
reassociated product. The gradient is the walk's (a max's split evenly between tied
channels, as ``Tensor.max`` does) up to rounding: it sums the same terms in another order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx as fx

from seam.compact.graph import TracedGraph, internal_error
from seam.compact.ops import ALWAYS_LIVE, OpHandler, WeightedOp
from seam.compact.passes import live_sources

__all__ = ["Liveness", "LivenessPlan"]

# a padded tensor's max skips its padding: this much below any liveness (all in [0, 1])
_PAD_PENALTY = 2.0


@dataclass
class Liveness:
    """One evaluation of a :class:`LivenessPlan`."""

    live: torch.Tensor  # [channels]: every tracked tensor's channels in turn, differentiable in the keeps
    maxes: torch.Tensor  # [tensors]: each tracked tensor's largest liveness (> 0: it still varies); no gradient


@dataclass
class _Index:
    """A plan's index tensors on one device. Padding points one past the end of what is
    indexed, where the user appends a 0 (a 1 for ``slots``' ALWAYS_LIVE, just before it)."""

    keep_of: torch.Tensor  # [source rows]: each one's position in the flat keep
    gate_of: torch.Tensor  # [source rows]: the tracked tensor (its layer's input) whose max gates it
    slots: torch.Tensor  # [channels, width]: each channel's sources
    powers: torch.Tensor | None  # [channels, width]: their counts, None when every count is 1
    single: torch.Tensor  # [channels, 1]: at most one source, counted once (worth it as it is)
    members: torch.Tensor  # [tensors, widest]: each tracked tensor's channels
    penalty: torch.Tensor  # [tensors, widest]: _PAD_PENALTY on the padding, 0 elsewhere
    position: torch.Tensor  # [channels]: each channel's flat position in ``members``
    owner: torch.Tensor  # [channels]: each channel's tracked tensor
    module_rows: torch.Tensor  # [modules, most rows]: each module's rows in the flat keep
    # (channel, source row) pairs, for the backward pass; its sums over pairs are padded
    # gathers, not index_add: the same order every run, on a GPU too
    pair_slot: torch.Tensor  # [pairs]: the pair's flat position in ``slots``
    pair_channel: torch.Tensor  # [pairs]: its channel
    pair_gate: torch.Tensor  # [pairs]: the tracked tensor that gates its source row
    pair_keep: torch.Tensor  # [pairs]: its source row's position in the flat keep
    by_cell: torch.Tensor  # [cells, most]: per (tensor, gate), the pairs of its channels and the rows the gate gates
    cells: torch.Tensor  # [cells]: each cell's flat position in a [tensors, tensors] matrix
    by_gate: torch.Tensor  # [tensors, most]: the pairs whose row each tracked tensor gates
    by_keep: torch.Tensor  # [flat keep, most]: the pairs whose row each keep is


class LivenessPlan:
    """The liveness of ``nodes`` and of every conv/linear input, as a few tensor ops per call.

    ``modules``: the conv/linear modules whose keeps a call takes, by name, with their row
    counts; a module left out of a call keeps every row, and so does a conv/linear of the
    graph not named here.
    """

    def __init__(self, g: TracedGraph, ops: dict[fx.Node, OpHandler], modules: dict[str, int],
                 nodes: list[fx.Node] = ()):
        self.modules = dict(modules)
        layers = [op for op in ops.values() if isinstance(op, WeightedOp)]
        tracked = {op.inputs[0] for op in layers} | {n for n in nodes if g.is_ch(n)}
        self.nodes = sorted(tracked, key=g.order.__getitem__)  # topological: dF/ds is lower triangular
        self._sizes = {n: g.channels(n) for n in self.nodes}
        self.offsets: dict[fx.Node, int] = {}
        offset = 0
        for n in self.nodes:
            self.offsets[n], offset = offset, offset + self._sizes[n]
        start, flat = {}, 0
        for name, rows in self.modules.items():
            start[name], flat = flat, flat + rows
        self._flat_size = flat + 2  # the keeps, then a 1 (a module no call names) and a 0 (padding)
        ids, keep_of, gate_of = self._source_rows(g, layers, start)
        fields = self._channel_fields(live_sources(g, ops), ids)
        module_rows = torch.full((len(self.modules), max([1] + list(self.modules.values()))), flat + 1)
        for k, (name, count) in enumerate(self.modules.items()):
            module_rows[k, :count] = torch.arange(start[name], start[name] + count)
        self._cpu = _Index(keep_of=keep_of, gate_of=gate_of, module_rows=module_rows, **fields,
                           **self._pair_fields(fields["slots"], fields["owner"], keep_of, gate_of))
        self._devices: dict[torch.device, _Index] = {}

    def _source_rows(self, g: TracedGraph, layers: list[WeightedOp], start: dict[str, int]) -> tuple:
        """Every conv/linear row: ids by ``(node, row)``, positions in the flat keep, gates."""
        tensor_of = {n: t for t, n in enumerate(self.nodes)}
        ids, keep_of, gate_of = {}, [], []
        for op in layers:
            for r in range(g.channels(op.node)):
                ids[op.node, r] = len(keep_of)
                keep_of.append(start[op.node.target] + r if op.node.target in start else self._flat_size - 2)
                gate_of.append(tensor_of[op.inputs[0]])
        return ids, torch.tensor(keep_of, dtype=torch.long), torch.tensor(gate_of, dtype=torch.long)

    def _channel_fields(self, sources: dict[fx.Node, list[Counter]], ids: dict) -> dict[str, torch.Tensor | None]:
        """The tracked channels' sources (``slots``: row ids, then ALWAYS_LIVE, then padding)
        and each tracked tensor's channels."""
        always = len(ids)
        channels = [counts for n in self.nodes for counts in sources[n]]
        width = max([1] + [len(s) for s in channels])
        slots = torch.full((len(channels), width), always + 1, dtype=torch.long)
        powers = torch.ones((len(channels), width))
        for i, counts in enumerate(channels):
            for j, (src, count) in enumerate(counts.items()):
                slots[i, j] = always if src == ALWAYS_LIVE else ids[src]
                powers[i, j] = count
        single = [len(s) == 0 or (len(s) == 1 and max(s.values()) == 1) for s in channels]
        sizes = [self._sizes[n] for n in self.nodes]
        members = torch.full((len(self.nodes), max([1] + sizes)), len(channels), dtype=torch.long)
        penalty = torch.full(members.shape, _PAD_PENALTY)
        for t, n in enumerate(self.nodes):
            members[t, :sizes[t]] = torch.arange(self.offsets[n], self.offsets[n] + sizes[t])
            penalty[t, :sizes[t]] = 0
        return {"slots": slots, "powers": powers if bool((powers != 1).any()) else None,
                "single": torch.tensor(single, dtype=torch.bool).view(-1, 1), "members": members,
                "penalty": penalty, "position": (members < len(channels)).flatten().nonzero().flatten(),
                "owner": torch.repeat_interleave(torch.arange(len(self.nodes)), torch.tensor(sizes, dtype=torch.long))}

    def _pair_fields(self, slots: torch.Tensor, owner: torch.Tensor, keep_of: torch.Tensor,
                     gate_of: torch.Tensor) -> dict[str, torch.Tensor]:
        """The (channel, source row) pairs and their groupings, for :meth:`_keep_gradient`."""
        pair_slot = (slots < len(keep_of)).flatten().nonzero().flatten()
        source = slots.flatten()[pair_slot]
        channel = pair_slot // slots.shape[1]
        gate, keep = gate_of[source], keep_of[source]
        n = len(self.nodes)
        cells, cell_of = torch.unique(owner[channel] * n + gate, return_inverse=True)
        return {"pair_slot": pair_slot, "pair_channel": channel, "pair_gate": gate, "pair_keep": keep,
                "by_cell": _groups(cell_of, len(cells)), "cells": cells, "by_gate": _groups(gate, n),
                "by_keep": _groups(keep, self._flat_size)}

    def _index(self, device: torch.device) -> _Index:
        if device not in self._devices:
            fields = {k: (v.to(device) if v is not None else None) for k, v in vars(self._cpu).items()}
            self._devices[device] = _Index(**fields)
        return self._devices[device]

    def flat_keep(self, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """The keeps of :attr:`modules` one after the other (every row where ``keep`` has no
        entry), then a 1 and a 0 that the index tensors point at."""
        like = next(iter(keep.values()))
        parts = []
        for name, rows in self.modules.items():
            k = keep.get(name)
            if k is None:
                k = like.new_ones(rows)
            elif k.shape != (rows,):
                raise ValueError(f"keep[{name!r}] has shape {tuple(k.shape)}, expected ({rows},)")
            parts.append(k)
        parts.append(like.new_tensor([1.0, 0.0]))
        return torch.cat(parts)

    def __call__(self, flat: torch.Tensor) -> Liveness:
        """Every tracked tensor's liveness with the keeps ``flat`` (:meth:`flat_keep`)."""
        live, maxes = _LiveChannels.apply(flat, self, self._index(flat.device))
        return Liveness(live=live, maxes=maxes)

    def sums(self, live: torch.Tensor) -> torch.Tensor:
        """[tensors]: how many channels of each tracked tensor are live."""
        return _take(torch.cat([live, live.new_zeros(1)]), self._index(live.device).members).sum(1)

    def kept_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """[modules]: how many rows each of :attr:`modules` keeps."""
        return _take(flat, self._index(flat.device).module_rows).sum(1)

    def channels(self, live: torch.Tensor) -> dict[fx.Node, torch.Tensor]:
        """The liveness of each tracked tensor's channels, by node."""
        return {n: live[o:o + self._sizes[n]] for n, o in self.offsets.items()}

    def _fixed_point(self, ix: _Index, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gates ``s = F(s)`` and the liveness they give, without autograd. From all ones,
        each pass settles at least one more link of the chain: ``F`` is triangular, so the
        fixed point is unique, the one a walk in the graph's order finds."""
        gates = flat.new_ones(len(self.nodes))
        for _ in range(len(self.nodes) + 1):
            live = self._live(ix, flat, gates)
            grid = _take(torch.cat([live, live.new_zeros(1)]), ix.members)
            new = (grid - ix.penalty).amax(1)
            if torch.allclose(new, gates, rtol=0, atol=0, equal_nan=True):
                return gates, live
            gates = new
        raise internal_error("the liveness gates did not settle")

    def _keep_gradient(self, ix: _Index, flat: torch.Tensor, gates: torch.Tensor, live: torch.Tensor,
                      grad: torch.Tensor) -> torch.Tensor:
        """d(grad . live)/d flat at the fixed point ``gates``, the chain through every gate
        included (the module docstring's triangular solve)."""
        value = self._sources(ix, flat, gates)
        factors = self._factors(ix, value)
        # d noisy-or / d source: the product of the other factors (prefix x suffix products)
        ones = factors.new_ones(factors.shape[0], 1)
        before = torch.cat([ones, factors[:, :-1]], 1).cumprod(1)
        after = torch.cat([factors[:, 1:], ones], 1).flip(1).cumprod(1).flip(1)
        slope = before * after
        if ix.powers is not None:
            slope = slope * ix.powers * (1 - value) ** (ix.powers - 1)
        slope = _take(slope.flatten(), ix.pair_slot)  # per (channel, source row) pair
        by_gate = slope * _take(flat, ix.pair_keep)  # d channel / d its source row's gate
        # a gate is its tensor's max: Tensor.max's gradient goes to the tied channels, split evenly
        grid = _take(torch.cat([live, live.new_zeros(1)]), ix.members)
        ties = ((grid - ix.penalty) == gates[:, None]).to(flat.dtype)
        share = _take((ties / ties.sum(1, keepdim=True)).flatten(), ix.position)
        n = len(self.nodes)
        jac = flat.new_zeros(n * n).index_copy_(0, ix.cells, _sum_groups(_take(share, ix.pair_channel) * by_gate,
                                                                         ix.by_cell)).view(n, n)
        direct = _sum_groups(_take(grad, ix.pair_channel) * by_gate, ix.by_gate)
        # unitriangular: the solve reads the diagonal as 1, so -J^T stands for I - J^T
        total = torch.linalg.solve_triangular(-jac.T, direct[:, None], upper=True, unitriangular=True)[:, 0]
        grad = grad + share * _take(total, ix.owner)
        return _sum_groups(_take(grad, ix.pair_channel) * slope * _take(gates, ix.pair_gate), ix.by_keep)

    @staticmethod
    def _sources(ix: _Index, flat: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """[channels, width]: the value of each channel's sources (1 for ALWAYS_LIVE, 0 padding)."""
        value = _take(flat, ix.keep_of) * _take(gates, ix.gate_of)
        return _take(torch.cat([value, value.new_tensor([1.0, 0.0])]), ix.slots)

    @staticmethod
    def _factors(ix: _Index, value: torch.Tensor) -> torch.Tensor:
        """``(1 - source) ** count``: a channel is dead as far as the product of its factors."""
        factors = 1 - value
        return factors if ix.powers is None else factors ** ix.powers

    def _live(self, ix: _Index, flat: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """[channels]: the liveness of every tracked channel, the gates taken as given."""
        value = self._sources(ix, flat, gates)
        if value.shape[1] == 1:
            return value[:, 0]
        # one source counted once is worth it as it is: the walk gathers it, no noisy-or
        noisy_or = 1 - self._factors(ix, value).prod(1, keepdim=True)
        return torch.where(ix.single, value[:, :1], noisy_or)[:, 0]


def _groups(keys: torch.Tensor, count: int) -> torch.Tensor:
    """[count, most]: for each group ``k``, the positions where ``keys == k``, padded with ``len(keys)``."""
    order = torch.argsort(keys, stable=True)
    sizes = torch.bincount(keys, minlength=count)
    ranks = torch.arange(len(keys)) - (torch.cumsum(sizes, 0) - sizes)[keys[order]]
    out = torch.full((count, max([1] + sizes.tolist())), len(keys), dtype=torch.long)
    out[keys[order], ranks] = order
    return out


def _sum_groups(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per row of ``groups`` (:func:`_groups`), the sum of its ``values``."""
    return _take(torch.cat([values, values.new_zeros(1)]), groups).sum(1)


def _take(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]`` for a 1-D ``source``. ``index_select`` rather than indexing: on a CPU
    that other jobs share, indexing's parallel kernel waits ~10 ms for its threads."""
    return source.index_select(0, index.flatten()).view(index.shape)


class _LiveChannels(torch.autograd.Function):
    """flat keeps -> (liveness of every tracked channel, every tracked tensor's max), with the
    backward pass written out: the forward's fixed-point iteration has no useful graph."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, plan: LivenessPlan, ix: _Index) -> tuple[torch.Tensor, torch.Tensor]:
        gates, live = plan._fixed_point(ix, flat)
        ctx.save_for_backward(flat, gates, live)
        ctx.plan, ctx.ix = plan, ix
        ctx.mark_non_differentiable(gates)
        return live, gates

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        flat, gates, live = ctx.saved_tensors
        return ctx.plan._keep_gradient(ctx.ix, flat, gates, live, grad), None, None
