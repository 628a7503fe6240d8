"""reengineer.granularity: channel masks, and the count of what a channel mask keeps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, tiny_target
from torch import nn

from seam.compact import ChannelCost, compact
from seam.compact.ops import AddOp, ChannelMap, WeightedOp
from seam.deploy.flops import flop_breakdown
from seam.models.architectures import chenyaofo_cifar_resnet, cifar_resnet
from seam.models.masks import (
    ChannelGate,
    apply_masks,
    apply_searched,
    attach_masks,
    binary_masks,
    fill_masks,
    mask_scores,
)
from seam.reengineer.granularity import ChannelGranularity, WeightGranularity, granularity
from seam.reengineer.search import SearchConfig, search
from seam.reengineer.stopping import AccuracyTarget


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
    live = cost.live(keep)
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


def walk_liveness(cost: ChannelCost, keep: dict[str, torch.Tensor], like: torch.Tensor) -> dict:
    """The reference: the per-op walk ChannelCost took before its liveness plan. Each op maps
    its inputs' liveness to its output's: a conv/linear ``keep * max(live[input])``, a
    channel-wise op gathers (0 for a fill channel), an add ``1 - prod(1 - live[input])``,
    anything else 1."""
    g, live = cost.g, {}
    for n in g.nodes:
        if not g.is_ch(n):
            continue
        op = cost.ops[n]
        if isinstance(op, WeightedOp):
            kept = keep.get(n.target)
            live[n] = (like.new_ones(g.channels(n)) if kept is None else kept) * live[op.inputs[0]].max()
        elif isinstance(op, ChannelMap):
            out = like.new_zeros(g.channels(n))
            for a, x in enumerate(op.inputs):
                sel = (op.src_arg == a).nonzero().flatten()
                out = out.index_put((sel,), live[x][op.src_ch[sel]])
            live[n] = out
        elif isinstance(op, AddOp):
            dead = like.new_ones(g.channels(n))
            for x in op.inputs:
                dead = dead * (1 - live[x])
            live[n] = 1 - dead
        else:
            live[n] = like.new_ones(g.channels(n))
    return live


def walk_cost(cost: ChannelCost, keep: dict[str, torch.Tensor]) -> torch.Tensor:
    """ChannelCost's count as it was computed before its liveness plan (the reference)."""
    like = next(iter(keep.values()))
    live = walk_liveness(cost, keep, like)
    kept = like.new_zeros(())
    for name, (rows, width, kernel, bias) in cost.shapes.items():
        n = keep[name].sum() if name in keep else rows
        if name in cost.inputs:
            width = live[cost.inputs[name]].sum() * kernel
        kept = kept + n * (width + bias) * cost.positions.get(name, 1)
    return kept


class DiamondNet(nn.Module):
    """Sources counted twice (``x + relu(x)``), an opaque product, a channel cat with a dead
    input, and a conv reading the model input directly."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(6)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        a = self.bn(self.a(x))
        a = a + F.relu(a)
        y = F.relu(self.c(torch.cat([a, self.b(x)], 1)))
        y = self.d(y * torch.sigmoid(y)) + y
        return self.fc(y.mean((2, 3)))


_COST_MODELS = {"option-A shortcuts": (lambda: cifar_resnet(20), 32),
                "1x1 downsample": (lambda: chenyaofo_cifar_resnet(20, 10), 32),
                "plain": (TinyNet, 8), "diamond": (DiamondNet, 8)}


def _keep_patterns(cost: ChannelCost, n: int, seed: int, dtype=torch.float32, fraction=False):
    """Random keeps: rows removed at random, whole layers' rows, whole residual branches,
    every row, no row, a module left out; 0/1, or (``fraction``) in (0, 1) as well."""
    g = torch.Generator().manual_seed(seed)
    names = list(cost.shapes)
    for i in range(n):
        keep = {k: (torch.rand(s[0], generator=g) > (0.0, 0.1, 0.3, 0.6, 0.9)[i % 5]).to(dtype)
                for k, s in cost.shapes.items()}
        if fraction:
            keep = {k: v * torch.rand(v.shape, generator=g, dtype=dtype) for k, v in keep.items()}
            if i % 4 == 3:  # small gates downstream: the chain through them matters
                keep = {k: v * (1e-3 if j % 3 == 1 else 1.0) for j, (k, v) in enumerate(keep.items())}
        for k in names:
            if (i % 3 == 1 and torch.rand(1, generator=g) < 0.2) or (i % 7 == 2 and ".conv" in k):
                keep[k] = torch.zeros_like(keep[k])  # a whole layer (or every block's branch) removed
        if i % 11 == 4:
            del keep[names[0]]
        if i % 13 == 6:
            keep = {k: torch.full_like(v, float(i % 2)) for k, v in keep.items()}
        yield keep


@pytest.mark.parametrize("macs", [False, True], ids=["weights", "macs"])
@pytest.mark.parametrize("model", list(_COST_MODELS))
def test_the_count_is_the_walks_exactly_on_0_1_keeps(model, macs):
    """On 0/1 keeps (a search's) the liveness plan gives the walk's count bit for bit, and its
    gradient up to float rounding (the same terms, summed in another order)."""
    build, size = _COST_MODELS[model]
    torch.manual_seed(0)
    cost = ChannelCost(_random_bn(build()), torch.randn(2, 3, size, size), macs=macs)
    for keep in _keep_patterns(cost, 40, seed=1):
        ours = {k: v.clone().requires_grad_() for k, v in keep.items()}
        theirs = {k: v.clone().requires_grad_() for k, v in keep.items()}
        got, want = cost(ours), walk_cost(cost, theirs)
        assert torch.equal(got, want), (got, want)
        (got + want).backward()
        for k in ours:
            scale = float(theirs[k].grad.abs().max())
            torch.testing.assert_close(ours[k].grad, theirs[k].grad, rtol=1e-6, atol=1e-6 * scale)
        live = walk_liveness(cost, keep, torch.zeros(1))
        assert cost.output_varies(keep) == any(bool(live[x].max() > 0) for x in cost._outputs)
        for node, channels in cost.live(keep).items():
            assert torch.equal(channels, live[node]), node


@pytest.mark.parametrize("model", list(_COST_MODELS))
def test_the_count_and_its_gradient_are_the_walks_on_any_keeps(model):
    """Keeps in (0, 1), in float64 to see past rounding: the same value and gradient, the chain
    through every layer's max (tied channels share it evenly) included."""
    build, size = _COST_MODELS[model]
    torch.manual_seed(0)
    cost = ChannelCost(_random_bn(build()), torch.randn(2, 3, size, size), macs=True)
    for keep in _keep_patterns(cost, 16, seed=2, dtype=torch.float64, fraction=True):
        ours = {k: v.clone().requires_grad_() for k, v in keep.items()}
        theirs = {k: v.clone().requires_grad_() for k, v in keep.items()}
        got, want = cost(ours), walk_cost(cost, theirs)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
        (got + want).backward()
        for k in ours:
            scale = float(theirs[k].grad.abs().max())
            torch.testing.assert_close(ours[k].grad, theirs[k].grad, rtol=1e-12, atol=1e-12 * scale)


def test_the_count_is_the_same_under_autocast():
    """The search computes its loss, and so the count, under autocast (``precision: bf16``)."""
    cost = ChannelCost(_random_bn(cifar_resnet(20)), torch.randn(2, 3, 32, 32))
    for keep in _keep_patterns(cost, 6, seed=3, fraction=True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = cost(keep)
        assert low.dtype == torch.float32 and torch.equal(low, cost(keep))


def test_a_call_reads_nothing_back_from_its_device():
    """The search runs the count, forward and backward, in every training step: on a GPU, a
    value read back (``.item()``, in the backward pass of ``prod`` and, on a CPU, of ``max``)
    or a tensor made from host data would wait for every kernel queued before it. A CPU's
    profile shows both."""
    cost = ChannelCost(_random_bn(cifar_resnet(20)), torch.randn(2, 3, 32, 32))
    for keep in _keep_patterns(cost, 3, seed=4):
        keep = {k: v.requires_grad_() for k, v in keep.items()}
        cost(keep).backward()  # the first call on a device makes the index tensors there
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            cost(keep).backward()
        names = {e.name for e in profile.events()}
        assert "aten::index_select" in names and not names & {"aten::_local_scalar_dense", "aten::lift_fresh"}


def test_the_count_is_differentiable_in_every_layers_keep():
    model = _random_bn(cifar_resnet(8))
    cost = ChannelCost(model, torch.randn(1, 3, 16, 16))
    keep = {n: torch.ones(s[0], requires_grad=True) for n, s in cost.shapes.items()}
    cost(keep).backward()
    # a row's gradient: its own weights and bias, plus its consumers' input slices
    assert all(k.grad is not None and (k.grad > 0).all() for k in keep.values())
    stem = model.conv1.weight
    assert keep["conv1"].grad[0] > stem[0].numel()


def test_channel_masks_share_one_score_per_group_and_expand_to_the_tensor():
    model = TinyNet()
    groups = {"conv2": torch.tensor([0, 1, 2, 3, 4, 5, 6, 6])}  # conv, fc: a group per row
    masks = attach_masks(model, groups=groups)
    assert masks["conv2.weight"].scores is masks["conv2.bias"].scores is masks["conv.weight"].scores
    (scores,) = mask_scores(masks)
    assert scores.shape == (8 + 7 + 4,)
    with torch.no_grad():
        masks["conv2.weight"].scores[masks["conv2.weight"].index[[1, 4, 7]]] = -1.0
    bits = binary_masks(masks)
    assert bits["conv2.weight"].shape == (8, 8, 3, 3) and bits["conv2.bias"].shape == (8,)
    # rows 6 and 7 share a score: removing 7 removed 6
    assert (~bits["conv2.weight"]).flatten(1).all(1).nonzero().flatten().tolist() == [1, 4, 6, 7]
    assert bits["conv2.bias"].logical_not().nonzero().flatten().tolist() == [1, 4, 6, 7]
    assert bits["conv.weight"].all() and bits["fc.weight"].all()
    x = torch.randn(2, 3, 8, 8)
    out = model.conv2(torch.relu(model.bn(model.conv(x))))
    assert (out[:, [1, 4, 6, 7]] == 0).all() and (out[:, [0, 2, 3]] != 0).any()
    with pytest.raises(ValueError, match="groups\\['conv2'\\] has 3 entries, the layer 8"):
        attach_masks(TinyNet(), groups={"conv2": torch.tensor([0, 1, 2])})


def test_rows_that_feed_one_residual_sum_share_a_group():
    cost = ChannelCost(cifar_resnet(20), torch.randn(1, 3, 32, 32))
    groups = cost.row_groups()
    stage1 = [groups[n] for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")]
    assert all(torch.equal(g, stage1[0]) for g in stage1) and len(set(stage1[0].tolist())) == 16
    # option A: stage 2's channels 8..23 are stage 1's channels 0..15 (zero padding around them)
    assert torch.equal(groups["layer2.0.conv2"][8:24], stage1[0])
    assert torch.equal(groups["layer2.2.conv2"], groups["layer2.0.conv2"])
    assert not set(groups["layer2.0.conv2"][:8].tolist()) & set(stage1[0].tolist())
    # a block's inner conv joins nothing
    inner = groups["layer1.0.conv1"].tolist()
    assert len(set(inner)) == 16 and not set(inner) & {int(i) for g in groups.values() if g is not groups["layer1.0.conv1"] for i in g}


def _channel_searched(grain, model: nn.Module, seed: int, shift: float, scale: float = 1.0):
    """A copy of ``model`` with ``grain``'s masks attached, every group score set to
    ``scale * U(0, 1) - shift``: a stand-in for a channel search's result. (copy, masks)."""
    searched = copy.deepcopy(model)
    masks = grain.attach(searched)
    with torch.no_grad():
        (scores,) = mask_scores(masks)
        scores.copy_(scale * torch.rand(scores.shape, generator=torch.Generator().manual_seed(seed)) - shift)
    return searched, masks


@pytest.mark.parametrize("build", [lambda: cifar_resnet(20), lambda: chenyaofo_cifar_resnet(20, 10)],
                         ids=["option-A shortcuts", "1x1 downsample"])
def test_a_channel_result_compacts_to_a_plain_slim_model(build):
    """Gated BatchNorms and shared residual scores: the compact model only slices. No folded
    constant, no channel alignment at the adds; its predictions equal the searched model's."""
    torch.manual_seed(0)
    model = _random_bn(build())
    x = torch.randn(4, 3, 32, 32)
    grain = ChannelGranularity(model, x)
    searched, masks = _channel_searched(grain, model, seed=2, shift=0.4)
    with torch.no_grad():
        expected = searched(x)
    (scores,) = mask_scores(masks)
    assert (scores <= 0).sum() > 0.3 * len(scores)
    rebuilt = apply_searched(copy.deepcopy(model), binary_masks(masks), "channel")
    torch.testing.assert_close(rebuilt(x), expected)
    small, report = compact(rebuilt, x)
    torch.testing.assert_close(small(x), expected, atol=1e-4, rtol=1e-4)
    kinds = {type(m).__name__ for m in small.modules()}
    assert not kinds & {"ChannelAdd", "FoldedConv2d"}, kinds
    assert report["fold_params"] == 0
    # the count, but for the model's output rows, which the compact model keeps (a head reads them)
    keep = {name.rpartition(".")[0]: m.row_keep().detach() for name, m in masks.items()}
    output_layer = list(grain.cost.shapes)[-1]
    keep[output_layer] = torch.ones_like(keep[output_layer])
    assert report["params_after"] == int(grain.cost(keep))


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
                          seed=0, granularity="channel", round_to=1)  # 16 would keep all of a 16-wide layer or none
    result = search(model, data, mean=(0.5,) * 3, std=(0.25,) * 3, config=config, stop=AccuracyTarget.factory(0),
                    progress=False)
    kept = result.history[result.selected_epoch]["retention"]
    assert kept < 1.0
    for name, bits in result.masks.items():
        rows = bits.flatten(1) if bits.dim() > 1 else bits[:, None]
        assert (rows.all(1) | ~rows.any(1)).all(), f"{name}: a row partly masked"
    grain = ChannelGranularity(model, torch.randn(1, 3, 8, 8))
    masked = apply_searched(copy.deepcopy(model), result.masks, "channel")
    small, report = compact(masked, torch.randn(2, 3, 8, 8))
    assert report["params_after"] < report["params_before"]
    assert grain.cost.total == report["params_before"]


def test_the_gate_rounds_each_width_up_by_score_smallest_unit_first():
    scores = nn.Parameter(torch.tensor([0.5, -0.1, -0.9, -0.3, 0.2, -0.2, -0.8, -0.05]))
    inner, outer = torch.tensor([0, 1, 2, 3]), torch.arange(8)  # outer contains inner (a residual stage)
    gate = ChannelGate(scores, [(outer, 4), (inner, 4)])
    keep = gate()
    # inner: 1 kept -> 4 (all); outer then has 5 kept -> 8 (all)
    assert keep.tolist() == [1.0] * 8
    gate = ChannelGate(scores, [(torch.tensor([0, 1, 2, 3, 4, 5]), 4)])
    # 2 kept (0, 4) -> 4: the two best removed ones, 1 (-0.1) and 5 (-0.2)
    assert gate().tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    gate().sum().backward()  # the straight-through gradient reaches every score
    assert scores.grad is not None and (scores.grad != 0).all()
    none = ChannelGate(nn.Parameter(-torch.ones(4)), [(torch.arange(4), 4)])
    assert none().sum() == 0  # a removed layer stays removed


def test_rounded_widths_reach_the_compact_model():
    torch.manual_seed(0)
    model = _random_bn(cifar_resnet(20))
    x = torch.randn(2, 3, 32, 32)
    _, masks = _channel_searched(ChannelGranularity(model, x, round_to=8), model, seed=3, shift=0.5)
    rebuilt = apply_searched(copy.deepcopy(model), binary_masks(masks), "channel")
    small, report = compact(rebuilt, x)
    widths = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    assert any(w < 16 for w in widths[:7]) or any(w < 64 for w in widths[-6:])  # something was removed


def test_the_macs_cost_is_fvcores_count_of_the_compact_model():
    """cost: macs counts each kept weight once per output position: on the compact model, the
    conv and linear part of fvcore's FLOPs (one multiply-add each) plus one add per bias entry."""
    torch.manual_seed(0)
    model = _random_bn(cifar_resnet(20))
    x = torch.randn(1, 3, 32, 32)
    grain = granularity("channel", model, x, round_to=8, cost="macs")
    _, masks = _channel_searched(grain, model, seed=4, shift=0.5)
    keep = {name.rpartition(".")[0]: m.row_keep().detach() for name, m in masks.items()}
    keep["linear"] = torch.ones(10)  # the model's output rows stay (see above)
    small, _ = compact(apply_searched(copy.deepcopy(model), binary_masks(masks), "channel"), x)
    breakdown = flop_breakdown(small, 32)["by_operator"]
    biases = 10  # the output layer's (this ResNet's convs have none)
    assert int(grain.cost(keep)) == breakdown["conv"] + breakdown["linear"] + biases
    assert grain.cost.total == flop_breakdown(model, 32)["by_operator"]["conv"] + 64 * 10 + 10
    weights = granularity("weight", model, x, cost="macs")
    assert weights.weights["layer1.0.conv1.weight"] == 32 * 32 and weights.weights["linear.bias"] == 1


def test_the_units_the_output_needs_keep_one_block():
    """Every score below zero: a block's inner convs go (the block is its shortcut), but each
    residual stream keeps its best `round_to` channels and the output layer all its rows, so
    the output still depends on the input."""
    model = _random_bn(cifar_resnet(20))
    x = torch.randn(2, 3, 32, 32)
    searched, masks = _channel_searched(ChannelGranularity(model, x, round_to=8), model, seed=5, shift=0.0, scale=-1.0)
    bits = binary_masks(masks)
    rows = {name[:-len(".weight")]: int(b.flatten(1).all(1).sum()) for name, b in bits.items() if name.endswith(".weight")}
    assert rows["conv1"] == rows["layer1.2.conv2"] == 8  # stage 1's stream: one block
    assert rows["layer2.0.conv2"] == 8 and rows["layer3.0.conv2"] == 8
    assert rows["layer1.0.conv1"] == rows["layer3.2.conv1"] == 0  # inner convs: removable
    assert rows["linear"] == 10  # the output layer keeps every row (the compact model does)
    with torch.no_grad():
        out = searched(x)
    assert (out[0] != out[1]).any()


@pytest.mark.parametrize("build,head", [(lambda: cifar_resnet(20), "linear"), (lambda: chenyaofo_cifar_resnet(20, 10), "fc"),
                                        (lambda: TinyNet(), "fc")])
def test_the_output_layer_is_the_one_whose_rows_the_output_shows(build, head):
    cost = ChannelCost(build().eval(), torch.randn(1, 3, 32, 32))
    assert cost.output_layers() == {head}
