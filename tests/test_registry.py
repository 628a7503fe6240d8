"""Tests for seam.models.registry and seam.models.architectures (random weights; shared checkpoints if present)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from seam.core.download import ChecksumError, DownloadError, file_digest
from seam.models.architectures import chenyaofo_cifar_resnet, chenyaofo_vgg16_bn, cifar_resnet
from seam.models.fetch import MIRROR_ENV, fetch_model
from seam.models.registry import (
    REGISTRY,
    ModelError,
    get_spec,
    load_model,
    load_state_dict,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MODELS = SHARED / "models"


def _shared_models() -> Path:
    if not (SHARED_MODELS / REGISTRY["resnet20"].filename).is_file():
        pytest.skip(f"offline model mirror not found at {SHARED_MODELS}")
    return SHARED_MODELS


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own SEAM_MODEL_MIRROR must not change what these tests exercise.
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_entry_builds_and_runs(name: str) -> None:
    spec = REGISTRY[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.randn(1, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, spec.num_classes)
    assert torch.isfinite(y).all()
    head = model.get_submodule(spec.classifier)
    assert isinstance(head, nn.Linear) and head.out_features == spec.num_classes


@pytest.mark.parametrize("name", list(REGISTRY))
def test_entry_metadata_is_consistent(name: str) -> None:
    spec = REGISTRY[name]
    assert spec.name == name
    assert spec.url.startswith("https://") and spec.url.endswith("/" + spec.filename)
    assert spec.sha256 is not None or spec.sha256_prefix is not None
    # torch.hub convention: the file name carries a prefix of the file's sha256.
    embedded = re.search(r"-([0-9a-f]{8,})\.", spec.filename).group(1)
    assert (spec.sha256 or spec.sha256_prefix).startswith(embedded)
    assert spec.classes_from in {"cifar10", "cifar100", "imagenet"}
    assert spec.num_classes == {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[spec.classes_from]
    assert spec.input_size == (224 if spec.classes_from == "imagenet" else 32)
    assert len(spec.mean) == len(spec.std) == 3


def test_the_default_model_is_registered() -> None:
    from seam.core.params import ModelParams

    assert get_spec(ModelParams().name).name == "resnet20"


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ModelError) as info:
        get_spec("resnet21")
    assert "resnet21" in str(info.value)
    for name in REGISTRY:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "model, millions",
    # Parameter counts published in chenyaofo/pytorch-cifar-models' README (and He et al.'s 0.27M).
    [
        (lambda: chenyaofo_cifar_resnet(20, 10), 0.27),
        (lambda: chenyaofo_cifar_resnet(20, 100), 0.28),
        (lambda: chenyaofo_vgg16_bn(10), 15.25),
        (lambda: chenyaofo_vgg16_bn(100), 15.30),
        (lambda: cifar_resnet(20), 0.27),
    ],
    ids=["chen_r20_c10", "chen_r20_c100", "chen_vgg16_c10", "chen_vgg16_c100", "resnet20_optA"],
)
def test_parameter_counts_match_published(model, millions: float) -> None:
    count = sum(p.numel() for p in model().parameters())
    assert round(count / 1e6, 2) == pytest.approx(millions)


def test_chenyaofo_key_layout() -> None:
    keys = chenyaofo_cifar_resnet(20, 10).state_dict().keys()
    assert {"conv1.weight", "bn1.running_var", "fc.weight", "fc.bias"} <= keys
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.1.running_mean" in keys
    assert not any(k.startswith("layer1.0.downsample") for k in keys)
    vgg_keys = chenyaofo_vgg16_bn(10).state_dict().keys()
    # Conv positions in `features` for config "D" with BN (conv, bn, relu; pool after stages).
    convs = {int(k.split(".")[1]) for k in vgg_keys if k.startswith("features.") and k.endswith(".weight")
             and f"features.{k.split('.')[1]}.running_mean" not in vgg_keys}
    assert convs == {0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40}
    assert {"classifier.0.weight", "classifier.3.weight", "classifier.6.weight"} <= vgg_keys


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_depths(depth: int) -> None:
    model = cifar_resnet(depth).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # depth = all 3x3 convs + the linear layer; option A adds no shortcut convs.
    assert len(convs) + 1 == depth
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bad_depth() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)


def _save_random(tmp_path: Path, model: nn.Module, name: str, wrap=lambda sd: sd) -> Path:
    path = tmp_path / name
    torch.save(wrap(model.state_dict()), path)
    return path


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "best_prec1": 90.0},
        lambda sd: {"model": sd, "epoch": 3},
    ],
    ids=["bare", "state_dict+module", "model"],
)
def test_load_accepts_wrappers(tmp_path: Path, wrap) -> None:
    torch.manual_seed(1)
    source = chenyaofo_cifar_resnet(20, 10)
    path = _save_random(tmp_path, source, "ck.pt", wrap)
    model = load_model("cifar10_resnet20", path)
    assert not model.training
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert set(load_state_dict("cifar10_resnet20", path)) == set(source.state_dict())


def test_random_tensor_dict_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    torch.save({"foo.weight": torch.randn(3, 3)}, path)
    with pytest.raises(ModelError) as info:
        load_model("resnet20", path)
    message = str(info.value)
    assert str(path) in message and "resnet20" in message
    assert "foo.weight" in message and "conv1.weight" in message


def test_mis_shaped_state_dict_is_rejected(tmp_path: Path) -> None:
    path = _save_random(tmp_path, cifar_resnet(20, num_classes=100), "r20_100.pt")
    with pytest.raises(ModelError) as info:
        load_model("resnet20", path)
    assert "linear.weight (100, 64) vs (10, 64)" in str(info.value)


def test_other_family_is_rejected(tmp_path: Path) -> None:
    # Same depth, other shortcut type: the downsample keys give it away.
    path = _save_random(tmp_path, chenyaofo_cifar_resnet(20, 10), "chen.pt")
    with pytest.raises(ModelError, match="downsample"):
        load_model("resnet20", path)


def test_non_state_dict_and_unreadable_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.th"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match=re.escape(str(garbage))):
        load_model("resnet20", garbage)
    missing = tmp_path / "missing.th"
    with pytest.raises(ModelError, match=re.escape(str(missing))):
        load_model("resnet20", missing)
    listy = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(ModelError, match="no state dict"):
        load_model("resnet20", listy)
    mixed = tmp_path / "mixed.pt"
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, mixed)
    with pytest.raises(ModelError, match="not a state dict"):
        load_model("resnet20", mixed)


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet44"])
def test_shared_checkpoints_load_strictly(name: str) -> None:
    spec = get_spec(name)
    path = _shared_models() / spec.filename
    assert file_digest(path) == spec.sha256
    model = load_model(spec, path)
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert len(raw) > 0
    for key, value in raw.items():
        assert torch.equal(model.state_dict()[key.removeprefix("module.")], value), key
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_resnet32_file_as_resnet20_names_keys() -> None:
    path = _shared_models() / get_spec("resnet32").filename
    with pytest.raises(ModelError) as info:
        load_model("resnet20", path)
    message = str(info.value)
    assert str(path) in message and "resnet20" in message
    assert "unexpected" in message and "layer1.3." in message


def test_fetch_via_mirror_directory_and_file(tmp_path: Path) -> None:
    mirror = _shared_models()
    spec = get_spec("resnet20")
    by_dir = fetch_model("resnet20", tmp_path / "a" / "resnet20.th", mirror=str(mirror))
    by_file = fetch_model("resnet20", tmp_path / "b.th", mirror=str(mirror / spec.filename))
    for path in (by_dir, by_file):
        assert path.is_file() and file_digest(path) == spec.sha256
    load_model("resnet20", by_dir)


def test_fetch_via_env_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(_shared_models()))
    dest = fetch_model("resnet32", tmp_path / "resnet32.th")
    assert file_digest(dest) == get_spec("resnet32").sha256


def test_fetch_rejects_wrong_bytes_and_leaves_nothing(tmp_path: Path) -> None:
    spec = get_spec("resnet20")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    torch.save(cifar_resnet(20).state_dict(), mirror / spec.filename)  # right name, wrong bytes
    out = tmp_path / "out"
    with pytest.raises(ChecksumError) as info:
        fetch_model("resnet20", out / "resnet20.th", mirror=str(mirror))
    assert spec.sha256 in str(info.value)
    assert not (out / "resnet20.th").exists()
    assert not out.exists() or list(out.iterdir()) == []


def test_fetch_prefix_only_entry_checks_prefix(tmp_path: Path) -> None:
    spec = get_spec("cifar10_resnet20")
    fake = tmp_path / spec.filename
    torch.save(chenyaofo_cifar_resnet(20, 10).state_dict(), fake)
    with pytest.raises(ChecksumError, match=spec.sha256_prefix):
        fetch_model(spec.name, tmp_path / "out.pt", mirror=str(fake))
    assert not (tmp_path / "out.pt").exists()


def test_mirror_without_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match=get_spec("resnet44").filename):
        fetch_model("resnet44", tmp_path / "out.th", mirror=str(tmp_path))
    with pytest.raises(ModelError, match=rf"model mirror {tmp_path}/absent is neither a directory nor a file"):
        fetch_model("resnet44", tmp_path / "out.th", mirror=str(tmp_path / "absent"))
    # a relative mirror names what it resolved to and from where (queued experiments run elsewhere)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=rf"model mirror \.\./shared \(= {tmp_path.parent}/shared, from {tmp_path}\) is neither"):
        fetch_model("resnet44", tmp_path / "out.th", mirror="../shared")


def test_fetch_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="known models"):
        fetch_model("vgg99", tmp_path / "x")


def test_url_failure_suggests_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_spec("resnet20")
    url = "http://127.0.0.1:9/x"  # discard port: nothing listens there
    monkeypatch.setitem(REGISTRY, "resnet20", dataclasses.replace(spec, url=url))
    dest = tmp_path / "out" / "resnet20.th"
    with pytest.raises(DownloadError) as info:
        fetch_model("resnet20", dest)
    message = str(info.value)
    assert url in message and MIRROR_ENV in message and spec.filename in message
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
