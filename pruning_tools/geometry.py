"""Bank geometry, defined once: the rows of a weight, full banks and the tail, budgets, kernel strides.

A weight is read as a matrix of *rows* (``to_rows``); each row is cut into consecutive banks of
``bank_size`` weights; the last bank of a row is a shorter *tail bank* when the row length is not a
multiple of ``bank_size``. At sparsity ``s`` every full bank keeps ``k = round(bank_size * (1 - s))``
weights (at least 1) and a tail bank of length ``L`` keeps ``round(L * (1 - s))`` (at least 1, at most
``k``). ``round`` is round-half-up everywhere.

Rows (``layout``, ``out_dim``):

- a 2-D weight ``[out, in]``: ``out`` rows of length ``in``;
- a conv weight ``[out, in, *kernel]``, ``"channels_last"``: one row per (out, kernel position),
  along the input channels, ``[out * prod(kernel), in]``; ``"flat"``: ``W[o].flatten()``;
- ``"last_dim"``: rows along the last dim, ``[prod(shape[:-1]), shape[-1]]``: how an N-D parameter
  that no convolution owns is read (ViT's ``pos_embedding`` ``[1, S, D]``: ``S`` rows of ``D``), so
  its banks never run along a sequence or batch axis. For 2-D weights all three layouts agree;
- ``out_dim = 1`` (ConvTranspose ``[in, out, *kernel]``, a transposed linear ``[in, out]`` such as
  GPT-2's ``Conv1D``): the same after swapping dims 0 and 1, so rows run along the input dim;
- fewer than 2 dims: one row.

Pure shape arithmetic, plus the two views ``to_rows`` / ``from_rows``: used by the masks, the checker,
the packed format, the kernels' callers and the inspection of checkpoints.

>>> bank_budget(row_len=100, bank_size=64, sparsity=0.9375)
BankBudget(full_banks=1, keep=4, tail_len=36, tail_keep=2)
>>> row_length((256, 127, 3, 3), "channels_last"), row_length((256, 127, 3, 3), "flat")
(127, 1143)
>>> row_length((1, 197, 768), "last_dim"), row_length((768, 2304), out_dim=1)  # ViT pos_embedding, GPT-2 c_attn
(768, 768)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor

from .config import BankGeometry

# ---------------------------------------------------------------- the geometry of one weight

LAST_DIM = "last_dim"  # the layout of N-D parameters that no convolution owns


def to_rows(x: Tensor, layout: str = "channels_last", out_dim: int = 0) -> Tensor:
    """View a weight as bank rows: ``[rows, row_len]`` (see the module docstring).

    ``x``: ``[out, in, *kernel]`` (``[in, out, *kernel]`` when ``out_dim == 1``), or any tensor with
    fewer than 2 dims (one row ``[1, numel]``).
    """
    if x.dim() < 2:
        return x.reshape(1, -1)
    if out_dim == 1:
        x = x.transpose(0, 1)  # [out, in, *kernel]
    if layout == LAST_DIM:
        return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # [prod(shape[:-1]), shape[-1]]
    if layout == "flat" or x.dim() == 2:
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # [out, in * prod(kernel)]
    channels_last = (0, *range(2, x.dim()), 1)
    return x.permute(channels_last).reshape(math.prod(x.shape) // max(1, x.shape[1]), x.shape[1])  # [out * kernel, in]


def from_rows(rows: Tensor, shape: Sequence[int], layout: str = "channels_last", out_dim: int = 0) -> Tensor:
    """Inverse of ``to_rows``: ``[rows, row_len]`` back to ``shape`` (contiguous)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return rows.reshape(shape)
    oshape = (shape[1], shape[0], *shape[2:]) if out_dim == 1 else shape  # [out, in, *kernel]
    if layout in ("flat", LAST_DIM) or len(oshape) == 2:
        x = rows.reshape(oshape)
    else:
        kernel = oshape[2:]
        x = rows.reshape(oshape[0], *kernel, oshape[1])  # [out, *kernel, in]
        x = x.permute(0, len(oshape) - 1, *range(1, len(oshape) - 1))  # [out, in, *kernel]
    if out_dim == 1:
        x = x.transpose(0, 1)
    return x.contiguous()


def row_length(shape: Sequence[int], layout: str = "channels_last", out_dim: int = 0) -> int:
    """Length of one bank row of a tensor of ``shape``."""
    if len(shape) < 2:
        return math.prod(shape)
    if layout == LAST_DIM:
        return shape[0] if out_dim == 1 and len(shape) == 2 else shape[-1]
    if layout == "flat" or len(shape) == 2:
        return math.prod(n for dim, n in enumerate(shape) if dim != out_dim)
    return shape[1 - out_dim]


def row_count(shape: Sequence[int], layout: str = "channels_last", out_dim: int = 0) -> int:
    """Number of bank rows of a tensor of ``shape``."""
    if len(shape) < 2:
        return 1
    if layout == LAST_DIM and len(shape) > 2:
        return math.prod(shape[:-1])
    if layout == "flat" or len(shape) == 2:
        return shape[out_dim]
    return math.prod(shape) // shape[1 - out_dim] if shape[1 - out_dim] else 0


def split_banks(rows: Tensor, bank_size: int) -> tuple[Tensor, Tensor]:
    """``rows`` ``[rows, row_len]`` -> (full banks ``[rows, full_banks, bank_size]``, tail ``[rows, tail_len]``)."""
    full_banks = rows.shape[1] // bank_size
    split = full_banks * bank_size
    return rows[:, :split].reshape(rows.shape[0], full_banks, bank_size), rows[:, split:]


def row_blocks(shape: Sequence[int], out_dim: int = 0, max_elements: int = 1 << 22) -> list[slice]:
    """Slices of the output-channel dim (``out_dim``) holding about ``max_elements`` weights each
    (at least one channel): the rows of ``to_rows`` of each slice are consecutive rows of the whole,
    so bank computations can run block by block in bounded memory. Fewer than 2 dims: one block."""
    if len(shape) < 2 or not shape[out_dim]:
        return [slice(None)]
    channels = shape[out_dim]
    per_channel = max(1, math.prod(shape) // channels)
    step = max(1, max_elements // per_channel)
    return [slice(start, min(channels, start + step)) for start in range(0, channels, step)]


def block(x: Tensor, rows: slice, out_dim: int = 0) -> Tensor:
    """The part of ``x`` (a view) holding the output channels ``rows`` (a slice from ``row_blocks``)."""
    if x.dim() < 2:
        return x
    return x[rows] if out_dim == 0 else x[:, rows]


class RowStrides(NamedTuple):
    """How ``to_rows`` walks a contiguous tensor: row ``r`` starts at
    ``(r // group) * group_stride + r % group``, and its elements are ``step`` apart."""

    rows: int
    row_len: int
    group: int
    group_stride: int
    step: int


def row_strides(shape: Sequence[int], layout: str = "channels_last", out_dim: int = 0) -> RowStrides | None:
    """The strides of ``to_rows`` over a contiguous tensor of ``shape`` (what the C kernels walk), or
    ``None`` for a layout they do not walk (flat ConvTranspose)."""
    numel = math.prod(shape)
    if len(shape) < 2:
        return RowStrides(1, numel, 1, numel, 1)
    kernel = math.prod(shape[2:])
    if layout == LAST_DIM and len(shape) > 2:
        if out_dim:
            return None
        return RowStrides(numel // max(1, shape[-1]), shape[-1], 1, shape[-1], 1)  # [prod(shape[:-1]), last]
    if out_dim == 0:
        if layout == "flat" or len(shape) == 2:
            row_len = math.prod(shape[1:])
            return RowStrides(shape[0], row_len, 1, row_len, 1)
        return RowStrides(shape[0] * kernel, shape[1], kernel, shape[1] * kernel, kernel)  # [out * kernel, in]
    if layout == "flat" and len(shape) > 2:
        return None
    out, inp = shape[1], shape[0]  # [in, out, *kernel]: row (o, p) starts at o * kernel + p
    return RowStrides(out * kernel, inp, 1, 1, out * kernel)


DEFAULT_GEOMETRY = BankGeometry()  # banks of 64 along channels-last rows, output channels on dim 0

# ---------------------------------------------------------------- budgets


def keep_count(n: int, sparsity: float) -> int:
    """``round(n * (1 - sparsity))``, rounding half up (no minimum)."""
    return int(math.floor(n * (1.0 - sparsity) + 0.5 + 1e-9))


class BankBudget(NamedTuple):
    """How a row of ``row_len`` weights is banked, and what each bank keeps."""

    full_banks: int  # banks of exactly bank_size weights per row
    keep: int  # non-zeros kept in each full bank
    tail_len: int  # length of the tail bank (0: none)
    tail_keep: int  # non-zeros kept in the tail bank


def bank_budget(row_len: int, bank_size: int, sparsity: float) -> BankBudget:
    """Bank counts and budgets of one row at ``sparsity``."""
    full_banks, tail_len = divmod(row_len, bank_size)
    keep = max(1, keep_count(bank_size, sparsity))
    tail_keep = min(keep, max(1, keep_count(tail_len, sparsity))) if tail_len else 0
    return BankBudget(full_banks, keep, tail_len, tail_keep)


def measured_budget(row_len: int, bank_size: int, sparsity: float) -> BankBudget:
    """The budgets a checker applies when only a tensor's measured sparsity is known.

    A full bank gets ``bank_budget``'s budget at that sparsity. A tail bank gets the largest budget
    that any target sparsity giving the same full-bank budget would give it: rounding a short tail
    can go either way, so a tensor pruned at its target is never called unbalanced for its tail.

    >>> measured_budget(222, 64, 1 - 11 / 222)  # pruned at 0.95: 3 per full bank, 2 in the tail of 30
    BankBudget(full_banks=3, keep=3, tail_len=30, tail_keep=2)
    """
    budget = bank_budget(row_len, bank_size, sparsity)
    if not budget.tail_len:
        return budget
    loosest = math.ceil(budget.tail_len * (budget.keep + 0.5) / bank_size - 0.5)
    return budget._replace(tail_keep=min(budget.keep, max(1, budget.tail_keep, loosest)))


def realised_sparsity(
    shape: Sequence[int], balance: str, sparsity: float, geometry: BankGeometry = DEFAULT_GEOMETRY
) -> float:
    """The sparsity a pattern actually reaches for a dense tensor of ``shape`` at ``sparsity`` (its
    banks cut by ``geometry`` when ``balance == "fix"``)."""
    numel = math.prod(shape)
    if numel == 0:
        return 0.0
    if balance != "fix":
        return 1.0 - keep_count(numel, sparsity) / numel
    row_len = row_length(shape, geometry.layout, geometry.out_dim)
    budget = bank_budget(row_len, geometry.bank_size, sparsity)
    kept_per_row = budget.full_banks * budget.keep + budget.tail_keep
    return 1.0 - kept_per_row * (numel // row_len) / numel


def unreachable(
    shape: Sequence[int], balance: str, sparsity: float, geometry: BankGeometry = DEFAULT_GEOMETRY
) -> float | None:
    """The sparsity a dense tensor of ``shape`` will reach when the pattern cannot reach ``sparsity``,
    else ``None``.

    Unreachable means *falling short* of the target by more than rounding to whole weights allows:
    half a weight per bank (``0.5 / bank_size``), or per row when rows are shorter than a bank
    (``0.5 / row_len``); in such a row a shortfall of exactly half a weight counts too, since the row
    is one bank and that is half of it (a row of 3 at 2:4 keeps 2 of 3, sparsity 0.333; a row of 1
    stays dense). Unstructured: half a weight of the whole tensor. Overshooting (sparser than asked,
    e.g. a 1x1 conv with rows of 11 at 0.9 keeping 1 of 11, 0.909) is rounding, never unreachable.

    >>> round(unreachable((8, 3, 3, 3), "fix", 0.5, BankGeometry(4)), 4), unreachable((8, 11, 1, 1), "fix", 0.9)
    (0.3333, None)
    """
    if math.prod(shape) == 0:
        return None
    realised = realised_sparsity(shape, balance, sparsity, geometry)
    shortfall = sparsity - realised
    bank_size = geometry.bank_size
    if balance == "fix" and len(shape) >= 2:
        row_len = row_length(shape, geometry.layout, geometry.out_dim)
        if row_len < bank_size:
            far = shortfall >= 0.5 / max(1, row_len) - 1e-9  # half a weight of a one-bank row: half the bank
        else:
            far = shortfall > 0.5 / bank_size + 1e-9
    else:
        far = shortfall > 0.5 / math.prod(shape) + 1e-9
    return realised if far else None


def param_layout(shape: Sequence[int], conv_owned: bool, layout: str) -> str:
    """The layout a pruner reads a parameter with by default: ``layout`` for conv weights and for
    tensors of at most 2 dims (where the layouts agree), ``"last_dim"`` for any other N-D parameter."""
    return layout if conv_owned or len(shape) <= 2 else LAST_DIM


__all__ = [
    "LAST_DIM",
    "BankBudget",
    "DEFAULT_GEOMETRY",
    "RowStrides",
    "bank_budget",
    "block",
    "from_rows",
    "keep_count",
    "param_layout",
    "realised_sparsity",
    "row_blocks",
    "row_count",
    "row_length",
    "row_strides",
    "split_banks",
    "to_rows",
    "unreachable",
]
