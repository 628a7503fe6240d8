"""The error base class for bad input, and how stages report it."""

from __future__ import annotations

import os
import sys
from typing import Callable


class SeamError(Exception):
    """Bad input the user can fix (a file, a key, a hash): reported without a traceback."""


def run_stage(main: Callable[..., None], *args: str) -> None:
    """Run a stage's ``main``; a SeamError ends it with ``error: <message>`` and exit code 1.

    Set ``SEAM_DEBUG=1`` to get the traceback as well.
    """
    try:
        main(*args)
    except SeamError as exc:
        if os.environ.get("SEAM_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
