"""DVC stage `reengineer@<target>`: search the mask and head for one target problem."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from seam.artifact import save_artifact
from seam.atomic import write_csv
from seam.device import resolve_device
from seam.errors import run_stage
from seam.params import ParamsError, get, load_params
from seam.pretrained import load_pretrained
from seam.search import SearchConfig, config_dict, search
from seam.targets import load_target

PREPARED = Path("data/prepared")
OUT = Path("models/reengineered")
PLOTS = Path("plots/reengineer")
NUMBER = (int, float)
SEARCH_KEYS = {"lr_mask": NUMBER, "lr_head": NUMBER, "batch_size": int, "max_epochs": int, "early_stop": int,
               "select_on": str}


def main(target: str) -> None:
    params = load_params()
    if target not in get(params, "targets", dict):
        raise ParamsError(f"params.yaml: no target {target!r} under 'targets' (have {sorted(params['targets'])})")
    try:
        config = SearchConfig(
            alpha=float(get(params, "alpha", NUMBER)),
            seed=get(params, "seed", int),
            **{key: get(params, f"reengineer.{key}", kind) for key, kind in SEARCH_KEYS.items()},
        )
        device = resolve_device(get(params, "reengineer.device", str))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ParamsError):
            raise
        raise ParamsError(f"params.yaml: reengineer: {exc}") from exc
    data = load_target(PREPARED / f"{target}.pt")
    if config.select_on == "val" and len(data["val_y"]) == 0:
        raise ParamsError("params.yaml: reengineer.select_on is 'val' but prepare.val_fraction is 0 "
                          "(no validation images); set val_fraction > 0 or select_on: test")
    spec, original, info = load_pretrained()
    torch.set_float32_matmul_precision("high")  # TF32 on GPUs that have it; no effect on the CPU

    rows: list[dict] = []
    log_path = PLOTS / f"{target}.csv"

    def on_epoch(row: dict) -> None:
        rows.append(row)
        write_csv(rows, log_path)  # rewritten each epoch, so a long run can be watched

    print(f"re-engineering {spec.name} for {target} ({data['class_names']}) on {device}", file=sys.stderr)
    start = time.perf_counter()
    result = search(original, data, mean=spec.mean, std=spec.std, config=config, device=device, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    save_artifact(
        OUT / f"{target}.pt",
        masks=result.masks,
        head=result.head,
        meta={
            "model": spec.name,
            "model_sha256": info["sha256"],
            "num_outputs": spec.num_classes,
            "target": {k: data[k] for k in ("name", "kind", "source_classes", "class_names", "dataset")},
            "search": config_dict(config),
            "selected_epoch": result.selected_epoch,
            "epochs_run": len(result.history),
            "reached_target": result.reached_target,
            "acc_original": result.acc_original,
            "device": str(device),
            "seconds": round(seconds, 1),
        },
    )
    sel = result.history[result.selected_epoch]
    print(f"{target}: kept epoch {result.selected_epoch} of {len(result.history)} "
          f"(retention {sel['retention']:.4f}, {config.select_on} acc {sel[config.select_on + '_acc']:.4f} "
          f"vs original {result.acc_original[config.select_on]:.4f}) in {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/reengineer.py <target name from params.yaml>")
    run_stage(main, sys.argv[1])
