import struct
import zipfile

import pytest
import torch
from conftest import TinyNet

from seam.data.augment import Normalize
from seam.models.masks import attach_masks, binary_masks
from seam.reengineer.accuracy import predict
from seam.reengineer.artifact import (
    ArtifactError,
    build_reengineered,
    load_artifact,
    pack_masks,
    save_artifact,
    unpack_masks,
)
from seam.reengineer.candidate import ReengineeredModel

META = {"model": "tiny", "model_sha256": "ab" * 32, "num_outputs": 4,
        "target": {"name": "t", "kind": "binary", "source_classes": [0], "class_names": ["a", "not a"]}}


def test_pack_unpack_round_trip_odd_sizes():
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(3, 5, generator=g) > 0.5, "b": torch.rand(7, generator=g) > 0.5, "c": torch.ones(1, 1, 3, 3, dtype=torch.bool)}
    packed = pack_masks(masks)
    assert packed["bits"].numel() == (15 + 7 + 9 + 7) // 8  # one bit per entry
    out = unpack_masks(packed)
    assert all(torch.equal(out[k], masks[k]) for k in masks)


def searched_model():
    torch.manual_seed(0)
    original = TinyNet().eval()
    model = ReengineeredModel(original, 4, 2)
    # Search works on a copy; keep `original` pristine as a checkpoint would be.
    import copy
    model.original = copy.deepcopy(original)
    masks = attach_masks(model.original)
    with torch.no_grad():
        for m in masks.values():
            m.scores.uniform_(-1, 1)
    return original, model.eval(), binary_masks(masks)


def test_artifact_round_trip_gives_the_same_predictions(tmp_path):
    original, model, masks = searched_model()
    path = tmp_path / "a.pt"
    save_artifact(path, masks=masks, head=model.head.state_dict(), meta=META)
    rebuilt = build_reengineered(original, load_artifact(path), model_sha256=META["model_sha256"])
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(predict(model, x, norm), predict(rebuilt, x, norm), atol=1e-6)
    assert not torch.equal(original.conv.weight, rebuilt.original.conv.weight)  # the original is not modified
    # Compact: packed bits, not float masks (TinyNet has 8*3*9 + 8*8*9 + 8 + 32 + 4 = 868 entries).
    assert path.stat().st_size < 8000
    # The bytes depend on the content alone (not on the temporary file's name), so DVC sees
    # an unchanged result as unchanged.
    again = tmp_path / "sub" / "other-name.pt"
    save_artifact(again, masks=masks, head=model.head.state_dict(), meta=META)
    assert again.read_bytes() == path.read_bytes()


def test_artifact_errors(tmp_path):
    original, model, masks = searched_model()
    with pytest.raises(ArtifactError, match="no such artifact"):
        load_artifact(tmp_path / "missing.pt")
    torch.save({"x": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ArtifactError, match="not a seam-artifact"):
        load_artifact(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable artifact"):
        load_artifact(tmp_path / "junk.pt")
    path = tmp_path / "a.pt"
    save_artifact(path, masks=masks, head=model.head.state_dict(), meta=META)
    with pytest.raises(ArtifactError, match="sha256"):
        build_reengineered(original, load_artifact(path), model_sha256="cd" * 32)
    with pytest.raises(ArtifactError, match="does not fit"):
        build_reengineered(TinyNet(width=4), load_artifact(path))
    with pytest.raises(ArtifactError, match="lacks"):
        save_artifact(tmp_path / "b.pt", masks=masks, head={}, meta={"model": "x"})
    assert not (tmp_path / "b.pt").exists()


def _flip_byte_of_member(path, size):
    """Flip one byte inside the stored zip member of `size` bytes (torch stores tensors uncompressed)."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.file_size == size and "/data/" in i.filename)
    data = bytearray(path.read_bytes())
    # the data follows the local header, whose extra field (torch's alignment padding) has its own length
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_an_altered_artifact_is_refused(tmp_path):
    _, model, masks = searched_model()
    path = tmp_path / "a.pt"
    save_artifact(path, masks=masks, head=model.head.state_dict(), meta=META)
    n_bits = (8 * 3 * 9 + 8 * 8 * 9 + 8 + 32 + 4 + 7) // 8  # TinyNet's mask entries, packed
    _flip_byte_of_member(path, n_bits)
    with pytest.raises(ArtifactError, match=r"a\.pt: content does not match its digest"):
        load_artifact(path)

    save_artifact(path, masks=masks, head=model.head.state_dict(), meta=META)
    raw = torch.load(path, weights_only=True)
    raw["head"]["1.bias"] = raw["head"]["1.bias"] + 1  # a re-saved file with other weights
    torch.save(raw, path)
    with pytest.raises(ArtifactError, match="content does not match its digest"):
        load_artifact(path)
    raw["version"] = 1
    torch.save(raw, path)
    with pytest.raises(ArtifactError, match="artifact version 1, this code reads 2"):
        load_artifact(path)


def test_tuned_weights_travel_in_the_artifact_under_its_digest(tmp_path):
    original, model, masks = searched_model()
    weights = {n: p.detach() + 0.5 for n, p in original.named_parameters()}  # a search with lr_weights > 0
    path = tmp_path / "a.pt"
    save_artifact(path, masks=masks, head=model.head.state_dict(), meta=META, weights=weights)
    rebuilt = build_reengineered(original, load_artifact(path))
    assert torch.equal(rebuilt.original.conv.weight, weights["conv.weight"] * masks["conv.weight"])
    assert torch.equal(original.conv.weight + 0.5, weights["conv.weight"])  # the original is not modified

    _flip_byte_of_member(path, weights["conv2.weight"].numel() * 4)
    with pytest.raises(ArtifactError, match="content does not match its digest"):
        load_artifact(path)
    save_artifact(path, masks=masks, head=model.head.state_dict(), meta=META,
                  weights={k: v for k, v in weights.items() if k != "conv.weight"})
    with pytest.raises(ArtifactError, match=r"tuned weights do not fit tiny: missing \['conv.weight'\]"):
        build_reengineered(original, load_artifact(path))
