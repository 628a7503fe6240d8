"""Atomic writes: a reader, or DVC, never sees a half-written output."""

from __future__ import annotations

import pytest

from seam.core.atomic import atomic_dir


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    with atomic_dir(out) as build:
        (build / "a.md").write_text("first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"] and (out / "a.md").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_dir(out) as build:
        (build / "b.md").write_text("half")
        raise RuntimeError("a figure failed")
    assert sorted(p.name for p in out.iterdir()) == ["a.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    with atomic_dir(out) as build:
        (build / "b.md").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.md"]  # whole: nothing of the old one is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_failed_folder_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as build:
        (build / "x").write_text("half")
        raise RuntimeError("failed")
    assert list(tmp_path.iterdir()) == []
