"""DVC stage `prepare`: decode the raw dataset once and write each target problem as tensors."""

from __future__ import annotations

import shutil
from pathlib import Path

from seam.datasets import load_dataset
from seam.errors import run_stage
from seam.params import get, load_params
from seam.targets import build_target, parse_targets, save_target

RAW = Path("data/raw")
OUT = Path("data/prepared")


def main() -> None:
    params = load_params()
    raw = load_dataset(get(params, "dataset", dict), RAW)
    problems = parse_targets(get(params, "targets", dict), raw)  # validate every target before writing any
    seed = get(params, "seed", int)
    val_fraction = get(params, "prepare.val_fraction", (int, float))
    # Stale files of removed targets must not linger in a DVC output.
    shutil.rmtree(OUT, ignore_errors=True)
    for problem in problems:
        data = build_target(raw, problem, seed=seed, val_fraction=val_fraction)
        save_target(data, OUT / f"{problem.name}.pt")
        print(f"{problem.name}: {problem.kind} {problem.class_names} "
              f"train {len(data['train_y'])} val {len(data['val_y'])} test {len(data['test_y'])}")


if __name__ == "__main__":
    run_stage(main)
