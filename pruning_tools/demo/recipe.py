"""The MNIST training recipe of the demo's one trainer (``trainer.train_mnist``, for both frameworks):
defaults, argument checks, the pruning schedule in steps and the per-epoch record.

Dense warm-up for ``WARMUP_FRACTION`` of the steps, the cubic ramp over ``RAMP_FRACTION``, then
fine-tuning at fixed sparsity. Adam with a one-cycle learning rate peaking at ``LEARNING_RATE``
after ``PCT_START`` of the steps, random shifts of up to ``MAX_SHIFT`` pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import BALANCES, check_bank_size, check_choice, check_sparsity, check_step

if TYPE_CHECKING:
    from ..pruner import Pruner

EPOCHS = 8
BATCH_SIZE = 128
LEARNING_RATE = 4e-3
WEIGHT_DECAY = 5e-5
PCT_START = 0.15  # fraction of the steps spent raising the learning rate (one-cycle)
MAX_SHIFT = 2  # pixels of random translation
WARMUP_FRACTION = 0.25  # dense epochs / all epochs
RAMP_FRACTION = 0.375  # pruning-ramp epochs / all epochs; the rest fine-tunes at fixed sparsity
REFRESH_PER_EPOCH = 8  # mask refreshes per epoch during the ramp
STEP_SAMPLES = 200  # points of the target-vs-measured curve
MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics (of x / 255)


def make_settings(
    data_dir: str | Path | None,
    *,
    sparsity: float,
    balance: str,
    bank_size: int,
    prune_dict: dict[str, Any] | None,
    epochs: int | None,
    batch_size: int | None,
    seed: int,
    limit: int | None,
    **extra: Any,
) -> dict:
    """Check ``train_mnist``'s arguments and gather them, defaults filled in, as plain data."""
    check_sparsity("sparsity", sparsity)
    check_choice("balance", balance, BALANCES)
    check_bank_size("bank_size", bank_size)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("limit", limit)):
        if value is not None:
            check_step(name, value, minimum=1)
    check_step("seed", seed)
    return dict(
        data_dir=None if data_dir is None else str(data_dir),
        sparsity=sparsity,
        balance=balance,
        bank_size=bank_size,
        prune_dict=prune_dict,
        epochs=epochs or EPOCHS,
        batch_size=batch_size or BATCH_SIZE,
        seed=seed,
        limit=limit,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        max_shift=MAX_SHIFT,
        **extra,
    )


def pruning_steps(total_steps: int, steps_per_epoch: int) -> tuple[int, int, int]:
    """``(pretrain_step, sparse_step, frequency)`` of the recipe for a run of ``total_steps``."""
    pretrain = round(total_steps * WARMUP_FRACTION)
    ramp = max(1, round(total_steps * RAMP_FRACTION))
    return pretrain, ramp, max(1, steps_per_epoch // REFRESH_PER_EPOCH)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return math.ceil(n_images / batch_size)


def sample_every(total_steps: int) -> int:
    """Record the target-vs-measured curve every this many steps."""
    return max(1, total_steps // STEP_SAMPLES)


def total_target(prune: Pruner) -> float:
    """Size-weighted scheduled target of ``prune`` over its parameters (sizes from its specs)."""
    sizes = {name: spec.numel for name, spec in prune.config.params.items()}
    return sum(prune.target(name) * n for name, n in sizes.items()) / max(1, sum(sizes.values()))


def epoch_record(
    epoch: int, test_accuracy: float, loss_sum: float, seen: int, prune: Pruner | None, seconds: float
) -> dict:
    """The per-epoch record passed to ``on_epoch`` and stored under ``"epochs"``."""
    return {
        "epoch": epoch,
        "test_accuracy": test_accuracy,
        "train_loss": loss_sum / max(1, seen),
        "target": total_target(prune) if prune is not None else 0.0,
        "sparsity": prune.sparsity()[1] if prune is not None else 0.0,
        "seconds": seconds,
    }
