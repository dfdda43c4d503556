"""The bank-sparse products as torch operators, so converted models run under ``torch.compile``,
``torch.jit.trace`` and ``torch.export`` (no graph break: the compilers see one opaque operator with a
shape function) and work with autograd (gradients through the input).

- ``torch.ops.pruning_tools.bank_linear(x [batch, in], values, indices, tail_values, tail_indices,
  bias?, bank_size) -> [batch, rows]``
- ``torch.ops.pruning_tools.bank_conv2d(x [n, c, h, w], ..., bank_size, kernel [2], stride [2],
  padding [4] (top, bottom, left, right), dilation [2]) -> [n, rows / (kh * kw), oh, ow]``

One implementation serves every device: the C kernel for float32 CPU tensors where it builds, else
the pure-PyTorch ``reference``. The packed tensors are checked (``export.check_packed``) before any
product runs; checked weights are remembered by identity and version, so a loop over the same weights
checks them once. Registered from Python: a ``torch.library`` operator called from Python costs about
10 µs of dispatch here (measured; a C++ operator on torch's stable ABI cost the same, its overhead is in
the Python-side call), so the modules call the kernel directly in eager mode and use these operators
when tracing, compiling or exporting. Gradients (through the input and bias) come from
``BankLinearFunction`` / ``BankConv2dFunction``, which the modules use when autograd needs them.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from ..export import PackedTensor, check_packed
from . import native, reference

NAMESPACE = "pruning_tools"
_LIB = torch.library.Library(NAMESPACE, "DEF")
_LIB.define(
    "bank_linear(Tensor x, Tensor values, Tensor indices, Tensor tail_values, Tensor tail_indices, "
    "Tensor? bias, int bank_size) -> Tensor"
)
_LIB.define(
    "bank_conv2d(Tensor x, Tensor values, Tensor indices, Tensor tail_values, Tensor tail_indices, "
    "Tensor? bias, int bank_size, int[2] kernel, int[2] stride, int[4] padding, int[2] dilation) -> Tensor"
)

CACHE_SIZE = 1024  # checked weights remembered (a model's layers); the oldest are checked again
_checked: OrderedDict[tuple, tuple[list, native.Described | None, tuple[int, int]]] = OrderedDict()
_recent: dict[int, tuple] = {}  # id(indices) -> (weakrefs of the five tensors, geometry, versions, descriptor)


def _owner(t: Tensor) -> Tensor:
    """The tensor whose memory ``t`` views (itself when it is not a view): views of one buffer, made
    anew on every call (the rows of a fused projection), are remembered through it."""
    base = t._base
    return t if base is None else base


def checked(
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
    row_len: int,
    kernel_positions: int = 1,
    where: str = "bank-sparse weight",
) -> native.Described | None:
    """Check packed weight tensors (rows of ``row_len`` inputs; ``kernel_positions`` rows per output
    channel) and return the kernel's descriptor, or None where the kernel cannot serve them. A
    ``ValueError`` naming ``where`` for anything inconsistent.

    Remembered by the tensors (or the buffers they view: identity, address, shape) and the indices'
    versions, so a loop over the same weights checks them once."""
    geometry = (bank_size, row_len, kernel_positions)
    versions = (
        (-1, -1) if indices.is_inference() or tail_indices.is_inference() else (indices._version, tail_indices._version)
    )
    recent = _recent.get(id(indices))
    if recent is not None and recent[1] == geometry and recent[2] == versions:
        refs = recent[0]
        if refs[1]() is indices and refs[0]() is values and refs[2]() is tail_values and refs[3]() is tail_indices:
            if (bias is None and refs[4] is None) or (refs[4] is not None and refs[4]() is bias):
                return recent[3]
    described = _checked_slow(values, indices, tail_values, tail_indices, bias, geometry, versions, where)
    refs = [None if t is None else weakref.ref(t) for t in (values, indices, tail_values, tail_indices, bias)]
    _recent[id(indices)] = (refs, geometry, versions, described)
    while len(_recent) > CACHE_SIZE:
        del _recent[next(iter(_recent))]
    return described


def _checked_slow(values, indices, tail_values, tail_indices, bias, geometry, versions, where):
    """``checked`` for tensors seen before under other objects (views made anew for each call) or never."""
    bank_size, row_len, kernel_positions = geometry
    parts = (values, indices, tail_values, tail_indices, bias)
    owners = [None if t is None else _owner(t) for t in parts]
    key = (*(None if t is None else (id(o), t.data_ptr(), t.shape, t.dtype) for t, o in zip(parts, owners)), *geometry)
    hit = _checked.get(key)
    if hit is not None and hit[2] == versions and all(r is None or r() is o for r, o in zip(hit[0], owners)):
        return hit[1]
    rows = values.shape[0] if values.dim() else 0
    check_packed(PackedTensor(values, indices, tail_values, tail_indices, (rows, row_len), bank_size), where)
    out_c = rows // kernel_positions
    if rows % kernel_positions:
        raise ValueError(f"{where}: {rows} rows are not a whole number of {kernel_positions} kernel positions")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_c or not bias.is_floating_point()):
        raise ValueError(f"{where}: bias of shape {list(bias.shape)} ({bias.dtype}): expected a float [{out_c}]")
    described = native.describe(values, indices, tail_values, tail_indices, bias, bank_size, row_len)
    _checked[key] = ([None if o is None else weakref.ref(o) for o in owners], described, versions)
    while len(_checked) > CACHE_SIZE:
        _checked.popitem(last=False)
    return described


def _native_input(x: Tensor, described: native.Described | None) -> bool:
    return described is not None and x.device.type == "cpu" and x.dtype == torch.float32


def _bank_linear(x, values, indices, tail_values, tail_indices, bias, bank_size):
    if x.dim() != 2:
        raise ValueError(f"bank_linear: input of shape {list(x.shape)} is not allowed: expected [batch, in]")
    described = checked(values, indices, tail_values, tail_indices, bias, bank_size, x.shape[1])
    if _native_input(x, described):
        return native.linear(described, x.contiguous())
    return reference.linear(x, values, indices, tail_values, tail_indices, bias, bank_size)


def out_size(size: tuple[int, int], kernel, stride, padding, dilation) -> tuple[int, int]:
    """``(oh, ow)`` of a convolution of an input ``(h, w)`` (padding: top, bottom, left, right)."""
    h, w = size
    return (
        (h + padding[0] + padding[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1,
        (w + padding[2] + padding[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1,
    )


def _check_conv_args(x: Tensor, kernel, stride, padding, dilation) -> None:
    if x.dim() != 4:
        raise ValueError(f"bank_conv2d: input of shape {list(x.shape)} is not allowed: expected [n, c, h, w]")
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0 or max(stride) > 8:
        raise ValueError(
            f"bank_conv2d: kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation} are not allowed: "
            "expected kernel, stride (<= 8) and dilation >= 1, padding >= 0"
        )
    if min(out_size(tuple(x.shape[2:]), kernel, stride, padding, dilation)) < 1:
        raise ValueError(f"bank_conv2d: input of shape {list(x.shape)} is smaller than the kernel {kernel}")


def _bank_conv2d(x, values, indices, tail_values, tail_indices, bias, bank_size, kernel, stride, padding, dilation):
    kernel, stride, padding, dilation = tuple(kernel), tuple(stride), tuple(padding), tuple(dilation)
    _check_conv_args(x, kernel, stride, padding, dilation)
    described = checked(values, indices, tail_values, tail_indices, bias, bank_size, x.shape[1], kernel[0] * kernel[1])
    if _native_input(x, described):
        size = out_size(tuple(x.shape[2:]), kernel, stride, padding, dilation)
        planar = x if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) else x.contiguous()
        return native.conv2d(described, planar, kernel, stride, padding, dilation, size)
    return reference.conv2d(
        x, values, indices, tail_values, tail_indices, bias, bank_size, kernel, stride, padding, dilation
    )


_LIB.impl("bank_linear", _bank_linear, "CompositeExplicitAutograd")  # every device: C kernel or PyTorch
_LIB.impl("bank_conv2d", _bank_conv2d, "CompositeExplicitAutograd")


@torch.library.register_fake(f"{NAMESPACE}::bank_linear")
def _bank_linear_fake(x, values, indices, tail_values, tail_indices, bias, bank_size):
    return x.new_empty(x.shape[0], values.shape[0])


@torch.library.register_fake(f"{NAMESPACE}::bank_conv2d")
def _bank_conv2d_fake(
    x, values, indices, tail_values, tail_indices, bias, bank_size, kernel, stride, padding, dilation
):
    oh, ow = out_size((x.shape[2], x.shape[3]), kernel, stride, padding, dilation)
    return x.new_empty(x.shape[0], values.shape[0] // (kernel[0] * kernel[1]), oh, ow)


# ---------------------------------------------------------------- gradients (through the input and bias)
# Not registered on the operators (a registered autograd formula costs ~15 µs per call, even under
# no_grad): the modules call these Functions when a gradient is needed (traceable by torch.compile).


class BankLinearFunction(torch.autograd.Function):
    """``bank_linear`` with gradients for ``x`` and ``bias`` (the packed weight is constant)."""

    @staticmethod
    def forward(ctx: Any, x, values, indices, tail_values, tail_indices, bias, bank_size):
        ctx.save_for_backward(values, indices, tail_values, tail_indices)
        ctx.bank_size, ctx.row_len, ctx.has_bias = bank_size, x.shape[1], bias is not None
        return bank_linear(x, values, indices, tail_values, tail_indices, bias, bank_size)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        values, indices, tail_values, tail_indices = ctx.saved_tensors
        weight = reference.dense_rows(values, indices, tail_values, tail_indices, ctx.bank_size, ctx.row_len)
        grad_x = grad @ weight.to(grad)  # [batch, in]
        grad_bias = grad.sum(0) if ctx.has_bias else None
        return grad_x, None, None, None, None, grad_bias, None


class BankConv2dFunction(torch.autograd.Function):
    """``bank_conv2d`` with gradients for ``x`` and ``bias``."""

    @staticmethod
    def forward(
        ctx: Any, x, values, indices, tail_values, tail_indices, bias, bank_size, kernel, stride, padding, dilation
    ):
        ctx.save_for_backward(values, indices, tail_values, tail_indices)
        ctx.bank_size, ctx.has_bias = bank_size, bias is not None
        ctx.geometry = (tuple(x.shape), tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
        return bank_conv2d(
            x, values, indices, tail_values, tail_indices, bias, bank_size, kernel, stride, padding, dilation
        )

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        values, indices, tail_values, tail_indices = ctx.saved_tensors
        (n, c, h, w), (kh, kw), stride, padding, dilation = ctx.geometry
        rows = reference.dense_rows(values, indices, tail_values, tail_indices, ctx.bank_size, c)  # [o * kh * kw, c]
        weight = rows.reshape(-1, kh, kw, c).permute(0, 3, 1, 2).to(grad)  # [o, c, kh, kw]
        padded = (n, c, h + padding[0] + padding[1], w + padding[2] + padding[3])
        grad_padded = torch.nn.grad.conv2d_input(padded, weight, grad, stride, 0, dilation)
        grad_x = grad_padded[:, :, padding[0] : padding[0] + h, padding[2] : padding[2] + w]
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, None, None, None, None, grad_bias, None, None, None, None, None


bank_linear = torch.ops.pruning_tools.bank_linear.default
bank_conv2d = torch.ops.pruning_tools.bank_conv2d.default

__all__ = ["NAMESPACE", "BankConv2dFunction", "BankLinearFunction", "bank_conv2d", "bank_linear", "checked", "out_size"]
