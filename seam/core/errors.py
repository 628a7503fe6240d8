"""The error base class for bad input, and how commands report it: one line, no traceback."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable


class SeamError(Exception):
    """Bad input the user can fix (a file, a key, a hash): reported without a traceback."""


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, ending a SeamError with ``error: <message>`` on stderr and exit code 1 instead of a
    traceback (``SEAM_DEBUG=1`` shows the traceback too)."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SeamError as exc:
            if os.environ.get("SEAM_DEBUG"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    return guarded

