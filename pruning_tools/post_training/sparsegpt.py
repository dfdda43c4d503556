"""SparseGPT (Frantar & Alistarh 2023): prune a layer's weight matrix and update the weights it keeps
so that the layer's outputs on the calibration inputs change as little as possible.

For ``W [R, D]`` (rows: outputs; columns: inputs) and the inputs' Hessian ``H = X^T X`` ``[D, D]`` the
columns are processed left to right. With ``U`` the upper Cholesky factor of ``H^-1``
(``H^-1 = U^T U``), row ``j`` of ``U`` is the inverse Hessian of the columns not yet processed, so
after column ``j`` has been pruned (``q = w * keep``) the error ``(w - q) / U[j, j]`` is spread over
the later columns by ``W[:, j:] -= err * U[j, j:]``: the optimal brain surgeon update, done in lazy
blocks of about ``block_size`` columns (one matrix product per block for the columns beyond it).

Which weights go is decided inside the sweep, on the weights as they are then, by the saliency
``w^2 / U[j, j]^2``: at the first column of each bank for the bank (exactly its budget per row,
ties to the lower index, as everywhere), and for unstructured sparsity once per block over all its
rows (the paper's adaptive mask selection) with block budgets that sum exactly to the tensor's
``round(numel * (1 - s))``. Pruned positions are exactly ``+0.0``.

Dampening: ``H + lambda * I`` with ``lambda = damp * mean(diag(H))`` (``damp = 0.01``, the paper's
1 %), after setting the diagonal of inputs that were always zero to 1 (their weights get no update
and are the first to go). If the Cholesky factorisation still fails, ``lambda`` is multiplied by 10,
at most ``DAMP_RETRIES`` times; then a ``RuntimeError`` says so. The factorisation and inversion run
in float64, the sweep in float32 (float64 for float64 weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..masks import keep_largest

DAMP_RETRIES = 6
Segment = tuple[int, int, int]  # (first column, length, weights kept per row)


@dataclass(frozen=True)
class Solved:
    """A pruned matrix ``[R, D]`` (float32, or float64), its keep-mask and the dampening used, relative to
    ``mean(diag(H))``."""

    weight: Tensor
    keep: Tensor
    damping: float


def share(total: int, position: int, length: int) -> int:
    """``round(total * position / length)``, half up, in integers: budgets of consecutive parts
    ``share(total, end) - share(total, start)`` sum exactly to ``total``."""
    return (2 * total * position + length) // (2 * length)


def inverse_hessian_factor(h: Tensor, damp: float) -> tuple[Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + lambda I)^-1`` (float64 ``[D, D]``) and ``lambda / mean(diag H)``."""
    h = h.double().clone()
    diagonal = torch.diagonal(h)
    diagonal[diagonal == 0] = 1.0  # inputs that were always zero: any weight there does nothing
    mean = float(diagonal.mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lam = damp * mean
    for _ in range(DAMP_RETRIES + 1):
        lower, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper, lam / mean
        lam *= 10.0
    raise RuntimeError(
        f"the calibration Hessian cannot be factorised even with dampening {lam / 10 / mean:g} x mean(diag(H)) "
        f"(damp={damp}, raised {DAMP_RETRIES} times by 10): the inputs are degenerate"
    )


def _blocks(width: int, segments: Sequence[Segment] | None, block_size: int) -> list[tuple[int, int]]:
    """Column blocks ``[start, end)``: whole banks, about ``block_size`` columns each."""
    if segments is None:
        return [(start, min(width, start + block_size)) for start in range(0, width, block_size)]
    blocks, start = [], 0
    for first, length, _ in segments:
        end = first + length
        if end - start >= block_size or end == width:
            blocks.append((start, end))
            start = end
    return blocks


def prune_matrix(
    w: Tensor,
    h: Tensor,
    segments: Sequence[Segment] | None,
    keep_total: int,
    damp: float = 0.01,
    block_size: int = 128,
) -> Solved:
    """SparseGPT on ``w [R, D]`` with the inputs' Hessian ``h [D, D]`` (any positive scale).

    ``segments``: the banks of a row as ``(first column, length, kept)`` covering ``0..D`` in order
    (the same for every row); ``None`` for unstructured, keeping exactly ``keep_total`` of the
    ``R * D`` weights. Returns the pruned and updated matrix (float32, float64 for float64 weights;
    pruned positions ``+0.0``).
    """
    rows, width = w.shape
    dtype = torch.promote_types(w.dtype, torch.float32)
    upper, damping = inverse_hessian_factor(h, damp)
    u = upper.to(dtype)
    weight = w.detach().to(dtype, copy=True)  # [R, D]
    keep = torch.zeros(rows, width, dtype=torch.bool, device=w.device)
    starts = {first: (length, kept) for first, length, kept in segments or ()}
    for start, end in _blocks(width, segments, block_size):
        block = weight[:, start:end].clone()  # [R, B]
        block_keep = keep[:, start:end]
        u_block = u[start:end, start:end]  # [B, B]
        pivots = torch.diagonal(u_block)  # [B]
        errors = torch.zeros_like(block)
        if segments is None:  # adaptive selection over the whole block
            k = share(keep_total, end, width) - share(keep_total, start, width)
            saliency = block.square() / pivots.square()
            block_keep.copy_(keep_largest(saliency.reshape(-1), k).reshape(block.shape))
        for j in range(end - start):
            bank = starts.get(start + j)
            if bank is not None:
                length, kept = bank
                saliency = block[:, j : j + length].square() / pivots[j : j + length].square()
                block_keep[:, j : j + length] = keep_largest(saliency, kept)
            column = block[:, j].clone()  # before this column's own update
            pruned = column.masked_fill(block_keep[:, j], 0.0)  # w - q
            err = pruned / pivots[j]
            block[:, j:] -= err[:, None] * u_block[j, j:][None, :]
            block[:, j] = column.masked_fill(~block_keep[:, j], 0.0)  # q, exactly
            errors[:, j] = err
        weight[:, start:end] = block
        weight[:, end:] -= errors @ u[start:end, end:]
    weight.masked_fill_(~keep, 0.0)
    return Solved(weight, keep, damping)


__all__ = ["DAMP_RETRIES", "Solved", "inverse_hessian_factor", "prune_matrix", "share"]
