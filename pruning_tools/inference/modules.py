"""Inference modules computing straight from the packed bank-sparse format (values + in-bank indices).

- ``BankSparseLinear``: ``nn.Linear`` (or transformers' ``Conv1D``, weight ``[in, out]``, or a 1×1
  conv weight) ``y = x Wᵀ + b``.
- ``BankSparseConv``: ``nn.Conv1d`` / ``nn.Conv2d`` with any kernel, stride, padding (any
  ``padding_mode``), dilation, groups 1; and 1×1 ``nn.Conv3d``. Its weight rows are ``(out, kh, kw)``
  along the input channels (channels-last layout), so the in-bank indices address input channels: the
  kernel reads them from the input planes directly, without a dense weight or an unfolded input.

The packed tensors are buffers (``state_dict`` holds them; loading one into a converted model checks
it first). Every packed tensor a module is built from or loads is checked (``export.check_packed``)
before any product runs. In eager mode a float32 CPU input goes straight to the C kernel
(``pruning_tools._native``, kernel ``bank_sparse``); under ``torch.compile``, ``torch.jit.trace``,
``torch.export``, for gradients, other dtypes and devices, the modules call the ``torch.ops``
operators of ``inference.ops``, whose pure-PyTorch path (``inference.reference``) serves where the
kernel does not.

>>> import torch
>>> from pruning_tools.masks import bank_mask
>>> fc = torch.nn.Linear(256, 64)
>>> with torch.no_grad():
...     _ = fc.weight.mul_(bank_mask(fc.weight, None, 0.9375))  # keep 4 of every 64
>>> sparse = BankSparseLinear.from_linear(fc)
>>> x = torch.randn(8, 256)
>>> bool(torch.allclose(sparse(x), fc(x), atol=1e-5))
True
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _native
from .. import geometry as G
from ..config import ParamSpec
from ..export import PARTS, PackedTensor, check_packed, pack, read_packed, unpack
from ..layer_kinds import is_transposed_linear
from . import native, ops

GeometrySource = Union[int, ParamSpec]  # a bank size (channels-last rows), or the pruner's spec of the weight


class _Fast(NamedTuple):
    """What the eager path checked, and what it must find unchanged to skip the checks."""

    entry: ops.Checked  # its signature: what the kernel reads of the five tensors; its storages: held
    described: native.Described  # entry.described, which the fast path has (never None here)
    lib: Any


def _eager(x: Tensor) -> bool:
    """A plain float32 CPU tensor outside tracing and compiling, and no gradient asked for."""
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and type(x) is Tensor
        and x.dtype is torch.float32
        and x.is_cpu
        and not (x.requires_grad and torch.is_grad_enabled())
    )


def _planar(x: Tensor) -> Tensor:
    """``x`` itself when NCHW or channels-last (the kernel reads either), else an NCHW copy."""
    return x if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) else x.contiguous()


def _needs_grad(x: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


def module_tensor(module: nn.Module, name: str) -> Tensor | None:
    """``module.<name>`` (a parameter or buffer such as ``bias``), None when it is None or absent; a
    ``TypeError`` when it is something else (a submodule)."""
    value = getattr(module, name, None)
    if value is not None and not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is a {type(value).__name__}: expected a tensor or None")
    return value


def module_weight(module: nn.Module) -> Tensor:
    """``module.weight``; a ``TypeError`` when the module has no weight tensor."""
    weight = module_tensor(module, "weight")
    if weight is None:
        raise TypeError(f"{type(module).__name__} has no weight tensor: expected a module with a weight")
    return weight


class _BankSparse(nn.Module):
    """Buffers, checks, the eager fast path and state handling shared by the modules."""

    bank_size: int
    weight_shape: tuple[int, ...]
    layout: str
    out_dim: int
    kernel_positions: int  # rows per output channel
    row_len: int

    def _init_packed(self, packed: PackedTensor, bias: Tensor | None, out_features: int) -> None:
        if not isinstance(packed, PackedTensor):
            raise TypeError(f"packed={type(packed).__name__} is not allowed: expected an export.PackedTensor")
        check_packed(packed, "packed weight")
        self.bank_size, self.weight_shape = packed.bank_size, tuple(packed.shape)
        self.layout, self.out_dim = packed.layout, packed.out_dim
        self.row_len = packed.row_len
        if bias is not None and (tuple(bias.shape) != (out_features,) or not bias.is_floating_point()):
            raise ValueError(
                f"bias of shape {list(bias.shape)} ({bias.dtype}) is not allowed: expected floating [{out_features}]"
            )
        for part in PARTS:
            self.register_buffer(part, getattr(packed, part).detach().clone().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone().contiguous())
        self._fast: _Fast | None = None

    # ------------------------------------------------------------ the eager path

    def _parts(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """The buffers ``(values, indices, tail_values, tail_indices, bias)``; a ``RuntimeError`` when a
        packed one was set to None."""
        b = self._buffers
        values, indices, tail_values, tail_indices = b["values"], b["indices"], b["tail_values"], b["tail_indices"]
        if values is None or indices is None or tail_values is None or tail_indices is None:
            missing = [part for part in PARTS if b[part] is None]
            raise RuntimeError(f"{type(self).__name__}: packed buffers {missing} are None: expected tensors")
        return values, indices, tail_values, tail_indices, b["bias"]

    def _fast_path(self) -> _Fast | None:
        """The kernel descriptor of the current buffers, rebuilt (and checked) when what the kernel reads
        of them changed (``ops.signature``: a buffer replaced, its storage swapped, its indices changed in
        place); None where the kernel cannot serve them."""
        parts = self._parts()
        fast = self._fast
        lib = _native.library("bank_sparse")
        if fast is not None and fast.lib is lib and fast.entry.signature == ops.signature(parts):
            return fast
        if lib is None:
            return None
        entry = ops.checked_entry(*parts, self.bank_size, self.row_len, self.kernel_positions, "packed weight")
        if entry.described is None:
            return None
        self._fast = _Fast(entry, entry.described, lib)
        return self._fast

    # ------------------------------------------------------------ state

    def packed(self) -> PackedTensor:
        """The weight as a ``PackedTensor`` (the module's buffers, not copies)."""
        values, indices, tail_values, tail_indices, _ = self._parts()
        return PackedTensor(values, indices, tail_values, tail_indices, self.weight_shape, self.bank_size, self.layout,
                            self.out_dim)  # fmt: skip

    def dense_weight(self) -> Tensor:
        """The weight as a dense tensor of its original shape (zeros where nothing is stored)."""
        return unpack(self.packed())

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing: list[str],
        unexpected: list[str],
        errors: list[str],
    ) -> None:
        """Check the packed tensors being loaded (a file is untrusted) before they replace the buffers."""
        incoming: dict[str, Any] = {part: state_dict.get(prefix + part) for part in PARTS}  # untrusted: checked
        if all(isinstance(t, Tensor) for t in incoming.values()):
            candidate = PackedTensor(**incoming, shape=self.weight_shape, bank_size=self.bank_size,
                                     layout=self.layout, out_dim=self.out_dim)  # fmt: skip
            check_packed(candidate, f"state_dict entry {prefix}(values, indices, tail_values, tail_indices)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        self._fast = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fast"] = None  # ctypes pointers: rebuilt on first use (deepcopy, pickling)
        state.pop("_relu_output", None)  # a weak reference to a past output (inference.relu)
        return state


class BankSparseLinear(_BankSparse):
    """``nn.Linear`` with a bank-sparse weight stored packed (values + in-bank indices).

    ``packed``: the weight ``[out, in]`` (``out_dim=0``), ``[in, out]`` with ``out_dim=1`` (transformers'
    ``Conv1D``), or a 1×1 conv weight ``[out, in, 1, ...]``; see ``export.pack``. ``bias``: ``[out]``
    or None. Input ``[..., in]`` → output ``[..., out]``.
    """

    kernel_positions = 1

    def __init__(self, packed: PackedTensor, bias: Tensor | None = None) -> None:
        super().__init__()
        shape = tuple(packed.shape) if isinstance(packed, PackedTensor) else ()
        ok = (len(shape) == 2 and packed.out_dim in (0, 1)) or (
            len(shape) > 2 and all(s == 1 for s in shape[2:]) and packed.out_dim == 0
        )
        if not ok:
            raise ValueError(
                f"packed weight of shape {list(shape)} (out_dim={getattr(packed, 'out_dim', None)}) is not allowed: "
                "expected a Linear weight [out, in], a Conv1D weight [in, out] (out_dim=1) or a 1x1 conv weight"
            )
        out_dim = packed.out_dim
        self.out_features, self.in_features = shape[out_dim], shape[1 - out_dim]
        self._init_packed(packed, bias, self.out_features)

    @classmethod
    def from_linear(
        cls, linear: nn.Module, bank_size: GeometrySource = 64, sparsity: float | None = None
    ) -> BankSparseLinear:
        """Pack a pruned ``nn.Linear`` (or transformers' ``Conv1D``: weight ``[in, out]``); its weight
        must be bank-balanced (``export.check_balanced``). ``bank_size`` may be the weight's ``ParamSpec``
        from the pruner (``pruned_specs(prune)[name]``): bank size, layout, output dim and budget then
        come from it, and the packed shapes are the budget's."""
        transposed = is_transposed_linear(linear)
        if not isinstance(linear, nn.Linear) and not transposed:
            raise TypeError(
                f"linear={type(linear).__name__} is not allowed: expected a torch.nn.Linear or transformers' Conv1D"
            )
        geometry, target = _geometry_and_target(bank_size, sparsity, out_dim=1 if transposed else 0)
        if transposed and geometry.out_dim != 1:
            raise ValueError(f"spec={bank_size} is not allowed for a Conv1D weight [in, out]: expected out_dim=1")
        return cls(_pack(module_weight(linear), geometry, target), module_tensor(linear, "bias"))

    @classmethod
    def from_file(cls, path: str | Path, name: str) -> BankSparseLinear:
        """Build from a packed file (``export.save_packed``): weight ``f"{name}.weight"`` and, when
        the file has it, bias ``f"{name}.bias"``."""
        weight, bias = _from_file(path, name)
        return cls(weight, bias)

    def extra_repr(self) -> str:
        values, _, tail_values, _, bias = self._parts()
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bank_size={self.bank_size}, "
            f"k={values.shape[-1]}, tail_k={tail_values.shape[-1]}, bias={bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_tracing() and x.shape[-1] != self.in_features:  # (the operator checks too)
            raise ValueError(f"input of shape {list(x.shape)} is not allowed: expected [..., {self.in_features}]")
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # [batch, in]
        fast = self._fast_path() if _eager(x2) else None
        if fast is not None:
            y = native.linear(fast.described, x2 if x2.is_contiguous() else x2.contiguous())
        else:
            values, indices, tail_values, tail_indices, bias = self._parts()
            op = ops.BankLinearFunction.apply if _needs_grad(x2, bias) else ops.bank_linear
            y = op(x2, values, indices, tail_values, tail_indices, bias, self.bank_size)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def forward_rows(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Output features ``[start, stop)`` only (the query or the key/value rows of a fused attention
        projection): ``[..., in]`` -> ``[..., stop - start]``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input of shape {list(x.shape)} is not allowed: expected [..., {self.in_features}]")
        values, indices, tail_values, tail_indices, full_bias = self._parts()
        parts = (values[start:stop], indices[start:stop], tail_values[start:stop], tail_indices[start:stop])  # views
        bias = None if full_bias is None else full_bias[start:stop]
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        described = None
        if _eager(x2):
            described = ops.checked(*parts, bias, self.bank_size, self.row_len, 1, "packed weight")
        if described is not None:
            y = native.linear(described, x2 if x2.is_contiguous() else x2.contiguous())
        else:
            op = ops.BankLinearFunction.apply if _needs_grad(x2, bias) else ops.bank_linear
            y = op(x2, *parts, bias, self.bank_size)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], stop - start)


class BankSparseConv(_BankSparse):
    """A convolution on the bank-sparse path: ``nn.Conv1d`` / ``nn.Conv2d`` (any kernel, stride,
    padding, dilation, ``padding_mode``; groups 1), or a 1×1 ``nn.Conv3d`` (stride, no padding).

    ``packed``: the weight ``[out, in, *kernel]`` packed channels-last (any layout for 1×1).
    Input ``[N, in, *spatial]`` → output ``[N, out, *out_spatial]``, as ``nn.Conv{1,2,3}d``.
    """

    fused_relu = False  # the model applies a ReLU to every output of this convolution (inference.relu)

    def __init__(
        self,
        packed: PackedTensor,
        bias: Tensor | None = None,
        stride: Sequence[int] | int = 1,
        padding: Sequence[int] | int | str = 0,
        dilation: Sequence[int] | int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        shape = tuple(packed.shape) if isinstance(packed, PackedTensor) else ()
        dims = len(shape) - 2
        if dims not in (1, 2, 3) or packed.out_dim != 0:
            raise ValueError(
                f"packed weight of shape {list(shape)} is not allowed: expected a conv weight [out, in, *kernel]"
            )
        kernel = shape[2:]
        pointwise = all(k == 1 for k in kernel)
        if not pointwise and packed.layout != "channels_last":
            raise ValueError(
                f"packed weight of layout {packed.layout!r} is not allowed for kernel {list(kernel)}: expected "
                "'channels_last' (banks along the input channels)"
            )
        self.in_channels, self.out_channels, self.kernel_size = shape[1], shape[0], kernel
        self.stride = _tuple("stride", stride, dims, minimum=1)
        self.dilation = _tuple("dilation", dilation, dims, minimum=1)
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                f"padding_mode={padding_mode!r} is not allowed: expected 'zeros', 'reflect', 'replicate' or 'circular'"
            )
        self.padding_mode = padding_mode
        self.padding = _padding(padding, kernel, self.stride, self.dilation)  # (before, after) per spatial dim
        if dims == 3 and not (pointwise and all(p == (0, 0) for p in self.padding)):
            raise ValueError(
                f"a 3-D convolution with kernel {list(kernel)} and padding is not supported: expected 1x1x1"
            )
        if max(self.stride) > 8:
            raise ValueError(f"stride={self.stride} is not allowed: expected strides up to 8")
        self.kernel_positions = math.prod(kernel)
        self._init_packed(packed, bias, self.out_channels)

    @classmethod
    def from_conv(
        cls, conv: nn.Module, bank_size: GeometrySource = 64, sparsity: float | None = None
    ) -> BankSparseConv:
        """Pack a pruned ``nn.Conv1d`` / ``nn.Conv2d`` (groups 1), or a 1×1 ``nn.Conv3d``; ``bank_size``
        as in ``BankSparseLinear.from_linear``."""
        why = conv_unsupported(conv)
        if why or not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):  # (conv_unsupported checks the class)
            raise ValueError(f"conv={conv} is not allowed: {why}")
        geometry, target = _geometry_and_target(bank_size, sparsity)
        return cls(_pack(conv.weight, geometry, target), conv.bias, conv.stride, conv.padding,
                   conv.dilation, conv.padding_mode)  # fmt: skip

    @classmethod
    def from_file(cls, path: str | Path, name: str, **conv_options: Any) -> BankSparseConv:
        """Build from a packed file: weight ``f"{name}.weight"``, bias ``f"{name}.bias"`` when the file
        has it; ``conv_options``: stride, padding, dilation, padding_mode (the file does not hold them)."""
        weight, bias = _from_file(path, name)
        return cls(weight, bias, **conv_options)

    def extra_repr(self) -> str:
        values, _, tail_values, _, bias = self._parts()
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bank_size={self.bank_size}, k={values.shape[-1]}, "
            f"tail_k={tail_values.shape[-1]}, bias={bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        dims = len(self.kernel_size)
        if not torch.jit.is_tracing() and (x.dim() != dims + 2 or x.shape[1] != self.in_channels):
            raise ValueError(
                f"input of shape {list(x.shape)} is not allowed: expected [N, {self.in_channels}, {dims} spatial dims]"
            )
        if dims == 3:  # 1x1x1: strided subsample, the volume read as one row of positions
            x = x[:, :, :: self.stride[0], :: self.stride[1], :: self.stride[2]]
            n, c, *spatial = x.shape
            y = self._conv2d(x.reshape(n, c, 1, -1), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1))
            return y.reshape(n, self.out_channels, *spatial)
        padding = self.padding
        if self.padding_mode != "zeros":
            pads = [p for pair in reversed(padding) for p in pair]  # F.pad: last dim first
            x = F.pad(x, pads, mode=self.padding_mode)
            padding = tuple((0, 0) for _ in padding)
        if dims == 1:  # [N, C, L] -> [N, C, 1, L]
            y = self._conv2d(x.unsqueeze(2), (1, *self.kernel_size), (1, *self.stride), (0, 0, *padding[0]),
                             (1, *self.dilation))  # fmt: skip
            return y.squeeze(2)
        return self._conv2d(x, self.kernel_size, self.stride, (*padding[0], *padding[1]), self.dilation)

    def applies_relu(self) -> bool:
        """Whether an eager call applies the ReLU that follows this convolution in the model
        (``fused_relu``, set by ``to_bank_sparse`` where the graph allows: eval mode only; not under
        ``torch.inference_mode``, whose tensors cannot tell whether they changed since)."""
        return self.fused_relu and not self.training and not torch.is_inference_mode_enabled()

    def relu_applied_to(self, y: Tensor) -> bool:
        """Whether ``y`` is this module's last output, ReLU applied in the kernel, unchanged since."""
        mark = self.__dict__.get("_relu_output")
        return mark is not None and mark[0]() is y and mark[1] == y._version

    def _conv2d(self, x: Tensor, kernel, stride, padding, dilation) -> Tensor:
        fast = self._fast_path() if _eager(x) else None
        if fast is not None:
            size = ops.out_size((x.shape[2], x.shape[3]), kernel, stride, padding, dilation)
            if min(size) >= 1:
                relu = self.applies_relu()
                y = native.conv2d(fast.described, _planar(x), kernel, stride, padding, dilation, size, relu)
                if relu:
                    self.__dict__["_relu_output"] = (weakref.ref(y), y._version)
                return y
        values, indices, tail_values, tail_indices, bias = self._parts()
        op = ops.BankConv2dFunction.apply if _needs_grad(x, bias) else ops.bank_conv2d
        return op(x, values, indices, tail_values, tail_indices, bias, self.bank_size,
                  list(kernel), list(stride), list(padding), list(dilation))  # fmt: skip


# ---------------------------------------------------------------- what converts


def is_pointwise_conv(module: nn.Module) -> bool:
    """A forward ``Conv1d/2d/3d`` with kernel 1, groups 1 and no padding."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and all(k == 1 for k in module.kernel_size)
        and module.groups == 1
        and (module.padding == "valid" or all(p == 0 for p in module.padding))
    )


def conv_unsupported(conv: nn.Module) -> str | None:
    """Why ``BankSparseConv`` cannot compute ``conv``, or None when it can."""
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        return "transposed convolutions are not supported"
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return f"{type(conv).__name__} is not a convolution"
    if conv.groups != 1:
        return f"grouped convolution (groups={conv.groups}): its rows do not span the input channels"
    if isinstance(conv, nn.Conv3d) and not is_pointwise_conv(conv):
        return "3-D convolutions are supported for kernel 1 without padding only"
    if max(conv.stride) > 8:
        return f"stride {conv.stride} > 8"
    return None


# ---------------------------------------------------------------- helpers


def _geometry_and_target(
    source: GeometrySource, sparsity: float | None, out_dim: int = 0
) -> tuple[G.BankGeometry, float | None]:
    """The bank geometry of a weight and its target sparsity (``None``: its measured sparsity is the
    budget), from a bank size (channels-last rows, ``out_dim``) or from the pruner's spec of the weight
    (its geometry, and its sparsity unless ``sparsity`` is given)."""
    if isinstance(source, ParamSpec):
        if source.balance != "fix":
            raise ValueError(f"spec={source} is not allowed: expected a bank-balanced weight (balance='fix')")
        return source.geometry, source.sparsity if sparsity is None else sparsity
    return G.BankGeometry(source, "channels_last", out_dim), sparsity


def _pack(weight: Tensor, geometry: G.BankGeometry, sparsity: float | None = None) -> PackedTensor:
    """Pack ``weight`` by ``geometry``; with a target ``sparsity`` the packed shapes are its budgets
    (``None``: the budgets of its measured sparsity)."""
    slots = None
    if sparsity is not None:
        row_len = G.row_length(tuple(weight.shape), geometry.layout, geometry.out_dim)
        budget = G.bank_budget(row_len, geometry.bank_size, sparsity)
        slots = (budget.keep, budget.tail_keep)
    return pack(weight, geometry.bank_size, geometry.layout, geometry.out_dim, sparsity, name="weight", slots=slots)


def _from_file(path: str | Path, name: str) -> tuple[PackedTensor, Tensor | None]:
    tensors = read_packed(path)
    weight = tensors.get(f"{name}.weight")
    if not isinstance(weight, PackedTensor):
        found = sorted(n for n, t in tensors.items() if isinstance(t, PackedTensor))
        raise KeyError(f"name={name!r}: {path} has no packed tensor {name}.weight (packed: {found})")
    bias = tensors.get(f"{name}.bias")
    return weight, bias if isinstance(bias, Tensor) else None


def _tuple(argument: str, value: Sequence[int] | int, dims: int, minimum: int) -> tuple[int, ...]:
    out = (value,) * dims if isinstance(value, int) else tuple(value)
    if len(out) != dims or not all(isinstance(v, int) and v >= minimum for v in out):
        raise ValueError(f"{argument}={value!r} is not allowed: expected {dims} integer(s) >= {minimum}")
    return out


def _padding(
    padding: Sequence[int] | int | str, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` per spatial dim, from an int, a tuple, ``'valid'`` or ``'same'`` (as
    ``nn.Conv``: the extra one of an odd total on the after side)."""
    dims = len(kernel)
    if padding == "valid":
        return tuple((0, 0) for _ in kernel)
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' is not allowed with stride {stride}: expected stride 1")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, str):
        raise ValueError(f"padding={padding!r} is not allowed: expected 'valid', 'same' or {dims} integer(s) >= 0")
    pads = _tuple("padding", padding, dims, minimum=0)
    return tuple((p, p) for p in pads)


__all__ = [
    "BankSparseConv",
    "BankSparseLinear",
    "conv_unsupported",
    "is_pointwise_conv",
]
