"""Batched image transforms on the compute device (no per-sample PIL work)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# Random-crop padding of the training augmentation: the release's RandomCrop(32, padding=4).
CROP_PADDING = 4


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip, one draw per image.

    The batched equivalent of torchvision's ``RandomCrop(size, padding)`` followed by
    ``RandomHorizontalFlip()``; works on uint8 or float ``[B, C, H, W]`` tensors. Random
    numbers come from ``generator`` (on the CPU) so a run is reproducible on any device.
    """
    b, c, h, w = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[0, :, None] + torch.arange(h, device=device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(w, device=device)  # [B, W]
    # A flip is a reversed column index, so crop and flip are one gather.
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch_idx = torch.arange(b, device=device)[:, None, None, None]
    chan_idx = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


class Normalize:
    """uint8 ``[B, C, H, W]`` -> float, scaled to [0, 1], then ``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean) / self.std
