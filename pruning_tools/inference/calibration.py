"""How fast the bank-sparse layers are on *this* machine: the constants of ``to_bank_sparse``'s rule.

A short calibration (a few layer shapes; about half a second on a free core) times masked dense PyTorch and the
bank-sparse modules, interleaved, at a few input sizes per layer family, and fits per size a cost model

    time(dense)  = dense_call_us  + n · weights · dense_ns_per_mac
    time(sparse) = sparse_call_us + n · stored  · sparse_ns_per_slot

with ``n`` the rows of a linear layer's input (tokens, batch) or a convolution's output positions,
``weights`` the dense weights and ``stored`` the packed slots. ``expected(family, weights, stored, n)``
is the modelled speedup (interpolated in log ``n`` between the calibrated sizes and in log ``weights``
between the calibrated layers); the rule without ``example_inputs`` converts a layer when its *worst*
calibrated size still reaches ``min_speedup``, so a layer is converted only where it is faster at
every input size calibrated. Work a module does densely in both forms (the attention products of
``nn.MultiheadAttention``) is added to both times: ``attention_ns(macs)``, from dense
``scaled_dot_product_attention`` timed at two sequence lengths.

Families: ``linear`` (256 → 256 and 640 → 2560 features at rows 1, 8, 64, 256: decoding, small
batches, token blocks), ``conv`` (a 3×3 convolution of 128 → 128 channels at 7², 14², 28² positions)
and ``conv1x1`` (512 → 128 and 1024 → 256 channels at 7², 14², 28²). The result is cached in the
kernels' cache directory (``_native.cache_dir()``), keyed by CPU model, instruction-set level,
engine, thread count, torch version and the kernel's source (the source the loaded kernel was built
from: a file edited or upgraded under a running process does not re-key it), so it runs once per
machine and setting; ``calibrate()`` runs it again. The cached file is untrusted: one that does not read back as
a valid calibration is measured again. A calibration measured while other processes kept the cores
busy (1-minute load average above the core count) is measured again once the load has halved, so a
busy moment at first use does not stay the machine's model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from .. import _native
from ..atomic import write_text
from ..masks import bank_mask

FAMILIES = ("linear", "conv", "conv1x1")
VERSION = 3  # of the file format and the shapes measured
M = TypeVar("M", nn.Linear, nn.Conv2d)
KEEP = 4  # of 64: the shapes are timed at 93.75 % (the model scales with the stored slots)


@dataclass(frozen=True)
class Point:
    """The cost model of one family for a layer of ``weights`` dense weights at input size ``n`` (rows
    or output positions)."""

    weights: int
    n: int
    dense_ns_per_mac: float
    sparse_ns_per_slot: float


def _between(x: float, x0: float, x1: float) -> float:
    """Where ``x`` lies from ``x0`` (0) to ``x1`` (1) in log scale, clamped to [0, 1]."""
    if x1 <= x0:
        return 0.0
    return min(1.0, max(0.0, (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))))


@dataclass(frozen=True)
class Calibration:
    """Per-call costs (µs) and per-size rates of dense and bank-sparse layers on one machine and setting."""

    key: dict[str, str]  # what it was measured for (cpu, isa, engine, threads, torch, kernel)
    dense_call_us: float
    sparse_call_us: float
    points: dict[str, tuple[Point, ...]]  # family -> points, by layer size then input size
    seconds: float = 0.0  # how long the measurement took
    attention_call_us: float = 0.0  # dense attention products: per call (0: not modelled)
    attention_ns_per_mac: float = 0.0  # and per multiply-add of Q·Kᵀ and weights·V
    load: float = 0.0  # 1-minute load average when measured

    def expected(self, family: str, weights: int, stored: int, n: int | None = None, shared_ns: float = 0.0) -> float:
        """Modelled dense ÷ bank-sparse time of a layer with ``weights`` dense weights and ``stored`` packed
        slots, on an input of ``n`` rows / output positions (None: the worst calibrated size), plus
        ``shared_ns`` of work both forms do densely (``attention_ns``). Rates are interpolated in log
        scale between the calibrated input sizes and layer sizes (clamped at the ends)."""
        if n is None:
            return min(self._speedup(family, weights, stored, m, shared_ns) for m in self._sizes(family))
        return self._speedup(family, weights, stored, n, shared_ns)

    def attention_ns(self, macs: int) -> float:
        """Modelled time (ns) of dense attention products of ``macs`` multiply-adds (``2·N·L·S·E`` for
        ``N`` sequences of ``L`` queries and ``S`` keys, embedding ``E``)."""
        return self.attention_call_us * 1e3 + macs * self.attention_ns_per_mac if macs > 0 else 0.0

    def span(self, family: str, weights: int, stored: int) -> tuple[float, float]:
        """The smallest and largest modelled speedup over the calibrated input sizes."""
        values = [self._speedup(family, weights, stored, m) for m in self._sizes(family)]
        return min(values), max(values)

    def _sizes(self, family: str) -> list[int]:
        return sorted({p.n for p in self.points[family]})

    def _rates(self, family: str, weights: int, n: int) -> tuple[float, float]:
        """(dense ns per multiply-add, bank-sparse ns per slot) of a layer of ``weights`` at size ``n``."""
        by_layer: dict[int, list[Point]] = {}
        for p in self.points[family]:
            by_layer.setdefault(p.weights, []).append(p)

        def at_n(points: list[Point]) -> tuple[float, float]:
            lo = max((p for p in points if p.n <= n), key=lambda p: p.n, default=min(points, key=lambda p: p.n))
            hi = min((p for p in points if p.n >= n), key=lambda p: p.n, default=max(points, key=lambda p: p.n))
            a = _between(n, lo.n, hi.n)
            return (lo.dense_ns_per_mac * (1 - a) + hi.dense_ns_per_mac * a,
                    lo.sparse_ns_per_slot * (1 - a) + hi.sparse_ns_per_slot * a)  # fmt: skip

        sizes = sorted(by_layer)
        small = max((w for w in sizes if w <= weights), default=sizes[0])
        large = min((w for w in sizes if w >= weights), default=sizes[-1])
        a = _between(weights, small, large)
        (d0, s0), (d1, s1) = at_n(by_layer[small]), at_n(by_layer[large])
        return d0 * (1 - a) + d1 * a, s0 * (1 - a) + s1 * a

    def times(self, family: str, weights: int, stored: int, n: int, shared_ns: float = 0.0) -> tuple[float, float]:
        """Modelled (dense, bank-sparse) ns per call of the layer of ``expected`` on an input of ``n``."""
        dense_rate, sparse_rate = self._rates(family, weights, n)
        dense = self.dense_call_us * 1e3 + n * weights * dense_rate + shared_ns
        sparse = self.sparse_call_us * 1e3 + n * stored * sparse_rate + shared_ns
        return dense, sparse

    def _speedup(self, family: str, weights: int, stored: int, n: int, shared_ns: float = 0.0) -> float:
        dense, sparse = self.times(family, weights, stored, n, shared_ns)
        return dense / sparse

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = VERSION
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """Read a calibration file (untrusted): a ``ValueError`` for anything but a valid one."""
        try:
            data = json.loads(text)
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            points = {
                family: tuple(
                    Point(int(p["weights"]), int(p["n"]), float(p["dense_ns_per_mac"]), float(p["sparse_ns_per_slot"]))
                    for p in data["points"][family]
                )
                for family in FAMILIES
            }
            out = cls(
                {str(k): str(v) for k, v in data["key"].items()},
                float(data["dense_call_us"]),
                float(data["sparse_call_us"]),
                points,
                float(data.get("seconds", 0.0)),
                float(data["attention_call_us"]),
                float(data["attention_ns_per_mac"]),
                float(data["load"]),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
            raise ValueError(f"not a calibration file ({type(error).__name__}: {error})") from None
        extra = (out.attention_call_us, out.attention_ns_per_mac, out.load)
        if not all(math.isfinite(v) and 0 <= v < 1e9 for v in extra):
            raise ValueError("not a calibration file (an attention cost or load that is not a finite number >= 0)")
        numbers = [out.dense_call_us, out.sparse_call_us] + [
            v for ps in points.values() for p in ps for v in (p.dense_ns_per_mac, p.sparse_ns_per_slot)
        ]
        if not all(math.isfinite(v) and 0 < v < 1e9 for v in numbers):
            raise ValueError("not a calibration file (a rate or cost that is not a positive finite number)")
        for family, ps in points.items():
            if not ps or any(p.n < 1 or p.weights < 1 for p in ps) or len({(p.weights, p.n) for p in ps}) != len(ps):
                raise ValueError(f"not a calibration file (sizes of {family!r} not distinct positive integers)")
        return out


# ---------------------------------------------------------------- the key and the file


def key() -> dict[str, str]:
    """What a calibration depends on: CPU, instruction-set level and engine, threads, torch, kernel."""
    engine = _native.engine()
    native = engine != "torch" and _native.library("bank_sparse") is not None
    # the source the loaded kernel was built from (a file edited or upgraded since is not what runs)
    loaded = _native.loaded_digest("bank_sparse") if native else None
    return {
        "cpu": _native.isa.cpu_model(),
        "isa": _native.isa.chosen() if native else "-",
        "engine": "native" if native else "torch",
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "kernel": loaded or _native.source_digest(_native.KERNELS["bank_sparse"].source),
    }


def path_of(k: dict[str, str]) -> Path:
    """The cache file of the calibration keyed by ``k`` (CPU, ISA level, engine, threads, versions)."""
    digest = hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:16]
    return _native.cache_dir() / f"calibration-{digest}.json"


_memory: dict[str, Calibration] = {}  # path -> calibration, this process
_fixed = threading.local()  # use_calibration's, per thread
_lock = threading.Lock()


def calibration() -> Calibration:
    """The calibration of this machine and setting: ``use_calibration``'s, else the one measured in this
    process or cached on disk, else measured now (and cached)."""
    fixed = getattr(_fixed, "value", None)
    if fixed is not None:
        return fixed
    k = key()
    path = path_of(k)
    found = _memory.get(str(path))
    if found is not None:
        return found
    with _lock:
        if str(path) not in _memory:
            try:
                cached = Calibration.from_json(path.read_text())
                if cached.key != k:
                    raise ValueError("measured for another setting")
                if measured_when_busy(cached):
                    raise ValueError("measured while the cores were busy; quieter now")
                _memory[str(path)] = cached
            except (OSError, ValueError, UnicodeDecodeError):
                _memory[str(path)] = _measure_and_save(k, path)
        return _memory[str(path)]


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return 0.0


def measured_when_busy(cached: Calibration) -> bool:
    """Whether ``cached`` was measured while other processes kept the cores busy (1-minute load
    average above the core count) and the load has since halved: then it is measured again."""
    return cached.load > (os.cpu_count() or 1) and _load() <= cached.load / 2


def calibrate() -> Calibration:
    """Measure this machine again (the current thread count, instruction-set level and engine), cache
    the result beside the compiled kernels and return it. Takes about half a second on a free core
    (seconds where other processes keep the cores busy and torch uses several threads)."""
    k = key()
    path = path_of(k)
    with _lock:
        _memory[str(path)] = _measure_and_save(k, path)
        return _memory[str(path)]


@contextlib.contextmanager
def use_calibration(value: Calibration) -> Iterator[None]:
    """Use ``value`` instead of this machine's calibration inside the ``with`` block (this thread): a rule
    that does not depend on the machine (tests), or one measured elsewhere."""
    if not isinstance(value, Calibration):
        raise TypeError(f"value={type(value).__name__} is not allowed: expected a Calibration")
    previous = getattr(_fixed, "value", None)
    _fixed.value = value
    try:
        yield
    finally:
        _fixed.value = previous


def _measure_and_save(k: dict[str, str], path: Path) -> Calibration:
    result = measure(k)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, result.to_json())
    except OSError:
        pass  # a read-only cache: measured again by the next process
    return result


# ---------------------------------------------------------------- measuring


def _pruned(module: M, generator: torch.Generator) -> M:
    """``module`` with random weights, ``KEEP`` of every 64 input channels kept per (channels-last) row."""
    weight: torch.Tensor = module.weight
    bias = module.bias
    with torch.no_grad():
        w = torch.randn(weight.shape, generator=generator)
        rows = w.permute(0, 2, 3, 1).reshape(-1, w.shape[1]) if w.dim() == 4 else w
        mask = bank_mask(rows, None, 1 - KEEP / 64, 64)
        if w.dim() == 4:
            o, c, kh, kw = w.shape
            mask = mask.reshape(o, kh, kw, c).permute(0, 3, 1, 2)
        weight.copy_(w * mask)
        if bias is not None:
            bias.copy_(torch.randn(bias.shape, generator=generator))
    return module.eval()


def _times(
    dense: Callable[[], object], sparse: Callable[[], object], rounds: int, calls: int, budget_s: float = 0.1
) -> tuple[float, float]:
    """Seconds per call of ``dense`` and ``sparse``: the fastest of ``rounds`` interleaved rounds of
    ``calls`` each (load from other processes only ever adds time); after two rounds it stops once
    ``budget_s`` is spent (a machine so loaded that one product takes many times its usual time)."""
    dense(), sparse()  # warm: kernels built, caches filled
    d: list[float] = []
    s: list[float] = []
    started = time.perf_counter()
    for r in range(rounds):
        for f, out in ((dense, d), (sparse, s)) if r % 2 == 0 else ((sparse, s), (dense, d)):
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            out.append((time.perf_counter() - t0) / calls)
        if r >= 1 and time.perf_counter() - started > budget_s:
            break
    return min(d), min(s)


def _shapes() -> dict[str, list[tuple[nn.Linear | nn.Conv2d, torch.Tensor, int]]]:
    """family -> (dense layer, input, n) at each calibrated size: linear layers of 256 → 256 and 640 → 2560
    features at 1, 8, 64 and 256 rows; a 3×3 convolution and two 1×1 ones at 7², 14² and 28² output
    positions."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, list[tuple[nn.Linear | nn.Conv2d, torch.Tensor, int]]] = {"linear": [], "conv": [], "conv1x1": []}
    for features, outputs in ((256, 256), (640, 2560)):
        fc = _pruned(nn.Linear(features, outputs), g)
        out["linear"] += [(fc, torch.randn(n, features, generator=g), n) for n in (1, 8, 64, 256)]
    conv = _pruned(nn.Conv2d(128, 128, 3, padding=1), g)
    out["conv"] = [(conv, torch.randn(1, 128, s, s, generator=g), s * s) for s in (7, 14, 28)]
    for cin, cout in ((512, 128), (1024, 256)):
        pointwise = _pruned(nn.Conv2d(cin, cout, 1), g)
        out["conv1x1"] += [(pointwise, torch.randn(1, cin, s, s, generator=g), s * s) for s in (7, 14, 28)]
    return out


_ATTENTION_LENGTHS = (16, 256)


def _attention_times(rounds: int, generator: torch.Generator) -> list[float]:
    """Seconds per call of dense ``scaled_dot_product_attention``, 4 heads of 64, at sequence lengths
    ``_ATTENTION_LENGTHS``: the fastest of ``rounds``."""
    out = []
    for length in _ATTENTION_LENGTHS:
        q = torch.randn(1, 4, length, 64, generator=generator)
        calls = 20 if length == 16 else 2
        F.scaled_dot_product_attention(q, q, q)  # warm
        best = math.inf
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(calls):
                F.scaled_dot_product_attention(q, q, q)
            best = min(best, (time.perf_counter() - t0) / calls)
        out.append(best)
    return out


def _attention_fit(times: list[float]) -> tuple[float, float]:
    """(µs per call, ns per multiply-add) through the two attention timings (``2·H·L²·D`` each)."""
    (m0, m1), (t0, t1) = [2 * 4 * n * n * 64 for n in _ATTENTION_LENGTHS], [t * 1e9 for t in times]
    rate = max((t1 - t0) / (m1 - m0), t1 * 0.05 / m1)
    return max(0.0, t0 - m0 * rate) / 1e3, rate


@dataclass(frozen=True)
class _Case:
    """One calibrated size: a dense layer, its bank-sparse twin and an input of ``n`` rows / positions."""

    family: str
    dense: nn.Module
    sparse: nn.Module
    x: torch.Tensor
    n: int
    weights: int
    stored: int

    def times(self, rounds: int) -> tuple[float, float]:
        """Seconds per call, dense and bank-sparse: the fastest of ``rounds`` interleaved rounds."""
        repeat = max(1, min(20, int(2e6 / (self.n * self.weights / 16 + 1))))  # ~1 ms of sparse work per round
        return _times(lambda: self.dense(self.x), lambda: self.sparse(self.x), rounds, repeat, budget_s=0.04)

    def point(self, times: tuple[float, float], calls: tuple[float, float]) -> Point:
        """The rates at this size from its ``times`` per call with the per-call costs ``calls`` taken off."""
        (td, ts), (dense_call, sparse_call) = times, calls
        dense_rate = max(td - dense_call, td * 0.05) * 1e9 / (self.n * self.weights)
        sparse_rate = max(ts - sparse_call, ts * 0.05) * 1e9 / (self.n * self.stored)
        return Point(self.weights, self.n, dense_rate, sparse_rate)


def _cases() -> list[_Case]:
    """Every calibrated size of every family (``_shapes``), with its bank-sparse module built once per layer."""
    from .modules import BankSparseConv, BankSparseLinear

    out: list[_Case] = []
    built: dict[int, BankSparseLinear | BankSparseConv] = {}
    for family, shapes in _shapes().items():
        for layer, x, n in shapes:
            if id(layer) not in built:
                built[id(layer)] = (
                    BankSparseLinear.from_linear(layer)
                    if isinstance(layer, nn.Linear)
                    else BankSparseConv.from_conv(layer)
                )
            packed = built[id(layer)].packed()
            stored = packed.values.numel() + packed.tail_values.numel()
            out.append(_Case(family, layer, built[id(layer)], x, n, math.prod(packed.shape), stored))
    return out


def measure(k: dict[str, str] | None = None, rounds: int = 5, passes: int = 2) -> Calibration:
    """Time dense and bank-sparse layers on this machine now (no cache): the per-call costs from a
    trivial layer, then the per-size rates of each family with those costs taken off. Every size is
    timed in each of ``passes`` sweeps and keeps its fastest rates, so that a slow moment of the
    machine (seconds long on shared virtual machines) spoils at most one sweep."""
    from .modules import BankSparseLinear

    started = time.perf_counter()
    load = _load()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        tiny = _pruned(nn.Linear(64, 16), g)
        tiny_sparse = BankSparseLinear.from_linear(tiny)
        x = torch.randn(1, 64, generator=g)
        cases = _cases()
        calls = (math.inf, math.inf)
        best = [(math.inf, math.inf)] * len(cases)
        attention = [math.inf] * len(_ATTENTION_LENGTHS)
        for _ in range(passes):
            dense_call, sparse_call = _times(lambda: tiny(x), lambda: tiny_sparse(x), rounds, 50)
            calls = (min(calls[0], dense_call), min(calls[1], sparse_call))
            for i, case in enumerate(cases):
                td, ts = case.times(rounds)
                best[i] = (min(best[i][0], td), min(best[i][1], ts))
            attention = [min(a, b) for a, b in zip(attention, _attention_times(rounds, g), strict=True)]
        points: dict[str, tuple[Point, ...]] = {family: () for family in FAMILIES}
        for case, times in zip(cases, best, strict=True):
            points[case.family] += (case.point(times, calls),)
        attention_call_us, attention_rate = _attention_fit(attention)
    seconds = time.perf_counter() - started
    return Calibration(
        k or key(), calls[0] * 1e6, calls[1] * 1e6, points, seconds, attention_call_us, attention_rate, load
    )


def reset() -> None:
    """Forget the calibrations held in this process (the files stay)."""
    with _lock:
        _memory.clear()


__all__ = [
    "Calibration",
    "Point",
    "calibrate",
    "calibration",
    "measure",
    "measured_when_busy",
    "reset",
    "use_calibration",
]
