"""DVC stage `report`: the paper's tables and figures from this run's metrics, beside the
paper's published numbers: `<out>/README.md` (renders on a code-hosting site) and PNG figures."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

from seam.core.atomic import write_csv
from seam.core.stage import run_stage
from seam.core.params import Params, load_params
from seam.report import figures
from seam.report.tables import (
    MEASURES,
    ReportError,
    defects_table,
    load_paper,
    markdown,
    read_logs,
    retraining_table,
    rq1_frame,
    rq1_tables,
)

PAPER_EPOCHS = 300  # the release's search and retraining bound (SEAM-METHOD.md)


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ReportError(f"{path}: not found (run the stage that writes it)")
    return json.loads(path.read_text())


def setting(params: Params, overhead: dict, defects: dict) -> list[str]:
    """What this run is, and how it differs from the paper's setting."""
    d = params.dataset
    dataset = d.name if d.source is None else f"{d.name} ({d.source})"
    lines = [
        f"- **Model** `{params.model.name}`; **dataset** `{dataset}`; targets: "
        + ", ".join(f"`{n}`" for n in params.targets),
        f"- **Machine**: {overhead['cores']} cores; engines "
        + ", ".join(f"{k} {v}" for k, v in overhead["engines"].items()),
        f"- **Search**: alpha {params.alpha}, lr_mask {params.reengineer.lr_mask}, lr_head {params.reengineer.lr_head}, "
        f"batch {params.reengineer.batch_size}, up to {params.reengineer.max_epochs} epochs (early stop "
        f"{params.reengineer.early_stop}), model selection on the `{params.select_on}` split, seed {params.seed}",
        "",
        "Differences from the paper's setting:",
    ]
    if d.name == "imagefolder":
        shift = (" It is the JPEG re-encoded CIFAR-10 copy: a real domain shift (the pretrained ResNet20 drops from "
                 "91.8% to 81.0% top-1), so original accuracies are lower than the paper's."
                 if "cifar10-jpeg" in str(d.source) else "")
        lines.append(f"- Images from an image folder (`{d.source}`), not torchvision's CIFAR download.{shift}")
    if params.reengineer.max_epochs < PAPER_EPOCHS:
        lines.append(f"- Searches stop at {params.reengineer.max_epochs} epochs (the paper: up to {PAPER_EPOCHS}).")
    capped = [n for n, s in params.targets.items() if isinstance(s, dict) and s.get("train_per_class")]
    if capped:
        lines.append(f"- CPU-sized target slices: {', '.join(f'`{n}`' for n in capped)} "
                     "(`train_per_class` / `test_per_class`).")
    lines.append(f"- Defect inheritance: `{params.model.name}` reused on {defects['settings']['classes']} "
                 f"({params.defects.train_per_class} training, {params.defects.test_per_class} test images per "
                 "class), not ImageNet ResNet18/50 on the five transfer datasets; fine-tuning up to "
                 f"{params.defects.finetune.max_epochs} epochs.")
    lines.append(f"- Latency on {overhead['cores']} cores, median of interleaved pairs (the paper: a 64-core "
                 "server, mean of 200 runs).")
    return lines


def main(reengineering: Path, overhead: Path, retraining: Path, defects: Path, reengineer_logs: Path,
         paper_file: Path, out: Path, convergence_csv: Path) -> None:
    params = load_params()
    paper = load_paper(paper_file)
    rq1, rq2 = read_json(reengineering), read_json(overhead)
    retrained, rq3 = read_json(retraining), read_json(defects)
    frame = rq1_frame(rq1, rq2)
    tables = rq1_tables(frame, paper)
    retrain, retrain_paper = retraining_table(retrained, paper)
    rq3_table = defects_table(rq3, paper)
    logs = read_logs(reengineer_logs)
    missing = sorted(set(frame["target"]) - set(logs))
    if missing:
        raise ReportError(f"{reengineer_logs}: no per-epoch log for {missing}")

    # One file, one line per target (dvc.yaml colours by the `target` column), for `dvc plots diff`.
    write_csv([{"target": name, "epoch": int(r.epoch), "retention": r.retention, "val_acc": r.val_acc,
                "test_acc": r.test_acc} for name in frame["target"] for r in logs[name].itertuples()],
              convergence_csv)

    # Built beside `out` and swapped in whole: a failure leaves the previous report intact.
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        figures.rq1_overview(frame, build / "rq1_overview.png")
        figures.convergence({n: logs[n] for n in frame["target"]}, dict(zip(frame["target"], frame["kind"])),
                            build / "fig5_convergence.png")
        figures.retraining(retrain, build / "table4_retraining.png")
        figures.defects(rq3_table, build / "rq3_defects.png")
        page = ["# SeaM pipeline report", "",
                f"Generated on {datetime.date.today().isoformat()} by the `report` stage from `metrics/` and "
                "`plots/`; the paper's numbers (Qi et al., ICSE 2023) come from `reference/paper.yaml`, which names "
                "the table or figure of each.", "", "## Setting", "", *setting(params, rq2, rq3), "",
                "## RQ1 and RQ2 at a glance", "", "![original vs re-engineered per target](rq1_overview.png)", ""]
        for m in MEASURES:
            grouped, per_target = tables[m]
            page += [f"## {m.table}: {m.title} ({m.unit})", "",
                     "One row per model and problem kind, averaged over its targets"
                     + (" (a reduction is the mean of the per-target reductions)" if m.change == "reduction" else "")
                     + "; `difference` = ours - paper.", "", markdown(grouped, m.digits), "",
                     "Per target:", "", markdown(per_target, m.digits), ""]
        dense = frame[["target", "granularity", "ort_original", "ort_reengineered", "flops_compact",
                       "compact_ort_original", "compact_ort_reengineered", "compact_torch_masked",
                       "compact_torch"]].copy()
        dense["flops_compact"] /= 1e6
        page += ["## Dense engines: the compact export", "",
                 f"ms per batch of {rq2['batch']}. onnxruntime runs the masked model (`masked`) and its compact "
                 "export, each against the original, in interleaved pairs; torch runs the compact export against "
                 "the masked model (the original network's compute, with the new head). A weight-level mask only "
                 "pays on a sparse engine; a channel-level one (`reengineer.granularity: channel`) is smaller "
                 "and faster on any engine.", "",
                 markdown(dense.rename(columns={
                     "ort_original": "ort original", "ort_reengineered": "ort masked",
                     "flops_compact": "compact MFLOPs", "compact_ort_original": "ort original (pair 2)",
                     "compact_ort_reengineered": "ort compact", "compact_torch_masked": "torch masked",
                     "compact_torch": "torch compact"})), "",
                 "## Fig. 5: convergence", "", "![convergence](fig5_convergence.png)", "",
                 "## Table IV: retraining from scratch vs re-engineering (test accuracy, %)", "",
                 "![retraining](table4_retraining.png)", "", markdown(retrain, 1), "",
                 "The paper (averages over its multi-class targets):", "", markdown(retrain_paper, 2), "",
                 f"## RQ3: defect inheritance (dropout {rq3['settings']['dropout']})", "",
                 "![defects](rq3_defects.png)", "",
                 "ACC, DIR and the removed share of the weights, in %; `paper` columns: the paper's averages over "
                 "five transfer datasets for the same dropout setting.", "", markdown(rq3_table, 1), ""]
        (build / "README.md").write_text("\n".join(page))
        os.chmod(build, 0o755)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        build.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    print(f"report: {out / 'README.md'} and {len(list(out.glob('*.png')))} figures")


if __name__ == "__main__":
    run_stage(main)
