"""DVC stage `download`: the raw dataset, verified, into data/raw/."""

from __future__ import annotations

from pathlib import Path

from seam.datasets import download_dataset
from seam.errors import run_stage
from seam.params import get, load_params

OUT = Path("data/raw")


def main() -> None:
    params = load_params()
    download_dataset(get(params, "dataset", dict), OUT)
    print(f"dataset {get(params, 'dataset.name', str)} -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
