"""The demo's last step: the trained, pruned CNN converted to bank-sparse layers, its test accuracy
(the masked model's, up to float rounding) and its measured speed against the masked model."""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..inference import to_bank_sparse
from .data import load_mnist
from .torch_backend import evaluate, to_tensor

BATCH = 1000  # the evaluation batch


def _speedup(dense: Callable[[], object], sparse: Callable[[], object], rounds: int) -> float:
    """Median over interleaved rounds of dense time / bank-sparse time."""
    dense(), sparse()
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        dense()
        t1 = time.perf_counter()
        sparse()
        ratios.append((t1 - t0) / max(time.perf_counter() - t1, 1e-9))
    return statistics.median(ratios)


def deploy(result: dict, data_dir: str | Path | None, limit: int | None = None, rounds: int = 5) -> dict[str, Any]:
    """Convert ``result["model"]`` (a PyTorch ``train_mnist`` result) with its pruner state and compare
    it with the masked model on the test set (the images of training's evaluation).

    Every bank-balanced layer is converted (``to_bank_sparse``'s rule, measured on a test batch, is
    reported too: ``rule_converted``). Returns ``{"accuracy", "masked_accuracy", "converted",
    "speedup" (masked / bank-sparse time of a test batch of up to 1000 images), "speedup_one" (of one
    image), "rule_converted", "report"}``; speeds are medians of interleaved rounds at torch's
    current thread count.
    """
    data = load_mnist(data_dir).head(limit)
    x = to_tensor(data.test_images).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(data.test_labels.astype(np.int64))
    masked = copy.deepcopy(result["model"]).eval()
    state = result["pruner_state"]
    batch, one = x[:BATCH], x[:1]
    rule = to_bank_sparse(copy.deepcopy(masked), state, example_inputs=batch)
    fast = copy.deepcopy(masked)
    report = to_bank_sparse(fast, state, min_speedup=1e-9, min_weights=0)
    with torch.no_grad():
        speedup = _speedup(lambda: masked(batch), lambda: fast(batch), rounds)
        speedup_one = _speedup(lambda: masked(one), lambda: fast(one), 20 * rounds)
    return {
        "accuracy": evaluate(fast, x, y),
        "masked_accuracy": evaluate(masked, x, y),
        "converted": report.converted,
        "speedup": speedup,
        "speedup_one": speedup_one,
        "rule_converted": rule.converted,
        "report": str(rule),
    }


__all__ = ["deploy"]
