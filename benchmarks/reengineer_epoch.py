"""Seconds per re-engineering epoch and peak RSS: ResNet20 on the 10,000-image
airplane-vs-rest problem (CIFAR-10 class 0 vs an equal number of other images).

    uv run python benchmarks/reengineer_epoch.py                 # uses ../shared
    uv run python benchmarks/reengineer_epoch.py --device cuda

Prints one line per epoch and a summary. Epoch 0 trains only the head (the schedule's
1-in-5 head-only epoch); the figure to quote is the mean of the joint (head+mask) epochs,
training on all 10,000 images plus the per-epoch evaluation on the 2,000 test images.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from seam.datasets import download_dataset, load_dataset
from seam.device import resolve_device
from seam.params import DatasetParams
from seam.registry import get_spec, load_model
from seam.search import SearchConfig, search
from seam.selection import AccuracyTarget
from seam.targets import build_target, parse_targets

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=SHARED / "datasets" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--checkpoint", type=Path, default=SHARED / "models" / "resnet20-12fca82f.th")
    parser.add_argument("--epochs", type=int, default=4, help="epochs to run (the first trains the head only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cfg = DatasetParams(name="imagefolder", source=str(args.archive))
    with tempfile.TemporaryDirectory() as tmp:
        download_dataset(cfg, Path(tmp) / "raw")
        raw = load_dataset(cfg, Path(tmp) / "raw")
    problem = parse_targets({"airplane": {"binary": 0}}, raw)[0]
    data = build_target(raw, problem, seed=0, val_fraction=0.0)
    spec = get_spec("resnet20")
    model = load_model(spec, args.checkpoint)
    config = SearchConfig(alpha=1.0, lr_mask=0.05, lr_head=0.1, batch_size=args.batch_size, max_epochs=args.epochs,
                          select_on="test", seed=0)

    marks = [time.perf_counter()]
    rows = []

    def on_epoch(row: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        rows.append(row)
        print(f"epoch {row['epoch']} ({row['phase']}): {marks[-1] - marks[-2]:.2f} s, retention {row['retention']:.3f}",
              flush=True)

    search(model, data, mean=spec.mean, std=spec.std, config=config, stop=AccuracyTarget.factory(0), device=device,
           progress=False, on_epoch=on_epoch)
    joint = [marks[i + 1] - marks[i] for i, r in enumerate(rows) if r["phase"] == "head+mask"]
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"device {device}, threads {torch.get_num_threads()}, train images {len(data.train_y)}, "
          f"batch {args.batch_size}")
    if joint:
        print(f"seconds per joint epoch: {sum(joint) / len(joint):.2f} (min {min(joint):.2f}, n={len(joint)})")
    print(f"peak RSS: {rss_gib:.2f} GiB")


if __name__ == "__main__":
    main()
