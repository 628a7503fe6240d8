"""DVC stage `fetch_model`: the pretrained checkpoint, hash-verified, into models/pretrained/."""

from __future__ import annotations

from pathlib import Path

from seam.atomic import write_json
from seam.download import file_digest
from seam.errors import run_stage
from seam.params import get, load_params
from seam.registry import fetch_model, get_spec, load_model

OUT = Path("models/pretrained")


def main() -> None:
    params = load_params()
    name = get(params, "model.name", str)
    spec = get_spec(name)
    checkpoint = fetch_model(name, OUT / "model.pt")
    load_model(spec, checkpoint)  # fail here, not three stages later, if it does not fit
    write_json(
        {"name": name, "url": spec.url, "sha256": file_digest(checkpoint), "num_classes": spec.num_classes,
         "mean": list(spec.mean), "std": list(spec.std), "input_size": spec.input_size},
        OUT / "model.json",
    )
    print(f"{name}: {checkpoint} verified")


if __name__ == "__main__":
    run_stage(main)
