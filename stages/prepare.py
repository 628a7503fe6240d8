"""DVC stage `prepare`: decode the raw dataset once and write each target problem as tensors,
and a summary of the dataset's images per class (a short class can be a partial download)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from seam.core.atomic import write_json
from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.data.sources import RawDataset, load_dataset
from seam.data.targets import build_target, parse_targets


def class_counts(raw: RawDataset) -> dict:
    """Images per class and split: {split: {class name: n}}."""
    return {split: dict(zip(raw.classes, torch.bincount(imgs.labels, minlength=len(raw.classes)).tolist()))
            for split, imgs in (("train", raw.train), ("test", raw.test))}


def count_metrics(counts: dict) -> dict:
    """Per split: images, the smallest and largest class. Only these reach the metrics file, so
    `dvc exp show` gets a few columns, not one per class, and a short class still shows."""
    out = {}
    for split, per_class in counts.items():
        smallest = min(per_class, key=per_class.__getitem__)
        out[split] = {"images": sum(per_class.values()), "per_class_min": per_class[smallest],
                      "per_class_max": max(per_class.values()), "smallest_class": smallest}
    return out


def main(raw_dir: Path, out: Path, counts_file: Path) -> None:
    params = load_params()
    raw = load_dataset(params.dataset, raw_dir)
    specs = parse_targets(params.targets, raw)  # validate every target before writing any
    counts = class_counts(raw)
    summary = count_metrics(counts)
    for split, c in summary.items():
        print(f"{split}: {c['images']} images: " + ", ".join(f"{k} {n}" for k, n in counts[split].items()))
        if c["per_class_min"] < c["per_class_max"]:
            print(f"note: {split} class {c['smallest_class']!r} has {c['per_class_min']} images, the largest "
                  f"{c['per_class_max']} (a partial download or archive also looks like this)", file=sys.stderr)
    # Stale files of removed targets must not linger in a DVC output.
    shutil.rmtree(out, ignore_errors=True)
    for spec in specs:
        problem = build_target(raw, spec, seed=params.seed, val_fraction=params.prepare.val_fraction)
        problem.save(out / f"{spec.name}.pt")
        print(f"{spec.name}: {spec.kind} {spec.class_names} "
              f"train {len(problem.train_y)} val {len(problem.val_y)} test {len(problem.test_y)}")
    write_json(summary, counts_file)


if __name__ == "__main__":
    run_stage(main)
