"""DVC stage `prepare_defects`: the target dataset of the defect-inheritance experiment (RQ3),
a problem whose label space differs from the pretrained model's, as tensors."""

from __future__ import annotations

from pathlib import Path

from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.data.sources import load_dataset
from seam.data.targets import build_target, parse_target


def main(raw_dir: Path, out: Path) -> None:
    params = load_params()
    raw = load_dataset(params.dataset, raw_dir)
    spec = parse_target("defects", params.defects.target, raw, key="defects.target")
    problem = build_target(raw, spec, seed=params.seed, val_fraction=params.prepare.val_fraction)
    problem = problem.capped(params.defects.train_per_class, params.defects.test_per_class, seed=params.seed)
    problem.save(out)
    print(f"defects target: {spec.kind} {spec.class_names}: train {len(problem.train_y)} "
          f"val {len(problem.val_y)} test {len(problem.test_y)}")


if __name__ == "__main__":
    run_stage(main)
