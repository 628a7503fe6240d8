"""Target problems (SeaM RQ1): sub-problems of a raw dataset that a re-engineered model solves.

Spec forms under `targets:` in params.yaml (name -> spec, exactly one kind key):
  {binary: c}              one-vs-rest: all images of class c (label 0) plus as many drawn at
                           random (fixed seed) from the other classes (label 1), per split
  {classes: [i, j, ...]}   multi-class subset, labels re-indexed 0..K-1 in the given order
  {superclass: s}          CIFAR-100 superclass s: its fine classes (by fine index) -> 0..K-1
Any of them may add ``train_per_class: n`` / ``test_per_class: n``: at most n images per
label in that split (a CPU-sized slice, drawn with the seed; validation images in proportion).

Short forms, where the name says what the target is (what `seam targets` writes for a grid):
  cat: binary              == cat: {binary: cat}
  fish: superclass         == fish: {superclass: fish}
  pets: [cat, dog]         == pets: {classes: [cat, dog]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from seam.data.problem import TargetError, TargetProblem
from seam.data.sources import RawDataset

KINDS = ("binary", "classes", "superclass")
SHORT = ("binary", "superclass")  # `name: binary` / `name: superclass`: the name is the class
CAPS = ("train_per_class", "test_per_class")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class TargetSpec:
    """A parsed entry of ``targets:``; :func:`build_target` turns it into a :class:`TargetProblem`."""

    name: str
    kind: str  # "binary" | "classes" | "superclass"
    source_classes: list[int]  # original class indices; for binary: [c]
    class_names: list[str]  # names of the K new labels
    train_per_class: int | None = None  # at most this many training images per label (None: all)
    test_per_class: int | None = None
    key: str = ""  # its key path in params.yaml, for messages (default: targets.<name>)

    def __post_init__(self) -> None:
        self.key = self.key or f"targets.{self.name}"


def _class_index(ref: Any, raw: RawDataset, where: str) -> int:
    """Resolve a class given by index or name."""
    n = len(raw.classes)
    if isinstance(ref, bool):  # bool is an int subclass; `binary: true` is a typo, not class 1
        raise TargetError(f"{where}: expected a class index or name, got {ref!r}")
    if isinstance(ref, int):
        if not 0 <= ref < n:
            raise TargetError(f"{where}: class index {ref} out of range; valid: 0..{n - 1}")
        return ref
    if isinstance(ref, str):
        if ref not in raw.classes:
            shown = raw.classes if n <= 20 else raw.classes[:20] + ["..."]
            raise TargetError(f"{where}: unknown class name {ref!r}; known: {shown}")
        return raw.classes.index(ref)
    raise TargetError(f"{where}: expected a class index or name, got {ref!r}")


def _superclass_members(ref: Any, raw: RawDataset, where: str) -> list[int]:
    if raw.coarse_classes is None or raw.train_coarse is None:
        raise TargetError(f"{where}: dataset {raw.name!r} has no superclasses (coarse labels; CIFAR-100 only)")
    n = len(raw.coarse_classes)
    if isinstance(ref, str) and ref in raw.coarse_classes:
        s = raw.coarse_classes.index(ref)
    elif isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < n:
        s = ref
    else:
        raise TargetError(f"{where}: superclass {ref!r} out of range; valid: 0..{n - 1} or a superclass name")
    return sorted(set(raw.train.labels[raw.train_coarse == s].tolist()))


def expand_short(name: str, spec: Any) -> Any:
    """The explicit form of a short spec (`cat: binary`, `pets: [cat, dog]`); others unchanged."""
    if spec in SHORT:
        return {spec: name}
    if isinstance(spec, list):
        return {"classes": spec}
    return spec


def parse_target(name: Any, spec: Any, raw: RawDataset, key: str | None = None) -> TargetSpec:
    """Validate one target spec against `raw`; `key` is where params.yaml holds it
    (default ``targets.<name>``), the key path its errors name."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TargetError(f"targets: bad target name {name!r}; must match {NAME_RE.pattern}")
    key = key or f"targets.{name}"
    found = _parse_one(name, spec, raw, key)
    _check_present(raw, found)
    return found


def _parse_one(name: str, spec: Any, raw: RawDataset, key: str) -> TargetSpec:
    where = key
    if isinstance(spec, str) and spec not in SHORT:
        raise TargetError(f"{where}: unknown short form {spec!r}; expected one of {list(SHORT)} or a mapping")
    spec = expand_short(name, spec)
    kinds = [k for k in spec if k in KINDS] if isinstance(spec, dict) else []
    if len(kinds) != 1:
        keys = list(spec) if isinstance(spec, dict) else spec
        raise TargetError(f"{where}: expected exactly one of {list(KINDS)} as key, got {keys!r}")
    unknown = [k for k in spec if k not in KINDS and k not in CAPS and k != "reengineer"]
    if unknown:
        raise TargetError(f"{where}: unknown key(s) {unknown}; besides the kind only {[*CAPS, 'reengineer']}")
    caps = {}
    for cap in CAPS:
        n = spec.get(cap)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise TargetError(f"{where}.{cap}: expected a positive number of images per label, got {n!r}")
        caps[cap] = n
    kind = kinds[0]
    value = spec[kind]
    where = f"{where}.{kind}"
    if kind == "binary":
        c = _class_index(value, raw, where)
        return TargetSpec(name, kind, [c], [raw.classes[c], f"not {raw.classes[c]}"], **caps, key=key)
    if kind == "classes":
        if not isinstance(value, list):
            raise TargetError(f"{where}: expected a list of class indices or names, got {value!r}")
        idx = [_class_index(v, raw, f"{where}[{i}]") for i, v in enumerate(value)]
        dups = sorted({raw.classes[c] for c in idx if idx.count(c) > 1})
        if dups:
            raise TargetError(f"{where}: duplicate classes {dups}")
    else:
        idx = _superclass_members(value, raw, where)
    if len(idx) < 2:
        raise TargetError(f"{where}: needs at least 2 classes, got {len(idx)}")
    return TargetSpec(name, kind, idx, [raw.classes[c] for c in idx], **caps, key=key)


def target_grid(kind: str, which: list[str] | None, names: list[str]) -> dict[str, str]:
    """Short-form entries for a grid: one `binary` (or `superclass`) target per name.

    `names` are the dataset's class (or superclass) names; `which` picks some of them
    (None: all). Each name must be usable as a DVC foreach key and a file name.
    """
    if kind not in SHORT:
        raise TargetError(f"grid kind {kind!r}: expected one of {list(SHORT)}")
    chosen = list(names) if which is None else which
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise TargetError(f"{kind}: unknown name(s) {unknown}; known: {list(names)}")
    bad = [n for n in chosen if not NAME_RE.match(n)]
    if bad:
        raise TargetError(f"{kind}: name(s) {bad} cannot be target names ({NAME_RE.pattern}); "
                          f"write those targets by hand, e.g. my_name: {{{kind}: {bad[0]!r}}}")
    return {n: kind for n in chosen}


def _check_present(raw: RawDataset, problem: TargetSpec) -> None:
    for split, labels in (("train", raw.train.labels), ("test", raw.test.labels)):
        counts = torch.bincount(labels, minlength=len(raw.classes))
        for c in problem.source_classes:
            if counts[c] == 0:
                raise TargetError(f"{problem.key}: class {raw.classes[c]!r} ({c}) has no {split} images")


def parse_targets(specs: dict, raw: RawDataset) -> list[TargetSpec]:
    """Validate every target spec against `raw`; return the problems in spec order."""
    if not isinstance(specs, dict):
        raise TargetError(f"targets: expected a mapping name -> spec, got {specs!r}")
    return [parse_target(name, spec, raw) for name, spec in specs.items()]


def _binary_split(labels: torch.Tensor, c: int, gen: torch.Generator, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and new labels: all of class c (0), then as many other-class images (1)."""
    pos = torch.nonzero(labels == c).flatten()
    pool = torch.nonzero(labels != c).flatten()
    if len(pool) < len(pos):
        raise TargetError(f"{where}: only {len(pool)} other-class images to balance {len(pos)} of the class")
    neg = pool[torch.randperm(len(pool), generator=gen)[: len(pos)]].sort().values
    idx = torch.cat([pos, neg])
    y = torch.cat([torch.zeros(len(pos), dtype=torch.int64), torch.ones(len(neg), dtype=torch.int64)])
    return idx, y


def _subset_split(labels: torch.Tensor, classes: list[int], n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (original order) of images of `classes` and their labels re-indexed in that order."""
    remap = torch.full((n_classes,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    new = remap[labels]
    idx = torch.nonzero(new >= 0).flatten()
    return idx, new[idx]


def build_target(raw: RawDataset, problem: TargetSpec, *, seed: int, val_fraction: float) -> TargetProblem:
    """Build the train/val/test tensors of a target problem (deterministic in `seed`)."""
    where = problem.key
    _check_present(raw, problem)
    gen = torch.Generator().manual_seed(seed)
    splits = {}
    for split, imgs in (("train", raw.train), ("test", raw.test)):
        if problem.kind == "binary":
            idx, y = _binary_split(imgs.labels, problem.source_classes[0], gen, f"{where} ({split})")
        else:
            idx, y = _subset_split(imgs.labels, problem.source_classes, len(raw.classes))
        splits[split] = (idx, y)

    # Validation: stratified hold-out from the (balanced) training images.
    train_idx, train_y = splits["train"]
    keep, val = [], []
    for k in range(len(problem.class_names)):
        members = torch.nonzero(train_y == k).flatten()
        n_val = round(val_fraction * len(members))
        if n_val >= len(members) and len(members) > 0:
            raise TargetError(f"prepare.val_fraction: {val_fraction} leaves no training images for label {k} "
                              f"of {where}")
        perm = members[torch.randperm(len(members), generator=gen)]
        val.append(perm[:n_val])
        keep.append(perm[n_val:])
    keep_pos = torch.cat(keep).sort().values
    val_pos = torch.cat(val).sort().values

    def take(imgs: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # index_select copies, so a saved tensor never drags the whole dataset's storage along.
        return imgs.index_select(0, pos)

    test_idx, test_y = splits["test"]
    full = TargetProblem(
        train_x=take(raw.train.images, train_idx[keep_pos]),
        train_y=train_y[keep_pos].clone(),
        val_x=take(raw.train.images, train_idx[val_pos]),
        val_y=train_y[val_pos].clone(),
        test_x=take(raw.test.images, test_idx),
        test_y=test_y.clone(),
        class_names=list(problem.class_names),
        source_classes=[int(c) for c in problem.source_classes],
        kind=problem.kind,
        name=problem.name,
        dataset=raw.name,
        seed=int(seed),
        val_fraction=float(val_fraction),
    )
    if problem.train_per_class is None and problem.test_per_class is None:
        return full
    return full.capped(problem.train_per_class, problem.test_per_class, seed=seed)
