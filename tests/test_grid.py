"""Target grids: short target forms, `seam targets`, `seam profile` and params.yaml editing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from seam.cli import app
from seam.core.params import DatasetParams, ParamsError, load_params
from seam.core.paramsfile import update_params
from seam.data.problem import TargetError
from seam.data.sources import dataset_classes, download_dataset, load_dataset
from seam.data.targets import build_target, parse_targets, target_grid
from seam.models.registry import CIFAR10_CLASSES, REGISTRY
from tests.conftest import REPO
from tests.test_datasets import make_fake_cifar, patch_md5s
from tests.test_targets import make_raw

PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def test_short_forms_equal_explicit_ones() -> None:
    raw = make_raw(coarse=True)
    short = parse_targets({"a": "binary", "s1": "superclass", "pair": ["c", "a"]}, raw)
    explicit = parse_targets({"a": {"binary": "a"}, "s1": {"superclass": "s1"}, "pair": {"classes": ["c", "a"]}}, raw)
    assert short == explicit


@pytest.mark.parametrize(("specs", "pattern"), [
    ({"a": "binry"}, r"targets\.a: unknown short form 'binry'; expected one of \['binary', 'superclass'\]"),
    ({"zz": "binary"}, r"targets\.zz\.binary: unknown class name 'zz'"),
    ({"s9": "superclass"}, r"targets\.s9\.superclass: superclass 's9' out of range"),
    ({"one": ["a"]}, r"targets\.one\.classes: needs at least 2 classes, got 1"),
])
def test_short_form_errors(specs: dict, pattern: str) -> None:
    with pytest.raises(TargetError, match=pattern):
        parse_targets(specs, make_raw(coarse=True))


def test_target_grid() -> None:
    assert target_grid("binary", None, ["a", "b"]) == {"a": "binary", "b": "binary"}
    assert target_grid("superclass", ["y"], ["x", "y"]) == {"y": "superclass"}
    with pytest.raises(TargetError, match=r"binary: unknown name\(s\) \['c'\]; known: \['a', 'b'\]"):
        target_grid("binary", ["c"], ["a", "b"])
    with pytest.raises(TargetError, match=r"cannot be target names .*my_name: \{binary: 'a b'\}"):
        target_grid("binary", None, ["a b"])


def test_dataset_classes_of_an_imagefolder(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in ("dog", "cat"):
            (tmp_path / "raw" / "imagefolder" / split / cls).mkdir(parents=True)
            (tmp_path / "raw" / "imagefolder" / split / cls / "0.jpg").write_bytes(b"")
    cfg = DatasetParams(name="imagefolder", source="x")
    assert dataset_classes(cfg, tmp_path / "raw") == (["cat", "dog"], None)
    with pytest.raises(ValueError, match=r"raw data folder missing \(run the download stage"):
        dataset_classes(cfg, tmp_path / "nothing")


def _params(tmp_path: Path, **changes: object) -> Path:
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text)
    if changes:
        update_params(path, changes, replace={"targets"})
    return path


def test_superclass_grid_on_built_cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`seam targets --superclass all` on a CIFAR-100 archive the test builds, then prepare's path."""
    archive, md5s, truth = make_fake_cifar("cifar100", tmp_path / "official.tar.gz", n_train=60, n_test=30)
    patch_md5s(monkeypatch, "cifar100", archive, md5s)
    cfg = DatasetParams(name="cifar100", source=str(archive))
    download_dataset(cfg, tmp_path / "raw")
    assert dataset_classes(cfg, tmp_path / "raw") == ([f"fine{i}" for i in range(6)], ["c0", "c1", "c2"])
    params = _params(tmp_path, dataset={"name": "cifar100", "source": str(archive)},
                     targets={"c0": "superclass"}, retrain={"targets": ["c0"]})

    run = CliRunner().invoke(app, ["targets", "--superclass", "all", "--params", str(params), "--raw", str(tmp_path / "raw")])
    assert run.exit_code == 0, run.output
    assert "3 targets (2 written): c0, c1, c2" in run.output
    p = load_params(params)
    assert p.targets == {"c0": "superclass", "c1": "superclass", "c2": "superclass"}
    raw = load_dataset(p.dataset, tmp_path / "raw")
    for spec in parse_targets(p.targets, raw):
        s = int(spec.name[1])
        fine = [c for c in range(6) if truth["coarse_of"][c] == s]
        assert spec.kind == "superclass" and spec.source_classes == fine
        problem = build_target(raw, spec, seed=0, val_fraction=0.1)
        n_train = sum(truth["coarse_of"][y] == s for y in truth["train_y"])
        assert len(problem.train_y) + len(problem.val_y) == n_train
        assert problem.class_names == [f"fine{c}" for c in fine]


def test_seam_targets_adds_a_binary_grid_keeping_the_file(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            (tmp_path / "raw" / "imagefolder" / split / cls).mkdir(parents=True)
            (tmp_path / "raw" / "imagefolder" / split / cls / "0.jpg").write_bytes(b"")
    params = _params(tmp_path)
    update_params(params, {"dataset": {"name": "imagefolder", "source": "x.tar"}})
    before = params.read_text()
    args = ["targets", "--params", str(params), "--raw", str(tmp_path / "raw")]

    dry = CliRunner().invoke(app, [*args, "--binary", "cat,dog", "--only", "--dry-run"])
    assert dry.exit_code == 0 and dry.output == "cat: {binary: cat}\ndog: {binary: dog}\n"
    assert params.read_text() == before
    listed = CliRunner().invoke(app, [*args, "--names"])
    assert listed.exit_code == 0 and listed.output == "airplane\nvehicles\nairplane_channel\n"

    run = CliRunner().invoke(app, [*args, "--binary", "all"])
    assert run.exit_code == 0, run.output
    after = params.read_text()
    # existing entries, their comments and every other line stay as they were
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert added == [f"  {c}: binary" for c in CIFAR10_CLASSES if c != "airplane"]
    assert list(load_params(params).targets) == ["airplane", "vehicles", "airplane_channel", *CIFAR10_CLASSES[1:]]

    # --only would drop `vehicles`, which retrain.targets names: refused, nothing written
    bad = CliRunner().invoke(app, [*args, "--binary", "cat", "--only"])
    assert bad.exit_code == 1
    assert "retrain.targets: ['vehicles'] not in targets (known: ['cat'])" in bad.output
    assert params.read_text() == after
    typo = CliRunner().invoke(app, [*args, "--binary", "dgo"])
    assert typo.exit_code == 1 and "unknown name(s) ['dgo']" in typo.output
    no_coarse = CliRunner().invoke(app, [*args, "--superclass", "all"])
    assert no_coarse.exit_code == 1 and "has no superclasses (CIFAR-100 only)" in no_coarse.output


def test_update_params_validates_before_writing(tmp_path: Path) -> None:
    params = _params(tmp_path)
    before = params.read_text()
    with pytest.raises(ParamsError, match=rf"{params}: reengineer.max_epochs: Input should be greater than 0"):
        update_params(params, {"reengineer": {"max_epochs": 0}})
    assert params.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # no temporary file left


DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


def overlaid(base: dict, overlay: dict, path: str = "") -> dict:
    """`overlay` over `base` as a profile is applied: mappings key by key, `targets` whole."""
    out = dict(base)
    for key, value in overlay.items():
        here = f"{path}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and here != "targets":
            out[key] = overlaid(base[key], value, f"{here}.")
        else:
            out[key] = value
    return out


def restated(overlay: dict, base: dict, path: str = "") -> list[str]:
    """Key paths where `overlay` says what `base` already does (an empty mapping says nothing)."""
    found = []
    for key, value in overlay.items():
        here = f"{path}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and here != "targets":
            found += restated(value, base[key], f"{here}.") if value else [f"{here} (empty)"]
        elif key in base and base[key] == value:
            found.append(here)
    return found


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_profiles_apply_and_validate(tmp_path: Path, profile: Path) -> None:
    params = _params(tmp_path)
    run = CliRunner().invoke(app, ["profile", profile.stem, "--params", str(params), "--folder", str(profile.parent)])
    assert run.exit_code == 0, run.output
    p = load_params(params)
    overlay = yaml.safe_load(profile.read_text())
    # the overlay's keys win, every other key keeps params.yaml's value, `targets` is the profile's alone
    assert p.model_dump() == overlaid(DEFAULTS, overlay)
    assert p.model.name in REGISTRY and p.targets == overlay["targets"]
    if p.dataset.name != "cifar100":  # CIFAR-10's class names, in its order
        assert [n for n, s in p.targets.items() if s == "binary"] == list(CIFAR10_CLASSES)
    elif "superclass" in p.targets.values():
        assert len(p.targets) == 20 and p.retrain.targets == list(p.targets)
    else:
        assert len(p.targets) == 100
    title, needs = profile.read_text().splitlines()[:2]  # `seam profile` lists the title; the README the needs
    assert title.startswith("# ") and "network" in title + needs


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_profiles_hold_only_what_differs_from_params_yaml(profile: Path) -> None:
    # one source of truth: a value equal to params.yaml's belongs to params.yaml alone
    assert restated(yaml.safe_load(profile.read_text()), DEFAULTS) == [], (
        f"{profile.name} repeats params.yaml's values; delete those keys from the profile")


def test_profile_errors(tmp_path: Path) -> None:
    params = _params(tmp_path)
    run = CliRunner().invoke(app, ["profile", "nope", "--params", str(params), "--folder", str(REPO / "profiles")])
    assert run.exit_code == 1 and "nope.yaml: no such profile; known: [" in run.output
    listing = CliRunner().invoke(app, ["profile", "--folder", str(REPO / "profiles")])
    assert listing.exit_code == 0 and len(listing.output.splitlines()) == len(PROFILES)


def test_a_profile_says_which_keys_it_leaves_off_their_defaults(tmp_path: Path) -> None:
    params = _params(tmp_path)
    folder = REPO / "profiles"
    first = CliRunner().invoke(app, ["profile", "resnet20-cifar10-binary", "--params", str(params), "--folder",
                                     str(folder)])
    assert first.exit_code == 0 and "note:" not in first.output  # applied to the defaults: nothing left over
    second = CliRunner().invoke(app, ["profile", "offline-resnet20-binary", "--params", str(params), "--folder",
                                      str(folder)])
    assert second.exit_code == 0
    assert "keep values other than the defaults: select_on, model.name, retrain.targets" in second.output


def test_a_written_grid_is_one_dvc_stage_per_target(tmp_path: Path) -> None:
    """The expansion is visible to DVC: `dvc stage list` names one reengineer stage per target."""
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    update_params(tmp_path / "params.yaml", {"targets": {c: "binary" for c in CIFAR10_CLASSES[1:]}})
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(dvc + ["init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run(dvc + ["stage", "list", "--name-only"], cwd=tmp_path, check=True, capture_output=True,
                            text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}).stdout.split()
    assert [s for s in listed if s.startswith("reengineer@")] == [f"reengineer@{t}" for t in
                                                                   ["airplane", "vehicles", "airplane_channel",
                                                                    *CIFAR10_CLASSES[1:]]]


def test_ci_sizing_is_an_overlay_that_applies(tmp_path: Path) -> None:
    """.ci/run applies .ci/sizing.yaml with `seam profile`: it must validate, keep the targets,
    and hold only what differs from params.yaml."""
    sizing = REPO / ".ci" / "sizing.yaml"
    overlay = yaml.safe_load(sizing.read_text())
    assert "targets" not in overlay and restated(overlay, DEFAULTS) == []
    params = _params(tmp_path)
    run = CliRunner().invoke(app, ["profile", "sizing", "--params", str(params), "--folder", str(sizing.parent)])
    assert run.exit_code == 0, run.output
    assert load_params(params).model_dump() == overlaid(DEFAULTS, overlay)
