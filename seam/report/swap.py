"""A directory written whole or not at all: the report's output folder.

Local to the report for now: the project is getting one shared helper for this, which
:func:`replaced_dir` should then call.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def replaced_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside ``out``; if the block succeeds it replaces ``out`` whole,
    otherwise it is removed and ``out`` stays as it was.

    Two renames, not one: POSIX cannot rename a directory onto a non-empty one. Between them
    ``out`` is briefly absent and ``.<name>.old`` holds the previous version.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield build
        build.chmod(0o777 & ~_UMASK)  # mkdtemp's 0700 would make the report private; give what mkdir would
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        build.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)
