"""Classify image files with a re-engineered model in any of its exported forms.

A model is a standalone archive (``<target>.pt2``), an ONNX file with seam metadata
(``<target>.onnx``, ``<target>.compact.onnx``), or a re-engineering artifact
(``models/reengineered/<target>.pt``) together with the fetched original model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from seam.core.errors import SeamError
from seam.data.augment import Normalize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class PredictError(SeamError, ValueError):
    """A model file that cannot be used for prediction, or no images to classify."""


@dataclass
class Classifier:
    """Logits for a batch of normalised images, and what the outputs mean."""

    run: Callable[[torch.Tensor], torch.Tensor]
    class_names: list[str]
    mean: list[float]
    std: list[float]
    input_size: int


def load_classifier(model: str | os.PathLike, pretrained_dir: str | os.PathLike | None = None) -> Classifier:
    """A :class:`Classifier` for ``model``: a ``.pt2`` archive, a ``.onnx`` file, or an artifact
    (then ``pretrained_dir`` is the folder the ``fetch_model`` stage wrote)."""
    path = Path(model)
    if not path.is_file():
        raise PredictError(f"{path}: no such model file")
    if path.suffix == ".pt2":
        from seam.models.archive import load_exported

        module = load_exported(path)
        return _with_meta(path, module.meta, lambda x: module(x))
    if path.suffix == ".onnx":
        return _onnx_classifier(path)
    if pretrained_dir is None:
        raise PredictError(f"{path}: an artifact needs the original model (--pretrained models/pretrained)")
    from seam.models.pretrained import load_pretrained
    from seam.reengineer.artifact import load_artifact, load_reengineered

    info, original = load_pretrained(pretrained_dir)
    net = load_reengineered(path, original, info)
    names = load_artifact(path)["meta"]["target"]["class_names"]
    meta = {"class_names": names, "mean": list(info.mean), "std": list(info.std), "input_size": info.input_size}
    return _with_meta(path, meta, net)


def _with_meta(path: Path, meta: dict, run: Callable) -> Classifier:
    try:
        return Classifier(run, list(meta["class_names"]), list(meta["mean"]), list(meta["std"]),
                          int(meta["input_size"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictError(f"{path}: no seam metadata (class names, mean, std, input size); "
                           "use a file the export stage wrote") from exc


def _onnx_classifier(path: Path) -> Classifier:
    from seam.deploy.onnx import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, onnx_session

    try:
        session = onnx_session(path)
    except Exception as exc:  # onnxruntime's own types
        raise PredictError(f"{path}: not an ONNX model onnxruntime can run: {exc}") from exc
    meta = json.loads(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}"))
    batch = session.get_inputs()[0].shape[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        # The graph has a fixed batch: pad the last chunk, drop the padding's outputs.
        out = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch].numpy()
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0][:n]))
        return torch.cat(out)

    return _with_meta(path, meta, run)


def image_files(source: str | os.PathLike) -> list[Path]:
    """``source`` itself, or the image files below a folder (sorted)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PredictError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not source.is_file():
        raise PredictError(f"{source}: no such file or folder")
    return [source]


def read_image(path: Path, size: int) -> torch.Tensor:
    """uint8 ``[3, size, size]``: RGB, resized (bilinear) when it is not ``size`` x ``size``."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def predict_files(clf: Classifier, files: list[Path], *, batch_size: int = 64,
                  on_error: Callable[[Path, Exception], None] | None = None,
                  progress: Callable[[Iterator], Iterator] = iter) -> Iterator[tuple[Path, torch.Tensor]]:
    """``(file, class probabilities)`` per readable file, in order; unreadable files go to ``on_error``."""
    normalize = Normalize(clf.mean, clf.std)
    batch: list[tuple[Path, torch.Tensor]] = []

    def flush() -> Iterator[tuple[Path, torch.Tensor]]:
        with torch.no_grad():
            probs = torch.softmax(clf.run(normalize(torch.stack([x for _, x in batch]))).float(), 1)
        yield from zip([p for p, _ in batch], probs)
        batch.clear()

    for path in progress(files):
        try:
            batch.append((path, read_image(path, clf.input_size)))
        except Exception as exc:  # PIL raises many types for a corrupt or foreign file
            if on_error is not None:
                on_error(path, exc)
            continue
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
