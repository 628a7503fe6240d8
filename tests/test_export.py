import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TinyNet
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import parametrize

from seam.deploy.onnx import ExportError, export_onnx
from seam.models.masks import attach_masks, binary_masks, maskable_tensors
from seam.reengineer.artifact import build_reengineered

SIZE, BATCH = 8, 2


def tiny(seed: int = 0) -> TinyNet:
    """TinyNet with non-trivial BatchNorm statistics, so folding BN really rescales the conv."""
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        net.bn.weight.uniform_(0.5, 2.0)
        net.bn.bias.uniform_(-0.5, 0.5)
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def random_masks(model: nn.Module, keep: float = 0.5, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(getattr(mod, p).shape, generator=g) < keep
            for name, mod, p in maskable_tensors(model)}


def onnx_weights(path, op_type: str) -> list[np.ndarray]:
    """The weight initializer (input 1) of every `op_type` node, in graph order, through Identity nodes."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    out = []
    for node in graph.node:
        if node.op_type == op_type:
            name = node.input[1]
            while name in alias:
                name = alias[name]
            out.append(inits[name])
    return out


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x.numpy()})[0]


def test_round_trip_tinynet(tmp_path):
    net = tiny().train()  # the caller's mode must survive the export
    path = tmp_path / "out" / "tiny.onnx"
    info = export_onnx(net, path, input_size=SIZE, batch=BATCH)
    assert info["opset"] == 13 and info["batch"] == BATCH and info["input_shape"] == [BATCH, 3, SIZE, SIZE]
    assert info["max_abs_diff"] < 1e-4 and info["file_size"] == path.stat().st_size
    assert net.training and net.bn.training
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.onnx"]  # no temp file left

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 13
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and [d.dim_value for d in inp.type.tensor_type.shape.dim] == [BATCH, 3, SIZE, SIZE]
    assert out.name == "logits"
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("folding", [True, False])
def test_masked_zeros_stay_exact_zeros(tmp_path, folding):
    original = tiny()
    artifact = {
        "meta": {"model": "tiny", "model_sha256": "ab" * 32, "num_outputs": 4,
                 "target": {"name": "t", "kind": "binary", "source_classes": [0], "class_names": ["a", "b"]}},
        "masks": random_masks(original),
        "head": nn.Sequential(nn.ReLU(), nn.Linear(4, 2)).state_dict(),
    }
    model = build_reengineered(original, artifact)
    path = tmp_path / "re.onnx"
    export_onnx(model, path, input_size=SIZE, batch=BATCH, constant_folding=folding)

    torch_convs = [model.original.conv.weight, model.original.conv2.weight]
    onnx_convs = onnx_weights(path, "Conv")
    assert [w.shape for w in onnx_convs] == [tuple(w.shape) for w in torch_convs]
    for got, want in zip(onnx_convs, torch_convs):
        assert int((got == 0).sum()) == int((want == 0).sum()) > 0
        # Not only the count: the same positions (BN folding rescales output channels only).
        np.testing.assert_array_equal(got == 0, want.detach().numpy() == 0)
    if not folding:  # unfolded, the conv initializers are the masked weights themselves
        np.testing.assert_array_equal(onnx_convs[0], torch_convs[0].detach().numpy())
    torch_fcs = [model.original.fc.weight, model.head[1].weight]
    onnx_fcs = onnx_weights(path, "Gemm")
    for got, want in zip(onnx_fcs, torch_fcs, strict=True):
        np.testing.assert_array_equal(got == 0, want.detach().numpy() == 0)


def test_folding_only_adds_zeros_where_bn_scale_is_zero(tmp_path):
    net = tiny()
    with torch.no_grad():
        net.conv.weight[0, 0] = 0
        net.bn.weight[3] = 0  # channel 3 is multiplied by 0 once BN is folded in
    export_onnx(net, tmp_path / "t.onnx", input_size=SIZE, batch=BATCH)
    folded = onnx_weights(tmp_path / "t.onnx", "Conv")[0]
    zero = net.conv.weight.detach().numpy() == 0
    assert (folded[zero] == 0).all()  # every masked zero survives
    assert (folded[3] == 0).all() and not zero[3].all()  # and the gamma = 0 channel gains zeros


def test_parametrized_masks_are_baked_in(tmp_path):
    net = tiny()
    masks = attach_masks(net)
    with torch.no_grad():
        for m in masks.values():
            m.scores.uniform_(-1, 1)
    bits = binary_masks(masks)
    export_onnx(net, tmp_path / "p.onnx", input_size=SIZE, batch=BATCH, constant_folding=False)
    conv, conv2 = onnx_weights(tmp_path / "p.onnx", "Conv")
    np.testing.assert_array_equal(conv != 0, bits["conv.weight"].numpy())
    np.testing.assert_array_equal(conv2 != 0, bits["conv2.weight"].numpy())
    # The caller's parametrized model is intact (baking works on a copy).
    assert parametrize.is_parametrized(net.conv, "weight") and "conv.parametrizations.weight.original" in net.state_dict()
    net(torch.zeros(1, 3, SIZE, SIZE))


class Noisy(nn.Module):
    """Exports fine (RandomUniformLike) but onnxruntime draws other numbers than torch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        return (y + torch.rand_like(y)).mean((2, 3))


def test_mismatch_raises_and_leaves_no_file(tmp_path):
    path = tmp_path / "noisy.onnx"
    path.write_bytes(b"stale export of another model")
    with pytest.raises(ExportError, match=r"noisy\.onnx: ONNX output differs from PyTorch \(max abs difference"):
        export_onnx(Noisy(), path, input_size=SIZE, batch=BATCH)
    assert list(tmp_path.iterdir()) == []  # neither the stale file nor a temp file


def test_unexportable_models_raise_export_error(tmp_path):
    class Unsupported(nn.Module):
        def forward(self, x):
            return torch.special.erfcx(x)  # no ONNX opset 13 symbolic

    class TwoOutputs(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ExportError, match=r"x\.onnx: cannot export Unsupported .*aten::special_erfcx"):
        export_onnx(Unsupported(), tmp_path / "x.onnx", input_size=SIZE, batch=BATCH)
    with pytest.raises(ExportError, match="not one tensor"):
        export_onnx(TwoOutputs(), tmp_path / "x.onnx", input_size=SIZE, batch=BATCH)
    assert list(tmp_path.iterdir()) == []


def test_option_a_shortcut_exports_as_a_plain_convolution(tmp_path):
    import collections

    from seam.models.architectures import cifar_resnet

    model = cifar_resnet(20).eval()
    info = export_onnx(model, tmp_path / "r20.onnx", input_size=32, batch=2)
    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "r20.onnx").graph.node)
    # DeepSparse cannot run a channel Pad: the two option-A shortcuts become 1x1 convolutions.
    assert "Pad" not in ops and ops["Conv"] == 19 + 2
    assert info["max_abs_diff"] < 1e-4
    assert isinstance(model.layer2[0].shortcut, torch.nn.Module) and hasattr(model.layer2[0].shortcut, "export_form")
