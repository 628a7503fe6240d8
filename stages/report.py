"""DVC stage `report`: the paper's tables and figures from this run's metrics, beside the
paper's published numbers: `<out>/README.md` (renders on a code-hosting site) and PNG figures."""

from __future__ import annotations

import datetime
from pathlib import Path

from seam.core.atomic import atomic_dir, write_csv, write_text
from seam.core.params import Params, load_params
from seam.core.stage import run_stage
from seam.report.build import Run, build_report, convergence_rows, draw_figures
from seam.report.inputs import load_paper, read_json, read_logs
from seam.report.page import render


def run_of(params: Params) -> Run:
    """The settings the page shows; read here, where the dvc.yaml check sees what the stage reads."""
    return Run(model=params.model.name, dataset=params.dataset.name, source=params.dataset.source,
               targets=params.targets, seed=params.seed, alpha=params.alpha, select_on=params.select_on,
               search=params.reengineer.model_dump(), defects_train_per_class=params.defects.train_per_class,
               defects_test_per_class=params.defects.test_per_class,
               defects_finetune_epochs=params.defects.finetune.max_epochs)


def main(reengineering: Path, overhead: Path, retraining: Path, defects: Path, reengineer_logs: Path,
         paper_file: Path, out: Path, convergence_csv: Path) -> None:
    report = build_report(run_of(load_params()), load_paper(paper_file), read_json(reengineering), read_json(overhead),
                          read_json(retraining), read_json(defects), read_logs(reengineer_logs), reengineer_logs)
    page = render(report, datetime.date.today())
    # Built beside `out` and swapped in whole: a failure leaves the previous report intact.
    with atomic_dir(out) as build:
        draw_figures(report, build)
        write_text(page, build / "README.md")
    write_csv(convergence_rows(report), convergence_csv)
    print(f"report: {out / 'README.md'} and {len(list(out.glob('*.png')))} figures")


if __name__ == "__main__":
    run_stage(main)
