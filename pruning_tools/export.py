"""Packed bank-sparse storage: a pruned tensor kept as its non-zeros and their in-bank positions.

A bank-balanced weight (``masks.to_rows`` view ``[rows, row_len]``, banks of ``bank_size``) is
stored as

- ``values``  ``[rows, banks, k]``: the weights kept in each full bank, in bank order,
- ``indices`` ``[rows, banks, k]``: their positions inside the bank (uint8 when ``bank_size <= 256``),
- ``tail_values`` / ``tail_indices`` ``[rows, tail_k]``: the same for the shorter tail bank, if any,

with shape, dtype, layout and bank size in the file's metadata. ``k`` is the largest number of
non-zeros in any full bank; banks holding fewer are padded with zero values at unused positions.

Bit-exactness: every non-zero comes back with the same bits. Zeros come back as ``+0.0``: a
negative zero (what masking a negative weight by multiplication leaves) is a zero and is not stored.

>>> import torch
>>> from pruning_tools.masks import bank_mask
>>> w = torch.randn(8, 100)
>>> w = w * bank_mask(w, None, 0.9375, bank_size=64)   # keep 4 of 64 (tail bank of 36: 2)
>>> p = pack(w, bank_size=64)
>>> tuple(p.values.shape), p.indices.dtype, tuple(p.tail_values.shape)
((8, 1, 4), torch.uint8, (8, 2))
>>> torch.equal(unpack(p), w)
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch
from torch import Tensor

from . import geometry as G
from . import integrity
from . import masks as M
from .config import LAYOUTS, ParamSpec, check_bank_size, check_bool, check_choice

FORMAT = "pruning_tools.packed/1"
METADATA_KEY = "pruning_tools.packed"
SEP = "::"  # tensor keys in the file: f"{name}{SEP}values", ... (parameter names never hold "::")
PARTS = ("values", "indices", "tail_values", "tail_indices")


class NotBankBalancedError(ValueError):
    """A tensor asked to be packed holds more non-zeros in some bank than its budget."""


@dataclass
class PackedTensor:
    """One bank-sparse tensor. ``rows``, ``banks`` as in ``masks.to_rows`` / ``masks.bank_budget``."""

    values: Tensor  # [rows, banks, k], dtype of the weight
    indices: Tensor  # [rows, banks, k], position inside the bank
    tail_values: Tensor  # [rows, tail_k] ([rows, 0] when there is no tail bank)
    tail_indices: Tensor  # [rows, tail_k]
    shape: tuple[int, ...]  # the dense tensor's shape
    bank_size: int
    layout: str = "channels_last"
    out_dim: int = 0  # 1 for ConvTranspose weights
    # What check_packed passed (or pack() made): the parts themselves, their versions, the geometry. A later
    # check of the same, unchanged parts is skipped; the kernels' operators still check what they are given.
    checked: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> tuple[Any, ...] | None:
        """The parts, their version counters and the geometry: what a check holds for (None where a part
        keeps no version counter, e.g. an inference-mode tensor)."""
        parts = tuple(self.tensors().values())
        try:
            versions = tuple(t._version for t in parts)
        except (AttributeError, RuntimeError):
            return None
        return (parts, versions, tuple(self.shape), self.bank_size, self.layout, self.out_dim)

    def unchanged_since_checked(self) -> bool:
        """Whether the very parts ``check_packed`` passed (or ``pack`` made) are here, unmodified."""
        now, then = self.fingerprint(), self.checked
        if now is None or then is None:
            return False
        return all(a is b for a, b in zip(now[0], then[0])) and now[1:] == then[1:]

    @property
    def k(self) -> int:
        """Stored weights per full bank."""
        return self.values.shape[-1]

    @property
    def tail_k(self) -> int:
        """Stored weights per tail bank (0: no tail bank)."""
        return self.tail_values.shape[-1]

    @property
    def geometry(self) -> G.BankGeometry:
        """``(bank_size, layout, out_dim)`` as one validated ``BankGeometry``."""
        return G.BankGeometry(self.bank_size, self.layout, self.out_dim)

    @property
    def row_len(self) -> int:
        return G.row_length(self.shape, self.layout, self.out_dim)

    def nbytes(self) -> int:
        """Bytes of the stored parts (values, indices, tail parts)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, Tensor]:
        """The stored parts by name (``PARTS``), as they go into the file."""
        return {part: getattr(self, part) for part in PARTS}

    def meta(self) -> dict[str, Any]:
        """What the file's metadata records of this tensor: shape, dtype, layout, bank geometry."""
        return {
            "shape": list(self.shape),
            "dtype": str(self.values.dtype).replace("torch.", ""),
            "bank_size": self.bank_size,
            "layout": self.layout,
            "out_dim": self.out_dim,
            "k": self.k,
            "tail_k": self.tail_k,
        }


INDEX_DTYPES = (torch.uint8, torch.int16, torch.int32)
MAX_NUMEL = 2**48  # a bound on any dense shape read from a file (and on the products of its sizes)


def check_packed(p: PackedTensor, where: str = "packed tensor") -> None:
    """Raise ``ValueError`` (starting with ``where``: the file and the tensor) unless every part of
    ``p`` agrees with every other: shape, layout, output dim and bank size give the rows, full banks
    and tail length; ``values`` / ``indices`` must be ``[rows, banks, k]`` with ``k <= bank_size``,
    ``tail_values`` / ``tail_indices`` ``[rows, tail_k]`` with ``tail_k <= tail length``; values
    floating, indices of ``index_dtype(bank_size)``; every index inside its bank (tail indices inside the
    tail), strictly increasing within each bank. What the compiled kernels rely on, checked before any
    of them runs (they check again themselves). A packed tensor that passed (or that ``pack`` made) is
    marked ``checked`` and not checked again."""
    if p.unchanged_since_checked():
        return
    _validate_packed(p, where)
    p.checked = p.fingerprint()


def _validate_packed(p: PackedTensor, where: str) -> None:
    """Every check of ``check_packed``, run whatever ``p.checked`` says."""

    def fail(what: str) -> None:
        raise ValueError(f"{where}: {what}")

    shape = p.shape
    if not isinstance(shape, tuple) or len(shape) < 2 or not all(_is_int(n) and n >= 0 for n in shape):
        fail(f"shape {shape!r} is not allowed: expected a tuple of at least 2 sizes >= 0")
    if math.prod(shape) > MAX_NUMEL:
        fail(f"shape {list(shape)} holds more than {MAX_NUMEL} elements")
    if p.layout not in LAYOUTS:
        fail(f"layout {p.layout!r} is not allowed: expected one of {LAYOUTS}")
    if p.out_dim not in (0, 1) or isinstance(p.out_dim, bool):
        fail(f"out_dim {p.out_dim!r} is not allowed: expected 0 or 1")
    if not _is_int(p.bank_size) or not 2 <= p.bank_size <= 2**31 - 1:
        fail(f"bank_size {p.bank_size!r} is not allowed: expected an integer in [2, 2**31)")
    parts = {part: getattr(p, part) for part in PARTS}
    for part, t in parts.items():
        if not isinstance(t, Tensor) or t.layout != torch.strided:
            fail(f"{part} is a {type(t).__name__}: expected a dense torch.Tensor")
    rows = G.row_count(shape, p.layout, p.out_dim)
    row_len = G.row_length(shape, p.layout, p.out_dim)
    banks, tail_len = divmod(row_len, p.bank_size)
    values, indices, tail_values, tail_indices = (parts[part] for part in PARTS)
    if not values.is_floating_point() or tail_values.dtype != values.dtype:
        fail(f"values {values.dtype} / tail_values {tail_values.dtype}: expected one floating-point dtype")
    wanted = index_dtype(p.bank_size)
    if indices.dtype != wanted or tail_indices.dtype != wanted:
        fail(
            f"indices {indices.dtype} / tail_indices {tail_indices.dtype} are not allowed for bank_size "
            f"{p.bank_size}: expected {wanted}"
        )
    if values.dim() != 3 or tuple(values.shape[:2]) != (rows, banks) or values.shape[2] > p.bank_size:
        fail(
            f"values of shape {list(values.shape)} disagree with shape {list(shape)}, layout {p.layout!r}, "
            f"bank_size {p.bank_size}: expected [{rows}, {banks}, k] with k <= {p.bank_size}"
        )
    if tuple(indices.shape) != tuple(values.shape):
        fail(f"indices of shape {list(indices.shape)}: expected the shape of values {list(values.shape)}")
    if tail_values.dim() != 2 or tail_values.shape[0] != rows or tail_values.shape[1] > tail_len:
        fail(
            f"tail_values of shape {list(tail_values.shape)}: expected [{rows}, tail_k] with tail_k <= {tail_len} "
            f"(the tail bank of rows of {row_len} in banks of {p.bank_size})"
        )
    if tuple(tail_indices.shape) != tuple(tail_values.shape):
        fail(f"tail_indices of shape {list(tail_indices.shape)}: expected {list(tail_values.shape)}")
    for part, t, limit in (("indices", indices, p.bank_size), ("tail_indices", tail_indices, tail_len)):
        if t.numel() == 0:
            continue
        wide = t.long()
        low, high = int(wide.min()), int(wide.max())
        if low < 0 or high >= limit:
            bad = int(((wide < 0) | (wide >= limit)).flatten().nonzero()[0])
            fail(f"{part} holds {int(wide.flatten()[bad])} at flat position {bad}: expected positions in [0, {limit})")
        if t.shape[-1] > 1 and not bool((wide.diff(dim=-1) > 0).all()):
            fail(f"{part} are not strictly increasing within every bank")


def _is_int(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def index_dtype(bank_size: int) -> torch.dtype:
    """Smallest integer dtype holding a position inside a bank of ``bank_size``."""
    if bank_size <= 256:
        return torch.uint8
    return torch.int16 if bank_size <= 2**15 else torch.int32


BITS_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Tensor) -> Tensor:
    """Integer view of ``t`` with the same bits: gather/scatter on it copy bits exactly (some float
    kernels rewrite NaN payloads)."""
    return t.view(BITS_VIEW[t.element_size()])


def _select(banks: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` slots of each bank to store: every non-zero, then zeros, lowest position first.

    ``banks``: ``[..., n]``; returns ``(values [..., k], positions [..., k] int64, ascending)``.
    """
    nonzero = banks != 0
    # stable sort of "is zero" puts the non-zeros first, each group in position order
    order = torch.sort((~nonzero).to(torch.uint8), dim=-1, stable=True).indices[..., :k]
    positions = order.sort(dim=-1).values  # [..., k], ascending
    return _bits(banks).gather(-1, positions).view(banks.dtype), positions


def check_balanced(
    w: Tensor,
    bank_size: int = 64,
    layout: str = "channels_last",
    out_dim: int = 0,
    sparsity: float | None = None,
    name: str = "tensor",
) -> None:
    """Raise ``NotBankBalancedError`` naming ``name`` unless every bank of ``w`` is within budget.

    The budgets are those of the one checker, ``masks.check_banks``: of ``sparsity`` (the target the
    tensor was pruned to) when given, else of the tensor's measured sparsity.
    """
    report = M.check_banks(w, bank_size, layout, out_dim, sparsity)
    if not report.balanced:
        raise NotBankBalancedError(
            f"{name} {list(w.shape)} is not bank-balanced (bank_size={bank_size}, layout={layout!r}): "
            f"{report.over_budget} of {report.banks} banks hold more than {report.budget} (tail {report.tail_budget}) "
            f"non-zeros (bank {report.worst_bank} holds {report.worst_nonzeros})"
        )


def pack(
    w: Tensor,
    bank_size: int = 64,
    layout: str = "channels_last",
    out_dim: int = 0,
    sparsity: float | None = None,
    name: str = "tensor",
    *,
    slots: tuple[int, int] | None = None,
) -> PackedTensor:
    """Pack a bank-balanced tensor ``w`` (any shape with >= 2 dims); see ``check_balanced`` for
    what balanced means with and without ``sparsity`` (the target it was pruned to).

    ``slots``: ``(k, tail_k)``, at least this many stored weights per full / tail bank (banks holding
    fewer non-zeros are padded with zeros), e.g. the budgets of the target, so that the packed shapes
    depend on the geometry only and not on the weights."""
    check_bank_size("bank_size", bank_size)
    check_choice("layout", layout, LAYOUTS)
    if w.dim() < 2 or not w.is_floating_point():
        raise ValueError(
            f"{name}: a floating-point tensor with >= 2 dims is required to pack, "
            f"got shape {list(w.shape)} dtype {w.dtype}"
        )
    w = w.detach().cpu()
    check_balanced(w, bank_size, layout, out_dim, sparsity, name)
    banks, tail = G.split_banks(G.to_rows(w, layout, out_dim), bank_size)  # [rows, banks, B], [rows, tail_len]
    k = int((banks != 0).sum(-1).max()) if banks.numel() else 0
    tail_k = int((tail != 0).sum(-1).max()) if tail.numel() else 0
    if slots is not None:
        k, tail_k = max(k, min(slots[0], banks.shape[-1])), max(tail_k, min(slots[1], tail.shape[-1]))
    values, positions = _select(banks, k)
    tail_values, tail_positions = _select(tail, tail_k)
    idx = index_dtype(bank_size)
    packed = PackedTensor(
        values.contiguous(),
        positions.to(idx).contiguous(),
        tail_values.contiguous(),
        tail_positions.to(idx).contiguous(),
        tuple(w.shape),
        bank_size,
        layout,
        out_dim,
    )
    packed.checked = packed.fingerprint()  # valid by construction: check_packed asks what it was built as
    return packed


def unpack(p: PackedTensor) -> Tensor:
    """Dense tensor of ``p.shape`` rebuilt from ``p`` (non-zeros bit-exact, zeros ``+0.0``)."""
    rows_n, banks_n, k = p.values.shape
    full = p.values.new_zeros(rows_n, banks_n, p.bank_size)  # [rows, banks, B]
    _bits(full).scatter_(-1, p.indices.long(), _bits(p.values))
    tail = p.values.new_zeros(rows_n, p.row_len - banks_n * p.bank_size)  # [rows, tail_len]
    if p.tail_k:
        _bits(tail).scatter_(-1, p.tail_indices.long(), _bits(p.tail_values))
    rows = torch.cat([full.reshape(rows_n, -1), tail], dim=1)  # [rows, row_len]
    return G.from_rows(rows, p.shape, p.layout, p.out_dim)


# ---------------------------------------------------------------- files


@dataclass
class ExportReport:
    """What ``save_packed`` wrote."""

    path: str
    dense_bytes: int  # size of the same tensors as a dense safetensors file
    packed_bytes: int  # size of the packed file
    packed: dict[str, PackedTensor] = field(default_factory=dict)
    dense: list[str] = field(default_factory=list)  # stored as they were
    fallback: list[str] = field(default_factory=list)  # not bank-balanced, stored dense on request

    @property
    def ratio(self) -> float:
        """Packed file size / dense file size."""
        return self.packed_bytes / max(1, self.dense_bytes)


def worth_packing(w: Tensor, bank_size: int) -> bool:
    """Floating, >= 2 dims, and at least one zero per bank on average (a dense tensor stays dense)."""
    if w.dim() < 2 or not w.is_floating_point() or w.numel() == 0:
        return False
    return int((w != 0).sum()) < w.numel() * (1.0 - 1.0 / bank_size) + 1e-9


SpecLike = Union[ParamSpec, Mapping[str, Any]]


class _PackOptions(NamedTuple):
    """How one tensor of a state dict is stored: dense, or packed by ``geometry`` with the budget of
    ``sparsity`` (``None``: of its measured sparsity)."""

    dense: bool
    geometry: G.BankGeometry
    sparsity: float | None


SPEC_KEYS = ("bank_size", "layout", "out_dim", "sparsity", "dense")  # a plain-dict spec of pack_state_dict


def _as_pack_options(name: str, spec: SpecLike, default: G.BankGeometry) -> _PackOptions:
    """The ``_PackOptions`` of tensor ``name``: from a ``ParamSpec`` (unstructured ones stay dense;
    ``sparsity`` is the budget's target) or from a plain dict with some of ``SPEC_KEYS`` over ``default``."""
    if isinstance(spec, ParamSpec):
        return _PackOptions(spec.balance != "fix", spec.geometry, spec.sparsity)
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"specs[{name!r}]={dict(spec)!r} is not allowed: expected keys among {SPEC_KEYS}")
    try:
        geometry = G.BankGeometry(**{**asdict(default), **{k: v for k, v in spec.items() if k in asdict(default)}})
    except ValueError as error:
        raise ValueError(f"specs[{name!r}]: {error}") from None
    dense = check_bool(f"specs[{name!r}]['dense']", spec.get("dense", False))
    return _PackOptions(dense, geometry, spec.get("sparsity"))


def _with_out_dim(default: G.BankGeometry, name: str, out_dim: Any) -> G.BankGeometry:
    """``default`` with the output dim ``out_dims[name]`` (errors name that entry)."""
    try:
        return replace(default, out_dim=out_dim)
    except ValueError as error:
        raise ValueError(f"out_dims[{name!r}]: {error}") from None


def pack_state_dict(
    tensors: Mapping[str, Tensor],
    bank_size: int = 64,
    layout: str = "channels_last",
    out_dims: Mapping[str, int] | None = None,
    dense_fallback: bool = False,
    specs: Mapping[str, SpecLike] | None = None,
) -> tuple[dict[str, PackedTensor], dict[str, Tensor], list[str]]:
    """Split ``tensors`` into packed and dense ones.

    A floating tensor with >= 2 dims and zeros in it is packed; dense ones (fewer zeros than one per
    bank), 1-D and integer tensors stay dense. ``specs`` gives the geometry per tensor: the
    ``ParamSpec`` of a pruner (``pruner.pruned_specs(prune)``, or of its state or state file: bank
    size, layout, output dim, and the target of its current mask as the budget; unstructured ones stay
    dense), or a dict with some of ``{"bank_size", "layout", "out_dim", "sparsity", "dense"}``.
    Tensors without a spec use ``bank_size``, ``layout``, ``out_dims`` and their measured sparsity. A
    sparse tensor that is not bank-balanced raises ``NotBankBalancedError``, or with
    ``dense_fallback`` is stored dense and listed in the third return value.
    """
    out_dims, specs = dict(out_dims or {}), dict(specs or {})
    default = G.BankGeometry(bank_size, layout)  # the arguments, checked before any tensor is packed
    packed, dense, fallback = {}, {}, []
    for name, w in tensors.items():
        if not isinstance(w, Tensor):
            raise TypeError(f"tensors[{name!r}] is a {type(w).__name__}: expected a torch.Tensor")
        if SEP in name:
            raise ValueError(f"tensor name {name!r} is not allowed: it must not contain {SEP!r}")
        options = _as_pack_options(name, specs.get(name, {}), _with_out_dim(default, name, out_dims.get(name, 0)))
        if options.dense or not worth_packing(w, options.geometry.bank_size):
            dense[name] = w.detach().cpu().clone()  # own storage: tied weights save too
            continue
        g = options.geometry
        try:
            packed[name] = pack(w, g.bank_size, g.layout, g.out_dim, options.sparsity, name)
        except NotBankBalancedError:
            if not dense_fallback:
                raise
            dense[name] = w.detach().cpu().clone()  # own storage: tied weights save too
            fallback.append(name)
    return packed, dense, fallback


def save_packed(
    tensors: Mapping[str, Tensor] | torch.nn.Module,
    path: str | Path,
    prune: Any = None,
    *,
    bank_size: int | None = None,
    layout: str = "channels_last",
    out_dims: Mapping[str, int] | None = None,
    dense_fallback: bool = False,
    specs: Mapping[str, SpecLike] | None = None,
) -> ExportReport:
    """Write ``tensors`` (a model or its state dict) to a packed safetensors file; see ``pack_state_dict``.

    The geometry of every tensor (bank size, layout, output dim, budget) comes from one place, never
    guessed: ``prune`` (the pruner that made the masks, its ``state_dict()`` or its saved state file;
    the tensors it does not prune bank-balanced are stored dense), or ``specs`` (per tensor), or
    ``bank_size`` (with ``layout`` / ``out_dims``) for every tensor not in ``specs``. Without ``prune``
    or ``bank_size``, every tensor of 2 or more dims needs a spec.

    >>> # save_packed(model, "model.packed.safetensors", prune)

    Returns an ``ExportReport`` with both file sizes: ``dense_bytes`` is the size of the same tensors
    as a plain safetensors file (computed from their shapes and dtypes).
    """
    if isinstance(tensors, torch.nn.Module):
        tensors = tensors.state_dict()
    if prune is not None:
        if specs is not None or bank_size is not None:
            raise ValueError(
                "prune= is not allowed together with specs= or bank_size=: the pruner already knows every "
                "tensor's geometry"
            )
        specs = _specs_of_pruner(prune, tensors)
    elif bank_size is None and any(t.dim() >= 2 and name not in (specs or {}) for name, t in tensors.items()):
        raise ValueError(
            "bank_size=None is not allowed without prune=: pass the pruner that made the masks "
            "(save_packed(model, path, prune)), or bank_size= (and layout=, out_dims=) for every tensor"
        )
    bank_size = check_bank_size(
        "bank_size", 64 if bank_size is None else bank_size
    )  # 64: unused, every tensor has a spec
    check_choice("layout", layout, LAYOUTS)
    packed, dense, fallback = pack_state_dict(tensors, bank_size, layout, out_dims, dense_fallback, specs)
    flat = dict(dense)
    for name, p in packed.items():
        flat.update({f"{name}{SEP}{part}": t for part, t in p.tensors().items()})
    meta = {"format": FORMAT, "packed": {name: p.meta() for name, p in packed.items()}}
    path = Path(path)
    integrity.save_file(flat, path, metadata={METADATA_KEY: json.dumps(meta)})  # atomic, checksummed
    return ExportReport(str(path), safetensors_bytes(tensors), path.stat().st_size, packed, sorted(dense), fallback)


def _specs_of_pruner(prune: Any, tensors: Mapping[str, Tensor]) -> dict[str, SpecLike]:
    """The pruner's spec of every tensor it prunes; every other tensor of ``tensors`` stays dense."""
    from .pruner import Pruner, pruned_specs

    if not isinstance(prune, (Pruner, Mapping, str, Path)):
        raise TypeError(
            f"prune={type(prune).__name__} is not allowed: expected a Prune, its state_dict() or a saved state file"
        )
    specs: dict[str, SpecLike] = {name: {"dense": True} for name in tensors}
    specs.update({name: spec for name, spec in pruned_specs(prune).items() if name in tensors})
    return specs


# safetensors' dtype names, in the order of its Dtype enum (the file sorts tensors by it, largest first)
_SAFETENSORS_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.uint16: "U16", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32", torch.float32: "F32",
    torch.float64: "F64", torch.int64: "I64", torch.uint64: "U64",
}  # fmt: skip
_DTYPE_RANK = {dtype: rank for rank, dtype in enumerate(_SAFETENSORS_DTYPES)}


def safetensors_bytes(tensors: Mapping[str, Tensor]) -> int:
    """Size in bytes of ``tensors`` saved as a plain safetensors file (no metadata), from their names,
    shapes and dtypes alone: nothing is copied or serialised. The layout is the format's: an 8-byte
    header length, the JSON header padded to 8 bytes, the data sorted by dtype (widest first) then name."""
    order = sorted(tensors.items(), key=lambda item: (-_DTYPE_RANK[item[1].dtype], item[0]))
    header, offset = {}, 0
    for name, t in order:
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return 8 + math.ceil(len(text) / 8) * 8 + offset


def read_packed(path: str | Path, *, max_bytes: int | None = None) -> dict[str, PackedTensor | Tensor]:
    """Read a packed file without unpacking: ``{name: PackedTensor or dense Tensor}``, file order.

    The file's checksums are verified first (``integrity.IntegrityError`` names a damaged tensor).
    Errors are ``ValueError`` naming the file (and the tensor, when one is at fault). The dense
    tensors its packed ones declare may not exceed ``integrity.allocation_limit`` (``max_bytes``, or
    by default 256 times the file's size, at least 64 MiB): ``integrity.AllocationLimitError``.
    """
    flat, raw = integrity.load_file(path, framework="pt")
    return parse_packed(flat, raw, path, max_bytes=max_bytes)


def parse_packed(
    flat: Mapping[str, Tensor],
    raw: Mapping[str, str],
    path: str | Path = "packed file",
    *,
    max_bytes: int | None = None,
) -> dict[str, PackedTensor | Tensor]:
    """``read_packed`` of tensors and metadata already read from ``path`` (``integrity.load_file``)."""
    if METADATA_KEY not in raw:
        raise ValueError(f"{path} is not a packed file: its metadata has no {METADATA_KEY!r} entry")
    meta = integrity.parse_json(raw[METADATA_KEY], f"{path}: the {METADATA_KEY!r} metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(f"{path} has format {found!r}: expected {FORMAT!r}")
    if not isinstance(meta.get("packed"), dict):
        raise ValueError(f"{path}: the metadata has no 'packed' table of tensors")
    out: dict[str, PackedTensor | Tensor] = {}
    for key, t in flat.items():
        if SEP not in key:
            out[key] = t
        elif key.rpartition(SEP)[0] not in meta["packed"] or key.rpartition(SEP)[2] not in PARTS:
            raise ValueError(f"{path}: tensor {key!r} is part of no packed tensor its metadata lists")
    both = sorted(name for name in meta["packed"] if name in out)
    if both:
        raise ValueError(f"{path}: {both} are stored both dense and packed: expected one tensor per name")
    packed = {name: _packed_from_file(path, name, m, flat) for name, m in meta["packed"].items()}
    declared = sum(math.prod(p.shape) * p.values.element_size() for p in packed.values())
    integrity.check_allocation(path, declared, f"its {len(packed)} packed tensors, unpacked,", max_bytes)
    out.update(packed)
    return out


def _packed_from_file(path: str | Path, name: str, m: Any, flat: Mapping[str, Tensor]) -> PackedTensor:
    """The packed tensor ``name`` of a file, its metadata ``m`` checked against its tensors
    (``check_packed``): a ``ValueError`` naming the file and the tensor, before anything computes."""
    where = f"{path}: tensor {name!r}"
    keys = ("shape", "dtype", "bank_size", "layout", "out_dim", "k", "tail_k")
    if not isinstance(m, dict) or any(key not in m for key in keys):
        raise ValueError(f"{where} is incomplete: metadata {m!r} is not allowed: expected an object with keys {keys}")
    missing = [part for part in PARTS if f"{name}{SEP}{part}" not in flat]
    if missing:
        absent = [f"{name}{SEP}{part}" for part in missing]
        raise ValueError(f"{where} is incomplete: the file has no tensor(s) {absent}")
    if not isinstance(m["shape"], list):
        raise ValueError(f"{where}: metadata shape {m['shape']!r} is not allowed: expected a list of sizes")
    values, indices, tail_values, tail_indices = (flat[f"{name}{SEP}{part}"] for part in PARTS)
    p = PackedTensor(
        values, indices, tail_values, tail_indices, tuple(m["shape"]), m["bank_size"], m["layout"], m["out_dim"]
    )
    check_packed(p, where)
    if p.k != m["k"] or p.tail_k != m["tail_k"] or str(p.values.dtype) != f"torch.{m['dtype']}":
        raise ValueError(f"{where} does not match its metadata {m}")
    return p


def load_packed(path: str | Path, *, max_bytes: int | None = None) -> dict[str, Tensor]:
    """Dense state dict rebuilt from a packed file (non-zeros bit-exact, zeros ``+0.0``); ``max_bytes``:
    see ``read_packed``."""
    return unpack_all(read_packed(path, max_bytes=max_bytes), path)


def unpack_all(contents: Mapping[str, PackedTensor | Tensor], path: str | Path = "packed file") -> dict[str, Tensor]:
    """``read_packed``'s result as dense tensors; an error names ``path`` and the tensor."""
    out = {}
    for name, t in contents.items():
        if not isinstance(t, PackedTensor):
            out[name] = t
            continue
        try:
            out[name] = unpack(t)
        except (RuntimeError, ValueError, IndexError) as error:
            raise ValueError(f"{path}: packed tensor {name!r} cannot be rebuilt ({error})") from error
    return out


__all__ = [
    "PackedTensor",
    "ExportReport",
    "NotBankBalancedError",
    "pack",
    "unpack",
    "pack_state_dict",
    "save_packed",
    "safetensors_bytes",
    "read_packed",
    "parse_packed",
    "load_packed",
    "unpack_all",
    "check_balanced",
    "check_packed",
    "worth_packing",
    "index_dtype",
]
