"""Malicious inputs for defect inheritance (the paper's RQ3, following ReMos).

An untargeted advertorch ``LinfPGDAttack`` against the *pretrained* feature extractor
(the model with its classifier replaced by the identity), with the ReMos/SeaM release
loss on the penultimate features; DIR then measures how many clean-correct predictions
of a reused (fine-tuned / re-engineered) model the attack flips.
"""

from __future__ import annotations

import collections.abc
import copy
import importlib
from typing import Sequence

import torch
from torch import Tensor, nn

from seam.core.errors import SeamError
from seam.data.augment import Normalize

# ReMos's target: the first feature driven to 1000, the others to 0.
TARGET_VALUE = 1000.0
# Weight of the other features' mean squared distance in the ReMos loss.
REST_WEIGHT = 0.1


class AttackError(SeamError, ValueError):
    """Bad input to the attack or to the defect metrics."""


def _zero_gradients(x) -> None:
    """Zero ``x.grad`` (or that of each tensor in an iterable) in place, as torch < 1.9 did."""
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    elif isinstance(x, collections.abc.Iterable):
        for elem in x:
            _zero_gradients(elem)


def install_advertorch_shim() -> None:
    """Give ``torch.autograd.gradcheck`` the ``zero_gradients`` advertorch 0.2.3 imports.

    torch removed it in 1.9; installed only if missing, so calling this again is a no-op.
    """
    # `torch.autograd.gradcheck` as an attribute is the function; advertorch's
    # `from torch.autograd.gradcheck import ...` reads the module of that name.
    module = importlib.import_module("torch.autograd.gradcheck")
    if not hasattr(module, "zero_gradients"):
        module.zero_gradients = _zero_gradients


def feature_extractor(model: nn.Module, classifier: str) -> nn.Module:
    """A deep copy of ``model`` in eval mode whose ``classifier`` (dotted path) is ``nn.Identity``.

    Its output is the penultimate features, the input of the classifier. ``model`` is untouched.
    """
    name = type(model).__name__
    if not classifier:
        raise AttackError(f"empty classifier path for {name}: name its final nn.Linear, e.g. 'fc'")
    try:
        layer = model.get_submodule(classifier)
    except AttributeError:
        raise AttackError(f"{name} has no submodule {classifier!r} to use as the classifier") from None
    if not isinstance(layer, nn.Linear):
        raise AttackError(
            f"{name}.{classifier} is a {type(layer).__name__}, not an nn.Linear classifier")
    extractor = copy.deepcopy(model).eval()
    parent_path, _, leaf = classifier.rpartition(".")
    # setattr also replaces Sequential children ("classifier.6" -> key "6").
    setattr(extractor.get_submodule(parent_path), leaf, nn.Identity())
    return extractor


def make_target(features: Tensor) -> Tensor:
    """ReMos's feature target: zeros shaped like ``features``, except column 0 = 1000."""
    target = torch.zeros_like(features)
    target[:, 0] = TARGET_VALUE
    return target


def _check_features(features: Tensor) -> None:
    if features.dim() != 2 or features.shape[1] < 2:
        raise AttackError(
            f"expected features of shape [B, D] with D >= 2, got {tuple(features.shape)}")


def remos_feature_loss(features: Tensor, target: Tensor) -> Tensor:
    """The ReMos/SeaM release loss, a batch mean: the negative distance of features to ``target``.

    Implemented as in SeaM's ``src/defect_inherit/eval_robustness.py`` (``myloss``, "copy
    from ICSE'22 ReMos"), which matches SEAM-METHOD.md::

        -((f[:, 0] - y[:, 0]) ** 2 + 0.1 * ((f[:, 1:] - y[:, 1:]) ** 2).mean(1)).mean()

    i.e. per input the squared error of feature 0 plus 0.1 x the *mean* (not the sum)
    squared error of the other features, averaged over the batch and negated.
    Maximising it (the untargeted attack) pulls the features towards ``target``.
    """
    _check_features(features)
    if target.shape != features.shape:
        raise AttackError(f"target shape {tuple(target.shape)} != features shape {tuple(features.shape)}")
    first = (features[:, 0] - target[:, 0]) ** 2
    rest = ((features[:, 1:] - target[:, 1:]) ** 2).mean(1)
    return -(first + REST_WEIGHT * rest).mean()


def _summed_remos_loss(features: Tensor, target: Tensor) -> Tensor:
    """``remos_feature_loss`` with sum over the batch, advertorch's default reduction.

    Inputs are independent (eval mode), so each input's gradient is the release's times
    the batch size: the L-inf step uses only its sign, so the attack is the same, but the
    gradient does not shrink with the batch (no underflow to a zero sign).
    """
    return remos_feature_loss(features, target) * features.shape[0]


def generate_adversarial(
    extractor: nn.Module,
    images: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    eps: float = 0.1,
    nb_iter: int = 40,
    eps_iter: float = 0.01,
    clip: tuple[float, float] = (-2.2, 2.2),
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Tensor:
    """ReMos's PGD attack on uint8 ``images`` [N, 3, H, W]; adversarial inputs, normalised.

    Each batch is normalised with ``mean``/``std``, then attacked by an untargeted advertorch
    ``LinfPGDAttack`` (random start, L-inf radius ``eps``, ``nb_iter`` steps of ``eps_iter``,
    clipped to ``clip`` in the normalised space) that maximises ``remos_feature_loss`` against
    ``make_target``. Batch i's random start is drawn from ``torch.manual_seed(seed + i)``
    inside a forked RNG, so results are reproducible and the caller's RNG is untouched.
    ``extractor`` is moved to ``device`` and put in eval mode; its parameters get no grads.
    Returns float32 [N, 3, H, W] on the CPU.
    """
    from tqdm.auto import tqdm

    install_advertorch_shim()
    from advertorch.attacks import LinfPGDAttack

    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise AttackError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if not eps > 0 or not eps_iter > 0 or nb_iter < 1 or batch_size < 1:
        raise AttackError(
            f"need eps > 0, eps_iter > 0, nb_iter >= 1, batch_size >= 1; "
            f"got {eps}, {eps_iter}, {nb_iter}, {batch_size}")
    clip_min, clip_max = float(clip[0]), float(clip[1])
    if not clip_min < clip_max:
        raise AttackError(f"clip must be (min, max) with min < max, got {clip}")

    device = torch.device(device)
    extractor = extractor.to(device).eval()
    normalize = Normalize(mean, std, device)
    attack = LinfPGDAttack(
        extractor, loss_fn=_summed_remos_loss, eps=eps, nb_iter=nb_iter, eps_iter=eps_iter,
        rand_init=True, clip_min=clip_min, clip_max=clip_max, targeted=False)

    # Only the input needs a gradient; restore the caller's flags afterwards.
    params = list(extractor.parameters())
    flags = [p.requires_grad for p in params]
    rng_devices = [device] if device.type == "cuda" else []
    starts = range(0, len(images), batch_size)
    out = []
    try:
        for p in params:
            p.requires_grad_(False)
        for i, start in enumerate(tqdm(starts, desc="pgd", unit="batch", disable=not progress)):
            x = normalize(images[start:start + batch_size].to(device))
            with torch.no_grad():
                features = extractor(x)
            _check_features(features)
            target = make_target(features)
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(seed + i)
                adv = attack.perturb(x, target)
            out.append(adv.detach().float().cpu())
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    if not out:
        return torch.empty(0, *images.shape[1:], dtype=torch.float32)
    return torch.cat(out)


def defect_metrics(clean_logits: Tensor, adv_logits: Tensor, labels: Tensor) -> dict:
    """Clean accuracy and DIR (defect inheritance rate) of a reused model, as fractions.

    ``dir`` = share of the inputs classified correctly when clean that are misclassified
    after the attack (ReMos's attack success rate, ``(trial - success) / trial``).
    """
    if clean_logits.dim() != 2 or adv_logits.shape != clean_logits.shape:
        raise AttackError(
            f"expected clean and adversarial logits of the same shape [N, K], got "
            f"{tuple(clean_logits.shape)} and {tuple(adv_logits.shape)}")
    if labels.shape != (clean_logits.shape[0],):
        raise AttackError(f"expected {clean_logits.shape[0]} labels, got shape {tuple(labels.shape)}")
    labels = labels.to(clean_logits.device)
    clean_correct = clean_logits.argmax(1) == labels
    adv_wrong = adv_logits.to(clean_logits.device).argmax(1) != labels
    n, n_clean_correct = int(labels.numel()), int(clean_correct.sum())
    if n_clean_correct == 0:
        raise AttackError(f"DIR is undefined: none of the {n} clean inputs is classified correctly")
    return {
        "acc": n_clean_correct / n,
        "dir": int((clean_correct & adv_wrong).sum()) / n_clean_correct,
        "n": n,
        "n_clean_correct": n_clean_correct,
    }
