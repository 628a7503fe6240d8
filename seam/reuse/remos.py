"""ReMoS (Zhang et al., ICSE 2022, "Relevant Model Slicing"): the RQ3 baseline that zeroes the
convolution weights a target problem does not need, then fine-tunes the rest.

The slice follows the public ReMoS artifact:

1. Run the pretrained model in eval mode over the target's training images and capture the
   input and the output (before BatchNorm) of every ``nn.Conv2d``.
2. Per image and captured tensor, min-max scale the whole C x H x W tensor; a channel is
   *covered* when its spatial mean exceeds ``threshold`` (0.5). Counted over the images
   this gives the coverage of each conv's input and output channels.
3. A kernel slice (conv, out channel o, in channel i) scores cov_out[o] + cov_in[i]. All
   slices of all convs sorted by score, ascending: each weight's *coverage rank* is the
   number of weights in the slices before its own.
4. Every conv weight's *magnitude rank*: its position among all conv weights by |w|, ascending.
5. Score = coverage rank - magnitude rank; the lowest-scoring share ``ratio`` is removed:
   large weights on channels the target hardly covers go first. BatchNorm and the
   classifier are not sliced.
6. (:func:`remos_flow`) zero the removed weights, put a new K-class output layer on, and
   fine-tune exactly as standard fine-tuning does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from seam.core.errors import SeamError
from seam.core.resume import ResumeFile
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.masks import apply_masks, fill_masks, hold_masks, maskable_tensors, release_masks
from seam.reengineer.loop import batch_bar
from seam.reuse.finetune import FinetuneConfig, finetune, replace_classifier


class RemosError(SeamError, ValueError):
    """A model or target problem ReMoS cannot slice."""


@dataclass(frozen=True)
class Coverage:
    """Per Conv2d (by module name): how many images covered each input / output channel."""

    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    images: int


@dataclass(frozen=True)
class Slice:
    """The kept conv weights (bool masks by tensor name, e.g. ``layer1.0.conv1.weight``)."""

    masks: dict[str, Tensor]

    def removed(self) -> dict[str, float]:
        """Removed share per conv weight tensor."""
        return {name: 1 - m.float().mean().item() for name, m in self.masks.items()}

    def counts(self) -> tuple[int, int]:
        """(removed weights, conv weights)."""
        total = sum(m.numel() for m in self.masks.values())
        return total - sum(int(m.sum()) for m in self.masks.values()), total


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The model's ``nn.Conv2d`` modules by name; a model without one cannot be sliced."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise RemosError(f"{type(model).__name__} has no nn.Conv2d layer: ReMoS slices convolution kernels "
                         "(use the standard or the SeaM flow for this model)")
    return convs


def covered_channels(t: Tensor, threshold: float) -> Tensor:
    """Per image of ``t`` [B, C, H, W]: which channels have a min-max scaled spatial mean above
    ``threshold`` (the scaling spans the image's whole C x H x W tensor). Bool [B, C]."""
    flat = t.detach().float().flatten(1)
    low, high = flat.aminmax(dim=1)
    span = (high - low).clamp_min(torch.finfo(torch.float32).tiny)  # a constant tensor covers nothing
    scaled = (flat - low[:, None]) / span[:, None]
    return scaled.view(t.shape[0], t.shape[1], -1).mean(2) > threshold


@torch.no_grad()
def coverage(model: nn.Module, images: Tensor, normalize: Normalize, *, threshold: float = 0.5,
             batch_size: int = 256, device: torch.device | str = "cpu", progress: bool = True) -> Coverage:
    """Input and output channel coverage of every Conv2d of ``model`` (eval mode) over the
    uint8 ``images`` [N, C, H, W] (step 1 and 2 of the slice)."""
    if not len(images):
        raise RemosError("no training images to measure neuron coverage on")
    convs = conv_layers(model)
    model = copy.deepcopy(model).to(device).eval()
    inputs = {name: torch.zeros(m.in_channels, dtype=torch.int64, device=device) for name, m in convs}
    outputs = {name: torch.zeros(m.out_channels, dtype=torch.int64, device=device) for name, m in convs}

    def hook(name: str):
        def count(module: nn.Module, args: tuple, out: Tensor) -> None:
            inputs[name] += covered_channels(args[0], threshold).sum(0)
            outputs[name] += covered_channels(out, threshold).sum(0)
        return count

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name, _ in convs]
    try:
        batches = range(0, len(images), batch_size)
        for start in tqdm(batches, desc="coverage", leave=False, disable=not batch_bar(progress)):
            model(normalize(images[start : start + batch_size].to(device)))
    finally:
        for h in handles:
            h.remove()
    return Coverage({k: v.cpu() for k, v in inputs.items()}, {k: v.cpu() for k, v in outputs.items()}, len(images))


def relevant_slice(model: nn.Module, cov: Coverage, ratio: float) -> Slice:
    """Remove the share ``ratio`` of the conv weights with the lowest coverage rank minus
    magnitude rank (steps 3 to 5). Ties are broken by position, so the slice is deterministic."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise RemosError(f"ratio must be a share of the conv weights in (0, 1), got {ratio!r}")
    convs = conv_layers(model)
    slice_scores, slice_sizes, weights, offsets = [], [], [], [0]
    for name, conv in convs:
        if name not in cov.inputs or name not in cov.outputs:
            raise RemosError(f"no coverage measured for conv {name!r} (coverage of another model?)")
        w = conv.weight.detach().cpu()
        out_ch, in_per_group = w.shape[:2]
        # In channel of slice (o, i): its group's first input channel + i.
        group = torch.arange(out_ch) // (out_ch // conv.groups)
        in_ch = group[:, None] * in_per_group + torch.arange(in_per_group)[None, :]
        score = cov.outputs[name][:, None] + cov.inputs[name][in_ch]            # [out, in/groups]
        # Slices listed input-major within a conv, as the ReMoS artifact lists them: that
        # order breaks ties between equal scores.
        slice_scores.append(score.t().flatten())
        slice_sizes.append(torch.full((score.numel(),), w[0, 0].numel(), dtype=torch.int64))
        weights.append(w.flatten())
        offsets.append(offsets[-1] + score.numel())
    scores, sizes, flat = torch.cat(slice_scores), torch.cat(slice_sizes), torch.cat(weights)

    order = torch.sort(scores, stable=True).indices
    before = torch.cumsum(sizes[order], 0) - sizes[order]   # weights in the slices ranked before
    slice_rank = torch.empty_like(before)
    slice_rank[order] = before
    # Back to the weights' own (row-major) order: a slice's kh*kw weights are adjacent there.
    coverage_rank = torch.cat([
        slice_rank[start:end].view(conv.weight.shape[1], conv.weight.shape[0]).t()
        .repeat_interleave(conv.weight[0, 0].numel()).flatten()
        for (_, conv), start, end in zip(convs, offsets, offsets[1:])])
    magnitude_rank = torch.empty_like(coverage_rank)
    magnitude_rank[torch.sort(flat.abs(), stable=True).indices] = torch.arange(len(flat))

    n_removed = int(ratio * len(flat))
    removed = torch.sort(coverage_rank - magnitude_rank, stable=True).indices[:n_removed]
    keep = torch.ones(len(flat), dtype=torch.bool)
    keep[removed] = False
    masks, start = {}, 0
    for (name, conv), w in zip(convs, weights):
        masks[f"{name}.weight" if name else "weight"] = keep[start : start + len(w)].view_as(conv.weight)
        start += len(w)
    return Slice(masks)


def remos_flow(pretrained: nn.Module, classifier: str, problem: TargetProblem, *, mean, std, config: FinetuneConfig,
               dropout: float, device, ratio: float, coverage_threshold: float, keep_mask: bool,
               on_epoch: Callable[[str, dict], None] | None = None,
               resume: ResumeFile | None = None) -> tuple[nn.Module, dict]:
    """ReMoS: slice ``pretrained`` on the problem's training images, zero the removed weights,
    replace the output layer and fine-tune (the removed weights may regrow unless ``keep_mask``)."""
    if not len(problem.train_y):
        raise RemosError(f"target problem {problem.name!r} has no training images")
    cov = coverage(pretrained, problem.train_x, Normalize(mean, std, device), threshold=coverage_threshold,
                   device=device)
    found = relevant_slice(pretrained, cov, ratio)
    removed, total_conv = found.counts()

    model = replace_classifier(pretrained, classifier, problem.num_classes, dropout=dropout, seed=config.seed)
    apply_masks(model, fill_masks(model, found.masks))
    if keep_mask:
        hold_masks(model, found.masks)
    step = (lambda row: on_epoch("finetune", row)) if on_epoch else None
    result = finetune(model, classifier, problem, mean=mean, std=std, config=config, device=device, on_epoch=step,
                      resume=resume)
    model.load_state_dict(result.state_dict)
    if keep_mask:
        release_masks(model, found.masks)
    # The share of all weights outside the output layer, as SeaM's removed_rate counts them.
    searched = sum(getattr(m, p).numel() for n, m, p in maskable_tensors(pretrained)
                   if not n.startswith(f"{classifier}."))
    return model.eval(), {
        "removed_rate": removed / searched,
        "removed_rate_conv": removed / total_conv,
        "removed_per_layer": found.removed(),
        "coverage_images": cov.images,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
    }
