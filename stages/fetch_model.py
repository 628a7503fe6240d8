"""DVC stage `fetch_model`: the pretrained model params.yaml names (a registry entry or your
own), hash-verified, loaded and dry-run, into OUT (the checkpoint + model.json)."""

from __future__ import annotations

from pathlib import Path

from seam.errors import run_stage
from seam.fetch import fetch_pretrained
from seam.params import load_params
from seam.pretrained import save_pretrained


def main(out: Path) -> None:
    params = load_params()
    record = fetch_pretrained(params.model, out)
    save_pretrained(record, out)
    print(f"{record.name}: {out / record.file} verified (sha256 {record.sha256[:12]}), {record.num_classes} outputs, "
          f"input {len(record.mean)}x{record.input_size}x{record.input_size}, classifier {record.classifier}")


if __name__ == "__main__":
    run_stage(main)
