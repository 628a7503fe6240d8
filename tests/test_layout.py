"""The code's shape: packages layered without import cycles (import-linter, configured in
pyproject.toml), and no module or function too long to read at once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
CODE = [REPO / "seam", REPO / "stages"]


def python_files() -> list[Path]:
    return sorted(p for root in CODE for p in root.rglob("*.py"))


def test_seam_is_layered_and_has_no_import_cycle():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in python_files() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"


def test_no_function_is_over_80_lines():
    long = {}
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = lines
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"
