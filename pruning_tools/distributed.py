"""Masks across processes: DDP (replicated weights) and FSDP2 (DTensors sharded on dim 0).

- **Replicated weights (DDP)** need no communication: every rank holds the same weights and the
  selection in ``masks.py`` is deterministic (ties to the lower index), so every rank computes the
  same masks. ``Prune.broadcast_masks`` copies rank 0's masks anyway, for those who want a guarantee
  that does not rest on identical arithmetic.
- **Sharded weights (FSDP2, ``fully_shard``)** are DTensors whose dim 0 (output channels) is split
  across ranks. A bank lives inside one row and a row inside one output channel, so bank-balanced
  masks are computed on the local shard with no communication. Unstructured and global masks need
  the exact k-th largest score over all shards: ``keep_largest_sharded`` finds it by radix
  selection on the scores' bit patterns, all-reducing one histogram of 2**16 counts per 16 bits
  (2 all-reduces for fp32/bf16/fp16 weights, 4 for fp64), then one all-reduce of per-shard counts to
  break ties exactly as the single-process code does (earlier tensor, then lower flat index). Whole tensors are never
  gathered.

The pruner is handed a strategy (``strategy_for``): ``LocalMasks`` for plain tensors, ``ShardedMasks``
when any parameter is a DTensor, validated when ``Prune(...)`` is built. Nothing here reaches into a
model or writes a weight. The functions accept plain tensors too and then do exactly what
``masks.py`` does. Masks of a DTensor are plain bool tensors shaped like its local shard
(``p.to_local()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from . import geometry as G
from . import masks as M
from .radix import RADIX_BITS, ReduceSum, kth_largest_key, sortable_keys  # noqa: F401  (names of this module too)

try:  # torch builds without distributed support have no DTensor
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - such builds cannot hold DTensors either
    dist, DTensor, Replicate, Shard = None, None, None, None  # type: ignore[assignment,misc]


# ---------------------------------------------------------------- DTensor plumbing


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (FSDP2 parameter or any ``distribute_tensor`` result)."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The part of ``t`` this rank holds: ``t.to_local()`` for a DTensor (same storage, so an
    in-place ``mul_`` writes the parameter), ``t`` itself otherwise."""
    return cast(Any, t).to_local() if is_sharded(t) else t


@dataclass(frozen=True)
class ShardInfo:
    """Where a tensor's shards live: the process group over which dim 0 is split (None: every
    rank holds all of it), this rank's position in it, the group size, the collectives' device."""

    group: Any
    rank: int
    world: int
    device: torch.device

    @property
    def split(self) -> bool:
        return self.group is not None

    def reduce_sum(self, x: Tensor) -> Tensor:
        if self.split:
            x = x.to(self.device)
            dist.all_reduce(x, group=self.group)
        return x


def shard_info(t: Tensor, name: str = "tensor") -> ShardInfo:
    """How ``t`` is split. Allowed: plain tensors, and DTensors whose placements are ``Replicate``
    on every mesh dim except at most one ``Shard(0)`` (FSDP2, and HSDP's replicate x shard)."""
    if not is_sharded(t):
        return ShardInfo(None, 0, 1, t.device)
    # exact types: subclasses such as a strided shard do not keep rows in rank order
    placements = cast(Any, t).placements
    shard_dims = [i for i, pl in enumerate(placements) if type(pl) is Shard]
    others = [pl for pl in placements if type(pl) not in (Shard, Replicate)]
    if others or len(shard_dims) > 1 or any(placements[i].dim != 0 for i in shard_dims):
        raise ValueError(
            f"{name} has placements={tuple(placements)}: expected Replicate() and at most one "
            f"Shard(0) (as fully_shard makes)"
        )
    mesh = cast(Any, t).device_mesh
    device = (
        torch.device(mesh.device_type, torch.cuda.current_device())
        if mesh.device_type == "cuda"
        else torch.device(mesh.device_type)
    )
    if not shard_dims:
        return ShardInfo(None, 0, 1, device)
    group = mesh.get_group(shard_dims[0])
    return ShardInfo(group, dist.get_rank(group), dist.get_world_size(group), device)


def _common_info(tensors: Sequence[Tensor], names: Sequence[str]) -> ShardInfo:
    """The one shard group of all sharded ``tensors`` (plain and replicated ones fit any)."""
    infos = [(n, shard_info(t, n)) for t, n in zip(tensors, names)]
    split = [(n, i) for n, i in infos if i.split]
    if not split:
        return infos[0][1] if infos else ShardInfo(None, 0, 1, torch.device("cpu"))
    first_name, first = split[0]
    for n, info in split[1:]:
        if info.group is not first.group:
            raise ValueError(
                f"{n} and {first_name} are sharded over different process groups: "
                f"expected one group for a global threshold"
            )
    return first


# ---------------------------------------------------------------- exact k-th selection


def keep_largest_sharded(
    scores: Sequence[Tensor],
    k: int,
    split: Sequence[bool],
    rank: int,
    world: int,
    reduce_sum: ReduceSum,
    device: torch.device | None = None,
) -> list[Tensor]:
    """Keep the ``k`` largest of all scores of all ranks, ties to the earlier tensor, then the
    earlier rank's shard, then the lower local index (the single-process order of ``torch.cat``
    over tensors whose dim 0 is split across ranks in rank order).

    ``scores``: this rank's part of each tensor, any shapes; ``split[i]``: tensor ``i`` is split
    across the ranks (False: every rank holds all of it and computes the same mask).
    ``reduce_sum`` sums an int64 tensor over the ranks (identity in a single process).
    Returns bool masks shaped like ``scores``. The caller ensures ``0 < k < total``.
    """
    device = device or (scores[0].device if scores else torch.device("cpu"))
    keyed = [sortable_keys(s) for s in scores]
    bits = max((b for _, b in keyed), default=32)
    keys = [key for key, _ in keyed]
    counted = [key if s or rank == 0 else key[:0] for key, s in zip(keys, split)]  # count each weight once
    threshold = kth_largest_key(counted, k, bits, reduce_sum, device)

    n = len(keys)
    greater = [key > threshold for key in keys]
    tied = [key == threshold for key in keys]
    local_ties = [int(torch.count_nonzero(t)) for t in tied]
    counts = torch.zeros(
        n + world * n, dtype=torch.int64, device=device
    )  # [greater per tensor | ties per (rank, tensor)]
    for i, key in enumerate(counted):
        if key.numel():  # this rank counts tensor i
            counts[i] = int(torch.count_nonzero(greater[i]))
            counts[n + rank * n + i] = local_ties[i]
    counts = reduce_sum(counts)
    missing = k - int(counts[:n].sum())  # ties to keep, >= 1
    ties = counts[n:].reshape(world, n)  # [world, tensors]
    out = []
    for i, s in enumerate(split):
        before = int(ties[:, :i].sum()) + (int(ties[:rank, i].sum()) if s else 0)
        take = max(0, min(missing - before, local_ties[i]))
        keep = greater[i]
        if take == local_ties[i]:
            keep |= tied[i]
        elif take:
            keep[tied[i].nonzero()[:take, 0]] = True  # the first `take` ties by index
        out.append(keep.reshape(scores[i].shape))
    return out


# ---------------------------------------------------------------- masks of (maybe) sharded weights


def _on(t: Tensor, device: torch.device | None) -> Tensor:
    return t if device is None else t.to(device)


def _sharded_keep(
    weights: Sequence[Tensor],
    masks: Sequence[Tensor | None],
    sparsity: float,
    names: Sequence[str],
    devices: Sequence[torch.device | None],
    pooled: bool,
    on_nan: Sequence[M.NanReport | None] | None = None,
    criterion_scores: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    info = _common_info(weights, names)
    split = [shard_info(w, n).split for w, n in zip(weights, names)]
    reports = list(on_nan) if on_nan is not None else [None] * len(weights)
    if criterion_scores is None:
        scores = [M.magnitude_scores(_on(local(w), d), m, r) for w, m, d, r in zip(weights, masks, devices, reports)]
    else:  # a criterion's scores of the local shards; -inf where already pruned (or NaN)
        scores = [
            M.selection_scores(_on(sc, d), m, r) for sc, m, d, r in zip(criterion_scores, masks, devices, reports)
        ]
    if pooled:  # one threshold over several tensors compares in float32, as masks.global_masks does
        scores = [s.float() for s in scores]
    total = sum(w.numel() for w in weights)  # global sizes
    k = G.keep_count(total, sparsity)
    if k >= total:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    return keep_largest_sharded(
        scores, k, split, info.rank, info.world, info.reduce_sum, info.device if info.split else None
    )


def compute_mask(
    w: Tensor,
    mask: Tensor | None,
    sparsity: float,
    balance: str,
    bank_size: int = 64,
    layout: str = "channels_last",
    out_dim: int = 0,
    name: str = "tensor",
    device: torch.device | None = None,
    on_nan: M.NanReport | None = None,
    scores: Tensor | None = None,
) -> Tensor:
    """``masks.compute_mask`` for a plain tensor or a DTensor sharded on dim 0 (mask of the local
    shard). Bank-balanced: shard-local, no communication; unstructured: exact k-th selection.
    ``device``: where the mask is computed and kept (default: beside the weight or its shard);
    ``on_nan``: hears of NaN weights in this rank's shard (pruned first, as everywhere);
    ``scores``: a criterion's scores shaped like the local shard (None: ``|w|``)."""
    if scores is not None:
        scores = _on(scores, device)
    if not is_sharded(w):
        return M.compute_mask(
            _on(w, device), mask, sparsity, balance, bank_size, layout, out_dim, scores, on_nan=on_nan
        )
    info = shard_info(w, name)
    if balance == "fix" and w.dim() >= 2:
        if info.split and out_dim != 0:
            raise ValueError(
                f"{name} is sharded on dim 0 but its output channels are on dim {out_dim}: "
                f"banks would straddle shards; shard it on its output channels or use balance='none'"
            )
        shard = _on(local(w), device)
        if shard.numel() == 0:  # a rank past the last row (uneven split)
            return torch.zeros_like(shard, dtype=torch.bool)
        return M.bank_mask(shard, mask, sparsity, bank_size, layout, out_dim, scores, on_nan=on_nan)
    return _sharded_keep(
        [w], [mask], sparsity, [name], [device], pooled=False, on_nan=[on_nan],
        criterion_scores=None if scores is None else [scores],
    )[0]  # fmt: skip


def global_masks(
    weights: Sequence[Tensor],
    masks: Sequence[Tensor | None],
    sparsity: float,
    names: Sequence[str] | None = None,
    devices: Sequence[torch.device | None] | None = None,
    on_nan: Sequence[M.NanReport | None] | None = None,
    scores: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """``masks.global_masks`` over plain tensors and/or DTensors (masks of the local shards).
    ``devices[i]``: where mask ``i`` is computed and kept (default: beside its weight); ``on_nan[i]``
    hears of NaN weights in tensor ``i``; ``scores``: a criterion's scores, one per weight, shaped
    like its local shard (None: ``|w|``)."""
    devices = list(devices) if devices is not None else [None] * len(weights)
    placed = None if scores is None else [_on(sc, d) for sc, d in zip(scores, devices)]
    if not any(is_sharded(w) for w in weights):
        return M.global_masks([_on(w, d) for w, d in zip(weights, devices)], masks, sparsity, placed, on_nan=on_nan)
    names = list(names) if names is not None else [f"tensor {i}" for i in range(len(weights))]
    return _sharded_keep(weights, masks, sparsity, names, devices, pooled=True, on_nan=on_nan, criterion_scores=placed)


# ---------------------------------------------------------------- counting over shards


def count_nonzero(w: Tensor) -> int:
    """Non-zeros of the whole tensor, summed over the shards of a DTensor."""
    info = shard_info(w)
    n = torch.tensor([int((local(w) != 0).sum())], dtype=torch.int64)
    return int(info.reduce_sum(n)[0])


def banks_balanced(w: Tensor, geometry: G.BankGeometry, sparsity: float) -> bool:
    """``masks.check_banks(...).balanced`` over the whole tensor (every shard of a DTensor), its banks
    cut by ``geometry``."""
    shard = local(w)
    g = geometry
    ok = shard.numel() == 0 or M.check_banks(shard, g.bank_size, g.layout, g.out_dim, sparsity).balanced
    info = shard_info(w)
    failures = torch.tensor([0 if ok else 1], dtype=torch.int64)
    return int(info.reduce_sum(failures)[0]) == 0


# ---------------------------------------------------------------- strategies the pruner is given


class LocalMasks:
    """Whole tensors in this process (one process, or replicated weights under DDP): ``masks.py`` as is.

    The pruner asks its strategy for every mask and every count, so the same pruner code serves
    plain tensors and DTensor shards. ``pytorch_pruning.Prune`` picks one with ``strategy_for``.
    """

    def local(self, t: Tensor) -> Tensor:
        """The part of ``t`` this rank holds (all of it here)."""
        return t

    def local_shape(self, w: Tensor) -> tuple[int, ...]:
        """Shape of the part of ``w`` this rank holds."""
        return tuple(w.shape)

    def compute_mask(
        self,
        w: Tensor,
        mask: Tensor | None,
        sparsity: float,
        spec: Any,
        name: str,
        device: torch.device,
        on_nan: M.NanReport | None = None,
        scores: Tensor | None = None,
    ) -> Tensor:
        """Keep-mask of ``w`` (``spec``: a ``config.ParamSpec``), computed and kept on ``device``;
        ``on_nan(count)`` hears of NaN weights (pruned first); ranked by ``scores`` (a criterion's,
        ``w``'s shape) when given, else by ``|w|``."""
        return M.compute_mask(
            _on(w, device),
            mask,
            sparsity,
            spec.balance,
            spec.bank_size,
            spec.layout,
            spec.out_dim,
            None if scores is None else _on(scores, device),
            on_nan=on_nan,
        )

    def global_masks(
        self,
        weights: Sequence[Tensor],
        masks: Sequence[Tensor | None],
        sparsity: float,
        names: Sequence[str],
        devices: Sequence[torch.device],
        on_nan: Sequence[M.NanReport | None] | None = None,
        scores: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        placed = None if scores is None else [_on(sc, d) for sc, d in zip(scores, devices)]
        return M.global_masks([_on(w, d) for w, d in zip(weights, devices)], masks, sparsity, placed, on_nan=on_nan)

    def count_nonzero(self, w: Tensor) -> int:
        return int(torch.count_nonzero(w.detach()))

    def banks_balanced(self, w: Tensor, spec: Any, sparsity: float) -> bool:
        return M.check_banks(w, spec.bank_size, spec.layout, spec.out_dim, sparsity).balanced

    def all_ranks(self, flag: Tensor) -> bool:
        """Whether the 0-dim bool ``flag`` holds on every rank sharing the parameters (this one alone here)."""
        return bool(flag)


class ShardedMasks(LocalMasks):
    """DTensors split on dim 0 across ranks (FSDP2), mixed with plain tensors: masks of the local
    shards, counts over all shards. Every placement is validated when the strategy is built."""

    def __init__(self, params: Mapping[str, Tensor], specs: Mapping[str, Any]) -> None:
        infos = {name: shard_info(p, name) for name, p in params.items()}  # refuses unsupported placements
        for name, spec in specs.items():
            if spec.balance == "fix" and spec.out_dim != 0 and len(spec.shape) >= 2 and infos[name].split:
                raise ValueError(
                    f"{name} is sharded on dim 0 but its output channels are on dim {spec.out_dim}: banks would "
                    "straddle shards; shard it on its output channels or use balance='none' for it"
                )
        pooled = [name for name, spec in specs.items() if spec.balance == "global"]
        if pooled:
            _common_info([params[n] for n in pooled], pooled)  # one process group for one threshold
        self._device = next((info.device for info in infos.values() if info.split), torch.device("cpu"))

    def all_ranks(self, flag: Tensor) -> bool:
        """``flag`` on every rank of the default group (every rank calls ``prune()``): one all-reduce."""
        x = flag.to(self._device, torch.int32).reshape(1)
        dist.all_reduce(x, op=dist.ReduceOp.MIN)
        return bool(x)

    def local(self, t: Tensor) -> Tensor:
        return local(t)

    def local_shape(self, w: Tensor) -> tuple[int, ...]:
        return tuple(local(w).shape)

    def compute_mask(
        self,
        w: Tensor,
        mask: Tensor | None,
        sparsity: float,
        spec: Any,
        name: str,
        device: torch.device,
        on_nan: M.NanReport | None = None,
        scores: Tensor | None = None,
    ) -> Tensor:
        return compute_mask(
            w, mask, sparsity, spec.balance, spec.bank_size, spec.layout, spec.out_dim, name, device, on_nan, scores
        )

    def global_masks(
        self,
        weights: Sequence[Tensor],
        masks: Sequence[Tensor | None],
        sparsity: float,
        names: Sequence[str],
        devices: Sequence[torch.device],
        on_nan: Sequence[M.NanReport | None] | None = None,
        scores: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        return global_masks(weights, masks, sparsity, names, devices, on_nan, scores)

    def count_nonzero(self, w: Tensor) -> int:
        return count_nonzero(w)

    def banks_balanced(self, w: Tensor, spec: Any, sparsity: float) -> bool:
        return banks_balanced(w, spec.geometry, sparsity)


def strategy_for(params: Mapping[str, Tensor], specs: Mapping[str, Any]) -> LocalMasks:
    """``ShardedMasks`` when any of ``params`` is a DTensor (validated now), else ``LocalMasks``."""
    if any(is_sharded(p) for p in params.values()):
        return ShardedMasks(params, specs)
    return LocalMasks()


# ---------------------------------------------------------------- replicated weights (DDP)


def broadcast_mask(mask: Tensor, src: int = 0, group: Any = None) -> Tensor:
    """Rank ``src``'s copy of ``mask`` (bool), on ``mask``'s device, on every rank of ``group``."""
    if dist is None or not dist.is_initialized():
        raise RuntimeError("broadcasting masks needs an initialised torch.distributed process group")
    buf = mask.to(_collective_device(group), torch.uint8)
    dist.broadcast(buf, src=src, group=group)
    return buf.to(mask.device).bool()


def _collective_device(group: Any) -> torch.device:
    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
