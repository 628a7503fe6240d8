"""A standard structured-pruning baseline for a channel search: L1-norm filter pruning.

Li et al. (ICLR 2017) keep each layer's filters of largest L1 norm. Here the baseline keeps
exactly as many channels per layer as a channel search kept, so both compact models have the
same widths, FLOPs and latency by construction, and only which channels stay differs. Channels
tied by a residual add (one score in the search) go together, ranked by the sum of their rows'
L1 norms, each relative to its layer's mean row norm.
"""

from __future__ import annotations

import torch
from torch import nn

from seam.models.masks import ChannelGate, ChannelScoreMask


def group_keep(rows: dict[str, ChannelScoreMask], bool_masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The shared gate's groups a channel result keeps (bool per group), from its bool masks by
    tensor name (an artifact's ``masks``); ``rows`` are the channel masks by layer name."""
    gate = next(iter(rows.values())).gate
    keep = torch.zeros(gate.scores.shape, dtype=torch.bool, device=gate.scores.device)
    for layer, m in rows.items():
        kept_rows = bool_masks[f"{layer}.weight"].flatten(1).any(1).to(keep.device)
        keep[m.index[kept_rows]] = True
    return keep


def l1_importance(model: nn.Module, rows: dict[str, ChannelScoreMask]) -> torch.Tensor:
    """Per group: the sum over its rows of the row's L1 norm over its layer's mean row L1 norm."""
    gate = next(iter(rows.values())).gate
    score = torch.zeros(gate.scores.shape, dtype=torch.float64, device=gate.scores.device)
    for layer, m in rows.items():
        module = model.get_submodule(layer)
        weight = module.parametrizations.weight.original if hasattr(module, "parametrizations") else module.weight
        norms = weight.detach().abs().flatten(1).sum(1).double()
        score.index_add_(0, m.index, norms / norms.mean().clamp_min(1e-12))
    return score


def l1_keep_like(gate: ChannelGate, importance: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Groups to keep so that every width unit of ``gate`` keeps as many as ``reference`` does,
    the most important first. Units are filled smallest first (as the gate rounds them): a unit
    inside a larger one (a residual stage inside the next) is decided before the larger counts it."""
    out = torch.zeros_like(reference)
    done = torch.zeros_like(reference)
    for unit in gate.units:
        need = int(reference[unit].sum()) - int(out[unit].sum())
        free = unit[~done[unit]]
        if need > len(free) or need < 0:
            raise ValueError(f"width unit of {len(unit)} groups cannot keep {int(reference[unit].sum())} "
                             f"with {int(out[unit].sum())} already decided")
        out[free[torch.argsort(importance[free], descending=True, stable=True)[:need]]] = True
        done[unit] = True
    return out
