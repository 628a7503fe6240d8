"""The report: its numbers are the metrics files' numbers, beside the paper's from reference/paper.yaml."""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from PIL import Image

from seam.core.params import load_params
from seam.report import figures, page
from seam.report.build import Report, build_report
from seam.report.inputs import Doc, ReportError, load_paper, read_json, read_logs
from seam.report.page import render
from seam.report.tables import COMPACT, MASKED, MEASURES, markdown, rq1_frame, rq1_tables

PAPER = load_paper(REPO / "reference" / "paper.yaml")
_spec = importlib.util.spec_from_file_location("report_stage", REPO / "stages" / "report.py")
STAGE = importlib.util.module_from_spec(_spec)  # stages/ is not a package
_spec.loader.exec_module(STAGE)
WEIGHTS, FLOPS = (next(m for m in MEASURES if m.key == key) for key in ("weights", "flops"))


def target(kind, kept, acc_o, acc_r, total=268_346, granularity="weight"):
    return {"kind": kind, "granularity": granularity, "n_test": 100, "acc_original": acc_o, "acc_original_fair": acc_o, "acc_reengineered": acc_r,
            "weights_kept": kept, "weights_total": total, "weight_retention": kept / total, "selected_epoch": 3,
            "epochs_run": 5, "reached_original_acc": True}


def latency(flops_r, ds_o, ds_r, ort_o, ort_r, flops_c=36_000_000, compact=(3.2, 5.9, 6.1, 7.2), weights_c=250_000):
    return {"flops_original": 40_931_968, "flops_reengineered": flops_r, "weights_compact": weights_c,
            "latency_ms_original": ds_o,
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
# A channel target: 143,930 non-zero weights in the masked model, 47,536 in its compact export.
CHANNEL = target("binary", 143_930, 0.868, 0.901, granularity="channel")
CHANNEL_LATENCY = latency(22_350_000, 5.3, 6.2, 3.2, 3.2, flops_c=4_800_000, compact=(3.2, 0.9, 6.3, 2.0),
                          weights_c=47_536)
DEFECTS = {"acc_standard": 0.8406, "dir_standard": 0.5955, "removed_rate_standard": 0.0,
           "acc_remos": 0.7928, "dir_remos": 0.2046, "removed_rate_remos": 0.1,
           "acc_seam": 0.8217, "dir_seam": 0.1853, "removed_rate_seam": 0.599,
           "settings": {"classes": ["bird", "cat"], "dropout": 0.0}}


def docs(rq1=REENGINEERING, rq2=OVERHEAD):
    """The fixtures as loaded files (copies: a test may change them)."""
    return (Doc(Path("metrics/reengineering.json"), copy.deepcopy(rq1)),
            Doc(Path("metrics/overhead.json"), copy.deepcopy(rq2)))


def with_channel():
    """The fixtures plus airplane_channel, a channel target."""
    return docs({**REENGINEERING, "targets": {**REENGINEERING["targets"], "airplane_channel": CHANNEL}},
                {**OVERHEAD, "targets": {**OVERHEAD["targets"], "airplane_channel": CHANNEL_LATENCY}})


def test_rq1_tables_average_per_model_and_kind_beside_the_paper_row():
    tables = rq1_tables(rq1_frame(*docs()), PAPER)
    grouped, per_target = tables[WEIGHTS]
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


def test_a_channel_target_counts_its_compact_model_a_weight_target_its_masked_one():
    frame = rq1_frame(*with_channel()).set_index("target")
    channel = frame.loc["airplane_channel"]
    assert channel["counted"] == COMPACT
    assert channel["weights_reengineered"] == 47_536 and channel["flops_reengineered"] == 4_800_000
    # Weight targets: exactly the fixture's masked figures, the compact ones (250,000; 36M) unused.
    assert frame.loc["airplane", ["counted", "weights_reengineered", "flops_reengineered"]].tolist() == [
        MASKED, 44_909, 10_384_611]
    assert frame.loc["ship", ["weights_reengineered", "flops_reengineered"]].tolist() == [60_000, 12_000_000]
    tables = rq1_tables(frame.reset_index(), PAPER)
    for m, compact in ((WEIGHTS, 47_536), (FLOPS, 4_800_000)):
        grouped, per_target = tables[m]
        row = per_target.set_index("target").loc["airplane_channel"]
        assert row["re-engineered"] == pytest.approx(compact / 1e6) and row["counted"] == COMPACT
        rows = grouped.set_index(["kind", "granularity"])
        assert rows.loc[("binary", "channel"), "counted"] == COMPACT
        assert rows.loc[("binary", "weight"), "counted"] == MASKED
    # Accuracy and latency have no `counted` column: one model is measured either way.
    assert all("counted" not in tables[m][1] for m in MEASURES if m not in (WEIGHTS, FLOPS))


def test_weight_rows_are_the_same_with_or_without_a_channel_target():
    alone, both = rq1_tables(rq1_frame(*docs()), PAPER), rq1_tables(rq1_frame(*with_channel()), PAPER)
    for m in MEASURES:
        before = alone[m][1].set_index("target")
        after = both[m][1].set_index("target").loc[before.index]
        pd.testing.assert_frame_equal(after, before)
        g_before = alone[m][0].set_index(["kind", "granularity"])
        g_after = both[m][0].set_index(["kind", "granularity"]).loc[g_before.index]
        pd.testing.assert_frame_equal(g_after, g_before)


def test_another_granularity_is_its_own_row_without_a_paper_row():
    grouped, _ = rq1_tables(rq1_frame(*with_channel()), PAPER)[WEIGHTS]
    rows = grouped.set_index(["kind", "granularity"])
    assert rows.loc[("binary", "weight"), "targets"] == 2 and rows.loc[("binary", "weight"), "paper row"] != "-"
    channel = rows.loc[("binary", "channel")]
    assert channel["targets"] == 1 and channel["paper row"] == "-" and pd.isna(channel["paper reduction (%)"])
    assert channel["re-engineered"] == pytest.approx(0.047536)


def test_a_channel_target_without_its_compact_count_names_the_file_and_key():
    rq1, rq2 = with_channel()
    del rq2.data["targets"]["airplane_channel"]["weights_compact"]
    with pytest.raises(ReportError, match=r"^metrics/overhead.json: no key 'targets.airplane_channel.weights_compact'"):
        rq1_frame(rq1, rq2)
    # A weight target does not need it.
    rq1_frame(*docs(rq2={**OVERHEAD, "targets": {n: {k: v for k, v in t.items() if k != "weights_compact"}
                                                 for n, t in OVERHEAD["targets"].items()}}))


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
    data = yaml.safe_load((REPO / "reference" / "paper.yaml").read_text())
    del data["setting"]["search_epochs"]["source"]  # a paper number without its source
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ReportError, match=r"paper.yaml: setting.search_epochs must be \{value: ..., source: ...\}"):
        load_paper(tmp_path / "paper.yaml")


def test_every_paper_fact_names_its_source():
    for key, entry in PAPER["setting"].items():
        assert entry["value"] is not None and len(entry["source"]) > 20, key


LOG = pd.DataFrame({"epoch": range(5), "retention": [1, 0.6, 0.4, 0.3, 0.25],
                    "val_acc": [0.8, 0.85, 0.9, 0.9, 0.91], "test_acc": [0.8, 0.84, 0.9, 0.9, 0.9]})


@pytest.fixture
def run_dir(tmp_path):
    """A run of the default params.yaml (airplane_channel included) plus `ship`, with fixture metrics."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["targets"]["ship"] = {"binary": 8}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (rq1, rq2) = (d.data for d in with_channel())
    for name, data in (("reengineering", rq1), ("overhead", rq2), ("retraining", RETRAINING),
                       ("defect_inheritance", DEFECTS)):
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(data))
    (tmp_path / "plots" / "reengineer").mkdir(parents=True)
    for name in rq1["targets"]:
        LOG.to_csv(tmp_path / "plots" / "reengineer" / f"{name}.csv", index=False)
    (tmp_path / "reference").mkdir()
    shutil.copy(REPO / "reference" / "paper.yaml", tmp_path / "reference" / "paper.yaml")
    return tmp_path


ARGS = ("metrics/reengineering.json", "metrics/overhead.json", "metrics/retraining.json",
        "metrics/defect_inheritance.json", "plots/reengineer", "reference/paper.yaml", "report", "plots/convergence.csv")


def run(cwd):
    return subprocess.run([sys.executable, str(REPO / "stages" / "report.py"), *ARGS], cwd=cwd, capture_output=True,
                          text=True)


def report_of(run_dir, **params_changes) -> Report:
    """The stage's Report, built in-process from run_dir's files (params.yaml keys replaced)."""
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    (run_dir / "params.yaml").write_text(yaml.safe_dump({**params, **params_changes}, sort_keys=False))
    files = [read_json(run_dir / path) for path in ARGS[:4]]
    return build_report(STAGE.run_of(load_params(run_dir / "params.yaml")), load_paper(run_dir / ARGS[5]), *files,
                        read_logs(run_dir / ARGS[4]), ARGS[4])


def table_rows(page: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in page.splitlines()
            if line.startswith(f"| {first_cell} |")]


def test_report_numbers_are_the_metrics_numbers(run_dir):
    proc = run(run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (run_dir / "report" / "README.md").read_text()
    # Table I, per target: weights in millions, the reduction in %, the count used
    airplane = table_rows(page, "airplane")
    assert airplane[0] == ["airplane", "binary", "0.268", "0.045", f"{100 * (1 - 44_909 / 268_346):.3f}", MASKED]
    # Table II, per target: accuracy in %
    assert airplane[1] == ["airplane", "binary", "86.80", "91.20", "4.40"]
    # Table V: MFLOPs, non-zero weights only
    assert airplane[2] == ["airplane", "binary", "40.93", "10.38", f"{100 * (1 - 10_384_611 / 40_931_968):.2f}", MASKED]
    # Table VI: DeepSparse ms/batch
    assert airplane[3] == ["airplane", "binary", "5.00", "1.20", "76.00"]
    # dense engines: onnxruntime masked and compact vs the original, torch compact vs masked
    assert airplane[4] == ["airplane", "weight", "3.10", "3.10", "36.00", "3.20", "5.90", "6.10", "7.20"]
    # A channel target: Tables I and V count its compact export (47,536 weights, 4.8 MFLOPs), not its mask
    channel = table_rows(page, "airplane_channel")
    assert channel[0] == ["airplane_channel", "binary", "0.268", "0.048", f"{100 * (1 - 47_536 / 268_346):.3f}",
                          COMPACT]
    assert channel[2] == ["airplane_channel", "binary", "40.93", "4.80", f"{100 * (1 - 4.8e6 / 40_931_968):.2f}",
                          COMPACT]
    # Table IV and RQ3
    vehicles = table_rows(page, "vehicles")[-1]
    assert vehicles[:6] == ["vehicles", "4", "2000", "79.2", "90.3", "11.1"]
    standard = table_rows(page, "standard fine-tuning")[0]
    assert standard[:4] == ["standard fine-tuning", f"{100 * 0.8406:.1f}", f"{100 * 0.5955:.1f}", "0.0"]
    assert standard[4:] == ["80", "79", "85", "66"]   # the paper's ResNet18 and ResNet50 ACC, DIR
    assert "Defect inheritance: `resnet20` reused on ['bird', 'cat']" in page
    convergence = pd.read_csv(run_dir / "plots" / "convergence.csv")
    assert list(convergence["target"].unique()) == ["airplane", "ship", "vehicles", "airplane_channel"]
    assert len(convergence) == 20
    for png in ("rq1_overview", "fig5_convergence", "table4_retraining", "rq3_defects"):
        assert f"]({png}.png)" in page
        with Image.open(run_dir / "report" / f"{png}.png") as image:
            assert image.format == "PNG" and image.width >= 600


def test_the_page_has_its_sections_in_order(run_dir):
    page = render(report_of(run_dir), datetime.date(2024, 1, 2))
    assert [line for line in page.splitlines() if line.startswith("#")] == [
        "# SeaM pipeline report", "## Setting", "## RQ1 and RQ2 at a glance", "## Table I: Weights (M)",
        "## Table II: Accuracy on the target problems (%)", "## Table V: FLOPs for one image (M)",
        "## Table VI: DeepSparse latency (ms/batch)", "## Dense engines: the compact export", "## Fig. 5: convergence",
        "## Table IV: retraining from scratch vs re-engineering (test accuracy, %)",
        "## RQ3: defect inheritance (dropout 0.0)"]
    assert "Generated on 2024-01-02 " in page


def test_which_count_a_row_uses_is_said_where_it_is_used(run_dir):
    report = report_of(run_dir)
    for m in MEASURES:
        text = "\n".join(page.measure(m, *report.rq1[m], report.paper, report.batch))
        assert ("`counted`:" in text) == (m in (WEIGHTS, FLOPS)), m.key
    setting = "\n".join(page.setting(report))
    assert "- Channel targets (`airplane_channel`) are counted by their compact model in Tables I and V" in setting
    assert "- `airplane_channel` searched with settings of its own: granularity channel, cost macs" in setting
    # Without a channel target, no such line.
    frame = report.frame[report.frame["counted"] == MASKED]
    assert not any("Channel targets" in line for line in
                   page.differences(report.run, report.paper, report.overhead, report.defects, frame))


def test_an_image_folder_run_says_where_its_accuracies_come_from(run_dir):
    source = "/data/cifar10-jpeg.tar.gz"
    report = report_of(run_dir, dataset={"name": "imagefolder", "source": source, "sha256": None})
    lines = page.differences(report.run, report.paper, report.overhead, report.defects, report.frame)
    assert lines[0] == (f"- Images from an image folder (`{source}`), not torchvision's CIFAR download; the original "
                        "model's accuracies shown are measured on those images.")
    assert not any(ch.isdigit() for ch in lines[0].replace(source, ""))  # no figure about a dataset in the code
    plain = report_of(run_dir, dataset={"name": "cifar10", "source": None, "sha256": None})
    assert not any("image folder" in line for line in
                   page.differences(plain.run, plain.paper, plain.overhead, plain.defects, plain.frame))


def test_the_paper_numbers_on_the_page_come_from_paper_yaml(run_dir):
    path = run_dir / "reference" / "paper.yaml"
    paper = yaml.safe_load(path.read_text())
    for key, value in (("search_epochs", 417), ("latency_batch", 19), ("latency_runs", 123), ("cores", 37),
                       ("latency_statistic", "trimmed mean"), ("defects_models", "VGG-X"), ("defects_datasets", 9)):
        paper["setting"][key]["value"] = value
    row = next(r for r in paper["rq1"] if r["row"] == "ResNet20-CIFAR10")
    row["weights"][2] = 77.77
    path.write_text(yaml.safe_dump(paper))
    proc = run(run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (run_dir / "report" / "README.md").read_text()
    assert "- Searches stop at 50 epochs (the paper: up to 417)." in text
    assert "(the paper: 37 cores, batches of 19, trimmed mean of 123 runs)." in text
    assert "Batches of 16 images; the paper's: 19." in text
    assert "not VGG-X on 9 transfer datasets" in text and "the paper's averages over its 9 transfer datasets" in text
    binary = table_rows(text, "resnet20")[0]  # Table I, by model and kind: ..., paper reduction, difference
    ours = (100 * (1 - 44_909 / 268_346) + 100 * (1 - 60_000 / 268_346)) / 2
    assert binary[:3] == ["resnet20", "binary", "weight"] and binary[-2:] == ["77.770", f"{ours - 77.77:.3f}"]


def test_the_overview_shows_a_channel_targets_compact_counts(run_dir, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    report = report_of(run_dir)
    figures.rq1_overview(report.frame, run_dir / "x.png", batch=8)
    axes = drawn[0].axes
    labels = [t.get_text() for t in axes[0].get_xticklabels()]
    heights = {}
    for panel in (0, 2):  # weights, FLOPs
        bars = axes[panel].containers[1]  # re-engineered
        heights[panel] = dict(zip(labels, (b.get_height() for b in bars)))
        assert "channel targets: the compact model" in axes[panel].get_title()
    assert heights[0]["airplane_channel"] == pytest.approx(47.536) and heights[0]["airplane"] == pytest.approx(44.909)
    assert heights[2]["airplane_channel"] == pytest.approx(4.8) and heights[2]["airplane"] == pytest.approx(10.384611)
    assert [axes[i].get_ylabel() for i in (3, 4, 5)] == ["ms per batch of 8"] * 3
    assert axes[0].get_xticklabels()[0].get_rotation() == 30  # 4 names, one long: slanted, not overlapping
    drawn.clear()
    figures.rq1_overview(report.frame[report.frame["counted"] == MASKED], run_dir / "x.png", batch=8)
    assert "compact" not in drawn[0].axes[0].get_title()
    assert drawn[0].axes[0].get_xticklabels()[0].get_rotation() == 0  # airplane, ship, vehicles fit level


def test_a_failed_report_keeps_the_previous_one(run_dir):
    assert run(run_dir).returncode == 0
    before = (run_dir / "report" / "README.md").read_text()
    (run_dir / "plots" / "reengineer" / "ship.csv").unlink()
    proc = run(run_dir)
    assert proc.returncode == 1 and "no per-epoch log for ['ship']" in proc.stderr and "Traceback" not in proc.stderr
    assert (run_dir / "report" / "README.md").read_text() == before
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".report")) == []
