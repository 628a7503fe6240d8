"""Registry of pretrained models: where each checkpoint lives, its hash, and how to load it."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seam.core.errors import SeamError

class ModelError(SeamError, ValueError):
    """Unknown model name, unreadable checkpoint, or checkpoint that does not fit the model."""


# Modules that moved: a model.json (or params.yaml) written before names the old path.
MOVED_MODULES = {"seam.architectures": "seam.models.architectures"}


def import_arch(arch: str, where: str = "model.arch") -> Any:
    """The callable named ``"package.module:callable"``, imported (from the working directory too)."""
    module_name, _, attr = arch.partition(":")
    module_name = MOVED_MODULES.get(module_name, module_name)
    if "" not in sys.path and "." not in sys.path:
        sys.path.append("")  # a project's own model code, next to params.yaml
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        raise ModelError(f"{where}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelError(f"{where}: {module_name!r} has no callable {attr!r}")
    return fn


def build_arch(arch: str, kwargs: Mapping[str, Any], where: str = "model.arch") -> nn.Module:
    """``arch(**kwargs)``, which must return an ``nn.Module``."""
    fn = import_arch(arch, where)
    try:
        model = fn(**kwargs)
    except Exception as exc:
        raise ModelError(f"{where}: {arch}(**{dict(kwargs)!r}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{where}: {arch} returned a {type(model).__name__}, not an nn.Module")
    return model


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class ModelSpec:
    """One pretrained checkpoint and the architecture it belongs to."""

    name: str
    arch: str  # "package.module:callable" building the random-init architecture ...
    kwargs: dict = field(hash=False)  # ... with these keyword arguments
    num_classes: int
    classes_from: str  # dataset whose class order the outputs follow: cifar10 | cifar100 | imagenet
    url: str
    filename: str  # upstream file name, also its name in a cache or mirror directory
    sha256: str | None  # full digest when known
    sha256_prefix: str | None  # torch.hub-style prefix from the file name otherwise
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int  # 32 or 224
    classifier: str  # attribute path of the final nn.Linear
    classes: tuple[str, ...] | None = None  # output names, where the registry knows them

    def build(self) -> nn.Module:
        return build_arch(self.arch, self.kwargs)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# chenyaofo/pytorch-cifar-models training configs (logs branch, logs/<dataset>/<model>/default.log).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.201)
CIFAR100_MEAN = (0.507, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2761)

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_CHENYAOFO = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/"
_TORCHVISION = "https://download.pytorch.org/models/"


def _akamaster(depth: int, sha256: str) -> ModelSpec:
    filename = f"resnet{depth}-{sha256[:8]}.th"
    return ModelSpec(
        name=f"resnet{depth}",
        arch="seam.models.architectures:cifar_resnet",
        kwargs={"depth": depth, "num_classes": 10},
        num_classes=10,
        classes_from="cifar10",
        url=_AKAMASTER + filename,
        filename=filename,
        sha256=sha256,
        sha256_prefix=None,
        # akamaster's trainer normalises CIFAR-10 with the ImageNet statistics.
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=32,
        classifier="linear",
        classes=CIFAR10_CLASSES,
    )


def _chenyaofo(dataset: str, arch: str, tag: str, prefix: str) -> ModelSpec:
    num_classes = 10 if dataset == "cifar10" else 100
    if arch == "resnet20":
        builder, kwargs, classifier = "chenyaofo_cifar_resnet", {"depth": 20, "num_classes": num_classes}, "fc"
    else:
        builder, kwargs, classifier = "chenyaofo_vgg16_bn", {"num_classes": num_classes}, "classifier.6"
    filename = f"{dataset}_{arch}-{prefix}.pt"
    return ModelSpec(
        name=f"{dataset}_{arch}",
        arch=f"seam.models.architectures:{builder}",
        kwargs=kwargs,
        num_classes=num_classes,
        classes_from=dataset,
        url=f"{_CHENYAOFO}{tag}/{filename}",
        filename=filename,
        sha256=None,
        sha256_prefix=prefix,
        mean=CIFAR10_MEAN if dataset == "cifar10" else CIFAR100_MEAN,
        std=CIFAR10_STD if dataset == "cifar10" else CIFAR100_STD,
        input_size=32,
        classifier=classifier,
        classes=CIFAR10_CLASSES if dataset == "cifar10" else None,
    )


def _torchvision(arch: str, prefix: str) -> ModelSpec:
    filename = f"{arch}-{prefix}.pth"
    return ModelSpec(
        name=arch,
        arch=f"torchvision.models:{arch}",
        kwargs={"weights": None},
        num_classes=1000,
        classes_from="imagenet",
        url=_TORCHVISION + filename,
        filename=filename,
        sha256=None,
        sha256_prefix=prefix,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=224,
        classifier="fc",
    )


_SPECS = [
    # Full sha256 digests, measured on the files that
    # akamaster/pytorch_resnet_cifar10 publishes under pretrained_models/.
    _akamaster(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    _akamaster(32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    _akamaster(44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    # URLs and sha256 prefixes: chenyaofo/pytorch-cifar-models master, pytorch_cifar_models/
    # resnet.py and vgg.py (`*_pretrained_weight_urls`); the prefix is the torch.hub
    # check_hash prefix embedded in the release file name. No full digest is published.
    _chenyaofo("cifar10", "resnet20", "resnet", "4118986f"),
    _chenyaofo("cifar100", "resnet20", "resnet", "23dac2f1"),
    _chenyaofo("cifar10", "vgg16_bn", "vgg", "6ee7ea24"),
    _chenyaofo("cifar100", "vgg16_bn", "vgg", "7d8c4031"),
    # torchvision 0.28 ResNet18_Weights / ResNet50_Weights.IMAGENET1K_V1 (the weights that
    # `pretrained=True` meant when SeaM was written); prefix from the file name, as above.
    _torchvision("resnet18", "f37072fd"),
    _torchvision("resnet50", "0676ba61"),
]

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> ModelSpec:
    """The registry entry called `name`; ModelError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}") from None


def _unwrap(obj: object) -> object:
    # Checkpoints often wrap the weights together with training metadata.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                return obj[key]
    return obj


def load_state_dict(name: str, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read model `name`'s checkpoint as a plain state dict (wrappers and DataParallel `module.` removed)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for corrupt or foreign files
        raise ModelError(f"cannot read checkpoint {path} for {name}: {exc}") from exc
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"checkpoint {path} for {name} holds no state dict")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(
                f"checkpoint {path} for {name} is not a state dict "
                f"(entry {key!r} is a {type(value).__name__})"
            )
        state[key.removeprefix("module.")] = value
    return state


def _first(keys: list[str], limit: int = 5) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_model(spec_or_name: ModelSpec | str, path: str | os.PathLike) -> nn.Module:
    """Build the registry architecture, load the checkpoint at `path` strictly, return it in eval mode."""
    spec = get_spec(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
    return load_weights(spec.build(), path, spec.name)


def load_weights(model: nn.Module, path: str | os.PathLike, name: str) -> nn.Module:
    """Load the checkpoint at `path` into `model` strictly (``weights_only``); return it in eval mode."""
    path = Path(path)
    state = load_state_dict(name, path)
    expected = model.state_dict()
    # Checkpoints from before torch 0.4.1 lack BatchNorm's num_batches_tracked counter;
    # BatchNorm fills it in itself, so its absence is not a mismatch.
    missing = [
        k for k in expected if k not in state and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        parts = [
            f"{label}: {_first(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped (file vs model)", misshaped),
            )
            if keys
        ]
        raise ModelError(
            f"checkpoint {path} does not fit model {name}; " + "; ".join(parts)
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not fit model {name}: {exc}") from exc
    return model.eval()
