"""Tests for seam.core.download: digests, verification and atomic, hash-checked fetching."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from seam.core.download import ChecksumError, DownloadError, fetch_file, file_digest, verify

PAYLOAD = b"seam test payload\n" * 1000
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
WRONG = "0" * 64


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on a free port serving a temporary directory."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_file_digest_matches_hashlib(src: Path) -> None:
    assert file_digest(src) == SHA256
    assert file_digest(src, "md5") == MD5


def test_verify_accepts_matching_digests(src: Path) -> None:
    verify(src, sha256=SHA256)
    verify(src, sha256=SHA256.upper())
    verify(src, sha256_prefix=SHA256[:8])
    verify(src, md5=MD5)
    verify(src, sha256=SHA256, sha256_prefix=SHA256[:10], md5=MD5)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(sha256=WRONG), WRONG),
        (dict(sha256_prefix="deadbeef"), "deadbeef"),
        (dict(md5="0" * 32), "0" * 32),
        (dict(sha256=SHA256, md5="0" * 32), "0" * 32),
    ],
)
def test_verify_mismatch_names_file_and_digests(src: Path, kwargs: dict, expected: str) -> None:
    with pytest.raises(ChecksumError) as info:
        verify(src, **kwargs)
    message = str(info.value)
    assert str(src) in message
    assert expected in message
    assert (MD5 if "md5 mismatch" in message else SHA256) in message


def test_verify_needs_a_digest(src: Path) -> None:
    with pytest.raises(ValueError, match="no digest"):
        verify(src)
    with pytest.raises(ValueError, match="hex"):
        verify(src, sha256_prefix="not-hex")


def test_fetch_local_copies_and_verifies(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "nested" / "payload.bin"
    assert fetch_file(src, dest, sha256=SHA256) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["payload.bin"]


def test_fetch_file_url_for_local_path(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    fetch_file(src.as_uri(), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_existing_valid_dest_is_kept(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    fetch_file(src, dest, sha256=SHA256)
    src.unlink()  # a second fetch must not need the source at all
    mtime = dest.stat().st_mtime_ns
    assert fetch_file(src, dest, sha256=SHA256) == dest
    assert dest.stat().st_mtime_ns == mtime


def test_fetch_replaces_corrupt_dest(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    dest.write_bytes(b"truncated")
    fetch_file(src, dest, sha256_prefix=SHA256[:8])
    assert dest.read_bytes() == PAYLOAD


def test_fetch_local_mismatch_leaves_nothing(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    dest = out / "payload.bin"
    with pytest.raises(ChecksumError) as info:
        fetch_file(src, dest, sha256=WRONG)
    assert str(src) in str(info.value) and SHA256 in str(info.value)
    assert not dest.exists()
    assert _leftovers(out) == []


def test_fetch_corrupt_dest_and_bad_source_leaves_nothing(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    dest.write_bytes(b"stale")
    with pytest.raises(ChecksumError):
        fetch_file(src, dest, md5="0" * 32)
    assert not dest.exists()


def test_fetch_missing_local_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        fetch_file(tmp_path / "nope.bin", tmp_path / "dest.bin", sha256=SHA256)
    assert not (tmp_path / "dest.bin").exists()


def test_fetch_needs_a_digest(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="digest"):
        fetch_file(src, tmp_path / "dest.bin")


def test_fetch_http(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    (root / "payload.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "dl" / "payload.bin"
    assert fetch_file(f"{base}/payload.bin", dest, sha256=SHA256, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["payload.bin"]


def test_fetch_http_mismatch_leaves_nothing(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    (root / "payload.bin").write_bytes(PAYLOAD)
    out = tmp_path / "dl"
    with pytest.raises(ChecksumError) as info:
        fetch_file(f"{base}/payload.bin", out / "payload.bin", sha256_prefix="deadbeef", progress=False)
    assert f"{base}/payload.bin" in str(info.value)
    assert _leftovers(out) == []


def test_fetch_http_404(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    out = tmp_path / "dl"
    with pytest.raises(DownloadError, match="404") as info:
        fetch_file(f"{base}/missing.bin", out / "missing.bin", sha256=SHA256, progress=False)
    assert f"{base}/missing.bin" in str(info.value)
    assert _leftovers(out) == []


def test_fetch_unreachable_url_names_url_and_offline_route(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/x"  # discard port: nothing listens there
    out = tmp_path / "dl"
    with pytest.raises(DownloadError) as info:
        fetch_file(url, out / "x", sha256=SHA256, progress=False)
    message = str(info.value)
    assert url in message and "offline" in message
    assert _leftovers(out) == []

    with pytest.raises(DownloadError, match="use the mirror"):
        fetch_file(url, out / "x", sha256=SHA256, progress=False, offline_hint="use the mirror")


def test_unverified_fetch_copies_without_a_digest_and_refuses_by_default(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"user data")
    with pytest.raises(ValueError, match="needs a digest"):
        fetch_file(src, tmp_path / "a.bin")
    assert not (tmp_path / "a.bin").exists()
    dest = tmp_path / "b.bin"
    dest.write_bytes(b"stale")
    assert fetch_file(src, dest, unverified=True) == dest
    assert dest.read_bytes() == b"user data"  # no digest to trust an existing file by: fetched afresh


def test_a_relative_path_means_the_same_file_in_a_queued_experiment(tmp_path, monkeypatch):
    """`dvc exp run --queue` runs a copy of the workspace at
    <workspace>/.dvc/tmp/exps/<tmp>/; `../shared/...` there is taken from the workspace."""
    from seam.core.download import shown_path, workspace_path

    ws = tmp_path / "ws"
    queued = ws / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    queued.mkdir(parents=True)
    monkeypatch.chdir(ws)
    assert workspace_path("../shared/a.tar") == tmp_path / "shared" / "a.tar"
    monkeypatch.chdir(queued)
    assert workspace_path("../shared/a.tar") == tmp_path / "shared" / "a.tar"
    assert workspace_path("/abs/a.tar") == Path("/abs/a.tar")
    assert shown_path("../shared/a.tar") == f"../shared/a.tar (= {tmp_path}/shared/a.tar, from {queued})"
