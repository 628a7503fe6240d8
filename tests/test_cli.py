"""The `seam` command line: bad input ends every command with one line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from seam.cli import app


@pytest.mark.parametrize(("args", "message"), [
    (["info", "{tmp}/none.pt"], "error: {tmp}/none.pt: no such artifact (run the reengineer stage first)"),
    (["fetch", "resnet20", "{tmp}/r.th", "--mirror", "{tmp}/absent"],
     "error: model mirror {tmp}/absent is neither a directory nor a file"),
    (["fetch", "resnet21", "{tmp}/r.th"], "error: unknown model 'resnet21'"),
    (["predict", "{tmp}/none.onnx", "{tmp}"], "error: {tmp}/none.onnx"),
    (["targets", "--params", "{tmp}/params.yaml"], "error: {tmp}/params.yaml: not found"),
])
def test_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(message.format(tmp=tmp_path)), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert isinstance(result.exception, SystemExit)  # ended by the guard, not by the SeamError itself
