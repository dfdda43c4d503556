"""``pruning-tools demo --task lm``: train the byte-level GPT, prune it one-shot, fine-tune it sparse.

Three stages, each evaluated on held-out documents: dense training (``experiments.DENSE``), one-shot
pruning of every block projection (SparseGPT by default, 128 calibration sequences), a short
fine-tune with ``Prune(..., restore_sparsity=True)`` (``experiments.FINETUNE``: the masks are kept).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...post_training import oneshot
from ...pruner import write_state_file
from ...pytorch_pruning import Prune
from ..run_files import staged_run, write_manifest
from . import experiments as X
from .data import load_corpus
from .model import GPTConfig
from .trainer import calibration, evaluate, new_model, train

PLOTS_HINT = "no plots: matplotlib is not installed (pip install 'bank-pruning-tools[plots]')"


def run_lm_demo(
    data_dir: str | Path,
    *,
    sparsity: float = 0.9,
    balance: str = "fix",
    bank_size: int = 64,
    method: str = "sparsegpt",
    steps: int | None = None,
    seed: int = 0,
    threads: int | None = 1,
    limit: int | None = None,
    config: GPTConfig | None = None,
    sequences: int = X.CALIBRATION,
    eval_bytes: int | None = 131072,
    on_log: Callable[[str, dict], None] | None = None,
    on_layer: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Dense training -> one-shot ``method`` at (``sparsity``, ``balance``, ``bank_size``) -> fine-tune.

    ``steps``: dense training steps (default ``experiments.DENSE.steps``; the fine-tune takes a fifth
    as many); ``limit``: the first ``limit`` bytes of every split; ``threads``: torch's CPU threads
    while it runs (None: as is). ``on_log(stage, entry)`` gets the training log, ``on_layer`` the
    one-shot progress. Returns the results (JSON-ready) plus ``"weights"``, ``"dense_weights"``
    (state dicts) and ``"pruner_state"``.
    """
    if method not in ("magnitude", "wanda", "sparsegpt"):
        raise ValueError(f"method={method!r} is not allowed: expected one of 'magnitude', 'wanda', 'sparsegpt'")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(data_dir, sparsity, balance, bank_size, method, steps, seed, limit, config, sequences,
                    eval_bytes, on_log, on_layer)  # fmt: skip
    finally:
        torch.set_num_threads(previous)


def _run(data_dir, sparsity, balance, bank_size, method, steps, seed, limit, config, sequences, eval_bytes,
         on_log, on_layer) -> dict:  # fmt: skip
    started = time.perf_counter()
    corpus = load_corpus(data_dir).head(limit)
    if limit is not None and eval_bytes is not None:
        eval_bytes = min(eval_bytes, limit)
    config = config or GPTConfig()
    dense_recipe = replace(X.DENSE, seed=seed) if steps is None else replace(X.with_steps(X.DENSE, steps), seed=seed)
    tune_recipe = X.with_steps(X.FINETUNE, max(1, dense_recipe.steps // 5))
    stages: dict[str, Any] = {}

    def logger(stage: str) -> Callable[[dict], None] | None:
        return None if on_log is None else (lambda entry: on_log(stage, entry))

    clock = time.perf_counter()
    model = new_model(config, seed)
    dense_log = train(model, corpus, dense_recipe, on_log=logger("dense"))
    stages["dense"] = {"test": evaluate(model, corpus.test, eval_bytes), "seconds": time.perf_counter() - clock}
    dense_weights = {k: v.clone() for k, v in model.state_dict().items()}

    clock = time.perf_counter()
    prune_dict = X.prune_dict(model, balance, bank_size, sparsity)
    batches = calibration(corpus.train, sequences, config.context, seed + 1)
    report = oneshot(model, batches, prune_dict, method=method, progress=on_layer)
    stages["oneshot"] = {
        "test": evaluate(model, corpus.test, eval_bytes),
        "seconds": time.perf_counter() - clock,
        "report": report.to_dict(),
    }

    clock = time.perf_counter()
    prune = Prune(model, 0, 0, 1, prune_dict, restore_sparsity=True)
    tune_log = train(model, corpus, tune_recipe, prune=prune, on_log=logger("finetune"))
    stages["finetune"] = {"test": evaluate(model, corpus.test, eval_bytes), "seconds": time.perf_counter() - clock}
    layer_sparsity, total = prune.sparsity()
    return {
        "task": "lm",
        "settings": {
            "data": str(corpus.source),
            "documents": corpus.documents,
            "limit": limit,
            "model": config.to_dict(),
            "dense_recipe": dense_recipe.to_dict(),
            "finetune_recipe": tune_recipe.to_dict(),
            "method": method,
            "sparsity": sparsity,
            "balance": balance,
            "bank_size": bank_size,
            "calibration_sequences": sequences,
            "eval_bytes": eval_bytes,
            "threads": torch.get_num_threads(),
        },
        "perplexity": {stage: result["test"]["perplexity"] for stage, result in stages.items()},
        "stages": stages,
        "layer_sparsity": layer_sparsity,
        "total_sparsity": total,
        "balanced": prune.check()[1],
        "log": {"dense": dense_log, "finetune": tune_log},
        "wall_seconds": time.perf_counter() - started,
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "dense_weights": dense_weights,
        "pruner_state": prune.state_dict(),
    }


NOT_IN_JSON = ("weights", "dense_weights", "pruner_state")


def write_lm_outputs(
    result: dict, out: str | Path, committed: list[Path] | None = None
) -> tuple[dict[str, Path], list[str]]:
    """``weights.safetensors`` (pruned, fine-tuned), ``dense_weights.safetensors``,
    ``pruner_state.safetensors`` (``Prune.save``'s format), ``results.json`` (with the SHA-256 of every
    other file) and, with matplotlib, ``layer_sparsity.png`` and ``bank_histogram.png``. Returns
    ``(files by kind, notes)``. The files are written apart and moved into ``out`` together, the
    manifest last (``demo.run_files``): an interrupted write leaves the earlier run whole; ``committed``
    receives each file as it lands in ``out``. The safetensors files carry checksums
    (``pruning_tools.integrity``)."""
    out = Path(out)
    with staged_run(out, [] if committed is None else committed) as staging:
        files, notes = _write_lm(result, staging)
    return {kind: out / path.name for kind, path in files.items()}, notes


def _write_lm(result: dict, out: Path) -> tuple[dict[str, Path], list[str]]:
    from ...integrity import save_file

    files = {
        "weights": out / "weights.safetensors",
        "dense_weights": out / "dense_weights.safetensors",
        "pruner_state": out / "pruner_state.safetensors",
        "results": out / "results.json",
    }
    save_file({k: v.contiguous() for k, v in result["weights"].items()}, files["weights"])
    save_file({k: v.contiguous() for k, v in result["dense_weights"].items()}, files["dense_weights"])
    state = dict(result["pruner_state"])
    state["masks"] = {name: np.asarray(packed) for name, packed in state["masks"].items()}
    write_state_file(state, files["pruner_state"])
    notes = []
    if importlib.util.find_spec("matplotlib") is None:
        notes.append(PLOTS_HINT)
    else:
        from .. import plots

        pruned = {name: result["weights"][name].numpy() for name in result["layer_sparsity"]}
        files["layer_plot"] = plots.plot_layer_sparsity(result["layer_sparsity"], out / "layer_sparsity.png")
        files["bank_plot"] = plots.plot_bank_histogram(
            pruned, result["settings"]["bank_size"], out / "bank_histogram.png"
        )
    summary = {k: v for k, v in result.items() if k not in NOT_IN_JSON}
    summary["files"] = {k: p.name for k, p in files.items()}
    write_manifest(out, summary)
    return files, notes


__all__ = ["run_lm_demo", "write_lm_outputs"]
