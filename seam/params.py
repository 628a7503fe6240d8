"""Reading params.yaml with errors that name the file and the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from seam.errors import SeamError


class ParamsError(SeamError, ValueError):
    """params.yaml is missing, unreadable, or lacks / mistypes a key."""


def load_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """The parsed params file (a mapping)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    params["_path"] = str(path)
    return params


_MISSING = object()


def get(params: dict[str, Any], key: str, expected: type | tuple[type, ...] | None = None, default: Any = _MISSING) -> Any:
    """``params["a"]["b"]`` for ``key="a.b"``, checked against ``expected``."""
    where = params.get("_path", "params.yaml")
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise ParamsError(f"{where}: missing key {key!r}")
        node = node[part]
    if expected is not None:
        # bool is an int in Python; a YAML `true` where a number is expected is a typo.
        wrong_bool = isinstance(node, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,))
        if wrong_bool or not isinstance(node, expected):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise ParamsError(f"{where}: {key!r} must be {names}, got {node!r}")
    return node
