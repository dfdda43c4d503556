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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import safetensors.torch
import torch
from torch import Tensor

from . import geometry as G
from . import integrity
from . import masks as M
from .config import LAYOUTS, ParamSpec, check_bank_size, check_choice

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

    @property
    def k(self) -> int:
        """Stored weights per full bank."""
        return self.values.shape[-1]

    @property
    def tail_k(self) -> int:
        """Stored weights per tail bank (0: no tail bank)."""
        return self.tail_values.shape[-1]

    @property
    def row_len(self) -> int:
        return G.row_length(self.shape, self.layout, self.out_dim)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, Tensor]:
        return {part: getattr(self, part) for part in PARTS}

    def meta(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": str(self.values.dtype).replace("torch.", ""),
            "bank_size": self.bank_size,
            "layout": self.layout,
            "out_dim": self.out_dim,
            "k": self.k,
            "tail_k": self.tail_k,
        }


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
) -> PackedTensor:
    """Pack a bank-balanced tensor ``w`` (any shape with >= 2 dims); see ``check_balanced`` for
    what balanced means with and without ``sparsity`` (the target it was pruned to)."""
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
    values, positions = _select(banks, k)
    tail_k = int((tail != 0).sum(-1).max()) if tail.numel() else 0
    tail_values, tail_positions = _select(tail, tail_k)
    idx = index_dtype(bank_size)
    return PackedTensor(
        values.contiguous(),
        positions.to(idx).contiguous(),
        tail_values.contiguous(),
        tail_positions.to(idx).contiguous(),
        tuple(w.shape),
        bank_size,
        layout,
        out_dim,
    )


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


def _as_pack_options(spec: SpecLike, bank_size: int, layout: str, out_dim: int) -> dict[str, Any]:
    """``{"dense", "bank_size", "layout", "out_dim", "sparsity"}`` of one tensor: from a ``ParamSpec``
    (unstructured ones stay dense; ``sparsity`` is the budget's target) or from a plain dict of those keys."""
    if isinstance(spec, ParamSpec):
        return {"dense": spec.balance != "fix", "bank_size": spec.bank_size, "layout": spec.layout,
                "out_dim": spec.out_dim, "sparsity": spec.sparsity}  # fmt: skip
    options = {"dense": False, "bank_size": bank_size, "layout": layout, "out_dim": out_dim, "sparsity": None}
    options.update(spec)
    return options


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
    packed, dense, fallback = {}, {}, []
    for name, w in tensors.items():
        if not isinstance(w, Tensor):
            raise TypeError(f"tensors[{name!r}] is a {type(w).__name__}: expected a torch.Tensor")
        if SEP in name:
            raise ValueError(f"tensor name {name!r} is not allowed: it must not contain {SEP!r}")
        options = _as_pack_options(specs.get(name, {}), bank_size, layout, out_dims.get(name, 0))
        if options["dense"] or not worth_packing(w, int(options["bank_size"])):
            dense[name] = w.detach().cpu().clone()  # own storage: tied weights save too
            continue
        try:
            packed[name] = pack(
                w, int(options["bank_size"]), options["layout"], int(options["out_dim"]), options["sparsity"], name
            )
        except NotBankBalancedError:
            if not dense_fallback:
                raise
            dense[name] = w.detach().cpu().clone()  # own storage: tied weights save too
            fallback.append(name)
    return packed, dense, fallback


def specs_from_pruner_state(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Deprecated: ``pruner.pruned_specs(state)`` gives the typed specs ``save_packed`` takes."""
    from ._deprecated import warn_moved
    from .pruner import pruned_specs

    warn_moved("pruning_tools.export.specs_from_pruner_state", "pruning_tools.pruner.pruned_specs")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in pruned_specs(state).items():
        if spec.balance != "fix":
            out[name] = {"dense": True}
        else:
            out[name] = {"bank_size": spec.bank_size, "layout": spec.layout, "out_dim": spec.out_dim,
                         "sparsity": spec.sparsity}  # fmt: skip
    return out


def save_packed(
    tensors: Mapping[str, Tensor],
    path: str | Path,
    bank_size: int = 64,
    layout: str = "channels_last",
    out_dims: Mapping[str, int] | None = None,
    dense_fallback: bool = False,
    specs: Mapping[str, SpecLike] | None = None,
) -> ExportReport:
    """Write ``tensors`` (a state dict) to a packed safetensors file; see ``pack_state_dict``.

    Returns an ``ExportReport`` with both file sizes: ``dense_bytes`` is the size of the same tensors
    saved as a plain safetensors file.
    """
    check_bank_size("bank_size", bank_size)
    check_choice("layout", layout, LAYOUTS)
    packed, dense, fallback = pack_state_dict(tensors, bank_size, layout, out_dims, dense_fallback, specs)
    flat = dict(dense)
    for name, p in packed.items():
        flat.update({f"{name}{SEP}{part}": t for part, t in p.tensors().items()})
    meta = {"format": FORMAT, "packed": {name: p.meta() for name, p in packed.items()}}
    path = Path(path)
    integrity.save_file(flat, path, metadata={METADATA_KEY: json.dumps(meta)})  # atomic, checksummed
    dense_all = {name: t.detach().cpu().clone() for name, t in tensors.items()}
    dense_bytes = len(safetensors.torch.save(dense_all))
    return ExportReport(str(path), dense_bytes, path.stat().st_size, packed, sorted(dense), fallback)


def read_packed(path: str | Path) -> dict[str, PackedTensor | Tensor]:
    """Read a packed file without unpacking: ``{name: PackedTensor or dense Tensor}``, file order.

    The file's checksums are verified first (``integrity.IntegrityError`` names a damaged tensor)."""
    flat, raw = integrity.load_file(path, framework="pt")
    if METADATA_KEY not in raw:
        raise ValueError(f"{path} is not a packed file: its metadata has no {METADATA_KEY!r} entry")
    meta = json.loads(raw[METADATA_KEY])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}: expected {FORMAT!r}")
    out: dict[str, PackedTensor | Tensor] = {}
    for key, t in flat.items():
        if SEP not in key:
            out[key] = t
    for name, m in meta["packed"].items():
        parts = {part: flat[f"{name}{SEP}{part}"] for part in PARTS}
        p = PackedTensor(
            **parts, shape=tuple(m["shape"]), bank_size=m["bank_size"], layout=m["layout"], out_dim=m["out_dim"]
        )
        if p.k != m["k"] or p.tail_k != m["tail_k"] or str(p.values.dtype) != f"torch.{m['dtype']}":
            raise ValueError(f"{path}: tensor {name!r} does not match its metadata {m}")
        out[name] = p
    return out


def load_packed(path: str | Path) -> dict[str, Tensor]:
    """Dense state dict rebuilt from a packed file (non-zeros bit-exact, zeros ``+0.0``)."""
    return {name: unpack(t) if isinstance(t, PackedTensor) else t for name, t in read_packed(path).items()}


def __getattr__(name: str) -> Any:  # the ONNX helpers moved to pruning_tools.onnx
    if name in ("export_onnx", "onnx_initializers"):
        from . import onnx
        from ._deprecated import warn_moved

        warn_moved(f"pruning_tools.export.{name}", f"pruning_tools.onnx.{name}")
        return getattr(onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PackedTensor",
    "ExportReport",
    "NotBankBalancedError",
    "pack",
    "unpack",
    "pack_state_dict",
    "save_packed",
    "read_packed",
    "load_packed",
    "check_balanced",
    "worth_packing",
    "specs_from_pruner_state",
    "index_dtype",
]
