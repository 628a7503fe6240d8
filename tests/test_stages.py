"""Stage scripts report bad input as one clear line, without a traceback, and write nothing."""

from __future__ import annotations

import subprocess
import sys

import yaml

from conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def run_stage(tmp_path, script, *args, params=None):
    if params is not None:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=tmp_path,
                          capture_output=True, text=True)


def test_missing_params_file(tmp_path):
    proc = run_stage(tmp_path, "download.py", "data/raw")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: params.yaml: not found") and "Traceback" not in proc.stderr


def test_unknown_dataset_names_the_key_and_writes_nothing(tmp_path):
    proc = run_stage(tmp_path, "download.py", "data/raw", params=dict(PARAMS, dataset={"name": "mnist", "source": None, "sha256": None}))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "mnist" in proc.stderr and "cifar10" in proc.stderr
    assert not (tmp_path / "data").exists()


REENGINEER_PATHS = ("data/prepared/airplane.pt", "models/pretrained", "models/reengineered/airplane.pt",
                    "plots/reengineer/airplane.csv", "results/reengineer/airplane.json")


def test_unknown_target_and_bad_search_params(tmp_path):
    proc = run_stage(tmp_path, "reengineer.py", "nosuch", *REENGINEER_PATHS, params=PARAMS)
    assert proc.returncode == 1 and "no target 'nosuch'" in proc.stderr
    proc = run_stage(tmp_path, "reengineer.py", "airplane", *REENGINEER_PATHS, params=dict(PARAMS, select_on="train"))
    assert proc.returncode == 1 and "select_on: Input should be 'val' or 'test', got 'train'" in proc.stderr
    bad = dict(PARAMS, reengineer=dict(PARAMS["reengineer"], lr_mask="fast"))
    proc = run_stage(tmp_path, "reengineer.py", "airplane", *REENGINEER_PATHS, params=bad)
    assert proc.returncode == 1 and "reengineer.lr_mask" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists()


def test_stage_without_its_paths_prints_usage(tmp_path):
    proc = run_stage(tmp_path, "reengineer.py", "airplane", params=PARAMS)
    assert proc.returncode == 2 and "Usage" in proc.stderr and "problem_file" in proc.stderr


def test_unknown_model(tmp_path):
    proc = run_stage(tmp_path, "fetch_model.py", "models/pretrained", params=dict(PARAMS, model={"name": "resnet9000"}))
    assert proc.returncode == 1 and "resnet9000" in proc.stderr and "resnet20" in proc.stderr
    assert not (tmp_path / "models").exists()


def test_image_size_that_does_not_fit_the_model_is_refused():
    import pytest
    import torch

    from seam.pretrained import check_images
    from seam.registry import ModelError, get_spec

    from types import SimpleNamespace

    data = SimpleNamespace(train_x=torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ModelError, match="expects 3x32x32 images.*has 3x64x64"):
        check_images(get_spec("resnet20"), data, "data/defects/target.pt")
    check_images(get_spec("resnet20"), SimpleNamespace(train_x=torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), "ok")
