from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared() -> Path:
    """The offline assets beside the checkout (../shared); tests using it skip without it."""
    if not (SHARED / "datasets" / "cifar10-jpeg.tar.gz").exists():
        pytest.skip(f"offline assets not found at {SHARED} (see README, 'Offline / air-gapped')")
    return SHARED


class TinyNet(nn.Module):
    """Conv + BN + residual-free classifier small enough for unit tests."""

    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def tiny_target(n_train: int = 64, n_val: int = 32, n_test: int = 32, size: int = 8, seed: int = 0):
    """A synthetic binary target problem whose label is visible in the images (class 0 bright)."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % 2
        x = torch.randint(0, 100, (n, 3, size, size), generator=g, dtype=torch.int64)
        x[y == 0] += 150
        return x.to(torch.uint8), y

    (trx, try_), (vx, vy), (tx, ty) = split(n_train), split(n_val), split(n_test)
    from seam.data.problem import TargetProblem

    return TargetProblem(train_x=trx, train_y=try_, val_x=vx, val_y=vy, test_x=tx, test_y=ty,
                         class_names=["zero", "not zero"], source_classes=[0], kind="binary", name="tiny",
                         dataset="synthetic", seed=seed, val_fraction=0.0)
