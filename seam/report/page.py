"""The report's page (``report/README.md``): one function per section, each returning Markdown
lines from the loaded data. Every paper number comes from ``reference/paper.yaml``."""

from __future__ import annotations

import datetime

import pandas as pd

from seam.report.build import Report, Run
from seam.report.inputs import Doc, paper_fact
from seam.report.tables import COMPACT, MASKED, MEASURES, Measure, markdown


def header(today: datetime.date) -> list[str]:
    return ["# SeaM pipeline report", "",
            f"Generated on {today.isoformat()} by the `report` stage from `metrics/` and `plots/`; the paper's "
            "numbers (Qi et al., ICSE 2023) come from `reference/paper.yaml`, which names the table, figure or "
            "passage of each.", ""]


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def run_setting(run: Run, overhead: Doc) -> list[str]:
    """What this run is: model, data, targets, machine, search settings."""
    r = run.search
    dataset = run.dataset if run.source is None else f"{run.dataset} ({run.source})"
    lines = [f"- **Model** `{run.model}`; **dataset** `{dataset}`; targets: {_names(list(run.targets))}",
             f"- **Machine**: {overhead.get('cores')} cores; engines "
             + ", ".join(f"{k} {v}" for k, v in overhead.get("engines").items()),
             f"- **Search**: alpha {run.alpha}, lr_mask {r['lr_mask']}, lr_head {r['lr_head']}, batch "
             f"{r['batch_size']}, up to {r['max_epochs']} epochs (early stop {r['early_stop']}), granularity "
             f"{r['granularity']}, model selection on the `{run.select_on}` split, seed {run.seed}"]
    for name, spec in run.targets.items():
        own = spec.get("reengineer") if isinstance(spec, dict) else None
        if own:  # a target's own search settings, over the section's (params.yaml `targets.<name>.reengineer`)
            lines.append(f"- `{name}` searched with settings of its own: "
                         + ", ".join(f"{k} {v}" for k, v in own.items()))
    return lines


def differences(run: Run, paper: dict, overhead: Doc, defects: Doc, frame: pd.DataFrame) -> list[str]:
    """Where this run's setting differs from the paper's."""
    lines = []
    if run.dataset == "imagefolder":
        lines.append(f"- Images from an image folder (`{run.source}`), not torchvision's CIFAR download; "
                     "the original model's accuracies shown are measured on those images.")
    epochs = paper_fact(paper, "search_epochs")
    if run.search["max_epochs"] < epochs:
        lines.append(f"- Searches stop at {run.search['max_epochs']} epochs (the paper: up to {epochs}).")
    capped = [n for n, s in run.targets.items() if isinstance(s, dict) and s.get("train_per_class")]
    if capped:
        lines.append(f"- CPU-sized target slices: {_names(capped)} (`train_per_class` / `test_per_class`).")
    channel = list(frame.loc[frame["counted"] == COMPACT, "target"])
    if channel:
        lines.append(f"- Channel targets ({_names(channel)}) are counted by their compact model in Tables I and V "
                     "(the paper counts a mask's non-zero weights).")
    lines.append(f"- Defect inheritance: `{run.model}` reused on {defects.get('settings', 'classes')} "
                 f"({run.defects_train_per_class} training, {run.defects_test_per_class} test images per "
                 f"class), not {paper_fact(paper, 'defects_models')} on {paper_fact(paper, 'defects_datasets')} "
                 f"transfer datasets; fine-tuning up to {run.defects_finetune_epochs} epochs.")
    lines.append(f"- Latency on {overhead.get('cores')} cores, batches of {overhead.get('batch')}, median of "
                 f"interleaved pairs (the paper: {paper_fact(paper, 'cores')} cores, batches of "
                 f"{paper_fact(paper, 'latency_batch')}, {paper_fact(paper, 'latency_statistic')} of "
                 f"{paper_fact(paper, 'latency_runs')} runs).")
    return lines


def setting(report: Report) -> list[str]:
    return ["## Setting", "", *run_setting(report.run, report.overhead), "",
            "Differences from the paper's setting:",
            *differences(report.run, report.paper, report.overhead, report.defects, report.frame), ""]


def overview() -> list[str]:
    return ["## RQ1 and RQ2 at a glance", "", "![original vs re-engineered per target](rq1_overview.png)", ""]


# What each count is, per measure: (the masked model's, the compact model's).
COUNTED_NOTE = {
    "weights": ("its non-zero weights", "its conv/linear weights and biases without the new head"),
    "flops": ("its multiplications with non-zero weights", "every multiplication it runs (fvcore's dense count)"),
}


def measure(m: Measure, grouped: pd.DataFrame, per_target: pd.DataFrame, paper: dict, batch: int) -> list[str]:
    """One of Tables I, II, V, VI: by model and kind beside the paper's row, then per target."""
    lines = [f"## {m.table}: {m.title} ({m.unit})", "",
             "One row per model and problem kind, averaged over its targets"
             + (" (a reduction is the mean of the per-target reductions)" if m.change == "reduction" else "")
             + "; `difference` = ours - paper.", ""]
    if m.counted:
        masked, compact = COUNTED_NOTE[m.key]
        lines += [f"`counted`: `{MASKED}` is the masked model, {masked} (the paper's rule); `{COMPACT}` is a channel "
                  f"target's compact export (`models/export/<target>.compact.pt2`, what a user deploys), {compact}.",
                  ""]
    if m.key == "latency":
        lines += [f"Batches of {batch} images; the paper's: {paper_fact(paper, 'latency_batch')}.", ""]
    return lines + [markdown(grouped, m.digits), "", "Per target:", "", markdown(per_target, m.digits), ""]


def dense_engines(frame: pd.DataFrame, batch: int) -> list[str]:
    """The compact export beside the masked model on onnxruntime and torch."""
    dense = frame[["target", "granularity", "ort_original", "ort_reengineered", "flops_compact",
                   "compact_ort_original", "compact_ort_reengineered", "compact_torch_masked", "compact_torch"]].copy()
    dense["flops_compact"] /= 1e6
    return ["## Dense engines: the compact export", "",
            f"ms per batch of {batch}. onnxruntime runs the masked model (`masked`) and its compact export, each "
            "against the original, in interleaved pairs; torch runs the compact export against the masked model "
            "(the original network's compute, with the new head). A weight-level mask only pays on a sparse engine; "
            "a channel-level one (`reengineer.granularity: channel`) is smaller and faster on any engine.", "",
            markdown(dense.rename(columns={
                "ort_original": "ort original", "ort_reengineered": "ort masked", "flops_compact": "compact MFLOPs",
                "compact_ort_original": "ort original (pair 2)", "compact_ort_reengineered": "ort compact",
                "compact_torch_masked": "torch masked", "compact_torch": "torch compact"})), ""]


def convergence() -> list[str]:
    return ["## Fig. 5: convergence", "", "![convergence](fig5_convergence.png)", ""]


def retraining(retrain: pd.DataFrame, retrain_paper: pd.DataFrame) -> list[str]:
    return ["## Table IV: retraining from scratch vs re-engineering (test accuracy, %)", "",
            "![retraining](table4_retraining.png)", "", markdown(retrain, 1), "",
            "The paper (averages over its multi-class targets):", "", markdown(retrain_paper, 2), ""]


def defect_inheritance(table: pd.DataFrame, defects: Doc, paper: dict) -> list[str]:
    return [f"## RQ3: defect inheritance (dropout {defects.get('settings', 'dropout')})", "",
            "![defects](rq3_defects.png)", "",
            "ACC, DIR and the removed share of the weights, in %; `paper` columns: the paper's averages over its "
            f"{paper_fact(paper, 'defects_datasets')} transfer datasets for the same dropout setting.", "",
            markdown(table, 1), ""]


def render(report: Report, today: datetime.date) -> str:
    """The whole page."""
    lines = [*header(today), *setting(report), *overview()]
    for m in MEASURES:
        lines += measure(m, *report.rq1[m], report.paper, report.batch)
    lines += [*dense_engines(report.frame, report.batch), *convergence(),
              *retraining(report.retrain, report.retrain_paper),
              *defect_inheritance(report.rq3, report.defects, report.paper)]
    return "\n".join(lines)
