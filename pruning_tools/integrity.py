"""Checksums of the safetensors files we write, verified on every load; atomic writes; what any file
we read may make us do.

Every safetensors file the library writes (pruner state, packed export, the demo's weights) carries,
in its metadata under ``CHECKSUM_KEY``, the SHA-256 of each tensor (its dtype, shape and bytes) and of
the rest of the metadata. ``load_file`` recomputes them and raises ``IntegrityError`` (a
``ValueError``) naming the file and the damaged tensor, or the metadata. A truncated file (a torn
write) or a damaged header is refused by ``safetensors`` itself: also an ``IntegrityError``.
Files without the entry (written by other tools or by an older release) load unverified.

Every path the library reads goes through ``regular_file`` first: a FIFO, a character device or a
socket (which would block a reader forever, or stream without end) is refused before it is opened.
What a file declares is bounded by what it holds: ``check_allocation`` refuses, before anything is
allocated, a file whose declared sizes would make a reader build more than ``allocation_limit`` bytes
(by default 256 times the file's size, at least 64 MiB; ``PRUNING_TOOLS_MAX_DENSE_BYTES`` or a
reader's ``max_bytes`` argument sets another limit, in bytes, for genuinely huge all-zero tensors).

SHA-256 from the standard library runs at about 1 GB/s on one core: not a security measure (anyone
who edits a file can recompute it), a guard against flipped bits and half-written files.

>>> import tempfile, pathlib, numpy as np
>>> path = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
>>> save_file({"w": np.arange(4, dtype=np.float32)}, path, {"note": "hello"})
>>> tensors, metadata = load_file(path, framework="numpy")
>>> tensors["w"].tolist(), metadata["note"]
([0.0, 1.0, 2.0, 3.0], 'hello')
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path

CHECKSUM_KEY = "pruning_tools.checksums"
ALGORITHM = "sha256"


class IntegrityError(ValueError):
    """A file is damaged: truncated, unreadable, or a tensor or its metadata does not match its checksum."""


class NotRegularFileError(ValueError):
    """A path to read names a FIFO, a character or block device, or a socket: reading it could block
    forever or never end."""


class AllocationLimitError(ValueError):
    """A file declares sizes that would make a reader allocate more than ``allocation_limit``."""


_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}  # fmt: skip


def regular_file(path: str | Path, argument: str = "path") -> Path:
    """``path`` as a ``Path`` when it names a regular file (a symlink to one is followed); checked with
    ``os.stat``, which never blocks, before anything opens it. A directory is ``IsADirectoryError``,
    a missing file ``FileNotFoundError``, a FIFO, device or socket ``NotRegularFileError``; each names
    ``argument`` and the path."""
    path = Path(path)
    mode = os.stat(path).st_mode  # FileNotFoundError, PermissionError: as open() would say
    if stat.S_ISREG(mode):
        return path
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{argument}={str(path)!r} is a directory: expected a regular file")
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise NotRegularFileError(f"{argument}={str(path)!r} is {kind}: expected a regular file")


LIMIT_VARIABLE = "PRUNING_TOOLS_MAX_DENSE_BYTES"
EXPANSION = 256  # bytes a file may make us allocate per byte it holds (a packed 1-of-256 bank: about 205)
FLOOR = 64 << 20  # what any file may make us allocate, however small


def allocation_limit(file_bytes: int, max_bytes: int | None = None) -> int:
    """Bytes a reader may allocate for what one file of ``file_bytes`` declares: ``max_bytes`` when
    given, else the environment variable ``PRUNING_TOOLS_MAX_DENSE_BYTES`` when set, else
    ``max(256 * file_bytes, 64 MiB)``."""
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes!r} is not allowed: expected an integer number of bytes >= 0")
        return max_bytes
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if text:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{LIMIT_VARIABLE}={text!r} is not allowed: expected an integer number of bytes >= 0")
        return value
    return max(EXPANSION * file_bytes, FLOOR)


def check_allocation(path: str | Path, declared_bytes: int, what: str, max_bytes: int | None = None) -> None:
    """Raise ``AllocationLimitError`` naming ``path`` when ``declared_bytes`` (what the sizes the file
    declares would make us allocate: ``what``) exceed ``allocation_limit`` for the file's size. Call it
    before allocating."""
    file_bytes = os.stat(path).st_size if os.path.exists(path) else 0
    limit = allocation_limit(file_bytes, max_bytes)
    if declared_bytes > limit:
        raise AllocationLimitError(
            f"{path}: {what} would take {declared_bytes} bytes, more than the {limit} bytes a file of {file_bytes} "
            f"bytes may make us allocate; if the file is trusted, raise the limit with {LIMIT_VARIABLE}=<bytes> "
            "(or the reader's max_bytes argument)"
        )


def load_torch(path: str | Path, max_bytes: int | None = None) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` (no pickle code runs) of a regular
    file whose records, uncompressed, fit ``allocation_limit`` (a zip record may be compressed: a small
    file could unpack to gigabytes). Its own errors are left to the caller to word."""
    import zipfile

    import torch

    path = regular_file(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
        check_allocation(path, declared, "its records, uncompressed,", max_bytes)
    else:  # the format before PyTorch 1.6: each storage is allocated at its declared size, then read
        check_allocation(path, _legacy_storage_bytes(path), "its storages", max_bytes)
    return torch.load(path, map_location="cpu", weights_only=True)


_ELEMENT_BYTES = {"Double": 8, "Long": 8, "ComplexFloat": 8, "ComplexDouble": 16, "Float": 4, "Int": 4, "Half": 2,
                  "BFloat16": 2, "Short": 2, "Byte": 1, "Char": 1, "Bool": 1}  # fmt: skip


class _Stub:
    """What every global of a scanned pickle becomes: it accepts anything and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _legacy_storage_bytes(path: Path) -> int:
    """Bytes the storages of a legacy ``torch.save`` file declare (its persistent ids: ``("storage",
    type, key, location, numel, ...)``), found by unpickling with every global replaced by ``_Stub``:
    no code of the file runs and nothing is allocated for the storages. A file that is not such a
    pickle declares nothing here (``torch.load`` then says what it is)."""
    import pickle

    declared = 0

    class Scan(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return type(name, (_Stub,), {})

        def persistent_load(self, pid: Any) -> Any:
            nonlocal declared
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[4], int):
                kind = getattr(pid[1], "__name__", "").removesuffix("Storage")
                declared += max(0, pid[4]) * _ELEMENT_BYTES.get(kind, 8)
            return None

    with open(path, "rb") as f:
        try:
            for _ in range(4):  # magic number, protocol, system info, then the tensors
                Scan(f).load()
        except Exception:  # noqa: BLE001 - not a legacy pickle (or damaged): torch.load words it
            pass
    return declared


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``; text that is not JSON, or nested too deeply to parse, is a ``ValueError``
    naming ``where`` (the file and its entry)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be read") from None
    except ValueError as error:  # json.JSONDecodeError, and numbers of more than 4300 digits
        raise ValueError(f"{where} is not JSON ({error})") from error


def _raw_bytes(t: Any) -> tuple[str, tuple[int, ...], np.ndarray]:
    """``(dtype name, shape, bytes as a flat uint8 array)`` of a numpy array or a torch tensor, without
    copying a contiguous CPU one."""
    if isinstance(t, np.ndarray):
        flat = np.ascontiguousarray(t).reshape(-1)  # (0-dim arrays come back 1-dim: shape from t)
        return t.dtype.name, tuple(t.shape), flat.view(np.uint8)
    import torch

    flat = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # [numel * element size]
    return str(t.dtype).replace("torch.", ""), tuple(t.shape), flat.numpy()


def tensor_digest(t: Any) -> str:
    """Hex SHA-256 of a tensor's dtype, shape and bytes (numpy array or torch tensor: the same digest)."""
    dtype, shape, data = _raw_bytes(t)
    h = hashlib.new(ALGORITHM)
    h.update(f"{dtype}{list(shape)}".encode())
    h.update(data.data)
    return h.hexdigest()


def _metadata_digest(metadata: Mapping[str, str]) -> str:
    plain = {key: value for key, value in metadata.items() if key != CHECKSUM_KEY}
    return hashlib.new(ALGORITHM, json.dumps(plain, sort_keys=True).encode()).hexdigest()


def signed_metadata(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """``metadata`` plus the checksum entry of ``tensors`` and of ``metadata`` itself."""
    out = dict(metadata or {})
    out.pop(CHECKSUM_KEY, None)
    entry = {
        "algorithm": ALGORITHM,
        "metadata": _metadata_digest(out),
        "tensors": {name: tensor_digest(t) for name, t in tensors.items()},
    }
    out[CHECKSUM_KEY] = json.dumps(entry, sort_keys=True)
    return out


def verify(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None) -> bool:
    """Check ``tensors`` and ``metadata`` read from ``path`` against the checksums stored there.

    Returns ``False`` when the file holds no checksums (nothing to verify), ``True`` when everything
    matches; raises ``IntegrityError`` naming the file and the first damaged tensor otherwise.
    """
    metadata = metadata or {}
    if CHECKSUM_KEY not in metadata:
        return False
    try:
        entry = parse_json(metadata[CHECKSUM_KEY], f"{path}: its checksum entry")
        expected, algorithm, meta_digest = dict(entry["tensors"]), entry["algorithm"], entry["metadata"]
    except (ValueError, KeyError, TypeError) as error:
        raise IntegrityError(f"{path}: its checksum entry {CHECKSUM_KEY!r} is damaged ({error})") from error
    if algorithm != ALGORITHM:
        raise IntegrityError(f"{path}: checksum algorithm {algorithm!r} is not supported: expected {ALGORITHM!r}")
    if _metadata_digest(metadata) != meta_digest:
        raise IntegrityError(f"{path}: the file's metadata does not match its checksum: the file is damaged")
    missing = sorted(set(expected) - set(tensors))
    unknown = sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise IntegrityError(
            f"{path}: the file's tensors do not match its checksums (missing: {missing}, unexpected: {unknown}): "
            "the file is damaged"
        )
    for name, t in tensors.items():
        if tensor_digest(t) != expected[name]:
            raise IntegrityError(f"{path}: tensor {name!r} does not match its checksum: the file is damaged")
    return True


def save_file(tensors: Mapping[str, Any], path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file atomically (``pruning_tools.atomic``), with checksums in its metadata.

    ``tensors``: all numpy arrays or all torch tensors (contiguous, no shared storage), by name.
    """
    arrays = list(tensors.values())
    if arrays and all(isinstance(t, np.ndarray) for t in arrays):
        from safetensors.numpy import save_file as write
    else:
        from safetensors.torch import save_file as write  # type: ignore[assignment]
    from safetensors import SafetensorError

    signed = signed_metadata(tensors, metadata)
    try:
        with atomic_path(path) as tmp:
            write(dict(tensors), str(tmp), metadata=signed)
    except SafetensorError as error:  # a full disk, for one: not an OSError of its own
        raise OSError(f"cannot write {path}: {error}") from error


def load_file(path: str | Path, framework: str = "pt") -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors by name in file order, metadata)`` of a safetensors file, verified against its checksums.

    ``framework``: ``"pt"`` (torch tensors) or ``"numpy"``. Raises ``IntegrityError`` (a ``ValueError``
    naming ``path``) for a file that is not safetensors, truncated, or damaged.
    """
    from safetensors import SafetensorError, safe_open

    regular_file(path)
    try:
        with safe_open(str(path), framework=framework) as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise IntegrityError(f"{path} is not a readable safetensors file (truncated or damaged?): {error}") from error
    verify(path, tensors, metadata)
    return tensors, metadata


__all__ = [
    "CHECKSUM_KEY",
    "LIMIT_VARIABLE",
    "AllocationLimitError",
    "IntegrityError",
    "NotRegularFileError",
    "allocation_limit",
    "check_allocation",
    "load_file",
    "load_torch",
    "parse_json",
    "regular_file",
    "save_file",
    "signed_metadata",
    "tensor_digest",
    "verify",
]
