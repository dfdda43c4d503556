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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from . import geometry as G
from . import radix as R
from ._native import mask_kernels as native
from .config import LAYOUTS, check_bank_size, check_choice, check_sparsity

DEAD = -1.0  # score of an already-pruned weight, and of a NaN: below every |w| of a live one
BLOCK_ELEMENTS = 1 << 20  # the PyTorch path works on blocks of at least this many weights...
BLOCKS = 16  # ...and at most this many blocks per tensor, so its temporaries stay a fraction of it
SMALL_TENSOR = 1 << 17  # smaller unstructured masks: one 8-bit radix kernel call (CPU), one top-k (PyTorch path)

NanReport = Callable[[int], None]  # called with the number of NaN weights found alive in a tensor


def _block_elements(numel: int) -> int:
    return max(BLOCK_ELEMENTS, -(-numel // BLOCKS))


# ---------------------------------------------------------------- selection
#
# Non-finite weights, one rule on every path (PyTorch and the C kernels): a NaN scores like an
# already-pruned weight (``DEAD``), so it is pruned first and never kept ahead of a number; +-inf is
# the largest magnitude. ``on_nan`` hears how many NaN weights were alive (the pruner warns once).


def magnitude_scores(w: Tensor, mask: Tensor | None, on_nan: NanReport | None = None) -> Tensor:
    """``|w|`` where alive, ``DEAD`` where ``mask`` is False or ``w`` is NaN. Same shape and dtype as ``w``."""
    scores = w.detach().abs()
    if mask is not None:
        scores.masked_fill_(~mask, DEAD)
    if scores.numel() and bool(torch.isnan(scores.amax())):  # amax propagates NaN: one read, no copy
        nan = torch.isnan(scores)
        if on_nan is not None:
            on_nan(int(torch.count_nonzero(nan)))
        scores.masked_fill_(nan, DEAD)
    return scores


def selection_scores(scores: Tensor, mask: Tensor | None, on_nan: NanReport | None = None) -> Tensor:
    """A criterion's ``scores`` (any sign) ready for ranking: float32 (float64 kept), ``-inf`` where
    ``mask`` is False or the score is NaN (the NaN rule of ``magnitude_scores``), and a live ``-inf``
    raised to the lowest finite value so that every live number ranks above every dead weight. Same
    shape as ``scores``; the input is not modified."""
    ranked = scores.detach().to(torch.float64 if scores.dtype == torch.float64 else torch.float32, copy=True)
    ranked.clamp_(min=torch.finfo(ranked.dtype).min)  # -inf -> lowest finite; NaN stays NaN
    if mask is not None:
        ranked.masked_fill_(~mask.to(ranked.device), -math.inf)
    if ranked.numel() and bool(torch.isnan(ranked.amax())):
        nan = torch.isnan(ranked)
        if on_nan is not None:
            on_nan(int(torch.count_nonzero(nan)))
        ranked.masked_fill_(nan, -math.inf)
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

    ``scores``: ``[..., n]``, no NaN (``magnitude_scores`` maps them to ``DEAD``); returns a bool tensor
    of the same shape with exactly ``min(k, n)`` True per row.
    """
    n = scores.shape[-1]
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    flat = scores.reshape(-1, n)  # [rows, n]
    if k <= n - k:  # the k-th largest: the smallest of the k largest...
        threshold = flat.topk(k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # [rows, 1]
    else:  # ...or the largest of the n - k + 1 smallest (fewer values and int64 indices to hold)
        threshold = flat.topk(n - k + 1, dim=-1, largest=False, sorted=False).values.amax(dim=-1, keepdim=True)
    keep = flat > threshold
    ties = flat == threshold
    missing = k - keep.sum(dim=-1, keepdim=True)  # [rows, 1], >= 1
    crowded = (ties.sum(dim=-1, keepdim=True) != missing).reshape(-1)  # rows with more ties than room
    if bool(crowded.any()):
        rows = crowded.nonzero().reshape(-1)  # tie-break only those rows, by index, in int32
        sub = ties[rows]
        sub &= sub.cumsum(dim=-1, dtype=torch.int32) <= missing[rows]
        ties[rows] = sub
    keep |= ties
    return keep.reshape(scores.shape)


def unstructured_mask(
    w: Tensor,
    mask: Tensor | None,
    sparsity: float,
    scores: Tensor | None = None,
    *,
    on_nan: NanReport | None = None,
) -> Tensor:
    """Keep the ``round(numel * (1 - sparsity))`` largest ``|w|`` still alive (or largest ``scores``,
    a tensor of ``w``'s shape). Bool, shape of ``w``.

    On the CPU the method follows the size: below ``SMALL_TENSOR`` weights one call of an 8-bit radix
    select (``keep_largest`` kernel), above it the multi-threaded 16-bit radix select whose histograms
    cost about a millisecond whatever the size; elsewhere (GPUs, other tensors) a top-k. Scores take
    the same kernels when none is negative, else one top-k over them.
    """
    k = G.keep_count(w.numel(), sparsity)
    if scores is not None:
        return _unstructured_by_scores(w, mask, k, scores, on_nan)
    if w.numel() < SMALL_TENSOR:
        small = native.keep_largest(w.detach(), mask, k, on_nan)
        if small is not None:
            return small
    else:
        fast = native.largest_masks([w.detach()], [mask], k, None if on_nan is None else [on_nan])
        if fast is not None:
            return fast[0]
    return _largest_blocked([w], [mask], k, [on_nan], pooled=False)[0]


def _unstructured_by_scores(w: Tensor, mask: Tensor | None, k: int, scores: Tensor, on_nan: NanReport | None) -> Tensor:
    _check_scores(w, scores)
    kernel_scores = _kernel_scores(scores)
    if kernel_scores is not None:
        if w.numel() < SMALL_TENSOR:
            small = native.keep_largest(kernel_scores, mask, k, on_nan)
            if small is not None:
                return small
        else:
            fast = native.largest_masks([kernel_scores], [mask], k, None if on_nan is None else [on_nan])
            if fast is not None:
                return fast[0]
    return keep_largest(selection_scores(scores, mask, on_nan).reshape(-1), k).reshape(w.shape)


def _flat_blocks(t: Tensor, max_elements: int) -> list[Tensor]:
    """Views of ``t`` covering it in flat (row-major) order, about ``max_elements`` weights each:
    slices of dim 0 (of the elements for a 1-D tensor)."""
    if t.dim() == 0:
        return [t.reshape(1)]
    per_slice = max(1, t.numel() // max(1, t.shape[0]))
    step = max(1, max_elements // per_slice)
    return [t[i : i + step] for i in range(0, t.shape[0], step)] or [t]


def _largest_blocked(
    weights: Sequence[Tensor],
    masks: Sequence[Tensor | None],
    k: int,
    on_nan: Sequence[NanReport | None],
    pooled: bool,
) -> list[Tensor]:
    """The PyTorch path of unstructured and global masks: keep the ``k`` largest ``magnitude_scores``
    over all ``weights`` (ties to the earlier tensor, then the lower flat index), found by a radix
    select over their bit patterns (``radix``) block by block, scores recomputed each round: memory a
    fraction of the weights, where a top-k over all of them needs several times their size. Scores
    compare in float32 (float64 for one float64 tensor, unpooled). Fewer than ``SMALL_TENSOR`` weights
    in all: one top-k."""
    n = sum(w.numel() for w in weights)
    if k >= n or k <= 0:
        return [torch.full(w.shape, k > 0, dtype=torch.bool, device=w.device) for w in weights]
    wide = not pooled and weights[0].dtype == torch.float64
    if n < SMALL_TENSOR:  # small: one top-k beats the radix rounds' 2**16-bin histograms
        scores = torch.cat(
            [magnitude_scores(w, m, r).reshape(-1).to(torch.float64 if wide else torch.float32)
             for w, m, r in zip(weights, masks, on_nan)]
        )  # fmt: skip
        keep = keep_largest(scores, k)  # [n]
        return [part.reshape(w.shape) for part, w in zip(keep.split([w.numel() for w in weights]), weights)]
    bits, key_dtype = (64, torch.int64) if wide else (32, torch.int32)
    size = _block_elements(n)

    def keys(i: int, report: NanReport | None = None) -> Iterable[Tensor]:
        w, m = weights[i].detach(), masks[i]
        mask_blocks = _flat_blocks(m, size) if m is not None else None
        for j, wb in enumerate(_flat_blocks(w, size)):
            scores = magnitude_scores(wb, None if mask_blocks is None else mask_blocks[j], report)
            scores = scores.double() if wide else scores.float()  # no copy when already of that dtype
            yield scores.reshape(-1).view(key_dtype)  # [block]: non-negative floats and DEAD order as ints

    threshold, ties_left = R.kth_largest_and_ties(
        lambda: (key for i in range(len(weights)) for key in keys(i)), k, bits
    )
    out = []
    for i, w in enumerate(weights):
        nans = [0]
        keep = torch.empty(w.shape, dtype=torch.bool, device=w.device)
        report = None if on_nan[i] is None else (lambda c, nans=nans: nans.__setitem__(0, nans[0] + c))
        for block, key in zip(_flat_blocks(keep, size), keys(i, report)):
            kept = key > threshold
            tied = key == threshold
            count = int(torch.count_nonzero(tied))
            if count and ties_left >= count:
                kept |= tied
                ties_left -= count
            elif count and ties_left > 0:  # the first `ties_left` ties by index, in int32
                kept |= tied & (tied.cumsum(0, dtype=torch.int32) <= ties_left)
                ties_left = 0
            block.copy_(kept.reshape(block.shape))
        report_nan = on_nan[i]
        if nans[0] and report_nan is not None:
            report_nan(nans[0])
        out.append(keep)
    return out


def _bank_keep(rows: Tensor, budget: G.BankBudget, bank_size: int) -> Tensor:
    """Keep-mask of score rows ``[rows, row_len]``: ``budget.keep`` per full bank, ``budget.tail_keep`` per tail."""
    banks, tail = G.split_banks(rows, bank_size)  # [rows, banks, B], [rows, tail_len]
    parts = []
    if budget.full_banks:
        parts.append(keep_largest(banks, budget.keep).reshape(rows.shape[0], -1))
    if budget.tail_len:
        parts.append(keep_largest(tail, budget.tail_keep))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def bank_mask(
    w: Tensor,
    mask: Tensor | None,
    sparsity: float,
    bank_size: int = 64,
    layout: str = "channels_last",
    out_dim: int = 0,
    scores: Tensor | None = None,
    *,
    on_nan: NanReport | None = None,
) -> Tensor:
    """Bank-balanced keep-mask of ``w`` (bool, shape of ``w``); see the module docstring.

    ``scores`` (optional, ``w``'s shape): rank by these instead of ``|w|``; same budgets. The PyTorch
    path works block by block over the output channels (``geometry.row_blocks``), so its temporaries
    stay a fraction of ``w``; the compiled kernel needs none beyond the mask.
    """
    geometry = G.BankGeometry(bank_size, layout, out_dim)  # the arguments, checked
    bank_size = geometry.bank_size
    if w.numel() == 0:
        return torch.ones_like(w, dtype=torch.bool)
    budget = G.bank_budget(G.row_length(w.shape, layout, out_dim), bank_size, sparsity)
    if scores is not None:
        _check_scores(w, scores)
    ranked_by = w.detach() if scores is None else _kernel_scores(scores)
    if ranked_by is not None and native.library() is not None:  # compiled single pass over the banks
        fast = native.bank_mask(ranked_by, mask, budget.keep, budget.tail_keep, geometry, on_nan)
        if fast is not None:
            return fast
    nans = [0]

    def count(n: int) -> None:
        nans[0] += n

    out = torch.empty(w.shape, dtype=torch.bool, device=w.device)
    for rows in G.row_blocks(w.shape, out_dim, _block_elements(w.numel())):
        wb = G.block(w.detach(), rows, out_dim)
        mb = None if mask is None else G.block(mask, rows, out_dim)
        if scores is None:
            ranked = magnitude_scores(wb, mb, count)
        else:
            ranked = selection_scores(G.block(scores, rows, out_dim), mb, count)
        keep = _bank_keep(G.to_rows(ranked, layout, out_dim), budget, bank_size)
        G.block(out, rows, out_dim).copy_(G.from_rows(keep, wb.shape, layout, out_dim))
    if nans[0] and on_nan is not None:
        on_nan(nans[0])
    return out


def global_masks(
    weights: Sequence[Tensor],
    masks: Sequence[Tensor | None],
    sparsity: float,
    scores: Sequence[Tensor] | None = None,
    *,
    on_nan: Sequence[NanReport | None] | None = None,
) -> list[Tensor]:
    """One magnitude threshold across all ``weights`` (or one threshold on ``scores``, one tensor of
    each weight's shape), keeping ``round(N * (1 - sparsity))`` of their ``N`` weights in total; ties
    go to the earlier tensor, then the lower index. ``on_nan[i]`` hears of NaN weights (or scores) in
    ``weights[i]``."""
    reports = list(on_nan) if on_nan is not None else [None] * len(weights)
    k = G.keep_count(sum(w.numel() for w in weights), sparsity)
    if scores is not None:
        return _global_by_scores(weights, masks, k, scores, reports)
    fast = native.largest_masks([w.detach() for w in weights], list(masks), k, reports)
    if fast is not None:
        return fast
    return _largest_blocked(weights, masks, k, reports, pooled=True)


def _global_by_scores(
    weights: Sequence[Tensor],
    masks: Sequence[Tensor | None],
    k: int,
    scores: Sequence[Tensor],
    reports: Sequence[NanReport | None],
) -> list[Tensor]:
    if len(scores) != len(weights):
        raise ValueError(f"scores holds {len(scores)} tensors: expected one per weight ({len(weights)})")
    for w, sc in zip(weights, scores):
        _check_scores(w, sc)
    kernel_scores = [_kernel_scores(sc.float()) for sc in scores]
    if all(sc is not None for sc in kernel_scores):
        fast = native.largest_masks(cast(list[Tensor], kernel_scores), list(masks), k, list(reports))
        if fast is not None:
            return fast
    ranked = [selection_scores(sc.float(), m, r).reshape(-1) for sc, m, r in zip(scores, masks, reports)]
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
    *,
    on_nan: NanReport | None = None,
) -> Tensor:
    """Keep-mask of one tensor for ``balance`` in ``("fix", "none")``, by ``|w|`` or by ``scores``."""
    if balance == "fix" and w.dim() >= 2:
        return bank_mask(w, mask, sparsity, bank_size, layout, out_dim, scores, on_nan=on_nan)
    return unstructured_mask(w, mask, sparsity, scores, on_nan=on_nan)


def apply_mask_(w: Tensor, mask: Tensor) -> None:
    """Zero ``w`` where ``mask`` (bool, shape of ``w``) is False, in place.

    CPU tensors take one compiled pass (read ``w`` and the 1-byte mask, write ``w``), about the
    cost of a float-mask ``mul_``; elsewhere ``masked_fill_``. Either way a pruned weight becomes
    exactly ``+0.0`` (a multiplication would leave ``-0.0``, and ``NaN`` for a non-finite weight).
    A mask on another device (a host mask for a GPU weight, ``prune_device="cpu"``) is copied
    without blocking the host: asynchronous when it lies in pinned memory, as the pruner keeps it.
    """
    if native.zero_pruned_(w, mask):
        torch.autograd.graph.increment_version(w)  # written through its pointer: tell autograd
        return
    if mask.device != w.device:  # to an accelerator: queued on its stream, before the fill below
        mask = mask.to(w.device, non_blocking=w.device.type != "cpu")
    w.masked_fill_(mask.logical_not(), 0)


# ---------------------------------------------------------------- checker


def _count_dtype(bank_size: int) -> torch.dtype:
    return torch.int16 if bank_size < 2**15 else torch.int32


def bank_nonzeros(
    w: Tensor, bank_size: int = 64, layout: str = "channels_last", out_dim: int = 0
) -> tuple[Tensor, Tensor | None]:
    """Non-zeros per bank: ``([rows, full_banks], [rows] or None for the tail banks)``, int16 (int32
    for banks over 32767). Counted block by block, so the temporaries stay a fraction of ``w``."""
    w = w.detach()
    row_len = G.row_length(w.shape, layout, out_dim)
    full_banks, tail_len = divmod(row_len, bank_size)
    n_rows = G.row_count(w.shape, layout, out_dim)
    dtype = _count_dtype(bank_size)
    full = torch.zeros(n_rows, full_banks, dtype=dtype, device=w.device)  # [rows, full_banks]
    tail = torch.zeros(n_rows, dtype=dtype, device=w.device) if tail_len else None  # [rows]
    start = 0
    for rows in G.row_blocks(w.shape, out_dim, _block_elements(w.numel())):
        nonzero = G.to_rows(G.block(w, rows, out_dim) != 0, layout, out_dim)  # [block rows, row_len]
        banks, tail_block = G.split_banks(nonzero, bank_size)
        end = start + nonzero.shape[0]
        if full_banks:
            full[start:end] = banks.sum(dim=-1)
        if tail is not None:
            tail[start:end] = tail_block.sum(dim=-1)
        start = end
    return full, tail


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
    (what a bank-balanced pruner at that sparsity would keep; a tail bank may hold what any target
    with that full-bank budget would keep there, see ``geometry.measured_budget``). Works on any tensor of any
    checkpoint; tensors with fewer than 2 dims are one row. This is the one checker: ``Prune.check``,
    the packed export and ``pruning-tools inspect`` all call it. Extra memory: a small fraction of
    ``w`` (counts of 2 bytes per bank, and blocks of ``w`` at a time). Every argument is validated: a
    bad one is a ``TypeError`` / ``ValueError`` naming it, the value and what is allowed.
    """
    if not isinstance(w, Tensor):
        raise TypeError(
            f"w={type(w).__name__} is not allowed: expected a torch.Tensor (torch.as_tensor converts a numpy array)"
        )
    bank_size = check_bank_size("bank_size", bank_size)  # 64.0 is 64
    check_choice("layout", layout, LAYOUTS)
    if out_dim not in (0, 1) or isinstance(out_dim, bool):
        raise ValueError(f"out_dim={out_dim!r} is not allowed: expected 0 or 1 (the dim of the output channels)")
    if sparsity is not None:
        sparsity = check_sparsity("sparsity", sparsity)
    full, tail = bank_nonzeros(w, bank_size, layout, out_dim)  # [rows, full_banks], [rows]
    row_len = G.row_length(w.shape, layout, out_dim)
    if sparsity is None:
        budget = G.measured_budget(row_len, bank_size, 1.0 - int(torch.count_nonzero(w)) / max(1, w.numel()))
    else:
        budget = G.bank_budget(row_len, bank_size, sparsity)
    n_rows, full_banks = full.shape
    parts = [full - budget.keep]  # excess over the budget, [rows, full_banks]
    if tail is not None:
        parts.append((tail - budget.tail_keep)[:, None])  # [rows, 1]
    excess = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [rows, banks]
    n_banks = excess.shape[1]
    worst = int(excess.argmax()) if excess.numel() else 0
    row, bank = divmod(worst, max(1, n_banks))
    ok = excess <= 0
    worst_limit = budget.tail_keep if bank >= full_banks else budget.keep
    return BankCheck(
        balanced=bool(ok.all()),
        budget=budget.keep,
        tail_budget=budget.tail_keep,
        banks=int(excess.numel()),
        over_budget=int(excess.numel() - int(torch.count_nonzero(ok))),
        worst_bank=(row, bank),
        worst_nonzeros=int(excess.reshape(-1)[worst]) + worst_limit if excess.numel() else 0,
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
