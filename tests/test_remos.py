"""Tests for seam.reuse.remos: neuron coverage, the coverage-minus-magnitude slice, and the ReMoS flow."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TinyNet, tiny_target
from torch import nn

from seam.data.augment import Normalize
from seam.reuse.finetune import FinetuneConfig
from seam.reuse.remos import Coverage, RemosError, coverage, covered_channels, relevant_slice, remos_flow


class TwoConvs(nn.Module):
    """a: 1 -> 2 channels (1x1 kernels, 1 weight per slice); b: 2 -> 1 channel (2x2, 4 per slice)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1, bias=False)
        self.b = nn.Conv2d(2, 1, 2, bias=False)

    def forward(self, x):
        return self.b(self.a(x))


def test_covered_channels_scales_the_whole_tensor_per_image():
    t = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]], [[0.0, -1.0], [-1.0, -1.0]]],   # scaled to [0.5,1,1,1], [0.5,0,0,0]
                      [[[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]]]])     # constant: nothing covered
    assert covered_channels(t, 0.5).tolist() == [[True, False], [False, False]]
    assert covered_channels(t, 0.9).tolist() == [[False, False], [False, False]]  # 0.875 is not above 0.9


def test_coverage_hooks_every_conv_input_and_output_before_bn():
    model = TwoConvs()
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        model.b.weight.fill_(1.0)
    images = torch.tensor([[0, 255], [255, 255]], dtype=torch.uint8).view(1, 1, 2, 2)
    images = torch.cat([images, torch.zeros_like(images)])   # the second image covers nothing
    cov = coverage(model, images, Normalize([0.0], [1.0]), threshold=0.5, progress=False)
    assert cov.images == 2
    assert cov.inputs["a"].tolist() == [1]        # [0,1,1,1]: mean 0.75
    assert cov.outputs["a"].tolist() == [1, 0]    # channels x and -x, scaled together
    assert cov.inputs["b"].tolist() == [1, 0]
    assert cov.outputs["b"].tolist() == [0]       # one output value per image: constant, not covered


def hand_set() -> tuple[TwoConvs, Coverage]:
    """Slice scores a(o0,i0)=3, a(o1,i0)=8, b(o0,i0)=3, b(o0,i1)=6; coverage ranks of the weights:
    a: [0, 9] (sorted: a00, b00, b01, a10; b's slices hold 4 weights), b00: 1, b01: 5."""
    model = TwoConvs()
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([0.5, -0.05]).view(2, 1, 1, 1))
        model.b.weight.copy_(torch.tensor([[0.1, -0.2, 0.3, 0.4], [0.6, 0.7, -0.8, 0.9]]).view(1, 2, 2, 2))
    cov = Coverage(inputs={"a": torch.tensor([3]), "b": torch.tensor([1, 4])},
                   outputs={"a": torch.tensor([0, 5]), "b": torch.tensor([2])}, images=10)
    return model, cov


@pytest.mark.parametrize("ratio, removed", [
    # score = coverage rank - magnitude rank: a: [0-5, 9-0]; b00: [1-1, 1-2, 1-3, 1-4]; b01: [5-6, 5-7, 5-8, 5-9]
    (0.2, {("a", 0), ("b", 7)}),
    (0.4, {("a", 0), ("b", 7), ("b", 3), ("b", 6)}),
    (0.05, set()),                      # int(0.05 * 10) = 0 weights
])  # fmt: skip
def test_relevant_slice_removes_the_lowest_coverage_minus_magnitude(ratio, removed):
    model, cov = hand_set()
    found = relevant_slice(model, cov, ratio)
    got = {(name.split(".")[0], i) for name, m in found.masks.items() for i in torch.nonzero(~m.flatten()).flatten().tolist()}
    assert got == removed
    assert set(found.masks) == {"a.weight", "b.weight"}
    assert found.counts() == (len(removed), 10)
    assert found.removed()["a.weight"] == pytest.approx(0.5 if ("a", 0) in removed else 0.0)


def test_relevant_slice_grouped_conv_reads_its_groups_input_channels():
    conv = nn.Conv2d(4, 2, 1, groups=2, bias=False)   # out 0 reads in 0-1, out 1 reads in 2-3
    with torch.no_grad():
        conv.weight.fill_(1.0)
    model = nn.Sequential(conv)
    cov = Coverage(inputs={"0": torch.tensor([0, 0, 9, 9])}, outputs={"0": torch.tensor([0, 0])}, images=9)
    found = relevant_slice(model, cov, 0.5)   # equal magnitudes: the two low-coverage slices go
    assert found.masks["0.weight"].flatten().tolist() == [False, False, True, True]


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, True])
def test_ratio_outside_zero_one_is_refused(ratio):
    model, cov = hand_set()
    with pytest.raises(RemosError, match=r"ratio must be a share of the conv weights in \(0, 1\)"):
        relevant_slice(model, cov, ratio)


def test_model_without_conv2d_is_refused():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(RemosError, match="Sequential has no nn.Conv2d layer: ReMoS slices convolution kernels"):
        coverage(mlp, torch.zeros(2, 3, 2, 2, dtype=torch.uint8), Normalize([0.0] * 3, [1.0] * 3), progress=False)


def test_empty_training_split_is_refused():
    with pytest.raises(RemosError, match="no training images"):
        coverage(TinyNet(), torch.zeros(0, 3, 8, 8, dtype=torch.uint8), Normalize([0.0] * 3, [1.0] * 3))
    problem = tiny_target()
    empty = dataclasses.replace(problem, train_x=problem.train_x[:0], train_y=problem.train_y[:0])
    with pytest.raises(RemosError, match="target problem 'tiny' has no training images"):
        remos_flow(TinyNet(), "fc", empty, mean=[0.5] * 3, std=[0.25] * 3, config=CONFIG, dropout=0.0,
                   device="cpu", ratio=0.1, coverage_threshold=0.5, keep_mask=False)


CONFIG = FinetuneConfig(lr_hidden=0.05, lr_output=0.1, momentum=0.9, weight_decay=1e-4, batch_size=16,
                        max_epochs=2, early_stop=0, select_on="val", seed=0)


@pytest.mark.parametrize("keep_mask", [False, True])
def test_remos_flow_zeroes_once_then_fine_tunes(keep_mask):
    torch.manual_seed(0)
    pretrained = TinyNet(num_classes=4)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    problem = tiny_target()
    model, summary = remos_flow(pretrained, "fc", problem, mean=[0.5] * 3, std=[0.25] * 3, config=CONFIG,
                                dropout=0.0, device="cpu", ratio=0.3, coverage_threshold=0.5, keep_mask=keep_mask)
    conv_weights = pretrained.conv.weight.numel() + pretrained.conv2.weight.numel()
    assert summary["removed_rate_conv"] == int(0.3 * conv_weights) / conv_weights
    searched = conv_weights + pretrained.conv2.bias.numel()   # every maskable tensor but the output layer
    assert summary["removed_rate"] == pytest.approx(int(0.3 * conv_weights) / searched)
    assert set(summary["removed_per_layer"]) == {"conv.weight", "conv2.weight"}
    assert model.fc.out_features == 2 and summary["epochs_run"] == 2
    assert not any("parametrizations" in k for k in model.state_dict())  # a plain model is saved
    zeros = sum(int((getattr(model, c).weight == 0).sum()) for c in ("conv", "conv2"))
    if keep_mask:   # the removed weights stay removed through fine-tuning
        assert zeros == int(0.3 * conv_weights)
    else:           # ReMoS's default: they start at zero and train like the rest
        assert zeros < int(0.3 * conv_weights)
    assert all(torch.equal(v, before[k]) for k, v in pretrained.state_dict().items())  # the input is untouched


def test_equal_coverage_scores_rank_input_major_as_the_remos_artifact_lists_slices():
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    cov = Coverage(inputs={"0": torch.tensor([1, 1])}, outputs={"0": torch.tensor([1, 1])}, images=1)
    # coverage ranks (o, i): (0,0) 0, (1,0) 1, (0,1) 2, (1,1) 3; magnitude ranks row-major: 0, 1, 2, 3
    found = relevant_slice(nn.Sequential(conv), cov, 0.25)
    assert found.masks["0.weight"].flatten().tolist() == [True, True, False, True]   # (1,0): 1 - 2 = -1
