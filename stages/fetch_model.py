"""DVC stage `fetch_model`: the pretrained model params.yaml names (a registry entry or your
own), hash-verified, loaded and dry-run, into OUT (the checkpoint + model.json)."""

from __future__ import annotations

import os
from pathlib import Path

from seam.core.atomic import atomic_dir
from seam.core.params import load_params
from seam.core.stage import run_stage
from seam.models.fetch import fetch_pretrained
from seam.models.pretrained import FILES, save_pretrained


def main(out: Path) -> None:
    params = load_params()
    # Fetched and checked aside, so a model that fails a check leaves OUT as it was (or
    # absent). A copy already in OUT (DVC persists it) is offered first: fetching verifies it
    # by hash and downloads only if it does not match.
    with atomic_dir(out) as tmp:
        for name in FILES.values():
            if (out / name).is_file():
                os.link(out / name, tmp / name)
        record = fetch_pretrained(params.model, tmp)
        save_pretrained(record, tmp)
    print(f"{record.name}: {out / record.file} verified (sha256 {record.sha256[:12]}), {record.num_classes} outputs, "
          f"input {len(record.mean)}x{record.input_size}x{record.input_size}, classifier {record.classifier}")


if __name__ == "__main__":
    run_stage(main)
