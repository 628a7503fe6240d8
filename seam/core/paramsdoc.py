"""The params.yaml reference, rendered from the schema in :mod:`seam.core.params`.

The schema's field docstrings are the only place a key's meaning is written; `seam params`
prints this rendering and `docs/params.md` is its committed copy (a test keeps them equal).
"""

from __future__ import annotations

import math
import re
import types
from typing import Any, Iterator, Literal, Union, get_args, get_origin

import yaml
from pydantic.fields import FieldInfo

from seam.core import params as schema_module
from seam.core.params import Params, Section

REGENERATE = "uv run seam params > docs/params.md"

def params_reference() -> str:
    """The Markdown reference of params.yaml: one table per section, in the schema's order."""
    # the file's rules are the schema module's docstring, past its title; Sphinx roles dropped
    rules = re.sub(r":\w+:`", "`", schema_module.__doc__.split("\n\n", 1)[1]).strip()
    parts = [f"""\
# params.yaml reference

<!-- Generated from seam/core/params.py by `{REGENERATE}`: edit the schema, not this file. -->

Every key of `params.yaml`: its type, its default (the value the committed `params.yaml`
holds) and its meaning.

{rules}

Profiles (`profiles/*.yaml`, applied with `seam profile NAME`) set only the keys whose
values differ from these defaults.
"""]
    for path, section in _sections(Params):
        parts.append(_section_text(path, section))
    return "\n".join(parts)


def _section_fields(schema: type[Section]) -> tuple[dict[str, FieldInfo], dict[str, type[Section]]]:
    """A section's fields split into plain keys and nested sections, each in declaration order."""
    keys, nested = {}, {}
    for name, field in schema.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            nested[name] = field.annotation
        else:
            keys[name] = field
    return keys, nested


def _sections(schema: type[Section], path: str = "") -> Iterator[tuple[str, type[Section]]]:
    yield path, schema
    for name, nested in _section_fields(schema)[1].items():
        yield from _sections(nested, f"{path}.{name}" if path else name)


def _section_text(path: str, schema: type[Section]) -> str:
    depth = path.count(".") + 1 if path else 1
    lines = [f"{'#' * (depth + 1)} {path or 'Top level'}", ""]
    if path:  # the root's docstring ("the whole of params.yaml") says nothing the heading does not
        lines += [_one_line(schema.__doc__), ""]
    keys = _section_fields(schema)[0]
    if keys:
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        prefix = f"{path}." if path else ""
        for name, field in keys.items():
            cells = (f"`{prefix}{name}`", _type_text(field.annotation, field.metadata),
                     f"`{_yaml_value(field.default)}`", _one_line(field.description))
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _yaml_value(value: Any) -> str:
    """`value` as params.yaml spells it, on one line (flow style, keys in their order)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=math.inf)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _cell(text: str) -> str:
    # a bare | ends a Markdown table cell, even inside a code span (GFM)
    return text.replace("|", "\\|")


def _type_text(annotation: Any, metadata: list) -> str:
    """A field's type and bounds in words: `number > 0`, `` `val` or `test` ``, `null or int > 0`."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        text = " or ".join(_type_text(m, metadata) for m in members)
        return f"null or {text}" if len(members) < len(get_args(annotation)) else text
    if hasattr(annotation, "__metadata__"):  # Annotated[base, Field(...)] inside Optional
        base, *extra = get_args(annotation)
        found = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return _type_text(base, [*metadata, *found])
    if get_origin(annotation) is Literal:
        names = [f"`{_yaml_value(v)}`" for v in get_args(annotation)]
        return ", ".join(names[:-1]) + f" or {names[-1]}"
    return _with_bounds(_base_name(annotation), metadata)


def _base_name(annotation: Any) -> str:
    if get_origin(annotation) is list:
        return f"list of {_base_name(get_args(annotation)[0])}"
    if get_origin(annotation) is dict or annotation is dict:
        return "mapping"
    return {bool: "bool", int: "int", float: "number", str: "string"}.get(annotation, str(annotation))


def _with_bounds(name: str, metadata: list) -> str:
    # annotated_types' Gt/Ge/Lt/Le/MinLen/MaxLen and pydantic's pattern, read by attribute
    given = {k: getattr(m, k) for m in metadata for k in _BOUNDS if getattr(m, k, None) is not None}
    low = next((f"{op} {given[k]}" for k, op in (("gt", ">"), ("ge", ">=")) if k in given), None)
    high = next((f"{op} {given[k]}" for k, op in (("lt", "<"), ("le", "<=")) if k in given), None)
    text = " ".join(filter(None, [name, " and ".join(filter(None, [low, high]))]))
    shortest, longest = given.get("min_length"), given.get("max_length")
    if shortest is not None and shortest == longest:
        text += f", exactly {shortest} items"
    elif shortest == 1:
        text = f"non-empty {text}"
    elif shortest is not None:
        text += f", at least {shortest} items"
    if "pattern" in given:
        text += f" matching `{given['pattern']}`"
    return text


_BOUNDS = ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern")
