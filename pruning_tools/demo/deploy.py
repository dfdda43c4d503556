"""The demo's last step: the trained, pruned CNN converted to bank-sparse layers, its test accuracy
(the masked model's, up to float rounding) and its measured speedup on the test set."""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..inference import to_bank_sparse
from .data import load_mnist
from .torch_backend import evaluate, to_tensor

BATCH = 1000  # the evaluation batch: what the speedup is measured on


def deploy(result: dict, data_dir: str | Path | None, limit: int | None = None, rounds: int = 5) -> dict[str, Any]:
    """Convert ``result["model"]`` (a PyTorch ``train_mnist`` result) with its pruner state and compare
    it with the masked model on the test set (the same images as training's evaluation).

    Returns ``{"accuracy", "masked_accuracy", "speedup" (dense / bank-sparse time of a test batch of up
    to 1000 images, median over ``rounds`` interleaved rounds, torch's current threads), "converted"
    (layer names), "report" (text)}``.
    """
    data = load_mnist(data_dir).head(limit)
    x = to_tensor(data.test_images).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(data.test_labels.astype(np.int64))
    masked = copy.deepcopy(result["model"]).eval()
    fast = copy.deepcopy(masked)
    report = to_bank_sparse(fast, result["pruner_state"], example_inputs=x[:BATCH])
    batch = x[:BATCH]
    ratios = []
    with torch.no_grad():
        for model in (masked, fast):  # warm-up
            model(batch)
        for _ in range(rounds):
            t0 = time.perf_counter()
            masked(batch)
            t1 = time.perf_counter()
            fast(batch)
            ratios.append((t1 - t0) / max(time.perf_counter() - t1, 1e-9))
    return {
        "accuracy": evaluate(fast, x, y),
        "masked_accuracy": evaluate(masked, x, y),
        "speedup": statistics.median(ratios),
        "converted": report.converted,
        "report": str(report),
    }


__all__ = ["deploy"]
