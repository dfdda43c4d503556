"""Exact k-th largest of integer keys by radix selection: 16 bits per round, most significant first.

Shared by the sharded masks (``distributed``: one all-reduce of a 2**16-bin histogram per round) and
the PyTorch path of unstructured and global masks (``masks``: keys recomputed block by block each
round, so memory stays a fraction of the weights). Pure PyTorch, any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

RADIX_BITS = 16  # bits resolved per round (per all-reduce): a histogram of 2**16 counts (512 KiB)

ReduceSum = Callable[[Tensor], Tensor]  # sums an int64 tensor over the ranks, returns the sum


def sortable_keys(scores: Tensor) -> tuple[Tensor, int]:
    """Integer keys ordered exactly like the float ``scores``: ``(keys [n], bits)``.

    Float16/bfloat16/float32 scores become int32 keys (float32 holds them exactly), float64
    int64 keys. ``scores`` of any shape is flattened to ``[n]``.
    """
    if scores.dtype == torch.float64:
        raw, bits, low = scores.reshape(-1).contiguous().view(torch.int64), 64, 0x7FFFFFFFFFFFFFFF
    else:
        raw, bits, low = scores.reshape(-1).float().contiguous().view(torch.int32), 32, 0x7FFFFFFF
    # negative floats: their raw bits grow with the magnitude; flipping those bits makes them grow
    # with the value, below every non-negative float (raw >> (bits - 1) is -1 exactly for those)
    return raw ^ ((raw >> (bits - 1)) & low), bits


def kth_largest_and_ties(
    keys: Sequence[Tensor] | Callable[[], Iterable[Tensor]],
    k: int,
    bits: int,
    reduce_sum: ReduceSum = lambda t: t,
    device: torch.device | None = None,
) -> tuple[int, int]:
    """``(t, m)``: the ``k``-th largest (1-based) of all ``keys`` (signed integers, ``bits`` wide, a
    multiple of 16) and how many keys equal to ``t`` belong to the ``k`` largest (``k`` minus the keys
    above ``t``). ``keys``: tensors (each round keeps only those still sharing the chosen prefix), or a
    function yielding them afresh for every round (nothing kept between rounds). ``reduce_sum`` sums
    each round's histogram over the ranks. The caller ensures ``0 < k <=`` the number of keys."""
    bins, prefix, need = 1 << RADIX_BITS, None, k
    fresh = callable(keys)
    candidates: list[Tensor] = [] if callable(keys) else list(keys)
    for shift in range(bits - RADIX_BITS, -1, -RADIX_BITS):
        hist = None
        kept = []
        for key in keys() if callable(keys) else candidates:
            if prefix is None:
                digits = (key >> shift) + bins // 2  # signed top digit -> 0..bins-1, order kept
            else:
                key = key[(key >> (shift + RADIX_BITS)) == (prefix >> (shift + RADIX_BITS))]
                digits = (key >> shift) & (bins - 1)
            if not fresh:
                kept.append(key)
            counts = torch.bincount(digits, minlength=bins)
            counts = counts if device is None else counts.to(device)
            hist = counts if hist is None else hist + counts
        candidates = kept
        if hist is None:
            hist = torch.zeros(bins, dtype=torch.int64, device=device)
        above = reduce_sum(hist).flip(0).cumsum(0)  # above[j]: keys in buckets >= bins - 1 - j
        j = int(torch.searchsorted(above, torch.tensor([need], device=above.device)))
        need -= int(above[j - 1]) if j else 0
        digit = bins - 1 - j
        prefix = (digit - bins // 2) << shift if prefix is None else prefix | (digit << shift)
    assert prefix is not None  # at least one round ran: bits >= RADIX_BITS
    return prefix, need


def kth_largest_key(keys: Sequence[Tensor], k: int, bits: int, reduce_sum: ReduceSum, device: torch.device) -> int:
    """The key of the ``k``-th largest (1-based) among all ranks' ``keys`` (signed integers,
    ``bits`` wide). Radix selection, most significant digits first: one all-reduce of a
    ``2**RADIX_BITS``-bin histogram per digit (2 for 32-bit keys); each round only looks at the
    keys that still share the chosen prefix."""
    return kth_largest_and_ties(keys, k, bits, reduce_sum, device)[0]


__all__ = ["RADIX_BITS", "ReduceSum", "kth_largest_and_ties", "kth_largest_key", "sortable_keys"]
