"""What a channel search buys over structured pruning at the same widths.

For a channel-granularity artifact (`reengineer.granularity: channel`), keep exactly as many
channels per layer as the search did, chosen instead by L1 norm (Li et al. 2017, the standard
structured baseline) and at random, train a fresh head on each (and, where the search trained
the original weights, `reengineer.lr_weights` > 0, those too, at the search's learning rate;
otherwise they stay as they are), and print test accuracy beside the search's. Equal widths
mean equal compact FLOPs and latency, so accuracy is the comparison.

    uv run python benchmarks/channel_baseline.py models/pretrained data/prepared/airplane.pt \\
        models/reengineered/airplane.pt --epochs 10
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.masks import mask_scores, own_parameters
from seam.models.pretrained import load_pretrained
from seam.reengineer.artifact import build_reengineered, load_artifact
from seam.reengineer.baseline import group_keep, l1_importance, l1_keep_like
from seam.reengineer.candidate import ReengineeredModel
from seam.reengineer.granularity import ChannelGranularity
from seam.reengineer.loop import evaluate, train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pretrained", type=Path, help="the fetch_model stage's directory")
    parser.add_argument("problem", type=Path, help="the prepared target problem (.pt)")
    parser.add_argument("artifact", type=Path, help="a channel search's artifact (.pt)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs for each baseline")
    args = parser.parse_args()

    info, original = load_pretrained(args.pretrained)
    problem = TargetProblem.load(args.problem)
    art = load_artifact(args.artifact)
    search = art["meta"]["search"]
    if search.get("granularity") != "channel":
        raise SystemExit(f"error: {args.artifact}: a {search.get('granularity', 'weight')} search; "
                         "this compares channel searches (reengineer.granularity: channel)")
    normalize = Normalize(info.mean, info.std)
    splits = problem.eval_splits()
    select = "val" if "val" in splits else "test"

    searched = build_reengineered(original, art, model_sha256=info.sha256)
    acc = evaluate(searched, splits, normalize, torch.device("cpu"))
    rows = [("the search", acc)]
    for name in ("L1 norm", "random"):
        torch.manual_seed(search["seed"])
        model = ReengineeredModel(copy.deepcopy(original).eval(), info.num_classes, problem.num_classes)
        grain = ChannelGranularity(model.original, normalize(problem.train_x[:2]), round_to=search["round_to"],
                                   macs=search["cost"] == "macs")
        masks = grain.attach(model.original)
        gate = next(iter(masks.values())).gate
        reference = group_keep(grain.rows, art["masks"])
        share, widths = _set_keep(gate, grain, masks, reference)
        importance = (l1_importance(model.original, grain.rows) if name == "L1 norm"
                      else torch.rand(reference.shape, generator=torch.Generator().manual_seed(search["seed"])))
        if _set_keep(gate, grain, masks, l1_keep_like(gate, importance, reference)) != (share, widths):
            raise AssertionError(f"{name}: the widths differ from the search's")
        for scores in mask_scores(masks):
            scores.requires_grad_(False)  # fixed channels: autograd stops at the head (~3x cheaper)
        rows.append((name, _train_head(model, problem, normalize, splits, select, search, args.epochs, name)))

    print(f"{problem.name}: {info.name}, {search['cost']} kept {share:.4f} by every row "
          f"(same widths: {sorted(set(widths.values()))})")
    print(f"{'channels chosen by':<22} {'val acc':>8} {'test acc':>9}")
    for name, a in rows:
        print(f"{name:<22} {a.get('val_acc', float('nan')):>8.4f} {a['test_acc']:>9.4f}")


def _set_keep(gate, grain: ChannelGranularity, masks: dict, keep: torch.Tensor) -> tuple[float, dict[str, int]]:
    """Keep exactly the groups ``keep`` says; (kept share, kept rows per layer)."""
    with torch.no_grad():
        gate.scores.copy_(torch.where(keep, 1.0, -1.0))
        widths = {layer: int((m.row_keep() > 0).sum()) for layer, m in grain.rows.items()}
        return round(float(grain.retention(masks)), 12), widths


def _train_head(model, problem, normalize, splits, select, search, epochs, name) -> dict[str, float]:
    """The head (and the kept weights, as the search trained them) with the search's settings;
    the epoch best on ``select``."""
    params = list(model.head.parameters())
    weights = list(own_parameters(model.original).values()) if search.get("lr_weights", 0) > 0 else []
    for p in params + weights:
        p.requires_grad_(True)
    optim = torch.optim.Adam([{"params": params, "lr": search["lr_head"]},
                              *([{"params": weights, "lr": search["lr_weights"]}] if weights else [])])
    gen = torch.Generator().manual_seed(search["seed"])

    def loss_fn(logits, y, _n):
        loss = F.cross_entropy(logits, y)
        return loss, loss.detach().view(1)

    best = None
    for _ in tqdm(range(epochs), desc=f"{'weights and head' if weights else 'head'} on {name} channels", unit="epoch"):
        model.eval()  # the original BatchNorm statistics stay, as in the search
        train_epoch(model, optim, problem.train_x, problem.train_y, normalize=normalize, generator=gen,
                    batch_size=search["batch_size"], loss_fn=loss_fn)
        acc = evaluate(model, splits, normalize, torch.device("cpu"))
        if best is None or acc[f"{select}_acc"] > best[f"{select}_acc"]:
            best = acc
    return best


if __name__ == "__main__":
    main()
