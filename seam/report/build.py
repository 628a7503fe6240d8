"""The report's content, from the loaded files: the tables (``seam.report.tables``), the figures
(``seam.report.figures``) and the convergence CSV's rows; ``seam.report.page`` writes the page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from seam.report import figures
from seam.report.inputs import Doc, ReportError
from seam.report.tables import Measure, defects_table, retraining_table, rq1_frame, rq1_tables

FIGURES = ("rq1_overview", "fig5_convergence", "table4_retraining", "rq3_defects")


@dataclass(frozen=True)
class Run:
    """The params.yaml settings the page shows: the stage passes those its dvc.yaml entry lists."""

    model: str
    dataset: str
    source: str | None             # an image folder's (or a local CIFAR copy's) path or URL
    targets: dict[str, Any]        # name -> spec, as in params.yaml
    seed: int
    alpha: float
    select_on: str
    search: dict[str, Any]         # the `reengineer` section
    defects_train_per_class: int | None
    defects_test_per_class: int | None
    defects_finetune_epochs: int


@dataclass(frozen=True)
class Report:
    """Everything the page and the figures show."""

    run: Run
    paper: dict                    # reference/paper.yaml
    overhead: Doc                  # metrics/overhead.json (machine, engines, batch)
    defects: Doc                   # metrics/defect_inheritance.json (its settings)
    frame: pd.DataFrame            # rq1_frame: one row per target
    rq1: dict[Measure, tuple[pd.DataFrame, pd.DataFrame]]
    retrain: pd.DataFrame
    retrain_paper: pd.DataFrame
    rq3: pd.DataFrame
    logs: dict[str, pd.DataFrame]  # per-epoch search logs of the frame's targets

    @property
    def batch(self) -> int:
        return self.overhead.get("batch")


def build_report(run: Run, paper: dict, reengineering: Doc, overhead: Doc, retraining: Doc, defects: Doc,
                 logs: dict[str, pd.DataFrame], logs_dir: str | Path) -> Report:
    """The tables from the loaded files; a target without its per-epoch log is an error."""
    frame = rq1_frame(reengineering, overhead)
    missing = sorted(set(frame["target"]) - set(logs))
    if missing:
        raise ReportError(f"{logs_dir}: no per-epoch log for {missing}")
    retrain, retrain_paper = retraining_table(retraining, paper)
    return Report(run=run, paper=paper, overhead=overhead, defects=defects, frame=frame,
                  rq1=rq1_tables(frame, paper), retrain=retrain, retrain_paper=retrain_paper,
                  rq3=defects_table(defects, paper), logs={n: logs[n] for n in frame["target"]})


def draw_figures(report: Report, directory: Path) -> None:
    """The page's PNGs (:data:`FIGURES`) into ``directory``."""
    frame = report.frame
    figures.rq1_overview(frame, directory / "rq1_overview.png", report.batch)
    figures.convergence(report.logs, dict(zip(frame["target"], frame["kind"])), directory / "fig5_convergence.png")
    figures.retraining(report.retrain, directory / "table4_retraining.png")
    figures.defects(report.rq3, directory / "rq3_defects.png")


def convergence_rows(report: Report) -> list[dict]:
    """One row per target and epoch, for ``dvc plots`` (dvc.yaml colours by ``target``)."""
    return [{"target": name, "epoch": int(r.epoch), "retention": r.retention, "val_acc": r.val_acc,
             "test_acc": r.test_acc} for name, log in report.logs.items() for r in log.itertuples()]
