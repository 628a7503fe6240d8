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
    from types import SimpleNamespace

    import pytest
    import torch

    from seam.models.pretrained import check_images
    from seam.models.registry import ModelError, get_spec

    data = SimpleNamespace(train_x=torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ModelError, match="expects 3x32x32 images.*has 3x64x64"):
        check_images(get_spec("resnet20"), data, "data/defects/target.pt")
    check_images(get_spec("resnet20"), SimpleNamespace(train_x=torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), "ok")


def test_prepare_reports_images_per_class_and_a_short_class(tmp_path):
    """A class that lost images (a partial download) shows in prepare's output and metrics."""
    from PIL import Image

    for split, sizes in (("train", {"ant": 6, "bee": 6, "cow": 3}), ("test", {"ant": 2, "bee": 2, "cow": 2})):
        for cls, n in sizes.items():
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i, 9, 9)).save(tmp_path / "tree" / split / cls / f"{i}.png")
    params = dict(PARAMS, dataset={"name": "imagefolder", "source": str(tmp_path / "tree"), "sha256": None},
                  targets={"pair": ["ant", "cow"]}, retrain=dict(PARAMS["retrain"], targets=["pair"]))
    assert run_stage(tmp_path, "download.py", "raw", params=params).returncode == 0
    proc = run_stage(tmp_path, "prepare.py", "raw", "prepared", "metrics/data.json")
    assert proc.returncode == 0, proc.stderr
    assert "train: 15 images: ant 6, bee 6, cow 3" in proc.stdout.splitlines()
    assert "note: train class 'cow' has 3 images, the largest 6" in proc.stderr
    import json

    assert json.loads((tmp_path / "metrics/data.json").read_text()) == {
        "train": {"images": 15, "per_class_min": 3, "per_class_max": 6, "smallest_class": "cow"},
        "test": {"images": 6, "per_class_min": 2, "per_class_max": 2, "smallest_class": "ant"}}


def test_overhead_passes_the_compact_weight_count_through(tmp_path):
    """The report reads weights_compact (results/flops.json) from metrics/overhead.json: per
    target as written, and its mean over the headline targets at the top level."""
    import json

    def pair(a, b):
        return {"ms_a": a, "ms_a_std": 0.1, "ms_b": b, "ms_b_std": 0.1, "reduction": 1 - b / a}

    flops = {name: {"flops_original": 40_931_968, "flops_reengineered": 9_000_000, "flops_compact": 30_000_000,
                    "weights_kept": kept, "weights_total": 268_346, "weights_compact": compact}
             for name, kept, compact in (("airplane", 40_000, 250_000), ("vehicles", 120_000, 260_000),
                                         ("airplane_channel", 144_000, 47_000))}
    engines = {"deepsparse": "unavailable: not installed", "onnxruntime": pair(3.0, 3.1),
               "compact_onnxruntime": pair(3.0, 1.0), "compact_torch": pair(6.0, 2.0)}
    latency = {"batch": 16, "cores": 2, "engines": {"onnxruntime": "1.20.1"},
               "targets": {name: engines for name in flops}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results/flops.json").write_text(json.dumps({"model": "resnet20", "targets": flops}))
    (tmp_path / "results/latency.json").write_text(json.dumps(latency))
    proc = run_stage(tmp_path, "overhead.py", "results/flops.json", "results/latency.json", "metrics/overhead.json",
                     params=PARAMS)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "metrics/overhead.json").read_text())
    assert {n: t["weights_compact"] for n, t in out["targets"].items()} == {
        "airplane": 250_000, "vehicles": 260_000, "airplane_channel": 47_000}
    assert out["weights_compact"] == (250_000 + 260_000) / 2  # airplane_channel has settings of its own
