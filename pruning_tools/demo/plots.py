"""The demo's figures (PNG, matplotlib without a display): schedule, per-layer sparsity, bank fill."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..masks import bank_nonzeros


def save_figure(fig: Any, path: str | Path, dpi: float | None = None) -> None:
    """``fig.savefig`` written atomically (``pruning_tools.atomic``); the format follows the suffix."""
    from ..atomic import atomic_open

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)


def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_sparsity_curve(steps: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Scheduled target and measured overall sparsity against the training step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [s["step"] for s in steps]
    ax.plot(x, [s["target"] for s in steps], label="target (schedule)", lw=2)
    ax.plot(x, [s["sparsity"] for s in steps], label="measured (zeros in weights)", ls="--")
    ax.set(xlabel="training step", ylabel="sparsity", ylim=(0, 1), title="Target vs measured sparsity")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_layer_sparsity(layer_sparsity: Mapping[str, float], path: str | Path) -> Path:
    """One horizontal bar per pruned parameter: its fraction of zeros."""
    plt = _pyplot()
    names = list(layer_sparsity)
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2))
    bars = ax.barh(names, [layer_sparsity[n] for n in names])
    ax.bar_label(bars, labels=[f"{layer_sparsity[n]:.1%}" for n in names], padding=3)
    ax.set(xlabel="sparsity", xlim=(0, 1.15), title="Sparsity per layer")
    ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def bank_fill(
    weights: Mapping[str, np.ndarray], bank_size: int = 64, layout: str = "channels_last"
) -> dict[str, np.ndarray]:
    """Non-zeros per full bank (flat int array) of every weight with >= 2 dims and a full bank."""
    counts = {}
    for name, w in weights.items():
        if np.ndim(w) < 2:
            continue
        full, _ = bank_nonzeros(torch.as_tensor(np.asarray(w)), bank_size, layout)  # [rows, full_banks]
        if full.numel():
            counts[name] = full.reshape(-1).numpy()
    return counts


def plot_bank_histogram(
    weights: Mapping[str, np.ndarray], bank_size: int, path: str | Path, layout: str = "channels_last"
) -> Path:
    """Histogram of non-zeros per bank, one colour per layer; a balanced layer is a single bar."""
    plt = _pyplot()
    counts = bank_fill(weights, bank_size, layout)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if counts:
        edges = np.arange(bank_size + 2) - 0.5
        ax.hist(list(counts.values()), bins=edges, label=list(counts), stacked=True)
        ax.legend(fontsize="small")
    ax.set(
        xlabel=f"non-zeros per bank of {bank_size}",
        ylabel="banks",
        xlim=(-0.5, bank_size + 0.5),
        title="Non-zeros per bank",
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)
