"""Training and evaluating the byte-level GPT: one loop for dense training, gradual pruning and fine-tuning.

``train(model, corpus, recipe, prune=...)`` runs AdamW with a linear warm-up and a cosine decay on
random windows of the training split, calling ``prune.prune()`` after every optimizer step (so the
pruner, whatever its criterion, sees the gradients); ``evaluate`` gives the held-out perplexity per
byte on fixed windows of the test split; ``calibration`` draws the one-shot methods' calibration
sequences from the training split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .data import Corpus, fixed_windows, random_windows
from .model import GPT, GPTConfig


@dataclass(frozen=True)
class Recipe:
    """One training run: ``steps`` optimizer steps of ``batch_size`` windows of ``context + 1`` bytes,
    AdamW (``lr`` peak after ``warmup`` steps, cosine to ``min_lr``, ``weight_decay`` on matrices,
    gradients clipped to ``clip``), sampling seeded by ``seed``; ``bf16``: forward and backward under
    bfloat16 autocast (float32 weights, optimizer state and pruning math; 2-3x faster on CPUs with
    AMX or AVX-512 BF16)."""

    steps: int = 900
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 50
    weight_decay: float = 0.1
    clip: float = 1.0
    seed: int = 0
    bf16: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def learning_rate(step: int, recipe: Recipe) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    >>> r = Recipe(steps=100, lr=1.0, min_lr=0.0, warmup=10)
    >>> learning_rate(0, r), learning_rate(9, r), round(learning_rate(55, r), 3), learning_rate(100, r)
    (0.1, 1.0, 0.5, 0.0)
    """
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = min(1.0, (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup))
    return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW, weight decay on the 2-D weights only (not on biases, norms, embeddings)."""
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("tok.", "pos."))]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and not n.startswith(("tok.", "pos.")))]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95))


def lm_loss(model: nn.Module, windows: Tensor) -> Tensor:
    """Mean cross-entropy (nats per byte) of predicting ``windows[:, 1:]`` from ``windows[:, :-1]``."""
    logits = model(windows[:, :-1]).float()  # [b, t, 256]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def train(
    model: GPT,
    corpus: Corpus,
    recipe: Recipe,
    prune: Any = None,
    on_log: Callable[[dict], None] | None = None,
    log_every: int = 50,
) -> list[dict]:
    """Train ``model`` in place; returns the log: ``{"step", "loss" (mean since the last entry), "lr",
    "seconds", "sparsity" (when pruning)}`` every ``log_every`` steps and at the end."""
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = make_optimizer(model, recipe)
    context = model.config.context
    model.train()
    log, running, count, started = [], 0.0, 0, time.perf_counter()
    for step in range(recipe.steps):
        lr = learning_rate(step, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            loss = lm_loss(model, random_windows(corpus.train, recipe.batch_size, context + 1, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        optimizer.step()
        if prune is not None:
            prune.prune()
        running += float(loss.detach())
        count += 1
        if (step + 1) % log_every == 0 or step + 1 == recipe.steps:
            entry = {"step": step + 1, "loss": running / count, "lr": lr, "seconds": time.perf_counter() - started}
            if prune is not None:
                entry["sparsity"] = prune.sparsity()[1]
            log.append(entry)
            if on_log is not None:
                on_log(entry)
            running, count = 0.0, 0
    model.eval()
    return log


@torch.no_grad()
def evaluate(model: GPT, tokens: Tensor, limit: int | None = 131072, batch_size: int = 32) -> dict:
    """Held-out loss on non-overlapping windows of ``context + 1`` bytes from the first ``limit`` bytes
    of ``tokens``, in float32: ``{"loss" (nats per byte), "perplexity" (exp(loss), per byte),
    "bits_per_byte", "bytes"}``."""
    was_training = model.training
    model.eval()
    windows = fixed_windows(tokens, model.config.context + 1, limit)
    total, n = 0.0, 0
    for chunk in windows.split(batch_size):
        logits = model(chunk[:, :-1])
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"))
        n += chunk[:, 1:].numel()
    model.train(was_training)
    loss = total / n
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2), "bytes": n}


def calibration(tokens: Tensor, sequences: int = 128, context: int = 256, seed: int = 1, batch_size: int = 16) -> list:
    """``sequences`` random windows of ``context`` bytes, in batches ``[batch_size, context]`` (int64)."""
    generator = torch.Generator().manual_seed(seed)
    windows = random_windows(tokens, sequences, context, generator)
    return list(windows.split(batch_size))


def new_model(config: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


__all__ = ["Recipe", "calibration", "evaluate", "learning_rate", "lm_loss", "make_optimizer", "new_model", "train"]
