"""The LM demo's corpus: the reStructuredText sources of the Python 3.11.2 documentation, as bytes.

The directory holds one archive (``python-3.11.2-docs-rst.tar.xz``, the ``_sources`` tree of Debian's
``python3.11-doc`` package) and ``SHA256SUMS``; ``load_corpus(data_dir)`` checks every listed file
against its sum, then splits the documents (not the bytes) into train / validation / test by a hash
of their path, so held-out text is held-out documents. Tokens are bytes (0..255): no tokenizer.
"""

from __future__ import annotations

import hashlib
import lzma
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...integrity import check_allocation, regular_file

ARCHIVE = "python-3.11.2-docs-rst.tar.xz"
SUMS = "SHA256SUMS"
SPLIT_MODULUS = 20  # a document goes to test when its path hash % 20 == 0, to validation when == 1


@dataclass(frozen=True)
class Corpus:
    """Byte tensors (uint8 ``[n]``) of the three splits, and where they came from."""

    train: Tensor
    valid: Tensor
    test: Tensor
    source: str
    documents: dict[str, int]  # split -> number of documents

    def head(self, limit: int | None) -> Corpus:
        """The first ``limit`` bytes of every split (a quick look; ``None``: everything)."""
        if limit is None:
            return self
        return Corpus(self.train[:limit], self.valid[:limit], self.test[:limit], self.source, self.documents)


def has_corpus(data_dir: str | Path) -> bool:
    """Whether ``data_dir`` holds the archive and its sums."""
    directory = Path(data_dir)
    return (directory / ARCHIVE).is_file() and (directory / SUMS).is_file()


def verify(data_dir: str | Path) -> None:
    """Check every file listed in ``SHA256SUMS``; ``ValueError`` naming the first that differs."""
    directory = Path(data_dir)
    if not has_corpus(directory):
        raise FileNotFoundError(f"{directory} does not hold the LM corpus ({ARCHIVE} and {SUMS})")
    for line in regular_file(directory / SUMS).read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split(maxsplit=1)
        path = directory / name.strip().lstrip("*")
        digest = hashlib.sha256(regular_file(path).read_bytes()).hexdigest()
        if digest != expected:
            raise ValueError(f"{path}: SHA-256 {digest} differs from {expected} in {SUMS}: the file is damaged")


def split_of(path: str) -> str:
    """``"test"``, ``"valid"`` or ``"train"`` for a document path (a stable hash of the path)."""
    bucket = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") % SPLIT_MODULUS
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def load_corpus(data_dir: str | Path) -> Corpus:
    """Verify and read the corpus of ``data_dir``: documents in path order, concatenated per split."""
    directory = Path(data_dir)
    verify(directory)
    parts: dict[str, list[bytes]] = {"train": [], "valid": [], "test": []}
    archive_path = regular_file(directory / ARCHIVE)
    declared = 0
    with lzma.open(archive_path) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
        documents = []
        for member in archive:
            if member.isfile():
                declared += member.size
                check_allocation(archive_path, declared, "its documents, unpacked,")
                handle = archive.extractfile(member)
                if handle is not None:
                    documents.append((member.name, handle.read()))
    for name, text in sorted(documents):
        parts[split_of(name)].append(text)

    def tensor(chunks: list[bytes]) -> Tensor:
        return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)

    return Corpus(
        tensor(parts["train"]),
        tensor(parts["valid"]),
        tensor(parts["test"]),
        str(directory),
        {split: len(chunks) for split, chunks in parts.items()},
    )


def random_windows(tokens: Tensor, batch: int, length: int, generator: torch.Generator) -> Tensor:
    """``batch`` windows of ``length`` consecutive bytes at random offsets: int64 ``[batch, length]``."""
    if tokens.numel() <= length:
        raise ValueError(f"a split of {tokens.numel()} bytes is too short for windows of {length}")
    starts = torch.randint(0, tokens.numel() - length, (batch,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()]).long()


def fixed_windows(tokens: Tensor, length: int, limit: int | None = None) -> Tensor:
    """Non-overlapping windows of ``length`` bytes from the first ``limit`` bytes: int64 ``[n, length]``."""
    tokens = tokens[:limit] if limit is not None else tokens
    n = tokens.numel() // length
    if n == 0:
        raise ValueError(f"{tokens.numel()} bytes hold no window of {length}")
    return tokens[: n * length].reshape(n, length).long()


__all__ = ["ARCHIVE", "Corpus", "fixed_windows", "has_corpus", "load_corpus", "random_windows", "split_of", "verify"]
