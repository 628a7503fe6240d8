"""seam.compact: dense models without dead channels, same predictions (tiny nets only)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seam.compact import ChannelAdd, CompactError, FoldedConv2d, compact, count_params
from seam.models.architectures import chenyaofo_cifar_resnet, cifar_resnet
from seam.models.masks import attach_masks
from seam.reengineer.candidate import ReengineeredModel


@pytest.fixture(autouse=True)
def _plain_cpu_convs():
    """oneDNN spends ~10 ms preparing every new conv shape; tiny nets don't need it (nor threads)."""
    before, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)  # tiny tensors: thread synchronisation costs more than it saves
    yield
    torch.backends.mkldnn.enabled = before
    torch.set_num_threads(threads)


def _randomise(model: nn.Module, seed: int = 0, keep: float = 0.6) -> nn.Module:
    """Random BN statistics and a random unstructured mask (weights zeroed in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                full = m.weight.clone()
                m.weight.mul_(torch.rand(m.weight.shape, generator=g) < keep)
                # no accidental dead rows / columns: the tests force the ones they want
                w = m.weight.view(m.weight.shape[0], m.weight.shape[1], -1)
                f = full.view(w.shape)
                rows = (~w.any(2).any(1)).nonzero().flatten()
                w[rows, 0, 0] = f[rows, 0, 0]
                cols = (~w.any(2).any(0)).nonzero().flatten()
                w[0, cols, 0] = f[0, cols, 0]
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def _check(model: nn.Module, x: torch.Tensor, **kw):
    before = copy.deepcopy(model.state_dict())
    small, report = compact(model, x, **kw)
    for k, v in model.state_dict().items():  # the original model is not modified
        assert torch.equal(v, before[k]), k
    g = torch.Generator().manual_seed(123)
    batch = torch.randn((16,) + tuple(x.shape[1:]), generator=g)
    with torch.no_grad():
        ref, got = model(batch), small(batch)
    assert torch.allclose(ref, got, atol=1e-4, rtol=1e-4), (ref - got).abs().max()
    assert torch.equal(ref.argmax(1), got.argmax(1))
    assert report["params_before"] == count_params(model)
    assert report["params_after"] == count_params(small)
    return small, report


class ConvNet(nn.Module):
    def __init__(self, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=padding, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=padding)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


X = torch.randn(2, 3, 10, 10)


def test_nothing_dead_gives_the_same_model_and_outputs():
    model = _randomise(ConvNet(), keep=1.0)
    small, report = _check(model, X)
    assert report["params_after"] == report["params_before"]
    assert report["channels_removed"] == {}
    batch = torch.randn(8, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(model(batch), small(batch))


def test_dead_output_channels_are_removed_with_their_consumers_inputs():
    model = _randomise(ConvNet())
    with torch.no_grad():
        model.conv1.weight[[1, 5]] = 0
        model.bn1.bias[[1, 5]] = -5.0  # relu(constant < 0) = 0: a zero channel
    small, report = _check(model, X)
    assert report["layers"]["conv1"]["out"] == [8, 6]
    assert report["layers"]["bn1"]["out"] == [8, 6]
    assert report["layers"]["conv2"]["in"] == [8, 6]
    assert small.conv1.weight.shape == (6, 3, 3, 3)
    assert report["params_after"] <= report["params_before"] - 2 * 27 - 2 * 8 * 9
    assert report["channels_removed"]["conv1"] == 2
    assert 0 < report["structural_zero_share"] < 1
    # the removed non-zero weights are conv2's (now absent) columns that read the zero channels
    assert report["nonzero_weights_removed"] == int((model.conv2.weight[:, [1, 5]] != 0).sum())


def test_channels_no_consumer_reads_are_removed_from_the_producer():
    model = _randomise(ConvNet())
    with torch.no_grad():
        model.conv2.weight[:, [0, 3, 4]] = 0  # conv1's rows 0, 3, 4 stay non-zero but are unread
    small, report = _check(model, X)
    assert report["layers"]["conv1"]["out"] == [8, 5]
    assert report["layers"]["conv2"]["in"] == [8, 5]
    assert report["nonzero_weights_removed"] > 0


def test_unread_linear_inputs_and_dead_linear_rows():
    model = _randomise(ConvNet())
    with torch.no_grad():
        model.fc.weight[:, 2] = 0
    small, report = _check(model, X)
    assert report["layers"]["fc"]["in"] == [8, 7]
    assert report["layers"]["conv2"]["out"] == [8, 7]


@pytest.mark.parametrize("padding", [0, 1])
def test_nonzero_constant_channels_fold_exactly_with_and_without_padding(padding):
    model = _randomise(ConvNet(padding=padding), seed=1)
    with torch.no_grad():
        model.conv1.weight[[2, 6]] = 0
        model.bn1.bias[[2, 6]] = torch.tensor([0.7, 1.3])  # relu(k) = k > 0: non-zero constants
        model.conv2.weight[0] = 0
        model.conv2.bias[0] = 0.5  # a constant (bias only) that the linear layer folds
    small, report = _check(model, X)
    assert report["layers"]["conv1"]["out"] == [8, 6]
    assert report["layers"]["conv2"]["in"] == [8, 6] and report["layers"]["conv2"]["out"] == [8, 7]
    assert report["layers"]["conv2"]["folded_inputs"] == 2
    assert report["layers"]["fc"]["in"] == [8, 7] and report["layers"]["fc"]["folded_inputs"] == 1
    if padding:  # borders see fewer kernel taps: a border-aware map, not a bias
        assert isinstance(small.conv2, FoldedConv2d) and report["layers"]["conv2"]["border_fold"]
        assert report["fold_params"] == 7 * 9
        # exact for any input size, not only the example's
        with torch.no_grad():
            for shape in ((3, 3, 7, 7), (1, 3, 16, 12)):
                b = torch.randn(shape)
                assert torch.allclose(model(b), small(b), atol=1e-5)
    else:  # no padding: the contribution is the same everywhere -> the bias
        assert type(small.conv2) is nn.Conv2d and not report["layers"]["conv2"]["border_fold"]


def test_bias_folding_alone_would_be_wrong_at_the_borders():
    """Guards the design decision: the fold must depend on the position."""
    model = _randomise(ConvNet(), seed=2)
    with torch.no_grad():
        model.conv1.weight[3] = 0
        model.bn1.bias[3] = 2.0
    small, _ = _check(model, X)
    m = small.conv2.const_map(10, 10)[0]
    assert not torch.allclose(m[:, :, 0], m[:, :, 5])  # border != interior
    assert torch.allclose(m[:, 1:-1, 1:-1], m[:, 5:6, 5:6].expand(-1, 8, 8))


def _dead_block(block: nn.Module) -> None:
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv2.weight.zero_()


def test_option_a_residual_net():
    torch.manual_seed(0)
    model = _randomise(cifar_resnet(8), seed=3)
    with torch.no_grad():
        model.conv1.weight[[0, 9]] = 0  # dead stem channels: tied to the whole first stage
        model.layer1[0].conv2.weight[[0, 9]] = 0
        model.layer1[0].bn2.bias[[0, 9]] = -3.0
        model.layer2[0].conv1.weight[[1, 2, 3]] = 0
        model.layer2[0].bn1.bias[[1, 2, 3]] = torch.tensor([-1.0, 0.5, 0.8])
    x = torch.randn(2, 3, 16, 16)
    small, report = _check(model, x)
    assert report["params_after"] < report["params_before"]
    assert report["layers"]["layer2.0.conv1"]["out"] == [32, 29]
    assert report["layers"]["layer2.0.conv2"]["folded_inputs"] == 2
    # channels 0 and 9 of stage 1 are zero in every tensor of the residual group
    assert report["layers"]["conv1"]["out"] == [16, 14]
    assert report["layers"]["layer1.0.conv2"]["out"] == [16, 14]
    assert report["layers"]["layer2.0.conv1"]["in"] == [16, 14]
    # the option-A padding's zero channels are not materialised
    assert any(isinstance(m, ChannelAdd) for m in small.modules())


def test_residual_channel_is_kept_when_live_in_one_tensor_of_its_group():
    model = _randomise(cifar_resnet(8), seed=4)
    with torch.no_grad():
        model.layer1[0].conv2.weight[5] = 0  # branch channel dead, shortcut channel 5 still live
        model.layer1[0].bn2.bias[5] = 0.25
    small, report = _check(model, torch.randn(2, 3, 16, 16))
    assert report["layers"]["layer1.0.conv2"]["out"] == [16, 15]
    assert report["layers"]["layer2.0.conv1"]["in"] == [16, 16]  # the add output keeps channel 5


def test_conv1x1_downsample_residual_net():
    model = _randomise(chenyaofo_cifar_resnet(14, 10), seed=5)
    with torch.no_grad():
        ds = model.layer2[0].downsample
        ds[0].weight[[4, 7]] = 0
        model.layer2[0].conv2.weight[[4, 7]] = 0
        ds[1].bias[[4, 7]] = -2.0
        model.layer2[0].bn2.bias[[4, 7]] = -2.0  # sum < 0: relu gives a zero channel
        model.layer3[0].downsample[0].weight[:, 10] = 0
        model.layer3[0].conv1.weight[:, 10] = 0  # stage-2 channel 10 unread by stage 3
        model.layer2[1].conv1.weight[:, 10] = 0
    small, report = _check(model, torch.randn(2, 3, 16, 16))
    # 4 and 7: zero in both tensors of layer2.0's add; 10: read by nobody downstream
    assert report["layers"]["layer2.0.downsample.0"]["out"] == [32, 29]
    assert report["layers"]["layer2.0.conv2"]["out"] == [32, 29]
    assert report["layers"]["layer2.1.conv1"]["in"] == [32, 29]
    # layer2.1's add: its branch makes 4 and 7 live again, 10 is still unread
    assert report["layers"]["layer2.1.conv2"]["out"] == [32, 31]
    assert report["layers"]["layer3.0.downsample.0"]["in"] == [32, 31]
    assert report["params_after"] < report["params_before"]


def test_fully_dead_residual_branch_reduces_to_the_shortcut():
    model = _randomise(cifar_resnet(14), seed=6)  # two blocks per stage
    _dead_block(model.layer2[1])
    small, report = _check(model, torch.randn(2, 3, 16, 16))
    assert "layer2.1.conv1" in report["removed_layers"] and "layer2.1.conv2" in report["removed_layers"]
    assert not any(n.startswith("layer2.1.") and isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
                   for n, m in small.named_modules())
    # what is left of the block: relu(shortcut + the branch's constant, bn2(0))
    k = model.layer2[1].bn2.bias - model.layer2[1].bn2.weight * model.layer2[1].bn2.running_mean / torch.sqrt(
        model.layer2[1].bn2.running_var + model.layer2[1].bn2.eps)
    adds = [m for m in small.modules() if isinstance(m, ChannelAdd) and m.const is not None]
    assert any(m.const.shape == k.shape and torch.allclose(m.const, k, atol=1e-6) for m in adds)
    block = model.layer2[1]
    saved = sum(m.weight.numel() for m in (block.conv1, block.conv2))
    assert report["params_before"] - report["params_after"] >= saved


def test_reengineered_model_head_folds_constant_logits():
    torch.manual_seed(0)
    original = _randomise(cifar_resnet(8), seed=7)
    with torch.no_grad():
        original.linear.weight[3] = 0
        original.linear.bias[3] = 0.4  # constant logit -> relu -> the head's bias
        original.linear.weight[5] = 0
        original.linear.bias[5] = -0.4  # relu(-0.4) = 0: nothing to fold
    model = ReengineeredModel(original, 10, 2).eval()
    small, report = _check(model, torch.randn(2, 3, 16, 16))
    assert report["layers"]["original.linear"]["out"] == [10, 8]
    assert report["layers"]["head.1"]["in"] == [10, 8]
    assert report["layers"]["head.1"]["folded_inputs"] == 1


def test_masked_model_with_parametrizations_attached():
    model = _randomise(ConvNet(), keep=1.0)
    masks = attach_masks(model)
    with torch.no_grad():
        for name, m in masks.items():
            m.scores.uniform_(-1, 1)
        masks["conv1.weight"].scores[4] = -1  # a dead row through the mask
        model.bn1.bias[4] = -1.0
    small, report = _check(model, X)
    assert report["layers"]["conv1"]["out"] == [8, 7]
    assert not any(hasattr(m, "parametrizations") for m in small.modules())


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.classifier = nn.Sequential(nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_vgg_like_with_maxpool_and_spatial_flatten():
    model = _randomise(VGGish(), seed=8)
    with torch.no_grad():
        model.features[4].weight[[1, 2]] = 0
        model.features[4].bias[[1, 2]] = 0
        model.features[5].bias[1] = 0.9  # constant 0.9 after BN+ReLU+pool -> folded into the linear
        model.features[5].bias[2] = -0.9
        model.classifier[0].weight[7] = 0
        model.classifier[0].bias[7] = 0.0
    small, report = _check(model, torch.randn(2, 3, 8, 8))
    assert report["layers"]["features.4"]["out"] == [8, 6]
    assert report["layers"]["classifier.0"]["in"] == [32, 24]
    assert report["layers"]["classifier.0"]["out"] == [16, 15]
    assert report["layers"]["classifier.3"]["in"] == [16, 15]


class WithOpaqueOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.conv2(x * torch.sigmoid(x))  # a product: not understood -> left alone
        return self.fc(x.mean((2, 3)))


def test_unknown_ops_keep_their_channels_and_stay_exact():
    model = _randomise(WithOpaqueOp(), seed=9)
    with torch.no_grad():
        model.conv1.weight[2] = 0
        model.conv2.weight[1] = 0
    small, report = _check(model, X)
    assert report["layers"]["conv1"]["out"] == [6, 6]  # feeds the product: kept
    assert report["layers"]["conv2"]["out"] == [6, 5]  # a zero channel before the mean/linear


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_errors():
    with pytest.raises(CompactError, match="cannot trace"):
        compact(Untraceable().eval(), X)
    with pytest.raises(CompactError):
        compact("not a model", X)
    with pytest.raises(CompactError, match="training mode"):
        compact(ConvNet().train(), X)
    assert issubclass(CompactError, ValueError)


def test_compacting_twice_is_stable():
    model = _randomise(ConvNet(), seed=10)
    with torch.no_grad():
        model.conv1.weight[[2, 6]] = 0
        model.bn1.bias[[2, 6]] = 1.0
    small, report = _check(model, X)
    again, report2 = compact(small, X)
    assert report2["params_after"] <= report["params_after"]
    with torch.no_grad():
        assert torch.allclose(again(X), model(X), atol=1e-5)


class InplaceNet(nn.Module):
    """torchvision style: in-place ReLU, ``out += identity``, and a tensor read after it is mutated."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        a = self.bn1(self.conv1(x))
        b = self.relu(a)  # mutates a, which conv3 reads afterwards
        out = self.bn2(self.conv2(b))
        out += self.conv3(a)
        return self.fc(self.relu(out).mean((2, 3)))


def test_inplace_ops_stay_exact():
    model = _randomise(InplaceNet(), seed=11)
    with torch.no_grad():
        model.conv1.weight[1] = 0
        model.bn1.bias[1] = 0.6
        model.conv2.weight[4] = 0
        model.bn2.bias[4] = -1.0
        model.conv3.weight[4] = 0
        model.conv3.bias[4] = -1.0
    small, report = _check(model, X)
    assert report["layers"]["conv2"]["out"] == [6, 5]  # 4 is a constant -1 + -1 < 0 after the add


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(8, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.c(y)), 1).flatten(1))


def test_concatenation():
    model = _randomise(CatNet(), seed=12)
    with torch.no_grad():
        model.a.weight[0] = 0
        model.a.bias[0] = 0.3  # constant 0.3 through the cat: border-folded into c
        model.b.weight[[1, 3]] = 0
        model.b.bias[[1, 3]] = -0.3
    small, report = _check(model, X)
    assert report["layers"]["a"]["out"] == [4, 3] and report["layers"]["b"]["out"] == [4, 2]
    assert report["layers"]["c"]["in"] == [8, 5] and report["layers"]["c"]["folded_inputs"] == 1


def test_compact_resnet_accepts_other_input_sizes():
    model = _randomise(cifar_resnet(8), seed=13)
    with torch.no_grad():
        model.layer3[0].conv1.weight[[0, 1, 2, 3]] = 0
        model.layer3[0].bn1.bias[[0, 1, 2, 3]] = 1.0
        model.layer2[0].conv2.weight[[5, 6]] = 0
    small, report = _check(model, torch.randn(2, 3, 16, 16))
    assert isinstance(small.get_submodule("layer3.0.conv2"), FoldedConv2d)
    b = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(model(b), small(b), atol=1e-4)


def test_folded_conv_cache_follows_its_kernel():
    model = _randomise(ConvNet(), seed=14)
    with torch.no_grad():
        model.conv1.weight[0] = 0
        model.bn1.bias[0] = 1.0
    small, _ = _check(model, X)
    conv = small.conv2
    first = conv.const_map(10, 10).clone()
    twin = copy.deepcopy(conv)
    with torch.no_grad():
        twin.const_kernel.mul_(2)  # a copy with its own kernel: its own maps
    assert torch.allclose(twin.const_map(10, 10), 2 * first)
    assert torch.equal(conv.const_map(10, 10), first)


def test_channel_add_export_form_is_the_same_sum_without_scatter(tmp_path):
    import collections

    import onnx

    from seam.deploy.onnx import export_onnx
    from seam.models.architectures import cifar_resnet
    from seam.reengineer.candidate import ReengineeredModel

    torch.manual_seed(0)
    model = ReengineeredModel(cifar_resnet(20).eval(), 10, 2).eval()
    with torch.no_grad():  # kill some residual-stream channels so compaction needs ChannelAdd
        model.original.conv1.weight[:3] = 0
        model.original.layer1[0].conv2.weight[:2] = 0
    compacted, _ = compact(model, torch.zeros(1, 3, 32, 32))
    assert any(type(m).__name__ == "ChannelAdd" for m in compacted.modules())
    export_onnx(compacted, tmp_path / "c.onnx", input_size=32, batch=2)  # checks ONNX == torch
    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "c.onnx").graph.node)
    assert "ScatterElements" not in ops


def test_internal_errors_are_not_compact_errors(monkeypatch):
    """A bug in the compaction keeps its traceback: not a SeamError, which stages print as one line."""
    from seam.compact import ops

    def broken(self, g, need, keep):
        raise ops.internal_error(f"{self.node.name} needs channels its input lost")

    monkeypatch.setattr(ops.ChannelMap, "keep", broken)
    with pytest.raises(RuntimeError, match="internal error") as info:
        compact(_randomise(ConvNet()), X)
    assert not isinstance(info.value, CompactError)


def test_the_rewriter_implements_what_the_handlers_call():
    """Handlers see the rewriter only through ``CompactBuilder``: the rewriter has each of its
    methods with the same parameters, and no handler module imports the rewriter or the passes."""
    import ast
    import inspect
    from pathlib import Path

    from seam.compact.ops.base import CompactBuilder
    from seam.compact.rewriter import Rewriter

    wanted = [name for name, f in vars(CompactBuilder).items() if inspect.isfunction(f) and not name.startswith("_")]
    assert len(wanted) >= 10
    for name in wanted:
        assert list(inspect.signature(getattr(Rewriter, name)).parameters) == \
            list(inspect.signature(getattr(CompactBuilder, name)).parameters), name
    for path in Path(inspect.getfile(CompactBuilder)).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("seam.compact.rewriter", "seam.compact.passes"), path
