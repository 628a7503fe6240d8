"""The report's figures (matplotlib, Agg backend: no display needed), each written atomically as PNG."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from seam.core.atomic import atomic_path  # noqa: E402
from seam.report.tables import COMPACT  # noqa: E402

ORIGINAL, REENGINEERED, RETRAINED = "#9e9e9e", "#1f77b4", "#ff7f0e"
FLOW_COLORS = {"standard fine-tuning": "#9e9e9e", "ReMoS": "#ff7f0e", "SeaM": "#1f77b4"}


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def convergence(logs: dict[str, pd.DataFrame], kinds: dict[str, str], path: str | os.PathLike) -> None:
    """Fig. 5: weight retention and test accuracy per epoch, one panel per problem kind; the first
    target of a kind in full colour, the others faint."""
    panels = [k for k in ("binary", "multi-class") if k in kinds.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, kind in zip(axes[0], panels):
        names = [n for n in logs if kinds.get(n) == kind]
        for i, name in enumerate(names):
            log = logs[name]
            alpha, width = (1.0, 2.0) if i == 0 else (0.25, 1.0)
            label = (lambda s: f"{s} ({name})") if i == 0 else (lambda s: None)
            ax.plot(log["epoch"], log["retention"], color=REENGINEERED, alpha=alpha, lw=width,
                    label=label("weight retention"))
            ax.plot(log["epoch"], log["test_acc"], color=RETRAINED, alpha=alpha, lw=width, ls="--",
                    label=label("test accuracy"))
        ax.set(title=f"{kind} target problems ({len(names)})", xlabel="epoch", ylabel="share (0-1)", ylim=(0, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("Re-engineering convergence (the paper's Fig. 5)")
    _save(fig, path)


def _bars(ax, labels: list[str], series: dict[str, list[float]], colors: list[str], ylabel: str, title: str,
          legend: bool = True) -> None:
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, ((name, values), color) in enumerate(zip(series.items(), colors)):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=color)
        if len(labels) <= 12:  # beyond that the values overlap; the report's tables hold them
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
    # Slanted once the names would touch: many targets, or a few long names (airplane_channel).
    slant = len(labels) > 4 or len(labels) * max(map(len, labels), default=0) > 40
    ax.set_xticks(x, labels, rotation=30 if slant else 0, ha="right" if slant else "center")
    ax.set(ylabel=ylabel, title=title)
    ax.margins(y=0.15)
    if legend:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def rq1_overview(frame: pd.DataFrame, path: str | os.PathLike, batch: int) -> None:
    """Per target: weights, accuracy, FLOPs and latency (DeepSparse, onnxruntime; the compact
    export on onnxruntime) before and after, latency per batch of ``batch`` images. A channel
    target's weights and FLOPs are its compact model's (``frame["counted"]``), and the panels say so."""
    labels = list(frame["target"])
    per_batch = f"ms per batch of {batch}"
    # Only where a channel target is shown: the weight-level panels keep their titles.
    compact = "\n(channel targets: the compact model)" if (frame["counted"] == COMPACT).any() else ""
    panels = [
        ("weights", 1e3, "weights (thousands)", f"Weights (Table I){compact}"),
        ("acc", 1, "test accuracy (%)", "Accuracy on the target problem (Table II)"),
        ("flops", 1e6, "MFLOPs per image", f"FLOPs, non-zero weights only (Table V){compact}"),
        ("ds", 1, per_batch, "DeepSparse latency (Table VI)"),
        ("ort", 1, per_batch, "onnxruntime latency (a dense engine)"),
        ("compact_ort", 1, per_batch, "onnxruntime, compact export"),
    ]
    # A few targets: a 2x3 grid. A grid of targets: one full-width panel per measure.
    stacked = len(labels) > 4
    if stacked:
        fig, axes = plt.subplots(len(panels), 1, figsize=(min(40, max(12, 2 + 0.8 * len(labels))), 16), squeeze=False)
    else:
        fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    for ax, (key, scale, ylabel, title) in zip(axes.flat, panels):
        _bars(ax, labels, {"original": list(frame[f"{key}_original"] / scale),
                           "re-engineered": list(frame[f"{key}_reengineered"] / scale)},
              [ORIGINAL, REENGINEERED], ylabel, title, legend=False)
    acc = frame[["acc_original", "acc_reengineered"]]
    axes.flat[1].set_ylim(max(0, acc.min().min() - 15), 100)
    handles = axes[0, 0].get_legend_handles_labels()
    if stacked:  # above the first panel, right of its title
        axes[0, 0].legend(*handles, loc="lower right", bbox_to_anchor=(1, 1), ncols=2, fontsize=9, frameon=False)
    else:  # the top-left corner, beside the centred title
        fig.legend(*handles, loc="upper left", bbox_to_anchor=(0.01, 0.995), ncols=2, fontsize=10, frameon=False)
    fig.suptitle("Original vs re-engineered model, per target problem")
    _save(fig, path)


def defects(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """RQ3: ACC and DIR per method as grouped bars; the paper's averages as markers."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(table["method"])
    markers = ["D", "s", "^"]
    x = np.arange(len(methods))
    for ax, metric in zip(axes, ("ACC", "DIR")):
        bars = ax.bar(x, table[metric], 0.6, color=[FLOW_COLORS[m] for m in methods])
        ax.bar_label(bars, fmt="%.1f", fontsize=9, padding=2)
        # The paper's averages beside the bars (not on them), so no marker hides a value.
        paper_cols = [c for c in table.columns if c.startswith("paper ") and c.endswith(f" {metric}")]
        for i, (col, marker) in enumerate(zip(paper_cols, markers)):
            ax.scatter(x + 0.36 + 0.1 * i, table[col], marker=marker, color="black", zorder=3, s=28,
                       label=col.replace(f" {metric}", "").replace("paper ", "paper, "))
        ax.set_xticks(x, methods)
        ax.set(ylabel=f"{metric} (%)", title={"ACC": "Clean accuracy (ACC)",
                                              "DIR": "Defect inheritance rate (DIR)"}[metric], ylim=(0, 105))
        ax.grid(axis="y", alpha=0.3)
        if paper_cols:
            ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Defect inheritance (RQ3): reuse by fine-tuning, attacked with the same inputs")
    _save(fig, path)


def retraining(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Table IV: retrained from scratch vs re-engineered test accuracy per target."""
    fig, ax = plt.subplots(figsize=(min(24, max(5, 1.2 * len(table) + 3)), 4))
    _bars(ax, list(table["target"]), {"retrained from scratch": list(table["retrained"]),
                                      "re-engineered": list(table["re-engineered"])},
          [RETRAINED, REENGINEERED], "test accuracy (%)", "Retraining vs re-engineering (Table IV)")
    ax.set_ylim(max(0, table[["retrained", "re-engineered"]].min().min() - 20), 100)
    _save(fig, path)
