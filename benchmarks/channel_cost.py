"""ChannelCost, the count a channel search evaluates on every batch: the liveness plan against
the per-op walk it replaced, side by side in one run. ResNet20 (the pretrained checkpoint
from ../shared when there), channel granularity built as `seam.reengineer.granularity` does.

    uv run python benchmarks/channel_cost.py                      # per call, then a 3-epoch search
    uv run python benchmarks/channel_cost.py --cost macs --epochs 0
    uv run python benchmarks/channel_cost.py --cifar --train-images 1024   # the airplane problem
    uv run python benchmarks/channel_cost.py --epochs 0 --plan-at 0c6957f  # and an earlier plan

Prints milliseconds per `ChannelCost` call (forward + backward, on leaf keeps) and per
`retention()` call (the per-layer row keeps, then the count: what one batch adds to the
loss), median of `--repeats` rounds of `--calls` calls, the two interleaved so that other
jobs on shared cores slow both alike. Then a short channel search with each (`--epochs`,
epoch 0 trains the head only), seconds per epoch, and whether the two searches' per-epoch
logs are identical. Times are this process's CPU time (all its threads), which other jobs
on the same cores disturb less than the wall-clock time printed beside it.

The walk is the reference kept in tests/test_granularity.py (what ChannelCost computed
before); this script patches it into `ChannelCost.__call__` for the "walk" runs. `--plan-at REV`
(repeatable) adds the `LivenessPlan` of seam/compact/liveness.py at git revision REV, read with
`git show`, as "plan@REV": the same interface, patched into `ChannelCost.plan`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "tests"))

from test_granularity import walk_cost  # noqa: E402  (the reference: see the docstring)

import seam.compact.core  # noqa: E402
from seam.compact import ChannelCost  # noqa: E402
from seam.data.augment import Normalize  # noqa: E402
from seam.models.architectures import cifar_resnet  # noqa: E402
from seam.models.registry import get_spec, load_model  # noqa: E402
from seam.reengineer.granularity import granularity  # noqa: E402
from seam.reengineer.search import SearchConfig, search  # noqa: E402
from seam.reengineer.stopping import AccuracyTarget  # noqa: E402

def plan_at(rev: str) -> type:
    """The ``LivenessPlan`` class of seam/compact/liveness.py at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:seam/compact/liveness.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    name = f"liveness_at_{rev.replace('-', '_').replace('.', '_')}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:seam/compact/liveness.py", "exec"), module.__dict__)
    return module.LivenessPlan


@contextlib.contextmanager
def implementation(name: str, plans: dict[str, type], cost: ChannelCost | None = None):
    """ChannelCost's count by the liveness plan (as shipped, "plan"), by the walk (the
    reference) or by an earlier plan ("plan@REV", one of ``plans``): for every ChannelCost made
    within, and for ``cost``, made before."""
    call, plan_class, plan = ChannelCost.__call__, seam.compact.core.LivenessPlan, cost and cost.plan
    if name == "walk":
        ChannelCost.__call__ = walk_cost
    elif name != "plan":
        seam.compact.core.LivenessPlan = plans[name]
        if cost is not None:
            cost.plan = plans[name](cost.g, cost.ops, cost.plan.modules, cost._outputs)
    try:
        yield
    finally:
        ChannelCost.__call__, seam.compact.core.LivenessPlan = call, plan_class
        if cost is not None:
            cost.plan = plan


def resnet20() -> torch.nn.Module:
    checkpoint = SHARED / "models" / "resnet20-12fca82f.th"
    return load_model(get_spec("resnet20"), checkpoint) if checkpoint.exists() else cifar_resnet(20).eval()


def per_call(args: argparse.Namespace, plans: dict[str, type]) -> None:
    """Milliseconds per cost call and per retention call, each implementation."""
    spec = get_spec("resnet20")
    model = resnet20()
    x = Normalize(spec.mean, spec.std)(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    grain = granularity("channel", model, x, round_to=args.round_to, cost=args.cost)
    masks = grain.attach(model)
    keep = {layer: m.row_keep().detach().requires_grad_() for layer, m in grain.rows.items()}
    runs = {"cost": lambda: grain.cost(keep), "retention": lambda: grain.retention(masks)}
    names = ["walk", *plans, "plan"]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(r, i): [] for r in runs for i in names}
    for _ in range(args.repeats):
        for (run, impl), found in times.items():
            with implementation(impl, plans, grain.cost):
                for _ in range(5):  # warm-up: caches, allocator
                    runs[run]().backward()
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(args.calls):
                    runs[run]().backward()
                found.append((1e3 * (time.process_time() - cpu) / args.calls,
                              1e3 * (time.perf_counter() - wall) / args.calls))
    print(f"ResNet20, channel granularity, cost {args.cost}, round_to {args.round_to}, {torch.get_num_threads()} "
          f"threads; ms per call (forward + backward), median of {args.repeats} rounds: CPU (wall)")
    width = max(16, *map(len, names))
    print(f"{'':<10} " + " ".join(f"{i:>{width}}" for i in names) + "   speed-up over the walk (CPU)")
    for run in runs:
        medians = [[statistics.median(t[k] for t in times[run, i]) for k in (0, 1)] for i in names]
        print(f"{run:<10} " + " ".join(f"{f'{cpu:.3f} ({wall:.3f})':>{width}}" for cpu, wall in medians)
              + "   " + " ".join(f"{medians[0][0] / cpu:.1f}x" for cpu, _ in medians[1:]))


def problem(args: argparse.Namespace):
    """The target problem: synthetic (label visible in brightness), or CIFAR-10 airplane vs rest."""
    if not args.cifar:
        from conftest import tiny_target

        return tiny_target(n_train=args.train_images, n_val=args.test_images, n_test=args.test_images, size=32)
    from seam.core.params import DatasetParams
    from seam.data.sources import download_dataset, load_dataset
    from seam.data.targets import build_target, parse_targets

    cfg = DatasetParams(name="imagefolder", source=str(SHARED / "datasets" / "cifar10-jpeg.tar.gz"))
    with tempfile.TemporaryDirectory() as tmp:
        download_dataset(cfg, Path(tmp) / "raw")
        raw = load_dataset(cfg, Path(tmp) / "raw")
    full = build_target(raw, parse_targets({"airplane": {"binary": 0}}, raw)[0], seed=0, val_fraction=0.0)
    pick = torch.randperm(len(full.train_y), generator=torch.Generator().manual_seed(0))[:args.train_images]
    test = torch.randperm(len(full.test_y), generator=torch.Generator().manual_seed(1))[:args.test_images]
    return dataclasses.replace(full, train_x=full.train_x[pick], train_y=full.train_y[pick],
                               test_x=full.test_x[test], test_y=full.test_y[test])


def searches(args: argparse.Namespace, plans: dict[str, type]) -> None:
    """A short channel search with each implementation: seconds per epoch, identical logs."""
    data = problem(args)
    spec = get_spec("resnet20")
    config = SearchConfig(alpha=args.alpha, lr_mask=args.lr_mask, lr_head=0.1, batch_size=args.batch_size,
                          max_epochs=args.epochs, select_on="test" if args.cifar else "val", seed=0,
                          granularity="channel", round_to=args.round_to, cost=args.cost)
    # untimed: the process's first search pays one-off costs (kernels' first calls, allocator)
    few = 2 * args.batch_size
    small = dataclasses.replace(data, train_x=data.train_x[:few], train_y=data.train_y[:few])
    search(resnet20(), small, mean=spec.mean, std=spec.std, config=config.model_copy(update={"max_epochs": 2}),
           stop=AccuracyTarget.factory(0), progress=False)
    logs, seconds = {}, {}
    names = ["walk", *plans, "plan"]
    for impl in names:
        marks, rows = [], []

        def on_epoch(row: dict) -> None:
            marks.append((time.process_time(), time.perf_counter()))
            rows.append(row)

        with implementation(impl, plans):
            marks.append((time.process_time(), time.perf_counter()))
            search(resnet20(), data, mean=spec.mean, std=spec.std, config=config, stop=AccuracyTarget.factory(0),
                   progress=False, on_epoch=on_epoch)
        logs[impl], seconds[impl] = rows, [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
    print(f"\nchannel search, ResNet20, {len(data.train_y)} {'CIFAR-10' if args.cifar else 'synthetic'} training "
          f"images, batch {args.batch_size}: seconds per epoch, CPU (wall)")
    width = max(15, *map(len, names))
    print(f"{'epoch':<6} {'phase':<10} " + " ".join(f"{i:>{width}}" for i in names)
          + f"   retention ({' / '.join(names)})")
    for e, row in enumerate(logs["plan"]):
        print(f"{e:<6} {row['phase']:<10} " + " ".join(f"{f'{seconds[i][e][0]:.2f} ({seconds[i][e][1]:.2f})':>{width}}"
                                                      for i in names)
              + "   " + " / ".join(f"{logs[i][e]['retention']:.6f}" for i in names))
    for impl in names[1:]:
        diffs = [(e, k) for e, (a, b) in enumerate(zip(logs["walk"], logs[impl])) for k in a if a[k] != b.get(k)]
        print(f"{impl}: per-epoch logs identical to the walk's" if not diffs else
              f"{impl}: per-epoch logs differ from the walk's, first at epoch {diffs[0][0]} ({diffs[0][1]}: "
              f"{logs['walk'][diffs[0][0]][diffs[0][1]]!r} vs {logs[impl][diffs[0][0]][diffs[0][1]]!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost", choices=("weights", "macs"), default="weights")
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--calls", type=int, default=100, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per implementation (median)")
    parser.add_argument("--epochs", type=int, default=3, help="search epochs (0: no search)")
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--lr-mask", type=float, default=0.2,
                        help="the scores' learning rate: high enough that channels go within a few epochs")
    parser.add_argument("--cifar", action="store_true", help="the airplane problem from ../shared, not synthetic")
    parser.add_argument("--plan-at", action="append", default=[], metavar="REV",
                        help="also time the liveness plan at this git revision (repeatable)")
    args = parser.parse_args()
    plans = {f"plan@{rev}": plan_at(rev) for rev in args.plan_at}
    torch.manual_seed(0)
    per_call(args, plans)
    if args.epochs:
        searches(args, plans)


if __name__ == "__main__":
    main()
