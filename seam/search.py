"""The SeaM search: learn a binary weight mask (and a small head) for a target problem."""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from seam.accuracy import accuracy, original_accuracy, predict
from seam.augment import Normalize, random_crop_flip
from seam.candidate import ReengineeredModel
from seam.masking import attach_masks, binary_masks, retention
from seam.selection import Selector

SPLITS = ("val", "test")


@dataclass
class SearchConfig:
    """Hyper-parameters of one search (the ``reengineer`` section of params.yaml, plus alpha/seed)."""

    alpha: float = 1.0
    lr_mask: float = 0.05
    lr_head: float = 0.1
    batch_size: int = 64
    max_epochs: int = 300
    early_stop: int = 30
    head_only_every: int = 5   # epoch % head_only_every == 0 trains the head alone
    padding: int = 4           # random-crop padding of the training augmentation
    select_on: str = "val"     # split used for model selection: "val" (ours) or "test" (the release)
    stop_at_removed: float | None = None  # RQ3 flow: stop, keeping that epoch, once this share is removed
    seed: int = 0

    def __post_init__(self) -> None:
        if self.select_on not in SPLITS:
            raise ValueError(f"select_on must be one of {SPLITS}, got {self.select_on!r}")
        for key in ("lr_mask", "lr_head", "batch_size", "max_epochs", "head_only_every"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")
        if self.stop_at_removed is not None and not 0 < self.stop_at_removed < 1:
            raise ValueError(f"stop_at_removed (threshold t) must be in (0, 1), got {self.stop_at_removed!r}")


@dataclass
class SearchResult:
    masks: dict[str, torch.Tensor]      # bool masks of the selected epoch, by tensor name
    head: dict[str, torch.Tensor]       # head state dict of the selected epoch
    selected_epoch: int
    reached_target: bool                # did any epoch match the original's accuracy?
    acc_original: dict[str, float]      # original model on val/test (the threshold is on select_on)
    history: list[dict] = field(default_factory=list)


def search(
    original: nn.Module,
    data: dict,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    config: SearchConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    output_layer: str | None = None,
) -> SearchResult:
    """Search a mask over ``original``'s conv/linear tensors for the target problem in ``data``.

    ``data`` is a prepared target problem (see ``seam.targets``): uint8 images and labels
    for train/val/test, ``kind`` and ``source_classes``. ``original`` is not modified: the
    search works on a deep copy whose original weights are frozen. ``on_epoch`` receives
    each epoch's log row as soon as it exists.

    By default (RQ1) the candidate is ``original`` followed by a new ReLU + Linear(N, K)
    head. With ``output_layer`` (the dotted name of a K-class layer ``original`` already
    has, as in the defect-inheritance flow) that layer plays the head: it is trained, not
    masked, and the model's own outputs are the K logits.
    """
    device = torch.device(device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    normalize = Normalize(mean, std, device)

    train_x = data["train_x"].to(device)
    train_y = data["train_y"].to(device)
    splits = {s: (data[f"{s}_x"], data[f"{s}_y"]) for s in SPLITS if len(data[f"{s}_y"])}
    if config.select_on not in splits:
        raise ValueError(f"select_on={config.select_on!r} but the target problem has no {config.select_on} images "
                         "(set prepare.val_fraction > 0 or select_on: test)")
    num_classes = len(data["class_names"])

    base = copy.deepcopy(original).to(device).eval()
    acc_original = {}
    for split, (x, y) in splits.items():
        logits = predict(base, x, normalize, device=device)
        if output_layer is None:
            acc_original[split] = original_accuracy(logits, y, kind=data["kind"], source_classes=data["source_classes"])
        else:
            acc_original[split] = accuracy(logits, y)
    num_outputs = logits.shape[1]

    if output_layer is None:
        model = ReengineeredModel(base, num_outputs, num_classes).to(device)
        masks = attach_masks(model.original)
        head = model.head
    else:
        if num_outputs != num_classes:
            raise ValueError(f"output_layer {output_layer!r} gives {num_outputs} outputs, the target has {num_classes}")
        model = base
        head = model.get_submodule(output_layer)
        masks = attach_masks(model, skip=(output_layer,))
        head.requires_grad_(True)
    # NHWC convolutions are ~12% faster on the CPU here (oneDNN) and are cuDNN's fast path.
    model.to(memory_format=torch.channels_last)
    mask_params = [m.scores for m in masks.values()]
    head_params = list(head.parameters())
    optim_head = torch.optim.Adam(head_params, lr=config.lr_head)
    optim_joint = torch.optim.Adam(
        [{"params": mask_params, "lr": config.lr_mask}, {"params": head_params, "lr": config.lr_head}]
    )

    selector = Selector(target_acc=acc_original[config.select_on], early_stop=config.early_stop)
    best = None
    history = []
    # The per-batch bar helps at a terminal; in a log (CI, redirected dvc repro) it would
    # add a line per update, so there only the per-epoch bar is kept.
    batch_bar = progress and sys.stderr.isatty()
    epochs = tqdm(range(config.max_epochs), desc=f"search {data.get('name', '')}".strip(), unit="epoch",
                  disable=not progress)
    for epoch in epochs:
        head_only = epoch % config.head_only_every == 0
        optim = optim_head
        if not head_only:
            optim = optim_joint
        stats = _train_epoch(model, masks, optim, train_x, train_y, normalize, gen, config, head_only, batch_bar)

        with parametrize.cached():
            accs = {s: accuracy(predict(model, x, normalize, device=device), y) for s, (x, y) in splits.items()}
        with torch.no_grad():
            kept = retention(masks).item()
        row = {"epoch": epoch, "phase": "head" if head_only else "head+mask", **stats, "retention": kept,
               **{f"{s}_acc": a for s, a in accs.items()}}
        # With a removal threshold (the defect-inheritance flow) the search runs until that
        # share of weights is gone and keeps where it stopped; accuracy does not select.
        by_threshold = config.stop_at_removed is not None
        removed_enough = by_threshold and 1 - kept >= config.stop_at_removed
        if selector.update(epoch, accs[config.select_on], kept) or by_threshold:
            best = (binary_masks(masks), copy.deepcopy({k: v.cpu() for k, v in head.state_dict().items()}))
        selected_epoch = epoch if by_threshold else selector.selected_epoch
        row["selected"] = selected_epoch == epoch
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        epochs.set_postfix(retention=f"{kept:.3f}", **{f"{config.select_on}_acc": f"{accs[config.select_on]:.4f}"})
        if (selector.should_stop and not by_threshold) or removed_enough:
            break

    assert best is not None  # the first epoch is always selected by the fallback rule
    return SearchResult(
        masks=best[0],
        head=best[1],
        selected_epoch=selected_epoch,
        reached_target=selector.reached_target,
        acc_original=acc_original,
        history=history,
    )


def _train_epoch(model, masks, optim, train_x, train_y, normalize, gen, config, head_only, batch_bar) -> dict:
    # Eval mode even while training: the search learns scores and the head, never the
    # original model's BatchNorm statistics (release: fix_bn, "IMPORTANT").
    model.eval()
    # Head-only epochs need no gradient through the original model: freezing the scores
    # there makes autograd stop at the head, which makes those epochs ~3x cheaper.
    for m in masks.values():
        m.scores.requires_grad_(not head_only)
    n = len(train_y)
    order = torch.randperm(n, generator=gen).to(train_x.device)
    totals = torch.zeros(3, dtype=torch.float64, device=train_x.device)  # loss, ce, retention
    n_batches = 0
    batches = range(0, n, config.batch_size)
    for start in tqdm(batches, desc="head" if head_only else "head+mask", leave=False, disable=not batch_bar):
        idx = order[start : start + config.batch_size]
        x = normalize(random_crop_flip(train_x[idx], config.padding, gen)).contiguous(memory_format=torch.channels_last)
        ce = F.cross_entropy(model(x), train_y[idx])
        kept = retention(masks)
        # The head-only optimiser holds no scores, so the retention term only moves the
        # masks in joint epochs; it is kept in the loss so the logged value means one thing.
        loss = ce + config.alpha * kept
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        # Summed on the device: a .item() per batch would synchronise a GPU every step.
        totals += torch.stack([loss.detach(), ce.detach(), kept.detach()]).double()
        n_batches += 1
    for m in masks.values():
        m.scores.requires_grad_(True)
    loss, ce, kept = (totals / max(n_batches, 1)).tolist()
    return {"loss": loss, "ce": ce, "train_retention": kept}


def config_dict(config: SearchConfig) -> dict:
    return asdict(config)
