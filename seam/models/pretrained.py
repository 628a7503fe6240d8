"""The pretrained model: fetched once from params.yaml's `model` section (a registry entry or
any classifier), checked, and described in ``model.json`` so that every later stage rebuilds
it without the registry."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from seam.core.atomic import write_json
from seam.core.download import cached_sha256
from seam.data.problem import TargetProblem
from seam.models.masks import maskable_tensors
from seam.models.registry import ModelError, build_arch, load_weights

INFO = "model.json"
FILES = {"state_dict": "model.pt", "export": "model.pt2"}


@dataclass(frozen=True)
class PretrainedModel:
    """What `fetch_model` found out about the model: how to rebuild it and how to feed it."""

    name: str
    format: str                      # "state_dict" (arch + weights) | "export" (a torch.export archive)
    sha256: str                      # of the checkpoint file as fetched
    num_classes: int                 # outputs, from a dry run
    mean: list[float]
    std: list[float]
    input_size: int
    arch: str | None = None
    kwargs: dict = field(default_factory=dict)
    classifier: str | None = None    # dotted path of the final nn.Linear (None: no such module)
    classes: list[str] | None = None  # output names, when known
    source: str = ""                 # where the checkpoint came from

    @property
    def file(self) -> str:
        return FILES[self.format]

    def build(self, path: str | os.PathLike) -> nn.Module:
        """The model with the checkpoint at `path` loaded, in eval mode."""
        if self.format == "export":
            from seam.models.archive import load_exported

            return load_exported(path)
        return load_weights(build_arch(self.arch, self.kwargs), path, self.name)

    def untrained(self, seed: int) -> nn.Module:
        """The architecture with its own random initialisation (seeded; the global RNG is left as
        it was), for retraining from scratch."""
        if self.format == "export":
            raise ModelError(f"model.checkpoint: {self.name} is a .pt2 archive, a trained graph without its "
                             "architecture's code; retraining from scratch needs model.arch + a state dict")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_arch(self.arch, self.kwargs).eval()

    def final_layer(self) -> str:
        """The classifier's path, for the stages that replace it (defect inheritance)."""
        if self.classifier is None:
            raise ModelError(f"model.classifier: {self.name} has no nn.Linear output layer to replace (a .pt2 "
                             "archive has none); the defect-inheritance stages need arch + a state dict")
        return self.classifier

    def source_outputs(self, problem: TargetProblem) -> list[int]:
        """The model's output index of each of the problem's source classes: by name where the
        model's classes are known, else by index (dataset class i is output i)."""
        names = problem.class_names[:1] if problem.kind == "binary" else problem.class_names
        if self.classes is None:
            if max(problem.source_classes) >= self.num_classes:
                raise ModelError(f"targets.{problem.name}: class index {max(problem.source_classes)} is past the "
                                 f"model's {self.num_classes} outputs; name them with model.classes")
            return list(problem.source_classes)
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise ModelError(f"targets.{problem.name}: {unknown} not among the model's classes {self.classes} "
                             "(model.classes maps the outputs to the dataset's class names)")
        return [self.classes.index(n) for n in names]


def check_model(record: PretrainedModel, model: nn.Module) -> PretrainedModel:
    """Dry-run `model` at the declared input and fill in what it tells: the number of outputs
    and the classifier. Refuses what the later stages could not use."""
    channels = len(record.mean)
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first is not None and first.in_channels != channels:
        raise ModelError(f"model.mean: {channels} entries, but {record.name}'s first convolution takes "
                         f"{first.in_channels} input channels")
    # An odd batch of 3: an archive exported with a fixed batch (often 1 or 2) fails here, not mid-search.
    x = torch.zeros(3, channels, record.input_size, record.input_size)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:  # whatever the model raises on that input
        hint = ("; a .pt2 archive needs a dynamic batch dimension (torch.export.export(..., "
                "dynamic_shapes=({0: torch.export.Dim('batch')},)))" if record.format == "export" else "")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        key = "model.checkpoint" if hint else "model.input_size"
        raise ModelError(f"{key}: a dry run of {record.name} on a {list(x.shape)} batch fails: "
                         f"{type(exc).__name__}: {first_line}{hint}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(x):
        raise ModelError(f"model: {record.name} must return [batch, classes] logits, "
                         f"got {list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if not maskable_tensors(model):
        raise ModelError(f"model: {record.name} has no weight SeaM can mask: no Conv/Linear module, and no "
                         "aten conv/linear op reading a weight in its graph")
    num_classes = out.shape[1]
    if record.classes is not None and len(record.classes) != num_classes:
        raise ModelError(f"model.classes: {len(record.classes)} names for {num_classes} outputs")
    return replace(record, num_classes=num_classes, classifier=_classifier(model, record.classifier, num_classes))


def _classifier(model: nn.Module, given: str | None, num_classes: int) -> str | None:
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if given is None:
        if not linears:
            return None  # e.g. an exported graph: fine for re-engineering, not for fine-tuning (RQ3)
        given = linears[-1]
    elif given not in linears:
        raise ModelError(f"model.classifier: {given!r} is not an nn.Linear of the model (its Linear layers: "
                         f"{linears[-5:] or 'none'})")
    out = model.get_submodule(given).out_features
    if out != num_classes:
        raise ModelError(f"model.classifier: {given!r} has {out} outputs but the model returns {num_classes} "
                         "(name the final layer with model.classifier)")
    return given


def save_pretrained(record: PretrainedModel, directory: str | os.PathLike) -> None:
    """Write ``model.json`` beside the checkpoint, and remove what an earlier model left."""
    directory = Path(directory)
    for name in FILES.values():
        if name != record.file:
            (directory / name).unlink(missing_ok=True)
    write_json(asdict(record), directory / INFO)


def load_pretrained(directory: str | os.PathLike) -> tuple[PretrainedModel, nn.Module]:
    """(what fetch_model recorded, the original model in eval mode) from the directory it wrote."""
    directory = Path(directory)
    info_path = directory / INFO
    if not info_path.is_file():
        raise ModelError(f"{info_path}: not found (run the fetch_model stage first)")
    record = PretrainedModel(**json.loads(info_path.read_text()))
    checkpoint = directory / record.file
    if checkpoint.is_file() and (actual := cached_sha256(checkpoint)) != record.sha256:
        raise ModelError(f"{checkpoint}: sha256 {actual[:12]}…, but {info_path} records {record.sha256[:12]}… "
                         "(the file was replaced or altered; run the fetch_model stage)")
    return record, record.build(checkpoint)


def check_images(record: PretrainedModel, problem: TargetProblem, where: str) -> None:
    """Refuse a dataset whose images are not what the model's normalisation and input size expect."""
    shape = tuple(problem.train_x.shape[1:])
    want = (len(record.mean), record.input_size, record.input_size)
    if shape != want:
        raise ModelError(f"{where}: {record.name} expects {'x'.join(map(str, want))} images "
                         f"(normalised with mean {record.mean}, std {record.std}), the dataset has "
                         f"{'x'.join(map(str, shape))}")

