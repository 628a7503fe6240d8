"""The rewrite: builds the compact graph node by node (each handler's ``rewrite``) and the
layer report. Handlers reach it only through ``seam.compact.ops.base.CompactBuilder``."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.fx as fx

from seam.compact.graph import TracedGraph, internal_error
from seam.compact.ops.base import OpHandler

__all__ = ["Rewriter"]


class Rewriter:
    """Builds the compact graph from the classified graph ``g`` (handlers ``ops``), its channel
    constants ``cval`` and the channels ``keep`` of every node; implements ``CompactBuilder``."""

    def __init__(self, g: TracedGraph, ops: dict[fx.Node, OpHandler], cval: dict, keep: dict):
        self.g, self.ops, self.cval, self.keep = g, ops, cval, keep
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node | None] = {}
        self.attrs: dict = {}
        self.used_targets: set = set()
        self.layers: dict = {}
        self.removed_layers: list = []
        self.zeros_kept = 0
        self.fold_params = 0
        self.name_counts: dict[str, int] = {}

    # --- CompactBuilder: what the handlers call ---

    def kept(self, n: fx.Node) -> torch.Tensor:
        return self.keep[n]

    def constants(self, n: fx.Node) -> torch.Tensor:
        return self.cval[n]

    def lookup(self, n: fx.Node) -> fx.Node:
        """The compact graph's node for ``n``."""
        v = self.env.get(n)
        if v is None:
            raise internal_error(f"{n.name} was removed but is still read")
        return v

    def call_module(self, target: str, module: torch.nn.Module, args: tuple) -> fx.Node:
        """A call of the new ``module``, registered under ``target`` (made unique)."""
        t = self._target_for(target)
        self.attrs[t] = module
        return self.graph.call_module(t, args)

    def call_function(self, fn: Callable, args: tuple, kwargs: dict[str, Any] | None = None) -> fx.Node:
        return self.graph.call_function(fn, args, kwargs)

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

    def fresh_name(self, prefix: str) -> str:
        self.name_counts[prefix] = self.name_counts.get(prefix, 0) + 1
        return f"{prefix}_{self.name_counts[prefix]}"

    def record_layer(self, target: str, entry: dict[str, Any]) -> None:
        self.layers[target] = entry

    def record_removed(self, target: str, entry: dict[str, Any]) -> None:
        self.layers[target] = entry
        self.removed_layers.append(target)

    def count_kept_zeros(self, count: int) -> None:
        self.zeros_kept += count

    def count_fold_params(self, count: int) -> None:
        self.fold_params += count

    # --- the driver ---

    def run(self) -> tuple[fx.GraphModule, dict]:
        """The compact ``GraphModule`` and its partial report."""
        for n in self.g.nodes:
            op = self.ops[n]
            if self.g.is_ch(n) and not self.keep[n].any() and not op.keeps_all:
                self.env[n] = None
                op.removed(self.g, self)
            else:
                self.env[n] = op.rewrite(self.g, self)
        self._drop_unread()
        try:
            gm = fx.GraphModule(self.attrs, self.graph, class_name="CompactModel")
        except Exception as exc:
            raise internal_error(f"cannot build the compact model ({exc})") from exc
        report = {"layers": self.layers, "removed_layers": self.removed_layers, "fold_params": self.fold_params,
                  "_zeros_kept": self.zeros_kept}
        return gm, report

    def _target_for(self, t: str) -> str:
        name, i = t, 1
        while name in self.used_targets:
            name, i = f"{t}_{i}", i + 1
        self.used_targets.add(name)
        return name

    def _drop_unread(self) -> None:
        # Only ops known to be pure; never in-place or opaque ones.
        pure = {v for n, v in self.env.items() if v is not None and self.ops[n].pure and not self.g.inplace(n)}
        for node in reversed(list(self.graph.nodes)):
            if node in pure and not node.users:
                self.graph.erase_node(node)
        self.graph.lint()
