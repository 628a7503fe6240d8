"""The re-engineered candidate: the (masked) original model followed by a small new head."""

from __future__ import annotations

import torch
from torch import nn


class ReengineeredModel(nn.Module):
    """``original(x)`` (N logits) -> ReLU -> Linear(N, K), as in the SeaM release."""

    def __init__(self, original: nn.Module, num_outputs: int, num_classes: int):
        super().__init__()
        self.original = original
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(num_outputs, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.original(x))

    def train(self, mode: bool = True) -> "ReengineeredModel":
        # The original model always runs in eval mode: its BatchNorm statistics and any
        # dropout are part of what is being re-engineered, not trained (release: fix_bn).
        super().train(mode)
        self.original.eval()
        return self
