"""The pretrained model as the `fetch_model` stage left it, and the re-engineered models built on it."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from seam.artifact import build_reengineered, load_artifact
from seam.registry import ModelError, ModelSpec, get_spec, load_model

PRETRAINED = Path("models/pretrained")
REENGINEERED = Path("models/reengineered")


def load_pretrained(directory: Path = PRETRAINED) -> tuple[ModelSpec, nn.Module, dict]:
    """(registry spec, original model in eval mode, fetch info with the checkpoint's sha256)."""
    info = json.loads((directory / "model.json").read_text())
    spec = get_spec(info["name"])
    return spec, load_model(spec, directory / "model.pt"), info


def check_images(spec: ModelSpec, data: dict, where: str) -> None:
    """Refuse a dataset whose images are not what the model's normalisation and input size expect."""
    shape = tuple(data["train_x"].shape[1:])
    if shape != (3, spec.input_size, spec.input_size):
        raise ModelError(f"{where}: {spec.name} expects 3x{spec.input_size}x{spec.input_size} images "
                         f"(normalised with mean {spec.mean}, std {spec.std}), the dataset has {'x'.join(map(str, shape))}")


def load_reengineered(name: str, original: nn.Module, info: dict, directory: Path = REENGINEERED) -> nn.Module:
    """The re-engineered model of target `name`, checked against the checkpoint's hash."""
    return build_reengineered(original, load_artifact(directory / f"{name}.pt"), model_sha256=info["sha256"])
