"""Any classifier from params.yaml: an architecture + checkpoint, or a torch.export archive;
checked before any long work, and re-engineered through params alone."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TinyNet, tiny_target
from pydantic import ValidationError

from seam.core.params import ModelParams
from seam.models.fetch import fetch_pretrained
from seam.models.pretrained import load_pretrained, save_pretrained
from seam.models.registry import ModelError

USER_CODE = '''
import torch
from torch import nn


class VGGish(nn.Module):
    """A VGG-style net whose classifier is nested: classifier.6."""

    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, 16), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class FixedSize(nn.Module):
    """Works at 8x8 only (a flatten into a fixed Linear)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


class NoWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.mean((2, 3)) * self.scale


class MLP(nn.Module):
    """No convolution: ReMoS has nothing to slice."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.hidden = nn.Linear(3 * 8 * 8, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.hidden(x.flatten(1))))


def not_a_module():
    return 42


def broken(**kwargs):
    raise RuntimeError("bad kwargs")


NOT_CALLABLE = 1
'''
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with the user's model code, a VGGish checkpoint and a .pt2 archive."""
    (tmp_path / "usermodels.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usermodels", None)
    import usermodels

    torch.manual_seed(0)
    vgg = usermodels.VGGish(num_classes=3).eval()
    # Wrapped and DataParallel-prefixed, as checkpoints often are.
    torch.save({"state_dict": {f"module.{k}": v for k, v in vgg.state_dict().items()}}, tmp_path / "vgg.th")
    tiny = TinyNet(num_classes=3).eval()
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(tiny, (torch.zeros(2, 3, 8, 8),), dynamic_shapes=({0: batch},)),
                      tmp_path / "tiny.pt2")
    torch.export.save(torch.export.export(tiny, (torch.zeros(1, 3, 8, 8),)), tmp_path / "fixed.pt2")
    yield tmp_path
    sys.modules.pop("usermodels", None)


def params(**kw) -> ModelParams:
    base = dict(name="mine", arch="usermodels:VGGish", kwargs={"num_classes": 3}, checkpoint="vgg.th",
                mean=MEAN, std=STD, input_size=8)
    return ModelParams(**{**base, **kw})


def test_a_nested_classifier_is_found_and_the_model_rebuilds_from_model_json(project):
    record = fetch_pretrained(params(), project / "out")
    assert (record.num_classes, record.classifier, record.format) == (3, "classifier.6", "state_dict")
    assert record.sha256 == hashlib.sha256((project / "vgg.th").read_bytes()).hexdigest()
    save_pretrained(record, project / "out")
    again, model = load_pretrained(project / "out")
    assert again == record
    import usermodels

    torch.manual_seed(0)
    reference = usermodels.VGGish(num_classes=3).eval()  # the weights the fixture saved
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(model(x), reference(x))


def test_an_export_archive_needs_no_code(project):
    record = fetch_pretrained(params(arch=None, kwargs={}, checkpoint="tiny.pt2"), project / "out")
    assert (record.format, record.num_classes, record.classifier, record.file) == ("export", 3, None, "model.pt2")


@pytest.mark.parametrize("change, message", [
    ({"arch": "nosuchmodule:Net"}, "model.arch: cannot import 'nosuchmodule'"),
    ({"arch": "usermodels:Missing"}, "model.arch: 'usermodels' has no callable 'Missing'"),
    ({"arch": "usermodels:NOT_CALLABLE"}, "has no callable 'NOT_CALLABLE'"),
    ({"arch": "usermodels:not_a_module", "kwargs": {}}, "returned a int, not an nn.Module"),
    ({"arch": "usermodels:broken"}, r"usermodels:broken\(\*\*\{'num_classes': 3\}\) failed: RuntimeError: bad kwargs"),
    ({"kwargs": {"num_classes": 5}}, "does not fit model mine; mis-shaped"),
    ({"kwargs": {"num_classes": 3, "width": 4}}, "does not fit model mine"),
    ({"sha256": "0" * 64}, "model.checkpoint: .*sha256"),
    ({"checkpoint": "missing.th"}, "model.checkpoint: .*missing.th"),
    ({"classifier": "classifier.4"}, "model.classifier: 'classifier.4' has 16 outputs but the model returns 3"),
    ({"classifier": "features.0"}, "model.classifier: 'features.0' is not an nn.Linear"),
    ({"classes": ["a", "b"]}, "model.classes: 2 names for 3 outputs"),
    ({"mean": [0.5], "std": [0.5]}, "model.mean: 1 entries, but mine's first convolution takes 3 input channels"),
    ({"arch": "usermodels:FixedSize", "kwargs": {}, "input_size": 16, "checkpoint": "fixed.th"},
     r"model.input_size: a dry run of mine on a \[3, 3, 16, 16\] batch fails"),
    ({"arch": "usermodels:NoWeights", "kwargs": {}, "checkpoint": "empty.th"}, "model: mine has no weight SeaM can mask"),
    ({"arch": None, "kwargs": {}, "checkpoint": "fixed.pt2"}, "model.checkpoint: .* needs a dynamic batch dimension"),
    ({"arch": None, "kwargs": {}, "checkpoint": "vgg.pt2"}, "model.checkpoint: .*not a torch.export archive"),
])
def test_bad_models_are_refused_before_any_long_work(project, change, message):
    if change.get("checkpoint") == "fixed.th":
        import usermodels

        torch.save(usermodels.FixedSize().state_dict(), project / "fixed.th")
    if change.get("checkpoint") == "empty.th":
        torch.save({"scale": torch.ones(1)}, project / "empty.th")
    if change.get("checkpoint") == "vgg.pt2":
        shutil.copy(project / "vgg.th", project / "vgg.pt2")
    with pytest.raises(ModelError, match=message):
        fetch_pretrained(params(**change), project / "out")


@pytest.mark.parametrize("change, message", [
    ({"checkpoint": "https://example.invalid/w.th"}, "sha256: required for a checkpoint URL"),
    ({"checkpoint": "tiny.pt2"}, "arch: a .pt2 archive holds its architecture"),
    ({"arch": None}, "arch: required with a state-dict checkpoint"),
    ({"mean": None}, "mean: required with model.checkpoint"),
    ({"std": [0.25, 0.25]}, "std: 2 entries but mean has 3"),
    ({"checkpoint": None}, "arch: only with model.checkpoint"),
    ({"arch": "not a path"}, "String should match pattern"),
])
def test_bad_model_params(change, message):
    with pytest.raises(ValidationError, match=message):
        params(**change)


def test_target_classes_map_by_name_or_by_index(project):
    record = fetch_pretrained(params(classes=["cat", "dog", "bird"]), project / "out")
    problem = dataclasses.replace(tiny_target(), kind="classes", class_names=["bird", "cat"], source_classes=[2, 3])
    assert record.source_outputs(problem) == [2, 0]
    binary = dataclasses.replace(tiny_target(), class_names=["dog", "not dog"], source_classes=[5])
    assert record.source_outputs(binary) == [1]
    with pytest.raises(ModelError, match=r"targets.tiny: \['fish'\] not among the model's classes"):
        record.source_outputs(dataclasses.replace(binary, class_names=["fish", "not fish"]))
    by_index = dataclasses.replace(record, classes=None)
    assert by_index.source_outputs(dataclasses.replace(problem, source_classes=[2, 1])) == [2, 1]
    with pytest.raises(ModelError, match="class index 3 is past the model's 3 outputs"):
        by_index.source_outputs(problem)


# ----------------------------------------------------------------------------- through the stages


def run(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=cwd, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def reengineer_through_params(cwd: Path, model: dict, problem, epochs: int = 3) -> str:
    """fetch_model + reengineer with `model` as params.yaml's model section; the per-epoch CSV."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"].update(model)
    raw.update(device="cpu", targets={"t": {"binary": 0}})
    raw["retrain"]["targets"] = ["t"]
    raw["reengineer"].update(max_epochs=epochs, batch_size=16)
    (cwd / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    problem.save(cwd / "data" / "t.pt")
    run(cwd, "fetch_model.py", "pretrained")
    run(cwd, "reengineer.py", "t", "data/t.pt", "pretrained", "out/t.pt", "out/t.csv", "out/t.json")
    timing = json.loads((cwd / "out" / "t.json").read_text())
    assert (cwd / "out" / "t.pt").is_file() and timing["epochs_run"] >= 1 and timing["seconds"] >= 0
    return (cwd / "out" / "t.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["vgg.th", "tiny.pt2"])
def test_own_models_reengineer_through_params_alone(project, checkpoint):
    model = params(checkpoint=checkpoint, **({"arch": None, "kwargs": {}} if checkpoint.endswith("pt2") else {}))
    log = reengineer_through_params(project, model.model_dump(), tiny_target())
    assert log.startswith("epoch,phase,loss") and len(log.splitlines()) == 4


@pytest.mark.slow
def test_resnet20_by_arch_equals_resnet20_by_name(tmp_path, shared, monkeypatch):
    """The registry entry and the same checkpoint declared through arch give identical logs."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 2

    (trx, tr_y), (vx, vy), (tx, ty) = split(96), split(32), split(32)
    problem = dataclasses.replace(tiny_target(), train_x=trx, train_y=tr_y, val_x=vx, val_y=vy, test_x=tx, test_y=ty,
                                  class_names=["airplane", "not airplane"])
    monkeypatch.setenv("SEAM_MODEL_MIRROR", str(shared / "models"))
    by_name, by_arch = tmp_path / "name", tmp_path / "arch"
    by_name.mkdir(), by_arch.mkdir()
    a = reengineer_through_params(by_name, {"name": "resnet20"}, problem, epochs=2)
    b = reengineer_through_params(by_arch, {
        "name": "resnet20", "arch": "seam.models.architectures:cifar_resnet", "kwargs": {"depth": 20, "num_classes": 10},
        "checkpoint": str(shared / "models" / "resnet20-12fca82f.th"),
        "sha256": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": 32,
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
        problem, epochs=2)
    assert a == b
    # and byte-identical artifacts: two runs, two temporary file names, no timings inside
    assert (by_name / "out" / "t.pt").read_bytes() == (by_arch / "out" / "t.pt").read_bytes()


@pytest.mark.slow
def test_a_refused_model_leaves_the_fetched_one_in_place(project):
    reengineer_through_params(project, params().model_dump(), tiny_target(), epochs=1)
    before = {p.name: p.read_bytes() for p in (project / "pretrained").iterdir()}
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["model"].update(classifier="classifier.4")
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "fetch_model.py"), "pretrained"], cwd=project,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error: model.classifier: 'classifier.4' has 16 outputs")
    assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in (project / "pretrained").iterdir()} == before
    assert not [p for p in project.iterdir() if p.name.startswith(".pretrained.")]


def test_an_archive_cannot_be_fine_tuned_and_says_so(project):
    record = fetch_pretrained(params(arch=None, kwargs={}, checkpoint="tiny.pt2"), project / "out")
    with pytest.raises(ModelError, match="model.classifier: mine has no nn.Linear output layer to replace"):
        record.final_layer()


# ----------------------------------------------------------------------------- RQ3 baselines on a user's model


def baseline_project(cwd: Path, model: dict, **defects) -> dict:
    """params.yaml for the ReMoS / retraining stages on `model`, and a fetched pretrained model."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"].update(model)
    raw.update(device="cpu", targets={"t": {"classes": [0, 1]}})
    raw["retrain"].update(targets=["t"], max_epochs=2, batch_size=16)
    raw["defects"]["finetune"].update(max_epochs=2, batch_size=16)
    raw["defects"]["remos"].update(defects)
    (cwd / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    tiny_target().save(cwd / "data" / "t.pt")
    run(cwd, "fetch_model.py", "pretrained")
    return raw


def run_fails(cwd: Path, script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=cwd, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr


@pytest.mark.slow
def test_remos_and_retraining_run_on_a_users_model(project):
    baseline_project(project, params().model_dump())
    out = run(project, "finetune.py", "remos", "data/t.pt", "pretrained", "out/remos.pt", "out/remos.csv")
    assert f"removed_rate_conv {21 / 216}" in out.stderr  # int(0.1 * 216) of the 216 conv weights
    saved = torch.load(project / "out" / "remos.pt", weights_only=True)
    assert saved["meta"]["flow"] == "remos" and set(saved["meta"]["removed_per_layer"]) == {"features.0.weight"}
    run(project, "retrain.py", "t", "data/t.pt", "pretrained", "out/retrained.pt", "out/retrained.csv",
        "out/retrained.json")
    meta = torch.load(project / "out" / "retrained.pt", weights_only=True)["meta"]
    assert meta["flow"] == "retrain" and meta["epochs_run"] == 2 and "seconds" not in meta  # timings: beside it
    assert json.loads((project / "out" / "retrained.json").read_text())["epochs_run"] == 2
    assert len((project / "out" / "retrained.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_untrained_is_the_architecture_freshly_initialised(project):
    record = fetch_pretrained(params(), project / "out")
    a, b = record.untrained(seed=1), record.untrained(seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    save_pretrained(record, project / "out")
    _, trained = load_pretrained(project / "out")
    assert not torch.equal(a.features[0].weight, trained.features[0].weight)
    assert not torch.equal(a.features[0].weight, record.untrained(seed=2).features[0].weight)
    archive = fetch_pretrained(params(arch=None, kwargs={}, checkpoint="tiny.pt2"), project / "out2")
    with pytest.raises(ModelError, match="model.checkpoint: mine is a .pt2 archive.*retraining from scratch needs"):
        archive.untrained(seed=0)


@pytest.mark.slow
def test_remos_bad_input_is_refused_and_nothing_written(project):
    import usermodels

    torch.save(usermodels.MLP().state_dict(), project / "mlp.th")
    raw = baseline_project(project, params(arch="usermodels:MLP", kwargs={}, checkpoint="mlp.th").model_dump())
    args = ("remos", "data/t.pt", "pretrained", "out/remos.pt", "out/remos.csv")
    err = run_fails(project, "finetune.py", *args)
    assert "error: MLP has no nn.Conv2d layer: ReMoS slices convolution kernels" in err
    raw["defects"]["remos"]["ratio"] = 1.0
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert "defects.remos.ratio: Input should be less than 1" in run_fails(project, "finetune.py", *args)
    raw["defects"]["remos"]["ratio"] = 0.1
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    empty = tiny_target()
    dataclasses.replace(empty, train_x=empty.train_x[:0], train_y=empty.train_y[:0]).save(project / "data" / "t.pt")
    assert "target problem 'tiny' has no training images" in run_fails(project, "finetune.py", *args)
    assert not (project / "out").exists()


@pytest.mark.slow
def test_kill_9_mid_search_then_a_rerun_resumes_to_identical_outputs(project):
    """README, "Resuming": the state saved after each epoch survives kill -9; the rerun
    continues it and writes the same per-epoch log and artifact as an uninterrupted run."""
    epochs = 30
    reengineer_through_params(project, params().model_dump(), tiny_target(), epochs=epochs)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["reengineer"]["early_stop"] = 0  # run every epoch, so there is time to kill it
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    args = ["t", "data/t.pt", "pretrained", "out/t.pt", "out/t.csv", "out/t.json"]
    run(project, "reengineer.py", *args)
    whole = {name: (project / "out" / name).read_bytes() for name in ("t.pt", "t.csv")}
    assert len(whole["t.csv"].splitlines()) == epochs + 1

    state = project / ".seam" / "resume" / "reengineer-t.pt"
    assert not state.exists()  # cleared after a finished run
    shutil.rmtree(project / ".seam" / "resume" / "reengineer-t.done")  # else the rerun restores the finished one
    proc = subprocess.Popen([sys.executable, str(REPO / "stages" / "reengineer.py"), *args], cwd=project,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["state"]["epoch"] >= 2:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, weights_only=True)["state"]["epoch"]
    assert 2 <= saved < epochs - 1, saved  # killed mid-search, its state left behind

    rerun = run(project, "reengineer.py", *args)
    assert f"resuming after epoch {saved}" in rerun.stderr
    assert {name: (project / "out" / name).read_bytes() for name in whole} == whole
    assert not state.exists()


def test_an_altered_checkpoint_behind_model_json_is_refused(project):
    """A same-architecture checkpoint with other weights was evaluated silently."""
    record = fetch_pretrained(params(), project / "out")
    save_pretrained(record, project / "out")
    load_pretrained(project / "out")  # intact: loads
    checkpoint = project / "out" / record.file
    saved = torch.load(checkpoint, weights_only=True)
    state = saved.get("state_dict", saved)  # the file as fetched, wrapper and all
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] * 1.01  # same architecture, other weights
    torch.save(saved, checkpoint)
    with pytest.raises(ModelError, match=rf"{record.file}: sha256 [0-9a-f]{{12}}…, but .*model.json records "
                                         rf"{record.sha256[:12]}… \(the file was replaced or altered"):
        load_pretrained(project / "out")


def test_a_model_json_written_before_the_package_layout_still_loads(tmp_path):
    """model.json files of earlier runs name the architecture by its old module path."""
    from seam.models.architectures import cifar_resnet

    torch.save(cifar_resnet(20).state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps({
        "name": "resnet20", "format": "state_dict", "sha256": hashlib.sha256((tmp_path / "model.pt").read_bytes())
        .hexdigest(), "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 32,
        "arch": "seam.architectures:cifar_resnet", "kwargs": {"depth": 20, "num_classes": 10}, "classifier": "linear"}))
    record, model = load_pretrained(tmp_path)
    assert type(model).__module__ == "seam.models.architectures" and record.arch == "seam.architectures:cifar_resnet"


@pytest.mark.slow
def test_a_search_reruns_only_when_its_effective_settings_change(project):
    """DVC re-runs every search when a param of the `reengineer` section (or alpha) changes; a
    target whose own settings override that param gets the outputs of its last search back."""
    reengineer_through_params(project, params().model_dump(), tiny_target())
    args = ["t", "data/t.pt", "pretrained", "out/t.pt", "out/t.csv", "out/t.json"]
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["targets"]["t"]["reengineer"] = {"alpha": 2.0}
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    first = run(project, "reengineer.py", *args)
    assert "outputs restored" not in first.stderr  # its own alpha: another search
    outputs = {name: (project / "out" / name).read_bytes() for name in ("t.pt", "t.csv", "t.json")}
    for name in outputs:
        (project / "out" / name).unlink()  # as DVC deletes a stage's outputs before it runs it

    raw["alpha"] = 0.5  # overridden by the target's own alpha: the same search
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    again = run(project, "reengineer.py", *args)
    assert "outputs restored" in again.stderr and "search t" not in again.stderr
    assert {name: (project / "out" / name).read_bytes() for name in outputs} == outputs

    raw["targets"]["t"]["reengineer"]["alpha"] = 1.5  # its own setting changed: a new search
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert "outputs restored" not in run(project, "reengineer.py", *args).stderr
