"""Fetching the pretrained model: a registry entry from its upstream URL or an offline mirror,
or any checkpoint from its path or URL; verified by hash, loaded and dry-run.

Kept apart from ``seam.models.registry`` and ``seam.models.pretrained`` so that stages which only load a
fetched checkpoint do not depend on the download code.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from seam.core import download
from seam.core.errors import SeamError
from seam.core.params import ModelParams
from seam.models.pretrained import PretrainedModel, check_model
from seam.models.registry import ModelError, ModelSpec, get_spec

MIRROR_ENV = "SEAM_MODEL_MIRROR"


def _mirror_source(spec: ModelSpec, mirror: str) -> str:
    if download.is_url(mirror):
        return mirror.rstrip("/") + "/" + spec.filename
    path = download.workspace_path(mirror)
    where = f"model mirror {download.shown_path(mirror)}"
    if path.is_dir():
        candidate = path / spec.filename
        if not candidate.is_file():
            raise ModelError(f"{where} has no {spec.filename} (needed for {spec.name})")
        return str(candidate)
    if path.is_file():
        return str(path)
    raise ModelError(f"{where} is neither a directory nor a file")


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


def fetch_pretrained(cfg: ModelParams, directory: str | os.PathLike) -> PretrainedModel:
    """Fetch the model params.yaml names into `directory`, load it, dry-run it, and describe it.

    A registry entry comes from its upstream URL or the mirror (see :func:`fetch_model`);
    any other checkpoint from its path or URL, verified by ``sha256`` when given.
    """
    directory = Path(directory)
    if cfg.checkpoint is None:
        try:
            spec = get_spec(cfg.name)
        except ModelError as exc:
            raise ModelError(f"model.name: {exc} (or give your own with model.arch and model.checkpoint)") from None
        record = PretrainedModel(
            name=spec.name, format="state_dict", sha256="", num_classes=spec.num_classes, mean=list(spec.mean),
            std=list(spec.std), input_size=spec.input_size, arch=spec.arch, kwargs=dict(spec.kwargs),
            classifier=cfg.classifier or spec.classifier,
            classes=cfg.classes or (list(spec.classes) if spec.classes else None), source=spec.url)
        path = fetch_model(spec.name, directory / record.file)
    else:
        record = PretrainedModel(
            name=cfg.name, format="export" if cfg.checkpoint.endswith(".pt2") else "state_dict", sha256="",
            num_classes=0, mean=cfg.mean, std=cfg.std, input_size=cfg.input_size, arch=cfg.arch,
            kwargs=dict(cfg.kwargs), classifier=cfg.classifier, classes=cfg.classes, source=cfg.checkpoint)
        try:
            path = download.fetch_file(cfg.checkpoint, directory / record.file, sha256=cfg.sha256,
                                       unverified=cfg.sha256 is None)
        except (SeamError, FileNotFoundError) as exc:
            raise ModelError(f"model.checkpoint: {exc}") from None
    record = replace(record, sha256=download.file_digest(path))
    try:
        model = record.build(path)
    except SeamError as exc:
        raise ModelError(f"model.checkpoint: {exc}") from None
    return check_model(record, model)
