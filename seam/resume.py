"""Resumable loops: a long search saves its whole state after every epoch, atomically, in a
file DVC does not delete before the stage runs, and a rerun of the same run picks it up.

The file holds a digest of everything that determines the result (params, the input files'
bytes, the code, the torch version); a state whose digest differs is ignored with a note,
never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from seam.atomic import save_torch


def code_digest() -> str:
    """sha256 of the `seam` package's source: a code change starts the run afresh."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


class ResumeFile:
    """Where one run keeps its per-epoch state; `key` is everything that determines its result."""

    def __init__(self, path: str | os.PathLike, key: dict[str, Any]):
        self.path = Path(path)
        full = {**key, "code": code_digest(), "torch": torch.__version__}
        self.digest = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()

    def load(self) -> dict[str, Any] | None:
        """The saved state of this very run, or None (nothing saved, or another run's state)."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            state, digest = saved["state"], saved["digest"]
        except Exception as exc:  # a torn or foreign file: start afresh, say so
            print(f"note: {self.path}: unreadable resume state ignored ({exc})", file=sys.stderr)
            return None
        if digest != self.digest:
            print(f"note: {self.path}: saved by a different run (params, inputs or code differ); starting afresh",
                  file=sys.stderr)
            return None
        print(f"note: {self.path}: resuming after epoch {state['epoch']}", file=sys.stderr)
        return state

    def save(self, state: dict[str, Any]) -> None:
        save_torch({"digest": self.digest, "state": state}, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
