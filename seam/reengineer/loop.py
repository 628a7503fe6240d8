"""The one epoch loop that the mask search and fine-tuning share."""

from __future__ import annotations

import sys
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from seam.data.augment import Normalize, random_crop_flip
from seam.reengineer.accuracy import accuracy, predict

# (logits, labels, batch size) -> (loss to minimise, per-batch statistics to sum over the epoch)
LossFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def batch_bar(progress: bool) -> bool:
    """Show a per-batch bar only at a terminal: in a log (CI, a redirected `dvc repro`) it
    would add a line per update, so there only the per-epoch bar is kept."""
    return progress and sys.stderr.isatty()


def remaining_epochs(history: list[dict], should_stop: bool, max_epochs: int, *, desc: str, progress: bool,
                     on_epoch: Callable[[dict], None] | None = None) -> tqdm:
    """The epochs a loop still has to run after ``history`` (a resumed run's rows, first
    replayed to ``on_epoch``), as a per-epoch progress bar."""
    for row in history:
        if on_epoch is not None:
            on_epoch(row)
    start = len(history)
    todo = range(0) if history and should_stop else range(start, max_epochs)
    return tqdm(todo, initial=start, total=max_epochs, desc=desc, unit="epoch", disable=not progress)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    normalize: Normalize,
    generator: torch.Generator,
    batch_size: int,
    loss_fn: LossFn,
    padding: int = 4,
    desc: str = "train",
    progress: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """One pass in a random order with batched random crop + flip; the model's train/eval
    mode and which parameters train are the caller's to set. ``dtype`` (e.g. bfloat16): the
    forward pass and loss run under ``torch.autocast`` to it; parameters, gradients and the
    optimiser's state stay fp32.

    Returns the float64 sum over batches of ``loss_fn``'s statistics, and the batch count.
    """
    n = len(train_y)
    order = torch.randperm(n, generator=generator).to(train_x.device)
    totals = None
    batches = range(0, n, batch_size)
    for start in tqdm(batches, desc=desc, leave=False, disable=not progress):
        idx = order[start : start + batch_size]
        x = normalize(random_crop_flip(train_x[idx], padding, generator)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, stats = loss_fn(model(x), train_y[idx], len(idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Summed on the device: a .item() per batch would synchronise a GPU every step.
        totals = stats.double() if totals is None else totals + stats.double()
    return totals, len(batches)


def evaluate(model: nn.Module, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], normalize: Normalize,
             device: torch.device) -> dict[str, float]:
    """Top-1 accuracy per split, in eval mode."""
    return {s: accuracy(predict(model, x, normalize, device=device), y) for s, (x, y) in splits.items()}
