"""The compiled products (``_native`` kernel ``bank_sparse``) called on torch tensors.

A weight is described to the kernel once, by a ``BankWeight`` (pointers and sizes of its packed
tensors) that the kernel's own ``bank_check`` has validated: it reads every index and stamps the
descriptor, and the products refuse a descriptor whose stamp does not match its fields. Every call
also passes the input's sizes, which the kernel checks against the descriptor (once per call).

``describe`` returns ``None`` where the kernel cannot serve a weight (engine ``torch``, no compiler,
not float32 / uint8 indices on the CPU, banks longer than 256); callers then take the PyTorch path of
``reference``, which computes the same products.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import _native

_P, _I = ctypes.c_void_p, ctypes.c_int64

ERRORS = {
    -1: (MemoryError, "no memory for its scratch buffer"),
    -2: (RuntimeError, "the weight descriptor was not checked by the kernel"),
    -3: (ValueError, "sizes that disagree with the weight"),
    -4: (ValueError, "an index outside its bank"),
}


class BankWeight(ctypes.Structure):
    """``bank_weight`` of ``bank_sparse.c``."""

    _fields_ = [
        ("values", _P),
        ("idx", _P),
        ("tail_values", _P),
        ("tail_idx", _P),
        ("bias", _P),
        ("rows", _I),
        ("in_features", _I),
        ("banks", _I),
        ("k", _I),
        ("bank", _I),
        ("tail_k", _I),
        ("stamp", ctypes.c_uint64),
    ]


class ConvGeometry(ctypes.Structure):
    """``bank_conv_geometry`` of ``bank_sparse.c``: input, kernel, stride, top/left padding, dilation,
    output, the input's strides, and ``relu`` (1: the output goes through ReLU in the epilogue)."""

    _fields_ = [
        (name, _I)
        for name in ("n", "c", "h", "w", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "oh", "ow")
        + ("xs_n", "xs_c", "xs_h", "xs_w")  # the input's strides in floats
        + ("relu",)
    ]


class Described(NamedTuple):
    """A weight the kernel accepted: its descriptor (and its address), the entry points, and the tensors
    it points into (kept alive with it)."""

    weight: BankWeight
    address: int
    rows: int
    linear: Any  # (weight, x, batch, in_features, y) -> code: the extension module's, else ctypes'
    conv2d: Any  # (weight, geometry, x, y) -> code
    tensors: tuple[Tensor | None, ...]


def _raise(code: int, what: str) -> None:
    kind, why = ERRORS.get(code, (RuntimeError, f"error {code}"))
    raise kind(f"bank-sparse kernel refused {what}: {why}")


def servable(t: Tensor | None, dtype: torch.dtype) -> bool:
    """Whether the compiled kernel can take ``t`` as it is: absent, or a contiguous CPU tensor of
    ``dtype`` that needs no gradient."""
    return t is None or (t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() and not t.requires_grad)


def describe(
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
    in_features: int,
) -> Described | None:
    """The checked kernel descriptor of a packed weight (``values [rows, banks, k]`` ...), or None
    where the kernel cannot serve it. An index the kernel finds out of range is a ``ValueError``."""
    lib = _native.library("bank_sparse")
    if (
        lib is None
        or bank_size > 256
        or not all(servable(t, torch.float32) for t in (values, tail_values, bias))
        or not all(servable(t, torch.uint8) for t in (indices, tail_indices))
    ):
        return None
    ptr = lambda t: None if t is None or t.numel() == 0 else t.data_ptr()  # noqa: E731
    rows, banks, k = values.shape
    weight = BankWeight(
        ptr(values),
        ptr(indices),
        ptr(tail_values),
        ptr(tail_indices),
        ptr(bias),
        rows,
        in_features,
        banks,
        k,
        bank_size,
        tail_values.shape[1],
        0,
    )
    where = _I(-1)
    code = lib.bank_check(ctypes.byref(weight), ctypes.byref(where))
    if code:
        _raise(code, f"a weight [{rows}, {banks}, {k}] (bank {bank_size}, flat position {where.value})")
    module: Any = _native.module("bank_sparse")
    linear_call, conv2d_call = (
        (module.linear, module.conv2d) if module is not None else (lib.bank_linear, lib.bank_conv2d)
    )
    tensors = (values, indices, tail_values, tail_indices, bias)
    return Described(weight, ctypes.addressof(weight), rows, linear_call, conv2d_call, tensors)


def linear(d: Described, x: Tensor) -> Tensor:
    """``x [batch, in]`` (float32, CPU, contiguous) -> ``[batch, rows]``."""
    y = torch.empty(x.shape[0], d.rows, dtype=torch.float32)
    code = d.linear(d.address, x.data_ptr(), x.shape[0], x.shape[1], y.data_ptr())
    if code:
        _raise(code, f"an input {list(x.shape)} for a weight of {d.weight.in_features} inputs")
    return y


def conv2d(
    d: Described,
    x: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
    relu: bool = False,
) -> Tensor:
    """``x [n, c, h, w]`` (float32, CPU; NCHW, channels-last or any strides) -> ``[n, rows / (kh * kw),
    oh, ow]`` (NCHW), through ReLU when ``relu``. ``padding``: (top, bottom, left, right); the
    bottom/right ones are implied by ``out_size``."""
    n, c, h, w = x.shape
    out_c = d.rows // (kernel[0] * kernel[1])
    y = torch.empty(n, out_c, *out_size, dtype=torch.float32)
    geometry = ConvGeometry(n, c, h, w, *kernel, *stride, padding[0], padding[2], *dilation, *out_size, *x.stride(),
                            int(relu))  # fmt: skip
    code = d.conv2d(d.address, ctypes.addressof(geometry), x.data_ptr(), y.data_ptr())
    if code:
        _raise(code, f"an input {list(x.shape)} with kernel {kernel} for a weight of {d.weight.in_features} inputs")
    return y


__all__ = ["BankWeight", "ConvGeometry", "Described", "conv2d", "describe", "linear", "servable"]
