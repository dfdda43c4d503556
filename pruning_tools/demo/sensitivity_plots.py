"""PNG figures of a sensitivity table (matplotlib, extra ``plots``): curves and suggested targets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..sensitivity import SensitivityTable
from .plots import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'bank-pruning-tools[plots]'") from error
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_curves(table: SensitivityTable, path: str | Path, title: str | None = None) -> Path:
    """One curve per parameter: score against the sparsity it really reaches; the dense score
    as a dashed line. Writes a PNG to ``path`` and returns it."""
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for i, name in enumerate(table.names):
        x = [0.0] + [table.realised(name, level) for level in table.levels]
        ax.plot(x, [table.baseline, *table.scores[i]], marker="o", markersize=3, label=name)
    ax.axhline(table.baseline, color="grey", linestyle="--", linewidth=0.8, label="dense")
    ax.set_xlabel("sparsity of this parameter alone (fraction of zeros)")
    ax.set_ylabel("score")
    ax.set_title(
        title or f"Sensitivity, one parameter at a time (balance={table.balance!r}, bank {table.bank_size})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return Path(path)


def plot_targets(
    table: SensitivityTable, prune_dicts: Mapping[str, Mapping[str, float]], path: str | Path, title: str | None = None
) -> Path:
    """Grouped bars: per parameter, the sparsity it really reaches under each named prune_dict
    (e.g. ``{"suggested": ..., "uniform 90 %": ...}``). Writes a PNG to ``path`` and returns it."""
    fig = _figure(7.0, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(prune_dicts))
    positions = range(len(table.names))
    for k, (label, prune_dict) in enumerate(prune_dicts.items()):
        heights = [table.realised(name, float(prune_dict.get(name, 0.0))) for name in table.names]
        bars = ax.bar(
            [p + (k - (len(prune_dicts) - 1) / 2) * width for p in positions], heights, width=width, label=label
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(list(positions), table.names, fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("sparsity (fraction of zeros)")
    ax.set_title(title or "Per-parameter sparsity", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncols=max(1, len(prune_dicts)))
    save_figure(fig, path)
    return Path(path)
