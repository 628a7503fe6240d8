"""DVC stage `download`: the raw dataset, verified, into OUT."""

from __future__ import annotations

from pathlib import Path

from seam.datasets import download_dataset
from seam.errors import run_stage
from seam.params import load_params


def main(out: Path) -> None:
    params = load_params()
    download_dataset(params.dataset, out)
    print(f"dataset {params.dataset.name} -> {out}")


if __name__ == "__main__":
    run_stage(main)
