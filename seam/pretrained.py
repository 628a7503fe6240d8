"""The pretrained model as the `fetch_model` stage left it, and the re-engineered models built on it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from seam.artifact import build_reengineered, load_artifact
from seam.problem import TargetProblem
from seam.registry import ModelError, ModelSpec, get_spec, load_model


def load_pretrained(directory: str | os.PathLike) -> tuple[ModelSpec, nn.Module, dict]:
    """(registry spec, original model in eval mode, fetch info with the checkpoint's sha256)
    from the directory `fetch_model` wrote (``model.pt`` + ``model.json``)."""
    directory = Path(directory)
    info_path = directory / "model.json"
    if not info_path.is_file():
        raise ModelError(f"{info_path}: not found (run the fetch_model stage first)")
    info = json.loads(info_path.read_text())
    spec = get_spec(info["name"])
    return spec, load_model(spec, directory / "model.pt"), info


def check_images(spec: ModelSpec, problem: TargetProblem, where: str) -> None:
    """Refuse a dataset whose images are not what the model's normalisation and input size expect."""
    shape = tuple(problem.train_x.shape[1:])
    if shape != (3, spec.input_size, spec.input_size):
        raise ModelError(f"{where}: {spec.name} expects 3x{spec.input_size}x{spec.input_size} images "
                         f"(normalised with mean {spec.mean}, std {spec.std}), the dataset has {'x'.join(map(str, shape))}")


def load_reengineered(path: str | os.PathLike, original: nn.Module, info: dict) -> nn.Module:
    """The re-engineered model in the artifact at `path`, checked against the checkpoint's hash."""
    return build_reengineered(original, load_artifact(path), model_sha256=info["sha256"])
