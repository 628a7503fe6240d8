import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet
from torch import nn

from seam.deploy.flops import FlopCountAnalysis, count_flops, count_weights, flop_breakdown
from seam.models.architectures import chenyaofo_cifar_resnet
from seam.models.masks import attach_masks, binary_masks


class HandNet(nn.Module):
    """conv 3->2 (3x3, no padding) on a 4x4 image -> 2x2 outputs -> flatten (8) -> linear 8->3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(1.0)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def masked_hand_net() -> HandNet:
    net = HandNet()
    with torch.no_grad():
        net.conv.weight[0] = 0           # the whole first filter: 3*3*3 = 27 zeros
        net.conv.weight[1, 0, 0, 0] = 0  # one more zero in the second filter
        net.conv.bias[1] = 0             # biases are additions: no flops either way
        net.fc.weight[:, :4] = 0         # 3 rows x 4 columns = 12 zeros
    return net


def test_hand_checked_counts():
    # Dense: conv 2*3*3*3 = 54 weights x 2*2 output positions = 216; linear 8*3 = 24. Total 240.
    assert count_flops(HandNet(), 4) == 240
    assert count_flops(masked_hand_net(), 4) == 240  # dense counting ignores zeros
    # Non-zero only: conv (54 - 27 - 1) = 26 weights x 4 positions = 104; linear 24 - 12 = 12.
    assert count_flops(masked_hand_net(), 4, nonzero_only=True) == 104 + 12


def test_count_weights_known_zeros():
    # conv.weight 54 (26 non-zero), conv.bias 2 (1), fc.weight 24 (12), fc.bias 3 (3).
    assert count_weights(HandNet()) == (83, 83)
    assert count_weights(masked_hand_net()) == (26 + 1 + 12 + 3, 54 + 2 + 24 + 3)


def test_dense_count_equals_fvcore_default():
    net = TinyNet().eval()
    x = torch.zeros(1, 3, 8, 8)
    assert count_flops(net, 8) == FlopCountAnalysis(net, x).unsupported_ops_warnings(False).total()
    # And the same for a model without zeros counted with the non-zero rule.
    assert count_flops(net, 8, nonzero_only=True) == count_flops(net, 8)


def test_resnet20_matches_paper_table_v():
    # Table V: ResNet20 (chenyaofo, CIFAR-10) has 41.22M FLOPs by fvcore.
    assert count_flops(chenyaofo_cifar_resnet(20, 10), 32) == 41_218_688


def test_zeroing_one_conv_removes_exactly_its_share():
    net = TinyNet().eval()
    dense = count_flops(net, 8)
    # conv2: 8*8*3*3 = 576 weights x 8*8 positions (padding 1) = 36864.
    share = FlopCountAnalysis(net, torch.zeros(1, 3, 8, 8)).unsupported_ops_warnings(False).by_module()["conv2"]
    assert share == 36864
    with torch.no_grad():
        net.conv2.weight.zero_()
    assert count_flops(net, 8, nonzero_only=True) == dense - share
    assert count_flops(net, 8) == dense


def test_parametrized_masks_and_modes():
    net = TinyNet().train()
    masks = attach_masks(net)
    with torch.no_grad():
        for m in masks.values():
            m.scores.uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    # The parametrized model counts its masked weights: kept entries x 8*8 positions.
    expected_conv = sum(int(b.sum()) * 64 for name, b in binary_masks(masks).items()
                        if name in ("conv.weight", "conv2.weight"))
    out = flop_breakdown(net, 8, nonzero_only=True)
    assert out["by_operator"]["conv"] == expected_conv
    assert out["by_operator"]["batch_norm"] == 2 * 8 * 64  # eval-mode BN, even for a training model
    assert net.training and net.bn.training  # modes restored
    assert out["skipped"] == {"aten::mean": 1}
    assert count_weights(net)[0] == sum(int(b.sum()) for b in binary_masks(masks).values())


class SharedNet(nn.Module):
    """A grouped conv and a linear layer called twice under two names, on a [1, 3, 2, 2] image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)                      # 4*3 = 12 weights
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)  # 4*2*3*3 = 72 weights
        self.fc = nn.Linear(4, 2)                                          # 2*4 = 8 weights
        self.alias = self.fc

    def forward(self, x):
        y = self.grouped(self.conv(x)).flatten(2).transpose(1, 2)  # [1, 4 positions, 4 channels]
        z = self.fc(y)                                              # [1, 4, 2]
        return self.alias(z.repeat(1, 1, 2))                        # [1, 4, 4] -> [1, 4, 2]


def test_nonzero_rule_is_dense_count_times_density():
    net = SharedNet()
    # Dense: conv 12 x 4 positions = 48; grouped 72 x 4 = 288; fc 8 x 4 rows, twice = 64.
    assert count_flops(net, 2) == 48 + 288 + 64
    with torch.no_grad():
        net.conv.weight[0] = 0       # 3 zeros -> 9 of 12 kept
        net.grouped.weight[:2] = 0   # the first group's filters: 36 zeros -> 36 of 72 kept
        net.fc.weight[1] = 0         # 4 zeros -> 4 of 8 kept
        net.fc.bias.zero_()          # biases are not counted either way
    # Non-zero: 9 x 4 = 36; 36 x 4 = 144; 4 x 4 rows, both calls = 32.
    assert count_flops(net, 2, nonzero_only=True) == 36 + 144 + 32
    assert count_flops(net, 2) == 48 + 288 + 64


class MatmulNet(nn.Module):
    """Weights used through addmm, matmul and conv2d outside any Conv/Linear module."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(5, 12))
        self.b = nn.Parameter(torch.zeros(5))
        self.w2 = nn.Parameter(torch.ones(5, 7))
        self.k = nn.Parameter(torch.ones(2, 3, 1, 1))

    def forward(self, x):
        y = torch.addmm(self.b, x.mean((2, 3)).repeat(1, 4), self.w.t())  # [1, 12] @ [12, 5]
        return y @ self.w2, self.w2.t() @ y.t(), F.conv2d(x, self.k * 2)  # [1, 5] @ [5, 7], [7, 5] @ [5, 1]


def test_weights_outside_conv_linear_modules_count_dense():
    # Only the tensors SeaM masks (Conv/Linear modules) are scaled by their density.
    net = MatmulNet()
    dense = 12 * 5 + 5 * 7 + 7 * 5 + 6 * 4
    assert count_flops(net, 2) == dense
    with torch.no_grad():
        net.w[:, :10] = 0
        net.w2[0] = 0
        net.k[0] = 0
    assert count_flops(net, 2, nonzero_only=True) == dense


def test_no_warnings_for_skipped_ops(caplog):
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")
        count_flops(TinyNet(), 8, nonzero_only=True)  # aten::mean is skipped by fvcore
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def flops_stage():
    """stages/flops.py as a module (stages/ is not a package)."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("flops_stage", REPO / "stages" / "flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compact_weights_count_the_exported_network_without_its_head(tmp_path):
    """weights_compact: weights_total's rule (conv/linear weights and biases, the new head left
    out) on the compact archive; its folded-constant kernels count, as seam.compact counts them."""
    from seam.compact import compact, count_params
    from seam.models.architectures import cifar_resnet
    from seam.models.archive import ExportedModelError, load_exported, save_exported
    from seam.reengineer.candidate import ReengineeredModel

    torch.manual_seed(0)
    original = cifar_resnet(8).eval()
    with torch.no_grad():
        for m in original.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_(0, 0.3)  # removed channels become non-zero constants: folded kernels
        original.layer2[0].conv1.weight[:4] = 0
        original.layer3[0].conv1.weight[:4] = 0
    masked = ReengineeredModel(original, 10, 2).eval()
    x = torch.zeros(1, 3, 16, 16)
    small, report = compact(masked, x)
    path = save_exported(small, x, tmp_path / "t.compact.pt2")
    got = flops_stage().compact_weights(load_exported(path), path)
    head = masked.head[1].weight.numel() + masked.head[1].bias.numel()
    assert got == report["params_after"] - head == count_params(small) - head
    assert report["fold_params"] > 0  # the folded kernels are in the count
    _, total = count_weights(masked.original)
    assert 0 < got < total  # the removed filters and the input slices they fed are gone
    # The stage reads a head by name; an archive without one is refused, not counted whole.
    bare = save_exported(original, x, tmp_path / "bare.compact.pt2")
    with pytest.raises(ExportedModelError, match=r"bare.compact.pt2: no conv/linear tensor named head\.\*"):
        flops_stage().compact_weights(load_exported(bare), bare)
