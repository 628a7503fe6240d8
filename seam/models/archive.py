"""Models saved as ``torch.export`` archives (``.pt2``): graph and weights in one file that
loads anywhere, without unpickling and without this package.

The ``export`` stage writes each re-engineered model (``<target>.pt2``, a model to ship)
and its compact version (``<target>.compact.pt2``, which the ``flops`` and ``benchmark``
stages read back without importing or re-running ``seam.compact``). A pickled
``fx.GraphModule`` would need ``torch.load(weights_only=False)`` (arbitrary unpickling,
against the project's rule); a ``.pt2`` archive holds the graph as data and the weights as
tensors. This module deliberately does not import ``seam.compact``.

The archive's input has a dynamic batch dimension; channels and spatial size are fixed to
those of ``example_input``. What a user needs to feed it (class names, mean, std, input
size) travels in the archive as ``seam.json``; in a Python without seam:

    extra = {"seam.json": ""}
    model = torch.export.load("airplane.pt2", extra_files=extra).module()
    meta = json.loads(extra["seam.json"])   # {"class_names": [...], "mean": [...], ...}
    logits = model((x - mean) / std)        # x: [N, 3, H, W] floats in [0, 1]
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from seam.core.atomic import atomic_path
from seam.core.errors import SeamError

__all__ = ["ExportedModelError", "InferenceModule", "load_exported", "save_exported"]

SUFFIX = ".pt2"
META_FILE = "seam.json"


class ExportedModelError(SeamError, ValueError):
    """A model archive cannot be written or read."""


def _check_suffix(path: Path) -> None:
    if path.suffix != SUFFIX:
        raise ExportedModelError(f"{path}: an exported model is a torch.export archive named *{SUFFIX}")


def save_exported(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike,
                  meta: dict | None = None) -> Path:
    """Write ``model`` (eval mode, on the CPU) to ``path`` as a ``torch.export`` archive.

    ``example_input`` (``[N, C, H, W]``) fixes everything but the batch dimension; ``meta``
    (JSON-able) is stored beside the graph as ``seam.json``. The file appears only once it
    is complete (written under a temporary name first).
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
    torch.export.save(program, buf, extra_files={META_FILE: json.dumps(meta or {})})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def load_exported(path: str | os.PathLike) -> InferenceModule:
    """The module saved by :func:`save_exported` at ``path``, ready for inference; its
    ``meta`` attribute holds the saved metadata."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise ExportedModelError(f"{path}: no such file")
    extra = {META_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
        meta = json.loads(extra[META_FILE] or "{}")
    except Exception as exc:  # a zip / json / version problem: not an archive we wrote
        raise ExportedModelError(f"{path}: not a torch.export archive ({type(exc).__name__}: {exc})") from exc
    return InferenceModule(program.module(), meta)


class InferenceModule(nn.Module):
    """A loaded exported model: always in eval mode (it was exported in eval mode).

    ``ep.module()`` refuses ``.eval()`` and ``.train()``; this wrapper accepts ``.eval()``
    (what inference code calls) and refuses only training mode.
    """

    def __init__(self, module: nn.Module, meta: dict | None = None):
        super().__init__()
        self.module = module
        self.meta = meta or {}
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> InferenceModule:
        if mode:
            raise ExportedModelError("a loaded exported model is for inference only (eval mode)")
        self.training = False
        return self
