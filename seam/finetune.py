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
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from seam.accuracy import accuracy, predict
from seam.augment import Normalize, random_crop_flip
from seam.errors import SeamError
from seam.masking import apply_masks

SPLITS = ("val", "test")


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
    the model's conv/linear tensors (``seam.masking.maskable_tensors``).
    """
    new_model = copy.deepcopy(model)
    try:
        apply_masks(new_model, masks)
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    return new_model


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run."""

    lr_hidden: float = 0.005     # SGD lr of every layer but the output layer (SeaM/ReMos release)
    lr_output: float = 0.05      # SGD lr of the new output layer
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 10
    early_stop: int = 3          # stop after this many epochs without a better selection-split accuracy (<=0: never)
    select_on: str = "val"       # "val" or "test" (the release stops on the test split)
    train_only_output: bool = False   # step 1 of the SeaM flow: train the new output layer only
    padding: int = 4             # random-crop padding of the training augmentation
    seed: int = 0

    def __post_init__(self) -> None:
        if self.select_on not in SPLITS:
            raise FinetuneError(f"select_on must be one of {SPLITS}, got {self.select_on!r}")
        for key in ("lr_hidden", "lr_output", "batch_size", "max_epochs"):
            if not getattr(self, key) > 0:
                raise FinetuneError(f"{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("momentum", "weight_decay", "padding"):
            if getattr(self, key) < 0:
                raise FinetuneError(f"{key} must be >= 0, got {getattr(self, key)!r}")


@dataclass
class FinetuneResult:
    state_dict: dict                    # best epoch's weights (CPU tensors)
    best_epoch: int
    best_acc: float                     # on config.select_on
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, train_acc, val_acc, test_acc


def finetune(
    model: nn.Module,
    classifier: str,
    data: dict,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    config: FinetuneConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on the target problem in ``data``; return the best epoch's weights.

    ``classifier`` is the dotted path of the output layer (e.g. the one
    ``replace_classifier`` put in): its parameters train at ``lr_output``, all others at
    ``lr_hidden`` (or stay frozen with ``train_only_output``). ``data`` is a prepared
    target problem (see ``seam.targets``). Each epoch evaluates the ``select_on`` split
    (and the other split when it has images); the epoch with the highest selection
    accuracy is kept (first one on ties). ``model`` itself is not modified.
    """
    device = torch.device(device)
    torch.manual_seed(config.seed)  # dropout draws from the global RNG
    gen = torch.Generator().manual_seed(config.seed)
    normalize = Normalize(mean, std, device)

    splits = {s: (data[f"{s}_x"], data[f"{s}_y"]) for s in SPLITS if len(data.get(f"{s}_y", ()))}
    if config.select_on not in splits:
        raise FinetuneError(f"select_on={config.select_on!r} but the target problem has no {config.select_on} images "
                            "(set prepare.val_fraction > 0 or select_on: test)")
    if not len(data["train_y"]):
        raise FinetuneError("the target problem has no training images")
    train_x = data["train_x"].to(device)
    train_y = data["train_y"].to(device)

    model = copy.deepcopy(model).to(device)
    head = _classifier_module(model, classifier)
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
    optim = torch.optim.SGD(groups, lr=config.lr_hidden, momentum=config.momentum, weight_decay=config.weight_decay)
    # NHWC convolutions are faster on the CPU (oneDNN) and are cuDNN's fast path (as in search).
    model.to(memory_format=torch.channels_last)

    best_state, best_epoch, best_acc = None, -1, -1.0
    since_best = 0
    history = []
    batch_bar = progress and sys.stderr.isatty()
    epochs = tqdm(range(config.max_epochs), desc=f"finetune {data.get('name', '')}".strip(), unit="epoch",
                  disable=not progress)
    for epoch in epochs:
        _set_train_mode(model, head, config.train_only_output)
        stats = _train_epoch(model, optim, train_x, train_y, normalize, gen, config, batch_bar)
        accs = {s: accuracy(predict(model, x, normalize, device=device), y) for s, (x, y) in splits.items()}
        improved = accs[config.select_on] > best_acc
        if improved:
            best_acc, best_epoch, since_best = accs[config.select_on], epoch, 0
            best_state = {k: v.detach().clone(memory_format=torch.contiguous_format).cpu()
                          for k, v in model.state_dict().items()}
        else:
            since_best += 1
        row = {"epoch": epoch, **stats, **{f"{s}_acc": a for s, a in accs.items()}, "selected": improved}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        epochs.set_postfix(loss=f"{stats['loss']:.4f}", **{f"{config.select_on}_acc": f"{accs[config.select_on]:.4f}"})
        if 0 < config.early_stop <= since_best:
            break

    assert best_state is not None  # the first epoch always beats -1
    return FinetuneResult(state_dict=best_state, best_epoch=best_epoch, best_acc=best_acc, history=history)


def _set_train_mode(model: nn.Module, head: nn.Module, only_output: bool) -> None:
    model.train()
    if only_output:
        # A frozen backbone is a fixed feature extractor: BatchNorm must not update its
        # running statistics (nor dropout inside it fire). The output layer (and a dropout
        # placed before it by replace_classifier) stays in train mode.
        model.eval()
        head.train()


def _train_epoch(model, optim, train_x, train_y, normalize, gen, config, batch_bar) -> dict:
    n = len(train_y)
    order = torch.randperm(n, generator=gen).to(train_x.device)
    totals = torch.zeros(2, dtype=torch.float64, device=train_x.device)  # summed loss, correct
    batches = range(0, n, config.batch_size)
    for start in tqdm(batches, desc="finetune", leave=False, disable=not batch_bar):
        idx = order[start : start + config.batch_size]
        x = normalize(random_crop_flip(train_x[idx], config.padding, gen)).contiguous(memory_format=torch.channels_last)
        y = train_y[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        # Summed on the device: a .item() per batch would synchronise a GPU every step.
        totals += torch.stack([loss.detach() * len(idx), (logits.detach().argmax(1) == y).sum()]).double()
    loss, correct = (totals / n).tolist()
    return {"loss": loss, "train_acc": correct}
