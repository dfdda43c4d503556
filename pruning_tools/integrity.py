"""Checksums of the safetensors files we write, verified on every load; atomic writes.

Every safetensors file the library writes (pruner state, packed export, the demo's weights) carries,
in its metadata under ``CHECKSUM_KEY``, the SHA-256 of each tensor (its dtype, shape and bytes) and of
the rest of the metadata. ``load_file`` recomputes them and raises ``IntegrityError`` (a
``ValueError``) naming the file and the damaged tensor, or the metadata. A truncated file (a torn
write) or a damaged header is refused by ``safetensors`` itself: also an ``IntegrityError``.
Files without the entry (written by other tools or by an older release) load unverified.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path

CHECKSUM_KEY = "pruning_tools.checksums"
ALGORITHM = "sha256"


class IntegrityError(ValueError):
    """A file is damaged: truncated, unreadable, or a tensor or its metadata does not match its checksum."""


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
        entry = json.loads(metadata[CHECKSUM_KEY])
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
    signed = signed_metadata(tensors, metadata)
    with atomic_path(path) as tmp:
        write(dict(tensors), str(tmp), metadata=signed)


def load_file(path: str | Path, framework: str = "pt") -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors by name in file order, metadata)`` of a safetensors file, verified against its checksums.

    ``framework``: ``"pt"`` (torch tensors) or ``"numpy"``. Raises ``IntegrityError`` (a ``ValueError``
    naming ``path``) for a file that is not safetensors, truncated, or damaged.
    """
    from safetensors import SafetensorError, safe_open

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


__all__ = ["CHECKSUM_KEY", "IntegrityError", "load_file", "save_file", "signed_metadata", "tensor_digest", "verify"]
