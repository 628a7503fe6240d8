"""Choosing the compute device."""

from __future__ import annotations

import torch

from seam.params import ParamsError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given
    (the schema has checked the form; this checks that the device exists)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"params.yaml: device: {name!r} asked for, but no CUDA device is available (use auto or cpu)")
    return device
