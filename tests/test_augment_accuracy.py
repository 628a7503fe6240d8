import pytest
import torch
import torch.nn.functional as F

from seam.data.augment import Normalize, random_crop_flip
from seam.reengineer.accuracy import accuracy, original_accuracy


def test_crop_flip_takes_a_padded_crop_of_each_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (32, 3, 6, 6), dtype=torch.uint8)
    out = random_crop_flip(x, 2, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    flipped = 0
    for i in range(len(x)):
        crops = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        plain = any(torch.equal(out[i], c) for c in crops)
        mirrored = any(torch.equal(out[i], c.flip(2)) for c in crops)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 0 < flipped < len(x)  # both branches of the coin happen


def test_crop_flip_is_reproducible_and_identity_without_padding():
    x = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    out = random_crop_flip(x, 0, torch.Generator().manual_seed(1))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(2)) for o, i in zip(out, x))


def test_normalize():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = Normalize((0.5, 0.0, 1.0), (0.5, 1.0, 2.0))(x)
    assert out[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_original_accuracy_rules():
    # 3 source classes; target problem made of classes [2, 0].
    logits = torch.tensor([[0.0, 5.0, 1.0],   # argmax 1: outside the problem
                           [3.0, 0.0, 1.0],   # argmax 0
                           [0.0, 0.0, 9.0]])  # argmax 2
    labels = torch.tensor([0, 1, 0])          # true classes 2, 0, 2
    multi = {"kind": "classes", "source_classes": [2, 0]}
    assert original_accuracy(logits, labels, **multi) == pytest.approx(2 / 3)
    assert original_accuracy(logits, labels, **multi, fair=True) == pytest.approx(1.0)
    binary = {"kind": "binary", "source_classes": [2]}  # label 0 = class 2, 1 = rest
    assert original_accuracy(logits, torch.tensor([0, 1, 0]), **binary) == pytest.approx(2 / 3)
    assert original_accuracy(logits, torch.tensor([1, 1, 0]), **binary) == pytest.approx(1.0)
    assert accuracy(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])) == 0.5
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.empty(0, 2), torch.empty(0, dtype=torch.long))
