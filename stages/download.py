"""DVC stage `download`: the raw dataset, verified, into OUT."""

from __future__ import annotations

from pathlib import Path

from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.data.sources import download_dataset


def main(out: Path) -> None:
    params = load_params()
    download_dataset(params.dataset, out)
    print(f"dataset {params.dataset.name} -> {out}")


if __name__ == "__main__":
    run_stage(main)
