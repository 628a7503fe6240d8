"""The passes over the classified graph: constants forward, needs backward, keeps forward, rewrite."""

from __future__ import annotations

import copy
import math

import torch
import torch.fx as fx

from seam.compact.graph import TracedGraph, internal_error
from seam.compact.ops import ChannelMap, OpHandler

__all__ = ["Rewriter", "channel_groups", "constants", "keeps", "liveness", "mutated_late", "needs"]


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


def liveness(g: TracedGraph, ops: dict, rows: dict[str, torch.Tensor], like: torch.Tensor
             ) -> dict[fx.Node, torch.Tensor]:
    """Forward pass, differentiable in ``rows``: per channel node, which channels vary with the
    input when each conv/linear keeps the output rows ``rows[module name]`` (see ``OpHandler.live``)."""
    live: dict = {}
    for n in g.nodes:
        if g.is_ch(n):
            live[n] = ops[n].live(g, live, rows, like)
    return live


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


class Rewriter:
    """Builds the compact graph node by node (each handler's ``rewrite``) and the layer report."""

    def __init__(self, g: TracedGraph, ops: dict, cval: dict, keep: dict):
        self.g, self.ops, self.cval, self.keep = g, ops, cval, keep
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node | None] = {}
        self.attrs: dict = {}
        self.used_targets: set = set()
        self.layers: dict = {}
        self.removed_layers: list = []
        self.zeros_kept = 0
        self.fold_params = 0
        self.add_count = 0

    def lookup(self, n: fx.Node) -> fx.Node:
        """The compact graph's node for ``n``."""
        v = self.env.get(n)
        if v is None:
            raise internal_error(f"{n.name} was removed but is still read")
        return v

    def _target_for(self, t: str) -> str:
        name, i = t, 1
        while name in self.used_targets:
            name, i = f"{t}_{i}", i + 1
        self.used_targets.add(name)
        return name

    def call_module(self, target: str, module: torch.nn.Module, args: tuple) -> fx.Node:
        """A call of the new ``module``, registered under ``target`` (made unique)."""
        t = self._target_for(target)
        self.attrs[t] = module
        return self.graph.call_module(t, args)

    def copy_node(self, n: fx.Node) -> fx.Node:
        """``n`` as it is, with a copy of the module or attribute it uses."""
        if n.op in ("call_module", "get_attr") and n.target not in self.attrs:
            obj = self.g.gm.get_submodule(n.target) if n.op == "call_module" else self.g.get_attr(n.target)
            self.attrs[n.target] = copy.deepcopy(obj)
            self.used_targets.add(n.target)
        new = self.graph.node_copy(n, self.lookup)
        # ShapeProp's annotations describe the original model's tensors, not the compact ones
        new.meta.pop("tensor_meta", None)
        new.meta.pop("type", None)
        return new

    def run(self) -> tuple[fx.GraphModule, dict]:
        """The compact ``GraphModule`` and its partial report."""
        for n in self.g.nodes:
            op = self.ops[n]
            if self.g.is_ch(n) and not self.keep[n].any() and not op.keeps_all:
                self.env[n] = None
                op.removed(self)
            else:
                self.env[n] = op.rewrite(self)
        self._drop_unread()
        try:
            gm = fx.GraphModule(self.attrs, self.graph, class_name="CompactModel")
        except Exception as exc:
            raise internal_error(f"cannot build the compact model ({exc})") from exc
        report = {"layers": self.layers, "removed_layers": self.removed_layers, "fold_params": self.fold_params,
                  "_zeros_kept": self.zeros_kept}
        return gm, report

    def _drop_unread(self) -> None:
        # Only ops known to be pure; never in-place or opaque ones.
        pure = {v for n, v in self.env.items() if v is not None and self.ops[n].pure and not self.g.inplace(n)}
        for node in reversed(list(self.graph.nodes)):
            if node in pure and not node.users:
                self.graph.erase_node(node)
        self.graph.lint()
