"""reengineer.granularity: channel masks, and the count of what a channel mask keeps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import TinyNet, tiny_target
from seam.architectures import chenyaofo_cifar_resnet, cifar_resnet
from seam.compact import ChannelCost, compact, passes
from seam.granularity import ChannelGranularity, WeightGranularity, granularity
from seam.masking import apply_masks, attach_masks, binary_masks, fill_masks, mask_scores
from seam.search import SearchConfig, search
from seam.selection import AccuracyTarget


def _random_bn(model: nn.Module) -> nn.Module:
    """BatchNorm shifts that make a removed channel a non-zero constant (the hard case)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.bias.uniform_(-1, 1)
    return model.eval()


def _channel_masks(model: nn.Module, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    masks = {}
    for name, k in keep.items():
        m = model.get_submodule(name)
        masks[f"{name}.weight"] = k.bool().view(-1, *[1] * (m.weight.dim() - 1)).expand_as(m.weight)
        if m.bias is not None:
            masks[f"{name}.bias"] = k.bool()
    return masks


@pytest.mark.parametrize("build", [lambda: cifar_resnet(20), lambda: chenyaofo_cifar_resnet(20, 10)],
                         ids=["option-A shortcuts", "1x1 downsample"])
def test_the_count_follows_the_compact_model_layer_by_layer(build):
    """Kept rows x live input channels, per layer, as the compact export removes them (through
    BatchNorm constants, option-A padding and residual adds); the output layer aside, whose
    removed rows the model's own output still shows (in a search, the head reads them)."""
    torch.manual_seed(0)
    model = _random_bn(build())
    x = torch.randn(2, 3, 32, 32)
    cost = ChannelCost(model, x)
    g = torch.Generator().manual_seed(1)
    keep = {name: (torch.rand(shape[0], generator=g) > 0.3).float() for name, shape in cost.shapes.items()}
    masked = apply_masks(copy.deepcopy(model), fill_masks(model, _channel_masks(model, keep)))
    _, report = compact(masked, x)
    live = passes.liveness(cost.g, cost.ops, keep, torch.zeros(1))
    output_layer = list(cost.shapes)[-1]
    checked = 0
    for name in cost.shapes:
        if name == output_layer:
            continue
        layer = report["layers"][name]
        assert layer["out"][1] == int(keep[name].sum()), name
        assert layer["in"][1] == int(live[cost.inputs[name]].sum()), name
        checked += 1
    assert checked == len(cost.shapes) - 1 > 15
    assert cost({n: torch.ones(s[0]) for n, s in cost.shapes.items()}) == cost.total
    assert cost(keep) < 0.7 * cost.total  # removed channels take their consumers' slices along


def test_the_count_is_differentiable_in_every_layers_keep():
    model = _random_bn(cifar_resnet(8))
    cost = ChannelCost(model, torch.randn(1, 3, 16, 16))
    keep = {n: torch.ones(s[0], requires_grad=True) for n, s in cost.shapes.items()}
    cost(keep).backward()
    # a row's gradient: its own weights and bias, plus its consumers' input slices
    assert all(k.grad is not None and (k.grad > 0).all() for k in keep.values())
    stem = model.conv1.weight
    assert keep["conv1"].grad[0] > stem[0].numel()


def test_channel_masks_share_one_score_per_layer_and_expand_to_the_tensor():
    model = TinyNet()
    masks = attach_masks(model, per_channel=True)
    assert masks["conv2.weight"].scores is masks["conv2.bias"].scores
    assert len(mask_scores(masks)) == 3 and mask_scores(masks)[1].shape == (8,)
    with torch.no_grad():
        masks["conv2.weight"].scores[[1, 4]] = -1.0
    bits = binary_masks(masks)
    assert bits["conv2.weight"].shape == (8, 8, 3, 3) and bits["conv2.bias"].shape == (8,)
    assert (~bits["conv2.weight"]).flatten(1).all(1).nonzero().flatten().tolist() == [1, 4]
    assert bits["conv2.bias"].logical_not().nonzero().flatten().tolist() == [1, 4]
    x = torch.randn(2, 3, 8, 8)
    out = model.conv2(torch.relu(model.bn(model.conv(x))))
    assert (out[:, [1, 4]] == 0).all() and (out[:, [0, 2, 3]] != 0).any()


def test_weight_granularity_is_the_plain_entry_count():
    model = TinyNet()
    grain = granularity("weight", model, torch.randn(1, 3, 8, 8))
    assert isinstance(grain, WeightGranularity)
    masks = grain.attach(model)
    with torch.no_grad():
        masks["conv.weight"].scores.fill_(-1)
    total = sum(m.scores.numel() for m in masks.values())
    assert grain.retention(masks).item() == pytest.approx(1 - masks["conv.weight"].scores.numel() / total)
    with pytest.raises(ValueError, match="granularity must be one of"):
        granularity("filter", model, torch.randn(1, 3, 8, 8))


def test_a_channel_search_removes_whole_filters_and_compacts_to_a_smaller_dense_model():
    torch.manual_seed(1)
    model = TinyNet(width=16).eval()
    data = tiny_target()
    config = SearchConfig(alpha=2.0, lr_mask=0.1, lr_head=0.05, batch_size=16, max_epochs=10, select_on="val",
                          seed=0, granularity="channel")
    result = search(model, data, mean=(0.5,) * 3, std=(0.25,) * 3, config=config, stop=AccuracyTarget.factory(0),
                    progress=False)
    kept = result.history[result.selected_epoch]["retention"]
    assert kept < 1.0
    for name, bits in result.masks.items():
        rows = bits.flatten(1) if bits.dim() > 1 else bits[:, None]
        assert (rows.all(1) | ~rows.any(1)).all(), f"{name}: a row partly masked"
    grain = ChannelGranularity(model, torch.randn(1, 3, 8, 8))
    masked = apply_masks(copy.deepcopy(model), result.masks)
    small, report = compact(masked, torch.randn(2, 3, 8, 8))
    assert report["params_after"] < report["params_before"]
    assert grain.cost.total == report["params_before"]
