"""Every bad input found so far, each through the command a user runs: it ends with one line on
stderr, ``error: <the key path or file>: ...``, exit code 1 and no traceback, and writes nothing.

Params go through `stages/validate.py`, the stage `dvc repro` runs before every other; data,
model and artifact inputs through the stage or `seam` command that reads them, on a tiny
imagefolder dataset. ``uv run python tests/test_bad_inputs.py`` prints the table below as
Markdown, with the error each input gives.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
DROP = object()  # an overlay value: remove the key
CLASSES = ("ant", "bee", "cow")


@dataclass
class Case:
    id: str
    what: str                         # the bad input, as a user would describe it
    cmd: list[str]                    # "{ws}" / "{raw}" / "{here}" are filled in; stages/x.py runs with python
    error: str                        # the expected line starts with this ("{here}", "{ws}" filled in)
    params: dict[str, Any] = field(default_factory=dict)   # dotted key -> value (DROP removes it)
    files: Callable[[Path, Path], None] | None = None      # (case dir, workspace) -> writes bad files
    env: dict[str, str] = field(default_factory=dict)
    params_text: str | None = None    # the params file as raw text instead


VALIDATE = ["stages/validate.py", "params.yaml", "results/params.ok"]


def _truncated_tar(here: Path, ws: Path) -> None:
    whole = here / "whole.tar"
    with tarfile.open(whole, "w") as tf:
        tf.add(ws / "tree", arcname=".")
    with tarfile.open(whole) as tf:
        cut = tf.getmembers()[-3].offset  # cut at a member boundary: tarfile reads it without complaint
    (here / "cut.tar").write_bytes(whole.read_bytes()[:cut])


def _artifact(here: Path, ws: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from test_artifact import META, _flip_byte_of_member, searched_model

    from seam.reengineer.artifact import save_artifact

    _, model, masks = searched_model()
    save_artifact(here / "a.pt", masks=masks, head=model.head.state_dict(), meta=META)
    _flip_byte_of_member(here / "a.pt", (8 * 3 * 9 + 8 * 8 * 9 + 8 + 32 + 4 + 7) // 8)


def _artifact_and_other_checkpoint(here: Path, ws: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from test_artifact import META, searched_model

    from seam.reengineer.artifact import save_artifact

    _, model, masks = searched_model()
    meta = {**META, "selected_epoch": 2, "epochs_run": 3, "reached_target": True, "search": {"alpha": 1.0}}
    save_artifact(here / "a.pt", masks=masks, head=model.head.state_dict(), meta=meta)
    (here / "pretrained").mkdir()
    (here / "pretrained" / "model.pt").write_bytes(b"same name, other weights")
    (here / "pretrained" / "model.json").write_text(json.dumps({
        "name": "tiny", "format": "state_dict", "sha256": META["model_sha256"], "num_classes": 4,
        "mean": [0.5], "std": [0.5], "input_size": 8}))


CASES = [
    # params.yaml: refused by `validate`, before DVC deletes any stage's outputs
    Case("nan", "`alpha: .nan`", VALIDATE, "error: params.yaml: alpha: Input should be a finite number, got nan",
         params={"alpha": float("nan")}),
    Case("inf", "`reengineer.lr_mask: .inf`", VALIDATE,
         "error: params.yaml: reengineer.lr_mask: Input should be a finite number, got inf",
         params={"reengineer.lr_mask": float("inf")}),
    Case("zero-lr", "`reengineer.lr_mask: 0`", VALIDATE,
         "error: params.yaml: reengineer.lr_mask: Input should be greater than 0, got 0",
         params={"reengineer.lr_mask": 0}),
    Case("string-number", "`reengineer.lr_mask: fast`", VALIDATE,
         "error: params.yaml: reengineer.lr_mask: Input should be a valid number, got 'fast'",
         params={"reengineer.lr_mask": "fast"}),
    Case("bool-int", "`benchmark.pairs: true`", VALIDATE,
         "error: params.yaml: benchmark.pairs: Input should be a valid integer, got True",
         params={"benchmark.pairs": True}),
    Case("negative-seed", "`seed: -1`", VALIDATE,
         "error: params.yaml: seed: Input should be greater than or equal to 0, got -1", params={"seed": -1}),
    Case("select-on", "`select_on: train`", VALIDATE,
         "error: params.yaml: select_on: Input should be 'val' or 'test', got 'train'", params={"select_on": "train"}),
    Case("device", "`device: gpu`", VALIDATE, "error: params.yaml: device: String should match pattern",
         params={"device": "gpu"}),
    Case("typo-key", "`reengineer.lr_mak: 0.05` (a typo)", VALIDATE,
         "error: params.yaml: reengineer.lr_mak: unknown key", params={"reengineer.lr_mak": 0.05}),
    Case("missing-key", "`reengineer.max_epochs` left out", VALIDATE,
         "error: params.yaml: missing key(s) reengineer.max_epochs (default: 50)",
         params={"reengineer.max_epochs": DROP}),
    Case("threshold", "`defects.seam.reengineer.threshold: 1.0`", VALIDATE,
         "error: params.yaml: defects.seam.reengineer.threshold: Input should be less than 1, got 1.0",
         params={"defects.seam.reengineer.threshold": 1.0}),
    Case("val-fraction", "`prepare.val_fraction: 1.0`", VALIDATE,
         "error: params.yaml: prepare.val_fraction: Input should be less than 1, got 1.0",
         params={"prepare.val_fraction": 1.0}),
    Case("no-targets", "`targets: {}`", VALIDATE,
         "error: params.yaml: targets: Dictionary should have at least 1 item after validation, not 0, got {}",
         params={"targets": {}}),
    Case("retrain-target", "`retrain.targets: [nosuch]`", VALIDATE,
         "error: params.yaml: retrain.targets: ['nosuch'] not in targets", params={"retrain.targets": ["nosuch"]}),
    Case("dataset-name", "`dataset.name: mnist`", VALIDATE,
         "error: params.yaml: dataset.name: Input should be 'cifar10', 'cifar100' or 'imagefolder', got 'mnist'",
         params={"dataset.name": "mnist"}),
    Case("dataset-sha", "`dataset.sha256: abc`", VALIDATE,
         "error: params.yaml: dataset.sha256: String should match pattern '^[0-9a-f]{64}$', got 'abc'",
         params={"dataset.sha256": "abc"}),
    Case("own-model-no-norm", "`model.checkpoint` without `mean`/`std`/`input_size`", VALIDATE,
         "error: params.yaml: model.mean: required with model.checkpoint",
         params={"model.checkpoint": "mine.pt", "model.arch": "mypkg.nets:Net"}),
    Case("url-no-sha", "`model.checkpoint` URL without `sha256`", VALIDATE,
         "error: params.yaml: model.sha256: required for a checkpoint URL",
         params={"model.checkpoint": "https://example.org/m.pt", "model.arch": "mypkg.nets:Net",
                 "model.mean": [0.5], "model.std": [0.5], "model.input_size": 32}),
    Case("not-yaml", "params.yaml that is not YAML", VALIDATE,
         "error: params.yaml: not valid YAML (line 2, column 1: expected ',' or ']', but got '<stream end>')",
         params_text="alpha: [1\n"),
    Case("no-params", "no params.yaml", VALIDATE, "error: params.yaml: not found", params_text=""),
    # the dataset: refused by `download` / `prepare`
    Case("missing-source", "`dataset.source: ../nope.tar.gz` (relative, absent)", ["stages/download.py", "raw"],
         "error: dataset.source: ../nope.tar.gz (= {here_parent}/nope.tar.gz, from {here}) does not exist",
         params={"dataset.source": "../nope.tar.gz"}),
    Case("truncated-tar", "a `.tar` cut at a member boundary", ["stages/download.py", "raw"],
         "error: cut.tar: truncated tar archive (no end-of-archive marker after",
         params={"dataset.source": "cut.tar"}, files=_truncated_tar),
    Case("dataset-hash", "`dataset.sha256` of another archive", ["stages/download.py", "raw"],
         "error: dataset.sha256: {here}/cut.tar: sha256 mismatch: expected 0000000000000000000000000000000000000000000000000000000000000000, got ", params={"dataset.source": "cut.tar", "dataset.sha256": "0" * 64}, files=_truncated_tar),
    Case("unknown-class", "`targets.x: {binary: zebra}`", ["stages/prepare.py", "{raw}", "prepared", "data.json"],
         "error: targets.x.binary: unknown class name 'zebra'; known: ['ant', 'bee', 'cow']",
         params={"targets": {"x": {"binary": "zebra"}}, "retrain.targets": ["x"]}),
    Case("short-form", "`targets.x: binry`", ["stages/prepare.py", "{raw}", "prepared", "data.json"],
         "error: targets.x: unknown short form 'binry'", params={"targets": {"x": "binry"}, "retrain.targets": ["x"]}),
    Case("val-leaves-none", "`prepare.val_fraction: 0.9` on 4 images a class",
         ["stages/prepare.py", "{raw}", "prepared", "data.json"],
         "error: prepare.val_fraction: 0.9 leaves no training images for label 0 of targets.ant",
         params={"prepare.val_fraction": 0.9}),
    Case("defects-class", "`defects.target: {classes: [ant, zebra]}`",
         ["stages/prepare_defects.py", "{raw}", "target.pt"],
         "error: defects.target.classes[1]: unknown class name 'zebra'",
         params={"defects.target": {"classes": ["ant", "zebra"]}}),
    # the model
    Case("mirror", "`SEAM_MODEL_MIRROR=../absent`", ["stages/fetch_model.py", "pretrained"],
         "error: model mirror ../absent (= {here_parent}/absent, from {here}) is neither a directory nor a file",
         env={"SEAM_MODEL_MIRROR": "../absent"}),
    Case("model-name", "`model.name: resnet9000`", ["stages/fetch_model.py", "pretrained"],
         "error: model.name: unknown model 'resnet9000'", params={"model.name": "resnet9000"}),
    Case("checkpoint-file", "`model.checkpoint: nope.pt` (absent)", ["stages/fetch_model.py", "pretrained"],
         "error: model.checkpoint: source file not found: nope.pt (= {here}/nope.pt, from {here})",
         params={"model.checkpoint": "nope.pt", "model.arch": "torchvision.models:resnet18",
                 "model.mean": [0.5, 0.5, 0.5], "model.std": [0.5, 0.5, 0.5], "model.input_size": 32}),
    Case("stage-target", "`reengineer.py nosuch ...` (a target not in params)",
         ["stages/reengineer.py", "nosuch", "p.pt", "pretrained", "out.pt", "log.csv", "t.json"],
         "error: params.yaml: no target 'nosuch' under 'targets'"),
    # artifacts and the `seam` command
    Case("tampered-artifact", "an artifact with one flipped byte in its mask bits", ["seam", "info", "a.pt"],
         "error: a.pt: content does not match its digest", files=_artifact),
    Case("other-checkpoint", "a checkpoint with other bytes behind an unchanged model.json",
         ["seam", "info", "a.pt", "--pretrained", "pretrained"], "error: pretrained/model.pt: sha256 ",
         files=_artifact_and_other_checkpoint),
    Case("no-artifact", "`seam info none.pt`", ["seam", "info", "none.pt"],
         "error: none.pt: no such artifact (run the reengineer stage first)"),
    Case("grid-class", "`seam targets --binary zebra`", ["seam", "targets", "--binary", "zebra", "--raw", "{raw}"],
         "error: binary: unknown name(s) ['zebra']; known: ['ant', 'bee', 'cow']"),
    Case("profile", "`seam profile nosuch`", ["seam", "profile", "nosuch", "--folder", f"{REPO}/profiles"],
         f"error: {REPO}/profiles/nosuch.yaml: no such profile; known: ['offline-resnet20-binary', "),
]


def _set(params: dict, dotted: str, value: Any) -> None:
    *path, leaf = dotted.split(".")
    for key in path:
        params = params[key]
    if value is DROP:
        del params[leaf]
    else:
        params[leaf] = value


def _base_params(ws: Path) -> dict:
    params = copy.deepcopy(PARAMS)
    params["dataset"] = {"name": "imagefolder", "source": str(ws / "tree"), "sha256": None}
    params["targets"] = {"ant": "binary", "trio": list(CLASSES)}
    params["retrain"]["targets"] = ["trio"]
    params["defects"]["target"] = {"classes": ["ant", "bee"]}
    return params


def make_workspace(ws: Path) -> None:
    """A tiny imagefolder dataset (4 train, 2 test images a class), downloaded into ws/raw."""
    from PIL import Image

    for split, n in (("train", 4), ("test", 2)):
        for c, cls in enumerate(CLASSES):
            (ws / "tree" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (80 * c, 20 * i, 9)).save(ws / "tree" / split / cls / f"{i}.png")
    (ws / "params.yaml").write_text(yaml.safe_dump(_base_params(ws), sort_keys=False))
    proc = subprocess.run([sys.executable, str(REPO / "stages/download.py"), "raw"], cwd=ws, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def run_case(case: Case, ws: Path, here: Path) -> tuple[subprocess.CompletedProcess, str]:
    """Run `case` in the empty directory `here`; returns the process and the expected error line's start."""
    here.mkdir(parents=True)
    if case.params_text is not None:
        if case.params_text:
            (here / "params.yaml").write_text(case.params_text)
    else:
        params = _base_params(ws)
        for key, value in case.params.items():
            _set(params, key, value)
        (here / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if case.files is not None:
        case.files(here, ws)
    fill = {"{ws}": str(ws), "{raw}": str(ws / "raw"), "{here}": str(here), "{here_parent}": str(here.parent)}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    args = [filled(a) for a in case.cmd]
    if args[0] == "seam":
        args = [str(Path(sys.executable).parent / "seam"), *args[1:]]
    else:
        args = [sys.executable, str(REPO / args[0]), *args[1:]]
    env = {**os.environ, **case.env, "PYTHONPATH": str(REPO)}
    env.pop("SEAM_DEBUG", None)
    if "SEAM_MODEL_MIRROR" not in case.env:
        env.pop("SEAM_MODEL_MIRROR", None)
    proc = subprocess.run(args, cwd=here, env=env, capture_output=True, text=True)
    return proc, filled(case.error)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("bad") / "ws"
    make_workspace(ws)
    return ws


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_writes_nothing(case: Case, workspace: Path) -> None:
    here = workspace / "cases" / case.id
    proc, expected = run_case(case, workspace, here)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith(expected), proc.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, proc.stderr
    written = {p.name for p in here.rglob("*")}
    outputs = {"results", "params.ok", "raw", "prepared", "data.json", "target.pt", "out.pt", "log.csv", "t.json"}
    assert not written & outputs, written & outputs


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        make_workspace(ws)
        print("| bad input | command | the one line it gives |\n|---|---|---|")
        for case in CASES:
            proc, _ = run_case(case, ws, ws / "cases" / case.id)
            line = [x for x in proc.stderr.splitlines() if x.strip()][-1] if proc.stderr.strip() else "(nothing)"
            line = line.replace(str(ws / "cases" / case.id), "<case>").replace(str(ws), "<ws>")
            cmd = " ".join(case.cmd).replace("{raw}", "data/raw").replace(str(REPO) + "/", "")
            cmd = cmd if case.cmd[0] == "seam" else f"python {cmd}"
            cell = line.replace("|", "\\|")  # a pipe inside a table cell ends it
            print(f"| {case.what} | `{cmd}` (exit {proc.returncode}) | `{cell}` |")


if __name__ == "__main__":
    main()
