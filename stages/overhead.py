"""DVC stage `overhead`: metrics/overhead.json from the FLOPs and latency results (RQ2)."""

from __future__ import annotations

import json
from pathlib import Path

from seam.core.atomic import write_json
from seam.core.stage import run_stage
from seam.core.params import load_params

# metrics key prefix -> (engine entry in latency.json, what A and B are)
ENGINES = {
    "": ("deepsparse", "original", "reengineered"),
    "ort_": ("onnxruntime", "original", "reengineered"),
    "compact_ort_": ("compact_onnxruntime", "original", "compact"),
    "compact_torch_": ("compact_torch", "masked", "compact"),
}


def target_metrics(flops: dict, latency: dict) -> dict:
    """Every key of results/flops.json as written (FLOPs and weight counts: the report reads
    ``weights_compact`` from here), and each engine's latency keys; those of single images
    (batch 1) prefixed ``b1_``."""
    out = dict(flops)
    out.update(_latency(latency))
    if "batch1" in latency:
        out.update({f"b1_{k}": v for k, v in _latency(latency["batch1"]).items()})
    return out


def _latency(latency: dict) -> dict:
    out = {}
    for prefix, (engine, a, b) in ENGINES.items():
        summary = latency[engine]
        if isinstance(summary, str):  # e.g. "unavailable: ..." — never a made-up figure
            out[f"{prefix}latency"] = summary
            continue
        out.update({
            f"{prefix}latency_ms_{a}": summary["ms_a"],
            f"{prefix}latency_ms_{a}_std": summary["ms_a_std"],
            f"{prefix}latency_ms_{b}": summary["ms_b"],
            f"{prefix}latency_ms_{b}_std": summary["ms_b_std"],
            f"{prefix}latency_reduction": summary["reduction"],
        })
    return out


def main(flops_file: Path, latency_file: Path, out: Path) -> None:
    params = load_params()
    names, headline = list(params.targets), params.headline_targets()
    flops, latency = json.loads(flops_file.read_text()), json.loads(latency_file.read_text())
    per_target = {n: target_metrics(flops["targets"][n], latency["targets"][n]) for n in names}
    first, rows = per_target[headline[0]], [per_target[n] for n in headline]
    numeric = [k for k, v in first.items()
               if isinstance(v, (int, float)) and all(isinstance(t.get(k), (int, float)) for t in rows)]
    means = {k: sum(t[k] for t in rows) / len(rows) for k in numeric}
    # A reduction of means is not the mean of reductions; the top level reports the mean per-target figure.
    unavailable = {k: v for k, v in first.items() if isinstance(v, str)}
    write_json({**means, **unavailable, "n_targets": len(headline), "batch": latency["batch"], "cores": latency["cores"],
                "engines": latency["engines"], "targets": per_target}, out)
    print(json.dumps({k: round(v, 4) for k, v in means.items() if "reduction" in k}))


if __name__ == "__main__":
    run_stage(main)
