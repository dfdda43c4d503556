"""One run's files in an output directory: written apart, moved in together, the manifest last.

A demo run writes every file into a fresh hidden directory inside ``out`` (``.incomplete-<random>``),
so an interruption while it writes (Ctrl-C during the plots, a full disk) leaves ``out`` exactly as it
was: the earlier run, whole. Once everything is written the files are moved into ``out`` by renames
(the same file system: each one atomic, all of them in milliseconds), ``results.json`` last; it lists
the SHA-256 of every other file of the run, so ``check_run`` tells a complete run from one whose
moves were cut short (some files of the new run beside the earlier run's manifest).

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> with staged_run(out, []) as staging:
...     _ = (staging / "a.txt").write_text("new")
...     _ = write_manifest(staging, {"files": {"a": "a.txt"}})
>>> sorted(p.name for p in out.iterdir()), check_run(out)
(['a.txt', 'results.json'], [])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..integrity import parse_json, regular_file

MANIFEST = "results.json"
STAGING_PREFIX = ".incomplete-"


def file_digest(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(regular_file(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(staging: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary`` as ``results.json`` in ``staging``, with ``"sha256"``: the digest of every
    other file there (the run's files, by name)."""
    digests = {p.name: file_digest(p) for p in sorted(staging.iterdir()) if p.name != MANIFEST and p.is_file()}
    path = staging / MANIFEST
    write_text(path, json.dumps({**summary, "sha256": digests}, indent=1, default=str) + "\n")
    return path


@contextlib.contextmanager
def staged_run(out: Path, committed: list[Path]) -> Iterator[Path]:
    """A fresh directory inside ``out`` to write one run's files into. When the block ends without an
    exception its files are moved into ``out`` (replacing those of the same names), the manifest last;
    each path moved is appended to ``committed`` as it lands (what an interruption leaves). The staging
    directory is removed in every case."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        yield staging
        names = sorted(p.name for p in staging.iterdir() if p.name != MANIFEST)
        for name in [*names, MANIFEST] if (staging / MANIFEST).exists() else names:
            os.replace(staging / name, out / name)
            committed.append(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_run(out: str | Path) -> list[str]:
    """What keeps ``out`` from holding one complete run: no manifest, or a file the manifest lists that
    is missing or is not the one it describes (a move cut short, a file changed since). Empty: complete."""
    out = Path(out)
    manifest = out / MANIFEST
    if not manifest.exists():
        return [f"{manifest} is missing: no complete run in {out}"]
    summary = parse_json(regular_file(manifest).read_text(), str(manifest))
    digests = summary.get("sha256") if isinstance(summary, dict) else None
    if not isinstance(digests, dict):
        return [f"{manifest} lists no checksums (written before runs recorded them): nothing to check against"]
    problems = []
    for name, digest in digests.items():
        path = out / str(name)
        if Path(str(name)).name != name:
            problems.append(f"{manifest} lists {name!r}: expected a file name in {out}")
        elif not path.is_file():
            problems.append(f"{path} is missing")
        elif file_digest(path) != digest:
            problems.append(f"{path} is not the file of the run {manifest} describes")
    return problems


__all__ = ["MANIFEST", "check_run", "file_digest", "staged_run", "write_manifest"]
