"""Batched inference and the accuracy definitions used for target problems."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images, in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        out.append(model(normalize(batch)).float().cpu())
    model.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of K-class logits against labels 0..K-1."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def original_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, *, kind: str, source_classes: Sequence[int], fair: bool = False
) -> float:
    """Accuracy of the *original* N-class model on a target problem.

    binary (label 0 = class c, 1 = rest): correct when ``argmax == c`` agrees with
    ``label == 0`` (the paper's rule; for one-vs-rest it is also the fair one).
    multi-class, paper's rule: the argmax over all N classes must be the true class, so
    an answer outside the problem counts as wrong. ``fair=True``: argmax restricted to
    the K target classes.
    """
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    source = torch.as_tensor(list(source_classes), dtype=torch.long)
    labels = labels.long()
    if kind == "binary":
        predicted_c = logits.argmax(1) == source[0]
        return (predicted_c == (labels == 0)).float().mean().item()
    if fair:
        return (logits[:, source].argmax(1) == labels).float().mean().item()
    return (logits.argmax(1) == source[labels]).float().mean().item()
