"""Binary weight masks attached to any model's convolution and linear layers.

Every weight and bias of every ``nn.Conv*d`` / ``nn.Linear`` gets a real-valued score
(initialised to 1.0, i.e. kept). The forward pass uses ``weight * (score > 0)``; the
backward pass is a straight-through estimator that hands the incoming gradient, clipped
by hardtanh, to the score (as in the SeaM release). The masks are registered with
``torch.nn.utils.parametrize`` so no architecture needs a hand-written "masked" twin,
and the original weights stay untouched (``module.parametrizations.weight.original``).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _BinarizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        return (scores > 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(grad)


def binarize(scores: torch.Tensor) -> torch.Tensor:
    """0/1 mask of ``scores > 0`` with the straight-through (hardtanh) gradient."""
    return _BinarizeSTE.apply(scores)


class ScoreMask(nn.Module):
    """Parametrization ``tensor -> tensor * (scores > 0)`` with learnable scores, one per entry."""

    def __init__(self, like: torch.Tensor, init: float = 1.0):
        super().__init__()
        self.scores = nn.Parameter(torch.full_like(like, init, dtype=torch.float32))

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * binarize(self.scores).to(tensor.dtype)

    def kept(self) -> torch.Tensor:
        """The mask as a bool tensor of the masked tensor's shape."""
        return self.scores.detach() > 0


class ChannelGate(nn.Module):
    """The keep of every channel group: ``scores > 0`` (straight-through), and each width unit
    (a set of groups: a layer's output channels) given ``(groups, block)`` rounded up to a
    multiple of its block by also keeping its highest-scoring removed groups (a constant, no
    gradient); a unit keeps at least its floor (:meth:`require`).

    Dense CPU kernels work on channel blocks (onnxruntime's NCHWc and oneDNN: 16 channels on
    AVX-512, 8 on AVX2); a conv whose width is not a multiple falls back to a slower path.
    """

    def __init__(self, scores: nn.Parameter, units: list[tuple[torch.Tensor, int]] = ()):
        super().__init__()
        self.scores = scores
        # smallest first: a unit inside a larger one (a residual stage's channels inside the
        # next stage's) is rounded before the larger one counts it
        units = sorted(units, key=lambda u: len(u[0]))
        self.units = [u.to(scores.device) for u, _ in units]
        self.blocks = [block for _, block in units]
        self.floors = [0] * len(self.units)  # per unit: the fewest groups it keeps (see require)
        self._extra: tuple[int, torch.Tensor] | None = None  # (scores version, extra)

    @torch.no_grad()
    def extra(self) -> torch.Tensor:
        """1 for the removed groups that the rounding keeps, else 0. Every masked tensor asks
        for it on every forward; it is recomputed only when the scores have changed."""
        version = self.scores._version
        if self._extra is None or self._extra[0] != version or self._extra[1].device != self.scores.device:
            self._extra = (version, self._round())
        return self._extra[1]

    def _round(self) -> torch.Tensor:
        kept = self.scores > 0
        out = kept.clone()
        done = torch.zeros_like(kept)  # groups of units already rounded: taken from last
        for u, block, floor in zip(self.units, self.blocks, self.floors):
            k = int(out[u].sum())
            short = min(len(u), max(-(-k // block) * block, floor)) - k
            if short > 0:
                free = u[~out[u]]
                order = torch.argsort(self.scores[free] - 1e9 * done[free].to(self.scores.dtype), descending=True)
                out[free[order[:short]]] = True
            done[u] = True
        return (out & ~kept).to(self.scores.dtype)

    def require(self, unit: int, n: int) -> None:
        """Unit ``unit`` keeps at least its ``n`` best groups, whatever their scores."""
        self.floors[unit] = min(n, len(self.units[unit]))
        self._extra = None

    def forward(self) -> torch.Tensor:
        return binarize(self.scores) + self.extra()


class ChannelScoreMask(nn.Module):
    """Parametrization ``tensor -> tensor * keep`` with one keep per output channel (dim 0: a
    filter, a linear row, a BatchNorm channel); channel ``c`` reads group ``index[c]`` of the
    shared :class:`ChannelGate`. A layer's weight and bias (and the BatchNorm after it) share
    its groups, and channels that must go together (joined by a residual add) share one."""

    def __init__(self, like: torch.Tensor, gate: ChannelGate, index: torch.Tensor):
        super().__init__()
        if index.shape != like.shape[:1]:
            raise ValueError(f"index has shape {tuple(index.shape)}, expected ({like.shape[0]},)")
        self.shape = tuple(like.shape)
        self.gate = gate
        self.register_buffer("index", index.to(device=gate.scores.device, dtype=torch.long), persistent=False)

    @property
    def scores(self) -> nn.Parameter:
        return self.gate.scores

    def row_keep(self) -> torch.Tensor:
        """0/1 per output channel, with the straight-through gradient to the shared scores."""
        return self.gate()[self.index]

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.row_keep().to(tensor.dtype).view(-1, *[1] * (tensor.dim() - 1))

    def kept(self) -> torch.Tensor:
        with torch.no_grad():
            rows = self.gate()[self.index] > 0
        return rows.view(-1, *[1] * (len(self.shape) - 1)).expand(self.shape).contiguous()


# Exported graphs (torch.export) call these ops on weights held by plain container modules.
_GRAPH_OPS = {"aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default", "aten.linear.default",
              "aten.convolution.default"}


def maskable_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(qualified name, module, "weight"|"bias")`` for every tensor SeaM masks: the weights
    and biases of conv/linear modules, and those an exported graph passes to a conv/linear op."""
    found = []
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, MASKABLE):
            for pname in ("weight", "bias"):
                if getattr(module, pname, None) is not None:
                    found.append((f"{prefix}{pname}", module, pname))
        elif isinstance(module, fx.GraphModule):
            found += [(prefix + target, *_owner(module, target)) for target in _graph_weights(module)]
    return found


def _graph_weights(gm: fx.GraphModule) -> list[str]:
    """get_attr targets a graph passes as weight or bias to a conv/linear op, in graph order."""
    targets: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and str(node.target) in _GRAPH_OPS:
            for arg in node.args[1:3]:
                if isinstance(arg, fx.Node) and arg.op == "get_attr" and arg.target not in targets:
                    targets.append(arg.target)
    return targets


def _owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    path, _, pname = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), pname


def attach_masks(model: nn.Module, init: float = 1.0, skip: tuple[str, ...] = (),
                 groups: dict[str, torch.Tensor] | None = None, block: int = 1
                 ) -> dict[str, ScoreMask | ChannelScoreMask]:
    """Register a ScoreMask on every conv/linear weight and bias; freeze all original parameters.

    Tensors of the modules named in ``skip`` (and below them) stay unmasked. Returns the
    masks by qualified tensor name (e.g. ``"layer1.0.conv1.weight"``). With ``groups``
    (module name -> a group id per output channel) the masks are per channel
    (:class:`ChannelScoreMask`): one score per group, in one shared parameter; a module
    missing from ``groups`` gets a group per channel. ``block``: each conv's kept channels
    rounded up to a multiple of it (:class:`ChannelGate`).
    """
    targets = [t for t in maskable_tensors(model)
               if not any(t[0].startswith(f"{s}.") for s in skip)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no Conv/Linear layer to mask")
    for p in model.parameters():
        p.requires_grad_(False)
    index = _group_index(targets, groups) if groups is not None else None
    gate = None
    if index is not None:
        n = 1 + max(int(i.max()) for i in index.values())
        scores = nn.Parameter(torch.full((n,), init, dtype=torch.float32, device=getattr(targets[0][1], targets[0][2]).device))
        # a unit per distinct set of groups; convs round to `block`, linear layers do not
        units: dict[tuple, int] = {}
        for name, module, pname in targets:
            if pname == "weight":
                u = tuple(sorted(set(index[name.rpartition(".")[0]].tolist())))
                units[u] = max(units.get(u, 1), block if getattr(module, pname).dim() > 2 else 1)
        gate = ChannelGate(scores, [(torch.tensor(u), b) for u, b in sorted(units.items())])
    masks = {}
    for name, module, pname in targets:
        if parametrize.is_parametrized(module, pname):
            raise ValueError(f"{name} already carries a parametrization; attach masks once")
        tensor = getattr(module, pname)
        layer = name.rpartition(".")[0]
        mask = ChannelScoreMask(tensor, gate, index[layer]) if index is not None else ScoreMask(tensor, init)
        parametrize.register_parametrization(module, pname, mask)
        masks[name] = mask
    return masks


def _group_index(targets: list, groups: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per masked module: its channels' positions in the shared score vector (groups renumbered
    0..G-1 in order of first appearance; a module missing from ``groups`` gets its own)."""
    ids: dict[tuple, int] = {}
    index = {}
    for name, module, pname in targets:
        layer = name.rpartition(".")[0]
        if layer in index:
            continue
        rows = getattr(module, pname).shape[0]
        given = groups.get(layer)
        if given is not None and len(given) != rows:
            raise ValueError(f"groups[{layer!r}] has {len(given)} entries, the layer {rows} output channels")
        keys = [("group", int(i)) for i in given] if given is not None else [(layer, c) for c in range(rows)]
        index[layer] = torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.long)
    return index


def mask_scores(masks: dict[str, nn.Module]) -> list[nn.Parameter]:
    """The distinct score tensors of ``masks`` (channel masks share one), for an optimiser."""
    return list({id(m.scores): m.scores for m in masks.values()}.values())


def retention(masks: dict[str, ScoreMask], weights: dict[str, float] | None = None) -> torch.Tensor:
    """Share of kept entries over all masked tensors (differentiable through the STE); with
    ``weights`` (tensor name -> what one entry counts, default 1), a weighted share."""
    w = weights or {}
    kept = sum(binarize(m.scores).sum() * w.get(name, 1) for name, m in masks.items())
    total = sum(m.scores.numel() * w.get(name, 1) for name, m in masks.items())
    return kept / total


def binary_masks(masks: dict[str, ScoreMask]) -> dict[str, torch.Tensor]:
    """The current masks as bool tensors of their tensors' shapes, on the CPU."""
    return {name: m.kept().cpu() for name, m in masks.items()}


def count_kept(bool_masks: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(kept entries, total entries) of a set of bool masks."""
    kept = sum(int(m.sum()) for m in bool_masks.values())
    total = sum(m.numel() for m in bool_masks.values())
    return kept, total


@torch.no_grad()
def apply_masks(model: nn.Module, bool_masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero, in place, every weight/bias entry whose mask is False (plain tensors, no parametrization).

    The mask names must be exactly the model's maskable tensors, with matching shapes.
    """
    targets = {name: (module, pname) for name, module, pname in maskable_tensors(model)}
    missing, unexpected = sorted(set(targets) - set(bool_masks)), sorted(set(bool_masks) - set(targets))
    if missing or unexpected:
        raise ValueError(f"masks do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, (module, pname) in targets.items():
        tensor = getattr(module, pname)
        mask = bool_masks[name]
        if mask.shape != tensor.shape:
            raise ValueError(f"mask {name} has shape {tuple(mask.shape)}, the model's tensor {tuple(tensor.shape)}")
        tensor.mul_(mask.to(tensor.device, tensor.dtype))
    return model


def fill_masks(model: nn.Module, bool_masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``bool_masks`` plus an all-True mask for every other maskable tensor of ``model``: what
    :func:`apply_masks` takes when only some tensors (e.g. a search's, or the convs) are masked."""
    return {name: bool_masks.get(name, torch.ones_like(getattr(module, p), dtype=torch.bool))
            for name, module, p in maskable_tensors(model)}


def norms_after(model: nn.Module) -> dict[str, str]:
    """``{conv/linear module name: name of the BatchNorm that reads its output}``, found on an
    fx trace of ``model``: a channel search gates that BatchNorm channel with the conv's row,
    so a removed channel is exactly zero (no constant for the compact model to fold)."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...)
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx to find its BatchNorms ({exc})") from exc
    modules = dict(gm.named_modules())
    found = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules[src.target], MASKABLE):
            found[src.target] = node.target
    return found


@torch.no_grad()
def apply_searched(model: nn.Module, bool_masks: dict[str, torch.Tensor], name: str = "weight") -> nn.Module:
    """Zero, in place, what a search of granularity ``name`` removed: the masked weights, and for
    ``channel`` also the BatchNorm channels after removed rows (as the search gated them)."""
    apply_masks(model, bool_masks)
    if name == "channel":
        for layer, norm in norms_after(model).items():
            rows = bool_masks.get(f"{layer}.weight")
            if rows is None:
                continue
            dead = ~rows.flatten(1).any(1)
            bn = model.get_submodule(norm)
            for t in (bn.weight, bn.bias):
                if t is not None:
                    t[dead.to(t.device)] = 0
    return model


def own_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``model``'s own parameters by their plain names (``layer1.0.conv1.weight``): under a
    mask, the unmasked tensor it wraps; never a mask's scores."""
    out = {}
    for mname, module in model.named_modules():
        if "parametrizations" in mname.split("."):
            continue
        prefix = f"{mname}." if mname else ""
        if parametrize.is_parametrized(module):
            out.update({prefix + tname: plist.original for tname, plist in module.parametrizations.items()})
        out.update({prefix + pname: p for pname, p in module.named_parameters(recurse=False)})
    return out


class FixedMask(nn.Module):
    """Parametrization ``tensor -> tensor * mask`` with a fixed bool mask (a buffer)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.clone())

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.mask.to(tensor.dtype)


def hold_masks(model: nn.Module, bool_masks: dict[str, torch.Tensor]) -> None:
    """Hold the masked-out entries of the named tensors at zero while the others train
    (until :func:`release_masks`)."""
    for name, mask in bool_masks.items():
        module_name, _, pname = name.rpartition(".")
        parametrize.register_parametrization(model.get_submodule(module_name), pname, FixedMask(mask))


def release_masks(model: nn.Module, names) -> None:
    """Turn the tensors :func:`hold_masks` parametrized back into plain (masked) parameters."""
    for name in names:
        module_name, _, pname = name.rpartition(".")
        parametrize.remove_parametrizations(model.get_submodule(module_name), pname, leave_parametrized=True)
