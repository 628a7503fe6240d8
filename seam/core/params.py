"""params.yaml, declared once: a typed schema whose defaults are params.yaml's values.

Every stage reads the whole file through :func:`load_params`, so a typo anywhere is refused
before any stage writes, and errors name the key path (``reengineer.lr_mask: ...``).
params.yaml must set every key that has a value (DVC tracks what the file says, so no value
may come from a hidden default; a key whose default is null or empty, "not used", may be
left out) and no other: a missing or unknown key is an error. Values are taken as written:
a string, ``true`` or ``.nan`` where a number belongs is refused (an integer is a number).
Each key's meaning is its field's docstring; ``seam params`` renders them all (docs/params.md).
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
    """A mapping of params.yaml; each field's docstring is its meaning (``docs/params.md``)."""

    # strict: a YAML `true` or "0.1" where a number is expected is a typo, not a value
    # (ints still pass for floats). `.nan` / `.inf` are never a setting.
    # Attribute docstrings are the descriptions, so the reference is rendered from this file.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)


class DatasetParams(Section):
    """The image dataset every target problem, and the RQ3 target, is drawn from."""

    name: Literal["cifar10", "cifar100", "imagefolder"] = "cifar10"
    """`cifar10` or `cifar100` (torchvision's archives, md5-verified), or `imagefolder`: your own
    images as `train/<class>/` and `test/<class>/` folders."""
    source: Optional[Annotated[str, Field(min_length=1)]] = None
    """imagefolder (required): a directory, a `.tar`/`.tar.gz`/`.tgz` archive, as a path or an http(s)
    URL. cifar10/cifar100: an optional local copy of the official python archive (offline)."""
    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None
    """Optional sha256 of the dataset's archive (an imagefolder archive, or the CIFAR archive
    given as `source` or downloaded), verified before it is used."""

    @model_validator(mode="after")
    def _imagefolder_needs_a_source(self) -> "DatasetParams":
        if self.name == "imagefolder" and self.source is None:
            raise ValueError("source: required for imagefolder (a directory or .tar/.tar.gz/.tgz, path or URL)")
        return self


class ModelParams(Section):
    """A registry entry by name, or any classifier: an architecture and its checkpoint, or a
    torch.export archive (``.pt2``, no ``arch``)."""

    name: Annotated[str, Field(min_length=1)] = "resnet20"
    """A registry name (`seam models`), or a label for your own model in logs and reports."""
    arch: Optional[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]] = None
    """Your model's architecture: `"package.module:callable"` returning the `nn.Module` (this
    imports and runs that code). Required with a state-dict `checkpoint`; none with a `.pt2`."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments of `arch`, e.g. `{depth: 32, num_classes: 10}`."""
    checkpoint: Optional[Annotated[str, Field(min_length=1)]] = None
    """Your model's weights, a local path or http(s) URL: a state dict (with `arch`) or a
    torch.export archive (`.pt2`: architecture and weights). Never unpickled. Unset: the
    registry model `name`."""
    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None
    """sha256 of `checkpoint`: required for a URL (downloads are verified), optional for a file."""
    mean: Optional[Annotated[list[float], Field(min_length=1)]] = None
    """Input normalisation mean, one entry per input channel (required with `checkpoint`)."""
    std: Optional[Annotated[list[float], Field(min_length=1)]] = None
    """Input normalisation std, one entry > 0 per input channel (required with `checkpoint`)."""
    input_size: Optional[PositiveInt] = None
    """Square input size in pixels the model was trained on (required with `checkpoint`)."""
    classes: Optional[Annotated[list[str], Field(min_length=2)]] = None
    """Optional: the model's class names in output order, so target classes map onto outputs
    by name (unset: dataset class i is output i, unless the registry knows the names)."""
    classifier: Optional[Annotated[str, Field(min_length=1)]] = None
    """Optional: dotted module path of the final `nn.Linear` (unset: the last `nn.Linear`)."""

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
    """How each target problem's training images are split."""

    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Share of the training images held out as the validation split, for model selection
    (`select_on: val`)."""


class ReengineerParams(Section):
    """The RQ1 mask search (`reengineer@<target>`)."""

    lr_mask: Positive = 0.05
    """Adam learning rate of the mask scores. Paper: 0.05 for ResNet20-CIFAR10 and
    VGG16-CIFAR100, 0.01 for VGG16-CIFAR10, 0.1-0.12 for ResNet20-CIFAR100."""
    lr_head: Positive = 0.1
    """Adam learning rate of the new output layer (head). Release: 0.1."""
    batch_size: PositiveInt = 64
    """Training batch size. Release: 64."""
    max_epochs: PositiveInt = 50
    """Upper bound on search epochs. Paper: 300; 50 keeps the default pipeline CPU-sized."""
    early_stop: NonNegativeInt = 15
    """Stop this many epochs after the last new best selected epoch (0: never stop early)."""
    granularity: Literal["weight", "channel"] = "weight"
    """What one mask score decides: `weight` (the paper: sparse, faster on DeepSparse only) or
    `channel` (whole filters: the compact export is a smaller dense model, faster on any engine)."""
    round_to: PositiveInt = 16
    """`channel` only: each conv keeps a multiple of this many channels, the extra ones by score
    (the CPU kernels' channel block: 16 on AVX-512, 8 on AVX2; 1: no rounding)."""
    cost: Literal["weights", "macs"] = "weights"
    """What the kept share in the objective counts: `weights` (the paper) or `macs`
    (multiply-accumulates: each weight once per output position, i.e. compute)."""
    alpha_warmup: NonNegativeInt = 0
    """Epochs over which alpha rises linearly from 0 to `alpha` (0: constant alpha, the paper).
    A ramp removes the channels the target needs least first."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """Compute dtype of the search's forward and backward passes (`torch.autocast`): `fp32`,
    `bf16`, or `auto` (bf16 where the CPU or GPU computes it natively, else fp32). Masks,
    scores and optimiser state stay fp32."""
    head_only_every: NonNegativeInt = 5
    """Every this many epochs (`epoch % n == 0`) the head trains alone and the masks rest.
    Release: 5; 0: every epoch trains masks and head together."""
    lr_weights: NonNegative = 0.0
    """Adam learning rate of the original model's own weights (and BatchNorm scales) in joint
    epochs; 0: frozen, the paper. With `channel`, trained weights win back what removing whole
    filters costs, and the artifact carries them."""


class RetrainParams(Section):
    """Table IV: the same architecture trained from scratch on each listed target (SGD, one lr).
    Release: lr 0.1, momentum 0.9, weight decay 1e-4, batch 64, up to 300 epochs, early stop 30
    on the test split."""

    targets: Annotated[list[str], Field(min_length=1)] = ["vehicles"]
    """Names from `targets` to retrain (the paper: its multi-class targets)."""
    lr: Positive = 0.1
    """SGD learning rate, the same for every layer."""
    momentum: NonNegative = 0.9
    """SGD momentum."""
    weight_decay: NonNegative = 0.0001
    """SGD weight decay."""
    batch_size: PositiveInt = 64
    """Training batch size."""
    max_epochs: PositiveInt = 60
    """Upper bound on training epochs. Release: 300."""
    early_stop: NonNegativeInt = 15
    """Stop this many epochs after the last best selection accuracy (0: never). Release: 30."""


class ExportParams(Section):
    """The ONNX export of the original and re-engineered models, for the latency benchmark."""

    batch: PositiveInt = 16
    """Fixed ONNX input batch size (the paper's latency protocol)."""
    opset: Annotated[int, Field(ge=7)] = 13
    """ONNX opset (DeepSparse 1.8 accepts 13)."""


class BenchmarkParams(Section):
    """Latency of the original and re-engineered models on DeepSparse, onnxruntime and torch."""

    iterations: PositiveInt = 200
    """Batches timed per measurement (the paper: the mean over 200 runs)."""
    warmup: NonNegativeInt = 20
    """Untimed batches before each measurement."""
    pairs: PositiveInt = 3
    """Interleaved original/re-engineered measurements; the median ratio is reported."""
    num_cores: Optional[PositiveInt] = None
    """Threads for every engine (unset: all cores)."""
    batch1: bool = True
    """Also time single images (batch 1: serving, phones) beside `export.batch`: the `b1_` keys."""


class FinetuneParams(Section):
    """RQ3 fine-tuning: the standard flow, and step 3 of the SeaM flow.
    Release: lr 0.005 hidden / 0.05 output, momentum 0, weight decay 1e-4, up to 300 epochs."""

    lr_hidden: Positive = 0.005
    """SGD learning rate of every layer but the output layer."""
    lr_output: Positive = 0.05
    """SGD learning rate of the new output layer."""
    momentum: NonNegative = 0.9
    """SGD momentum (the release: 0; 0.9 converges within the CPU budget)."""
    weight_decay: NonNegative = 0.0001
    """SGD weight decay."""
    batch_size: PositiveInt = 64
    """Training batch size."""
    max_epochs: PositiveInt = 8
    """Upper bound on fine-tuning epochs (the release: up to 300)."""
    early_stop: NonNegativeInt = 3
    """Stop this many epochs after the last best selection accuracy (0: never)."""


class OutputLayerParams(Section):
    """SeaM flow step 1: train the new output layer alone."""

    lr_output: Positive = 0.1
    """SGD learning rate of the new output layer. Release: 0.1."""
    max_epochs: PositiveInt = 2
    """Epochs of step 1."""


class SeamReengineerParams(Section):
    """SeaM flow step 2: re-engineer until `threshold` of the weights are removed.
    Release: alpha 0.5, lr_mask 0.05, output layer lr 0.001."""

    alpha: NonNegative = 0.5
    """Weight of the retention term in step 2's objective (as top-level `alpha` in RQ1)."""
    lr_mask: Positive = 0.05
    """Adam learning rate of the mask scores."""
    lr_head: Positive = 0.001
    """Adam learning rate of the head: here the model's own (step 1) output layer."""
    batch_size: PositiveInt = 64
    """Training batch size."""
    max_epochs: PositiveInt = 100
    """Upper bound on epochs; the search stops once `threshold` is reached (about 90 epochs
    with 1,000 training images per class; the default 500 reach ~54% removed in 100)."""
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.6
    """Stop re-engineering once this share of the weights is removed (the paper's t)."""


class SeamFlowParams(Section):
    """RQ3, SeaM's flow: steps 1 and 2 (step 3 fine-tunes as `defects.finetune`)."""

    output_layer: OutputLayerParams = OutputLayerParams()
    reengineer: SeamReengineerParams = SeamReengineerParams()


class RemosParams(Section):
    """ReMoS (the RQ3 baseline): slice by coverage and magnitude, then fine-tune as `finetune`."""

    ratio: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """Share of the conv weights removed (the paper: 0.1 for ResNet18, 0.03 for ResNet50)."""
    coverage_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.5
    """A channel is covered by an image when its min-max scaled spatial mean exceeds this."""
    keep_mask: bool = False
    """Hold the removed weights at zero while fine-tuning (ReMoS lets them regrow)."""


class AttackParams(Section):
    """The RQ3 attack: advertorch's `LinfPGDAttack` with the ReMoS feature loss against the
    pretrained feature extractor, in normalised input space."""

    eps: Positive = 0.1
    """L-inf radius of the perturbation."""
    nb_iter: PositiveInt = 40
    """PGD steps."""
    eps_iter: Positive = 0.01
    """Step size of each PGD step."""
    clip: Annotated[list[float], Field(min_length=2, max_length=2)] = [-2.2, 2.2]
    """`[min, max]` of the normalised input range the adversarial images are clipped to."""
    batch_size: PositiveInt = 256
    """Images attacked per batch."""


class DefectsParams(Section):
    """Defect inheritance (RQ3): reuse the pretrained model on a problem whose label space
    differs from its own, by standard fine-tuning, by ReMoS and by SeaM, and attack all three
    with the same malicious inputs generated from the pretrained feature extractor."""

    target: dict[str, Any] = {"classes": ["bird", "cat", "deer", "dog", "frog", "horse"]}
    """The RQ3 target problem, one spec in the forms of `targets` (default: the six CIFAR-10
    animals)."""
    train_per_class: Optional[PositiveInt] = 500
    """At most this many training images per label, drawn with the seed: a CPU-sized slice
    (null: every image)."""
    test_per_class: Optional[PositiveInt] = 200
    """At most this many test images per label (null: every image)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout before the new output layer of all three models (the paper's Fig. 8)."""
    finetune: FinetuneParams = FinetuneParams()
    remos: RemosParams = RemosParams()
    seam: SeamFlowParams = SeamFlowParams()
    attack: AttackParams = AttackParams()


class Params(Section):
    """The whole of params.yaml."""

    seed: NonNegativeInt = 0
    """Seed of target sampling, the validation split, head initialisation, augmentation and
    batch order: the same params give the same metrics on the CPU."""
    alpha: NonNegative = 1.0
    """Weight of the retention term in the search's objective CE + alpha * (share kept).
    Paper: 1.0 for ResNet20/VGG16 on CIFAR-10, 1.5-2.0 on CIFAR-100 and ImageNet."""
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")] = "auto"
    """Compute device of every training and attack stage: `auto` (CUDA if available, else the
    CPU), `cpu`, `cuda` or `cuda:N`."""
    select_on: Literal["val", "test"] = "val"
    """Split that selects the epoch to keep, in the search and in fine-tuning: `val` (held out
    from the training images, no test leakage) or `test` (the release's protocol)."""
    dataset: DatasetParams = DatasetParams()
    model: ModelParams = ModelParams()
    targets: Annotated[dict[str, Any], Field(min_length=1)] = {"airplane": {"binary": 0},
                               "vehicles": {"classes": ["airplane", "automobile", "ship", "truck"],
                                            "train_per_class": 500},
                               "airplane_channel": {"binary": 0, "reengineer": {
                                   "granularity": "channel", "cost": "macs", "alpha": 2.0, "alpha_warmup": 10,
                                   "lr_mask": 0.005, "lr_weights": 0.0005, "precision": "bf16"}}}
    """Target problems, name -> spec; each name is a DVC foreach key and a file name. Specs:
    `{binary: c}` (class c, index or name, vs an equal number of other-class images),
    `{classes: [i, j, ...]}` (a multi-class subset, labels re-indexed 0..K-1 in this order),
    `{superclass: s}` (CIFAR-100 superclass s, 0..19: its 5 fine classes); short forms
    `cat: binary`, `fish: superclass`, `pets: [cat, dog]`. Any spec may add
    `train_per_class: n` / `test_per_class: n` (at most n images per label, drawn with the
    seed) and `reengineer: {key: value, ...}`: search settings of its own (any `reengineer`
    key, and `alpha`) over the section's; such a target is reported on its own, outside the
    metrics' top-level means. Checked against the dataset's classes by `seam.data.targets`;
    `seam targets` writes a grid, `seam profile` a paper row."""
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
