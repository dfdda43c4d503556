"""Slow, independent references for one-shot pruning (float64, Python loops, explicit inverses).

- ``ref_select``: keep the k largest, ties to the lower position (from the mask reference).
- ``ref_wanda_mask``: score ``|W_ij| * sqrt(sum_n x_nj^2)`` by loops, then the pattern's selection.
- ``ref_sparsegpt``: the optimal-brain-surgeon sweep with the *explicit* inverse Hessian of the
  columns not processed yet, downdated after every column (``Hinv -= Hinv[:, j] Hinv[j, :] / Hinv[j, j]``),
  no Cholesky factor and no lazy blocks; banks chosen at their first column, unstructured once per
  block of ``block`` columns over all rows with budgets ``round(K * end / D) - round(K * start / D)``;
  the saliency of column ``c`` is ``w^2 / [H_c^-1]_cc`` with ``H_c`` the Hessian of the columns from
  ``c`` on (the inverse when column ``c`` is reached: what the paper's Cholesky diagonal holds).
"""

from __future__ import annotations

import math

import torch

from ..test_masks_reference import ref_keep_count, ref_select


def ref_banks(row_len: int, width: int, bank_size: int, sparsity: float) -> list[tuple[int, int, int]]:
    """(first column, length, kept) of every bank of a matrix row of ``width`` made of rows of ``row_len``."""
    k_full = max(1, ref_keep_count(bank_size, sparsity))
    out = []
    for row in range(0, width, row_len):
        for start in range(0, row_len, bank_size):
            length = min(bank_size, row_len - start)
            kept = k_full if length == bank_size else min(k_full, max(1, ref_keep_count(length, sparsity)))
            out.append((row + start, length, kept))
    return out


def ref_norms(x: torch.Tensor) -> list[float]:
    """``sqrt(sum_n x[n, j]^2)`` per column, by loops in float64."""
    rows = x.double().tolist()
    return [math.sqrt(sum(r[j] ** 2 for r in rows)) for j in range(x.shape[1])]


def ref_wanda_mask(w: torch.Tensor, x: torch.Tensor, sparsity: float, banks) -> torch.Tensor:
    """Wanda keep-mask of ``w [O, D]`` for inputs ``x [n, D]``: ``banks`` from ``ref_banks``, or None
    for unstructured over the whole matrix."""
    norms = ref_norms(x)
    scores = [[abs(v) * norms[j] for j, v in enumerate(row)] for row in w.double().tolist()]
    if banks is None:
        flat = [s for row in scores for s in row]
        keep = ref_select(flat, ref_keep_count(len(flat), sparsity))
        return torch.tensor(keep).reshape(w.shape)
    keep = torch.zeros(w.shape, dtype=torch.bool)
    for r, row in enumerate(scores):
        for start, length, kept in banks:
            for j, k in enumerate(ref_select(row[start : start + length], kept)):
                keep[r, start + j] = k
    return keep


def ref_sparsegpt(w: torch.Tensor, x: torch.Tensor, banks, keep_total: int, damp: float = 0.01, block: int = 128):
    """Pruned ``w [O, D]`` (float64) and its keep-mask, for inputs ``x [n, D]``."""
    w = w.double().clone()
    rows, width = w.shape
    h = x.double().T @ x.double()
    for j in range(width):
        if h[j, j] == 0:
            h[j, j] = 1.0
    h += damp * torch.diagonal(h).mean() * torch.eye(width, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    turn = []  # [H_c^-1]_cc: the inverse Hessian of the columns c.. at the time column c is reached
    downdated = hinv.clone()
    for c in range(width):
        turn.append(downdated[c, c].item())
        downdated = downdated - torch.outer(downdated[:, c], downdated[c, :]) / downdated[c, c]
    keep = torch.zeros(rows, width, dtype=torch.bool)
    starts = {} if banks is None else {s: (n, k) for s, n, k in banks}
    block_starts = set(range(0, width, block)) if banks is None else set()
    for j in range(width):
        if j in block_starts:
            end = min(width, j + block)
            k = (2 * keep_total * end + width) // (2 * width) - (2 * keep_total * j + width) // (2 * width)
            saliency = [w[r, c].item() ** 2 / turn[c] for r in range(rows) for c in range(j, end)]
            chosen = ref_select(saliency, k)
            for i, kept in enumerate(chosen):
                keep[i // (end - j), j + i % (end - j)] = kept
        if j in starts:
            n, k = starts[j]
            for r in range(rows):
                saliency = [w[r, c].item() ** 2 / turn[c] for c in range(j, j + n)]
                for i, kept in enumerate(ref_select(saliency, k)):
                    keep[r, j + i] = kept
        for r in range(rows):
            if not keep[r, j]:
                err = w[r, j].item() / hinv[j, j].item()
                w[r, j:] -= err * hinv[j, j:]
                w[r, j] = 0.0
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return w, keep


def ref_error(w: torch.Tensor, w_new: torch.Tensor, x: torch.Tensor) -> float:
    """``||(W' - W) X||^2 / ||W X||^2`` from the inputs themselves."""
    x = x.double()
    return float(((x @ (w_new.double() - w.double()).T) ** 2).sum() / ((x @ w.double().T) ** 2).sum())
