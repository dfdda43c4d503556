"""Reading any checkpoint, and what the one bank checker says of each of its tensors.

Reads a PyTorch state_dict (``.pt`` / ``.pth`` / ``.bin``, ``torch.load(..., weights_only=True)``:
no pickle code runs; nested dicts are flattened with dotted names), a safetensors file (its checksums
verified when it carries ours: ``integrity``) or an MXNet ``.params`` file. Tensors with >= 2 dims
are checked with ``masks.check_banks``; the budget of each bank comes from ``sparsity`` or, by
default, from the tensor's measured sparsity. Errors are library
errors (``ValueError`` naming the file); the command line turns them into messages.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import geometry as G
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


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, by name (format chosen by the file suffix)."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"path={str(path)!r} has suffix {path.suffix!r}: expected one of " + ", ".join(sorted(SUFFIXES))
        )
    if kind == "torch":
        try:
            return _flatten(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # pickle errors come in many types
            raise ValueError(f"{path}: not a PyTorch weights-only checkpoint ({type(exc).__name__}: {exc})") from exc
    if kind == "safetensors":
        from .integrity import load_file

        tensors, _ = load_file(path)  # checksums verified where the file has them (files we wrote)
        return {name: tensors[name] for name in sorted(tensors)}
    try:
        import mxnet as mx
    except ImportError as exc:
        raise ImportError(
            f"{path}: reading MXNet .params files needs mxnet (pip install 'pruning-tools[mxnet]'): {exc}"
        ) from exc
    loaded = mx.nd.load(str(path))
    if isinstance(loaded, list):
        loaded = {str(i): a for i, a in enumerate(loaded)}
    return {name: torch.from_numpy(array.asnumpy()) for name, array in loaded.items()}


def inspect_tensor(
    name: str, w: torch.Tensor, bank_size: int, layout: str, sparsity: float | None, out_dim: int = 0
) -> dict:
    """One row of the report: shape, non-zeros, sparsity and (for >= 2 dims) the bank check, its rows
    read with ``layout`` and ``out_dim`` (1: a transposed weight ``[in, out, ...]``)."""
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
) -> dict:
    """Report of every tensor of ``path`` (or those whose name matches one of the globs ``match``).

    Tensors whose name matches one of the globs ``transposed`` are weights stored ``[in, out]``
    (``out_dim=1``, e.g. GPT-2's ``Conv1D``: ``'*.c_attn.weight'``): their banks run along dim 0.
    """
    tensors = load_tensors(path)
    names = [n for n in tensors if not match or any(fnmatch.fnmatchcase(n, m) for m in match)]
    out_dims = {n: 1 for n in names if any(fnmatch.fnmatchcase(n, t) for t in transposed) and tensors[n].dim() >= 2}
    rows = [inspect_tensor(n, tensors[n], bank_size, layout, sparsity, out_dims.get(n, 0)) for n in names]
    numel = sum(r["numel"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    unbalanced = [r["name"] for r in rows if r["balanced"] is False]
    return {
        "path": str(path),
        "bank_size": bank_size,
        "layout": layout,
        "sparsity": sparsity,
        "transposed": list(transposed),
        "tensors": rows,
        "totals": {
            "tensors": len(rows),
            "numel": numel,
            "nonzeros": nonzeros,
            "sparsity": 1 - nonzeros / max(1, numel),
            "unbalanced": unbalanced,
        },
        "balanced": not unbalanced,
    }
