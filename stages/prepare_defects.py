"""DVC stage `prepare_defects`: the target dataset of the defect-inheritance experiment (RQ3),
a problem whose label space differs from the pretrained model's, as tensors."""

from __future__ import annotations

from pathlib import Path

from seam.datasets import load_dataset
from seam.errors import run_stage
from seam.params import get, load_params
from seam.targets import build_target, parse_targets, save_target, subsample

RAW = Path("data/raw")
OUT = Path("data/defects/target.pt")


def main() -> None:
    params = load_params()
    raw = load_dataset(get(params, "dataset", dict), RAW)
    (problem,) = parse_targets({"defects": get(params, "defects.target", dict)}, raw)
    seed = get(params, "seed", int)
    val_fraction = get(params, "prepare.val_fraction", (int, float))
    data = build_target(raw, problem, seed=seed, val_fraction=val_fraction)
    train_cap = get(params, "defects.train_per_class", (int, type(None)))
    val_cap = None if train_cap is None else max(1, round(train_cap * val_fraction))
    data = subsample(data, {"train": train_cap, "val": val_cap,
                            "test": get(params, "defects.test_per_class", (int, type(None)))}, seed=seed)
    save_target(data, OUT)
    print(f"defects target: {problem.kind} {problem.class_names}: train {len(data['train_y'])} "
          f"val {len(data['val_y'])} test {len(data['test_y'])}")


if __name__ == "__main__":
    run_stage(main)
