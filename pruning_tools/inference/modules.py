"""Inference from the packed bank-sparse format: ``y = x Wᵀ + b`` straight from values + indices.

``BankSparseLinear`` holds a weight as ``export.PackedTensor`` buffers and multiplies with the C
kernel ``bank_sparse`` of ``pruning_tools._native`` (float32 on CPU, OpenMP over output rows), or with a
pure-PyTorch gather where that kernel is unavailable, for other dtypes/devices, and when autograd
needs a gradient through ``x``. ``BankSparseConv1x1`` runs 1×1 convolutions through the same path.

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

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import _native
from ..config import ParamSpec
from ..export import PackedTensor, pack, read_packed, unpack

GATHER_CHUNK = 1 << 22  # elements of the [batch, rows, nnz] product the fallback builds at once


class BankSparseLinear(nn.Module):
    """``nn.Linear`` with a bank-sparse weight stored packed (values + in-bank indices).

    ``packed``: the weight ``[out, in]`` (or a 1×1 conv weight ``[out, in, 1, ...]``), see
    ``export.pack``. ``bias``: ``[out]`` or None. Input ``[..., in]`` → output ``[..., out]``.
    The weight is a set of buffers (inference module: no gradient for the weight).
    """

    def __init__(self, packed: PackedTensor, bias: Tensor | None = None) -> None:
        super().__init__()
        shape = tuple(packed.shape)
        if len(shape) < 2 or any(s != 1 for s in shape[2:]) or packed.out_dim != 0:
            raise ValueError(
                f"packed weight of shape {list(shape)} (out_dim={packed.out_dim}) is not allowed: "
                "expected a Linear weight [out, in] or a 1x1 conv weight [out, in, 1, ...]"
            )
        self.out_features, self.in_features = shape[0], shape[1]
        self.bank_size = packed.bank_size
        self.weight_shape = shape
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias of shape {list(bias.shape)} is not allowed: expected [{self.out_features}]")
        self.register_buffer("values", packed.values.contiguous())  # [out, banks, k]
        self.register_buffer("indices", packed.indices.contiguous())  # [out, banks, k]
        self.register_buffer("tail_values", packed.tail_values.contiguous())  # [out, tail_k]
        self.register_buffer("tail_indices", packed.tail_indices.contiguous())  # [out, tail_k]
        self.register_buffer("bias", None if bias is None else bias.detach().clone().contiguous())
        self._columns: Tensor | None = None  # [out, nnz] int64 input column of each stored weight
        self._kernel_key: tuple | None = None  # what _kernel_args was computed for
        self._kernel_args: tuple | None = None

    # ------------------------------------------------------------ construction

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, bank_size: int | ParamSpec = 64, sparsity: float | None = None
    ) -> BankSparseLinear:
        """Pack a pruned ``nn.Linear`` (its weight must be bank-balanced, see ``export.check_balanced``).

        ``bank_size`` may be the weight's ``ParamSpec`` from the pruner (``pruned_specs(prune)[name]``):
        bank size and budget then come from it.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear={type(linear).__name__} is not allowed: expected a torch.nn.Linear")
        bank_size, sparsity = _geometry(bank_size, sparsity)
        return cls(pack(linear.weight, bank_size, sparsity=sparsity, name="weight"), linear.bias)

    @classmethod
    def from_file(cls, path: str | Path, name: str) -> BankSparseLinear:
        """Build from a packed file (``export.save_packed``): weight ``f"{name}.weight"`` and, when
        the file has it, bias ``f"{name}.bias"``."""
        tensors = read_packed(path)
        weight = tensors.get(f"{name}.weight")
        if not isinstance(weight, PackedTensor):
            found = sorted(n for n, t in tensors.items() if isinstance(t, PackedTensor))
            raise KeyError(f"name={name!r}: {path} has no packed tensor {name}.weight (packed: {found})")
        bias = tensors.get(f"{name}.bias")
        return cls(weight, bias if isinstance(bias, Tensor) else None)

    def packed(self) -> PackedTensor:
        return PackedTensor(
            self.values, self.indices, self.tail_values, self.tail_indices, self.weight_shape, self.bank_size
        )

    def dense_weight(self) -> Tensor:
        """The weight as a dense tensor ``[out, in, ...]`` (zeros where nothing is stored)."""
        return unpack(self.packed())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bank_size={self.bank_size}, "
            f"k={self.values.shape[-1]}, tail_k={self.tail_values.shape[-1]}, bias={self.bias is not None}"
        )

    # ------------------------------------------------------------ compute

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input of shape {list(x.shape)} is not allowed: expected [..., {self.in_features}]")
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # [batch, in]
        kernel = self._kernel_call(x2)
        if kernel is None:
            y = self._gather(x2)
        else:
            lib, weight_args = kernel
            x2 = x2.contiguous()
            y = torch.empty(x2.shape[0], self.out_features, dtype=torch.float32)  # [batch, out]
            if lib.bank_linear(x2.data_ptr(), x2.shape[0], self.in_features, y.data_ptr(), *weight_args):
                raise MemoryError(f"bank-sparse kernel: no memory for its [{self.in_features}, {x2.shape[0]}] scratch")
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def _kernel_call(self, x: Tensor):
        """``(library, weight arguments)`` for the C kernel, or None where the fallback applies
        (kernel unavailable, not float32 on CPU, or a gradient is needed through ``x``)."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
            return None
        lib = _native.library("bank_sparse")
        b = self._buffers  # direct access and no loops: this runs on every call
        values, bias = b["values"], b["bias"]
        key = (
            id(lib),
            values.data_ptr(),
            b["indices"].data_ptr(),
            b["tail_values"].data_ptr(),
            b["tail_indices"].data_ptr(),
            None if bias is None else bias.data_ptr(),
            values.dtype,
        )  # moved/converted
        if key != self._kernel_key:  # check and describe the weight again
            parts = [b[name] for name in ("values", "indices", "tail_values", "tail_indices", "bias")]
            tail_values = b["tail_values"]
            usable = (
                lib is not None
                and all(t is None or (t.device.type == "cpu" and t.is_contiguous()) for t in parts)
                and values.dtype == tail_values.dtype == torch.float32
                and b["indices"].dtype == torch.uint8
                and (bias is None or bias.dtype == torch.float32)
            )
            args = (
                *key[1:6],
                self.out_features,
                values.shape[1],
                values.shape[2],
                self.bank_size,
                tail_values.shape[1],
            )
            self._kernel_key, self._kernel_args = key, ((lib, args) if usable else None)
        return self._kernel_args

    def _gather(self, x: Tensor) -> Tensor:
        """Pure-PyTorch ``y[b, o] = sum_j values[o, j] * x[b, columns[o, j]]`` (+ bias), in row chunks."""
        if self._columns is None or self._columns.device != x.device:
            self._columns = self._stored_columns().to(x.device)
        columns = self._columns  # [out, nnz]
        values = torch.cat([self.values.flatten(1), self.tail_values], dim=1).to(x)  # [out, nnz]
        nnz = max(1, columns.shape[1])
        chunk = max(1, GATHER_CHUNK // (nnz * max(1, x.shape[0])))
        parts = [
            (x[:, columns[o : o + chunk]] * values[o : o + chunk]).sum(-1)  # [batch, chunk]
            for o in range(0, self.out_features, chunk)
        ]
        y = torch.cat(parts, dim=1) if parts else x.new_zeros(x.shape[0], 0)
        return y + self.bias.to(y) if self.bias is not None else y

    def _stored_columns(self) -> Tensor:
        banks = self.values.shape[1]
        start = torch.arange(banks, device=self.indices.device) * self.bank_size  # [banks]
        full = (start[:, None] + self.indices.long()).flatten(1)  # [out, banks * k]
        tail = banks * self.bank_size + self.tail_indices.long()  # [out, tail_k]
        return torch.cat([full, tail], dim=1)  # [out, nnz]


class BankSparseConv1x1(BankSparseLinear):
    """A 1×1 convolution (1-, 2- or 3-D, groups 1, padding 0, any stride) on the bank-sparse path.

    Input ``[N, in, *spatial]`` → output ``[N, out, *spatial / stride]``.
    """

    def __init__(self, packed: PackedTensor, bias: Tensor | None = None, stride: Iterable[int] | int = 1) -> None:
        super().__init__(packed, bias)
        dims = len(self.weight_shape) - 2
        stride = (stride,) * dims if isinstance(stride, int) else tuple(stride)
        if dims < 1 or len(stride) != dims:
            raise ValueError(f"stride={stride} is not allowed for a {dims}-D 1x1 convolution")
        self.stride = stride

    @classmethod
    def from_conv(
        cls, conv: nn.modules.conv._ConvNd, bank_size: int | ParamSpec = 64, sparsity: float | None = None
    ) -> BankSparseConv1x1:
        """Pack a pruned 1×1 ``nn.Conv1d/2d/3d`` (groups 1, no padding); ``bank_size`` as in ``from_linear``."""
        if not is_pointwise_conv(conv):
            raise ValueError(f"conv={conv} is not allowed: expected a 1x1 Conv1d/2d/3d with groups=1 and padding 0")
        bank_size, sparsity = _geometry(bank_size, sparsity)
        packed = pack(conv.weight, bank_size, sparsity=sparsity, name="weight")
        return cls(packed, conv.bias, conv.stride)

    def forward(self, x: Tensor) -> Tensor:
        dims = len(self.stride)
        if x.dim() != dims + 2:
            raise ValueError(
                f"input of shape {list(x.shape)} is not allowed: expected [N, {self.in_features}, {dims} spatial dims]"
            )
        if any(s != 1 for s in self.stride):
            x = x[(slice(None), slice(None), *(slice(None, None, s) for s in self.stride))]
        y = super().forward(x.movedim(1, -1))  # [N, *spatial, out]
        return y.movedim(-1, 1)  # [N, out, *spatial]


def is_pointwise_conv(module: nn.Module) -> bool:
    """A forward ``Conv1d/2d/3d`` with kernel 1, groups 1 and no padding."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and all(k == 1 for k in module.kernel_size)
        and module.groups == 1
        and (module.padding == "valid" or all(p == 0 for p in module.padding))
    )


def _geometry(bank_size: int | ParamSpec, sparsity: float | None) -> tuple[int, float | None]:
    """``(bank_size, sparsity)`` from a number or from a pruner's ``ParamSpec``."""
    if isinstance(bank_size, ParamSpec):
        if bank_size.balance != "fix":
            raise ValueError(f"spec={bank_size} is not allowed: expected a bank-balanced weight (balance='fix')")
        return bank_size.bank_size, bank_size.sparsity if sparsity is None else sparsity
    return bank_size, sparsity


__all__ = ["BankSparseLinear", "BankSparseConv1x1", "is_pointwise_conv"]
