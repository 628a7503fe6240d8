"""Channel liveness in a few tensor ops per tracked tensor: what a channel search's cost needs on every batch.

A channel is *live* when it still varies with the input, given the output rows each
conv/linear keeps (``keep``: 0/1, or in between, differentiable). The handlers say what each
channel's liveness is made of (``OpHandler.live_sources``): a multiset of sources, each
:data:`ALWAYS_LIVE` (worth 1) or row ``r`` of a conv/linear node ``w``, worth
``keep[w][r] * gate[x]``, where the gate is the largest liveness of ``w``'s input ``x`` (with
no live input, every row is a constant). A channel is worth its one source, or the noisy-or
``1 - prod(1 - source)`` of several (a source counted twice counts twice), or 0 with none.

:class:`LivenessPlan` compiles this once per model into index tensors, then evaluates the
tracked tensors (the layers' inputs, the outputs) in the graph's order with plain tensor ops,
which autograd differentiates. One step per tracked tensor: gather each channel's sources from
the values found so far, fold them with the noisy-or of two, ``lerp(a, 1, b) = 1 - (1 - a)(1 - b)``
(one op, which also computes it as that product where ``b >= 1/2``), take the max (the gate of
the layers that read the tensor), and append the channels and the rows they gate, ``keep * gate``.
A tracked channel is a source of the channels after it, in place of its own sources: a residual
stream's channel is the noisy-or of the last one and the new rows, two sources, not one per
block so far.

This gives the values of a walk over the graph in which each op maps its inputs' liveness to
its output's (a conv: ``keep * max(live[input])``, a channel-wise op: a gather, an add:
``1 - prod(1 - live[input])``; ``tests/test_granularity.py`` keeps it as the reference):
exactly where every keep is 0 or 1 (as in a search), else up to the rounding of a
reassociated product; and the walk's gradient (a max's split evenly between tied channels) up
to rounding. No op reads a value back from a GPU (``prod``'s backward pass would, to look for
zeros).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx as fx

from seam.compact.graph import TracedGraph, internal_error
from seam.compact.ops import ALWAYS_LIVE, OpHandler, WeightedOp

__all__ = ["Liveness", "LivenessPlan"]


@dataclass
class Liveness:
    """One evaluation of a :class:`LivenessPlan`."""

    live: torch.Tensor  # [channels]: every tracked tensor's channels in turn, differentiable in the keeps
    maxes: torch.Tensor  # [tensors]: each tracked tensor's largest liveness (> 0: it still varies); no gradient


class LivenessPlan:
    """The liveness of ``nodes`` and of every conv/linear input, in a few tensor ops per tracked tensor.

    ``modules``: the conv/linear modules whose keeps a call takes, by name, with their row
    counts; a module left out of a call keeps every row, and so does a conv/linear of the
    graph not named here.
    """

    def __init__(self, g: TracedGraph, ops: dict[fx.Node, OpHandler], modules: dict[str, int],
                 nodes: list[fx.Node] = ()):
        self.modules = dict(modules)
        layers = [op for op in ops.values() if isinstance(op, WeightedOp)]
        tracked = {op.inputs[0] for op in layers} | {n for n in nodes if g.is_ch(n)}
        self.nodes = sorted(tracked, key=g.order.__getitem__)  # topological: sources before their users
        self._sizes = {n: g.channels(n) for n in self.nodes}
        self.offsets: dict[fx.Node, int] = {}
        offset = 0
        for n in self.nodes:
            self.offsets[n], offset = offset, offset + self._sizes[n]
        start, flat = {}, 0
        for name, rows in self.modules.items():
            start[name], flat = flat, flat + rows
        readers = {n: [op for op in layers if op.inputs[0] is n] for n in self.nodes}
        # the flat keep: the modules' keeps, then a 1 (a module no call names) and a 0 (padding)
        gated = [[start[op.node.target] + r if op.node.target in start else flat
                  for op in readers[n] for r in range(g.channels(op.node))] for n in self.nodes]
        # the values a call builds: ALWAYS_LIVE's 1, a 0 (padding), then step after step the
        # tracked tensor's channels and the rows it gates. Each step's sources are positions
        # there, by column; a tracked channel stands in for its own sources after it.
        position, columns, sources = {ALWAYS_LIVE: 0}, [], {}
        for n in g.nodes:
            if not g.is_ch(n):
                continue
            sources[n] = ops[n].live_sources(g, sources)
            if n not in tracked:
                continue
            try:
                channels = [[position[s] for s, count in c.items() for _ in range(count)] for c in sources[n]]
            except KeyError:
                raise internal_error(f"{n.name}'s liveness comes from a layer not before it") from None
            width = max([1] + [len(c) for c in channels])
            columns.append([torch.tensor([c[j] if j < len(c) else 1 for c in channels]) for j in range(width)])
            new = [("live", n, c) for c in range(self._sizes[n])]
            new += [(op.node, r) for op in readers[n] for r in range(g.channels(op.node))]
            position.update({key: 1 + len(position) + i for i, key in enumerate(new)})  # 1: the padding
            sources[n] = [Counter({key: 1}) for key in new[:self._sizes[n]]]
        members = torch.full((len(self.nodes), max([1] + list(self._sizes.values()))), offset)
        for t, n in enumerate(self.nodes):
            members[t, :self._sizes[n]] = torch.arange(self.offsets[n], self.offsets[n] + self._sizes[n])
        module_rows = torch.full((len(self.modules), max([1] + list(self.modules.values()))), flat + 1)
        for k, (name, count) in enumerate(self.modules.items()):
            module_rows[k, :count] = torch.arange(start[name], start[name] + count)
        self._cpu = {"columns": columns, "gated": torch.tensor([i for rows in gated for i in rows], dtype=torch.long),
                     "members": members, "module_rows": module_rows, "tail": torch.tensor([1.0, 0.0])}
        self._gated_sizes = [len(rows) for rows in gated]
        self._devices: dict[torch.device, dict] = {}

    def _index(self, device: torch.device) -> dict:
        """The index tensors on ``device``: ``columns`` (per step, per column, each channel's
        source), ``gated`` (the rows each step gates, step after step, in the flat keep),
        ``members`` (each tracked tensor's channels in ``live``, padded with the position one
        past them), ``module_rows`` (each module's rows in the flat keep, padded with its 0),
        ``tail`` (the flat keep's 1 and 0: made once, as a copy from the host waits for a GPU)."""
        if device not in self._devices:
            ix = {k: v.to(device) for k, v in self._cpu.items() if k != "columns"}
            ix["columns"] = [[c.to(device) for c in step] for step in self._cpu["columns"]]
            self._devices[device] = ix
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
        parts.append(self._index(like.device)["tail"].to(like.dtype))
        return torch.cat(parts)

    def __call__(self, flat: torch.Tensor) -> Liveness:
        """Every tracked tensor's liveness with the keeps ``flat`` (:meth:`flat_keep`)."""
        ix = self._index(flat.device)
        one = flat.new_ones(())
        values = flat[-2:]  # 1 (ALWAYS_LIVE), 0 (padding)
        lives, maxes = [], []
        for columns, rows in zip(ix["columns"], flat.index_select(0, ix["gated"]).split(self._gated_sizes)):
            live = functools.reduce(lambda a, b: torch.lerp(a, one, b), (values.index_select(0, c) for c in columns))
            gate = live.amax()  # ties share its gradient evenly, as the walk's max
            values = torch.cat([values, live, rows * gate])
            lives.append(live)
            maxes.append(gate)
        return Liveness(live=torch.cat(lives), maxes=torch.stack(maxes).detach())

    def sums(self, live: torch.Tensor) -> torch.Tensor:
        """[tensors]: how many channels of each tracked tensor are live."""
        return _take(torch.cat([live, live.new_zeros(1)]), self._index(live.device)["members"]).sum(1)

    def kept_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """[modules]: how many rows each of :attr:`modules` keeps."""
        return _take(flat, self._index(flat.device)["module_rows"]).sum(1)

    def channels(self, live: torch.Tensor) -> dict[fx.Node, torch.Tensor]:
        """The liveness of each tracked tensor's channels, by node."""
        return {n: live[o:o + self._sizes[n]] for n, o in self.offsets.items()}


def _take(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]`` for a 1-D ``source``. ``index_select`` rather than indexing: on a CPU
    that other jobs share, indexing's parallel kernel waits ~10 ms for its threads."""
    return source.index_select(0, index.flatten()).view(index.shape)
