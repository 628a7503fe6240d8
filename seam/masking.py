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


class ChannelScoreMask(nn.Module):
    """Parametrization ``tensor -> tensor * (score > 0)`` with one learnable score per output
    channel (dim 0: a filter, a linear row). A layer's bias shares its weight's scores, so a
    channel's filter and bias are kept or removed together."""

    def __init__(self, like: torch.Tensor, init: float = 1.0, scores: nn.Parameter | None = None):
        super().__init__()
        self.shape = tuple(like.shape)
        self.scores = scores if scores is not None else nn.Parameter(
            torch.full((like.shape[0],), init, dtype=torch.float32, device=like.device))

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * binarize(self.scores).to(tensor.dtype).view(-1, *[1] * (tensor.dim() - 1))

    def kept(self) -> torch.Tensor:
        return (self.scores.detach() > 0).view(-1, *[1] * (len(self.shape) - 1)).expand(self.shape).contiguous()


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
                 per_channel: bool = False) -> dict[str, ScoreMask | ChannelScoreMask]:
    """Register a ScoreMask on every conv/linear weight and bias; freeze all original parameters.

    Tensors of the modules named in ``skip`` (and below them) stay unmasked. Returns the
    masks by qualified tensor name (e.g. ``"layer1.0.conv1.weight"``). ``per_channel``: one
    score per output channel (:class:`ChannelScoreMask`), shared by a layer's weight and bias.
    """
    targets = [t for t in maskable_tensors(model)
               if not any(t[0].startswith(f"{s}.") for s in skip)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no Conv/Linear layer to mask")
    for p in model.parameters():
        p.requires_grad_(False)
    masks = {}
    shared: dict[int, nn.Parameter] = {}  # per module: its channel scores
    for name, module, pname in targets:
        if parametrize.is_parametrized(module, pname):
            raise ValueError(f"{name} already carries a parametrization; attach masks once")
        tensor = getattr(module, pname)
        if per_channel:
            mask = ChannelScoreMask(tensor, init, shared.get(id(module)))
            shared[id(module)] = mask.scores
        else:
            mask = ScoreMask(tensor, init)
        parametrize.register_parametrization(module, pname, mask)
        masks[name] = mask
    return masks


def mask_scores(masks: dict[str, nn.Module]) -> list[nn.Parameter]:
    """The distinct score tensors of ``masks`` (channel masks share one per layer), for an optimiser."""
    return list({id(m.scores): m.scores for m in masks.values()}.values())


def retention(masks: dict[str, ScoreMask]) -> torch.Tensor:
    """Share of kept entries over all masked tensors (differentiable through the STE)."""
    kept = sum(binarize(m.scores).sum() for m in masks.values())
    total = sum(m.scores.numel() for m in masks.values())
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
