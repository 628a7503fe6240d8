"""Seconds per re-engineering epoch and peak RSS: ResNet20 on the 10,000-image
airplane-vs-rest problem (CIFAR-10 class 0 vs an equal number of other images).

    uv run python benchmarks/reengineer_epoch.py                 # uses ../shared; fp32 and bf16
    uv run python benchmarks/reengineer_epoch.py --device cuda --precision fp32,bf16 --epochs 6

Each precision (`reengineer.precision`) runs the same search in its own process, one after
the other, so each reports its own peak RSS; the summary sets them side by side. Epoch 0
trains only the head (the schedule's 1-in-5 head-only epoch); the figure to quote is the mean
of the joint (head+mask) epochs, training on all 10,000 images plus the per-epoch evaluation
on the 2,000 test images. The last epoch's retention and test accuracy show whether the
cheaper arithmetic changed the result.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import torch

from seam.datasets import download_dataset, load_dataset
from seam.device import resolve_device
from seam.params import DatasetParams
from seam.problem import TargetProblem
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
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated reengineer.precision values")
    args = parser.parse_args()

    cfg = DatasetParams(name="imagefolder", source=str(args.archive))
    with tempfile.TemporaryDirectory() as tmp:
        download_dataset(cfg, Path(tmp) / "raw")
        raw = load_dataset(cfg, Path(tmp) / "raw")
        problem = parse_targets({"airplane": {"binary": 0}}, raw)[0]
        build_target(raw, problem, seed=0, val_fraction=0.0).save(Path(tmp) / "airplane.pt")
        # a fresh process per precision: its own peak RSS, no warm caches from the one before
        ctx = multiprocessing.get_context("spawn")
        results = {}
        for precision in args.precision.split(","):
            with ctx.Pool(1) as pool:
                results[precision] = pool.apply(measure, (precision, Path(tmp) / "airplane.pt", args))

    first = next(iter(results.values()))
    print(f"\ndevice {first['device']}, threads {first['threads']}, train images {first['images']}, "
          f"batch {args.batch_size}, {args.epochs} epochs")
    print(f"{'precision':<10} {'s/joint epoch':>14} {'vs first':>9} {'peak RSS GiB':>13} {'retention':>10} {'test acc':>9}")
    for precision, r in results.items():
        print(f"{precision:<10} {r['s_per_epoch']:>14.2f} {r['s_per_epoch'] / first['s_per_epoch']:>9.2f} "
              f"{r['rss_gib']:>13.2f} {r['retention']:>10.4f} {r['test_acc']:>9.4f}")


def measure(precision: str, problem_file: Path, args: argparse.Namespace) -> dict:
    """One search of ``args.epochs`` epochs at ``precision``; seconds per joint epoch and peak RSS."""
    device = resolve_device(args.device)
    data = TargetProblem.load(problem_file)
    spec = get_spec("resnet20")
    model = load_model(spec, args.checkpoint)
    config = SearchConfig(alpha=1.0, lr_mask=0.05, lr_head=0.1, batch_size=args.batch_size, max_epochs=args.epochs,
                          select_on="test", seed=0, precision=precision)

    marks = [time.perf_counter()]
    rows = []

    def on_epoch(row: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        rows.append(row)
        print(f"{precision} epoch {row['epoch']} ({row['phase']}): {marks[-1] - marks[-2]:.2f} s, "
              f"retention {row['retention']:.3f}, test acc {row['test_acc']:.4f}", flush=True)

    search(model, data, mean=spec.mean, std=spec.std, config=config, stop=AccuracyTarget.factory(0), device=device,
           progress=False, on_epoch=on_epoch)
    joint = [marks[i + 1] - marks[i] for i, r in enumerate(rows) if r["phase"] == "head+mask"]
    if not joint:
        raise SystemExit("error: --epochs must be at least 2 (epoch 0 trains the head only)")
    return {"device": str(device), "threads": torch.get_num_threads(), "images": len(data.train_y),
            "s_per_epoch": sum(joint) / len(joint), "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "retention": rows[-1]["retention"], "test_acc": rows[-1]["test_acc"]}


if __name__ == "__main__":
    main()
