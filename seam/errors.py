"""The error base class for bad input, and how stages report it."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable


class SeamError(Exception):
    """Bad input the user can fix (a file, a key, a hash): reported without a traceback."""


def run_stage(main: Callable[..., None]) -> None:
    """Run a stage's ``main`` as a command line (typer, from its signature); a SeamError ends
    it with ``error: <message>`` and exit code 1. Set ``SEAM_DEBUG=1`` for the traceback too.
    """
    import typer

    @functools.wraps(main)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            main(*args, **kwargs)
        except SeamError as exc:
            if os.environ.get("SEAM_DEBUG"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=sys.modules[main.__module__].__doc__)
    app.command(help=sys.modules[main.__module__].__doc__)(guarded)
    app()
