"""Atomic file writes: every file the library writes goes through here.

A file is written to a temporary file in the same directory, flushed to disk (``fsync``), then
renamed over the target (``os.replace``, atomic on POSIX and Windows) and the directory entry is
flushed too. A write that fails at any point (an exception, a full disk, a killed process) leaves
the previous file, if any, exactly as it was, and no temporary file behind (except after a kill,
where a hidden ``.<name>.<random>.tmp`` may remain; it is never read).

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
>>> write_text(target, "first\\n")
>>> try:
...     with atomic_open(target, "w") as f:
...         _ = f.write("half a line")
...         raise RuntimeError("the disk is full")
... except RuntimeError:
...     pass
>>> target.read_text()
'first\\n'
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; the rename is durable there anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on leaving the block without an exception the
    temporary file is flushed to disk and renamed over ``path``; on an exception it is removed and
    ``path`` is untouched.

    For writers that take a file name (``safetensors.save_file``, ``torch.save``). The new file gets
    the mode of the file it replaces, else the usual ``0o666 & ~umask``. A symlink at ``path`` is
    followed: its target is replaced.
    """
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise IsADirectoryError(f"{path} is a directory: expected a file path")
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as open() would give
    os.close(fd)
    try:
        mode = stat.S_IMODE((target if target.exists() else tmp).stat().st_mode)
        yield tmp
        os.chmod(tmp, mode)  # a writer may have replaced tmp by its own file (safetensors: mode 0600)
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode, **kwargs)`` (``mode`` ``"w"``/``"wb"``/``"x"``...) written atomically: the
    file appears at ``path`` complete, when the block ends without an exception, or not at all."""
    if not any(c in mode for c in "wx") or "+" in mode or "a" in mode:
        raise ValueError(f"mode={mode!r} is not allowed: expected a write mode such as 'w' or 'wb'")
    if "x" in mode and Path(path).exists():
        raise FileExistsError(f"{path} exists (mode {mode!r})")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` written atomically (a failed save leaves the old file intact).

    For a pruner alone prefer ``Prune.save(path)``: no pickle, and checksummed."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


__all__ = ["atomic_open", "atomic_path", "save_torch", "write_bytes", "write_text"]
