"""Export a model to ONNX for the latency comparison (the paper's RQ2, Table VI).

The TorchScript exporter writes a fixed-shape graph ``input [batch, 3, s, s] -> logits``
on the CPU, in eval mode. The file is written under a temporary name, run once with
onnxruntime on a seeded random input and compared with PyTorch; only a file that
matches is renamed onto the destination.

Constant folding is on by default: the exporter then folds each eval-mode BatchNorm into
the preceding convolution (``w' = w * gamma / sqrt(var + eps)`` per output channel), so a
masked (zero) weight stays an exact zero. The folded weights can only gain zeros, in a
channel whose BatchNorm scale ``gamma`` is 0 (or whose scaled entries underflow).
DeepSparse would fold BatchNorm itself, so both settings give it the same sparsity.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seam.core.atomic import atomic_path
from seam.core.errors import SeamError
from seam.deploy.flops import plain_copy

__all__ = ["ExportError", "export_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
METADATA_KEY = "seam"


class ExportError(SeamError, ValueError):
    """The model cannot be exported, or its ONNX graph does not compute what PyTorch does."""


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A CPU, eval-mode copy with plain tensors: the caller's model (device, mode) is untouched."""
    plain = plain_copy(model)
    if plain is model:
        plain = copy.deepcopy(model)
    return plain.cpu().eval()


def _use_export_forms(model: nn.Module) -> None:
    """Replace, in place, each submodule that offers ``export_form()`` by that equivalent module.

    An architecture may compute something with an op an inference engine handles badly
    (e.g. the option-A shortcut's channel padding, see ``seam.models.architectures``); its
    ``export_form`` is the same function built from ops every engine runs.
    """
    for name, child in list(model.named_children()):
        if hasattr(child, "export_form"):
            setattr(model, name, child.export_form())
        else:
            _use_export_forms(child)


def _export(model: nn.Module, x: torch.Tensor, path: Path, opset: int, constant_folding: bool) -> None:
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is the legacy one; we want it.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # ... and its own internals use an API it deprecates.
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        # Strided slices (e.g. option-A ResNet shortcuts, x[:, :, ::2, ::2]) are simply not folded.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1 can be constant folded.*")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            do_constant_folding=constant_folding,
            training=torch.onnx.TrainingMode.EVAL,
        )


def _add_metadata(path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    onnx.save(proto, str(path))


def onnx_session(path: str | os.PathLike) -> Any:
    """An onnxruntime CPU session for the ONNX file at `path`, logging errors only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    (out,) = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: x})
    return np.asarray(out)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, input_size: int, batch: int = 16, opset: int = 13,
                atol: float = 1e-4, rtol: float = 1e-3, seed: int = 0,
                constant_folding: bool = True, meta: dict | None = None) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` and check it against PyTorch with onnxruntime.

    The graph takes ``input`` of fixed shape ``[batch, 3, input_size, input_size]`` and
    returns ``logits``. ``meta`` (JSON-able: class names, normalisation) is stored in the
    model's ``metadata_props`` under ``seam``. The check feeds a standard-normal input drawn with ``seed`` and
    requires ``|onnx - torch| <= atol + rtol * |torch|`` everywhere. On any failure an
    :class:`ExportError` is raised and nothing is left at ``path`` (a stale file there is
    removed too, so no later step benchmarks a model that does not match).

    Returns ``{"path", "opset", "batch", "input_shape", "max_abs_diff", "file_size"}``
    (``file_size`` in bytes).
    """
    if input_size < 1 or batch < 1:
        raise ValueError(f"input_size and batch must be positive, got {input_size} and {batch}")
    path = Path(path)
    shape = [batch, 3, input_size, input_size]
    net = _cpu_eval_copy(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            expected = net(x)
        if not isinstance(expected, torch.Tensor):
            raise ExportError(f"{path}: {type(model).__name__} returns {type(expected).__name__}, not one tensor")
        expected = expected.numpy()
        with atomic_path(path) as tmp:
            try:
                # Swapped after `expected` was computed, so the check below covers the swap too.
                _use_export_forms(net)
                _export(net, x, tmp, opset, constant_folding)
                if meta is not None:
                    _add_metadata(tmp, meta)
            except (torch.onnx.errors.OnnxExporterError, torch.jit.Error) as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"{path}: cannot export {type(model).__name__} to ONNX opset {opset}: "
                                  f"{first_line}") from exc
            try:
                got = _run_onnxruntime(tmp, x.numpy())
            except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
                raise ExportError(f"{path}: onnxruntime cannot run the exported model: {exc}") from exc
            if got.shape != expected.shape:
                raise ExportError(f"{path}: ONNX output has shape {list(got.shape)}, PyTorch {list(expected.shape)}")
            diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            max_diff = float(np.max(diff)) if diff.size else 0.0
            if not np.allclose(got, expected, atol=atol, rtol=rtol):
                raise ExportError(
                    f"{path}: ONNX output differs from PyTorch (max abs difference {max_diff:.3g}, "
                    f"allowed atol={atol:g} + rtol={rtol:g} * |output|)")
            size = tmp.stat().st_size
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return {"path": str(path), "opset": opset, "batch": batch, "input_shape": shape,
            "max_abs_diff": max_diff, "file_size": size}
