"""The SeaM search: learn a binary weight mask (and a small head) for a target problem."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from seam.core.device import resolve_precision
from seam.core.errors import SeamError
from seam.core.resume import ResumeFile, restore_fields, rng_state, set_rng_state
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.masks import binary_masks, mask_scores, own_parameters
from seam.reengineer.accuracy import accuracy, original_accuracy, predict
from seam.reengineer.candidate import ReengineeredModel
from seam.reengineer.granularity import Granularity, granularity
from seam.reengineer.loop import batch_bar, evaluate, remaining_epochs, train_epoch
from seam.reengineer.stopping import RuleFactory


class SearchError(SeamError, ValueError):
    """A search that cannot run on the problem it is given."""


@dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters of one search; the stages fill it from params.yaml, where they are checked."""

    alpha: float               # weight of the retention term
    lr_mask: float
    lr_head: float
    batch_size: int
    max_epochs: int
    select_on: str             # "val" or "test": the split the stopping rule sees
    seed: int
    granularity: str = "weight"   # what one score decides: "weight" (the paper) or "channel" (seam.granularity)
    round_to: int = 1          # channel granularity: each conv keeps a multiple of this many channels
    cost: str = "weights"      # what the kept share counts: "weights" (the paper) or "macs"
    alpha_warmup: int = 0      # epochs over which alpha rises linearly from 0 (0: constant, the paper)
    precision: str = "fp32"    # compute dtype of the training passes: "fp32", "bf16" or "auto" (seam.device)
    head_only_every: int = 5   # epoch % head_only_every == 0 trains the head alone (release; 0: never)
    lr_weights: float = 0.0    # Adam lr of the original model's own weights in joint epochs (0: frozen, the paper)
    padding: int = 4           # random-crop padding of the training augmentation


@dataclass
class SearchResult:
    masks: dict[str, torch.Tensor]      # bool masks of the selected epoch, by tensor name
    head: dict[str, torch.Tensor]       # head state dict of the selected epoch
    selected_epoch: int
    reached_target: bool                # the stopping rule's target (accuracy or threshold) was met
    acc_original: dict[str, float]      # original model on val/test (the accuracy target is on select_on)
    history: list[dict] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None   # the tuned own weights of the selected epoch (lr_weights > 0)


def search(
    original: nn.Module,
    problem: TargetProblem,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    config: SearchConfig,
    stop: RuleFactory,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    output_layer: str | None = None,
    source_outputs: Sequence[int] | None = None,
    resume: ResumeFile | None = None,
) -> SearchResult:
    """Search a mask over ``original``'s conv/linear tensors for ``problem``.

    ``original`` is not modified: the search works on a deep copy whose original weights
    are frozen (with ``config.lr_weights`` > 0 they train in joint epochs; the selected
    epoch's come back in ``SearchResult.weights``). ``stop`` builds the stopping rule from the original model's accuracy on the
    selection split (``AccuracyTarget.factory(early_stop)`` or
    ``RemovalThreshold.factory(t)``). ``on_epoch`` receives each epoch's log row as soon as
    it exists.

    By default (RQ1) the candidate is ``original`` followed by a new ReLU + Linear(N, K)
    head. With ``output_layer`` (the dotted name of a K-class layer ``original`` already
    has, as in the defect-inheritance flow) that layer plays the head: it is trained, not
    masked, and the model's own outputs are the K logits. ``source_outputs`` are the
    original model's outputs for the problem's source classes (the accuracy to match;
    default: the source classes' dataset indices). With ``resume``, the whole state is saved
    after every epoch and a saved state of the same run is continued: the rows already done
    go to ``on_epoch`` again, and the result equals an uninterrupted run's.
    """
    device = torch.device(device)
    dtype = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    normalize = Normalize(mean, std, device)
    train_x, train_y = problem.train_x.to(device), problem.train_y.to(device)
    splits = problem.eval_splits()
    if config.select_on not in splits:
        raise SearchError(f"select_on is {config.select_on!r} but target problem {problem.name!r} has no "
                          f"{config.select_on} images (set prepare.val_fraction > 0 or select_on: test)")

    base = copy.deepcopy(original).to(device).eval()
    outputs = problem.source_classes if source_outputs is None else list(source_outputs)
    acc_original, num_outputs = _original_accuracy(base, problem, splits, normalize, device, output_layer, outputs)
    grain = granularity(config.granularity, base, normalize(train_x[:2]), round_to=config.round_to, cost=config.cost)
    model, masks, head = _candidate(base, num_outputs, problem.num_classes, output_layer, device, grain)
    head_params = list(head.parameters())
    weights = _tuned_weights(base, head_params, config.lr_weights)
    optim_head = torch.optim.Adam(head_params, lr=config.lr_head)
    optim_joint = torch.optim.Adam([{"params": mask_scores(masks), "lr": config.lr_mask},
                                    {"params": head_params, "lr": config.lr_head},
                                    *([{"params": list(weights.values()), "lr": config.lr_weights}] if weights else [])])
    rule = stop(acc_original[config.select_on])
    best = None
    history = []
    optims = {"optim_head": optim_head, "optim_joint": optim_joint}
    state = resume.load() if resume is not None else None
    if state is not None:
        best, history = _restore(state, masks, head, weights, optims, gen, rule, device)
    epochs = remaining_epochs(history, rule.should_stop, config.max_epochs, desc=f"search {problem.name}",
                              progress=progress, on_epoch=on_epoch)
    for epoch in epochs:
        head_only = config.head_only_every > 0 and epoch % config.head_only_every == 0
        loss_fn = _objective(masks, alpha_at(config, epoch), grain)
        # Eval mode even while training: the search learns scores and the head, never the
        # original model's BatchNorm statistics (release: fix_bn, "IMPORTANT").
        model.eval()
        # Head-only epochs need no gradient through the original model: freezing the scores
        # (and tuned weights) there makes autograd stop at the head: those epochs are ~3x cheaper.
        for p in [*(m.scores for m in masks.values()), *weights.values()]:
            p.requires_grad_(not head_only)
        sums, n_batches = train_epoch(
            model, optim_head if head_only else optim_joint, train_x, train_y, normalize=normalize, generator=gen,
            batch_size=config.batch_size, padding=config.padding, loss_fn=loss_fn,
            desc="head" if head_only else "head+mask", progress=batch_bar(progress), dtype=dtype)
        for p in [*(m.scores for m in masks.values()), *weights.values()]:
            p.requires_grad_(True)
        loss, ce, train_kept = (sums / max(n_batches, 1)).tolist()

        with parametrize.cached():
            accs = evaluate(model, splits, normalize, device)
        with torch.no_grad():
            kept = grain.retention(masks).item()
        selected = rule.update(epoch, accs[config.select_on], kept)
        if selected:
            best = (binary_masks(masks), copy.deepcopy({k: v.cpu() for k, v in head.state_dict().items()}),
                    _cpu_copy(weights) if weights else None)
        row = {"epoch": epoch, "phase": "head" if head_only else "head+mask", "loss": loss, "ce": ce,
               "train_retention": train_kept, "retention": kept, **{f"{s}_acc": a for s, a in accs.items()},
               "selected": rule.selected_epoch == epoch}
        history.append(row)
        if resume is not None:
            resume.save(_snapshot(masks, head, weights, optims, gen, rule, best, history, device))
        if on_epoch is not None:
            on_epoch(row)
        epochs.set_postfix(retention=f"{kept:.3f}", **{f"{config.select_on}_acc": f"{accs[config.select_on]:.4f}"})
        if rule.should_stop:
            break

    assert best is not None  # every rule selects the first epoch
    return SearchResult(masks=best[0], head=best[1], selected_epoch=rule.selected_epoch,
                        reached_target=rule.reached_target, acc_original=acc_original, history=history,
                        weights=best[2])


def _tuned_weights(base: nn.Module, head_params: list, lr: float) -> dict[str, nn.Parameter]:
    """The original model's own weights the search trains (none with ``lr`` 0, the paper). With
    channel masks the frozen features are the limit: below ~75% of the MACs a frozen ResNet20
    loses 5-15 points that training the kept weights alongside the masks wins back."""
    if lr <= 0:
        return {}
    head_ids = {id(p) for p in head_params}
    return {name: p for name, p in own_parameters(base).items() if id(p) not in head_ids}


def _cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


def _snapshot(masks: dict, head: nn.Module, weights: dict, optims: dict, gen: torch.Generator, rule, best,
              history: list, device: torch.device) -> dict:
    """Everything the next epoch depends on (CPU copies), for :class:`ResumeFile`."""
    return {
        "epoch": len(history) - 1,
        "scores": {name: m.scores.detach().cpu() for name, m in masks.items()},
        "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "weights": _cpu_copy(weights),
        **{name: o.state_dict() for name, o in optims.items()},
        **rng_state(gen, device),
        "rule": dataclasses.asdict(rule),
        "best": best,
        "history": history,
    }


def _restore(state: dict, masks: dict, head: nn.Module, weights: dict, optims: dict, gen: torch.Generator, rule,
             device: torch.device) -> tuple:
    """Put a :func:`_snapshot` back; returns (best, history)."""
    with torch.no_grad():
        for name, m in masks.items():
            m.scores.copy_(state["scores"][name])
        for name, p in weights.items():
            p.copy_(state["weights"][name])
    head.load_state_dict(state["head"])
    for name, o in optims.items():
        o.load_state_dict(state[name])
    set_rng_state(state, gen, device)
    restore_fields(rule, state["rule"])
    return state["best"], list(state["history"])


def alpha_at(config: SearchConfig, epoch: int) -> float:
    """The retention term's weight in ``epoch``: ``alpha``, reached linearly over ``alpha_warmup``
    epochs. A ramp lets the channels the target needs least go first: under Adam every score
    whose gradient keeps one sign moves by about ``lr_mask`` per step, so with the full alpha
    from the start all channels the penalty outweighs cross zero together."""
    if config.alpha_warmup <= 0:
        return config.alpha
    return config.alpha * min(1.0, epoch / config.alpha_warmup)


def _objective(masks: dict, alpha: float, grain: Granularity):
    """CE + alpha * retention, with (loss, CE, retention) as the per-batch statistics to log."""

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, _n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ce = F.cross_entropy(logits, y)
        kept = grain.retention(masks)
        # The head-only optimiser holds no scores, so the retention term only moves the
        # masks in joint epochs; it is kept in the loss so the logged value means one thing.
        loss = ce + alpha * kept
        return loss, torch.stack([loss.detach(), ce.detach(), kept.detach()])

    return loss_fn


def _candidate(base: nn.Module, num_outputs: int, num_classes: int, output_layer: str | None,
               device: torch.device, grain: Granularity) -> tuple[nn.Module, dict, nn.Module]:
    """(model to train, its masks by tensor name, the head) around ``base``, masked in place."""
    if output_layer is None:
        model = ReengineeredModel(base, num_outputs, num_classes).to(device)
        masks = grain.attach(model.original)
        head = model.head
    else:
        if num_outputs != num_classes:
            raise SearchError(f"output_layer {output_layer!r} gives {num_outputs} outputs, the target has {num_classes}")
        model = base
        head = model.get_submodule(output_layer)
        masks = grain.attach(model, skip=(output_layer,))
        head.requires_grad_(True)
    # NHWC convolutions are ~12% faster on the CPU here (oneDNN) and are cuDNN's fast path.
    return model.to(memory_format=torch.channels_last), masks, head


def _original_accuracy(base: nn.Module, problem: TargetProblem, splits: dict, normalize: Normalize,
                       device: torch.device, output_layer: str | None,
                       outputs: list[int]) -> tuple[dict[str, float], int]:
    """The unmodified model's accuracy per split (the search's target) and its number of outputs."""
    acc = {}
    for split, (x, y) in splits.items():
        logits = predict(base, x, normalize, device=device)
        if output_layer is None:
            acc[split] = original_accuracy(logits, y, kind=problem.kind, source_classes=outputs)
        else:
            acc[split] = accuracy(logits, y)
    return acc, logits.shape[1]
