"""The LM demo's runs: dense training, one-shot pruning, gradual pruning, one-shot then fine-tuning.

Each function takes the corpus (and the dense weights where it starts from them) and returns a
plain result dict: ``{"kind", "settings", "test" (``trainer.evaluate``), "valid", "sparsity",
"layers", "seconds", "threads", "load" (1-minute load average at start and end), "log", ...}``,
JSON-ready. Every projection weight inside the blocks is pruned (``model.block_weights``: 16 of them,
3.1 M of the model's 3.4 M weights); embeddings, norms and the output head stay dense.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ...post_training import oneshot
from ...pytorch_pruning import Prune
from .data import Corpus
from .model import GPT, GPTConfig, block_weights
from .trainer import Recipe, calibration, evaluate, new_model, train

DENSE = Recipe(steps=1000, lr=2e-3, min_lr=2e-4, warmup=50, seed=0)
CONTINUED = Recipe(steps=500, lr=1e-3, min_lr=1e-4, warmup=20, seed=1)  # gradual pruning from the dense model
FINETUNE = Recipe(steps=200, lr=5e-4, min_lr=5e-5, warmup=10, seed=2)  # after one-shot pruning
RAMP = 0.6  # gradual runs: the cubic ramp takes this fraction of the steps, then fine-tuning at the target
FREQUENCY = 20  # gradual runs: masks refreshed every 20 steps of the ramp
CALIBRATION = 128  # one-shot: calibration sequences of `context` bytes from the training split

# name -> (balance, bank_size, sparsity)
PATTERNS: dict[str, tuple[str, int, float]] = {
    "unstructured 50%": ("none", 64, 0.5),
    "2:4": ("fix", 4, 0.5),
    "4:8": ("fix", 8, 0.5),
    "bank-64 50%": ("fix", 64, 0.5),
    "bank-64 75%": ("fix", 64, 0.75),
}


def prune_dict(model: GPT, balance: str, bank_size: int, sparsity: float) -> dict[str, dict]:
    """Every block projection at ``sparsity`` with the given pattern."""
    return {name: {"sparsity": sparsity, "balance": balance, "bank_size": bank_size} for name in block_weights(model)}


def _load() -> float:
    return os.getloadavg()[0]


def _measure(model: GPT, corpus: Corpus, eval_bytes: int | None) -> dict:
    return {"test": evaluate(model, corpus.test, eval_bytes), "valid": evaluate(model, corpus.valid, eval_bytes)}


def _sparsity(model: GPT) -> tuple[dict[str, float], float]:
    params = dict(model.named_parameters())
    layers = {name: float((params[name] == 0).float().mean()) for name in block_weights(model)}
    total = sum(int((params[n] == 0).sum()) for n in layers) / sum(params[n].numel() for n in layers)
    return layers, total


def _finish(kind: str, model: GPT, corpus: Corpus, settings: dict, started: float, load: float, **extra: Any) -> dict:
    layers, total = _sparsity(model)
    result = {
        "kind": kind,
        "settings": settings,
        **_measure(model, corpus, settings.get("eval_bytes")),
        "sparsity": total,
        "layers": layers,
        "threads": torch.get_num_threads(),
        "load": [load, _load()],
        **extra,
    }
    result["seconds"] = time.perf_counter() - started
    return result


def run_dense(
    corpus: Corpus,
    config: GPTConfig | None = None,
    recipe: Recipe = DENSE,
    eval_bytes: int | None = 131072,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[dict, GPT]:
    """Train the dense model from scratch: ``(result, model)``."""
    started, load = time.perf_counter(), _load()
    config = config or GPTConfig()
    model = new_model(config, recipe.seed)
    log = train(model, corpus, recipe, on_log=on_log)
    settings = {"model": config.to_dict(), "recipe": recipe.to_dict(), "eval_bytes": eval_bytes}
    return _finish("dense", model, corpus, settings, started, load, log=log, parameters=_count(model)), model


def _count(model: GPT) -> dict:
    pruned = sum(p.numel() for n, p in model.named_parameters() if n in block_weights(model))
    return {"total": sum(p.numel() for p in model.parameters()), "pruned": pruned}


def from_state(config: GPTConfig, state: Mapping[str, Tensor]) -> GPT:
    """A model with the given weights (a ``state_dict``)."""
    model = GPT(config)
    model.load_state_dict(dict(state))
    model.eval()
    return model


def run_oneshot(
    corpus: Corpus,
    config: GPTConfig,
    dense: Mapping[str, Tensor],
    method: str,
    pattern: str | tuple[str, int, float],
    eval_bytes: int | None = 131072,
    sequences: int = CALIBRATION,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict, GPT]:
    """One-shot ``method`` at ``PATTERNS[pattern]`` (or a ``(balance, bank_size, sparsity)`` tuple) from the dense
    weights: ``(result, model)``."""
    started, load = time.perf_counter(), _load()
    balance, bank_size, sparsity = PATTERNS[pattern] if isinstance(pattern, str) else pattern
    model = from_state(config, dense)
    batches = calibration(corpus.train, sequences, config.context)
    report = oneshot(model, batches, prune_dict(model, balance, bank_size, sparsity), method=method, progress=progress)
    settings = {
        "method": method,
        "pattern": pattern,
        "balance": balance,
        "bank_size": bank_size,
        "sparsity": sparsity,
        "calibration_sequences": sequences,
        "context": config.context,
        "eval_bytes": eval_bytes,
    }
    report_data = report.to_dict()
    oneshot_summary = {
        "seconds": report.seconds,
        "peak_bytes": report.peak_bytes,
        "peak_rss_bytes": report.peak_rss_bytes,
        "mode": report.mode,
        "layers": {
            name: {k: layer[k] for k in ("pattern", "sparsity", "balanced", "error_before", "error_after", "damping")}
            for name, layer in report_data["layers"].items()
        },
    }
    return _finish("oneshot", model, corpus, settings, started, load, oneshot=oneshot_summary), model


def run_gradual(
    corpus: Corpus,
    config: GPTConfig,
    dense: Mapping[str, Tensor] | None,
    balance: str,
    sparsity: float,
    criterion: str = "magnitude",
    bank_size: int = 64,
    recipe: Recipe = CONTINUED,
    eval_bytes: int | None = 131072,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[dict, GPT]:
    """Continue training the dense model while pruning on the cubic schedule (``sparsity=0``: dense
    continued training, the baseline); ``(result, model)``."""
    started, load = time.perf_counter(), _load()
    model = from_state(config, dense) if dense is not None else new_model(config)
    prune = None
    settings: dict[str, Any] = {
        "balance": balance,
        "bank_size": bank_size,
        "sparsity": sparsity,
        "criterion": criterion,
        "recipe": recipe.to_dict(),
        "eval_bytes": eval_bytes,
    }
    if sparsity > 0:
        ramp = max(1, round(RAMP * recipe.steps))
        prune = Prune(model, 0, ramp, FREQUENCY, prune_dict(model, balance, bank_size, sparsity), criterion=criterion)
        settings.update(pretrain_step=0, sparse_step=ramp, frequency=FREQUENCY)
    log = train(model, corpus, recipe, prune=prune, on_log=on_log)
    extra = {"log": log, "balanced": prune.check()[1] if prune is not None else None}
    return _finish(
        "gradual" if prune is not None else "dense-continued", model, corpus, settings, started, load, **extra
    ), model


def run_oneshot_finetune(
    corpus: Corpus,
    config: GPTConfig,
    dense: Mapping[str, Tensor],
    pattern: str | tuple[str, int, float],
    method: str = "sparsegpt",
    recipe: Recipe = FINETUNE,
    eval_bytes: int | None = 131072,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[dict, GPT]:
    """One-shot pruning, then a short fine-tune with ``Prune(..., restore_sparsity=True)`` (masks kept)."""
    started, load = time.perf_counter(), _load()
    first, model = run_oneshot(corpus, config, dense, method, pattern, eval_bytes)
    balance, bank_size, sparsity = (
        first["settings"]["balance"],
        first["settings"]["bank_size"],
        first["settings"]["sparsity"],
    )
    prune = Prune(model, 0, 0, 1, prune_dict(model, balance, bank_size, sparsity), restore_sparsity=True)
    log = train(model, corpus, recipe, prune=prune, on_log=on_log)
    settings = {**first["settings"], "recipe": recipe.to_dict()}
    extra = {
        "log": log,
        "balanced": prune.check()[1],
        "before_finetune": {"test": first["test"], "oneshot": first["oneshot"]},
    }
    return _finish("oneshot+finetune", model, corpus, settings, started, load, **extra), model


@torch.no_grad()
def feature_norm_spread(corpus: Corpus, config: GPTConfig, dense: Mapping[str, Tensor], sequences: int = 32) -> dict:
    """How uneven the inputs of each block projection are: per layer, the max and the 99th percentile
    of the input features' norms ``||x_j||`` (over the calibration tokens) divided by their median.
    Wanda's advantage over magnitude rests on a few large features (LLMs have 100x outliers)."""
    model = from_state(config, dense)
    norms: dict[str, Tensor] = {}

    def hook(name: str) -> Callable:
        def record(module: torch.nn.Module, args: tuple, output: Tensor) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()  # [tokens, in]
            norms[name] = norms.get(name, torch.zeros(x.shape[1], dtype=torch.float64)) + x.square().sum(0)

        return record

    handles = [
        module.register_forward_hook(hook(f"{name}.weight"))
        for name, module in model.named_modules()
        if f"{name}.weight" in block_weights(model)
    ]
    for batch in calibration(corpus.train, sequences, config.context):
        model(batch)
    for handle in handles:
        handle.remove()
    out = {}
    for name, squares in norms.items():
        n = squares.sqrt()
        median = float(n.median())
        out[name] = {"max_over_median": float(n.max()) / median, "p99_over_median": float(n.quantile(0.99)) / median}
    return out


def with_steps(recipe: Recipe, steps: int) -> Recipe:
    """``recipe`` shortened or lengthened to ``steps`` (warm-up capped at a tenth)."""
    return replace(recipe, steps=steps, warmup=min(recipe.warmup, max(1, steps // 10)))


__all__ = [
    "CONTINUED",
    "DENSE",
    "FINETUNE",
    "PATTERNS",
    "from_state",
    "prune_dict",
    "run_dense",
    "run_gradual",
    "run_oneshot",
    "run_oneshot_finetune",
    "with_steps",
]
