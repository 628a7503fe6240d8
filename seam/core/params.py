"""params.yaml, declared once: a typed schema whose defaults are params.yaml's values.

Every stage reads the whole file through :func:`load_params`, so a typo anywhere is refused
before any stage writes, and errors name the key path (``reengineer.lr_mask: ...``).
params.yaml must set every key that has a value (DVC tracks what the file says, so no value
may come from a hidden default; a key whose default is null or empty, "not used", may be
left out) and no other: a missing or unknown key is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from seam.core.errors import SeamError


class ParamsError(SeamError, ValueError):
    """params.yaml is missing, unreadable, or has a key of the wrong type, range or name."""


Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    # strict: a YAML `true` or "0.1" where a number is expected is a typo, not a value
    # (ints still pass for floats). `.nan` / `.inf` are never a setting.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DatasetParams(Section):
    name: Literal["cifar10", "cifar100", "imagefolder"] = "cifar10"
    # imagefolder: directory, .tar/.tar.gz/.tgz path or http(s) URL; cifar: optional local copy of the archive
    source: Optional[Annotated[str, Field(min_length=1)]] = None
    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None  # of an imagefolder archive

    @model_validator(mode="after")
    def _imagefolder_needs_a_source(self) -> "DatasetParams":
        if self.name == "imagefolder" and self.source is None:
            raise ValueError("source: required for imagefolder (a directory or .tar/.tar.gz/.tgz, path or URL)")
        return self


class ModelParams(Section):
    """A registry entry by name, or any classifier: an architecture and its checkpoint, or a
    torch.export archive (``.pt2``, no ``arch``)."""

    name: Annotated[str, Field(min_length=1)] = "resnet20"   # a registry entry, or a label for your model
    arch: Optional[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]] = None  # "package.module:callable"
    kwargs: dict[str, Any] = {}
    checkpoint: Optional[Annotated[str, Field(min_length=1)]] = None   # local path or http(s) URL
    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None
    mean: Optional[Annotated[list[float], Field(min_length=1)]] = None
    std: Optional[Annotated[list[float], Field(min_length=1)]] = None
    input_size: Optional[PositiveInt] = None
    classes: Optional[Annotated[list[str], Field(min_length=2)]] = None   # output order
    classifier: Optional[Annotated[str, Field(min_length=1)]] = None      # dotted path of the final nn.Linear

    @model_validator(mode="after")
    def _one_way_to_name_a_model(self) -> "ModelParams":
        own = {"arch": self.arch, "sha256": self.sha256, "mean": self.mean, "std": self.std,
               "input_size": self.input_size}
        if self.checkpoint is None:
            given = [k for k, v in {**own, "kwargs": self.kwargs or None}.items() if v is not None]
            if given:
                raise ValueError(f"{given[0]}: only with model.checkpoint (a registry model brings its own)")
            return self
        for key in ("mean", "std", "input_size"):
            if own[key] is None:
                raise ValueError(f"{key}: required with model.checkpoint (the input the model was trained on)")
        if len(self.mean) != len(self.std):
            raise ValueError(f"std: {len(self.std)} entries but mean has {len(self.mean)} (one per input channel)")
        if min(self.std) <= 0:
            raise ValueError(f"std: every entry must be > 0, got {self.std}")
        is_archive = self.checkpoint.endswith(".pt2")
        if is_archive and (self.arch or self.kwargs):
            raise ValueError("arch: a .pt2 archive holds its architecture; leave arch and kwargs empty")
        if not is_archive and self.arch is None:
            raise ValueError("arch: required with a state-dict checkpoint (or give a .pt2 archive)")
        if self.checkpoint.startswith(("http://", "https://")) and self.sha256 is None:
            raise ValueError("sha256: required for a checkpoint URL (downloads are verified by hash)")
        return self


class PrepareParams(Section):
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1


class ReengineerParams(Section):
    """The RQ1 mask search (`reengineer@<target>`)."""

    lr_mask: Positive = 0.05
    lr_head: Positive = 0.1
    batch_size: PositiveInt = 64
    max_epochs: PositiveInt = 50
    early_stop: NonNegativeInt = 15   # 0: never stop early
    granularity: Literal["weight", "channel"] = "weight"   # what one mask score decides (seam.granularity)
    round_to: PositiveInt = 16   # channel granularity: each conv keeps a multiple of this many channels
    cost: Literal["weights", "macs"] = "weights"   # what the kept share counts (seam.granularity)
    alpha_warmup: NonNegativeInt = 0   # epochs over which alpha rises from 0 (0: constant, the paper)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"   # compute dtype of the search's training passes
    head_only_every: NonNegativeInt = 5   # epoch % this == 0 trains the head alone (release: 5; 0: never)
    lr_weights: NonNegative = 0.0   # Adam lr of the original weights in joint epochs (0: frozen, the paper)


class RetrainParams(Section):
    """Table IV: the same architecture trained from scratch on each listed target (SGD, one lr)."""

    targets: Annotated[list[str], Field(min_length=1)] = ["vehicles"]   # names from `targets`
    lr: Positive = 0.1
    momentum: NonNegative = 0.9
    weight_decay: NonNegative = 0.0001
    batch_size: PositiveInt = 64
    max_epochs: PositiveInt = 60
    early_stop: NonNegativeInt = 15   # 0: never stop early


class ExportParams(Section):
    batch: PositiveInt = 16
    opset: Annotated[int, Field(ge=7)] = 13


class BenchmarkParams(Section):
    iterations: PositiveInt = 200
    warmup: NonNegativeInt = 20
    pairs: PositiveInt = 5
    num_cores: Optional[PositiveInt] = None
    batch1: bool = True   # also time single images (batch 1), beside export.batch


class FinetuneParams(Section):
    """RQ3 fine-tuning: the standard flow, and step 3 of the SeaM flow."""

    lr_hidden: Positive = 0.005
    lr_output: Positive = 0.05
    momentum: NonNegative = 0.9
    weight_decay: NonNegative = 0.0001
    batch_size: PositiveInt = 64
    max_epochs: PositiveInt = 8
    early_stop: NonNegativeInt = 3


class OutputLayerParams(Section):
    """SeaM flow step 1: train the new output layer alone."""

    lr_output: Positive = 0.1
    max_epochs: PositiveInt = 2


class SeamReengineerParams(Section):
    """SeaM flow step 2: re-engineer until `threshold` of the weights are removed."""

    alpha: NonNegative = 0.5
    lr_mask: Positive = 0.05
    lr_head: Positive = 0.001      # the model's own output layer plays the head
    batch_size: PositiveInt = 64
    max_epochs: PositiveInt = 100
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.6


class SeamFlowParams(Section):
    output_layer: OutputLayerParams = OutputLayerParams()
    reengineer: SeamReengineerParams = SeamReengineerParams()


class RemosParams(Section):
    """ReMoS (the RQ3 baseline): slice by coverage and magnitude, then fine-tune as `finetune`."""

    ratio: Annotated[float, Field(gt=0, lt=1)] = 0.1            # share of the conv weights removed
    coverage_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.5
    keep_mask: bool = False    # keep the removed weights at zero while fine-tuning (ReMoS does not)


class AttackParams(Section):
    eps: Positive = 0.1
    nb_iter: PositiveInt = 40
    eps_iter: Positive = 0.01
    clip: Annotated[list[float], Field(min_length=2, max_length=2)] = [-2.2, 2.2]  # normalised input range
    batch_size: PositiveInt = 256


class DefectsParams(Section):
    target: dict[str, Any] = {"classes": ["bird", "cat", "deer", "dog", "frog", "horse"]}
    train_per_class: Optional[PositiveInt] = 1000
    test_per_class: Optional[PositiveInt] = 300
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    finetune: FinetuneParams = FinetuneParams()
    remos: RemosParams = RemosParams()
    seam: SeamFlowParams = SeamFlowParams()
    attack: AttackParams = AttackParams()


class Params(Section):
    """The whole of params.yaml."""

    seed: NonNegativeInt = 0
    alpha: NonNegative = 1.0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")] = "auto"
    select_on: Literal["val", "test"] = "val"
    dataset: DatasetParams = DatasetParams()
    model: ModelParams = ModelParams()
    # checked against the dataset by seam.data.targets
    targets: Annotated[dict[str, Any], Field(min_length=1)] = {"airplane": {"binary": 0},
                               "vehicles": {"classes": ["airplane", "automobile", "ship", "truck"],
                                            "train_per_class": 500},
                               "airplane_channel": {"binary": 0, "reengineer": {
                                   "granularity": "channel", "cost": "macs", "alpha": 2.0, "alpha_warmup": 10,
                                   "lr_mask": 0.005, "lr_weights": 0.0005, "precision": "bf16"}}}
    prepare: PrepareParams = PrepareParams()
    reengineer: ReengineerParams = ReengineerParams()
    retrain: RetrainParams = RetrainParams()
    export: ExportParams = ExportParams()
    benchmark: BenchmarkParams = BenchmarkParams()
    defects: DefectsParams = DefectsParams()

    @model_validator(mode="after")
    def _retrain_known_targets(self) -> "Params":
        unknown = [t for t in self.retrain.targets if t not in self.targets]
        if unknown:
            raise ValueError(f"retrain.targets: {unknown} not in targets (known: {list(self.targets)})")
        for name in self.targets:
            self.search_settings(name)  # a bad per-target override fails here, before any stage runs
        return self

    def search_settings(self, target: str) -> tuple[float, ReengineerParams]:
        """(alpha, reengineer) for one target: the top-level ``alpha`` and ``reengineer`` section,
        with the target's own ``reengineer:`` mapping (any of its keys, and ``alpha``) over them."""
        override = self._own_settings(target)
        if override is None:
            return self.alpha, self.reengineer
        where = f"targets.{target}.{TARGET_OVERRIDES}"
        if not isinstance(override, dict) or not override:
            raise ValueError(f"{where}: expected a mapping of reengineer keys (and alpha), got {override!r}")
        override = dict(override)
        try:
            alpha = _Alpha.model_validate({"alpha": override.pop("alpha", self.alpha)}).alpha
            return alpha, ReengineerParams.model_validate({**self.reengineer.model_dump(), **override})
        except ValidationError as exc:
            raise ValueError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors(include_url=False))) from None

    def headline_targets(self) -> list[str]:
        """The targets a metrics file's top-level means average: those searched with the
        sections' own settings (every target, where each has its own). A target with its own
        settings (another granularity, say) is reported on its own, under ``targets``."""
        plain = [n for n in self.targets if self._own_settings(n) is None]
        return plain or list(self.targets)

    def _own_settings(self, target: str) -> Any:
        spec = self.targets[target]
        return spec.get(TARGET_OVERRIDES) if isinstance(spec, dict) else None


# a target's own search settings: targets.<name>.reengineer (keys of `reengineer`, and alpha)
TARGET_OVERRIDES = "reengineer"


class _Alpha(Section):
    alpha: NonNegative


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "value_error":  # a check across keys: its message names the key
        return f"{key}.{error['ctx']['error']}" if error["loc"] else str(error["ctx"]["error"])
    return f"{key}: {error['msg']}, got {error['input']!r}"


def _missing(schema: type[Section], raw: dict, prefix: str = "") -> list[str]:
    """Key paths the schema has and `raw` lacks, with their defaults."""
    out = []
    for name, field in schema.model_fields.items():
        if name not in raw:
            if field.default is None or field.default == {}:  # "not used" may go unsaid
                continue
            out.append(f"{prefix}{name} (default: {field.default!r})")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, Section) and isinstance(raw[name], dict):
            out += _missing(field.annotation, raw[name], f"{prefix}{name}.")
    return out


def yaml_problem(exc: Exception) -> str:
    """A YAML parser's error in one line: where, and what (PyYAML's and ruamel's alike)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """The validated params file; a ParamsError names the file and every bad key path."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    missing = _missing(Params, raw)
    if missing:
        raise ParamsError(f"{path}: missing key(s) {', '.join(missing)}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(f"{path}: " + "; ".join(_describe(e) for e in exc.errors(include_url=False))) from None
