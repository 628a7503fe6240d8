"""Standalone re-engineered models (.pt2, .onnx with metadata) and `seam predict` on image files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image
from typer.testing import CliRunner

from seam.cli import app
from seam.data.augment import Normalize
from seam.deploy.onnx import export_onnx
from seam.deploy.predict import PredictError, image_files, load_classifier, predict_files, read_image
from seam.models.archive import save_exported
from seam.models.masks import apply_masks, maskable_tensors
from seam.reengineer.candidate import ReengineeredModel

SIZE = 8
META = {"class_names": ["zero", "not zero"], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "input_size": SIZE}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = ReengineeredModel(TinyNet(num_classes=4), 4, 2).eval()
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(getattr(m, p).shape, generator=g) < 0.4 for n, m, p in maskable_tensors(net.original)}
    apply_masks(net.original, masks)
    return net


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    """Six PNG images (one 16x16, resized on reading) and one file that is not an image."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        size = 16 if i == 5 else SIZE
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model):
    out = tmp_path_factory.mktemp("export")
    save_exported(model, torch.zeros(1, 3, SIZE, SIZE), out / "t.pt2", META)
    export_onnx(model, out / "t.onnx", input_size=SIZE, batch=4, meta=META)
    return out


def expected(model, folder):
    paths = sorted(p for p in folder.glob("img*.png"))
    x = torch.stack([read_image(p, SIZE) for p in paths])
    with torch.no_grad():
        return paths, torch.softmax(model(Normalize(META["mean"], META["std"])(x)), 1)


@pytest.mark.parametrize("form", ["t.pt2", "t.onnx"])
def test_every_form_predicts_what_the_model_does_and_skips_unreadable_files(model, files, exported, form):
    clf = load_classifier(exported / form)
    assert clf.class_names == META["class_names"] and clf.input_size == SIZE
    errors = []
    got = list(predict_files(clf, image_files(files), batch_size=4, on_error=lambda p, e: errors.append(p)))
    paths, probs = expected(model, files)
    assert [p for p, _ in got] == paths and [p.name for p in errors] == ["broken.png"]
    assert torch.allclose(torch.stack([q for _, q in got]), probs, atol=1e-5)


def test_the_archive_stands_alone(model, files, exported, tmp_path):
    """A Python that never imports seam loads the .pt2 and its metadata and gets the same logits."""
    paths, probs = expected(model, files)
    x = torch.stack([read_image(p, SIZE) for p in paths]).float() / 255
    torch.save(x, tmp_path / "x.pt")
    code = f"""
import json, sys, torch
extra = {{"seam.json": ""}}
m = torch.export.load({str(exported / "t.pt2")!r}, extra_files=extra).module()
meta = json.loads(extra["seam.json"])
x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
mean, std = (torch.tensor(meta[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
with torch.no_grad():
    torch.save(torch.softmax(m((x - mean) / std), 1), {str(tmp_path / "out.pt")!r})
assert not any(name.split(".")[0] == "seam" for name in sys.modules)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert torch.allclose(torch.load(tmp_path / "out.pt", weights_only=True), probs, atol=1e-6)


def test_cli_prints_one_line_per_image(files, exported):
    result = CliRunner().invoke(app, ["predict", str(exported / "t.pt2"), str(files), "--top", "2"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(files))]
    assert len(lines) == 6 and all(line.count("\t") == 2 for line in lines)
    assert "zero" in lines[0] and "1 of 7 images unreadable, skipped" in result.output
    one = CliRunner().invoke(app, ["predict", str(exported / "t.onnx"), str(files / "img0.png")])
    assert one.exit_code == 0 and one.stdout.startswith(str(files / "img0.png"))


def test_bad_model_files(tmp_path, files):
    with pytest.raises(PredictError, match="no such model file"):
        load_classifier(tmp_path / "missing.pt2")
    artifact = tmp_path / "a.pt"
    artifact.write_bytes(b"x")
    with pytest.raises(PredictError, match="needs the original model"):
        load_classifier(artifact)
    plain = tmp_path / "plain.pt2"
    save_exported(torch.nn.Conv2d(3, 2, 1), torch.zeros(1, 3, 4, 4), plain)
    with pytest.raises(PredictError, match="no seam metadata"):
        load_classifier(plain)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PredictError, match="no image files"):
        image_files(empty)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "missing.pt2"), str(files)])
    assert result.exit_code == 1 and "error:" in result.output


def test_artifact_with_the_original_model(tmp_path, files, shared, monkeypatch):
    """An artifact + the fetched checkpoint predicts what its standalone archive does."""
    from seam.core.params import ModelParams
    from seam.models.fetch import fetch_pretrained
    from seam.models.pretrained import load_pretrained, save_pretrained
    from seam.reengineer.artifact import build_reengineered, load_artifact, save_artifact

    monkeypatch.setenv("SEAM_MODEL_MIRROR", str(shared / "models"))
    pretrained = tmp_path / "pretrained"
    save_pretrained(fetch_pretrained(ModelParams(), pretrained), pretrained)
    info, original = load_pretrained(pretrained)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(getattr(m, p).shape, generator=g) < 0.5 for n, m, p in maskable_tensors(original)}
    head = ReengineeredModel(original, 10, 2).head.state_dict()
    meta = {"model": "resnet20", "model_sha256": info.sha256, "num_outputs": 10,
            "target": {"name": "t", "kind": "binary", "source_classes": [0], "class_names": ["a", "b"]}}
    save_artifact(tmp_path / "t.pt", masks=masks, head=head, meta=meta)
    net = build_reengineered(original, load_artifact(tmp_path / "t.pt"))
    save_exported(net, torch.zeros(1, 3, 32, 32), tmp_path / "t.pt2",
                  {"class_names": ["a", "b"], "mean": info.mean, "std": info.std, "input_size": 32})
    by_artifact = list(predict_files(load_classifier(tmp_path / "t.pt", pretrained), image_files(files)))
    by_archive = list(predict_files(load_classifier(tmp_path / "t.pt2"), image_files(files)))
    assert [p for p, _ in by_artifact] == [p for p, _ in by_archive]
    assert torch.allclose(torch.stack([q for _, q in by_artifact]), torch.stack([q for _, q in by_archive]),
                          atol=1e-5)
