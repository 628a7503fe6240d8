"""DVC stage `fetch_model`: the pretrained model params.yaml names (a registry entry or your
own), hash-verified, loaded and dry-run, into OUT (the checkpoint + model.json)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from seam.core.errors import run_stage
from seam.core.params import load_params
from seam.models.fetch import fetch_pretrained
from seam.models.pretrained import FILES, save_pretrained


def main(out: Path) -> None:
    params = load_params()
    # Fetched and checked aside, so a model that fails a check leaves OUT as it was (or
    # absent). A copy already in OUT (DVC persists it) is offered first: fetching verifies it
    # by hash and downloads only if it does not match.
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
            for name in FILES.values():
                if (out / name).is_file():
                    os.link(out / name, Path(tmp) / name)
            record = fetch_pretrained(params.model, tmp)
            out.mkdir(exist_ok=True)
            os.replace(Path(tmp) / record.file, out / record.file)
    except BaseException:
        for folder in made:  # innermost first; only the folders this run created, and only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    save_pretrained(record, out)
    print(f"{record.name}: {out / record.file} verified (sha256 {record.sha256[:12]}), {record.num_classes} outputs, "
          f"input {len(record.mean)}x{record.input_size}x{record.input_size}, classifier {record.classifier}")


if __name__ == "__main__":
    run_stage(main)
