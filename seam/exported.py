"""A compact model saved once as a ``torch.export`` archive (``.pt2``) and loaded anywhere.

The ``export`` stage compacts a masked model and writes the result with
:func:`save_compact`; the ``flops`` and ``benchmark`` stages read it back with
:func:`load_compact`, without importing or re-running ``seam.compact``. A pickled
``fx.GraphModule`` would need ``torch.load(weights_only=False)`` (arbitrary unpickling,
against the project's rule); a ``.pt2`` archive holds the graph as data and the weights as
tensors. This module deliberately does not import ``seam.compact``.

The archive's input has a dynamic batch dimension; channels and spatial size are fixed to
those of ``example_input``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

from seam.atomic import atomic_path
from seam.errors import SeamError

__all__ = ["ExportedModelError", "InferenceModule", "load_compact", "save_compact"]

SUFFIX = ".pt2"


class ExportedModelError(SeamError, ValueError):
    """A saved compact model cannot be written or read."""


def _check_suffix(path: Path) -> None:
    if path.suffix != SUFFIX:
        raise ExportedModelError(f"{path}: a compact model is a torch.export archive named *{SUFFIX}")


def save_compact(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write ``model`` (eval mode, on the CPU) to ``path`` as a ``torch.export`` archive.

    ``example_input`` (``[N, C, H, W]``) fixes everything but the batch dimension. The file
    appears only once it is complete (written under a temporary name first).
    """
    path = Path(path)
    _check_suffix(path)
    model = model.eval().cpu()
    x = example_input.detach().cpu()
    # A batch of at least 2 to trace: torch.export specialises a size-1 dimension to 1.
    if x.shape[0] < 2:
        x = x.expand(2, *x.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # torch.export raises many kinds (UserError, Unsupported, ...)
        raise ExportedModelError(f"{path}: cannot torch.export {type(model).__name__}: "
                                 f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc
    buf = io.BytesIO()  # torch.export.save wants a *.pt2 name or a buffer, not atomic_path's temporary name
    torch.export.save(program, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def load_compact(path: str | os.PathLike) -> nn.Module:
    """The module saved by :func:`save_compact` at ``path``, ready for inference."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise ExportedModelError(f"{path}: no such file")
    try:
        program = torch.export.load(path)
    except Exception as exc:  # a zip / json / version problem: not an archive we wrote
        raise ExportedModelError(f"{path}: not a torch.export archive ({type(exc).__name__}: {exc})") from exc
    return InferenceModule(program.module())


class InferenceModule(nn.Module):
    """A loaded compact model: always in eval mode (it was exported in eval mode).

    ``ep.module()`` refuses ``.eval()`` and ``.train()``; this wrapper accepts ``.eval()``
    (what inference code calls) and refuses only training mode.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> InferenceModule:
        if mode:
            raise ExportedModelError("a loaded compact model is for inference only (eval mode)")
        self.training = False
        return self
