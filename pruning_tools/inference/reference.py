"""The pure-PyTorch products from packed banks: what GPUs, other dtypes and machines without a
compiler run, and what the tests hold the C kernel to.

``linear``: ``y[b, o] = sum_j values[o, j] * x[b, column[o, j]] + bias[o]``, gathered in chunks of rows.
``conv2d``: for each kernel position, the strided, shifted view of the padded input is a linear
product over the input channels with that position's rows; the sum over positions is the convolution.
Neither builds the dense weight. ``dense_rows`` does (for gradients only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GATHER_CHUNK = 1 << 22  # elements of the [batch, rows, nnz] product built at once


def columns(indices: Tensor, tail_indices: Tensor, bank_size: int) -> Tensor:
    """``[rows, nnz]`` int64 input column of every stored weight (full banks, then the tail)."""
    rows, banks, _ = indices.shape
    start = torch.arange(banks, device=indices.device) * bank_size  # [banks]
    full = (start[:, None] + indices.long()).reshape(rows, -1)  # [rows, banks * k]
    tail = banks * bank_size + tail_indices.long()  # [rows, tail_k]
    return torch.cat([full, tail], dim=1)


def stored_values(values: Tensor, tail_values: Tensor) -> Tensor:
    """``[rows, nnz]``: the stored weights in the order of ``columns``."""
    return torch.cat([values.reshape(values.shape[0], -1), tail_values], dim=1)


def linear(
    x: Tensor,
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
) -> Tensor:
    """``x [batch, in]`` -> ``[batch, rows]`` in the dtype of ``x``."""
    cols = columns(indices, tail_indices, bank_size).to(x.device)  # [rows, nnz]
    vals = stored_values(values, tail_values).to(x)  # [rows, nnz]
    rows, nnz = cols.shape
    chunk = max(1, GATHER_CHUNK // (max(1, nnz) * max(1, x.shape[0])))
    parts = [(x[:, cols[o : o + chunk]] * vals[o : o + chunk]).sum(-1) for o in range(0, rows, chunk)]  # [batch, chunk]
    y = torch.cat(parts, dim=1) if parts else x.new_zeros(x.shape[0], 0)
    return y + bias.to(y) if bias is not None else y


def conv2d(
    x: Tensor,
    values: Tensor,
    indices: Tensor,
    tail_values: Tensor,
    tail_indices: Tensor,
    bias: Tensor | None,
    bank_size: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """``x [n, c, h, w]`` -> ``[n, o, oh, ow]``; rows ``(o, kh, kw)`` along input channels (channels
    last); ``padding`` (top, bottom, left, right) with zeros."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    xp = F.pad(x, (padding[2], padding[3], padding[0], padding[1]))  # [n, c, H, W] padded
    n, c, hp, wp = xp.shape
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    kk = kh * kw
    out_c = values.shape[0] // kk
    y = x.new_zeros(n * oh * ow, out_c)
    for r in range(kk):
        i, j = divmod(r, kw)
        view = xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
        flat = view.permute(0, 2, 3, 1).reshape(-1, c)  # [n * oh * ow, c]
        y += linear(flat, values[r::kk], indices[r::kk], tail_values[r::kk], tail_indices[r::kk], None, bank_size)
    y = y.reshape(n, oh, ow, out_c).permute(0, 3, 1, 2)  # [n, o, oh, ow]
    if bias is not None:
        y = y + bias.to(y)[:, None, None]
    return y.contiguous()


def dense_rows(
    values: Tensor, indices: Tensor, tail_values: Tensor, tail_indices: Tensor, bank_size: int, row_len: int
) -> Tensor:
    """The weight as dense rows ``[rows, row_len]`` (zeros where nothing is stored)."""
    out = values.new_zeros(values.shape[0], row_len)
    out.scatter_add_(1, columns(indices, tail_indices, bank_size), stored_values(values, tail_values))
    return out


__all__ = ["GATHER_CHUNK", "columns", "conv2d", "dense_rows", "linear", "stored_values"]
