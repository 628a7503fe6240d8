"""Resumable loops: the search and fine-tuning save their whole state after every epoch,
atomically, in a file DVC does not delete before the stage runs, and a rerun of the same run
picks it up.

The file holds a digest of everything that determines the result (params, the input files'
bytes, the code, the torch version, the device and thread count); a state whose digest
differs is ignored with a note, never silently reused. A stage of several loops (SeaM's
flow) gives each loop its own :meth:`ResumeFile.step`. A finished run can keep copies of its
outputs (:meth:`ResumeFile.keep_outputs`): DVC re-runs a stage when any param it lists
changes, and a rerun whose effective settings, inputs and code are those of the last run
restores them instead of computing them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from seam.core.atomic import atomic_dir, atomic_path, save_torch
from seam.core.download import cached_sha256


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

    @classmethod
    def for_stage(cls, state_dir: str | os.PathLike, name: str, *, device: torch.device,
                  inputs: tuple[str | os.PathLike, ...] = (), **key: Any) -> "ResumeFile":
        """Stage `name`'s state in `state_dir`, keyed by `key` (its params), the sha256 of its
        `inputs`, the device and the thread count (the CPU's sums depend on it)."""
        return cls(Path(state_dir) / f"{name}.pt", {
            "stage": name, **key, "device": str(device), "threads": torch.get_num_threads(),
            "inputs": {os.fspath(f): cached_sha256(f) for f in inputs}})

    def step(self, name: str) -> "ResumeFile":
        """The state of one loop of a stage that runs several; :meth:`clear` removes them too."""
        return ResumeFile(self.path.with_name(f"{self.path.stem}.{name}{self.path.suffix}"),
                          {"stage": self.digest, "step": name})

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

    @property
    def _done(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.done")

    def keep_outputs(self, *paths: str | os.PathLike) -> None:
        """Keep copies of this finished run's output files, under its digest (one run per stage
        name: the last one)."""
        with atomic_dir(self._done) as tmp:
            for i, path in enumerate(paths):
                shutil.copyfile(path, tmp / str(i))
            (tmp / "digest").write_text(self.digest)

    def restore_outputs(self, *paths: str | os.PathLike) -> bool:
        """Put the outputs :meth:`keep_outputs` kept for this very run back at ``paths`` (in the
        same order); False, and nothing written, if the last finished run was another."""
        digest = self._done / "digest"
        kept = [self._done / str(i) for i in range(len(paths))]
        if not digest.is_file() or digest.read_text() != self.digest or not all(k.is_file() for k in kept):
            return False
        for src, dst in zip(kept, paths):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        return True

    def clear(self) -> None:
        """Remove the state and its steps' (the run is done)."""
        for path in (self.path, *self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}")):
            path.unlink(missing_ok=True)


def restore_fields(obj: Any, saved: dict[str, Any]) -> None:
    """Put a dataclass's saved ``asdict`` back into it (a stopping rule's progress)."""
    for key, value in saved.items():
        setattr(obj, key, value)


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The random state a loop draws from: its batch-order/augmentation generator, the global
    RNG (dropout, initialisation) and, on a GPU, the device's."""
    return {"generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Put an :func:`rng_state` back."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
