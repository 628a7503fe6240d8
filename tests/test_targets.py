"""Tests for seam.data.targets: parsing target specs and building balanced, deterministic splits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from seam.data.problem import TargetError, TargetProblem
from seam.data.sources import ImageSet, RawDataset
from seam.data.targets import TargetSpec, build_target, parse_target, parse_targets

CLASSES = ["a", "b", "c", "d", "e", "f"]
TRAIN_COUNTS = [20, 13, 9, 7, 5, 11]
TEST_COUNTS = [6, 4, 3, 3, 2, 5]
COARSE = [0, 0, 1, 1, 1, 2]  # fine class -> superclass


def make_split(counts: list[int], split: int) -> ImageSet:
    """Images whose pixels record (original label, split, index), so selections can be traced back."""
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)], dtype=torch.int64)
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(split))]
    n = len(labels)
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0] = labels.view(n, 1, 1).to(torch.uint8)
    images[:, 1] = split
    images[:, 2, 0, 0] = (torch.arange(n) % 256).to(torch.uint8)
    images[:, 2, 0, 1] = (torch.arange(n) // 256).to(torch.uint8)
    return ImageSet(images=images, labels=labels)


def make_raw(coarse: bool = False, test_counts: list[int] = TEST_COUNTS) -> RawDataset:
    raw = RawDataset(name="synthetic", classes=list(CLASSES), train=make_split(TRAIN_COUNTS, 0),
                     test=make_split(test_counts, 1))  # fmt: skip
    if coarse:
        lut = torch.tensor(COARSE)
        raw.coarse_classes = ["s0", "s1", "s2"]
        raw.train_coarse, raw.test_coarse = lut[raw.train.labels], lut[raw.test.labels]
    return raw


def original_labels(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].tolist()


def original_index(x: torch.Tensor) -> list[int]:
    return (x[:, 2, 0, 0].long() + 256 * x[:, 2, 0, 1].long()).tolist()


@pytest.fixture
def raw() -> RawDataset:
    return make_raw()


# ----------------------------------------------------------------------------- parsing


def test_parse_all_kinds() -> None:
    raw = make_raw(coarse=True)
    specs = {
        "b-idx": {"binary": 2},
        "b_name": {"binary": "d"},
        "sub": {"classes": [4, "a", 2]},
        "super1": {"superclass": 1},
        "super_by_name": {"superclass": "s0"},
    }
    problems = parse_targets(specs, raw)
    assert [p.name for p in problems] == list(specs)
    assert problems[0] == TargetSpec("b-idx", "binary", [2], ["c", "not c"])
    assert problems[1] == TargetSpec("b_name", "binary", [3], ["d", "not d"])
    assert problems[2] == TargetSpec("sub", "classes", [4, 0, 2], ["e", "a", "c"])
    assert problems[3] == TargetSpec("super1", "superclass", [2, 3, 4], ["c", "d", "e"])
    assert problems[4].source_classes == [0, 1]
    # a target's own search settings (checked by the params schema) leave the problem as it is
    assert parse_targets({"b": {"binary": 2, "reengineer": {"granularity": "channel"}}}, raw)[0] == \
        TargetSpec("b", "binary", [2], ["c", "not c"])
    assert parse_targets({}, raw) == []


@pytest.mark.parametrize(
    "specs, pattern",
    [
        ({"bad name": {"binary": 0}}, r"bad target name 'bad name'"),
        ({"x/y": {"binary": 0}}, r"bad target name 'x/y'"),
        ({"t1": {"pairs": [0, 1]}}, r"targets\.t1: expected exactly one of .*'pairs'"),
        ({"t1": {"binary": 0, "classes": [1, 2]}}, r"targets\.t1: expected exactly one of .*'binary', 'classes'"),
        ({"t1": {}}, r"targets\.t1: expected exactly one of"),
        ({"t1": 3}, r"targets\.t1: expected exactly one of"),
        ({"t1": {"binary": 6}}, r"targets\.t1\.binary: class index 6 out of range; valid: 0\.\.5"),
        ({"t1": {"binary": -1}}, r"targets\.t1\.binary: class index -1 out of range; valid: 0\.\.5"),
        ({"t1": {"binary": "zebra"}}, r"targets\.t1\.binary: unknown class name 'zebra'"),
        ({"t1": {"binary": True}}, r"targets\.t1\.binary: expected a class index or name, got True"),
        ({"t1": {"binary": 1.0}}, r"targets\.t1\.binary: expected a class index or name, got 1\.0"),
        ({"t1": {"classes": [0, "b", 1]}}, r"targets\.t1\.classes: duplicate classes \['b'\]"),
        ({"t1": {"classes": [0, 9]}}, r"targets\.t1\.classes\[1\]: class index 9 out of range; valid: 0\.\.5"),
        ({"t1": {"classes": ["a", "q"]}}, r"targets\.t1\.classes\[1\]: unknown class name 'q'"),
        ({"t1": {"classes": [3]}}, r"targets\.t1\.classes: needs at least 2 classes, got 1"),
        ({"t1": {"classes": 3}}, r"targets\.t1\.classes: expected a list"),
        ({"t1": {"superclass": 0}}, r"targets\.t1\.superclass: dataset 'synthetic' has no superclasses"),
        ("binary: 0", r"targets: expected a mapping"),
        ({"t1": {"train_per_class": 5}}, r"targets\.t1: expected exactly one of"),
        ({"t1": {"binary": 0, "per_class": 5}}, r"targets\.t1: unknown key\(s\) \['per_class'\]; besides the kind"),
        ({"t1": {"binary": 0, "train_per_class": 0}}, r"targets\.t1\.train_per_class: expected a positive number"),
        ({"t1": {"binary": 0, "test_per_class": True}}, r"targets\.t1\.test_per_class: expected a positive number"),
    ],
)
def test_parse_errors(raw: RawDataset, specs: object, pattern: str) -> None:
    with pytest.raises(TargetError, match=pattern):
        parse_targets(specs, raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value, pattern",
    [(3, r"superclass 3 out of range; valid: 0\.\.2"), (-1, r"superclass -1 out of range"),
     ("s9", r"superclass 's9' out of range"), (2, r"needs at least 2 classes, got 1")],
)  # fmt: skip
def test_parse_superclass_errors(value: object, pattern: str) -> None:
    with pytest.raises(TargetError, match=rf"targets\.s\.superclass: {pattern}"):
        parse_targets({"s": {"superclass": value}}, make_raw(coarse=True))


def test_parse_class_without_test_images() -> None:
    raw = make_raw(test_counts=[6, 4, 0, 3, 2, 5])
    with pytest.raises(TargetError, match=r"targets\.t1: class 'c' \(2\) has no test images"):
        parse_targets({"ok": {"binary": 0}, "t1": {"classes": [1, 2]}}, raw)
    raw.train.labels[raw.train.labels == 4] = 5  # class e loses its training images
    raw.test.labels[:] = torch.arange(len(raw.test.labels)) % 6
    with pytest.raises(TargetError, match=r"targets\.t2: class 'e' \(4\) has no train images"):
        parse_targets({"t2": {"binary": "e"}}, raw)


# ----------------------------------------------------------------------------- building


def test_binary_target_balanced_from_other_classes(raw: RawDataset) -> None:
    (p,) = parse_targets({"one_vs_rest": {"binary": "b"}}, raw)
    data = build_target(raw, p, seed=3, val_fraction=0.0)
    assert data.class_names == ["b", "not b"] and data.source_classes == [1]
    assert data.kind == "binary" and data.name == "one_vs_rest" and data.dataset == "synthetic"
    assert data.seed == 3 and data.val_fraction == 0.0
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 2, 2) and y.dtype == torch.int64
        assert torch.bincount(y).tolist() == [counts[1], counts[1]]
        orig = original_labels(x)
        assert all((o == 1) == (lab == 0) for o, lab in zip(orig, y.tolist()))  # negatives only from others
        # every positive image is there, each image once, all from the right split
        assert sorted(i for i, lab in zip(original_index(x), y.tolist()) if lab == 0) == sorted(
            torch.nonzero(getattr(raw, split).labels == 1).flatten().tolist()
        )
        assert len(set(original_index(x))) == len(y)
        assert set(x[:, 1].flatten().tolist()) == {0 if split == "train" else 1}
    assert data.val_x.shape == (0, 3, 2, 2) and data.val_x.dtype == torch.uint8
    assert data.val_y.shape == (0,) and data.val_y.dtype == torch.int64


def test_binary_negatives_are_random_over_other_classes() -> None:
    # With many seeds, every other-class image gets drawn sometime (uniform without replacement).
    raw = make_raw()
    (p,) = parse_targets({"t": {"binary": "e"}}, raw)  # 5 positives among 65 train images
    seen: set[int] = set()
    for seed in range(200):
        d = build_target(raw, p, seed=seed, val_fraction=0.0)
        neg = [i for i, lab in zip(original_index(d.train_x), d.train_y.tolist()) if lab == 1]
        assert len(neg) == len(set(neg)) == 5
        seen.update(neg)
    assert seen == set(torch.nonzero(raw.train.labels != 4).flatten().tolist())


def test_binary_needs_enough_negatives() -> None:
    raw = make_raw()
    raw.train.labels[:] = 0
    raw.train.labels[:3] = 1
    (p,) = parse_targets({"t": {"binary": 0}}, raw)
    with pytest.raises(TargetError, match=r"targets\.t \(train\): only 3 other-class images to balance 62"):
        build_target(raw, p, seed=0, val_fraction=0.0)


def test_classes_target_reindexed_in_given_order(raw: RawDataset) -> None:
    (p,) = parse_targets({"sub": {"classes": ["f", "a", "d"]}}, raw)
    data = build_target(raw, p, seed=0, val_fraction=0.0)
    assert data.class_names == ["f", "a", "d"] and data.source_classes == [5, 0, 3]
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        y = getattr(data, f"{split}_y")
        assert torch.bincount(y).tolist() == [counts[5], counts[0], counts[3]]
        assert [[5, 0, 3][lab] for lab in y.tolist()] == original_labels(getattr(data, f"{split}_x"))


def test_superclass_target() -> None:
    raw = make_raw(coarse=True)
    (p,) = parse_targets({"s1": {"superclass": 1}}, raw)
    data = build_target(raw, p, seed=0, val_fraction=0.0)
    assert data.kind == "superclass" and data.class_names == ["c", "d", "e"]
    assert torch.bincount(data.train_y).tolist() == TRAIN_COUNTS[2:5]
    assert torch.bincount(data.test_y).tolist() == TEST_COUNTS[2:5]
    assert [[2, 3, 4][lab] for lab in data.test_y.tolist()] == original_labels(data.test_x)


@pytest.mark.parametrize("spec", [{"binary": "a"}, {"classes": [0, 2, 5]}])
def test_stratified_validation_split(raw: RawDataset, spec: dict) -> None:
    (p,) = parse_targets({"t": spec}, raw)
    frac = 0.3
    full = build_target(raw, p, seed=1, val_fraction=0.0)
    data = build_target(raw, p, seed=1, val_fraction=frac)
    n_label = torch.bincount(full.train_y).tolist()
    assert torch.bincount(data.val_y, minlength=len(n_label)).tolist() == [round(frac * n) for n in n_label]
    assert (torch.bincount(data.train_y) + torch.bincount(data.val_y, minlength=len(n_label))).tolist() == n_label
    # train and val partition the same balanced training images (the negatives are drawn before the split)
    train_ids, val_ids = original_index(data.train_x), original_index(data.val_x)
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == sorted(original_index(full.train_x))
    assert torch.equal(data.test_x, full.test_x) and torch.equal(data.test_y, full.test_y)
    # labels travel with their images
    for x, y in ((data.train_x, data.train_y), (data.val_x, data.val_y)):
        src = p.source_classes
        expect = [0 if o == src[0] else 1 for o in original_labels(x)] if p.kind == "binary" else [
            src.index(o) for o in original_labels(x)]  # fmt: skip
        assert y.tolist() == expect


def test_same_seed_same_tensors(raw: RawDataset) -> None:
    (p,) = parse_targets({"t": {"binary": 2}}, raw)
    a = build_target(raw, p, seed=7, val_fraction=0.25)
    b = build_target(raw, p, seed=7, val_fraction=0.25)
    c = build_target(raw, p, seed=8, val_fraction=0.25)
    for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert not all(torch.equal(getattr(a, k), getattr(c, k)) for k in ("train_x", "val_x", "test_x"))


def test_val_fraction_leaving_no_training_images(raw: RawDataset) -> None:
    raw.train.labels[raw.train.labels == 4] = 5
    raw.train.labels[0] = 4  # class e: a single training image
    (p,) = parse_targets({"t": {"classes": [4, 5]}}, raw)
    with pytest.raises(TargetError, match=r"^prepare\.val_fraction: 0\.6 leaves no training images for label 0 "
                                          r"of targets\.t$"):
        build_target(raw, p, seed=0, val_fraction=0.6)


def test_errors_in_the_defects_target_name_its_key(raw: RawDataset) -> None:
    with pytest.raises(TargetError, match=r"^defects\.target\.classes\[1\]: unknown class name 'zebra'"):
        parse_target("defects", {"classes": ["a", "zebra"]}, raw, key="defects.target")


def test_build_rejects_class_without_images(raw: RawDataset) -> None:
    p = TargetSpec("hand", "classes", [0, 1], ["a", "b"])
    raw.test.labels[raw.test.labels == 1] = 0
    with pytest.raises(TargetError, match=r"targets\.hand: class 'b' \(1\) has no test images"):
        build_target(raw, p, seed=0, val_fraction=0.0)


# ----------------------------------------------------------------------------- files


def test_save_load_roundtrip(tmp_path: Path, raw: RawDataset) -> None:
    (p,) = parse_targets({"t": {"classes": [1, 0]}}, raw)
    data = build_target(raw, p, seed=0, val_fraction=0.2)
    path = tmp_path / "sub" / "t.pt"
    data.save(path)
    assert [q.name for q in path.parent.iterdir()] == ["t.pt"]
    back = TargetProblem.load(path)
    for f in dataclasses.fields(TargetProblem):
        v, w = getattr(data, f.name), getattr(back, f.name)
        assert torch.equal(w, v) if isinstance(v, torch.Tensor) else w == v, f.name
    # copies, not views: the file holds the target's images only, not the whole dataset's storage
    for k in ("train_x", "val_x", "test_x"):
        assert getattr(back, k).untyped_storage().nbytes() == getattr(back, k).numel()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_load_maps_the_file_instead_of_copying_it(tmp_path: Path, raw: RawDataset) -> None:
    (p,) = parse_targets({"t": {"binary": 0}}, raw)
    path = tmp_path / "mapped.pt"
    build_target(raw, p, seed=0, val_fraction=0.2).save(path)
    back = TargetProblem.load(path)
    # the images are pages of the file (page cache), not the process's own memory
    assert str(path) in Path("/proc/self/maps").read_text()
    assert back.train_x.sum() > 0


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"nope\.pt: target file not found"):
        TargetProblem.load(tmp_path / "nope.pt")


def test_load_not_a_target(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(TargetError, match=r"garbage\.pt: not a target file"):
        TargetProblem.load(garbage)
    other = tmp_path / "other.pt"
    torch.save({"train_x": torch.zeros(1)}, other)
    with pytest.raises(TargetError, match=r"other\.pt: not a target file, missing keys \['train_y'"):
        TargetProblem.load(other)


def test_subsample_caps_each_label_deterministically():
    from conftest import tiny_target

    y = torch.tensor([0] * 10 + [1] * 4)
    data = dataclasses.replace(tiny_target(), train_x=torch.arange(14).view(14, 1, 1, 1).to(torch.uint8), train_y=y)
    a = data.subsample({"train": 3}, seed=1)
    b = data.subsample({"train": 3}, seed=1)
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.train_x, b.train_x)
    assert (a.train_y == 0).sum() == 3 and (a.train_y == 1).sum() == 3
    assert torch.equal(a.train_y, a.train_y.sort().values)  # original order kept
    assert data.train_y.numel() == 14  # input untouched
    assert torch.equal(a.test_y, data.test_y)  # splits not named are kept whole
    with pytest.raises(TargetError, match="positive integer"):
        data.subsample({"train": 0}, seed=1)


def test_spec_caps_images_per_label(raw: RawDataset) -> None:
    spec = {"t": {"classes": [0, 1, 5], "train_per_class": 4, "test_per_class": 2}}
    (p,) = parse_targets(spec, raw)
    assert (p.train_per_class, p.test_per_class) == (4, 2)
    data = build_target(raw, p, seed=0, val_fraction=0.25)
    assert torch.bincount(data.train_y).tolist() == [4, 4, 4]
    assert torch.bincount(data.val_y).tolist() == [1, 1, 1]  # in proportion: round(4 * 0.25)
    assert torch.bincount(data.test_y).tolist() == [2, 2, 2]
    again = build_target(raw, p, seed=0, val_fraction=0.25)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_x, data.test_x)
    # a slice of the uncapped problem: the same images, never ones from another split or class
    (whole,) = parse_targets({"t": {"classes": [0, 1, 5]}}, raw)
    full = build_target(raw, whole, seed=0, val_fraction=0.25)
    assert set(original_index(data.train_x)) <= set(original_index(full.train_x))
    assert set(original_index(data.test_x)) <= set(original_index(full.test_x))
