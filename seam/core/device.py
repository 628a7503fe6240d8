"""Choosing the compute device."""

from __future__ import annotations

from pathlib import Path

import torch

from seam.core.params import ParamsError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given
    (the schema has checked the form; this checks that the device exists)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"params.yaml: device: {name!r} asked for, but no CUDA device is available (use auto or cpu)")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The compute dtype under ``torch.autocast`` for ``reengineer.precision``: None (fp32) or
    bfloat16. ``auto`` picks bf16 where the hardware computes it natively: a CUDA device that
    supports it, or a CPU with AVX512-BF16 or AMX instructions; elsewhere bf16 is emulated and
    slower, so auto stays fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_bf16() else None


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
