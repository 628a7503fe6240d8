"""What the report reads: the metric JSONs, the per-epoch CSVs and the paper's numbers
(``reference/paper.yaml``), each checked as it loads so that an error names its file and key."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from seam.core.errors import SeamError


class ReportError(SeamError, ValueError):
    """A metrics, log or paper-numbers file the report cannot read."""


@dataclass(frozen=True)
class Doc:
    """A loaded JSON file: its data and its path, so that a missing key names both."""

    path: Path
    data: dict

    def get(self, *keys: str) -> Any:
        """``data[k1][k2]...``, or a ReportError naming the file and the dotted key."""
        value: Any = self.data
        for i, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                raise ReportError(f"{self.path}: no key {'.'.join(keys[:i + 1])!r} (re-run the stage that writes it)")
            value = value[key]
        return value


def read_json(path: str | os.PathLike) -> Doc:
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: not found (run the stage that writes it)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return Doc(path, data)


def read_logs(directory: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The per-epoch CSVs of a plots directory, by file stem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"{directory}: no per-epoch logs (run the stages that write them)")
    return {p.stem: pd.read_csv(p) for p in sorted(directory.glob("*.csv"))}


# The keys each paper.yaml section must hold; `setting` entries are {value, source}.
PAPER_KEYS = {"rq1": ("row", "models", "kind", "weights", "acc", "flops", "latency", "source"),
              "retraining": ("row", "models", "retrained", "reengineered", "increase", "source"),
              "defects": ("row", "dropout", "source", "standard", "remos", "seam")}
SETTING_KEYS = ("search_epochs", "latency_batch", "latency_runs", "latency_statistic", "cores", "defects_models",
                "defects_datasets")


def load_paper(path: str | os.PathLike) -> dict:
    """The paper's numbers (``reference/paper.yaml``), checked for every key the report reads."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: the paper's numbers file is missing")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a mapping of sections")
    for section, keys in PAPER_KEYS.items():
        rows = data.get(section)
        if not isinstance(rows, list):
            raise ReportError(f"{path}: expected a list under {section!r}")
        for i, row in enumerate(rows):
            missing = [k for k in keys if k not in row]
            if missing:
                raise ReportError(f"{path}: {section}[{i}] lacks {missing}")
    setting = data.get("setting")
    if not isinstance(setting, dict):
        raise ReportError(f"{path}: expected a mapping under 'setting'")
    for key in SETTING_KEYS:
        entry = setting.get(key)
        if not isinstance(entry, dict) or "value" not in entry or not entry.get("source"):
            raise ReportError(f"{path}: setting.{key} must be {{value: ..., source: ...}}, got {entry!r}")
    return data


def paper_fact(paper: dict, key: str) -> Any:
    """The value of ``setting.<key>`` in paper.yaml (checked by :func:`load_paper`)."""
    return paper["setting"][key]["value"]
