"""Pure tensor math: keep-masks (unstructured, bank-balanced, global) and the one bank checker.

No model and no state here: every function takes tensors and numbers and returns tensors. Rows,
banks and budgets are those of ``pruning_tools.geometry``.

Selection keeps the largest ``|w|`` among the weights still alive, or, when a ``scores`` tensor of
the weight's shape is given (a pruning criterion: movement, Wanda's ``|w| * ||x||``, ...), the largest
score; same budgets either way. Ties go to the lower index, so the same input gives the same mask on
every machine.

Plain CPU tensors are served by compiled kernels (``pruning_tools._native``, ``mask_select.c``), for
``|w|`` and for non-negative scores (which the kernels' magnitude order ranks as they are); the PyTorch
code below serves everything else and defines the same masks (tests compare both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import geometry as G
from ._native import mask_kernels as native
from .config import LAYOUTS, check_bank_size, check_choice, check_sparsity

DEAD = -1.0  # score of an already-pruned weight: below every |w| of a live one


# ---------------------------------------------------------------- selection


def magnitude_scores(w: Tensor, mask: Tensor | None) -> Tensor:
    """``|w|`` where alive, ``DEAD`` where ``mask`` is False. Same shape and dtype as ``w``."""
    scores = w.detach().abs()
    if mask is not None:
        scores.masked_fill_(~mask, DEAD)
    return scores


def selection_scores(scores: Tensor, mask: Tensor | None) -> Tensor:
    """A criterion's ``scores`` (any sign) ready for ranking: float32 (float64 kept), ``-inf`` where
    ``mask`` is False, and a live ``-inf`` raised to the lowest finite value so that every live weight
    ranks above every dead one. Same shape as ``scores``; the input is not modified."""
    ranked = scores.detach().to(torch.float64 if scores.dtype == torch.float64 else torch.float32, copy=True)
    ranked.clamp_(min=torch.finfo(ranked.dtype).min)  # -inf -> lowest finite; NaN stays NaN
    if mask is not None:
        ranked.masked_fill_(~mask.to(ranked.device), -math.inf)
    return ranked


def _check_scores(w: Tensor, scores: Tensor) -> None:
    if not isinstance(scores, Tensor) or tuple(scores.shape) != tuple(w.shape):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"scores of shape {shape} is not allowed: expected a tensor of the weight's shape {tuple(w.shape)}"
        )


def _kernel_scores(scores: Tensor) -> Tensor | None:
    """``scores`` as the compiled kernels can rank them (they rank ``|x|``): a float32/float64 CPU
    tensor whose entries are all >= 0 (so ``|x| == x``), else ``None``. NaN anywhere gives ``None``."""
    if scores.device.type != "cpu" or not scores.is_floating_point():
        return None
    ranked = scores.detach()
    if ranked.dtype not in (torch.float32, torch.float64):
        ranked = ranked.float()
    ranked = ranked.contiguous()
    return ranked if bool((ranked >= 0).all()) else None


def keep_largest(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` largest scores along the last dim, ties to the lower index.

    ``scores``: ``[..., n]``; returns a bool tensor of the same shape with exactly
    ``min(k, n)`` True per row.
    """
    n = scores.shape[-1]
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = scores.topk(k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # [..., 1]
    keep = scores > threshold
    ties = scores == threshold
    missing = k - keep.sum(dim=-1, keepdim=True)  # [..., 1], >= 1
    if not torch.equal(ties.sum(dim=-1, keepdim=True), missing):
        ties &= ties.cumsum(dim=-1) <= missing  # first `missing` ties by index
    return keep | ties


def unstructured_mask(w: Tensor, mask: Tensor | None, sparsity: float, scores: Tensor | None = None) -> Tensor:
    """Keep the ``round(numel * (1 - sparsity))`` largest ``|w|`` still alive (or largest ``scores``,
    a tensor of ``w``'s shape). Bool, shape of ``w``."""
    k = G.keep_count(w.numel(), sparsity)
    if scores is None:
        fast = native.largest_masks([w.detach()], [mask], k)
        if fast is not None:
            return fast[0]
        ranked = magnitude_scores(w, mask)
    else:
        _check_scores(w, scores)
        kernel_scores = _kernel_scores(scores)
        fast = None if kernel_scores is None else native.largest_masks([kernel_scores], [mask], k)
        if fast is not None:
            return fast[0]
        ranked = selection_scores(scores, mask)
    return keep_largest(ranked.reshape(-1), k).reshape(w.shape)


def bank_mask(
    w: Tensor,
    mask: Tensor | None,
    sparsity: float,
    bank_size: int = 64,
    layout: str = "channels_last",
    out_dim: int = 0,
    scores: Tensor | None = None,
) -> Tensor:
    """Bank-balanced keep-mask of ``w`` (bool, shape of ``w``); see the module docstring.

    ``scores`` (optional, ``w``'s shape): rank by these instead of ``|w|``; same budgets."""
    if w.numel() == 0:
        return torch.ones_like(w, dtype=torch.bool)
    budget = G.bank_budget(G.row_length(w.shape, layout, out_dim), bank_size, sparsity)
    if scores is not None:
        _check_scores(w, scores)
    ranked_by = w.detach() if scores is None else _kernel_scores(scores)
    if ranked_by is not None and native.library() is not None:  # compiled single pass over the banks
        fast = native.bank_mask(ranked_by, mask, budget.keep, budget.tail_keep, bank_size, layout, out_dim)
        if fast is not None:
            return fast
    ranked = magnitude_scores(w, mask) if scores is None else selection_scores(scores, mask)
    rows = G.to_rows(ranked, layout, out_dim)  # [rows, row_len]
    banks, tail = G.split_banks(rows, bank_size)  # [rows, banks, B], [rows, tail_len]
    parts = []
    if budget.full_banks:
        parts.append(keep_largest(banks, budget.keep).reshape(rows.shape[0], -1))
    if budget.tail_len:
        parts.append(keep_largest(tail, budget.tail_keep))
    keep_rows = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return G.from_rows(keep_rows, w.shape, layout, out_dim)


def global_masks(
    weights: Sequence[Tensor],
    masks: Sequence[Tensor | None],
    sparsity: float,
    scores: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """One magnitude threshold across all ``weights`` (or one threshold on ``scores``, one tensor of
    each weight's shape), keeping ``round(N * (1 - sparsity))`` of their ``N`` weights in total; ties
    go to the earlier tensor, then the lower index."""
    k = G.keep_count(sum(w.numel() for w in weights), sparsity)
    if scores is None:
        fast = native.largest_masks([w.detach() for w in weights], list(masks), k)
        if fast is not None:
            return fast
        ranked = [magnitude_scores(w, m).reshape(-1).float() for w, m in zip(weights, masks)]
    else:
        if len(scores) != len(weights):
            raise ValueError(f"scores holds {len(scores)} tensors: expected one per weight ({len(weights)})")
        for w, sc in zip(weights, scores):
            _check_scores(w, sc)
        kernel_scores = [_kernel_scores(sc.float()) for sc in scores]
        if all(sc is not None for sc in kernel_scores):
            fast = native.largest_masks(kernel_scores, list(masks), k)  # type: ignore[arg-type]
            if fast is not None:
                return fast
        ranked = [selection_scores(sc.float(), m).reshape(-1) for sc, m in zip(scores, masks)]
    keep = keep_largest(torch.cat(ranked), k)
    return [part.reshape(w.shape) for part, w in zip(keep.split([w.numel() for w in weights]), weights)]


def compute_mask(
    w: Tensor,
    mask: Tensor | None,
    sparsity: float,
    balance: str,
    bank_size: int = 64,
    layout: str = "channels_last",
    out_dim: int = 0,
    scores: Tensor | None = None,
) -> Tensor:
    """Keep-mask of one tensor for ``balance`` in ``("fix", "none")``, by ``|w|`` or by ``scores``."""
    if balance == "fix" and w.dim() >= 2:
        return bank_mask(w, mask, sparsity, bank_size, layout, out_dim, scores)
    return unstructured_mask(w, mask, sparsity, scores)


def apply_mask_(w: Tensor, mask: Tensor) -> None:
    """Zero ``w`` where ``mask`` (bool, shape of ``w``) is False, in place.

    CPU tensors take one compiled pass (read ``w`` and the 1-byte mask, write ``w``), about the
    cost of a float-mask ``mul_``; elsewhere ``masked_fill_``. Either way a pruned weight becomes
    exactly ``+0.0`` (a multiplication would leave ``-0.0``, and ``NaN`` for a non-finite weight).
    """
    if native.zero_pruned_(w, mask):
        torch.autograd.graph.increment_version(w)  # written through its pointer: tell autograd
        return
    w.masked_fill_(mask.to(w.device).logical_not(), 0)


# ---------------------------------------------------------------- checker


def bank_nonzeros(
    w: Tensor, bank_size: int = 64, layout: str = "channels_last", out_dim: int = 0
) -> tuple[Tensor, Tensor | None]:
    """Non-zeros per bank: ``([rows, full_banks], [rows] or None for the tail banks)``."""
    banks, tail = G.split_banks(G.to_rows(w.detach() != 0, layout, out_dim), bank_size)
    return banks.sum(dim=-1), (tail.sum(dim=-1) if tail.shape[1] else None)


@dataclass
class BankCheck:
    """Result of ``check_banks`` for one tensor."""

    balanced: bool  # every bank holds at most its budget
    budget: int  # budget of a full bank
    tail_budget: int  # budget of a tail bank (0: no tail bank)
    banks: int  # number of banks, tail banks included
    over_budget: int  # banks holding more than their budget
    worst_bank: tuple[int, int]  # (row, bank) of the bank most over budget (or fullest)
    worst_nonzeros: int  # non-zeros in that bank
    bank_ok: Tensor  # [rows, banks] bool: this bank holds at most its budget


def check_banks(
    w: Tensor, bank_size: int = 64, layout: str = "channels_last", out_dim: int = 0, sparsity: float | None = None
) -> BankCheck:
    """Check that every bank of ``w`` holds at most its budget of non-zeros.

    The budget comes from ``sparsity`` when given; otherwise from the tensor's measured sparsity
    (what a bank-balanced pruner at that sparsity would keep). Works on any tensor of any
    checkpoint; tensors with fewer than 2 dims are one row. This is the one checker: ``Prune.check``,
    the packed export and ``pruning-tools inspect`` all call it.
    """
    check_bank_size("bank_size", bank_size)
    check_choice("layout", layout, LAYOUTS)
    if out_dim not in (0, 1) or isinstance(out_dim, bool):
        raise ValueError(f"out_dim={out_dim!r} is not allowed: expected 0 or 1 (the dim of the output channels)")
    if sparsity is not None:
        sparsity = check_sparsity("sparsity", sparsity)
    full, tail = bank_nonzeros(w, bank_size, layout, out_dim)
    if sparsity is None:
        sparsity = 1.0 - float((w != 0).sum()) / max(1, w.numel())
    budget = G.bank_budget(G.row_length(w.shape, layout, out_dim), bank_size, sparsity)
    counts = [full]
    limits = [torch.full_like(full, budget.keep)]
    if tail is not None:
        counts.append(tail[:, None])
        limits.append(torch.full_like(tail[:, None], budget.tail_keep))
    counts_t = torch.cat(counts, dim=1)  # [rows, banks]
    excess = counts_t - torch.cat(limits, dim=1)
    worst = int(excess.argmax()) if excess.numel() else 0
    n_banks = counts_t.shape[1] if counts_t.dim() == 2 else 0
    row, bank = divmod(worst, max(1, n_banks))
    ok = excess <= 0
    return BankCheck(
        balanced=bool(ok.all()),
        budget=budget.keep,
        tail_budget=budget.tail_keep,
        banks=int(counts_t.numel()),
        over_budget=int((~ok).sum()),
        worst_bank=(row, bank),
        worst_nonzeros=int(counts_t.reshape(-1)[worst]) if counts_t.numel() else 0,
        bank_ok=ok,
    )


# ---------------------------------------------------------------- compact storage


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def pack_bits(mask: Tensor) -> Tensor:
    """Bool tensor (any shape, ``n`` elements) -> uint8 ``[ceil(n / 8)]``, most significant bit first."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)  # [ceil(n / 8)]


def unpack_bits(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of ``pack_bits``: uint8 ``[ceil(n / 8)]`` -> bool tensor of ``shape``."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) & weights) != 0  # [ceil(n / 8), 8]
    return bits.reshape(-1)[: math.prod(shape)].reshape(tuple(shape))


_MOVED_TO_GEOMETRY = (
    "to_rows",
    "from_rows",
    "row_length",
    "keep_count",
    "BankBudget",
    "bank_budget",
    "realised_sparsity",
)


def __getattr__(name: str):  # names that moved to pruning_tools.geometry keep working for one release
    if name in _MOVED_TO_GEOMETRY:
        from ._deprecated import warn_moved

        warn_moved(f"pruning_tools.masks.{name}", f"pruning_tools.geometry.{name}")
        return getattr(G, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
