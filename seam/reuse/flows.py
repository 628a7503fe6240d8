"""Fine-tuned reuse of a pretrained model (the defect-inheritance experiment, RQ3):
standard fine-tuning and SeaM's three-step flow, and the files they leave."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from seam.core.atomic import save_torch
from seam.core.resume import ResumeFile
from seam.data.problem import TargetProblem
from seam.models.masks import apply_masks, count_kept, fill_masks
from seam.reengineer.search import SearchConfig, search
from seam.reengineer.stopping import RemovalThreshold
from seam.reuse.finetune import FinetuneConfig, FinetuneError, finetune, replace_classifier

FORMAT = "seam-finetuned"


def standard(pretrained: nn.Module, classifier: str, problem: TargetProblem, *, mean, std, config: FinetuneConfig,
             dropout: float, device, on_epoch: Callable[[dict], None] | None = None,
             resume: ResumeFile | None = None) -> tuple[nn.Module, dict]:
    """New K-class output layer, then fine-tune every weight."""
    model = replace_classifier(pretrained, classifier, problem.num_classes, dropout=dropout, seed=config.seed)
    result = finetune(model, classifier, problem, mean=mean, std=std, config=config, device=device, on_epoch=on_epoch,
                      resume=resume)
    model.load_state_dict(result.state_dict)
    return model.eval(), {"best_epoch": result.best_epoch, "epochs_run": len(result.history)}


def seam_flow(pretrained: nn.Module, classifier: str, problem: TargetProblem, *, mean, std,
              head_config: FinetuneConfig, search_config: SearchConfig, threshold: float, config: FinetuneConfig,
              dropout: float, device, on_epoch: Callable[[str, dict], None] | None = None,
              resume: ResumeFile | None = None) -> tuple[nn.Module, dict]:
    """SeaM's flow (release): (1) train a new output layer alone, (2) re-engineer that model
    until `threshold` of its weights are removed, (3) start from the pretrained weights times
    the mask, with a fresh output layer, and fine-tune everything. With ``resume``, each step
    keeps its own state (a finished step is replayed from it, not rerun)."""
    num_classes = problem.num_classes
    step = (lambda name: (lambda row: on_epoch(name, row))) if on_epoch else (lambda name: None)
    state = (lambda name: resume.step(name)) if resume is not None else (lambda name: None)

    model = replace_classifier(pretrained, classifier, num_classes, dropout=dropout, seed=head_config.seed)
    head = finetune(model, classifier, problem, mean=mean, std=std, config=head_config, device=device,
                    on_epoch=step("output_layer"), resume=state("output_layer"))
    model.load_state_dict(head.state_dict)

    found = search(model, problem, mean=mean, std=std, config=search_config, stop=RemovalThreshold.factory(threshold),
                   device=device, on_epoch=step("reengineer"), output_layer=classifier, resume=state("reengineer"))
    kept, total = count_kept(found.masks)

    # Release: step 3 rebuilds the model from the pretrained weights, so the output layer
    # starts fresh; only the searched tensors carry the mask.
    start = replace_classifier(pretrained, classifier, num_classes, dropout=dropout, seed=config.seed)
    apply_masks(start, fill_masks(start, found.masks))
    result = finetune(start, classifier, problem, mean=mean, std=std, config=config, device=device,
                      on_epoch=step("finetune"), resume=state("finetune"))
    start.load_state_dict(result.state_dict)
    return start.eval(), {
        "removed_rate": 1 - kept / total,
        "weights_kept": kept,
        "weights_masked_total": total,
        "reengineer_epochs": len(found.history),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
    }


def save_finetuned(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """State dict + what is needed to rebuild the architecture (model name, classifier, K, dropout)."""
    save_torch({"format": FORMAT, "meta": meta, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}},
               path)


def load_finetuned(path: str | os.PathLike, pretrained: nn.Module) -> tuple[nn.Module, dict]:
    """Rebuild a fine-tuned model saved by :func:`save_finetuned` on top of `pretrained`'s architecture."""
    if not os.path.exists(path):
        raise FinetuneError(f"{path}: no such fine-tuned model (run its fine-tuning stage first)")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise FinetuneError(f"{path}: not a {FORMAT} file")
    meta = raw["meta"]
    model = replace_classifier(pretrained, meta["classifier"], meta["num_classes"], dropout=meta["dropout"])
    model.load_state_dict(raw["state_dict"])
    return model.eval(), meta
