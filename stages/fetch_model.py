"""DVC stage `fetch_model`: the pretrained checkpoint, hash-verified, into OUT (model.pt + model.json)."""

from __future__ import annotations

from pathlib import Path

from seam.atomic import write_json
from seam.download import file_digest
from seam.errors import run_stage
from seam.params import load_params
from seam.fetch import fetch_model
from seam.registry import get_spec, load_model


def main(out: Path) -> None:
    params = load_params()
    name = params.model.name
    spec = get_spec(name)
    checkpoint = fetch_model(name, out / "model.pt")
    load_model(spec, checkpoint)  # fail here, not three stages later, if it does not fit
    write_json(
        {"name": name, "url": spec.url, "sha256": file_digest(checkpoint), "num_classes": spec.num_classes,
         "mean": list(spec.mean), "std": list(spec.std), "input_size": spec.input_size},
        out / "model.json",
    )
    print(f"{name}: {checkpoint} verified")


if __name__ == "__main__":
    run_stage(main)
