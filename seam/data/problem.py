"""A prepared target problem: uint8 images and labels per split, and what the labels mean.

Kept free of the dataset and download code, so that stages which only read a prepared
problem (reengineer, evaluate, fine-tuning, defects) do not depend on them.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from seam.core.atomic import save_torch
from seam.core.errors import SeamError

EVAL_SPLITS = ("val", "test")


class TargetError(SeamError, ValueError):
    """Bad target specification or target file (names the offending target key or file)."""


@dataclass(frozen=True)
class TargetProblem:
    """The tensors of one target problem: images ``[N, C, H, W]`` uint8, labels 0..K-1 int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]     # the K new labels, in label order
    source_classes: list[int]  # the raw dataset's class indices; binary: [c]
    kind: str                  # "binary" | "classes" | "superclass"
    name: str
    dataset: str
    seed: int
    val_fraction: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def eval_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"val": (x, y), "test": (x, y)}`` for the evaluation splits that have images."""
        return {s: (getattr(self, f"{s}_x"), getattr(self, f"{s}_y")) for s in EVAL_SPLITS
                if len(getattr(self, f"{s}_y"))}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically, as a plain dict of tensors and lists (loads with ``weights_only``)."""
        # Field by field, not asdict(), which would deep-copy every tensor.
        save_torch({f.name: getattr(self, f.name) for f in fields(self)}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TargetProblem":
        """Read a file written by :meth:`save`, memory-mapped: the images stay in the file
        (the OS pages them in per batch and may drop them again), so a large target costs
        page cache, not the process's own memory."""
        path = Path(path)
        if not path.is_file():
            raise TargetError(f"{path}: target file not found (run the prepare stage)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            raise TargetError(f"{path}: not a target file: {e}") from e
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if not isinstance(data, dict) or k not in data]
        if missing:
            raise TargetError(f"{path}: not a target file, missing keys {missing}")
        return cls(**{k: data[k] for k in names})

    def subsample(self, per_class: dict[str, int | None], *, seed: int) -> "TargetProblem":
        """A copy with at most ``per_class[split]`` images of each label per split (None: all).

        Drawn without replacement with a generator seeded by ``seed`` (keeping the original
        order), so a smaller, CPU-sized version of a problem is the same every run.
        """
        gen = torch.Generator().manual_seed(seed)
        changes = {}
        for split, n in per_class.items():
            if n is None:
                continue
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise TargetError(f"{self.name}: images per class for {split} must be a positive integer, got {n!r}")
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            keep = []
            for label in torch.unique(y):
                idx = torch.nonzero(y == label).flatten()
                keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
            order = torch.sort(torch.cat(keep)).values if keep else torch.zeros(0, dtype=torch.long)
            changes[f"{split}_x"], changes[f"{split}_y"] = x[order], y[order]
        return replace(self, **changes)

    def capped(self, train_per_class: int | None, test_per_class: int | None, *, seed: int) -> "TargetProblem":
        """A CPU-sized copy: at most ``train_per_class`` training and ``test_per_class`` test
        images per label (None: all), and validation images in proportion to the training cap."""
        val_cap = None if train_per_class is None else max(1, round(train_per_class * self.val_fraction))
        return self.subsample({"train": train_per_class, "val": val_cap, "test": test_per_class}, seed=seed)
