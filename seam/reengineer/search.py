"""The SeaM search: learn a binary weight mask (and a small head) for a target problem."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from seam.core.device import resolve_precision
from seam.core.params import NonNegative, NonNegativeInt, ReengineerParams
from seam.core.resume import ResumeFile
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.masks import binary_masks, mask_scores, own_parameters
from seam.reengineer.accuracy import accuracy, original_accuracy, predict
from seam.reengineer.candidate import ReengineeredModel
from seam.reengineer.granularity import Granularity, granularity
from seam.reengineer.loop import TrainingError, evaluate, fit, selection_splits, train_epoch
from seam.reengineer.stopping import RuleFactory


class SearchError(TrainingError):
    """A search that cannot run on the problem it is given."""


class SearchConfig(ReengineerParams):
    """One search's settings: the ``reengineer`` section (a target's own keys laid over it, see
    ``Params.search_settings``), the weight of the retention term, and where the stopping rule
    selects. Defaults are the schema's, i.e. params.yaml's."""

    alpha: NonNegative          # weight of the retention term
    select_on: Literal["val", "test"]   # the split the stopping rule sees
    seed: NonNegativeInt


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
    epoch's come back in ``SearchResult.weights``). ``stop`` builds the stopping rule from the
    original model's accuracy on the selection split (``AccuracyTarget.factory(early_stop)``
    or ``RemovalThreshold.factory(t)``). ``on_epoch`` receives each epoch's log row as soon as
    it exists.

    By default (RQ1) the candidate is ``original`` followed by a new ReLU + Linear(N, K)
    head. With ``output_layer`` (the dotted name of a K-class layer ``original`` already
    has, as in the defect-inheritance flow) that layer plays the head: it is trained, not
    masked, and the model's own outputs are the K logits. ``source_outputs`` are the
    original model's outputs for the problem's source classes (the accuracy to match;
    default: the source classes' dataset indices). With ``resume``, the whole state is saved
    after every epoch and a saved state of the same run is continued (see
    :func:`~seam.reengineer.loop.fit`).
    """
    device = torch.device(device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    normalize = Normalize(mean, std, device)
    train_x = problem.train_x.to(device)
    splits = selection_splits(problem, config.select_on)

    base = copy.deepcopy(original).to(device).eval()
    outputs = problem.source_classes if source_outputs is None else list(source_outputs)
    acc_original, num_outputs = _original_accuracy(base, problem, splits, normalize, device, output_layer, outputs)
    grain = granularity(config.granularity, base, normalize(train_x[:2]), round_to=config.round_to, cost=config.cost)
    model, masks, head = _candidate(base, num_outputs, problem.num_classes, output_layer, device, grain)
    weights = _tuned_weights(base, list(head.parameters()), config.lr_weights)
    train = (train_x, problem.train_y.to(device))
    job = _MaskSearch(model, masks, head, weights, grain, config, train, splits, normalize, gen, f"search {problem.name}")
    rule = stop(acc_original[config.select_on])
    done = fit(job, rule, select_on=config.select_on, max_epochs=config.max_epochs, generator=gen, device=device,
               resume=resume, on_epoch=on_epoch, progress=progress)
    masks_kept, head_kept, weights_kept = done.kept  # every rule selects the first epoch
    return SearchResult(masks=masks_kept, head=head_kept, selected_epoch=rule.selected_epoch,
                        reached_target=rule.reached_target, acc_original=acc_original, history=done.history,
                        weights=weights_kept)


class _MaskSearch:
    """The search as a :class:`~seam.reengineer.loop.Job`: every ``head_only_every``-th epoch
    trains the head alone, the others the masks (and, with ``lr_weights``, the original
    weights) with it, on CE + alpha x retention."""

    def __init__(self, model: nn.Module, masks: dict, head: nn.Module, weights: dict[str, nn.Parameter],
                 grain: Granularity, config: SearchConfig, train: tuple[torch.Tensor, torch.Tensor], splits: dict,
                 normalize: Normalize, gen: torch.Generator, desc: str):
        self.model, self.masks, self.head, self.weights, self.grain = model, masks, head, weights, grain
        self.config, self.train, self.splits, self.normalize, self.gen, self.desc = (
            config, train, splits, normalize, gen, desc)
        self.device = train[0].device
        self.dtype = resolve_precision(config.precision, self.device)
        head_params = list(head.parameters())
        self.optims = {
            "optim_head": torch.optim.Adam(head_params, lr=config.lr_head),
            "optim_joint": torch.optim.Adam([
                {"params": mask_scores(masks), "lr": config.lr_mask}, {"params": head_params, "lr": config.lr_head},
                *([{"params": list(self.weights.values()), "lr": config.lr_weights}] if self.weights else [])]),
        }

    def epoch(self, epoch: int, progress: bool) -> dict:
        c = self.config
        head_only = c.head_only_every > 0 and epoch % c.head_only_every == 0
        loss_fn = _objective(self.masks, alpha_at(c, epoch), self.grain)
        # Eval mode even while training: the search learns scores and the head, never the
        # original model's BatchNorm statistics (release: fix_bn, "IMPORTANT").
        self.model.eval()
        # Head-only epochs need no gradient through the original model: freezing the scores
        # (and tuned weights) there makes autograd stop at the head: those epochs are ~3x cheaper.
        searched = [*(m.scores for m in self.masks.values()), *self.weights.values()]
        for p in searched:
            p.requires_grad_(not head_only)
        sums, n_batches = train_epoch(
            self.model, self.optims["optim_head" if head_only else "optim_joint"], *self.train,
            normalize=self.normalize, generator=self.gen, batch_size=c.batch_size, loss_fn=loss_fn,
            desc="head" if head_only else "head+mask", progress=progress, dtype=self.dtype)
        for p in searched:
            p.requires_grad_(True)
        loss, ce, train_kept = (sums / max(n_batches, 1)).tolist()
        with parametrize.cached():
            accs = evaluate(self.model, self.splits, self.normalize, self.device)
        with torch.no_grad():
            kept = self.grain.retention(self.masks).item()
        return {"phase": "head" if head_only else "head+mask", "loss": loss, "ce": ce, "train_retention": train_kept,
                "retention": kept, **accs}

    def keep(self) -> tuple:
        return (binary_masks(self.masks), copy.deepcopy({k: v.cpu() for k, v in self.head.state_dict().items()}),
                _cpu_copy(self.weights) if self.weights else None)

    def state_dict(self) -> dict:
        return {"scores": {name: m.scores.detach().cpu() for name, m in self.masks.items()},
                "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
                "weights": _cpu_copy(self.weights), **{name: o.state_dict() for name, o in self.optims.items()}}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, m in self.masks.items():
                m.scores.copy_(state["scores"][name])
            for name, p in self.weights.items():
                p.copy_(state["weights"][name])
        self.head.load_state_dict(state["head"])
        for name, o in self.optims.items():
            o.load_state_dict(state[name])

    def postfix(self, row: dict) -> dict:
        return {"retention": f"{row['retention']:.3f}", **{k: f"{row[k]:.4f}" for k in row if k.endswith("_acc")}}


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
