"""What the GPU check compares: patterns, dtypes, shapes, and the weights, generated on the CPU.

Pure: no device here. A case names everything needed to rebuild its tensors bit for bit
(``weight``, ``previous_mask``), so the device side and the CPU reference start from the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pruning_tools import masks as M
from pruning_tools.benchmarks.models import bert_like, prunable_weights, resnet50


@dataclass(frozen=True)
class Pattern:
    """A mask pattern: ``balance`` ``"fix"`` (banks of ``bank_size``), ``"none"`` or ``"global"``."""

    label: str
    balance: str
    bank_size: int
    sparsity: float


PATTERNS = (
    Pattern("bank-64 93.75%", "fix", 64, 0.9375),  # keeps 4 of 64
    Pattern("bank-64 90%", "fix", 64, 0.9),  # keeps 6 of 64; tail budgets round differently
    Pattern("2:4", "fix", 4, 0.5),
    Pattern("bank-16 70%", "fix", 16, 0.7),  # keeps 5 of 16: the kernel's insertion path
    Pattern("unstructured 90%", "none", 64, 0.9),
)
GLOBAL = Pattern("global 90%", "global", 64, 0.9)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# weights: "normal" N(0, 1); "ties" multiples of 1/4 in [-1, 1] with +0.0 and -0.0 (ties everywhere);
# "tiny" N(0, 1) times the dtype's smallest normal number (subnormals: flush-to-zero would show);
# "nonfinite" N(0, 1) with 2 % NaN, 1 % +inf and 1 % -inf (one rule on every path: NaN pruned first)
KINDS = ("normal", "ties", "tiny", "nonfinite")
# previous mask: None (first refresh), "ramp" (this pattern at half the sparsity, as mid-ramp),
# "random" (half alive at random: banks with fewer live weights than their budget)
PREVIOUS = (None, "ramp", "random")
VARIANTS = (("normal", None), ("normal", "ramp"), ("ties", "random"), ("tiny", "ramp"), ("nonfinite", "random"))


@dataclass(frozen=True)
class Geometry:
    """One weight: its shape, how its rows are read (``layout``, ``out_dim``), and where it comes from."""

    source: str  # "ResNet-50 layer1.0.conv2.weight", "edge: tail bank", ...
    shape: tuple[int, ...]
    layout: str = "channels_last"
    out_dim: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


EDGE = (
    Geometry("edge: row 100 = bank + tail 36", (10, 100)),
    Geometry("edge: conv rows 127 = 64 + tail 63", (7, 127, 3, 3)),
    Geometry("edge: conv flat rows", (5, 6, 3, 3), "flat"),
    Geometry("edge: rows shorter than a bank", (33, 5)),
    Geometry("edge: ConvTranspose (out on dim 1)", (16, 8, 3, 3), "channels_last", 1),
    Geometry("edge: ConvTranspose flat", (12, 6, 2, 2), "flat", 1),
    Geometry("edge: Conv1D [in, out] (out on dim 1)", (100, 48), "channels_last", 1),
    Geometry("edge: N-D parameter, rows along the last dim", (4, 6, 100), "last_dim"),
    Geometry("edge: Conv1d", (12, 70, 5)),
    Geometry("edge: Conv3d", (4, 9, 2, 2, 2)),
    Geometry("edge: depthwise (rows of 1)", (32, 1, 3, 3)),
    Geometry("edge: one row, wide", (3, 1000)),
    Geometry("edge: 1x1", (1, 1)),
    Geometry("edge: vector", (300,)),
)


def model_geometries(model_name: str) -> list[Geometry]:
    """Every distinct weight shape of ``"ResNet-50"`` or ``"BERT-base"`` (named by its first user)."""
    model = _meta_model(model_name)
    seen: dict[tuple[int, ...], Geometry] = {}
    for name, p in prunable_weights(model).items():
        seen.setdefault(tuple(p.shape), Geometry(f"{model_name} {name}", tuple(p.shape)))
    return list(seen.values())


def model_weights(model_name: str) -> list[Geometry]:
    """Every conv/linear weight of the model, in model order (the pool of a global mask)."""
    model = _meta_model(model_name)
    return [Geometry(f"{model_name} {name}", tuple(p.shape)) for name, p in prunable_weights(model).items()]


def _meta_model(model_name: str) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        if model_name == "ResNet-50":
            return resnet50()
        if model_name == "BERT-base":
            return bert_like()
    raise ValueError(f"model_name={model_name!r} is not allowed: expected 'ResNet-50' or 'BERT-base'")


@dataclass(frozen=True)
class MaskCase:
    """One mask to compute on the device and on the CPU: a weight, a pattern, a dtype, its data."""

    geometry: Geometry
    pattern: Pattern
    dtype: torch.dtype
    kind: str
    previous: str | None
    seed: int

    @property
    def label(self) -> str:
        g, data = self.geometry, f"{_dtype_name(self.dtype)} {self.kind}/{self.previous or 'none'}"
        return f"{g.source} {list(g.shape)} {self.pattern.label} {data}"


@dataclass(frozen=True)
class GlobalCase:
    """One global mask over a pool of weights (one threshold over all of them)."""

    name: str
    geometries: tuple[Geometry, ...]
    dtype: torch.dtype
    kind: str
    previous: str | None
    seed: int
    pattern: Pattern = GLOBAL

    @property
    def label(self) -> str:
        data = f"{_dtype_name(self.dtype)} {self.kind}/{self.previous or 'none'}"
        return f"{self.name} ({len(self.geometries)} tensors) {self.pattern.label} {data}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def mask_cases(
    geometries: Sequence[Geometry],
    patterns: Sequence[Pattern] = PATTERNS,
    dtypes: Sequence[torch.dtype] = DTYPES,
    variants: Sequence[tuple[str, str | None]] = VARIANTS,
) -> list[MaskCase]:
    """The cross product, each case with its own seed (so no two cases share their weights)."""
    out: list[MaskCase] = []
    for g in geometries:
        for p in patterns:
            for dtype in dtypes:
                for kind, previous in variants:
                    out.append(MaskCase(g, p, dtype, kind, previous, seed=len(out)))
    return out


def default_mask_cases(quick: bool = False) -> list[MaskCase]:
    """The check's list: ResNet-50's and BERT-base's weight shapes and the edge shapes (``quick``: edges only)."""
    shapes = list(EDGE) if quick else [*model_geometries("ResNet-50"), *model_geometries("BERT-base"), *EDGE]
    return mask_cases(shapes)


def default_global_cases(quick: bool = False) -> list[GlobalCase]:
    """Global masks over every weight of ResNet-50 and of BERT-base, and over the edge shapes."""
    pools: list[tuple[str, tuple[Geometry, ...], Sequence[tuple[str, str | None]]]] = [("edge shapes", EDGE, VARIANTS)]
    if not quick:
        pools += [
            ("ResNet-50", tuple(model_weights("ResNet-50")), (("normal", None), ("ties", "random"))),
            ("BERT-base", tuple(model_weights("BERT-base")), (("normal", "ramp"),)),
        ]
    out: list[GlobalCase] = []
    for name, geometries, variants in pools:
        for dtype in DTYPES:
            for kind, previous in variants:
                out.append(GlobalCase(name, geometries, dtype, kind, previous, seed=10_000 + len(out)))
    return out


# ---------------------------------------------------------------- the tensors of a case


def weight(shape: Sequence[int], dtype: torch.dtype, kind: str, seed: int) -> Tensor:
    """The weight of a case, on the CPU: the same bits for the same arguments on every machine."""
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        w = torch.randn(tuple(shape), generator=g)
    elif kind == "ties":
        w = torch.randint(-4, 5, tuple(shape), generator=g).float() / 4  # 9 values, +0.0 among them
        w = torch.where(torch.rand(tuple(shape), generator=g) < 0.5, w, -w)  # and -0.0
    elif kind == "tiny":
        w = torch.randn(tuple(shape), generator=g) * torch.finfo(dtype).tiny  # subnormal in `dtype`
    elif kind == "nonfinite":
        w, u = torch.randn(tuple(shape), generator=g), torch.rand(tuple(shape), generator=g)
        w = w.masked_fill(u < 0.02, math.nan).masked_fill((u >= 0.02) & (u < 0.03), math.inf)
        w = w.masked_fill((u >= 0.03) & (u < 0.04), -math.inf)
    else:
        raise ValueError(f"kind={kind!r} is not allowed: expected one of {', '.join(KINDS)}")
    return w.to(dtype)


def previous_mask(
    w: Tensor, pattern: Pattern, previous: str | None, seed: int, layout: str = "channels_last", out_dim: int = 0
) -> Tensor | None:
    """The mask a refresh starts from (see ``PREVIOUS``), computed on the CPU by the CPU engine."""
    if previous is None:
        return None
    if previous == "ramp":
        if pattern.balance == "global":
            return M.unstructured_mask(w, None, pattern.sparsity / 2)
        return M.compute_mask(w, None, pattern.sparsity / 2, pattern.balance, pattern.bank_size, layout, out_dim)
    if previous == "random":
        return torch.rand(tuple(w.shape), generator=torch.Generator().manual_seed(seed + 1)) < 0.5
    raise ValueError(f"previous={previous!r} is not allowed: expected one of {PREVIOUS}")


def case_tensors(case: MaskCase) -> tuple[Tensor, Tensor | None]:
    """``(weight, previous mask)`` of a case, on the CPU; the weight is zero where the previous mask
    prunes (as ``Prune`` leaves it)."""
    g = case.geometry
    w = weight(g.shape, case.dtype, case.kind, case.seed)
    prev = previous_mask(w, case.pattern, case.previous, case.seed, g.layout, g.out_dim)
    return (w if prev is None else w.masked_fill(~prev, 0)), prev


def global_tensors(case: GlobalCase) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(weight, previous mask)`` of every tensor of a global case, on the CPU."""
    for i, g in enumerate(case.geometries):
        w = weight(g.shape, case.dtype, case.kind, case.seed * 1000 + i)
        prev = previous_mask(w, case.pattern, case.previous, case.seed * 1000 + i, g.layout, g.out_dim)
        yield (w if prev is None else w.masked_fill(~prev, 0)), prev
