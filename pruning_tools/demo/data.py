"""MNIST in the standard IDX format (``*-ubyte.gz``), read into numpy, offline first.

``load_mnist(data_dir)`` reads the four files of ``data_dir`` (a checkout of the repository holds them
in ``data/mnist/``; the command line passes that directory by default), or of the user cache
``~/.cache/pruning-tools/mnist`` when ``data_dir`` is None; with ``download_missing=True`` it fetches
missing files from the usual mirrors (checked against the canonical MD5 sums) into that directory.
Nothing here knows where the repository lies.

>>> import numpy as np
>>> images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
>>> parse_idx(idx_bytes(images)).shape
(2, 28, 28)
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_open, atomic_path
from ..integrity import AllocationLimitError, allocation_limit, check_allocation, regular_file

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CACHE_DIR = Path.home() / ".cache" / "pruning-tools" / "mnist"
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
CANONICAL_MD5 = {  # of the original files on the mirrors
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_DTYPE_CODES = {0x08: np.uint8}


@dataclass(frozen=True)
class MnistData:
    """The four MNIST arrays (uint8, read-only when loaded from files)."""

    train_images: np.ndarray  # [60000, 28, 28]
    train_labels: np.ndarray  # [60000]
    test_images: np.ndarray  # [10000, 28, 28]
    test_labels: np.ndarray  # [10000]
    source: str = ""  # directory the files were read from

    def head(self, limit: int | None) -> MnistData:
        """The first ``limit`` train and test images (all of them when ``limit`` is None)."""
        if limit is None:
            return self
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit={limit!r} is not allowed: expected None or an int >= 1")
        return MnistData(
            self.train_images[:limit],
            self.train_labels[:limit],
            self.test_images[:limit],
            self.test_labels[:limit],
            self.source,
        )


def parse_idx(raw: bytes) -> np.ndarray:
    """Decode one uncompressed IDX file (magic ``0 0 dtype ndim``, big-endian dims, data)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPE_CODES:
        raise ValueError("not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"IDX header announces {ndim} dims but the file ends after {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_DTYPE_CODES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"IDX file holds {data.size} values, its header announces shape {shape}")
    return data.reshape(shape)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an uncompressed IDX file (inverse of ``parse_idx``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_dir(directory: str | Path, data: MnistData) -> Path:
    """Write ``data`` as the four ``*-ubyte.gz`` files into ``directory`` (for tests and slices)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for field, filename in FILES.items():
        with atomic_open(directory / filename, "wb") as raw, gzip.GzipFile(filename, "wb", fileobj=raw) as f:
            f.write(idx_bytes(getattr(data, field)))
    return directory


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with regular_file(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify_sums(directory: Path) -> None:
    """Check the files against ``SHA256SUMS`` when the directory has one."""
    sums = directory / "SHA256SUMS"
    if not sums.is_file():
        return
    for line in regular_file(sums).read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split()[:2]
        name = name.lstrip("*")
        if name in FILES.values() and _digest(directory / name, "sha256") != expected:
            raise ValueError(f"{directory / name}: SHA-256 does not match {sums}; the file is damaged")


def _read_bounded(stream, path: Path) -> bytes:
    """All of a decompressing ``stream`` of the file ``path``, refused (``integrity.AllocationLimitError``)
    once it exceeds what a file of its size may make us allocate: a small archive cannot unpack to gigabytes."""
    limit = allocation_limit(path.stat().st_size)
    data = stream.read(limit + 1)
    if len(data) > limit:
        check_allocation(path, len(data), "its content, decompressed (at least),")
    return data


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def read_idx_dir(directory: str | Path) -> MnistData:
    """Read the four ``*-ubyte.gz`` files of ``directory`` (verified against ``SHA256SUMS`` if present).

    The arrays are read-only and cached per directory until one of its files changes.
    """
    directory = Path(directory).resolve()
    stamp = tuple(
        (directory / name).stat().st_mtime_ns for name in [*FILES.values(), "SHA256SUMS"] if (directory / name).exists()
    )
    return _read_idx_dir(directory, stamp)


@functools.lru_cache(maxsize=2)
def _read_idx_dir(directory: Path, stamp: tuple) -> MnistData:
    _verify_sums(directory)
    arrays = {}
    for field, filename in FILES.items():
        path = regular_file(directory / filename)
        try:
            with gzip.open(path, "rb") as f:
                arrays[field] = parse_idx(_read_bounded(f, path))
        except AllocationLimitError:
            raise
        except (OSError, EOFError, ValueError) as error:  # not gzip, truncated, not IDX
            raise ValueError(f"{directory / filename}: not a gzipped IDX file ({error})") from error
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match")
    return MnistData(**arrays, source=str(directory))


class _Mismatch(Exception):
    """A downloaded file whose MD5 is not the canonical one."""


def download(directory: str | Path, mirrors: tuple[str, ...] = MIRRORS) -> Path:
    """Fetch the four files from the first mirror that answers; each must match its canonical MD5."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, md5 in CANONICAL_MD5.items():
        target = directory / name
        if target.is_file() and _digest(target, "md5") == md5:
            continue
        errors = []
        for mirror in mirrors:
            try:
                with atomic_path(target) as partial:  # the file appears complete and checked, or not at all
                    urllib.request.urlretrieve(mirror + name, partial)
                    if _digest(partial, "md5") != md5:
                        raise _Mismatch
            except OSError as exc:
                errors.append(f"{mirror}: {exc}")
                continue
            except _Mismatch:
                errors.append(f"{mirror}: MD5 mismatch")
                continue
            break
        else:
            raise RuntimeError(f"could not download {name}: " + "; ".join(errors))
    return directory


def has_mnist(directory: str | Path) -> bool:
    """Whether ``directory`` holds the four IDX files."""
    return _has_files(Path(directory))


def load_mnist(data_dir: str | Path | None = None, *, download_missing: bool = False) -> MnistData:
    """Load MNIST from ``data_dir`` (None: the user cache ``~/.cache/pruning-tools/mnist``).

    With ``download_missing=True`` the files are fetched into that directory when it lacks them;
    otherwise a missing directory or file is a ``FileNotFoundError`` naming it (no other directory is
    tried in its place). Returns uint8 arrays: train ``[60000, 28, 28]`` / ``[60000]``, test
    ``[10000, 28, 28]`` / ``[10000]``.
    """
    directory = Path(data_dir) if data_dir is not None else CACHE_DIR
    if _has_files(directory):
        return read_idx_dir(directory)
    if download_missing:
        return read_idx_dir(download(directory))
    if not directory.is_dir():
        hint = f"data_dir={str(directory)!r} is not a directory"
    else:
        missing = [name for name in FILES.values() if not (directory / name).is_file()]
        hint = f"{directory} lacks {', '.join(missing)}"
    raise FileNotFoundError(
        f"MNIST not found: {hint}. Pass the directory holding {', '.join(FILES.values())} (a checkout of the "
        "repository has them in data/mnist/), or download_missing=True to fetch them from the usual mirrors."
    )
