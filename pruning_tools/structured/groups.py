"""Groups of coupled channels, found from a trace; their scores, their keep counts and masks.

A *unit* is everything removed together: one output channel of a layer (or one attention head,
or a key/value head with its query heads) with every slice coupled to it. Units touching the
same tensors (along the same dims) are the channels of one *group*; a group loses units, never
parts of one. Plain data (``to_dict``/``from_dict``) so a pruner state carries its groups and
``shrink`` needs no inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .trace import Member, Trace


@dataclass(frozen=True)
class Group:
    """Channels coupled across tensors.

    ``slices[(name, dim)]``: ``[units, width]`` indices of ``name`` along ``dim`` that each unit
    holds (every unit holds as many); ``producers``: the weights whose output channels the units are
    (what ``prune_dict`` targets); ``buffers``: member names that are buffers (sliced, never masked).
    """

    slices: dict[tuple[str, int], tuple[tuple[int, ...], ...]]
    producers: tuple[str, ...]
    buffers: tuple[str, ...] = ()

    @property
    def units(self) -> int:
        return len(next(iter(self.slices.values())))

    def width(self, name: str) -> int:
        """Output channels of producer ``name`` in one unit (1 for a channel, head_dim for a head)."""
        for (n, _), idx in self.slices.items():
            if n == name:
                return len(idx[0])
        raise KeyError(name)

    def members(self) -> list[str]:
        return list(dict.fromkeys(n for n, _ in self.slices))

    def to_dict(self) -> dict:
        return {
            "producers": list(self.producers),
            "buffers": list(self.buffers),
            "slices": [[name, dim, [list(u) for u in idx]] for (name, dim), idx in self.slices.items()],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Group:
        """Inverse of ``to_dict``; every field checked (it may come from a file)."""
        if not isinstance(data, Mapping) or set(data) != {"producers", "buffers", "slices"}:
            raise ValueError(f"{where} is not a channel group: expected a dict with producers, buffers, slices")
        slices: dict[tuple[str, int], tuple[tuple[int, ...], ...]] = {}
        units = None
        entries: list[Any] = data["slices"] if isinstance(data["slices"], list) else [None]
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3):
                raise ValueError(f"{where}['slices'] entry {entry!r:.200} is not [name, dim, [[index, ...], ...]]")
            ok = isinstance(entry[0], str)
            ok = ok and isinstance(entry[1], int) and entry[1] in (0, 1) and isinstance(entry[2], list)
            rows = entry[2] if ok else []
            ok = ok and all(isinstance(u, list) and all(type(i) is int and i >= 0 for i in u) for u in rows)
            if not ok or not rows or (units is not None and len(rows) != units):
                raise ValueError(f"{where}['slices'] entry {entry!r:.200} is not [name, dim, [[index, ...], ...]]")
            if len({len(u) for u in rows}) != 1:
                raise ValueError(f"{where}['slices'] entry for {entry[0]!r}: units of unequal width")
            units = len(rows)
            slices[(entry[0], entry[1])] = tuple(tuple(u) for u in rows)
        names = {n for n, _ in slices}
        for key in ("producers", "buffers"):
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(n, str) and n in names for n in value):
                raise ValueError(f"{where}[{key!r}]={value!r:.200} is not a list of member names")
        if not data["producers"]:
            raise ValueError(f"{where}['producers'] is empty: a group needs a producing weight")
        return cls(slices, tuple(data["producers"]), tuple(data["buffers"]))


@dataclass
class Plan:
    """Every group found in a model, and what was left dense and why."""

    groups: list[Group]
    left_dense: dict[str, str] = field(default_factory=dict)  # weight or layer -> why its channels stay
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # module path -> weight, kind, positions

    def to_dict(self) -> dict:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "left_dense": dict(self.left_dense),
            "layers": {k: dict(v) for k, v in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "state['structure']") -> Plan:
        if not isinstance(data, Mapping) or set(data) != {"groups", "left_dense", "layers"}:
            raise ValueError(f"{where} is not a structured-pruning plan: expected groups, left_dense, layers")
        if not isinstance(data["groups"], list):
            raise ValueError(f"{where}['groups'] is a {type(data['groups']).__name__}: expected a list")
        groups = [Group.from_dict(g, f"{where}['groups'][{i}]") for i, g in enumerate(data["groups"])]
        left = data["left_dense"]
        if not isinstance(left, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in left.items()):
            raise ValueError(f"{where}['left_dense'] is not a dict of names to reasons")
        layers = data["layers"]
        if not isinstance(layers, Mapping):
            raise ValueError(f"{where}['layers'] is not a dict of layer records")
        for path, info in layers.items():
            if not isinstance(info, Mapping) or set(info) != {"weight", "kind", "positions"}:
                raise ValueError(f"{where}['layers'][{path!r}] is not a layer record")
            ok = True
            ok = ok and isinstance(info["weight"], str) and info["kind"] in ("linear", "conv")
            if not ok or type(info["positions"]) is not int or info["positions"] < 0:
                raise ValueError(f"{where}['layers'][{path!r}] is not a layer record")
        return cls(groups, dict(left), {k: dict(v) for k, v in layers.items()})


def build_plan(trace: Trace, order: Sequence[str]) -> Plan:
    """Group the traced channels into units and groups; ``order``: parameter names in model order."""
    uf = trace.couplings.uf
    units: dict[int, list[Member]] = {}
    for channel, members in trace.members.items():
        units.setdefault(uf.find(channel), []).extend(members)
    pinned: dict[int, str] = {}
    for channel, reason in trace.couplings.pinned.items():
        pinned.setdefault(uf.find(channel), reason)
    rank = {name: i for i, name in enumerate(order)}
    left_dense: dict[str, str] = dict(trace.untraced)
    by_key: dict[tuple[tuple[str, int], ...], list[dict[tuple[str, int], list[int]]]] = {}
    producers_of: dict[tuple[tuple[str, int], ...], set[str]] = {}
    for root, members in units.items():
        outs = {m.name for m in members if m.role == "out"}
        if root in pinned:
            for name in outs:
                left_dense.setdefault(name, pinned[root])
            continue
        slices: dict[tuple[str, int], list[int]] = {}
        for m in members:
            slices.setdefault((m.name, m.dim), []).append(m.index)
        key = tuple(sorted(slices))  # put in model order once per group, below
        by_key.setdefault(key, []).append({k: sorted(v) for k, v in slices.items()})
        producers_of.setdefault(key, set()).update(outs)
    groups = []
    for unordered, found in by_key.items():
        key = tuple(sorted(unordered, key=lambda k: (rank.get(k[0], len(rank)), k)))
        producers = sorted(producers_of[unordered], key=lambda n: rank.get(n, len(rank)))
        widths = {k: {len(u[k]) for u in found} for k in key}
        if not producers:
            continue
        if len(found) < 2:
            for name in producers:
                left_dense.setdefault(name, "its output channels are coupled into one unit (nothing can go alone)")
            continue
        if any(len(w) != 1 for w in widths.values()):
            for name in producers:
                left_dense.setdefault(name, "its coupled units have unequal widths")
            continue
        found.sort(key=lambda u: u[key[0]][0])
        unit_slices = {k: tuple(tuple(u[k]) for u in found) for k in key}
        buffers = tuple(n for n, _ in key if n in trace.buffers)
        groups.append(Group(unit_slices, tuple(producers), buffers))
    groups.sort(key=lambda g: (rank.get(g.producers[0], len(rank)), next(iter(g.slices.values()))[0][0]))
    return Plan(groups, left_dense, dict(trace.layers))


def kept_units(units: int, target: float, round_to: int, width: int) -> int:
    """Units a group of ``units`` keeps at ``target`` (fraction of output channels removed): at
    least one, rounded up so that kept channels (``units * width``) are a multiple of ``round_to``
    where the group allows it."""
    keep = units - math.floor(target * units + 0.5)
    step = round_to // math.gcd(round_to, width)
    keep = max(1, keep)
    return min(units, math.ceil(keep / step) * step)


def removes_everything(units: int, target: float) -> bool:
    """Whether removing the fraction ``target`` of ``units`` (rounded half up) leaves none."""
    return units - math.floor(target * units + 0.5) <= 0


def unit_scores(group: Group, tensors: Mapping[str, Tensor]) -> Tensor:
    """``[units]`` float64: per unit, the square root of the sum over its member slices of
    ``tensors[name]`` squared (``tensors``: the parameters, or their movement scores summed: see
    ``movement_scores``). Names missing from ``tensors`` (buffers) are skipped."""
    total = torch.zeros(group.units, dtype=torch.float64)
    for (name, dim), idx in group.slices.items():
        t = tensors.get(name)
        if t is None:
            continue
        per_channel = (
            t.detach().double().pow(2).sum([d for d in range(t.dim()) if d != dim])
            if t.dim() > 1
            else t.detach().double().pow(2)
        )
        total += per_channel.cpu()[torch.tensor(idx)].sum(1)
    return total.sqrt()


def summed_scores(group: Group, tensors: Mapping[str, Tensor]) -> Tensor:
    """``[units]`` float64: per unit, the sum of ``tensors[name]`` over its member slices (movement)."""
    total = torch.zeros(group.units, dtype=torch.float64)
    for (name, dim), idx in group.slices.items():
        t = tensors.get(name)
        if t is None:
            continue
        per_channel = t.detach().double().sum([d for d in range(t.dim()) if d != dim]) if t.dim() > 1 else t.double()
        total += per_channel.cpu()[torch.tensor(idx)].sum(1)
    return total


def choose(scores: Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores; ties go to the lower index (same on every machine)."""
    order = torch.sort(-scores, stable=True).indices
    return sorted(order[:keep].tolist())


def masks_for(
    groups: Sequence[Group], removed: Sequence[Sequence[int]], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Tensor]:
    """Keep-masks of every parameter member (bool, the parameter's shape): ``removed[i]`` are the
    units of ``groups[i]`` removed; buffers get none."""
    masks = {name: torch.ones(shapes[name], dtype=torch.bool) for g in groups for name in g.members() if name in shapes}
    for g, gone in zip(groups, removed):
        if not gone:
            continue
        for (name, dim), idx in g.slices.items():
            if name in masks:
                rows = torch.tensor([i for u in gone for i in idx[u]], dtype=torch.long)
                masks[name].index_fill_(dim, rows, False)
    return masks


def removed_units(group: Group, masks: Mapping[str, Tensor]) -> list[int]:
    """Units of ``group`` masked in every parameter member (what ``shrink`` removes)."""
    kept = torch.zeros(group.units, dtype=torch.bool)
    seen = False
    for (name, dim), idx in group.slices.items():
        mask = masks.get(name)
        if mask is None:
            continue
        alive = mask.any(dim=[d for d in range(mask.dim()) if d != dim]) if mask.dim() > 1 else mask  # [size]
        kept |= alive.cpu()[torch.tensor(idx)].any(1)
        seen = True
    return [u for u in range(group.units) if seen and not bool(kept[u])]
