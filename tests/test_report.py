"""The report: its numbers are the metrics files' numbers, beside the paper's from reference/paper.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO
from PIL import Image

from seam.report.tables import MEASURES, ReportError, load_paper, markdown, rq1_frame, rq1_tables

PAPER = load_paper(REPO / "reference" / "paper.yaml")


def target(kind, kept, acc_o, acc_r, total=268_346, granularity="weight"):
    return {"kind": kind, "granularity": granularity, "n_test": 100, "acc_original": acc_o, "acc_original_fair": acc_o, "acc_reengineered": acc_r,
            "weights_kept": kept, "weights_total": total, "weight_retention": kept / total, "selected_epoch": 3,
            "epochs_run": 5, "reached_original_acc": True}


def latency(flops_r, ds_o, ds_r, ort_o, ort_r, flops_c=36_000_000, compact=(3.2, 5.9, 6.1, 7.2)):
    return {"flops_original": 40_931_968, "flops_reengineered": flops_r, "latency_ms_original": ds_o,
            "latency_ms_reengineered": ds_r, "ort_latency_ms_original": ort_o, "ort_latency_ms_reengineered": ort_r,
            "flops_compact": flops_c, **dict(zip(("compact_ort_latency_ms_original", "compact_ort_latency_ms_compact",
                                                   "compact_torch_latency_ms_masked", "compact_torch_latency_ms_compact"),
                                                  compact))}


REENGINEERING = {"model": "resnet20", "targets": {
    "airplane": target("binary", 44_909, 0.868, 0.912),
    "ship": target("binary", 60_000, 0.90, 0.93),
    "vehicles": target("classes", 126_641, 0.849, 0.9035)}}
OVERHEAD = {"cores": 2, "batch": 16, "engines": {"deepsparse": "1.8.0", "onnxruntime": "1.20.1"}, "targets": {
    "airplane": latency(10_384_611, 5.0, 1.2, 3.1, 3.1),
    "ship": latency(12_000_000, 5.0, 1.5, 3.0, 3.2),
    "vehicles": latency(20_000_000, 5.0, 2.5, 3.0, 3.0)}}
RETRAINING = {"targets": {"vehicles": {"classes": ["airplane", "automobile", "ship", "truck"], "n_train": 2000,
                                       "n_test": 4000, "acc_retrained": 0.79225, "acc_reengineered": 0.9035,
                                       "increase": 0.11125, "retrain_epochs": 60, "retrain_best_epoch": 54,
                                       "retrain_seconds": 237.5, "reengineer_epochs": 50, "reengineer_seconds": 173.5}}}
DEFECTS = {"acc_standard": 0.8406, "dir_standard": 0.5955, "removed_rate_standard": 0.0,
           "acc_remos": 0.7928, "dir_remos": 0.2046, "removed_rate_remos": 0.1,
           "acc_seam": 0.8217, "dir_seam": 0.1853, "removed_rate_seam": 0.599,
           "settings": {"classes": ["bird", "cat"], "dropout": 0.0}}


def test_rq1_tables_average_per_model_and_kind_beside_the_paper_row():
    tables = rq1_tables(rq1_frame(REENGINEERING, OVERHEAD), PAPER)
    weights = next(m for m in MEASURES if m.key == "weights")
    grouped, per_target = tables[weights]
    binary = grouped.set_index("kind").loc["binary"]
    assert binary["targets"] == 2 and binary["paper row"] == "ResNet20-CIFAR10"
    assert binary["re-engineered"] == pytest.approx((44_909 + 60_000) / 2 / 1e6)
    reductions = [100 * (1 - 44_909 / 268_346), 100 * (1 - 60_000 / 268_346)]
    assert binary["reduction (%)"] == pytest.approx(sum(reductions) / 2)
    assert binary["paper reduction (%)"] == 88.89   # Table I, as published
    assert binary["difference"] == pytest.approx(binary["reduction (%)"] - 88.89)
    assert per_target.set_index("target").loc["vehicles", "kind"] == "multi-class"
    multi = grouped.set_index("kind").loc["multi-class"]
    assert multi["paper row"] == "-" and pd.isna(multi["paper original"])  # no multi-class ResNet20-CIFAR10 row
    acc = next(m for m in MEASURES if m.key == "acc")
    binary = tables[acc][0].set_index("kind").loc["binary"]
    assert binary["increase (points)"] == pytest.approx(100 * ((0.912 + 0.93) / 2 - (0.868 + 0.90) / 2))
    assert binary["paper increase (points)"] == 0.17


def test_another_granularity_is_its_own_row_without_a_paper_row():
    rq1 = {**REENGINEERING, "targets": {**REENGINEERING["targets"],
                                        "airplane_channel": target("binary", 143_930, 0.868, 0.901, granularity="channel")}}
    rq2 = {**OVERHEAD, "targets": {**OVERHEAD["targets"], "airplane_channel": latency(
        22_350_000, 5.3, 6.2, 3.2, 3.2, flops_c=4_800_000, compact=(3.2, 0.9, 6.3, 2.0))}}
    grouped, _ = rq1_tables(rq1_frame(rq1, rq2), PAPER)[next(m for m in MEASURES if m.key == "weights")]
    rows = grouped.set_index(["kind", "granularity"])
    assert rows.loc[("binary", "weight"), "targets"] == 2 and rows.loc[("binary", "weight"), "paper row"] != "-"
    channel = rows.loc[("binary", "channel")]
    assert channel["targets"] == 1 and channel["paper row"] == "-" and pd.isna(channel["paper reduction (%)"])
    assert channel["re-engineered"] == pytest.approx(0.14393)


def test_markdown_rounds_and_marks_missing():
    frame = pd.DataFrame({"a": ["x"], "b": [1234.5678], "c": [float("nan")]})
    assert markdown(frame, 2).splitlines() == ["| a | b | c |", "|---|---|---|", "| x | 1,234.57 | - |"]


def test_paper_file_errors(tmp_path):
    with pytest.raises(ReportError, match="missing"):
        load_paper(tmp_path / "nope.yaml")
    data = yaml.safe_load((REPO / "reference" / "paper.yaml").read_text())
    del data["rq1"][2]["flops"]
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ReportError, match=r"paper.yaml: rq1\[2\] lacks \['flops'\]"):
        load_paper(tmp_path / "paper.yaml")


@pytest.fixture
def run_dir(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["targets"]["ship"] = {"binary": 8}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, data in (("reengineering", REENGINEERING), ("overhead", OVERHEAD), ("retraining", RETRAINING),
                       ("defect_inheritance", DEFECTS)):
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(data))
    (tmp_path / "plots" / "reengineer").mkdir(parents=True)
    for name in REENGINEERING["targets"]:
        log = pd.DataFrame({"epoch": range(5), "retention": [1, 0.6, 0.4, 0.3, 0.25],
                            "val_acc": [0.8, 0.85, 0.9, 0.9, 0.91], "test_acc": [0.8, 0.84, 0.9, 0.9, 0.9]})
        log.to_csv(tmp_path / "plots" / "reengineer" / f"{name}.csv", index=False)
    (tmp_path / "reference").mkdir()
    shutil.copy(REPO / "reference" / "paper.yaml", tmp_path / "reference" / "paper.yaml")
    return tmp_path


ARGS = ("metrics/reengineering.json", "metrics/overhead.json", "metrics/retraining.json",
        "metrics/defect_inheritance.json", "plots/reengineer", "reference/paper.yaml", "report", "plots/convergence.csv")


def run(cwd):
    return subprocess.run([sys.executable, str(REPO / "stages" / "report.py"), *ARGS], cwd=cwd, capture_output=True,
                          text=True)


def table_rows(page: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in page.splitlines()
            if line.startswith(f"| {first_cell} |")]


def test_report_numbers_are_the_metrics_numbers(run_dir):
    proc = run(run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (run_dir / "report" / "README.md").read_text()
    # Table I, per target: weights in millions, then the reduction in %
    airplane = table_rows(page, "airplane")
    assert airplane[0] == ["airplane", "binary", "0.268", "0.045", f"{100 * (1 - 44_909 / 268_346):.3f}"]
    # Table II, per target: accuracy in %
    assert airplane[1] == ["airplane", "binary", "86.80", "91.20", "4.40"]
    # Table VI: DeepSparse ms/batch
    assert airplane[3] == ["airplane", "binary", "5.00", "1.20", "76.00"]
    # dense engines: onnxruntime masked and compact vs the original, torch compact vs masked
    assert airplane[4] == ["airplane", "weight", "3.10", "3.10", "36.00", "3.20", "5.90", "6.10", "7.20"]
    # Table IV and RQ3
    vehicles = table_rows(page, "vehicles")[-1]
    assert vehicles[:6] == ["vehicles", "4", "2000", "79.2", "90.3", "11.1"]
    standard = table_rows(page, "standard fine-tuning")[0]
    assert standard[:4] == ["standard fine-tuning", f"{100 * 0.8406:.1f}", f"{100 * 0.5955:.1f}", "0.0"]
    assert standard[4:] == ["80", "79", "85", "66"]   # the paper's ResNet18 and ResNet50 ACC, DIR
    assert "Defect inheritance: `resnet20` reused on ['bird', 'cat']" in page
    convergence = pd.read_csv(run_dir / "plots" / "convergence.csv")
    assert list(convergence["target"].unique()) == ["airplane", "ship", "vehicles"] and len(convergence) == 15
    for png in ("rq1_overview", "fig5_convergence", "table4_retraining", "rq3_defects"):
        assert f"]({png}.png)" in page
        with Image.open(run_dir / "report" / f"{png}.png") as image:
            assert image.format == "PNG" and image.width >= 600


def test_a_failed_report_keeps_the_previous_one(run_dir):
    assert run(run_dir).returncode == 0
    before = (run_dir / "report" / "README.md").read_text()
    (run_dir / "plots" / "reengineer" / "ship.csv").unlink()
    proc = run(run_dir)
    assert proc.returncode == 1 and "no per-epoch log for ['ship']" in proc.stderr and "Traceback" not in proc.stderr
    assert (run_dir / "report" / "README.md").read_text() == before
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".report")) == []
