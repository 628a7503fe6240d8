"""The paper's tables from the pipeline's own metrics, beside the paper's numbers.

Builds pandas tables from the loaded files (``seam.report.inputs``): :func:`rq1_frame` and
:func:`rq1_tables` (Tables I, II, V, VI), :func:`retraining_table` (Table IV),
:func:`defects_table` (RQ3), and their Markdown (:func:`markdown`); ``seam.report.figures``
draws them and ``seam.report.page`` writes the page around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd

from seam.report.inputs import Doc

MULTI = "multi-class"
# Which model a row's re-engineered weights and FLOPs count: a weight-level mask's non-zero
# weights (the paper's rule), or, for a channel target, its compact export: what a user deploys.
MASKED, COMPACT = "masked, non-zero", "compact model"


def kind_of(target_kind: str) -> str:
    """The paper's problem kind of a target: binary, or multi-class (classes, superclass)."""
    return "binary" if target_kind == "binary" else MULTI


def _paper_row(paper: list[dict], model: str, kind: str | None = None) -> dict | None:
    for row in paper:
        if model in row["models"] and (kind is None or row["kind"] == kind):
            return row
    return None


def rq1_frame(reengineering: Doc, overhead: Doc) -> pd.DataFrame:
    """One row per target: weights, accuracy, FLOPs and latency of original and re-engineered.

    A channel target's re-engineered weights and FLOPs are its compact model's
    (``weights_compact``, ``flops_compact``); ``counted`` says which a row uses.
    """
    rows = []
    for name in reengineering.get("targets"):
        t, o = partial(reengineering.get, "targets", name), partial(overhead.get, "targets", name)
        compact = t("granularity") == "channel"
        rows.append({
            "target": name, "model": reengineering.get("model"), "kind": kind_of(t("kind")),
            "granularity": t("granularity"), "counted": COMPACT if compact else MASKED,
            "weights_original": t("weights_total"),
            "weights_reengineered": o("weights_compact") if compact else t("weights_kept"),
            "acc_original": 100 * t("acc_original"), "acc_reengineered": 100 * t("acc_reengineered"),
            "flops_original": o("flops_original"),
            "flops_reengineered": o("flops_compact") if compact else o("flops_reengineered"),
            # DeepSparse may be unavailable (the metrics then hold the reason, not a figure)
            "ds_original": o().get("latency_ms_original", math.nan),
            "ds_reengineered": o().get("latency_ms_reengineered", math.nan),
            "ort_original": o("ort_latency_ms_original"), "ort_reengineered": o("ort_latency_ms_reengineered"),
            "flops_compact": o("flops_compact"),
            "compact_ort_original": o("compact_ort_latency_ms_original"),
            "compact_ort_reengineered": o("compact_ort_latency_ms_compact"),
            "compact_torch_masked": o("compact_torch_latency_ms_masked"),
            "compact_torch": o("compact_torch_latency_ms_compact"),
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
    counted: bool = False  # a channel target counts its compact model: the tables say which count

    @property
    def label(self) -> str:
        return "reduction (%)" if self.change == "reduction" else "increase (points)"


MEASURES = (
    Measure("Table I", "Weights", "weights", "M", 1e6, "reduction", 3, counted=True),
    Measure("Table II", "Accuracy on the target problems", "acc", "%", 1, "increase", 2),
    Measure("Table V", "FLOPs for one image", "flops", "M", 1e6, "reduction", 2, counted=True),
    Measure("Table VI", "DeepSparse latency", "latency", "ms/batch", 1, "reduction", 2),
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
        if m.counted:
            per_target["counted"] = frame["counted"]
        grouped = []
        for (model, kind, grain), g in frame.groupby(["model", "kind", "granularity"], sort=False):
            rows = per_target.loc[g.index]
            orig, new = rows["original"].mean(), rows["re-engineered"].mean()
            ours = _change(m, orig, new) if m.change == "increase" else rows[m.label].mean()
            ref = _paper_row(paper["rq1"], model, kind) if grain == "weight" else None
            p_orig, p_new, theirs = ref[m.key] if ref else (math.nan, math.nan, math.nan)
            counted = {"counted": g["counted"].iloc[0]} if m.counted else {}  # one granularity: one count
            grouped.append({"model": model, "kind": kind, "granularity": grain, **counted, "targets": len(g),
                            "original": orig, "re-engineered": new, m.label: ours,
                            "paper row": ref["row"] if ref else "-", "paper original": p_orig,
                            "paper re-engineered": p_new, f"paper {m.label}": theirs, "difference": ours - theirs})
        out[m] = (pd.DataFrame(grouped), per_target)
    return out


def retraining_table(retraining: Doc, paper: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table IV: (retrained vs re-engineered test accuracy per target, the paper's rows)."""
    rows = []
    for name in retraining.get("targets"):
        t = partial(retraining.get, "targets", name)
        rows.append({"target": name, "classes": len(t("classes")), "train images": t("n_train"),
                     "retrained": 100 * t("acc_retrained"), "re-engineered": 100 * t("acc_reengineered"),
                     "increase": 100 * t("increase"), "retrain epochs": t("retrain_epochs"),
                     "retrain s": t("retrain_seconds"), "re-engineer epochs": t("reengineer_epochs"),
                     "re-engineer s": t("reengineer_seconds")})
    paper_rows = pd.DataFrame([{"row": r["row"], "retrained": r["retrained"], "re-engineered": r["reengineered"],
                                "increase": r["increase"], "source": r["source"]}
                               for r in paper["retraining"]])
    return pd.DataFrame(rows), paper_rows


FLOWS = ("standard", "remos", "seam")
FLOW_NAMES = {"standard": "standard fine-tuning", "remos": "ReMoS", "seam": "SeaM"}


def defects_table(defects: Doc, paper: dict) -> pd.DataFrame:
    """RQ3: ACC, DIR and removed share per method, with the paper's averages (same dropout setting)."""
    dropout = defects.get("settings", "dropout") > 0
    refs = [r for r in paper["defects"] if r["dropout"] == dropout]
    rows = []
    for flow in FLOWS:
        row = {"method": FLOW_NAMES[flow], "ACC": 100 * defects.get(f"acc_{flow}"),
               "DIR": 100 * defects.get(f"dir_{flow}"), "removed": 100 * defects.get(f"removed_rate_{flow}")}
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

