"""Raw datasets: fetch them verified into a DVC output folder (`download`), decode them (`prepare`).

Supported: the official CIFAR-10 / CIFAR-100 python archives (through torchvision, md5
checked) and any image-folder dataset (`train/<class>/*.jpg`, `test/<class>/*.jpg`) given as
a directory or a tar archive, local or http(s), optionally sha256-checked.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import pickle
import shutil
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from seam.core.atomic import atomic_dir
from seam.core.download import ChecksumError, DownloadError, fetch_file, is_url, shown_path, verify, workspace_path
from seam.core.errors import SeamError
from seam.core.params import DatasetParams


class DatasetError(SeamError, ValueError):
    """Bad dataset configuration or raw data (names the offending key or file)."""


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]


@dataclass
class RawDataset:
    name: str  # "cifar10" | "cifar100" | "imagefolder"
    classes: list[str]  # class names, index = label
    train: ImageSet
    test: ImageSet
    coarse_classes: list[str] | None = None  # CIFAR-100 superclass names (20), else None
    train_coarse: torch.Tensor | None = None  # int64 coarse label per train image (CIFAR-100)
    test_coarse: torch.Tensor | None = None


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGEFOLDER_DIR = "imagefolder"  # raw_dir/<this> holds a copied directory source
SPLITS = ("train", "test")

# Below this many images a worker pool costs more than it saves.
_POOL_MIN_IMAGES = 4000
_POOL_WORKERS = 2
_CHUNK = 2000


def _cifar_class(name: str) -> Any:
    # Imported lazily: torchvision is only needed for the CIFAR datasets.
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


# ----------------------------------------------------------------------------- download


_OFFLINE_HINT = (
    "If this machine is offline, download the archive elsewhere and set dataset.source to its local path."
)


def _fetch_archive(source: str, dest: Path, *, sha256: str | None = None, md5: str | None = None) -> None:
    """Copy a local archive or download a URL to `dest`, verified against the digests given."""
    if not is_url(source):
        src = workspace_path(source)
        if not src.exists():
            raise DatasetError(f"dataset.source: {shown_path(source)} does not exist")
        if not src.is_file():
            raise DatasetError(f"dataset.source: {shown_path(source)} is not a file (expected an archive)")
        source = str(src)
    try:
        # An imagefolder archive may come without dataset.sha256: nothing to verify then.
        fetch_file(source, dest, sha256=sha256, md5=md5, offline_hint=_OFFLINE_HINT,
                   unverified=sha256 is None and md5 is None)
    except ChecksumError as e:  # the user's dataset.sha256, or the official archive's md5
        raise DatasetError(f"{'dataset.sha256' if sha256 else 'dataset.source'}: {e}") from None
    except DownloadError as e:
        raise DatasetError(f"dataset.source: {e}") from None


def _download_cifar(name: str, source: str | None, sha256: str | None, tmp: Path) -> None:
    cls = _cifar_class(name)
    archive = tmp / cls.filename
    if source is not None:
        # Checked here: on a mismatch torchvision would silently fall back to its own URL.
        _fetch_archive(source, archive, sha256=sha256, md5=cls.tgz_md5)
    try:
        # Downloads (when no source) with md5 check, extracts, then checks every batch's md5.
        cls(str(tmp), train=True, download=True)
    except (OSError, RuntimeError, tarfile.TarError) as e:
        raise DatasetError(f"dataset: cannot download/verify {name}: {e}") from e
    if source is None and sha256 is not None:
        try:
            verify(archive, sha256=sha256)
        except ChecksumError as e:
            raise DatasetError(f"{e} (downloaded from {cls.url})") from e
    archive.unlink()  # the extracted batches are all load_dataset needs


def _download_imagefolder(source: str, sha256: str | None, tmp: Path) -> None:
    if is_url(source):
        name = PurePosixPath(urllib.parse.urlparse(source).path).name
        if not _is_archive(name):
            raise DatasetError(f"dataset.source: URL {source} must name a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    else:
        src = workspace_path(source)
        if not src.exists():
            raise DatasetError(f"dataset.source: {shown_path(source)} does not exist")
        if src.is_dir():
            if sha256 is not None:
                raise DatasetError(f"dataset.sha256: only archives can be checked, but source {src} is a directory")
            _scan_layout(_dir_files(src), str(src))  # fail before copying a bad tree
            shutil.copytree(src, tmp / IMAGEFOLDER_DIR)
            return
        name = src.name
        if not _is_archive(name):
            raise DatasetError(
                f"dataset.source: unsupported source {src}; "
                f"expected a directory or a {'/'.join(ARCHIVE_SUFFIXES)} archive"
            )
    archive = tmp / name
    _fetch_archive(source, archive, sha256=sha256)
    with _open_tar(archive) as tf:
        _scan_layout(_tar_files(tf, archive), str(archive.name))


def download_dataset(cfg: DatasetParams, raw_dir: Path) -> None:
    """Make `raw_dir` hold exactly the verified raw data for `cfg` (atomic: all or nothing)."""
    name, source, sha256 = cfg.name, cfg.source, cfg.sha256
    with atomic_dir(raw_dir) as tmp:
        if name == "imagefolder":
            assert source is not None
            _download_imagefolder(source, sha256, tmp)
        else:
            _download_cifar(name, source, sha256, tmp)


# ----------------------------------------------------------------------------- image-folder layout


@dataclass
class _Layout:
    classes: list[str]
    # per split: (member path, label) sorted by class, then file name
    files: dict[str, list[tuple[str, int]]]


def _dir_files(root: Path) -> tuple[list[str], list[str]]:
    """Relative POSIX paths of (directories, files) under `root`."""
    dirs, files = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        (dirs if p.is_dir() else files).append(rel)
    return dirs, files


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        tf = tarfile.open(path)
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(f"{path.name}: not a readable tar archive: {e}") from e
    with tf:
        yield tf


def _tar_files(
    tf: tarfile.TarFile, path: Path, blobs: dict[str, bytes] | None = None
) -> tuple[list[str], list[str]]:
    """(directories, regular files) member names of an archive, without a leading './'.

    With `blobs`, also reads every image member into it in the same pass: a second pass
    (or random access) into a gzip stream would decompress it again.
    """
    dirs, files = [], []
    try:
        for m in tf:
            name = m.name.removeprefix("./").rstrip("/")
            if m.isdir():
                dirs.append(name)
            elif m.isfile():
                files.append(name)
                if blobs is not None and name.lower().endswith(IMAGE_SUFFIXES):
                    f = tf.extractfile(m)
                    assert f is not None
                    blobs[name] = f.read()
        # tarfile ends quietly where the data ends; a whole archive ends with zero blocks. Without
        # them the archive was cut at a member boundary and whole classes may be missing.
        tf.fileobj.seek(tf.offset)
        marker = tf.fileobj.read(2 * tarfile.BLOCKSIZE)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{path.name}: corrupt tar archive: {e}") from e
    if len(marker) < 2 * tarfile.BLOCKSIZE or any(marker):
        raise DatasetError(f"{path.name}: truncated tar archive (no end-of-archive marker after "
                           f"{len(dirs) + len(files)} members); download it again")
    return dirs, files


def _scan_layout(entries: tuple[list[str], list[str]], where: str) -> _Layout:
    """Find the one folder holding train/ and test/ and list its classes and image files."""
    dirs, files = entries
    all_dirs = set(dirs)
    implied: set[str] = set()
    for f in files:  # archives need not list parent directories as members
        while "/" in f:
            f = f.rsplit("/", 1)[0]
            if f in implied:
                break  # its ancestors were added with it
            implied.add(f)
    all_dirs |= implied
    roots = []
    for d in sorted(all_dirs):
        path = PurePosixPath(d)
        root = "" if str(path.parent) == "." else str(path.parent)
        if path.name == "train" and (f"{root}/test" if root else "test") in all_dirs:
            roots.append(root)
    if not roots:
        raise DatasetError(
            f"{where}: no folder holding both train/ and test/ (expected train/<class>/*.jpg, test/<class>/*.jpg)"
        )
    if len(roots) > 1:
        raise DatasetError(f"{where}: several folders hold train/ and test/: {[r or '.' for r in roots]}")
    root = roots[0]
    prefix = f"{root}/" if root else ""

    def hidden(n: str) -> bool:
        return n.startswith(".")

    per_split: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        base = f"{prefix}{split}/"
        classes: dict[str, list[str]] = {}
        for d in all_dirs:
            if d.startswith(base) and "/" not in d[len(base):] and not hidden(d[len(base):]):
                classes[d[len(base):]] = []
        for f in files:
            rest = f[len(base):] if f.startswith(base) else None
            if rest is None or rest.count("/") != 1:
                continue
            cls, fname = rest.split("/")
            if cls in classes and not hidden(fname) and fname.lower().endswith(IMAGE_SUFFIXES):
                classes[cls].append(f)
        per_split[split] = classes

    classes = sorted(per_split["train"])
    if not classes:
        raise DatasetError(f"{where}: {prefix}train/ has no class folders")
    test_classes = sorted(per_split["test"])
    if test_classes != classes:
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        raise DatasetError(
            f"{where}: {prefix}test/ class folders differ from {prefix}train/: missing {missing}, extra {extra}"
        )
    layout = _Layout(classes=classes, files={})
    for split in SPLITS:
        items: list[tuple[str, int]] = []
        for label, cls in enumerate(classes):
            names = sorted(per_split[split][cls])  # same folder: path order = file-name order
            if not names:
                raise DatasetError(
                    f"{where}: class folder {prefix}{split}/{cls}/ holds no images ({'/'.join(IMAGE_SUFFIXES)})"
                )
            items.extend((n, label) for n in names)
        layout.files[split] = items
    return layout


# ----------------------------------------------------------------------------- decoding


def _decode_one(name: str, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            rgb.load()
            # tobytes + frombuffer: cheaper than numpy's __array_interface__ path for tiny images.
            return np.frombuffer(rgb.tobytes(), np.uint8).reshape(rgb.height, rgb.width, 3)
    except Exception as e:  # PIL raises many types for corrupt data
        raise DatasetError(f"{name}: unreadable or corrupt image: {e}") from None


def _decode_chunk(args: tuple[list[tuple[str, bytes]], tuple[int, int]]) -> np.ndarray:
    """Decode encoded images into one [n, H, W, 3] uint8 RGB array; a bad one raises naming its file."""
    items, (h, w) = args
    out = np.empty((len(items), h, w, 3), np.uint8)
    for i, (name, data) in enumerate(items):
        arr = _decode_one(name, data)
        if arr.shape[:2] != (h, w):
            raise DatasetError(
                f"{name}: image is {arr.shape[1]}x{arr.shape[0]} (WxH), expected {w}x{h} like the first image"
            )
        out[i] = arr
    return out


def _decode_all(items: list[tuple[str, bytes]]) -> np.ndarray:
    """Decode all images (same size required) into one [N, H, W, 3] uint8 array."""
    if not items:
        return np.zeros((0, 0, 0, 3), np.uint8)
    shape = _decode_one(*items[0]).shape[:2]
    if len(items) < _POOL_MIN_IMAGES:
        return _decode_chunk((items, shape))
    chunks = [(items[i : i + _CHUNK], shape) for i in range(0, len(items), _CHUNK)]
    # fork: workers inherit the loaded module instead of re-importing torch (seconds under spawn).
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(_POOL_WORKERS) as pool:
        return np.concatenate(pool.map(_decode_chunk, chunks))


def _to_imageset(hwc: np.ndarray, labels: list[int]) -> ImageSet:
    images = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=images, labels=torch.tensor(labels, dtype=torch.int64))


def _load_imagefolder(raw_dir: Path) -> RawDataset:
    entries = sorted(p for p in raw_dir.iterdir() if not p.name.startswith("."))
    folder = raw_dir / IMAGEFOLDER_DIR
    if folder.is_dir():
        layout = _scan_layout(_dir_files(folder), str(folder))
        wanted = [n for s in SPLITS for n, _ in layout.files[s]]
        blobs = {n: (folder / n).read_bytes() for n in wanted}
        label_prefix = f"{folder}/"
    else:
        archives = [p for p in entries if p.is_file() and _is_archive(p.name)]
        if len(archives) != 1:
            raise DatasetError(
                f"{raw_dir}: expected one {'/'.join(ARCHIVE_SUFFIXES)} archive or an {IMAGEFOLDER_DIR}/ folder "
                f"(run the download stage), found {[p.name for p in entries]}"
            )
        archive = archives[0]
        blobs = {}
        with _open_tar(archive) as tf:
            members = _tar_files(tf, archive, blobs)
        layout = _scan_layout(members, archive.name)
        wanted = [n for s in SPLITS for n, _ in layout.files[s]]
        label_prefix = f"{archive.name}:"
    arrays = _decode_all([(f"{label_prefix}{n}", blobs[n]) for n in wanted])
    del blobs
    n_train = len(layout.files["train"])
    sets = {
        split: _to_imageset(part, [lab for _, lab in layout.files[split]])
        for split, part in (("train", arrays[:n_train]), ("test", arrays[n_train:]))
    }
    return RawDataset(name="imagefolder", classes=list(layout.classes), train=sets["train"], test=sets["test"])


def _load_cifar(name: str, raw_dir: Path) -> RawDataset:
    cls = _cifar_class(name)
    sets: dict[str, ImageSet] = {}
    classes: list[str] = []
    for split in SPLITS:
        try:
            ds = cls(str(raw_dir), train=(split == "train"), download=False)
        except (RuntimeError, OSError, pickle.UnpicklingError) as e:
            raise DatasetError(
                f"{raw_dir / cls.base_folder}: missing or corrupt {name} data (run the download stage): {e}"
            ) from e
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        sets[split] = ImageSet(images=images, labels=torch.tensor(ds.targets, dtype=torch.int64))
        classes = list(ds.classes)
    raw = RawDataset(name=name, classes=classes, train=sets["train"], test=sets["test"])
    if name == "cifar100":
        base = raw_dir / cls.base_folder
        # torchvision drops the superclass labels; they sit beside the fine ones in the pickles.
        raw.coarse_classes = list(_unpickle(base / cls.meta["filename"], "coarse_label_names"))
        raw.train_coarse = torch.tensor(_unpickle(base / cls.train_list[0][0], "coarse_labels"), dtype=torch.int64)
        raw.test_coarse = torch.tensor(_unpickle(base / cls.test_list[0][0], "coarse_labels"), dtype=torch.int64)
        for split, coarse in (("train", raw.train_coarse), ("test", raw.test_coarse)):
            if len(coarse) != len(sets[split].labels):
                n_images = len(sets[split].labels)
                raise DatasetError(f"{base}: {split} has {len(coarse)} coarse labels for {n_images} images")
    return raw


def _unpickle(path: Path, key: str) -> Any:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")[key]
    except (OSError, pickle.UnpicklingError, KeyError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read {key!r}: {e!r}") from e


def dataset_classes(cfg: DatasetParams, raw_dir: Path) -> tuple[list[str], list[str] | None]:
    """Class names and CIFAR-100 superclass names (else None) of the downloaded data, without decoding images."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetError(f"{raw_dir}: raw data folder missing (run the download stage: dvc repro download)")
    if cfg.name != "imagefolder":
        cls = _cifar_class(cfg.name)
        meta = raw_dir / cls.base_folder / cls.meta["filename"]
        coarse = list(_unpickle(meta, "coarse_label_names")) if cfg.name == "cifar100" else None
        return list(_unpickle(meta, cls.meta["key"])), coarse
    folder = raw_dir / IMAGEFOLDER_DIR
    if folder.is_dir():
        return _scan_layout(_dir_files(folder), str(folder)).classes, None
    archives = [p for p in raw_dir.iterdir() if p.is_file() and _is_archive(p.name)]
    if len(archives) != 1:
        raise DatasetError(f"{raw_dir}: expected one archive or an {IMAGEFOLDER_DIR}/ folder (run the download stage)")
    with _open_tar(archives[0]) as tf:
        return _scan_layout(_tar_files(tf, archives[0]), archives[0].name).classes, None


def load_dataset(cfg: DatasetParams, raw_dir: Path) -> RawDataset:
    """Decode the raw data that `download_dataset(cfg, raw_dir)` left in `raw_dir`."""
    name = cfg.name
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetError(f"{raw_dir}: raw data folder missing (run the download stage)")
    if name == "imagefolder":
        return _load_imagefolder(raw_dir)
    return _load_cifar(name, raw_dir)
