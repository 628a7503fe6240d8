"""DVC stage `prepare`: decode the raw dataset once and write each target problem as tensors."""

from __future__ import annotations

import shutil
from pathlib import Path

from seam.datasets import load_dataset
from seam.errors import run_stage
from seam.params import load_params
from seam.targets import build_target, parse_targets


def main(raw_dir: Path, out: Path) -> None:
    params = load_params()
    raw = load_dataset(params.dataset, raw_dir)
    specs = parse_targets(params.targets, raw)  # validate every target before writing any
    # Stale files of removed targets must not linger in a DVC output.
    shutil.rmtree(out, ignore_errors=True)
    for spec in specs:
        problem = build_target(raw, spec, seed=params.seed, val_fraction=params.prepare.val_fraction)
        problem.save(out / f"{spec.name}.pt")
        print(f"{spec.name}: {spec.kind} {spec.class_names} "
              f"train {len(problem.train_y)} val {len(problem.val_y)} test {len(problem.test_y)}")


if __name__ == "__main__":
    run_stage(main)
