"""Sensitivity analysis: how much sparsity each parameter takes, and a suggested ``prune_dict``.

For every listed parameter and every sparsity level, that parameter alone is pruned one-shot with
the same masks ``Prune`` uses (:func:`pruning_tools.masks.compute_mask`), the model is scored by a
user function, and the weights are written back bit-exactly. The result is a table
parameter x level -> score, from which :func:`suggest_prune_dict` picks per-parameter targets.

>>> import torch
>>> from pruning_tools import sensitivity
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
>>> x = torch.eye(64)
>>> dense = model(x).detach()
>>> @torch.no_grad()
... def score(m):  # higher is better: minus the output error
...     return -float(((m(x) - dense) ** 2).mean())
>>> table = sensitivity.sweep(model, score, levels=[0.5, 0.9], progress=False)
>>> table.names, table.levels
(['0.weight', '1.weight'], [0.5, 0.90625])
>>> len(table.scores), len(table.scores[0])
(2, 2)
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from . import geometry as G
from . import masks as M
from .atomic import atomic_open, write_text
from .config import LAYOUTS, ParamSpec, check_bank_size, check_choice, check_sparsity, check_step, resolve_prune_dict
from .integrity import parse_json, regular_file

DEFAULT_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
SWEEP_BALANCES = ("fix", "none")  # one parameter at a time: "global" is the same as "none"
TABLE_FORMAT = "pruning_tools.sensitivity/1"


# ---------------------------------------------------------------- levels


def snap_levels(levels: Iterable[Any] | None = None, balance: str = "fix", bank_size: int = 64) -> list[float]:
    """Sorted, distinct sparsity levels the pattern can realise.

    With ``balance="fix"`` a full bank keeps ``k = round(bank_size * (1 - s))`` (at least 1)
    weights, so ``s`` is snapped to ``1 - k / bank_size``: multiples of ``1 / bank_size``, at most
    ``1 - 1 / bank_size``. With ``balance="none"`` levels are kept as given (a tensor of ``n``
    weights realises multiples of ``1 / n``).

    >>> snap_levels([0.5, 0.6, 0.9, 0.98])
    [0.5, 0.59375, 0.90625, 0.984375]
    >>> snap_levels([0.5, 0.75], bank_size=4)
    [0.5, 0.75]
    """
    balance = check_choice("balance", balance, SWEEP_BALANCES)
    bank_size = check_bank_size("bank_size", bank_size)
    if levels is None:
        levels = DEFAULT_LEVELS
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise ValueError(f"levels={levels!r} is not allowed: expected a list of sparsities in [0, 1)")
    values = [check_sparsity(f"levels[{i}]", v) for i, v in enumerate(levels)]
    if not values:
        raise ValueError("levels=[] is not allowed: expected at least one sparsity in [0, 1)")
    if balance == "fix":
        values = [1.0 - max(1, G.keep_count(bank_size, v)) / bank_size for v in values]
    return sorted(set(values))


# ---------------------------------------------------------------- the table


@dataclass
class SensitivityTable:
    """Scores of the model with one parameter pruned at a time.

    ``scores[i][j]`` is the score with parameter ``names[i]`` alone pruned one-shot at
    ``levels[j]`` (shape ``[len(names), len(levels)]``); ``baseline`` is the unpruned score.
    ``shapes`` and the pattern (``balance``, ``bank_size``, ``layout``, ``out_dims``, and ``layouts``:
    the parameters read with another layout, N-D parameters no convolution owns) let the table
    compute the sparsity each parameter really reaches at any level.
    """

    names: list[str]
    levels: list[float]
    scores: list[list[float]]
    baseline: float
    shapes: dict[str, tuple[int, ...]]
    balance: str = "fix"
    bank_size: int = 64
    layout: str = "channels_last"
    out_dims: dict[str, int] = field(default_factory=dict)
    higher_is_better: bool = True
    layouts: dict[str, str] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Number of weights of each parameter."""
        return {name: math.prod(self.shapes[name]) for name in self.names}

    def realised(self, name: str, level: float) -> float:
        """Fraction of zeros parameter ``name`` reaches at ``level`` with this table's pattern."""
        geometry = G.BankGeometry(self.bank_size, self.layouts.get(name, self.layout), self.out_dims.get(name, 0))
        return G.realised_sparsity(tuple(self.shapes[name]), self.balance, level, geometry)

    def drops(self) -> list[list[float]]:
        """Score lost against ``baseline`` (positive = worse), ``[len(names), len(levels)]``."""
        sign = 1.0 if self.higher_is_better else -1.0
        return [[sign * (self.baseline - s) for s in row] for row in self.scores]

    def to_dict(self) -> dict:
        """Plain data (JSON-ready); ``from_dict`` reads it back."""
        return {
            "format": TABLE_FORMAT,
            "names": list(self.names),
            "levels": list(self.levels),
            "scores": [list(row) for row in self.scores],
            "baseline": self.baseline,
            "shapes": {n: list(s) for n, s in self.shapes.items()},
            "balance": self.balance,
            "bank_size": self.bank_size,
            "layout": self.layout,
            "out_dims": dict(self.out_dims),
            "higher_is_better": self.higher_is_better,
            "layouts": dict(self.layouts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityTable:
        """Inverse of ``to_dict``; data that is not a table of ``TABLE_FORMAT`` is a ``ValueError``."""
        if not isinstance(data, Mapping) or data.get("format") != TABLE_FORMAT:
            raise ValueError(f"data is not a sensitivity table of format {TABLE_FORMAT!r}")
        fields = {
            k: data[k]
            for k in (
                "names",
                "levels",
                "scores",
                "baseline",
                "balance",
                "bank_size",
                "layout",
                "out_dims",
                "higher_is_better",
            )
        }
        layouts = dict(data.get("layouts", {}))  # tables written before it existed have none
        return cls(shapes={n: tuple(s) for n, s in data["shapes"].items()}, layouts=layouts, **fields)

    def save_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON (atomically: a failed write leaves the old file intact)."""
        path = Path(path)
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load_json(cls, path: str | Path) -> SensitivityTable:
        """Read ``save_json``'s file (a regular file; JSON nested too deeply is a ``ValueError``)."""
        path = regular_file(path)
        return cls.from_dict(parse_json(path.read_text(), str(path)))

    def save_csv(self, path: str | Path) -> Path:
        """One row per (parameter, level): parameter, size, level, realised sparsity, score, drop
        (written atomically)."""
        path = Path(path)
        sizes, drops = self.sizes(), self.drops()
        with atomic_open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["parameter", "size", "level", "realised_sparsity", "score", "drop"])
            for i, name in enumerate(self.names):
                for j, level in enumerate(self.levels):
                    out.writerow(
                        [name, sizes[name], level, round(self.realised(name, level), 6), self.scores[i][j], drops[i][j]]
                    )
        return path


# ---------------------------------------------------------------- weights of a model


class ModelWeights(Protocol):
    """What ``sweep`` needs of a model's weights by name, as the pruner's bridges (``TorchBridge``,
    ``MxnetBridge``) give them: torch copies in and out, masks applied the pruner's way, and the shapes
    and geometry ``prune_dict`` entries are resolved against."""

    def read(self, name: str) -> torch.Tensor: ...

    def write(self, name: str, value: torch.Tensor) -> None: ...

    def apply_mask(self, name: str, mask: torch.Tensor) -> torch.Tensor | None: ...

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def out_dims(self) -> dict[str, int]: ...

    def layouts(self, layout: str = "channels_last") -> dict[str, str]: ...

    def aliases(self) -> dict[str, str]: ...

    def prunable(self) -> list[str]: ...


def _bridge_of(model: Any) -> ModelWeights:
    """The framework bridge of ``model`` (the one the pruner uses): read and write weights by name."""
    if isinstance(model, torch.nn.Module):
        from .pytorch_pruning import TorchBridge

        return TorchBridge(model)
    gluon = sys.modules.get("mxnet.gluon")  # a Gluon block means MXNet is already imported
    if gluon is not None and isinstance(model, gluon.Block):
        from .mxnet_pruning import MxnetBridge

        return MxnetBridge(model)
    raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module or a mxnet.gluon.Block")


def _score(evaluate: Callable[[Any], Any], model: Any) -> float:
    value = evaluate(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"evaluate(model) returned {value!r}: expected a finite number (the score)")
    return float(value)


# ---------------------------------------------------------------- the sweep


def sweep(
    model: Any,
    evaluate: Callable[[Any], float],
    params: str | Sequence[str] | None = None,
    levels: Iterable[float] | None = None,
    *,
    balance: str = "fix",
    bank_size: int = 64,
    layout: str = "channels_last",
    higher_is_better: bool = True,
    progress: bool | Progress = True,
) -> SensitivityTable:
    """Prune one parameter at a time, one-shot, score the model, restore the weights bit-exactly.

    - ``model``: a ``torch.nn.Module``, or a ``mxnet.gluon.Block`` (initialised; names from
      ``collect_params()``, masks from the same core on torch copies of the weights).
    - ``evaluate``: ``model -> score`` (a number; e.g. test accuracy). It should leave the model
      unchanged (call ``model.eval()`` inside if it matters): only the swept weights are restored.
    - ``params``: parameter names or glob patterns (default: every floating parameter with >= 2 dims).
    - ``levels``: sparsities in [0, 1), default ``DEFAULT_LEVELS``, snapped by ``snap_levels``.
    - ``balance``: ``"fix"`` (bank-balanced) or ``"none"`` (unstructured); ``bank_size``, ``layout``:
      bank geometry as in ``Prune``.
    - ``higher_is_better``: False when the score is a loss.
    - ``progress``: True shows a one-line count on stderr; a callable is called as
      ``progress(done, total, name, level)`` after each score; False: silent.

    Costs ``1 + len(params) * len(levels)`` calls of ``evaluate``. Returns a ``SensitivityTable``.
    """
    balance = check_choice("balance", balance, SWEEP_BALANCES)
    bank_size = check_bank_size("bank_size", bank_size)
    layout = check_choice("layout", layout, LAYOUTS)
    _check_evaluation(evaluate, higher_is_better)
    snapped = snap_levels(levels, balance, bank_size)
    weights = _bridge_of(model)
    shapes = weights.shapes()
    defaults = {"balance": balance, "bank_size": bank_size, "layout": layout}
    specs = _swept_specs(weights, params, shapes, defaults)
    names = list(specs)
    report = _progress_report(progress)
    baseline = _score(evaluate, model)
    scores = _score_levels(model, evaluate, weights, specs, snapped, report)
    return SensitivityTable(
        names=names,
        levels=snapped,
        scores=scores,
        baseline=baseline,
        shapes={n: shapes[n] for n in names},
        balance=balance,
        bank_size=bank_size,
        layout=layout,
        out_dims={n: specs[n].out_dim for n in names if specs[n].out_dim},
        higher_is_better=higher_is_better,
        layouts={n: specs[n].layout for n in names if specs[n].layout != layout},
    )


def _check_evaluation(evaluate: Any, higher_is_better: Any) -> None:
    """Refuse an ``evaluate`` that is not callable and a ``higher_is_better`` that is not a bool."""
    if not callable(evaluate):
        raise TypeError(f"evaluate={evaluate!r} is not allowed: expected a callable model -> score")
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"higher_is_better={higher_is_better!r} is not allowed: expected True or False")


def _swept_specs(
    weights: ModelWeights,
    params: str | Sequence[str] | None,
    shapes: Mapping[str, tuple[int, ...]],
    defaults: dict[str, Any],
) -> dict[str, ParamSpec]:
    """The spec of every parameter ``params`` names (default: every prunable one), in model order."""
    if params is None:
        params = weights.prunable()
    elif isinstance(params, str):
        params = [params]
    if not params:
        raise ValueError(f"params={params!r} is not allowed: expected parameter names or glob patterns")
    unpruned = {key: 0.0 for key in params}
    out_dims, layouts, aliases = weights.out_dims(), weights.layouts(defaults["layout"]), weights.aliases()
    return resolve_prune_dict(unpruned, shapes, defaults, out_dims, layouts, aliases)


def _progress_report(progress: bool | Progress) -> Progress | None:
    """The callable to report progress with (the text line for True), None for False."""
    report = _text_progress if progress is True else (progress or None)
    if report is not None and not callable(report):
        raise TypeError(f"progress={progress!r} is not allowed: expected True, False or a callable")
    return report


def _score_levels(
    model: Any,
    evaluate: Callable[[Any], float],
    weights: ModelWeights,
    specs: Mapping[str, ParamSpec],
    levels: list[float],
    report: Progress | None,
) -> list[list[float]]:
    """Scores ``[parameter][level]``: each parameter pruned alone at each level, restored after."""
    scores = [[math.nan] * len(levels) for _ in specs]
    done, total = 0, len(specs) * len(levels)
    for i, (name, spec) in enumerate(specs.items()):
        dense = weights.read(name).detach().clone()
        try:
            for j, level in enumerate(levels):
                keep = M.compute_mask(dense, None, level, spec.balance, spec.bank_size, spec.layout, spec.out_dim)
                weights.write(name, dense)
                weights.apply_mask(name, keep)  # the pruner's own way: pruned weights exactly +0.0
                scores[i][j] = _score(evaluate, model)
                done += 1
                if report is not None:
                    report(done, total, name, level)
        finally:
            weights.write(name, dense)
    return scores


Progress = Callable[[int, int, str, float], None]  # (done, total, parameter, level)


def _text_progress(done: int, total: int, name: str, level: float) -> None:
    """One line on stderr, rewritten in place (the command line draws a richer bar)."""
    end = "\n" if done == total else ""
    print(f"\rsensitivity {done}/{total}: {name} @ {level:.4f}\033[K", end=end, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the suggestion


def overall_sparsity(
    table: SensitivityTable, prune_dict: Mapping[str, float], sizes: Mapping[str, float] | None = None
) -> float:
    """Size-weighted fraction of zeros the table's parameters reach with ``prune_dict``
    (``{name: sparsity}``; names missing from it stay dense), with the table's pattern."""
    sizes = _checked_sizes(table, sizes)
    total = sum(sizes.values())
    zeros = sum(sizes[n] * table.realised(n, float(prune_dict.get(n, 0.0))) for n in table.names)
    return zeros / total


def predicted_drop(table: SensitivityTable, prune_dict: Mapping[str, float]) -> float:
    """Sum over parameters of the score drop each one caused alone at its target (snapped like the
    sweep's levels, interpolated between them): the quantity ``suggest_prune_dict`` minimises."""
    total = 0.0
    for i, name in enumerate(table.names):
        level = float(prune_dict.get(name, 0.0))
        if table.balance == "fix":
            level = snap_levels([level], "fix", table.bank_size)[0]
        total += float(np.interp(level, *_curve(table, i)))
    return total


def _checked_sizes(table: SensitivityTable, sizes: Mapping[str, float] | None) -> dict[str, float]:
    if sizes is None:
        return dict(table.sizes())
    if not isinstance(sizes, Mapping) or set(sizes) != set(table.names):
        raise ValueError(
            f"sizes={sizes!r} is not allowed: expected a dict with one positive number for each of {table.names}"
        )
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            raise ValueError(f"sizes[{name!r}]={v!r} is not allowed: expected a positive number")
    return {n: float(sizes[n]) for n in table.names}


def _curve(table: SensitivityTable, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Levels ``[0, *levels]`` and the drop envelope of parameter ``i``: the largest drop seen at
    this level or below (so more sparsity never predicts a better score), starting at 0."""
    levels = np.array([0.0, *table.levels])
    drops = np.maximum.accumulate(np.array([0.0, *table.drops()[i]]))
    if table.levels[0] == 0.0:
        levels, drops = levels[1:], drops[1:]
    return levels, drops


def suggest_prune_dict(
    table: SensitivityTable,
    target: float | None = None,
    max_drop: float | None = None,
    *,
    sizes: Mapping[str, float] | None = None,
    resolution: float | None = None,
    units: int = 20000,
) -> dict[str, float]:
    """Per-parameter sparsities that reach ``target`` overall while keeping sensitive layers denser.

    - ``target``: overall sparsity, the size-weighted mean of the sparsity each parameter really
      reaches with the table's pattern (see ``overall_sparsity``).
    - ``max_drop``: the score drop tolerated for any one parameter pruned alone.
    - ``sizes``: weights of the mean (default: parameter counts; pass e.g. multiply-accumulates).
    - ``resolution``: step of the candidate sparsities (default ``1 / bank_size`` for ``"fix"``,
      ``1 / 256`` for ``"none"``).
    - ``units``: steps of the overall sparsity in the dynamic program (default 20000).

    Method. Each parameter's curve is its score drop against the sweep's levels, with 0 at
    sparsity 0, made monotone (the largest drop seen at that level or below) and linearly
    interpolated on the grid of multiples of ``resolution`` up to the highest swept level (with
    ``max_drop``: the highest level whose drop is within ``max_drop``). Drops are assumed to add up
    across parameters, so the choice is a knapsack: one grid point per parameter, minimising the
    summed drop subject to the overall sparsity reaching ``target``. It is solved exactly by dynamic
    programming over the overall sparsity counted in ``units`` steps (each parameter's share
    rounded down, so the real overall sparsity is at least the target); ties keep parameters denser.
    Then parameters are lowered one grid step at a time while the overall sparsity stays at or
    above ``target`` (largest predicted saving first, then largest overshoot removed), so the
    result overshoots by less than one grid step of any pruned parameter (one bank step for
    ``"fix"``). Without ``target`` each parameter gets the highest level within ``max_drop``.

    Returns ``{name: sparsity}`` for every parameter of the table (0.0: keep dense), ready for
    ``Prune``. Raises ``ValueError`` when ``target`` cannot be reached within the swept levels.
    """
    if target is None and max_drop is None:
        raise ValueError(
            "target=None and max_drop=None is not allowed: expected a target overall "
            "sparsity, a tolerated score drop, or both"
        )
    if target is not None:
        target = check_sparsity("target", target)
    if max_drop is not None and (
        isinstance(max_drop, bool) or not isinstance(max_drop, numbers.Real) or not max_drop >= 0
    ):
        raise ValueError(f"max_drop={max_drop!r} is not allowed: expected a number >= 0")
    if resolution is None:
        resolution = 1.0 / table.bank_size if table.balance == "fix" else 1.0 / 256
    elif isinstance(resolution, bool) or not isinstance(resolution, numbers.Real) or not 0 < resolution < 1:
        raise ValueError(f"resolution={resolution!r} is not allowed: expected a number in (0, 1)")
    units = check_step("units", units, minimum=1)
    weights = _checked_sizes(table, sizes)
    total = sum(weights.values())

    grids, gains, costs = [], [], []  # per parameter: candidate levels, weight pruned, drop
    for i, name in enumerate(table.names):
        levels, drops = _curve(table, i)
        top = levels[-1] if max_drop is None else levels[drops <= max_drop + 1e-12][-1]
        grid = np.append(np.arange(0, int(round(top / resolution)) + 1) * resolution, top)
        grid = np.unique(np.minimum(grid, top))
        grids.append(grid)
        gains.append(np.array([weights[name] * table.realised(name, float(s)) for s in grid]) / total)
        costs.append(np.interp(grid, levels, drops))
    chosen = [len(g) - 1 for g in grids] if target is None else _allocate(gains, costs, target, table, max_drop, units)
    return {name: float(round(grids[i][chosen[i]], 9)) for i, name in enumerate(table.names)}


def _allocate(
    gains: list[np.ndarray],
    costs: list[np.ndarray],
    target: float,
    table: SensitivityTable,
    max_drop: float | None,
    units: int,
) -> list[int]:
    """Indices into each parameter's grid minimising the summed cost with the summed gain >= ``target``
    (see ``suggest_prune_dict``). ``gains[i][j]``: overall sparsity parameter ``i`` adds at grid
    point ``j``; ``costs[i][j]``: its predicted drop there."""
    reachable = sum(float(g[-1]) for g in gains)
    if reachable < target - 1e-12:
        within = "" if max_drop is None else f" and max_drop={max_drop}"
        raise ValueError(
            f"target={target} is not reachable: at most {reachable:.4f} overall within the "
            f"swept levels (up to {table.levels[-1]}){within}; sweep higher levels or lower the target"
        )
    need = int(math.ceil(target * units - 1e-6))  # units of overall sparsity to collect
    best = np.full(need + 1, np.inf)  # [need + 1]: least cost to collect u units (need: "need or more")
    best[0] = 0.0
    trail = []  # per parameter: ([need + 1] grid index, [need + 1] state before it) of each state
    states = np.arange(need + 1)
    for g, c in zip(gains, costs):
        step = np.minimum(np.floor(g * units + 1e-6).astype(int), need)  # [grid]
        new = np.full(need + 1, np.inf)
        pick, before = np.zeros(need + 1, dtype=np.int64), np.zeros(need + 1, dtype=np.int64)
        for j in range(len(g)):  # ascending: on equal cost the denser grid point stays
            k = int(step[j])
            moved, origin = np.full(need + 1, np.inf), states - k
            moved[k:] = best[: need + 1 - k] + c[j]
            top = need - k + int(np.argmin(best[need - k :]))  # any state reaching "need or more"
            if best[top] + c[j] < moved[need]:
                moved[need], origin[need] = best[top] + c[j], top
            better = moved < new - 1e-12
            new[better], pick[better], before[better] = moved[better], j, origin[better]
        best = new
        trail.append((pick, before))
    idx, u = [len(g) - 1 for g in gains], need
    if np.isfinite(best[need]):  # else shares rounded down missed it: start from every top level
        for i in reversed(range(len(gains))):
            idx[i], u = int(trail[i][0][u]), int(trail[i][1][u])
    return _back_off(idx, gains, costs, target, sum(float(g[j]) for g, j in zip(gains, idx)))


def _back_off(
    idx: list[int], gains: list[np.ndarray], costs: list[np.ndarray], target: float, reached: float
) -> list[int]:
    """Lower parameters one grid step at a time while the overall sparsity stays at or above
    ``target``: first the step saving the most predicted drop, then the one removing the most
    overshoot. Trims the overshoot left by whole grid steps and rounded-down shares."""
    while True:
        best = None  # (-drop saved, -sparsity removed, parameter)
        for i, (g, c) in enumerate(zip(gains, costs)):
            if idx[i] == 0:
                continue
            removed = float(g[idx[i]] - g[idx[i] - 1])
            if reached - removed >= target - 1e-12:
                key = (-float(c[idx[i]] - c[idx[i] - 1]), -removed, i)
                best = key if best is None or key < best else best
        if best is None:
            return idx
        i = best[2]
        reached -= float(gains[i][idx[i]] - gains[i][idx[i] - 1])
        idx[i] -= 1
