"""Fine-tuning for the defect-inheritance experiment (the paper's RQ3, following ReMos).

Standard fine-tuning replaces a pretrained model's output layer with a K-class one and
trains every weight on the target problem. The SeaM flow (release:
``src/defect_inherit/reengineering_finetune.py``) is: (1) train only the new output layer,
(2) re-engineer that model, (3) load the pretrained weights times the mask
(``masked_start``) and fine-tune everything. Both use ``finetune`` below, which follows
the release's ``finetuner.py``: SGD with the output layer at a 10x learning rate, the
whole model in train mode (BatchNorm statistics move), evaluation each epoch, keep the
best epoch, early stopping.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seam.core.params import FinetuneParams, NonNegativeInt
from seam.core.resume import ResumeFile
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.masks import apply_masks
from seam.reengineer.loop import TrainingError, evaluate, fit, selection_splits, train_epoch
from seam.reengineer.stopping import BestAccuracy


class FinetuneError(TrainingError):
    """Bad fine-tuning input: classifier path, hyper-parameters, masks or data splits."""


def _classifier_module(model: nn.Module, classifier: str) -> nn.Module:
    if not isinstance(classifier, str) or not classifier:
        raise FinetuneError(f"classifier must be the dotted path of a submodule (e.g. 'fc'), got {classifier!r}")
    try:
        return model.get_submodule(classifier)
    except AttributeError as e:
        raise FinetuneError(f"{type(model).__name__} has no module {classifier!r}: {e}") from e


def replace_classifier(
    model: nn.Module, classifier: str, num_classes: int, *, dropout: float = 0.0, seed: int = 0
) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` at ``classifier`` is a new ``Linear(in, num_classes)``.

    With ``dropout > 0`` the new layer is ``Sequential(Dropout(dropout), Linear)`` (the
    paper's Fig. 8 setting), so its Linear is then at ``f"{classifier}.1"``. The new
    layer's initialisation depends on ``seed`` only; the global RNG is left untouched.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise FinetuneError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise FinetuneError(f"dropout must be a number in [0, 1), got {dropout!r}")
    old = _classifier_module(model, classifier)
    if not isinstance(old, nn.Linear):
        raise FinetuneError(
            f"{type(model).__name__}.{classifier} must be an nn.Linear to be replaced, found {type(old).__name__}"
        )
    new_model = copy.deepcopy(model)
    parent_path, _, name = classifier.rpartition(".")
    parent = new_model.get_submodule(parent_path) if parent_path else new_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    head = head.to(old.weight.device, old.weight.dtype)
    if dropout > 0:
        head = nn.Sequential(nn.Dropout(dropout), head)
    # setattr also replaces numbered children of Sequential/ModuleList ("classifier.6").
    setattr(parent, name, head)
    return new_model


def masked_start(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with every weight/bias entry whose mask is False set to zero.

    Step (3) of the SeaM flow: the zeros are the starting point only; ``finetune`` trains
    every weight, so it may regrow them (as the release does). ``masks`` must name exactly
    the model's conv/linear tensors (``seam.models.masks.maskable_tensors``).
    """
    new_model = copy.deepcopy(model)
    try:
        apply_masks(new_model, masks)
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    return new_model


class FinetuneConfig(FinetuneParams):
    """One fine-tuning run's settings: a ``finetune`` section of params.yaml (the release's SGD
    with the output layer at a higher rate), where it selects, and whether only the output
    layer trains (step 1 of the SeaM flow)."""

    select_on: Literal["val", "test"]   # the release stops on the test split
    seed: NonNegativeInt
    train_only_output: bool = False


@dataclass
class FinetuneResult:
    state_dict: dict                    # best epoch's weights (CPU tensors)
    best_epoch: int
    best_acc: float                     # on config.select_on
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, train_acc, val_acc, test_acc


def finetune(
    model: nn.Module,
    classifier: str,
    problem: TargetProblem,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    config: FinetuneConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    resume: ResumeFile | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on ``problem``; return the best epoch's weights.

    ``classifier`` is the dotted path of the output layer (e.g. the one
    ``replace_classifier`` put in): its parameters train at ``lr_output``, all others at
    ``lr_hidden`` (or stay frozen with ``train_only_output``). Each epoch evaluates the
    ``select_on`` split (and the other split when it has images); the epoch with the
    highest selection accuracy is kept (:class:`~seam.reengineer.stopping.BestAccuracy`).
    ``model`` itself is not modified. With ``resume``, the run continues a saved state of the
    same run (see :func:`~seam.reengineer.loop.fit`).
    """
    device = torch.device(device)
    torch.manual_seed(config.seed)  # dropout draws from the global RNG
    gen = torch.Generator().manual_seed(config.seed)
    normalize = Normalize(mean, std, device)
    splits = selection_splits(problem, config.select_on)
    if not len(problem.train_y):
        raise FinetuneError("the target problem has no training images")
    train = (problem.train_x.to(device), problem.train_y.to(device))

    model = copy.deepcopy(model).to(device)
    head = _classifier_module(model, classifier)
    optim = _optimizer(model, head, classifier, config)
    # NHWC convolutions are faster on the CPU (oneDNN) and are cuDNN's fast path (as in search).
    model.to(memory_format=torch.channels_last)
    rule = BestAccuracy(config.early_stop)
    job = _FineTuning(model, head, optim, config, train, splits, normalize, gen, f"finetune {problem.name}")
    done = fit(job, rule, select_on=config.select_on, max_epochs=config.max_epochs, generator=gen, device=device,
               resume=resume, on_epoch=on_epoch, progress=progress)
    return FinetuneResult(state_dict=done.kept, best_epoch=rule.selected_epoch, best_acc=rule.best_acc,
                          history=done.history)


class _FineTuning:
    """Fine-tuning as a :class:`~seam.reengineer.loop.Job`: SGD on cross-entropy, the model in
    train mode (BatchNorm statistics move), or only the output layer."""

    def __init__(self, model: nn.Module, head: nn.Module, optim: torch.optim.Optimizer, config: FinetuneConfig,
                 train: tuple[torch.Tensor, torch.Tensor], splits: dict, normalize: Normalize,
                 gen: torch.Generator, desc: str):
        self.model, self.head, self.optim, self.config = model, head, optim, config
        self.train, self.splits, self.normalize, self.gen, self.desc = train, splits, normalize, gen, desc

    @staticmethod
    def _loss(logits: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(logits, y)
        return loss, torch.stack([loss.detach() * n, (logits.detach().argmax(1) == y).sum()])

    def epoch(self, epoch: int, progress: bool) -> dict:
        _set_train_mode(self.model, self.head, self.config.train_only_output)
        sums, _ = train_epoch(self.model, self.optim, *self.train, normalize=self.normalize, generator=self.gen,
                              batch_size=self.config.batch_size, loss_fn=self._loss, desc="finetune",
                              progress=progress)
        loss, train_acc = (sums / len(self.train[1])).tolist()
        return {"loss": loss, "train_acc": train_acc,
                **evaluate(self.model, self.splits, self.normalize, self.train[0].device)}

    def keep(self) -> dict:
        return {k: v.detach().clone(memory_format=torch.contiguous_format).cpu()
                for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optim.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optimizer"])

    def postfix(self, row: dict) -> dict:
        return {"loss": f"{row['loss']:.4f}", **{k: f"{row[k]:.4f}" for k in row if k.endswith("_acc")}}


def _optimizer(model: nn.Module, head: nn.Module, classifier: str, config: FinetuneConfig) -> torch.optim.SGD:
    """SGD with the output layer at ``lr_output`` and the rest at ``lr_hidden`` (or frozen)."""
    output_params = list(head.parameters())
    if not output_params:
        raise FinetuneError(f"{type(model).__name__}.{classifier} has no parameters to train")
    output_ids = {id(p) for p in output_params}
    hidden_params = [p for p in model.parameters() if id(p) not in output_ids]
    # The copy may come out of a search with frozen weights: fine-tuning trains everything
    # (as the release's step 3 does), or the output layer alone.
    for p in hidden_params:
        p.requires_grad_(not config.train_only_output)
    for p in output_params:
        p.requires_grad_(True)
    groups = [{"params": output_params, "lr": config.lr_output}]
    if hidden_params and not config.train_only_output:
        groups.insert(0, {"params": hidden_params, "lr": config.lr_hidden})
    return torch.optim.SGD(groups, lr=config.lr_hidden, momentum=config.momentum, weight_decay=config.weight_decay)


def _set_train_mode(model: nn.Module, head: nn.Module, only_output: bool) -> None:
    model.train()
    if only_output:
        # A frozen backbone is a fixed feature extractor: BatchNorm must not update its
        # running statistics (nor dropout inside it fire). The output layer (and a dropout
        # placed before it by replace_classifier) stays in train mode.
        model.eval()
        head.train()
