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
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seam.core.errors import SeamError
from seam.core.resume import ResumeFile, restore_fields, rng_state, set_rng_state
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.masks import apply_masks
from seam.reengineer.loop import batch_bar, evaluate, remaining_epochs, train_epoch
from seam.reengineer.stopping import BestAccuracy


class FinetuneError(SeamError, ValueError):
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


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run; the stages fill it from params.yaml, where they are checked."""

    lr_hidden: float             # SGD lr of every layer but the output layer (SeaM/ReMos release)
    lr_output: float             # SGD lr of the output layer
    momentum: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    early_stop: int              # stop after this many epochs without a better selection-split accuracy (<=0: never)
    select_on: str               # "val" or "test" (the release stops on the test split)
    seed: int
    train_only_output: bool = False   # step 1 of the SeaM flow: train the output layer only
    padding: int = 4             # random-crop padding of the training augmentation


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
    ``model`` itself is not modified. With ``resume``, the whole state is saved after every
    epoch and a saved state of the same run is continued: the rows already done go to
    ``on_epoch`` again, and the result equals an uninterrupted run's.
    """
    device = torch.device(device)
    torch.manual_seed(config.seed)  # dropout draws from the global RNG
    gen = torch.Generator().manual_seed(config.seed)
    normalize = Normalize(mean, std, device)
    splits = problem.eval_splits()
    if config.select_on not in splits:
        raise FinetuneError(f"select_on is {config.select_on!r} but target problem {problem.name!r} has no "
                            f"{config.select_on} images (set prepare.val_fraction > 0 or select_on: test)")
    if not len(problem.train_y):
        raise FinetuneError("the target problem has no training images")
    train_x, train_y = problem.train_x.to(device), problem.train_y.to(device)

    model = copy.deepcopy(model).to(device)
    head = _classifier_module(model, classifier)
    optim = _optimizer(model, head, classifier, config)
    # NHWC convolutions are faster on the CPU (oneDNN) and are cuDNN's fast path (as in search).
    model.to(memory_format=torch.channels_last)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(logits, y)
        return loss, torch.stack([loss.detach() * n, (logits.detach().argmax(1) == y).sum()])

    rule = BestAccuracy(config.early_stop)
    best_state = None
    history = []
    state = resume.load() if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        set_rng_state(state, gen, device)
        restore_fields(rule, state["rule"])
        best_state, history = state["best"], list(state["history"])
    epochs = remaining_epochs(history, rule.should_stop, config.max_epochs, desc=f"finetune {problem.name}",
                              progress=progress, on_epoch=on_epoch)
    for epoch in epochs:
        _set_train_mode(model, head, config.train_only_output)
        sums, _ = train_epoch(model, optim, train_x, train_y, normalize=normalize, generator=gen,
                              batch_size=config.batch_size, padding=config.padding, loss_fn=loss_fn,
                              desc="finetune", progress=batch_bar(progress))
        loss, train_acc = (sums / len(train_y)).tolist()
        accs = evaluate(model, splits, normalize, device)
        improved = rule.update(epoch, accs[config.select_on])
        if improved:
            best_state = {k: v.detach().clone(memory_format=torch.contiguous_format).cpu()
                          for k, v in model.state_dict().items()}
        row = {"epoch": epoch, "loss": loss, "train_acc": train_acc, **{f"{s}_acc": a for s, a in accs.items()},
               "selected": improved}
        history.append(row)
        if resume is not None:
            resume.save({"epoch": epoch, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                         "optimizer": optim.state_dict(), **rng_state(gen, device), "rule": asdict(rule),
                         "best": best_state, "history": history})
        if on_epoch is not None:
            on_epoch(row)
        epochs.set_postfix(loss=f"{loss:.4f}", **{f"{config.select_on}_acc": f"{accs[config.select_on]:.4f}"})
        if rule.should_stop:
            break

    assert best_state is not None  # the first epoch always beats -1
    return FinetuneResult(state_dict=best_state, best_epoch=rule.selected_epoch, best_acc=rule.best_acc,
                          history=history)


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
