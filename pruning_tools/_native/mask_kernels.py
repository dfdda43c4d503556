"""ctypes wrappers of the mask engine's kernels (``mask_select.c``) for plain CPU tensors.

Every function here returns ``None`` (or ``False``) when it cannot serve a call (engine ``torch``, no
compiler, a tensor not on the CPU or not contiguous, an unusual layout or dtype); the caller in
``pruning_tools.masks`` then takes the pure PyTorch path, which computes the same masks (the tests
compare both with a reference).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import geometry as G
from . import library as _library

MAX_BANK = 1024  # longest bank the kernel holds on its stack
BITS = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}
# magnitude bits of +infinity: above them, a NaN (scored like a dead weight, as on the PyTorch path)
INF = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80, torch.float32: 0x7F800000, torch.float64: 0x7FF0000000000000}

NanReport = Callable[[int], None]


def library() -> ctypes.CDLL | None:
    """The compiled mask kernels, or ``None`` (engine ``torch``, or no working compiler)."""
    return _library("mask_select")


def _plain_cpu(t: Tensor) -> bool:
    """A dense CPU tensor or parameter (no subclass such as DTensor), contiguous, not empty."""
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and t.is_contiguous()
        and t.numel() > 0
    )


def _servable(w: Tensor, mask: Tensor | None) -> bool:
    return (
        library() is not None
        and w.dtype in BITS
        and _plain_cpu(w)
        and (mask is None or (mask.dtype == torch.bool and _plain_cpu(mask) and mask.shape == w.shape))
    )


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def bank_mask(
    w: Tensor,
    mask: Tensor | None,
    keep: int,
    tail_keep: int,
    geometry: G.BankGeometry,
    on_nan: NanReport | None = None,
) -> Tensor | None:
    """Bank-balanced keep-mask (bool, shape of ``w``), ``keep`` per full bank and ``tail_keep`` per
    tail bank of ``geometry``, or ``None`` when the kernel cannot serve it. ``on_nan(count)`` hears of
    live NaN weights (pruned first)."""
    bank_size = geometry.bank_size
    strides = G.row_strides(tuple(w.shape), geometry.layout, geometry.out_dim)
    if strides is None or bank_size > MAX_BANK or not _servable(w, mask):
        return None
    rows, row_len, group, group_stride, step = strides
    out = torch.empty(w.shape, dtype=torch.bool)
    bits, nans = BITS[w.dtype], ctypes.c_int64(0)
    getattr(library(), f"bank_select_{bits}")(
        w.data_ptr(),
        _ptr(mask),
        out.data_ptr(),
        rows,
        row_len,
        bank_size,
        keep,
        tail_keep,
        group,
        group_stride,
        step,
        torch.get_num_threads(),
        INF[w.dtype],
        ctypes.byref(nans),
    )
    if nans.value and on_nan is not None:
        on_nan(nans.value)
    return out


def largest_masks(
    weights: Sequence[Tensor],
    masks: Sequence[Tensor | None],
    k: int,
    on_nan: Sequence[NanReport | None] | None = None,
) -> list[Tensor] | None:
    """Keep the ``k`` largest ``|w|`` still alive (NaN: not alive) across all ``weights`` (ties to the
    earlier tensor, then the lower index): bool masks of their shapes, or ``None`` when the kernel
    cannot serve it. ``on_nan[i](count)`` hears of live NaN weights in ``weights[i]``."""
    if not weights or len({w.dtype for w in weights}) != 1 or not all(map(_servable, weights, masks)):
        return None
    if k <= 0:  # nothing kept: the NaN weights are pruned like every other, not counted
        return [torch.zeros(w.shape, dtype=torch.bool) for w in weights]
    dtype = weights[0].dtype
    lib, bits, inf, threads = library(), BITS[dtype], INF[dtype], torch.get_num_threads()
    # radix select on the magnitude bits, 16 bits per level, most significant first
    per_thread = torch.zeros(threads, 1 << 16, dtype=torch.int64)  # [threads, bins]
    prefix, remaining = 0, k
    for shift in range(bits - 16, -1, -16):
        per_thread.zero_()
        for w, m in zip(weights, masks):
            getattr(lib, f"histogram_{bits}")(
                w.data_ptr(), _ptr(m), w.numel(), shift, prefix, per_thread.data_ptr(), threads, inf
            )
        hist = per_thread.sum(0)  # [bins]
        from_top = hist.flip(0).cumsum(0)  # [bins]: live keys in this bin or above
        if shift == bits - 16 and k > int(from_top[-1]):  # more than the live weights: rare, PyTorch path
            return None
        b = int(torch.searchsorted(from_top, remaining))  # first bin (from the top) reaching `remaining`
        remaining -= int(from_top[b - 1]) if b else 0
        prefix = (prefix << 16) | ((1 << 16) - 1 - b)
    threshold = prefix  # the k-th largest key: keep `remaining` of the keys equal to it, the first ones
    every_tie = remaining == int(hist[prefix & 0xFFFF])  # the usual case: then no order to respect
    ties = ctypes.c_int64(-1 if every_tie else remaining)
    out, nans = [], ctypes.c_int64(0)
    reports = list(on_nan) if on_nan is not None else [None] * len(weights)
    for w, m, report in zip(weights, masks, reports):
        keep = torch.empty(w.shape, dtype=torch.bool)
        getattr(lib, f"keep_above_{bits}")(
            w.data_ptr(), _ptr(m), keep.data_ptr(), w.numel(), threshold, ctypes.byref(ties), threads, inf,
            ctypes.byref(nans),
        )  # fmt: skip
        if nans.value and report is not None:
            report(nans.value)
        out.append(keep)
    return out


def keep_largest(w: Tensor, mask: Tensor | None, k: int, on_nan: NanReport | None = None) -> Tensor | None:
    """Keep the ``k`` largest ``|w|`` still alive of one tensor (dead and NaN weights rank lowest, ties to
    the lower index), in one call and one thread: for small tensors, where the histograms of
    ``largest_masks`` cost more than the tensor. ``None`` when the kernel cannot serve it."""
    if not _servable(w, mask):
        return None
    keep = torch.empty(w.shape, dtype=torch.bool)
    if k <= 0 or k >= w.numel():
        return keep.fill_(k > 0)
    nans = ctypes.c_int64(0)
    getattr(library(), f"keep_largest_{BITS[w.dtype]}")(
        w.data_ptr(), _ptr(mask), keep.data_ptr(), w.numel(), k, INF[w.dtype], ctypes.byref(nans)
    )
    if nans.value and on_nan is not None:
        on_nan(nans.value)
    return keep


def zero_pruned_(w: Tensor, keep: Tensor) -> bool:
    """``w[~keep] = 0`` in place; ``False`` (nothing done) when the kernel cannot serve it."""
    if keep is None or not _servable(w, keep):
        return False
    getattr(library(), f"zero_pruned_{BITS[w.dtype]}")(
        w.data_ptr(), keep.data_ptr(), w.numel(), torch.get_num_threads()
    )
    return True
