import pytest
import torch
from conftest import TinyNet
from torch import nn

from seam.models.masks import apply_masks, attach_masks, binarize, binary_masks, count_kept, maskable_tensors, retention


def test_ste_forward_is_indicator_and_backward_is_hardtanh():
    scores = torch.tensor([-0.5, 0.0, 0.3, 2.0], requires_grad=True)
    mask = binarize(scores)
    assert mask.tolist() == [0.0, 0.0, 1.0, 1.0]
    mask.backward(torch.tensor([-3.0, 0.5, 2.0, -0.2]))
    assert scores.grad.tolist() == pytest.approx([-1.0, 0.5, 1.0, -0.2])


def test_every_conv_and_linear_weight_and_bias_is_masked():
    model = TinyNet()
    names = [n for n, _, _ in maskable_tensors(model)]
    assert names == ["conv.weight", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"]
    masks = attach_masks(model)
    assert list(masks) == names
    # BatchNorm is not masked, and every original parameter is frozen.
    assert not any(p.requires_grad for n, p in model.named_parameters() if "scores" not in n)
    assert all(m.scores.requires_grad for m in masks.values())


def test_masked_forward_uses_weight_times_mask():
    layer = nn.Linear(3, 2)
    original = layer.weight.detach().clone()
    masks = attach_masks(layer)
    with torch.no_grad():
        masks["weight"].scores[0, 1] = -1.0
    expected = original.clone()
    expected[0, 1] = 0
    assert torch.equal(layer.weight, expected)
    assert torch.equal(layer.parametrizations.weight.original, original)


def test_retention_counts_kept_entries():
    model = TinyNet()
    masks = attach_masks(model)
    total = sum(m.scores.numel() for m in masks.values())
    assert retention(masks).item() == pytest.approx(1.0)
    with torch.no_grad():
        masks["conv.weight"].scores.fill_(-1)
        masks["fc.bias"].scores[0] = -1
    kept_expected = total - masks["conv.weight"].scores.numel() - 1
    assert retention(masks).item() == pytest.approx(kept_expected / total)
    assert count_kept(binary_masks(masks)) == (kept_expected, total)


def test_retention_gradient_reaches_every_score():
    masks = attach_masks(TinyNet())
    retention(masks).backward()
    total = sum(m.scores.numel() for m in masks.values())
    for m in masks.values():
        assert torch.allclose(m.scores.grad, torch.full_like(m.scores, 1 / total))


def test_apply_masks_zeroes_and_checks_names_and_shapes():
    model = TinyNet()
    before = model.conv.weight.detach().clone()
    bool_masks = {n: torch.ones_like(getattr(m, p), dtype=torch.bool) for n, m, p in maskable_tensors(model)}
    bool_masks["conv.weight"][0] = False
    apply_masks(model, bool_masks)
    assert torch.all(model.conv.weight[0] == 0) and torch.equal(model.conv.weight[1:], before[1:])
    with pytest.raises(ValueError, match="missing"):
        apply_masks(model, {k: v for k, v in bool_masks.items() if k != "fc.bias"})
    bad = dict(bool_masks, **{"fc.bias": torch.ones(7, dtype=torch.bool)})
    with pytest.raises(ValueError, match="fc.bias has shape"):
        apply_masks(model, bad)


def test_attach_twice_is_an_error():
    model = TinyNet()
    attach_masks(model)
    with pytest.raises(ValueError, match="already"):
        attach_masks(model)
