"""Reading any checkpoint, and what the one bank checker says of each of its tensors.

Reads a PyTorch state_dict (``.pt`` / ``.pth`` / ``.bin``, ``torch.load(..., weights_only=True)``:
no pickle code runs; nested dicts are flattened with dotted names), a safetensors file (its checksums
verified when it carries ours: ``integrity``; a packed one, ``export.save_packed``'s, as the dense
tensors it encodes) or an MXNet ``.params`` file; a file whose content is of another format than its
suffix says is refused, naming both. Tensors with >= 2 dims are checked with ``masks.check_banks``;
the budget of each bank comes from ``sparsity`` or, by default, from the tensor's measured sparsity.
Errors are library errors (``ValueError`` naming the file); the command line turns them into messages.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from . import geometry as G
from .integrity import AllocationLimitError, load_torch, regular_file
from .masks import check_banks

SUFFIXES = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".safetensors": "safetensors", ".params": "mxnet"}


def _flatten(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a (nested) dict / list, keyed by dotted path; other values are skipped."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


FORMAT_NAMES = {"torch": "a PyTorch checkpoint", "safetensors": "a safetensors file", "mxnet": "an MXNet .params file"}
_SUFFIX_OF = {"torch": ".pt", "safetensors": ".safetensors", "mxnet": ".params"}
_MXNET_MAGIC = (0x112).to_bytes(8, "little")  # first 8 bytes of an NDArray list (mx.nd.save)


def sniff(path: str | Path) -> str | None:
    """The format a file's first bytes show (``"torch"``, ``"safetensors"``, ``"mxnet"``), or None."""
    with open(regular_file(path), "rb") as f:
        head = f.read(9)
        size = f.seek(0, 2)
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"  # an 8-byte little-endian header length, then a JSON header
    if head[:8] == _MXNET_MAGIC:
        return "mxnet"
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"  # torch.save's zip archive, or its legacy pickle (protocol 2 to 5)
    return None


def _weights_only_reason(error: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words (its message is a page long)."""
    text = " ".join(str(error).split())
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0].strip()
    text = text.split(". ")[0]
    return f"{type(error).__name__}: {text[:200]}"


def read_checkpoint(
    path: str | Path, *, max_bytes: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, G.BankGeometry]]:
    """All tensors of a checkpoint file, by name, and the bank geometry of those a packed file
    (``export.save_packed``) stores packed: ``(tensors, {name: BankGeometry})``.

    The format is chosen by the suffix; a file whose first bytes show another format is an error
    saying so. A packed file is read as what it encodes: the dense tensors ``load_packed`` rebuilds.
    Only regular files are read (``integrity.regular_file``); what a file declares is bounded by
    ``integrity.allocation_limit`` (``max_bytes``), checked before anything is allocated.
    """
    path = regular_file(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"path={str(path)!r} has suffix {path.suffix!r}: expected one of " + ", ".join(sorted(SUFFIXES))
        )
    found = sniff(path)
    if found is not None and found != kind:
        raise ValueError(
            f"{path} holds {FORMAT_NAMES[found]}, but its suffix {path.suffix!r} announces {FORMAT_NAMES[kind]}: "
            f"rename it to {path.with_suffix(_SUFFIX_OF[found]).name}"
        )
    if kind == "torch":
        try:
            return _flatten(load_torch(path, max_bytes)), {}
        except AllocationLimitError:
            raise
        except Exception as exc:  # pickle errors come in many types
            raise ValueError(f"{path}: not a PyTorch weights-only checkpoint ({_weights_only_reason(exc)})") from exc
    if kind == "safetensors":
        return _read_safetensors(path, max_bytes)
    try:
        import mxnet as mx
    except ImportError as exc:
        raise ImportError(
            f"{path}: reading MXNet .params files needs mxnet (pip install 'bank-pruning-tools[mxnet]'): {exc}"
        ) from exc
    try:
        loaded = mx.nd.load(str(path))
    except mx.base.MXNetError as exc:
        reason = next((line for line in str(exc).splitlines() if "Check failed" in line), "unreadable")
        raise ValueError(f"{path}: not an MXNet .params file ({reason.strip()})") from exc
    if isinstance(loaded, list):
        loaded = {str(i): a for i, a in enumerate(loaded)}
    return {name: torch.from_numpy(array.asnumpy()) for name, array in loaded.items()}, {}


def _read_safetensors(path: Path, max_bytes: int | None) -> tuple[dict[str, torch.Tensor], dict[str, G.BankGeometry]]:
    from . import export
    from .integrity import load_file

    tensors, metadata = load_file(path)  # checksums verified where the file has them (files we wrote)
    if export.METADATA_KEY not in metadata:
        return {name: tensors[name] for name in sorted(tensors)}, {}
    contents = export.parse_packed(tensors, metadata, path, max_bytes=max_bytes)
    geometry = {name: t.geometry for name, t in contents.items() if isinstance(t, export.PackedTensor)}
    tensors = export.unpack_all(contents, path)
    return {name: tensors[name] for name in sorted(tensors)}, geometry


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, by name (a packed file: the dense tensors it encodes); see
    ``read_checkpoint``."""
    return read_checkpoint(path)[0]


def inspect_tensor(name: str, w: torch.Tensor, geometry: G.BankGeometry, sparsity: float | None) -> dict:
    """One row of the report: shape, non-zeros, sparsity and (for >= 2 dims) the bank check, its rows
    read by ``geometry`` (``out_dim`` 1: a transposed weight ``[in, out, ...]``)."""
    bank_size, layout, out_dim = geometry.bank_size, geometry.layout, geometry.out_dim
    nonzeros = int((w != 0).sum())
    row = {
        "name": name,
        "shape": list(w.shape),
        "dtype": str(w.dtype).replace("torch.", ""),
        "numel": w.numel(),
        "nonzeros": nonzeros,
        "sparsity": 1 - nonzeros / max(1, w.numel()),
        "out_dim": out_dim,
        "balanced": None,
        "budget": None,
        "over_budget": None,
        "worst_bank": None,
        "worst_nonzeros": None,
        "worst_budget": None,
    }
    if w.dim() >= 2 and w.numel():
        check = check_banks(w, bank_size, layout, out_dim, sparsity=sparsity)
        full_banks = G.row_length(w.shape, layout, out_dim) // bank_size
        worst_is_tail = check.worst_bank[1] >= full_banks
        row.update(
            balanced=check.balanced,
            budget=check.budget,
            over_budget=check.over_budget,
            worst_bank=list(check.worst_bank),
            worst_nonzeros=check.worst_nonzeros,
            worst_budget=check.tail_budget if worst_is_tail else check.budget,
        )
    return row


def inspect_file(
    path: str | Path,
    bank_size: int = 64,
    layout: str = "channels_last",
    sparsity: float | None = None,
    match: tuple[str, ...] = (),
    transposed: tuple[str, ...] = (),
    *,
    max_bytes: int | None = None,
) -> dict:
    """Report of every tensor of ``path`` (or those whose name matches one of the globs ``match``).

    Tensors whose name matches one of the globs ``transposed`` are weights stored ``[in, out]``
    (``out_dim=1``, e.g. GPT-2's ``Conv1D``: ``'*.c_attn.weight'``): their banks run along dim 0.
    Tensors stored packed are checked with the bank size, layout and output dim the file records
    (their row has ``"packed"``); the others with ``bank_size`` and ``layout``. The totals count
    every listed tensor (1-D ones too); ``"checked"`` is the number of them with a bank check (>= 2
    dims), and ``"balanced"`` is None when nothing was checked.
    """
    default = G.BankGeometry(bank_size, layout)  # the arguments, checked before the file is read
    tensors, geometry = read_checkpoint(path, max_bytes=max_bytes)
    names = [n for n in tensors if not match or any(fnmatch.fnmatchcase(n, m) for m in match)]
    out_dims = {n: 1 for n in names if any(fnmatch.fnmatchcase(n, t) for t in transposed) and tensors[n].dim() >= 2}
    rows = []
    for n in names:
        g = geometry.get(n, replace(default, out_dim=out_dims.get(n, 0)))
        rows.append(inspect_tensor(n, tensors[n], g, sparsity))
        if n in geometry:
            rows[-1]["packed"] = asdict(g)
    numel = sum(r["numel"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    unbalanced = [r["name"] for r in rows if r["balanced"] is False]
    checked = sum(r["balanced"] is not None for r in rows)
    return {
        "path": str(path),
        "bank_size": bank_size,
        "layout": layout,
        "sparsity": sparsity,
        "match": list(match),
        "transposed": list(transposed),
        "tensors_in_file": len(tensors),
        "tensors": rows,
        "totals": {
            "tensors": len(rows),
            "checked": checked,
            "numel": numel,
            "nonzeros": nonzeros,
            "sparsity": 1 - nonzeros / numel if numel else None,
            "unbalanced": unbalanced,
        },
        "balanced": not unbalanced if checked else None,
    }
