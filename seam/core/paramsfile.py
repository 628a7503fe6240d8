"""Edit params.yaml in place, keeping its comments and layout: what `seam targets` and
`seam profile` write. The result is checked against the schema before the file is replaced.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import CommentedMap

from seam.core.atomic import atomic_path
from seam.core.params import Params, ParamsError, load_params, yaml_problem


def _yaml() -> YAML:
    y = YAML()  # round trip: comments, key order and flow styles survive
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    # ruamel writes None as an empty value; params.yaml spells it out
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file as round-trip data (mappings keep their comments)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found")
    try:
        return _yaml().load(path.read_text())
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None


def _merge(base: CommentedMap, overlay: dict, replace: set[str], prefix: str) -> None:
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and path not in replace:
            _merge(base[key], value, replace, f"{path}.")
        else:
            base[key] = value


def update_params(path: str | os.PathLike, overlay: dict, *, replace: set[str] = frozenset()) -> Params:
    """Merge `overlay` into the params file (mappings key by key; the dotted key paths in
    `replace` are replaced whole) and return the validated result. Nothing is written
    unless the new file passes the schema.
    """
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    _merge(data, overlay, set(replace), "")
    buf = io.StringIO()
    _yaml().dump(data, buf)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
        try:
            return load_params(tmp)
        except ParamsError as exc:  # the old file stays as it was
            raise ParamsError(str(exc).replace(str(tmp), str(path))) from None
