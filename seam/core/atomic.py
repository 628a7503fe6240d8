"""Atomic file writes: a reader (or DVC) never sees a half-written artifact."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~_UMASK)  # mkstemp's 0600 would make outputs private; give them what open() would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; it replaces ``final`` whole only if the
    block succeeds. A failure leaves ``final`` as it was, and no folder this call created."""
    final = Path(final)
    made = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    old: Path | None = None
    try:
        yield tmp
        tmp.chmod(0o777 & ~_UMASK)  # mkdtemp's 0700 would make the output private; give it what mkdir would
        if final.exists() or final.is_symlink():
            old = final.with_name(f"{tmp.name}.old")
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first; only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` through a temporary file. Given a path, torch names the zip's records after
    the (random) temporary file; given an open file it names them "archive", so the bytes
    depend on `obj` alone and an unchanged result does not look changed to DVC."""
    import torch  # here, so that stages writing no tensors (validate) start without torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write pretty JSON through a temporary file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write text through a temporary file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike, digits: int = 6) -> None:
    """Write dict rows as CSV (columns: every key, in first-seen order; floats rounded) through a temporary file."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows({k: round(v, digits) if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    write_text(buf.getvalue(), path)
