"""The structured baseline: L1-norm filter pruning at a channel search's own widths."""

from __future__ import annotations

import copy

import torch
from torch import nn

from seam.models.architectures import cifar_resnet
from seam.models.masks import ChannelGate, binary_masks, mask_scores
from seam.reengineer.baseline import group_keep, l1_importance, l1_keep_like
from seam.reengineer.granularity import ChannelGranularity


def test_l1_keeps_the_largest_groups_at_each_units_width_smallest_unit_first():
    importance = torch.tensor([5.0, 1.0, 4.0, 3.0, 9.0, 8.0, 0.0, 7.0])
    inner, outer = torch.tensor([0, 1, 2, 3]), torch.arange(8)  # outer contains inner (a residual stage)
    gate = ChannelGate(nn.Parameter(torch.zeros(8)), [(outer, 1), (inner, 1)])
    reference = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)  # inner keeps 2, outer 5
    keep = l1_keep_like(gate, importance, reference)
    # inner: its two largest (0: 5, 2: 4); outer: 3 more among 4..7 (4: 9, 5: 8, 7: 7), never 3
    assert keep.tolist() == [True, False, True, False, True, True, False, True]


def test_the_baseline_has_the_searchs_widths_and_ranks_by_l1_norm():
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    x = torch.randn(2, 3, 32, 32)
    grain = ChannelGranularity(model, x, round_to=8)
    searched = copy.deepcopy(model)
    masks = grain.attach(searched)
    (scores,) = mask_scores(masks)
    with torch.no_grad():
        scores.copy_(torch.rand(scores.shape, generator=torch.Generator().manual_seed(3)) - 0.5)
    result = binary_masks(masks)  # a stand-in for a channel search's artifact masks

    reference = group_keep(grain.rows, result)
    gate = next(iter(masks.values())).gate
    widths = {layer: int(result[f"{layer}.weight"].flatten(1).any(1).sum()) for layer in grain.rows}
    importance = l1_importance(searched, grain.rows)
    keep = l1_keep_like(gate, importance, reference)
    with torch.no_grad():
        scores.copy_(torch.where(keep, 1.0, -1.0))
    assert {layer: int((m.row_keep() > 0).sum()) for layer, m in grain.rows.items()} == widths
    assert not torch.equal(keep, reference)  # the same widths, other channels
    # an inner conv's channels are their own groups: it keeps its filters of largest L1 norm
    conv = "layer2.1.conv1"
    norms = searched.get_submodule(conv).parametrizations.weight.original.abs().flatten(1).sum(1)
    kept = keep[grain.rows[conv].index]
    assert norms[kept].min() >= norms[~kept].max()
