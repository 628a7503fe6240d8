"""DVC stage `validate`: check the whole params file before any other stage runs.

DVC deletes a stage's outputs just before it runs the stage's command, so a typo caught
inside a stage would already have cost that stage's previous results. Every stage is
downstream of this one, so `dvc repro` and `dvc exp run` stop here on a bad params file,
before any output is touched. Its output's bytes never change, so a valid edit re-runs
nothing through it: only the stages that read the edited keys run.
"""

from __future__ import annotations

from pathlib import Path

from seam.core.atomic import write_text
from seam.core.stage import run_stage
from seam.core.params import load_params


def main(params_file: Path, out: Path) -> None:
    load_params(params_file)
    write_text("valid\n", out)  # constant: a marker for DVC's ordering, not a result
    print(f"{params_file}: valid")


if __name__ == "__main__":
    run_stage(main)
