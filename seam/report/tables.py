"""The paper's tables and figures from the pipeline's own metrics, beside the paper's numbers.

Reads the metric JSONs, the per-epoch CSVs and ``reference/paper.yaml`` (the only place the
paper's numbers live) and builds pandas tables (:func:`rq1_tables`, :func:`retraining_table`,
:func:`defects_table`) and their Markdown (:func:`markdown`); ``seam.report.figures`` draws them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from seam.core.errors import SeamError


class ReportError(SeamError, ValueError):
    """A metrics, log or paper-numbers file the report cannot read."""


MULTI = "multi-class"


def kind_of(target_kind: str) -> str:
    """The paper's problem kind of a target: binary, or multi-class (classes, superclass)."""
    return "binary" if target_kind == "binary" else MULTI


def load_paper(path: str | os.PathLike) -> dict[str, list[dict]]:
    """The paper's numbers (``reference/paper.yaml``), checked for the keys the report reads."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: the paper's numbers file is missing")
    data = yaml.safe_load(path.read_text())
    need = {"rq1": ("row", "models", "kind", "weights", "acc", "flops", "latency", "source"),
            "retraining": ("row", "models", "retrained", "reengineered", "increase", "source"),
            "defects": ("row", "dropout", "source", "standard", "remos", "seam")}
    for section, keys in need.items():
        rows = data.get(section) if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise ReportError(f"{path}: expected a list under {section!r}")
        for i, row in enumerate(rows):
            missing = [k for k in keys if k not in row]
            if missing:
                raise ReportError(f"{path}: {section}[{i}] lacks {missing}")
    return data


def _paper_row(paper: list[dict], model: str, kind: str | None = None) -> dict | None:
    for row in paper:
        if model in row["models"] and (kind is None or row["kind"] == kind):
            return row
    return None


def rq1_frame(reengineering: dict, overhead: dict) -> pd.DataFrame:
    """One row per target: weights, accuracy, FLOPs and latency of original and re-engineered."""
    rows = []
    for name, t in reengineering["targets"].items():
        o = overhead["targets"].get(name)
        if o is None:
            raise ReportError(f"metrics/overhead.json has no target {name!r} (re-run the RQ2 stages)")
        rows.append({
            "target": name, "model": reengineering["model"], "kind": kind_of(t["kind"]),
            "granularity": t.get("granularity", "weight"),
            "weights_original": t["weights_total"], "weights_reengineered": t["weights_kept"],
            "acc_original": 100 * t["acc_original"], "acc_reengineered": 100 * t["acc_reengineered"],
            "flops_original": o["flops_original"], "flops_reengineered": o["flops_reengineered"],
            "ds_original": o.get("latency_ms_original", math.nan),
            "ds_reengineered": o.get("latency_ms_reengineered", math.nan),
            "ort_original": o["ort_latency_ms_original"], "ort_reengineered": o["ort_latency_ms_reengineered"],
            "flops_compact": o["flops_compact"],
            "compact_ort_original": o["compact_ort_latency_ms_original"],
            "compact_ort_reengineered": o["compact_ort_latency_ms_compact"],
            "compact_torch_masked": o["compact_torch_latency_ms_masked"],
            "compact_torch": o["compact_torch_latency_ms_compact"],
        })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Measure:
    """One of the paper's RQ1 tables: which columns, their unit and scale, and the change reported."""

    table: str
    title: str
    key: str          # paper.yaml key and column prefix
    unit: str
    scale: float      # ours / scale = the paper's unit
    change: str       # "reduction" (1 - new/old, %) or "increase" (new - old, points)
    digits: int

    @property
    def label(self) -> str:
        return "reduction (%)" if self.change == "reduction" else "increase (points)"


MEASURES = (
    Measure("Table I", "Weights", "weights", "M", 1e6, "reduction", 3),
    Measure("Table II", "Accuracy on the target problems", "acc", "%", 1, "increase", 2),
    Measure("Table V", "FLOPs for one image", "flops", "M", 1e6, "reduction", 2),
    Measure("Table VI", "DeepSparse latency, batch 16", "latency", "ms/batch", 1, "reduction", 2),
)
_COLUMN = {"weights": "weights", "acc": "acc", "flops": "flops", "latency": "ds"}


def _change(m: Measure, old: float, new: float) -> float:
    return 100 * (1 - new / old) if m.change == "reduction" else new - old


def rq1_tables(frame: pd.DataFrame, paper: dict) -> dict[Measure, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per measure: (one row per model x kind x granularity, averaged over its targets, beside
    the paper's row where the paper has one: weight granularity; one row per target)."""
    out = {}
    for m in MEASURES:
        col = _COLUMN[m.key]
        per_target = pd.DataFrame({
            "target": frame["target"], "kind": frame["kind"],
            "original": frame[f"{col}_original"] / m.scale,
            "re-engineered": frame[f"{col}_reengineered"] / m.scale,
        })
        per_target[m.label] = [_change(m, a, b) for a, b in zip(per_target["original"], per_target["re-engineered"])]
        grouped = []
        for (model, kind, grain), g in frame.groupby(["model", "kind", "granularity"], sort=False):
            rows = per_target.loc[g.index]
            orig, new = rows["original"].mean(), rows["re-engineered"].mean()
            ours = _change(m, orig, new) if m.change == "increase" else rows[m.label].mean()
            ref = _paper_row(paper["rq1"], model, kind) if grain == "weight" else None
            p_orig, p_new, theirs = ref[m.key] if ref else (math.nan, math.nan, math.nan)
            grouped.append({"model": model, "kind": kind, "granularity": grain, "targets": len(g), "original": orig,
                            "re-engineered": new, m.label: ours, "paper row": ref["row"] if ref else "-",
                            "paper original": p_orig, "paper re-engineered": p_new, f"paper {m.label}": theirs,
                            "difference": ours - theirs})
        out[m] = (pd.DataFrame(grouped), per_target)
    return out


def retraining_table(retraining: dict, paper: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table IV: (retrained vs re-engineered test accuracy per target, the paper's rows)."""
    rows = []
    for name, t in retraining["targets"].items():
        rows.append({"target": name, "classes": len(t["classes"]), "train images": t["n_train"],
                     "retrained": 100 * t["acc_retrained"], "re-engineered": 100 * t["acc_reengineered"],
                     "increase": 100 * t["increase"], "retrain epochs": t["retrain_epochs"],
                     "retrain s": t["retrain_seconds"], "re-engineer epochs": t["reengineer_epochs"],
                     "re-engineer s": t["reengineer_seconds"]})
    paper_rows = pd.DataFrame([{"row": r["row"], "retrained": r["retrained"], "re-engineered": r["reengineered"],
                                "increase": r["increase"], "source": r["source"]}
                               for r in paper["retraining"]])
    return pd.DataFrame(rows), paper_rows


FLOWS = ("standard", "remos", "seam")
FLOW_NAMES = {"standard": "standard fine-tuning", "remos": "ReMoS", "seam": "SeaM"}


def defects_table(defects: dict, paper: dict) -> pd.DataFrame:
    """RQ3: ACC, DIR and removed share per method, with the paper's averages (same dropout setting)."""
    dropout = defects["settings"]["dropout"] > 0
    refs = [r for r in paper["defects"] if r["dropout"] == dropout]
    rows = []
    for flow in FLOWS:
        row = {"method": FLOW_NAMES[flow], "ACC": 100 * defects[f"acc_{flow}"], "DIR": 100 * defects[f"dir_{flow}"],
               "removed": 100 * defects[f"removed_rate_{flow}"]}
        for r in refs:
            for metric in ("acc", "dir"):
                if metric in r[flow]:
                    row[f"paper {r['row']} {metric.upper()}"] = r[flow][metric]
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table; floats rounded, NaN as '-'."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:,.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def read_logs(directory: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The per-epoch CSVs of a plots directory, by file stem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"{directory}: no per-epoch logs (run the stages that write them)")
    return {p.stem: pd.read_csv(p) for p in sorted(directory.glob("*.csv"))}
