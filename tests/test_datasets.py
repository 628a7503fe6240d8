"""Tests for seam.data.sources: verified download into raw_dir and decoding (synthetic data, offline)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seam.core.params import DatasetParams
from seam.data.sources import DatasetError, download_dataset, load_dataset

CLASSES = ["cat", "ant", "bee"]  # deliberately unsorted: classes must come out sorted
SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_ARCHIVE = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
# load_dataset reads only raw_dir: the source is validated but never opened (this one does not exist).
LOAD_CFG = DatasetParams(name="imagefolder", source="gone/elsewhere.tar.gz")
REAL_SHA256 = "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965"


def color(split: str, cls: str, i: int) -> tuple[int, int, int]:
    """A distinct colour per image, so decoded pixels identify the file."""
    return (10 * CLASSES.index(cls) + 1, 20 * i + 3, 100 if split == "train" else 200)


def write_tree(root: Path, n_train: int = 3, n_test: int = 2, fmt: str = "PNG", size: int = 8) -> Path:
    """ImageFolder layout of solid-colour images under root/{train,test}/<class>/."""
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (size, size), color(split, cls, i)).save(d / f"{i:03d}.{ext}", fmt)
    return root


def make_tar(tree: Path, out: Path, arc_prefix: str = "") -> Path:
    """Tar (gzip by suffix) the contents of `tree`, optionally under one top-level folder."""
    mode = "w:gz" if out.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(out, mode) as tf:
        for p in sorted(tree.rglob("*")):
            tf.add(p, arcname=f"{arc_prefix}{p.relative_to(tree).as_posix()}", recursive=False)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cfg(source: object = None, sha: str | None = None, name: str = "imagefolder") -> DatasetParams:
    return DatasetParams(name=name, source=None if source is None else str(source), sha256=sha)


def assert_nothing_left(raw_dir: Path) -> None:
    assert not raw_dir.exists()
    leftovers = [p.name for p in raw_dir.parent.iterdir() if p.name.startswith(f".{raw_dir.name}.")]
    assert leftovers == []


def check_synthetic(raw, n_train: int = 3, n_test: int = 2, exact: bool = True) -> None:
    assert raw.name == "imagefolder"
    assert raw.classes == sorted(CLASSES)
    assert raw.train.images.dtype == torch.uint8 and raw.train.images.shape == (3 * n_train, 3, 8, 8)
    assert raw.test.images.shape == (3 * n_test, 3, 8, 8)
    assert raw.train.labels.dtype == torch.int64
    assert raw.train.labels.tolist() == [c for c in range(3) for _ in range(n_train)]
    assert raw.coarse_classes is None and raw.train_coarse is None
    if exact:  # sorted by class, then file name: pixel (0, 0) tells which file landed where
        expected = [color("train", cls, i) for cls in sorted(CLASSES) for i in range(n_train)]
        assert [tuple(x) for x in raw.train.images[:, :, 0, 0].tolist()] == expected


# ----------------------------------------------------------------------------- happy paths


def test_directory_source_copied_and_decoded(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "src")
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(tree), raw_dir)
    assert [p.name for p in raw_dir.iterdir()] == ["imagefolder"]
    check_synthetic(load_dataset(cfg(tree), raw_dir))


@pytest.mark.parametrize("archive, prefix", [("d.tar", ""), ("d.tar.gz", "cifar10/"), ("d.tgz", "./")])
def test_archive_source_verified_and_decoded(tmp_path: Path, archive: str, prefix: str) -> None:
    src = make_tar(write_tree(tmp_path / "tree"), tmp_path / archive, prefix)
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(src, sha256(src)), raw_dir)
    assert [p.name for p in raw_dir.iterdir()] == [archive]
    check_synthetic(load_dataset(cfg(src), raw_dir))


def test_jpeg_and_grey_images_become_rgb(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree", fmt="JPEG")
    Image.new("L", (8, 8), 77).save(tree / "train" / "ant" / "zzz.jpg", "JPEG")
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(make_tar(tree, tmp_path / "d.tar")), raw_dir)
    raw = load_dataset(LOAD_CFG, raw_dir)
    assert raw.train.images.shape == (10, 3, 8, 8)
    grey = raw.train.images[3]  # ant: 3 files + zzz.jpg, sorted last
    assert (grey.int() - 77).abs().max() <= 2


def test_non_images_and_hidden_files_ignored(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree")
    (tree / "train" / "ant" / "notes.txt").write_text("x")
    (tree / "train" / "ant" / "._000.png").write_bytes(b"apple double junk")
    (tree / "README").write_text("x")
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(tree), raw_dir)
    check_synthetic(load_dataset(LOAD_CFG, raw_dir))


def test_pool_decoding_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seam.data.sources as ds

    raw_dir = tmp_path / "raw"
    download_dataset(cfg(make_tar(write_tree(tmp_path / "tree", n_train=10), tmp_path / "d.tar")), raw_dir)
    serial = load_dataset(LOAD_CFG, raw_dir)
    monkeypatch.setattr(ds, "_POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(ds, "_CHUNK", 7)
    pooled = load_dataset(LOAD_CFG, raw_dir)
    assert torch.equal(serial.train.images, pooled.train.images)
    assert torch.equal(serial.test.images, pooled.test.images)


def test_download_replaces_existing_raw_dir(tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / "stale.bin").write_bytes(b"old")
    download_dataset(cfg(write_tree(tmp_path / "tree")), raw_dir)
    assert [p.name for p in raw_dir.iterdir()] == ["imagefolder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "tree"]


def test_failed_download_keeps_existing_raw_dir(tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / "keep.bin").write_bytes(b"old")
    src = make_tar(write_tree(tmp_path / "tree"), tmp_path / "d.tar")
    with pytest.raises(DatasetError):
        download_dataset(cfg(src, "0" * 64), raw_dir)
    assert [p.name for p in raw_dir.iterdir()] == ["keep.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tar", "raw", "tree"]


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server over tmp_path/www (no network needed)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_source_downloaded_and_verified(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    www, base = http_root
    src = make_tar(write_tree(tmp_path / "tree"), www / "data.tar.gz", "top/")
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(f"{base}/data.tar.gz", sha256(src)), raw_dir)
    assert [p.name for p in raw_dir.iterdir()] == ["data.tar.gz"]
    check_synthetic(load_dataset(LOAD_CFG, raw_dir))


def test_url_source_without_sha256(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    www, base = http_root
    make_tar(write_tree(tmp_path / "tree"), www / "data.tar")
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(f"{base}/data.tar"), raw_dir)
    assert [p.name for p in raw_dir.iterdir()] == ["data.tar"]
    check_synthetic(load_dataset(LOAD_CFG, raw_dir))


def test_url_sha256_mismatch_names_file_and_hashes(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    www, base = http_root
    src = make_tar(write_tree(tmp_path / "tree"), www / "data.tar.gz")
    with pytest.raises(DatasetError) as e:
        download_dataset(cfg(f"{base}/data.tar.gz", "0" * 64), tmp_path / "raw")
    msg = str(e.value)
    assert "data.tar.gz" in msg and "0" * 64 in msg and sha256(src) in msg
    assert_nothing_left(tmp_path / "raw")


def test_url_not_found(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    _, base = http_root
    raw_dir = tmp_path / "raw"
    with pytest.raises(DatasetError, match=r"dataset\.source: could not download .*/missing\.tar: HTTP 404"):
        download_dataset(cfg(f"{base}/missing.tar"), raw_dir)
    assert_nothing_left(raw_dir)


# ----------------------------------------------------------------------------- source errors


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.source: .*nope\.tar.* does not exist"):
        download_dataset(cfg(tmp_path / "nope.tar"), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


def test_cifar_source_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.source: .*tree is not a file"):
        download_dataset(cfg(write_tree(tmp_path / "tree"), name="cifar10"), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


def test_unsupported_source(tmp_path: Path) -> None:
    src = tmp_path / "data.zip"
    src.write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"unsupported source .*data\.zip"):
        download_dataset(cfg(src), tmp_path / "raw")
    with pytest.raises(DatasetError, match=r"URL .*data\.zip must name"):
        download_dataset(cfg("https://example.invalid/data.zip"), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


def test_sha256_mismatch_names_file_and_hashes(tmp_path: Path) -> None:
    src = make_tar(write_tree(tmp_path / "tree"), tmp_path / "d.tar.gz")
    with pytest.raises(DatasetError) as e:
        download_dataset(cfg(src, "0" * 64), tmp_path / "raw")
    msg = str(e.value)
    assert "d.tar.gz" in msg and "0" * 64 in msg and sha256(src) in msg
    assert_nothing_left(tmp_path / "raw")


def test_sha256_on_directory_source(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree")
    with pytest.raises(DatasetError, match=r"dataset\.sha256: only archives.*tree"):
        download_dataset(cfg(tree, "0" * 64), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


# ----------------------------------------------------------------------------- layout errors


@pytest.mark.parametrize("as_archive", [False, True])
def test_missing_test_split(tmp_path: Path, as_archive: bool) -> None:
    tree = write_tree(tmp_path / "tree")
    (tree / "test").rename(tree / "val")
    src = make_tar(tree, tmp_path / "d.tar") if as_archive else tree
    with pytest.raises(DatasetError, match=r"(d\.tar|tree): no folder holding both train/ and test/"):
        download_dataset(cfg(src), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


def test_test_classes_differ(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree")
    (tree / "test" / "bee").rename(tree / "test" / "wasp")
    with pytest.raises(DatasetError, match=r"d\.tar: test/ class folders differ.*missing \['bee'\], extra \['wasp'\]"):
        download_dataset(cfg(make_tar(tree, tmp_path / "d.tar")), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


def test_empty_class_folder_named(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree")
    for p in (tree / "test" / "ant").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=r"d\.tar: class folder top/test/ant/ holds no images"):
        download_dataset(cfg(make_tar(tree, tmp_path / "d.tar", "top/")), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


def test_corrupt_archive(tmp_path: Path) -> None:
    src = tmp_path / "d.tar.gz"
    src.write_bytes(b"this is not gzip")
    with pytest.raises(DatasetError, match=r"d\.tar\.gz"):
        download_dataset(cfg(src), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_archive_cut_at_a_member_boundary(tmp_path: Path, suffix: str) -> None:
    """A tar cut between members reads without error; only its missing end marker tells."""
    whole = make_tar(write_tree(tmp_path / "tree"), tmp_path / "whole.tar")
    with tarfile.open(whole) as tf:
        cut_at = tf.getmembers()[-3].offset  # drops the last three members
    data = whole.read_bytes()[:cut_at]
    src = tmp_path / f"cut{suffix}"
    src.write_bytes(gzip.compress(data, mtime=0) if suffix.endswith("gz") else data)
    with pytest.raises(DatasetError, match=rf"cut\.tar(\.gz)?: truncated tar archive \(no end-of-archive marker after \d+ members\)"):
        download_dataset(cfg(src), tmp_path / "raw")
    assert_nothing_left(tmp_path / "raw")
    download_dataset(cfg(whole), tmp_path / "raw")  # the whole archive passes


@pytest.mark.parametrize("as_archive, pooled", [(False, False), (True, False), (True, True)])
def test_corrupt_image_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_archive: bool, pooled: bool) -> None:
    import seam.data.sources as ds

    if pooled:  # the error must survive the trip back from a worker process
        monkeypatch.setattr(ds, "_POOL_MIN_IMAGES", 1)
        monkeypatch.setattr(ds, "_CHUNK", 4)
    tree = write_tree(tmp_path / "tree")
    (tree / "train" / "bee" / "001.png").write_bytes(b"\x89PNG garbage")
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(make_tar(tree, tmp_path / "d.tar") if as_archive else tree), raw_dir)
    with pytest.raises(DatasetError, match=r"train/bee/001\.png: unreadable or corrupt image"):
        load_dataset(LOAD_CFG, raw_dir)


def test_different_image_size_named(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree")
    Image.new("RGB", (9, 8), (1, 2, 3)).save(tree / "test" / "cat" / "001.png")
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(make_tar(tree, tmp_path / "d.tar")), raw_dir)
    with pytest.raises(DatasetError, match=r"d\.tar:test/cat/001\.png: image is 9x8 .*expected 8x8"):
        load_dataset(LOAD_CFG, raw_dir)


def test_load_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"raw.*missing.*download"):
        load_dataset(LOAD_CFG, tmp_path / "raw")
    (tmp_path / "raw").mkdir()
    with pytest.raises(DatasetError, match=r"raw: expected one .* archive"):
        load_dataset(LOAD_CFG, tmp_path / "raw")
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py: missing or corrupt cifar10"):
        load_dataset(DatasetParams(name="cifar10"), tmp_path / "raw")


# ----------------------------------------------------------------------------- CIFAR (synthetic archives)


def _pickle_bytes(obj: dict) -> bytes:
    return pickle.dumps(obj, protocol=2)


def make_fake_cifar(name: str, out: Path, n_train: int = 12, n_test: int = 7) -> tuple[Path, dict[str, str], dict]:
    """A tiny archive in the official CIFAR python layout; returns (archive, member md5s, truth)."""
    rng = np.random.default_rng(0)
    n_cls = 10 if name == "cifar10" else 6
    fine_names = [f"fine{i}" for i in range(n_cls)]
    coarse_of = [i // 2 for i in range(n_cls)]  # 3 superclasses of 2 fine classes
    if name == "cifar10":
        folder, meta_name = "cifar-10-batches-py", "batches.meta"
        batches = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": 5}
        meta = {"label_names": fine_names}
    else:
        folder, meta_name = "cifar-100-python", "meta"
        batches = {"train": n_train, "test": n_test}
        meta = {"fine_label_names": fine_names, "coarse_label_names": ["c0", "c1", "c2"]}
    files = {meta_name: _pickle_bytes(meta)}
    truth: dict = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for bname, n in batches.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, n_cls, n)]
        split = "test" if bname.startswith("test") else "train"
        truth[f"{split}_x"].append(data.reshape(n, 3, 32, 32))
        truth[f"{split}_y"] += labels
        if name == "cifar10":
            entry = {"data": data, "labels": labels}
        else:
            entry = {"data": data, "fine_labels": labels, "coarse_labels": [coarse_of[y] for y in labels]}
        files[bname] = _pickle_bytes(entry)
    with tarfile.open(out, "w:gz") as tf:
        for fname, blob in files.items():
            info = tarfile.TarInfo(f"{folder}/{fname}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    md5s = {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    truth["coarse_of"] = coarse_of
    return out, md5s, truth


def patch_md5s(monkeypatch: pytest.MonkeyPatch, name: str, archive: Path, md5s: dict[str, str]) -> None:
    """Point torchvision's checksums at the fake archive (the real ones pin the official files)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    monkeypatch.setattr(cls, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(cls, "train_list", [[n, md5s[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5s[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_local_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    archive, md5s, truth = make_fake_cifar(name, tmp_path / "official.tar.gz")
    patch_md5s(monkeypatch, name, archive, md5s)
    raw_dir = tmp_path / "raw"
    download_dataset(cfg(archive, name=name), raw_dir)
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    assert [p.name for p in raw_dir.iterdir()] == [folder]  # the .tar.gz is dropped
    raw = load_dataset(DatasetParams(name=name), raw_dir)
    assert raw.name == name and raw.classes == [f"fine{i}" for i in range(len(raw.classes))]
    for split in ("train", "test"):
        s = getattr(raw, split)
        assert s.images.dtype == torch.uint8 and s.images.is_contiguous()
        assert torch.equal(s.images, torch.from_numpy(np.concatenate(truth[f"{split}_x"])))
        assert s.labels.dtype == torch.int64 and s.labels.tolist() == truth[f"{split}_y"]
    if name == "cifar10":
        assert raw.coarse_classes is None and raw.train_coarse is None and raw.test_coarse is None
    else:
        assert raw.coarse_classes == ["c0", "c1", "c2"]
        assert raw.train_coarse.dtype == torch.int64
        assert raw.train_coarse.tolist() == [truth["coarse_of"][y] for y in truth["train_y"]]
        assert raw.test_coarse.tolist() == [truth["coarse_of"][y] for y in truth["test_y"]]


@pytest.mark.parametrize("name, md5", [("cifar10", "c58f30108f718f92721af3b95e74349a"),
                                       ("cifar100", "eb9058c3a382ffc7106e4002c42a8d85")])
def test_cifar_md5_mismatch(tmp_path: Path, name: str, md5: str) -> None:
    archive, _, _ = make_fake_cifar(name, tmp_path / "fake.tar.gz")
    with pytest.raises(DatasetError) as e:
        download_dataset(cfg(archive, name=name), tmp_path / "raw")
    msg = str(e.value)
    assert "fake.tar.gz" in msg and md5 in msg and hashlib.md5(archive.read_bytes()).hexdigest() in msg
    assert_nothing_left(tmp_path / "raw")


def test_cifar_sha256_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, md5s, _ = make_fake_cifar("cifar100", tmp_path / "official.tar.gz")
    patch_md5s(monkeypatch, "cifar100", archive, md5s)
    with pytest.raises(DatasetError, match=r"official\.tar\.gz\b.*: sha256 mismatch: expected f{64}, got ") as e:
        download_dataset(cfg(archive, "f" * 64, name="cifar100"), tmp_path / "raw")
    assert sha256(archive) in str(e.value)
    assert_nothing_left(tmp_path / "raw")
    download_dataset(cfg(archive, sha256(archive), name="cifar100"), tmp_path / "raw")
    assert (tmp_path / "raw" / "cifar-100-python").is_dir()


# ----------------------------------------------------------------------------- the real asset


@pytest.fixture(scope="module")
def real_archive() -> Path:
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"offline asset {REAL_ARCHIVE} not present (needs the shared/ folder beside the repo)")
    return REAL_ARCHIVE


@pytest.mark.slow
def test_real_cifar10_jpeg(tmp_path: Path, real_archive: Path) -> None:
    from seam.data.targets import build_target, parse_targets

    c = cfg(real_archive, REAL_SHA256)
    raw_dir = tmp_path / "raw"
    download_dataset(c, raw_dir)
    t0 = time.perf_counter()
    raw = load_dataset(c, raw_dir)
    elapsed = time.perf_counter() - t0
    print(f"decoded 60,000 JPEGs in {elapsed:.1f} s")
    assert raw.classes == ["airplane", "automobile", "bird", "cat", "deer",
                           "dog", "frog", "horse", "ship", "truck"]  # fmt: skip
    assert raw.train.images.shape == (50000, 3, 32, 32) and raw.test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(raw.train.labels).tolist() == [5000] * 10
    assert torch.bincount(raw.test.labels).tolist() == [1000] * 10
    assert elapsed < 45
    (problem,) = parse_targets({"airplane": {"binary": "airplane"}}, raw)
    data = build_target(raw, problem, seed=0, val_fraction=0.1)
    assert len(data.train_y) + len(data.val_y) == 10000 and len(data.test_y) == 2000
    assert len(data.val_y) == 1000 and torch.bincount(data.val_y).tolist() == [500, 500]
