"""Fetching a registry model's checkpoint: from its upstream URL or an offline mirror, verified by hash.

Kept apart from ``seam.registry`` so that stages which only load a fetched checkpoint do not
depend on the download code.
"""

from __future__ import annotations

import os
from pathlib import Path

from seam import download
from seam.registry import ModelSpec, get_spec

MIRROR_ENV = "SEAM_MODEL_MIRROR"


def _mirror_source(spec: ModelSpec, mirror: str) -> str:
    if download.is_url(mirror):
        return mirror.rstrip("/") + "/" + spec.filename
    path = Path(mirror).expanduser()
    if path.is_dir():
        candidate = path / spec.filename
        if not candidate.is_file():
            raise FileNotFoundError(
                f"model mirror {path} has no {spec.filename} (needed for {spec.name})"
            )
        return str(candidate)
    if path.is_file():
        return str(path)
    raise FileNotFoundError(f"model mirror {path} is neither a directory nor a file")


def fetch_model(name: str, dest: str | os.PathLike, *, mirror: str | None = None) -> Path:
    """Download (or copy) model `name`'s checkpoint to the file `dest`, verified by hash.

    The source is `mirror` if given, else the `SEAM_MODEL_MIRROR` environment variable,
    else the upstream URL. A mirror is a directory holding upstream file names, a direct
    file path, or an http(s) base URL. Every source is checked against the registry's
    sha256 (or its sha256 prefix where only that is published), so a mirror cannot change
    results: it either yields the upstream bytes or fails.
    """
    spec = get_spec(name)
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    source = spec.url if mirror is None else _mirror_source(spec, mirror)
    hint = (
        f"Without network access, put {spec.filename} in a directory and set "
        f"{MIRROR_ENV}=<that directory> (or pass mirror=...); its hash is checked either way."
    )
    return download.fetch_file(
        source,
        Path(dest),
        sha256=spec.sha256,
        sha256_prefix=spec.sha256_prefix,
        offline_hint=hint,
    )
