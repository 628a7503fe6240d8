"""Seconds per re-engineering epoch and peak RSS: ResNet20 on the 10,000-image
airplane-vs-rest problem (CIFAR-10 class 0 vs an equal number of other images).

    uv run python benchmarks/reengineer_epoch.py                 # uses ../shared; fp32 and bf16
    uv run python benchmarks/reengineer_epoch.py --device cuda --precision fp32,bf16 --epochs 6
    uv run python benchmarks/reengineer_epoch.py --precision fp32 --epochs 2 --train-images 10000,100000

Each precision (`reengineer.precision`) runs the same search in its own process, one after
the other, so each reports its own peak RSS; the summary sets them side by side. Epoch 0
trains only the head (the schedule's 1-in-5 head-only epoch); the figure to quote is the mean
of the joint (head+mask) epochs, training on all 10,000 images plus the per-epoch evaluation
on the 2,000 test images. The last epoch's retention and test accuracy show whether the
cheaper arithmetic changed the result.

`--train-images` redraws the training split to each given size (the 10,000 images repeated
in a seeded random order), to show what memory a larger target costs: the prepared file is
memory-mapped, so its images are file pages the OS can drop ("file", with the shared
libraries, at the end of the run), and the process's own memory ("anon") stays that of the
model, the optimiser and one batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import torch

from seam.core.device import resolve_device
from seam.core.params import DatasetParams
from seam.data.problem import TargetProblem
from seam.data.sources import download_dataset, load_dataset
from seam.data.targets import build_target, parse_targets
from seam.models.registry import get_spec, load_model
from seam.reengineer.search import SearchConfig, search
from seam.reengineer.stopping import AccuracyTarget

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=SHARED / "datasets" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--checkpoint", type=Path, default=SHARED / "models" / "resnet20-12fca82f.th")
    parser.add_argument("--epochs", type=int, default=4, help="epochs to run (the first trains the head only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated reengineer.precision values")
    parser.add_argument("--train-images", default="", help="comma-separated training-set sizes (default: the 10,000)")
    args = parser.parse_args()

    cfg = DatasetParams(name="imagefolder", source=str(args.archive))
    with tempfile.TemporaryDirectory() as tmp:
        download_dataset(cfg, Path(tmp) / "raw")
        raw = load_dataset(cfg, Path(tmp) / "raw")
        problem = build_target(raw, parse_targets({"airplane": {"binary": 0}}, raw)[0], seed=0, val_fraction=0.0)
        del raw
        sizes = [int(n) for n in args.train_images.split(",") if n] or [len(problem.train_y)]
        files = {}
        for n in sizes:
            files[n] = Path(tmp) / f"airplane-{n}.pt"
            redrawn(problem, n).save(files[n])
        # a fresh process per run: its own peak RSS, no warm caches from the one before
        ctx = multiprocessing.get_context("spawn")
        results = {}
        for n in sizes:
            for precision in args.precision.split(","):
                with ctx.Pool(1) as pool:
                    results[precision, n] = pool.apply(measure, (precision, files[n], args))

    first = next(iter(results.values()))
    print(f"\ndevice {first['device']}, threads {first['threads']}, batch {args.batch_size}, {args.epochs} epochs")
    print(f"{'precision':<10} {'images':>7} {'data MiB':>9} {'s/joint epoch':>14} {'vs first':>9} {'peak RSS GiB':>13} "
          f"{'anon GiB':>9} {'file GiB':>9} {'retention':>10} {'test acc':>9}")
    for (precision, n), r in results.items():
        print(f"{precision:<10} {n:>7} {r['data_mib']:>9.0f} {r['s_per_epoch']:>14.2f} "
              f"{r['s_per_epoch'] / first['s_per_epoch']:>9.2f} {r['rss_gib']:>13.2f} {r['anon_gib']:>9.2f} {r['file_gib']:>9.2f} "
              f"{r['retention']:>10.4f} {r['test_acc']:>9.4f}")


def redrawn(problem: TargetProblem, n: int) -> TargetProblem:
    """``problem`` with ``n`` training images: its own, each pass over them in a new seeded
    random order (the prepared file is sorted by label: a prefix would hold one class)."""
    if n == len(problem.train_y):
        return problem
    gen, have = torch.Generator().manual_seed(0), len(problem.train_y)
    order = torch.cat([torch.randperm(have, generator=gen) for _ in range(-(-n // have))])[:n]
    return dataclasses.replace(problem, train_x=problem.train_x[order], train_y=problem.train_y[order])


def rss_gib(kind: str) -> float:
    """This process's resident pages of ``kind`` now, GiB: ``RssAnon`` (its own memory) or
    ``RssFile`` (file pages: the shared libraries and the memory-mapped images)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


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
    return {"device": str(device), "threads": torch.get_num_threads(), "data_mib": data.train_x.nbytes / 2**20,
            "anon_gib": rss_gib("RssAnon"), "file_gib": rss_gib("RssFile"),
            "s_per_epoch": sum(joint) / len(joint), "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "retention": rows[-1]["retention"], "test_acc": rows[-1]["test_acc"]}


if __name__ == "__main__":
    main()
