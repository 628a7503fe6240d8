"""What every stage script shares: its command line, and where a killed run's state waits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import typer

from seam.core.errors import one_line_errors

# Outside every DVC output: DVC deletes a stage's outputs before it runs the stage again.
STATE_DIR = typer.Option(Path(".seam/resume"), help="where a killed run's state waits for the rerun")


def run_stage(main: Callable[..., None]) -> None:
    """Run a stage's ``main`` as a command line (typer, from its signature), its bad input
    ended by :func:`~seam.core.errors.one_line_errors`."""
    doc = sys.modules[main.__module__].__doc__
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=doc)
    app.command(help=doc)(one_line_errors(main))
    app()
