"""Compiled fast path of the mask engine for CPU tensors (``kernels/mask_select.c``).

Plain C99, no Python or torch headers: compiled once by the system C compiler (``$CC`` or ``cc``)
into the cache of ``pruning_tools.kernels`` (``$PRUNING_TOOLS_CACHE``), keyed by the source, the
flags, the compiler and the CPU, and loaded with ``ctypes``. ``PRUNING_TOOLS_KERNEL=torch`` turns
it off. Every function here returns ``None`` (or ``False``) when it cannot serve a call (no
compiler, a tensor not on the CPU or not contiguous, an unusual layout or dtype); the caller then
takes the pure PyTorch path, which computes the same masks (the tests compare both with a
reference).
"""

from __future__ import annotations

import ctypes
import functools
import math
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from . import kernels

SOURCE = Path(__file__).parent / "kernels" / "mask_select.c"
FLAGS = ("-O3", "-std=gnu99", "-fopenmp", "-shared", "-fPIC")  # without -fopenmp if that fails
MAX_BANK = 1024  # longest bank the kernel holds on its stack
BITS = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}

_P, _I = ctypes.c_void_p, ctypes.c_int64


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or ``None`` (``PRUNING_TOOLS_KERNEL=torch``, or no working compiler)."""
    if kernels.mode() == "torch":
        return None
    try:
        lib = ctypes.CDLL(str(kernels.compiled(SOURCE, FLAGS)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        if kernels.mode() == "native":
            raise kernels.KernelUnavailableError(f"mask kernels unavailable: {type(e).__name__}: {e}") from e
        warnings.warn(
            f"mask kernels unavailable, using the PyTorch path ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=3
        )
        return None
    for bits in BITS.values():
        getattr(lib, f"bank_select_{bits}").argtypes = [_P, _P, _P] + [_I] * 9
        getattr(lib, f"histogram_{bits}").argtypes = [_P, _P, _I, ctypes.c_int, ctypes.c_uint64, _P, _I]
        getattr(lib, f"keep_above_{bits}").argtypes = [_P, _P, _P, _I, ctypes.c_uint64, _P, _I]
        getattr(lib, f"zero_pruned_{bits}").argtypes = [_P, _P, _I, _I]
    return lib


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


def bank_strides(shape: Sequence[int], layout: str, out_dim: int) -> tuple[int, int, int, int, int] | None:
    """``(rows, row_len, group, group_stride, step)`` of ``masks.to_rows`` over a contiguous tensor
    of ``shape``: row ``r`` starts at ``(r // group) * group_stride + r % group``, its elements are
    ``step`` apart. ``None`` for layouts the kernel does not walk (flat ConvTranspose)."""
    numel = math.prod(shape)
    if len(shape) < 2:
        return 1, numel, 1, numel, 1
    kernel = math.prod(shape[2:])
    if out_dim == 0:
        if layout == "flat" or len(shape) == 2:
            row_len = numel // shape[0]
            return shape[0], row_len, 1, row_len, 1
        return shape[0] * kernel, shape[1], kernel, shape[1] * kernel, kernel  # [out * kernel, in]
    if layout == "flat" and len(shape) > 2:
        return None
    out, inp = shape[1], shape[0]  # [in, out, *kernel]: row (o, p) starts at o * kernel + p
    return out * kernel, inp, 1, 1, out * kernel


def bank_mask(
    w: Tensor, mask: Tensor | None, keep: int, tail_keep: int, bank_size: int, layout: str, out_dim: int
) -> Tensor | None:
    """Bank-balanced keep-mask (bool, shape of ``w``), or ``None`` when the kernel cannot serve it."""
    strides = bank_strides(tuple(w.shape), layout, out_dim)
    if strides is None or bank_size > MAX_BANK or not _servable(w, mask):
        return None
    rows, row_len, group, group_stride, step = strides
    out = torch.empty(w.shape, dtype=torch.bool)
    bits = BITS[w.dtype]
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
    )
    return out


def largest_masks(weights: Sequence[Tensor], masks: Sequence[Tensor | None], k: int) -> list[Tensor] | None:
    """Keep the ``k`` largest ``|w|`` still alive across all ``weights`` (ties to the earlier tensor,
    then the lower index): bool masks of their shapes, or ``None`` when the kernel cannot serve it."""
    if not weights or len({w.dtype for w in weights}) != 1 or not all(map(_servable, weights, masks)):
        return None
    if k <= 0:
        return [torch.zeros(w.shape, dtype=torch.bool) for w in weights]
    lib, bits, threads = library(), BITS[weights[0].dtype], torch.get_num_threads()
    # radix select on the magnitude bits, 16 bits per level, most significant first
    per_thread = torch.zeros(threads, 1 << 16, dtype=torch.int64)  # [threads, bins]
    prefix, remaining = 0, k
    for shift in range(bits - 16, -1, -16):
        per_thread.zero_()
        for w, m in zip(weights, masks):
            getattr(lib, f"histogram_{bits}")(
                w.data_ptr(), _ptr(m), w.numel(), shift, prefix, per_thread.data_ptr(), threads
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
    out = []
    for w, m in zip(weights, masks):
        keep = torch.empty(w.shape, dtype=torch.bool)
        getattr(lib, f"keep_above_{bits}")(
            w.data_ptr(), _ptr(m), keep.data_ptr(), w.numel(), threshold, ctypes.byref(ties), threads
        )
        out.append(keep)
    return out


def zero_pruned_(w: Tensor, keep: Tensor) -> bool:
    """``w[~keep] = 0`` in place; ``False`` (nothing done) when the kernel cannot serve it."""
    if keep is None or not _servable(w, keep):
        return False
    getattr(library(), f"zero_pruned_{BITS[w.dtype]}")(
        w.data_ptr(), keep.data_ptr(), w.numel(), torch.get_num_threads()
    )
    return True
