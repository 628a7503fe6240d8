"""End to end: the real DVC pipeline on a tiny slice of ../shared, in a temporary copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from seam.reengineer.artifact import load_artifact

pytestmark = pytest.mark.slow  # the real pipeline: `uv run pytest -m slow`

CLASSES = ("airplane", "automobile", "bird")
N_TRAIN, N_TEST = 24, 8


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def tiny_imagefolder(archive: Path, dest: Path) -> None:
    """The first few images of three classes, as an imagefolder directory."""
    want = {(split, c): n for split, n in (("train", N_TRAIN), ("test", N_TEST)) for c in CLASSES}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            key = (parts[-3], parts[-2])
            if want.get(key, 0) > 0:
                want[key] -= 1
                out = dest / key[0] / key[1] / parts[-1]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
            if not any(want.values()):
                break


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    shared = REPO.parent / "shared"
    if not (shared / "datasets" / "cifar10-jpeg.tar.gz").exists():
        pytest.skip(f"offline assets not found at {shared} (see README, 'Offline / air-gapped')")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("e2e")
    repo = root / "repo"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    tiny_imagefolder(shared / "datasets" / "cifar10-jpeg.tar.gz", root / "tiny")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"] = {"name": "imagefolder", "source": str(root / "tiny"), "sha256": None}
    params["targets"] = {"airplane": "binary", "trio": {"classes": [0, 1, 2]},  # a short form and an explicit one
                         # and one with search settings of its own: channels, tuned weights
                         "plane_ch": {"binary": "airplane", "reengineer": {"granularity": "channel", "alpha": 2,
                                                                           "lr_weights": 0.01}}}
    params["prepare"]["val_fraction"] = 0.25
    params["device"] = "cpu"
    params["reengineer"].update(max_epochs=4, batch_size=8, lr_mask=0.1)
    params["retrain"].update(targets=["trio"], max_epochs=2, batch_size=8)
    params["benchmark"].update(iterations=2, warmup=1, pairs=2)
    params["defects"].update(target={"classes": [1, 2]}, train_per_class=16, test_per_class=8)
    params["defects"]["finetune"].update(max_epochs=2, batch_size=8)
    params["defects"]["seam"]["output_layer"].update(max_epochs=1)
    params["defects"]["seam"]["reengineer"].update(batch_size=8, max_epochs=3, lr_mask=0.2, threshold=0.05)
    params["defects"]["attack"].update(nb_iter=2, batch_size=8)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = dict(os.environ, SEAM_MODEL_MIRROR=str(shared / "models"), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "e2e"], repo, env)
    dvc = [sys.executable, "-m", "dvc"]
    out = sh(dvc + ["repro"], repo, env)
    # As the README says: commit the run, so experiments have a baseline to diff against.
    sh(["git", "add", "dvc.lock"], repo, env)
    sh(["git", "commit", "-qm", "baseline"], repo, env)
    return {"repo": repo, "env": env, "dvc": dvc, "repro_log": out}


def test_repro_writes_metrics_plots_and_artifacts(pipeline):
    repo = pipeline["repo"]
    metrics = json.loads((repo / "metrics/reengineering.json").read_text())
    assert set(metrics["targets"]) == {"airplane", "trio", "plane_ch"}
    # the top-level means are the section's own searches; plane_ch (its own settings) only stands alone
    assert metrics["n_targets"] == 2
    assert metrics["acc_reengineered"] == pytest.approx(sum(metrics["targets"][n]["acc_reengineered"]
                                                            for n in ("airplane", "trio")) / 2)
    assert [metrics["targets"][n]["granularity"] for n in ("airplane", "plane_ch")] == ["weight", "channel"]
    assert load_artifact(repo / "models/reengineered/plane_ch.pt")["weights"] is not None  # lr_weights > 0
    assert load_artifact(repo / "models/reengineered/airplane.pt")["weights"] is None
    for key in ("acc_original", "acc_reengineered", "weight_retention"):
        assert 0.0 <= metrics[key] <= 1.0
    trio = metrics["targets"]["trio"]
    assert trio["acc_original_fair"] >= trio["acc_original"]  # the fair rule only removes wrong answers
    assert metrics["targets"]["airplane"]["weights_total"] == 268_346  # ResNet20: 267,696 conv weights + 650 linear weights and biases
    for name in ("airplane", "trio", "plane_ch"):
        assert (repo / f"models/reengineered/{name}.pt").exists()
        log = (repo / f"plots/reengineer/{name}.csv").read_text().splitlines()
        assert log[0].startswith("epoch,phase,loss,ce") and len(log) == 5  # header + 4 epochs
    # fetch_model always re-checks the checkpoint; nothing else is out of date.
    status = subprocess.run(pipeline["dvc"] + ["status", "--json"], cwd=repo, env=pipeline["env"],
                            capture_output=True, text=True)
    assert json.loads(status.stdout) == {"fetch_model": ["always changed"]}


def test_overhead_metrics_are_well_formed(pipeline):
    repo = pipeline["repo"]
    metrics = json.loads((repo / "metrics/overhead.json").read_text())
    assert metrics["n_targets"] == 2 and metrics["batch"] == 16 and metrics["cores"] >= 1
    assert metrics["flops_original"] == 40_931_968  # fvcore, ResNet20 option A, one 32x32 image
    assert 0 < metrics["flops_reengineered"] <= metrics["flops_original"]
    for prefix in ("ort_", "compact_ort_"):
        assert metrics[f"{prefix}latency_ms_original"] > 0 and -10 < metrics[f"{prefix}latency_reduction"] < 1
    assert metrics["compact_torch_latency_ms_masked"] > 0 and metrics["compact_torch_latency_ms_compact"] > 0
    for prefix in ("", "b1_"):  # batch 16 and, with benchmark.batch1, single images
        assert metrics[f"{prefix}compact_ort_latency_ms_compact"] > 0 and metrics[f"{prefix}ort_latency_ms_original"] > 0
    assert metrics["b1_ort_latency_ms_original"] < metrics["ort_latency_ms_original"]  # one image, not 16
    ds = metrics["engines"]["deepsparse"]
    assert ("latency_ms_original" in metrics) != ds.startswith("unavailable")  # a figure, or the reason why not
    assert set(metrics["targets"]) == {"airplane", "trio", "plane_ch"}
    export = json.loads((repo / "results/export.json").read_text())
    for name in ("airplane", "trio", "plane_ch"):
        for check in ("compact_check", "standalone_check"):
            check = export["targets"][name][check]
            assert check["identical_predictions"] == check["test_images"] > 0
        for kind in ("", ".compact"):
            assert (repo / f"models/export/{name}{kind}.onnx").stat().st_size > 0
        for kind in ("", ".compact"):
            assert (repo / f"models/export/{name}{kind}.pt2").stat().st_size > 0


def test_defect_inheritance_metrics_are_well_formed(pipeline):
    metrics = json.loads((pipeline["repo"] / "metrics/defect_inheritance.json").read_text())
    for flow in ("standard", "remos", "seam"):
        for key in ("acc", "dir", "removed_rate"):
            assert 0.0 <= metrics[f"{key}_{flow}"] <= 1.0, (key, flow)
        assert metrics[flow]["n"] == 16  # all three attacked on the same cached inputs
    assert metrics["dir_reduction"] == metrics["dir_standard"] - metrics["dir_seam"]
    assert metrics["settings"]["classes"] == ["automobile", "bird"] and metrics["settings"]["test_images"] == 16
    assert metrics["removed_rate_standard"] == 0.0
    assert metrics["remos"]["removed_rate_conv"] == int(0.1 * 267_696) / 267_696  # ResNet20's conv weights
    assert metrics["removed_rate_seam"] >= 0.05  # the search ran to the threshold


def test_retraining_metrics_set_retrained_beside_reengineered(pipeline):
    repo = pipeline["repo"]
    metrics = json.loads((repo / "metrics/retraining.json").read_text())
    rq1 = json.loads((repo / "metrics/reengineering.json").read_text())
    trio = metrics["targets"]["trio"]
    assert set(metrics["targets"]) == {"trio"} and trio["n_test"] == rq1["targets"]["trio"]["n_test"]
    assert trio["acc_reengineered"] == rq1["targets"]["trio"]["acc_reengineered"]
    assert 0.0 <= trio["acc_retrained"] <= 1.0 and trio["retrain_epochs"] == 2 and trio["retrain_seconds"] > 0
    assert trio["increase"] == trio["acc_reengineered"] - trio["acc_retrained"]
    assert len((repo / "plots/retrain/trio.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_report_renders_from_the_pipelines_metrics(pipeline):
    repo = pipeline["repo"]
    page = (repo / "report" / "README.md").read_text()
    rq1 = json.loads((repo / "metrics/reengineering.json").read_text())
    acc = 100 * rq1["targets"]["trio"]["acc_reengineered"]
    assert any(line.startswith("| trio | multi-class |") and f"| {acc:,.2f} |" in line for line in page.splitlines())
    assert sorted(p.name for p in (repo / "report").glob("*.png")) == [
        "fig5_convergence.png", "rq1_overview.png", "rq3_defects.png", "table4_retraining.png"]


def test_seam_predict_on_a_test_image_of_the_pipeline(pipeline):
    repo = pipeline["repo"]
    image = next((repo.parent / "tiny" / "test" / "airplane").iterdir())
    seam = [sys.executable, "-m", "seam.cli"]
    for model in ("models/export/airplane.pt2", "models/export/airplane.compact.onnx", "models/reengineered/airplane.pt"):
        out = sh(seam + ["predict", model, str(image)], repo, pipeline["env"])
        assert out.startswith(str(image)) and ("\tairplane " in out or "\tnot airplane " in out), out


def test_plots_show_renders_the_convergence_curve(pipeline):
    repo = pipeline["repo"]
    sh(pipeline["dvc"] + ["plots", "show", "-o", "rendered"], repo, pipeline["env"])
    html = (repo / "rendered/index.html").read_text()
    assert "retention" in html and "airplane" in html
    assert "Weight retention per epoch" in html and '"target": "trio"' in html  # one line per target


def test_alpha_experiment_reruns_only_what_depends_on_alpha(pipeline):
    repo, env, dvc = pipeline["repo"], pipeline["env"], pipeline["dvc"]
    out = sh(dvc + ["exp", "run", "-S", "alpha=20"], repo, env)
    for stage in ("download", "prepare", "prepare_defects", "finetune_standard", "finetune_remos", "finetune_seam",
                  "adversarial", "defects", "retrain@trio"):
        assert f"Running stage '{stage}'" not in out
    for stage in ("reengineer@airplane", "reengineer@trio", "evaluate", "retraining", "export", "flops", "benchmark",
                  "overhead", "report"):
        assert f"Running stage '{stage}'" in out
    # plane_ch has an alpha of its own: DVC re-runs its stage, which restores its last search
    assert "plane_ch: the last search had the same settings, inputs and code: its outputs restored" in out
    diff = json.loads(sh(dvc + ["metrics", "diff", "--json"], repo, env))
    changed = diff["metrics/reengineering.json"]
    assert any(v.get("diff") for k, v in changed.items() if "retention" in k), changed


def test_a_dry_run_in_the_workspace_names_the_searches_a_param_reruns(pipeline):
    """docs/pipeline.md: `dvc exp run --dry` fails in DVC's empty temporary copy (treeverse/dvc#10135);
    `dvc repro --dry` in the workspace answers."""
    repo, env, dvc = pipeline["repo"], pipeline["env"], pipeline["dvc"]
    original = (repo / "params.yaml").read_text()
    try:
        params = yaml.safe_load(original)
        params["alpha"] = 0.25
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = sh(dvc + ["repro", "--dry"], repo, env)
    finally:
        (repo / "params.yaml").write_text(original)
    for stage in ("reengineer@airplane", "reengineer@trio"):
        assert f"Running stage '{stage}'" in out
    for stage in ("prepare", "finetune_seam", "retrain@trio"):
        assert f"Stage '{stage}' didn't change, skipping" in out


def test_search_params_do_not_touch_the_defect_stages(pipeline):
    """RQ1's `reengineer` section is read by RQ1 stages only; `device`, shared, by both."""
    repo, env, dvc = pipeline["repo"], pipeline["env"], pipeline["dvc"]
    original = (repo / "params.yaml").read_text()
    try:
        for key, value in (("reengineer.lr_mask", 0.2), ("device", "auto")):
            params = yaml.safe_load(original)
            section, _, leaf = key.rpartition(".")
            (params[section] if section else params)[leaf] = value
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            status = subprocess.run(dvc + ["status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
            changed = set(json.loads(status.stdout))
            changed.discard("fetch_model")  # always re-checks its checkpoint
            rq3 = {"finetune_standard", "finetune_remos", "finetune_seam", "adversarial", "retrain@trio"}
            assert {"reengineer@airplane", "reengineer@trio"} <= changed
            assert not rq3 & changed if key.startswith("reengineer") else rq3 <= changed, (key, changed)
    finally:
        (repo / "params.yaml").write_text(original)


def results(repo: Path) -> dict[str, bytes]:
    """Every pipeline output file, by path."""
    return {str(f.relative_to(repo)): f.read_bytes() for top in ("data", "models", "metrics", "plots", "results", "report")
            for f in sorted((repo / top).rglob("*")) if f.is_file()}


def test_a_params_typo_stops_at_validate_and_keeps_every_result(pipeline):
    """A bad value in a key only a late stage reads (its plots were uncached, and
    DVC deleted them before the stage refused the value) now stops the run before any stage."""
    repo, env, dvc = pipeline["repo"], pipeline["env"], pipeline["dvc"]
    original, before = (repo / "params.yaml").read_text(), results(repo)
    try:
        params = yaml.safe_load(original)
        params["defects"]["seam"]["reengineer"]["threshold"] = 1.0
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.run(dvc + ["repro"], cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert errors[0] == "error: params.yaml: defects.seam.reengineer.threshold: Input should be less than 1, got 1.0"
        assert "Running stage 'finetune_seam'" not in proc.stdout
        after = results(repo)
        # validate's own marker is gone with its failure (no stage below it can run without it)
        assert "results/params.ok" not in after
        assert after == {k: v for k, v in before.items() if k != "results/params.ok"}
    finally:
        (repo / "params.yaml").write_text(original)
    sh(dvc + ["checkout"], repo, env)
    assert results(repo) == before


def test_after_a_stage_fails_dvc_checkout_restores_its_outputs(pipeline):
    """A value only the data can refuse fails inside `prepare`, after DVC deleted
    data/prepared: every output is cached, so `dvc checkout` brings it back."""
    repo, env, dvc = pipeline["repo"], pipeline["env"], pipeline["dvc"]
    original, before = (repo / "params.yaml").read_text(), results(repo)
    try:
        params = yaml.safe_load(original)
        params["prepare"]["val_fraction"] = 0.99
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.run(dvc + ["repro"], cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode != 0
        assert "error: prepare.val_fraction: 0.99 leaves no training images for label 0 of targets.airplane" \
            in proc.stderr.splitlines(), proc.stderr[-2000:]
        assert not (repo / "data/prepared").exists()  # DVC removed it before running prepare
    finally:
        (repo / "params.yaml").write_text(original)
    sh(dvc + ["checkout"], repo, env)
    assert results(repo) == before


def test_a_queued_target_comes_back_through_the_run_cache(pipeline):
    """README, "Parallel targets": a target re-engineered by a queued experiment (a worker of
    `dvc exp run --run-all -j N`) is restored in the workspace from DVC's run-cache, not recomputed."""
    repo, env, dvc = pipeline["repo"], pipeline["env"], pipeline["dvc"]
    sh(dvc + ["exp", "run", "--queue", "-S", "reengineer.max_epochs=3", "reengineer@airplane"], repo, env)
    queued = sh(dvc + ["exp", "run", "--run-all", "-j", "1"], repo, dict(env, OMP_NUM_THREADS="1"))
    assert "on cpu, 1 threads" in queued  # the worker's thread count reaches the stage
    out = sh(dvc + ["exp", "run", "-S", "reengineer.max_epochs=3", "reengineer@airplane"], repo, env)
    assert "Stage 'reengineer@airplane' is cached - skipping run" in out, out
    log = (repo / "plots/reengineer/airplane.csv").read_text().splitlines()
    assert len(log) == 4  # header + the 3 epochs the queued run wrote


def test_a_relative_dataset_source_works_in_a_queued_experiment(pipeline):
    """The README's relative offline override (`../shared/...`) also works where
    `dvc exp run --queue` runs, a copy of the workspace under .dvc/tmp/exps/."""
    repo, env, dvc = pipeline["repo"], pipeline["env"], pipeline["dvc"]
    assert (repo.parent / "tiny").is_dir()
    sh(dvc + ["exp", "run", "--queue", "-S", "dataset.source=../tiny", "download"], repo, env)
    out = sh(dvc + ["exp", "run", "--run-all", "-j", "1"], repo, env)
    assert "Running stage 'download'" in out and "dataset imagefolder -> data/raw" in out, out
