"""Hash-verified fetching of a file from a URL or a local path.

The hash is what pins the bytes: a file is only ever placed at its destination after
its digest has been checked, so a URL, a mirror directory or a hand-copied file all give
the same result or an error.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from seam.core.atomic import atomic_path
from seam.core.errors import SeamError

_CHUNK = 1 << 20
_TIMEOUT_S = 60


class ChecksumError(SeamError, ValueError):
    """A file's digest differs from the expected one."""


class DownloadError(SeamError, OSError):
    """A URL could not be downloaded (network or HTTP failure)."""


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (streamed, any `hashlib` algorithm)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


_DIGESTS: dict[tuple, str] = {}


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, hashed once per process while its path, mtime and size stay the same."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def _normalise_hex(value: str, what: str) -> str:
    value = value.strip().lower()
    if not value or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{what} must be a non-empty hex string, got {value!r}")
    return value


def _check(
    path: Path,
    label: str,
    sha256: str | None,
    sha256_prefix: str | None,
    md5: str | None,
) -> None:
    if sha256 is None and sha256_prefix is None and md5 is None:
        raise ValueError(f"no digest given to verify {label} against")
    if sha256 is not None or sha256_prefix is not None:
        actual = file_digest(path, "sha256")
        if sha256 is not None and actual != _normalise_hex(sha256, "sha256"):
            raise ChecksumError(
                f"{label}: sha256 mismatch: expected {sha256.lower()}, got {actual}"
            )
        if sha256_prefix is not None:
            prefix = _normalise_hex(sha256_prefix, "sha256_prefix")
            if not actual.startswith(prefix):
                raise ChecksumError(
                    f"{label}: sha256 mismatch: expected a digest starting with {prefix}, "
                    f"got {actual}"
                )
    if md5 is not None:
        actual = file_digest(path, "md5")
        if actual != _normalise_hex(md5, "md5"):
            raise ChecksumError(f"{label}: md5 mismatch: expected {md5.lower()}, got {actual}")


def verify(
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    md5: str | None = None,
) -> None:
    """Raise ChecksumError unless `path` matches every digest given (at least one is required)."""
    path = Path(path)
    _check(path, str(path), sha256, sha256_prefix, md5)


def is_url(source: str) -> bool:
    """True for an http(s) URL."""
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


_QUEUED_RUN = (".dvc", "tmp", "exps")  # where `dvc exp run --queue/--temp` runs its copy of the workspace


def workspace_path(text: str | os.PathLike) -> Path:
    """A local path as a user wrote it (params.yaml, an environment variable): ``~`` expanded,
    a relative path taken from the DVC workspace. A queued experiment runs in a copy at
    ``<workspace>/.dvc/tmp/exps/<tmp>/``; there a relative path is taken from the workspace it
    was queued from, so ``../shared/...`` means the same file in both."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    cwd = Path.cwd()
    base = next((Path(*cwd.parts[:i]) for i in range(1, len(cwd.parts) - 2)
                 if cwd.parts[i:i + 3] == _QUEUED_RUN), cwd)
    return Path(os.path.normpath(base / path))


def shown_path(text: str | os.PathLike) -> str:
    """`text` for a message: a relative path with what it resolved to, and from where."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return str(path)
    return f"{text} (= {workspace_path(text)}, from {Path.cwd()})"


def _local_source(source: str | os.PathLike) -> Path:
    text = os.fspath(source)
    if text.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(text).path))
    return workspace_path(text)


def _download(url: str, tmp: Path, progress: bool, offline_hint: str) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "seam-pipeline"})

    def fail(exc: BaseException) -> DownloadError:
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        else:
            reason = getattr(exc, "reason", None) or exc
        return DownloadError(f"could not download {url}: {reason}. {offline_hint}")

    # Only network-side failures become DownloadError; a local write error (disk full)
    # propagates unchanged so it is not mistaken for an offline machine.
    network_errors = (urllib.error.URLError, http.client.HTTPException, OSError)
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except network_errors as exc:
        raise fail(exc) from exc
    with response, open(tmp, "wb") as out:
        total = response.headers.get("Content-Length")
        with tqdm(
            total=int(total) if total else None,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=Path(urllib.parse.urlsplit(url).path).name or url,
            disable=not progress,
        ) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except network_errors as exc:
                    raise fail(exc) from exc
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))


def fetch_file(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    offline_hint: str | None = None,
    unverified: bool = False,
) -> Path:
    """Place a verified copy of `source` (http(s) URL or local path) at `dest` and return dest.

    At least one digest is required, unless the caller says ``unverified=True`` (a user's
    own archive given without a hash): then the bytes are fetched as they are, always
    afresh. An existing `dest` that verifies is returned as is;
    one that does not is removed and fetched again. The bytes go to a temporary file beside
    `dest` and are renamed onto it only after verification, so on any failure nothing is
    left at `dest`. `offline_hint` replaces the generic advice appended to network errors.
    """
    dest = Path(dest)
    has_digest = not (sha256 is None and sha256_prefix is None and md5 is None)
    if not has_digest and not unverified:
        raise ValueError(f"fetch_file({source!s}) needs a digest (sha256, sha256_prefix or md5)")
    digests = dict(sha256=sha256, sha256_prefix=sha256_prefix, md5=md5)

    def check(path: Path, label: str) -> None:
        if has_digest:
            _check(path, label, **digests)

    if dest.exists() and has_digest:
        try:
            verify(dest, **digests)
            return dest
        except ChecksumError:
            # A stale or truncated file must not survive a failed refetch.
            dest.unlink()

    text = os.fspath(source)
    if is_url(text):
        hint = offline_hint or (
            "If this machine is offline, download the file elsewhere and pass its "
            "local path (or a directory mirroring it) instead of the URL."
        )
        with atomic_path(dest) as tmp:
            _download(text, tmp, progress, hint)
            check(tmp, f"{dest.name} downloaded from {text}")
        return dest

    src = _local_source(source)
    if not src.is_file():
        raise FileNotFoundError(f"source file not found: {shown_path(source)}")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        # Check the copy, not the source: the bytes at dest are what must match.
        check(tmp, str(src))
    return dest
