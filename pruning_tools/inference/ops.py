"""The bank-sparse products as torch operators, so converted models run under ``torch.compile``,
``torch.jit.trace`` and ``torch.export`` (no graph break: the compilers see one opaque operator with a
shape function) and work with autograd (gradients through the input).

- ``torch.ops.pruning_tools.bank_linear(x [batch, in], values, indices, tail_values, tail_indices,
  bias?, bank_size) -> [batch, rows]``
- ``torch.ops.pruning_tools.bank_conv2d(x [n, c, h, w], ..., bank_size, kernel [2], stride [2],
  padding [4] (top, bottom, left, right), dilation [2]) -> [n, rows / (kh * kw), oh, ow]``

One implementation serves every device: the C kernel for float32 CPU tensors where it builds, else the
pure-PyTorch ``reference``. The packed tensors are checked (``export.check_packed``) before any product
runs; checked weights are remembered by identity and by what the kernel reads of them (``signature``:
addresses, sizes, strides, dtypes, devices, versions), so a loop over the same weights checks them once
and a storage swapped under them is checked again. Registered from Python: a ``torch.library`` operator
called from Python costs about 10 µs of dispatch here (measured; a C++ operator on torch's stable ABI
cost the same, its overhead is in the Python-side call), so the modules call the kernel directly in
eager mode and use these operators when tracing, compiling or exporting. Gradients (through the input
and bias) come from ``BankLinearFunction`` / ``BankConv2dFunction``, which the modules use when autograd
needs them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn.grad import conv2d_input

from .. import _native
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
# No weak references to the tensors (they would forbid ``torch.utils.swap_tensors``): an entry holds
# the storages it checked, so an address in a signature is that memory for as long as it is remembered.
_checked: OrderedDict[tuple, Checked] = OrderedDict()  # (signature, ids of the viewed buffers, geometry) ->
_recent: dict[int, tuple[tuple, tuple, Checked]] = {}  # id(indices) -> (ids of the five tensors, geometry, entry)


def signature(tensors: tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]) -> tuple:
    """What the kernel reads of ``(values, indices, tail_values, tail_indices, bias)``: of each, its
    address, sizes, strides, dtype, device and version counter (``-1`` for an inference tensor, which
    has none). A storage swapped under a tensor (``share_memory()``, ``.data =``, ``set_()``,
    ``load_state_dict(assign=True)``) changes its address; a write in place, its version. Written out
    flat: this runs on every eager call of a converted layer."""
    v, i, tv, ti, b = tensors
    key: tuple
    try:
        key = (v.data_ptr(), v.shape, v.stride(), v.dtype, v.device, v._version,
               i.data_ptr(), i.shape, i.stride(), i.dtype, i.device, i._version,
               tv.data_ptr(), tv.shape, tv.stride(), tv.dtype, tv.device, tv._version,
               ti.data_ptr(), ti.shape, ti.stride(), ti.dtype, ti.device, ti._version)  # fmt: skip
    except RuntimeError:  # an inference tensor among them
        key = tuple(x for t in (v, i, tv, ti) for x in (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device,
                                                          _version(t)))  # fmt: skip
    if b is None:
        return key
    return (*key, b.data_ptr(), b.shape, b.stride(), b.dtype, b.device, _version(b))


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor: no in-place change outside inference mode
        return -1


class Checked(NamedTuple):
    """A checked weight: the signature it was checked under, its descriptor (None: the kernel cannot
    serve it), and its storages, held so that no other tensor can take their addresses while it is
    remembered (an address seen again is the memory that was checked)."""

    signature: tuple
    described: native.Described | None
    storages: tuple


def _remember(
    tensors: tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None], described: native.Described | None
) -> Checked:
    return Checked(signature(tensors), described, tuple(t.untyped_storage() for t in tensors if t is not None))


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

    Remembered by the tensors (or the buffers they view) and their ``signature`` (addresses, sizes,
    strides, dtypes, devices, versions), so a loop over the same weights checks them once, and a
    storage swapped under one of them is checked again."""
    return checked_entry(values, indices, tail_values, tail_indices, bias, bank_size, row_len, kernel_positions,
                         where).described  # fmt: skip


def checked_entry(
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
    row_len: int,
    kernel_positions: int = 1,
    where: str = "bank-sparse weight",
) -> Checked:
    """``checked``, with the signature and storages it was checked under (what a module caches)."""
    # the library of the instruction-set level in force is part of the key: a weight described for one
    # level's build is described again for another's (its descriptor holds that build's entry points)
    geometry = (bank_size, row_len, kernel_positions, id(_native.library("bank_sparse")))
    parts = (values, indices, tail_values, tail_indices, bias)
    ids = tuple(map(id, parts))
    recent = _recent.get(ids[1])
    if recent is not None and recent[0] == ids and recent[1] == geometry and recent[2].signature == signature(parts):
        return recent[2]
    entry = _checked_slow(parts, geometry, where)
    _recent[ids[1]] = (ids, geometry, entry)
    while len(_recent) > CACHE_SIZE:
        del _recent[next(iter(_recent))]
    return entry


def _checked_slow(parts: tuple, geometry: tuple[int, int, int, int], where: str) -> Checked:
    """``checked`` for tensors seen before under other objects (views made anew for each call) or never;
    ``geometry``: bank size, row length, kernel positions and the id of the library in force."""
    values, indices, tail_values, tail_indices, bias = parts
    bank_size, row_len, kernel_positions, _ = geometry
    key = (signature(parts), *(None if t is None else id(_owner(t)) for t in parts), *geometry)
    hit = _checked.get(key)
    if hit is not None:
        return hit
    rows = values.shape[0] if values.dim() else 0
    check_packed(PackedTensor(values, indices, tail_values, tail_indices, (rows, row_len), bank_size), where)
    out_c = rows // kernel_positions
    if rows % kernel_positions:
        raise ValueError(f"{where}: {rows} rows are not a whole number of {kernel_positions} kernel positions")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_c or not bias.is_floating_point()):
        raise ValueError(f"{where}: bias of shape {list(bias.shape)} ({bias.dtype}): expected a float [{out_c}]")
    entry = _remember(parts, native.describe(values, indices, tail_values, tail_indices, bias, bank_size, row_len))
    _checked[key] = entry
    while len(_checked) > CACHE_SIZE:
        _checked.popitem(last=False)
    return entry


def check_input(x: Tensor, op: str) -> None:
    """The input dtype rule of the layers replaced (``nn.Linear``, ``nn.Conv*``): floating point only;
    an integer, bool or complex input is a ``TypeError`` (the dense layers raise too)."""
    if not x.is_floating_point():
        raise TypeError(f"{op}: input of dtype {x.dtype} is not allowed: expected a floating-point tensor")


def _native_input(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32


def _bank_linear(
    x: Tensor,
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
) -> Tensor:
    check_input(x, "bank_linear")
    if x.dim() != 2:
        raise ValueError(f"bank_linear: input of shape {list(x.shape)} is not allowed: expected [batch, in]")
    described = checked(values, indices, tail_values, tail_indices, bias, bank_size, x.shape[1])
    if described is not None and _native_input(x):
        return native.linear(described, x.contiguous())
    return reference.linear(x, values, indices, tail_values, tail_indices, bias, bank_size)


def out_size(
    size: tuple[int, int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int]:
    """``(oh, ow)`` of a convolution of an input ``(h, w)`` (padding: top, bottom, left, right)."""
    h, w = size
    return (
        (h + padding[0] + padding[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1,
        (w + padding[2] + padding[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1,
    )


def _check_conv_args(
    x: Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> None:
    check_input(x, "bank_conv2d")
    if x.dim() != 4:
        raise ValueError(f"bank_conv2d: input of shape {list(x.shape)} is not allowed: expected [n, c, h, w]")
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0 or max(stride) > 8:
        raise ValueError(
            f"bank_conv2d: kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation} are not allowed: "
            "expected kernel, stride (<= 8) and dilation >= 1, padding >= 0"
        )
    if min(out_size((x.shape[2], x.shape[3]), kernel, stride, padding, dilation)) < 1:
        raise ValueError(f"bank_conv2d: input of shape {list(x.shape)} is smaller than the kernel {kernel}")


def _bank_conv2d(
    x: Tensor,
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Tensor:
    # The schema's int[2] / int[4] lists as the fixed-length tuples the products take.
    k, s, d = (kernel[0], kernel[1]), (stride[0], stride[1]), (dilation[0], dilation[1])
    p = (padding[0], padding[1], padding[2], padding[3])
    _check_conv_args(x, k, s, p, d)
    described = checked(values, indices, tail_values, tail_indices, bias, bank_size, x.shape[1], k[0] * k[1])
    if described is not None and _native_input(x):
        size = out_size((x.shape[2], x.shape[3]), k, s, p, d)
        planar = x if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) else x.contiguous()
        return native.conv2d(described, planar, k, s, p, d, size)
    return reference.conv2d(x, values, indices, tail_values, tail_indices, bias, bank_size, k, s, p, d)


_LIB.impl("bank_linear", _bank_linear, "CompositeExplicitAutograd")  # every device: C kernel or PyTorch
_LIB.impl("bank_conv2d", _bank_conv2d, "CompositeExplicitAutograd")


@torch.library.register_fake(f"{NAMESPACE}::bank_linear")
def _bank_linear_fake(
    x: Tensor,
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
) -> Tensor:
    check_input(x, "bank_linear")
    return x.new_empty(x.shape[0], values.shape[0])


@torch.library.register_fake(f"{NAMESPACE}::bank_conv2d")
def _bank_conv2d_fake(
    x: Tensor,
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Tensor:
    check_input(x, "bank_conv2d")
    oh, ow = out_size((x.shape[2], x.shape[3]), kernel, stride, padding, dilation)
    return x.new_empty(x.shape[0], values.shape[0] // (kernel[0] * kernel[1]), oh, ow)


# ---------------------------------------------------------------- gradients (through the input and bias)
# Not registered on the operators (a registered autograd formula costs ~15 µs per call, even under
# no_grad): the modules call these Functions when a gradient is needed (traceable by torch.compile).


class BankLinearFunction(torch.autograd.Function):
    """``bank_linear`` with gradients for ``x`` and ``bias`` (the packed weight is constant)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        values: Tensor,
        indices: Tensor,
        tail_values: Tensor,
        tail_indices: Tensor,
        bias: Tensor | None,
        bank_size: int,
    ) -> Tensor:
        ctx.save_for_backward(values, indices, tail_values, tail_indices)
        ctx.bank_size, ctx.row_len, ctx.has_bias = bank_size, x.shape[1], bias is not None
        return bank_linear(x, values, indices, tail_values, tail_indices, bias, bank_size)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, indices, tail_values, tail_indices = ctx.saved_tensors
        weight = reference.dense_rows(values, indices, tail_values, tail_indices, ctx.bank_size, ctx.row_len)
        grad_x = grad @ weight.to(grad)  # [batch, in]
        grad_bias = grad.sum(0) if ctx.has_bias else None
        return grad_x, None, None, None, None, grad_bias, None


class BankConv2dFunction(torch.autograd.Function):
    """``bank_conv2d`` with gradients for ``x`` and ``bias``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        values: Tensor,
        indices: Tensor,
        tail_values: Tensor,
        tail_indices: Tensor,
        bias: Tensor | None,
        bank_size: int,
        kernel: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
    ) -> Tensor:
        ctx.save_for_backward(values, indices, tail_values, tail_indices)
        ctx.bank_size, ctx.has_bias = bank_size, bias is not None
        ctx.geometry = (tuple(x.shape), tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
        return bank_conv2d(
            x, values, indices, tail_values, tail_indices, bias, bank_size, kernel, stride, padding, dilation
        )

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, indices, tail_values, tail_indices = ctx.saved_tensors
        (n, c, h, w), (kh, kw), stride, padding, dilation = ctx.geometry
        rows = reference.dense_rows(values, indices, tail_values, tail_indices, ctx.bank_size, c)  # [o * kh * kw, c]
        weight = rows.reshape(-1, kh, kw, c).permute(0, 3, 1, 2).to(grad)  # [o, c, kh, kw]
        padded = (n, c, h + padding[0] + padding[1], w + padding[2] + padding[3])
        grad_padded = conv2d_input(padded, weight, grad, stride, 0, dilation)
        grad_x = grad_padded[:, :, padding[0] : padding[0] + h, padding[2] : padding[2] + w]
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, None, None, None, None, grad_bias, None, None, None, None, None


bank_linear = torch.ops.pruning_tools.bank_linear.default
bank_conv2d = torch.ops.pruning_tools.bank_conv2d.default

__all__ = [
    "NAMESPACE",
    "BankConv2dFunction",
    "BankLinearFunction",
    "Checked",
    "bank_conv2d",
    "bank_linear",
    "check_input",
    "checked",
    "checked_entry",
    "out_size",
    "signature",
]
