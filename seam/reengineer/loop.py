"""The one epoch loop that the mask search and fine-tuning share.

A training job (:class:`Job`: the search, or a fine-tuning run) knows how to run one epoch,
what to keep of the selected epoch and what its state is; :func:`fit` runs its epochs under a
stopping rule (``seam.reengineer.stopping``), with the progress bar, the per-epoch callback
and, with a :class:`~seam.core.resume.ResumeFile`, the state saved after every epoch so that
a killed run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from seam.core.errors import SeamError
from seam.core.resume import ResumeFile, restore_fields, rng_state, set_rng_state
from seam.data.augment import CROP_PADDING, Normalize, random_crop_flip
from seam.data.problem import TargetProblem
from seam.reengineer.accuracy import accuracy, predict
from seam.reengineer.stopping import StopRule

# (logits, labels, batch size) -> (loss to minimise, per-batch statistics to sum over the epoch)
LossFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class TrainingError(SeamError, ValueError):
    """A training run (search or fine-tuning) that cannot run on the problem or model it is given."""


class Job(Protocol):
    """One training run as :func:`fit` drives it."""

    desc: str  # the progress bar's label

    def epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        """Train one epoch and evaluate; the epoch's log fields (``<split>_acc`` among them)."""

    def keep(self) -> Any:
        """What the run returns of the selected epoch (CPU copies)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything the next epoch depends on, besides the random generators."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a :meth:`state_dict` back."""

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """What the epoch bar shows of a log row."""


@dataclass
class Fit:
    """What :func:`fit` returns: the log, one row per epoch, and the job's keep of the selected epoch."""

    history: list[dict] = field(default_factory=list)
    kept: Any = None


def selection_splits(problem: TargetProblem, select_on: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The problem's evaluation splits; a TrainingError unless ``select_on`` is among them."""
    splits = problem.eval_splits()
    if select_on not in splits:
        raise TrainingError(f"select_on is {select_on!r} but target problem {problem.name!r} has no "
                            f"{select_on} images (set prepare.val_fraction > 0 or select_on: test)")
    return splits


def fit(job: Job, rule: StopRule, *, select_on: str, max_epochs: int, generator: torch.Generator,
        device: torch.device, resume: ResumeFile | None = None, on_epoch: Callable[[dict], None] | None = None,
        progress: bool = True) -> Fit:
    """Run ``job``'s epochs until ``rule`` stops it or ``max_epochs`` are done.

    Each epoch's row (``epoch``, the job's fields, ``selected``) goes to ``on_epoch`` as soon as
    it exists; the rule sees the ``select_on`` accuracy (and ``retention`` where the job logs
    it). With ``resume``, the whole state (job, random generators, rule, selected epoch, log) is
    saved after every epoch, and a saved state of the same run is continued: its rows go to
    ``on_epoch`` again, and the result equals an uninterrupted run's.
    """
    done = Fit()
    state = resume.load() if resume is not None else None
    if state is not None:
        job.load_state_dict(state["job"])
        set_rng_state(state, generator, device)
        restore_fields(rule, state["rule"])
        done = Fit(list(state["history"]), state["kept"])
    epochs = remaining_epochs(done.history, rule.should_stop, max_epochs, desc=job.desc, progress=progress,
                              on_epoch=on_epoch)
    for epoch in epochs:
        row = {"epoch": epoch, **job.epoch(epoch, batch_bar(progress))}
        if rule.update(epoch, row[f"{select_on}_acc"], row.get("retention", 1.0)):
            done.kept = job.keep()
        row["selected"] = rule.selected_epoch == epoch
        done.history.append(row)
        if resume is not None:
            resume.save({"epoch": epoch, "job": job.state_dict(), **rng_state(generator, device),
                         "rule": dataclasses.asdict(rule), "kept": done.kept, "history": done.history})
        if on_epoch is not None:
            on_epoch(row)
        epochs.set_postfix(job.postfix(row))
        if rule.should_stop:
            break
    return done


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
    padding: int = CROP_PADDING,
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
    """Top-1 accuracy per split, in eval mode, as log fields (``val_acc``, ``test_acc``)."""
    return {f"{s}_acc": accuracy(predict(model, x, normalize, device=device), y) for s, (x, y) in splits.items()}
