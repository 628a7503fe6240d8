"""seam.models.archive: a compact model saved once as a torch.export archive and loaded without seam.compact."""

import subprocess
import sys

import pytest
import torch

from seam.compact import FoldedConv2d, compact
from seam.core.errors import SeamError
from seam.deploy.flops import count_flops
from seam.models.architectures import cifar_resnet
from seam.models.archive import ExportedModelError, load_exported, save_exported


@pytest.fixture(scope="module")
def compacted():
    """A compact ResNet8 with a border-folded conv (FoldedConv2d) and a ChannelAdd."""
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
        model.layer3[0].conv1.weight[[0, 1, 2, 3]] = 0
        model.layer3[0].bn1.bias[[0, 1, 2, 3]] = 1.0  # constant channels: border fold
        model.conv1.weight[:3] = 0  # dead residual-stream channels: ChannelAdd
    small, _ = compact(model, torch.zeros(1, 3, 16, 16))
    assert any(isinstance(m, FoldedConv2d) for m in small.modules())
    return small


def test_round_trip_predicts_the_same_at_any_batch_size(compacted, tmp_path):
    path = save_exported(compacted, torch.zeros(1, 3, 16, 16), tmp_path / "m.pt2")
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))
    loaded = load_exported(path)
    assert loaded.eval() is loaded and not loaded.training
    for batch in (1, 3, 16):
        x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert torch.equal(loaded(x), compacted(x))
    assert count_flops(loaded, 16) == count_flops(compacted, 16)
    with pytest.raises(ExportedModelError, match="inference only"):
        loaded.train()


def test_refuses_other_files(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not an archive")
    with pytest.raises(SeamError, match=str(bad)):
        load_exported(bad)
    fake = tmp_path / "model.pt2"
    fake.write_bytes(b"not an archive")
    with pytest.raises(ExportedModelError, match=f"{fake}: not a torch.export archive"):
        load_exported(fake)
    with pytest.raises(ExportedModelError, match="no such file"):
        load_exported(tmp_path / "missing.pt2")
    with pytest.raises(ExportedModelError, match=r"\*\.pt2"):
        save_exported(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), tmp_path / "x.onnx")


def test_loading_does_not_import_compact():
    code = "import sys, seam.models.archive, seam.deploy.flops; assert 'seam.compact' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
