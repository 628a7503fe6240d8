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


def test_info_verifies_the_artifact_and_its_checkpoint(tmp_path: Path) -> None:
    from seam.reengineer.artifact import save_artifact
    from tests.test_artifact import META, _flip_byte_of_member, searched_model

    _, model, masks = searched_model()
    path = tmp_path / "a.pt"
    meta = {**META, "selected_epoch": 2, "epochs_run": 3, "reached_target": True, "search": {"alpha": 1.0}}
    save_artifact(path, masks=masks, head=model.head.state_dict(), meta=meta)
    ok = CliRunner().invoke(app, ["info", str(path), "--pretrained", str(tmp_path / "none")])
    assert ok.exit_code == 0 and "verified  content (sha256 " in ok.output and "checkpoint not checked" in ok.output

    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "model.pt").write_bytes(b"some other checkpoint")
    (pretrained / "model.json").write_text(
        '{"name": "tiny", "format": "state_dict", "sha256": "' + "ab" * 32 + '", "num_classes": 4, '
        '"mean": [0.5], "std": [0.5], "input_size": 8}')
    other = CliRunner().invoke(app, ["info", str(path), "--pretrained", str(pretrained)])
    assert other.exit_code == 1 and "model.pt: sha256 " in other.output and "was searched on abababababab" in other.output

    _flip_byte_of_member(path, (8 * 3 * 9 + 8 * 8 * 9 + 8 + 32 + 4 + 7) // 8)
    bad = CliRunner().invoke(app, ["info", str(path)])
    assert bad.exit_code == 1 and bad.output.startswith(f"error: {path}: content does not match its digest")
