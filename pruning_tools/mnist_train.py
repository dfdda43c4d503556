"""Train the original example's simple CNN on MNIST with gradual pruning (PyTorch).

The recipe: dense warm-up, then the target sparsity climbs on the cubic schedule, then the masks
are frozen and the network fine-tunes. Adam with a one-cycle learning rate, random shifts of up to
2 pixels, plain cross-entropy on logits.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mnist import load_mnist
from .mnist_recipe import (  # noqa: F401  (recipe constants re-exported for callers)
    BATCH_SIZE,
    EPOCHS,
    LEARNING_RATE,
    MAX_SHIFT,
    MEAN,
    PCT_START,
    STD,
    WEIGHT_DECAY,
    epoch_record,
    make_settings,
    pruning_steps,
    sample_every,
    steps_per_epoch,
    total_target,
)
from .pytorch_pruning import Prune


class SimpleCNN(nn.Module):
    """The original example's CNN: three stride-2 3x3 convs with BN + ReLU, then one dense layer.

    Input ``[N, 1, 28, 28]`` -> conv1 ``[N, 64, 13, 13]`` -> conv2 ``[N, 127, 6, 6]`` -> conv3
    ``[N, 256, 2, 2]`` -> flatten ``[N, 1024]`` -> fc ``[N, 10]`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 64, 3, stride=2, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 127, 3, stride=2, bias=False), nn.BatchNorm2d(127)
        self.conv3, self.bn3 = nn.Conv2d(127, 256, 3, stride=2, bias=False), nn.BatchNorm2d(256)
        self.fc = nn.Linear(1024, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.flatten(1))  # logits, no softmax: cross_entropy applies log-softmax itself


def to_tensor(images: np.ndarray) -> Tensor:
    """uint8 ``[N, 28, 28]`` -> normalised float32 ``[N, 1, 28, 28]``."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image of ``x`` ``[N, 1, H, W]`` by its own random (dy, dx) in
    ``[-max_shift, max_shift]``, filling with the background value."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    background = float(x.min())
    padded = F.pad(x, (max_shift,) * 4, value=background)  # [N, 1, H + 2s, W + 2s]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = dy[:, None] + torch.arange(h)[None]  # [N, H]
    cols = dx[:, None] + torch.arange(w)[None]  # [N, W]
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # [N, 1, H, W]


def default_prune_dict(model: nn.Module, sparsity: float) -> dict[str, float]:
    """Every conv / dense weight at ``sparsity``."""
    return {
        f"{name}.weight": sparsity
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``images`` ``[N, 1, 28, 28]`` with ``labels`` ``[N]`` (a fraction)."""
    model.eval()
    correct = sum(
        int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(images), batch_size)
    )
    return correct / max(1, len(images))


def _sizes(prune: Prune) -> dict[str, int]:
    return {name: prune.model.get_parameter(name).numel() for name in prune.config.params}


def train_mnist(
    data_dir: str | None = None,
    *,
    sparsity: float = 0.9,
    balance: str = "fix",
    bank_size: int = 64,
    prune_dict: dict[str, Any] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    threads: int | None = 1,
) -> dict:
    """Train ``SimpleCNN`` on MNIST: dense warm-up -> gradual pruning -> fine-tune at fixed sparsity.

    ``prune_dict=None`` prunes every conv / dense weight to ``sparsity``; ``sparsity=0`` trains dense
    (no pruner). ``limit`` keeps the first ``limit`` train and test images. ``on_epoch(record)`` is
    called after each epoch, ``on_batch(batch, batches_per_epoch)`` after each batch. ``threads``
    sets torch's CPU threads while training (None: leave as is); one is the default because this
    small network gains little from more and loses much when the cores are shared.

    Returns ``{"framework", "settings", "test_accuracy", "layer_sparsity", "total_sparsity",
    "balanced", "epochs": [per-epoch records], "steps": [{"step", "target", "sparsity"}] (sampled),
    "wall_seconds", "notes" (pruner warnings), "weights": {name: numpy array} (the full state_dict),
    "pruner_state" (``Prune.state_dict()``, None when dense), "model"}``.
    """
    settings = make_settings(
        data_dir,
        sparsity=sparsity,
        balance=balance,
        bank_size=bank_size,
        prune_dict=prune_dict,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        limit=limit,
        threads=threads,
    )
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(data_dir, settings, prune_dict, on_epoch, on_batch)
    finally:
        torch.set_num_threads(previous_threads)


def _train(data_dir, settings: dict, prune_dict, on_epoch, on_batch) -> dict:
    """The training loop of ``train_mnist`` (arguments already checked, gathered in ``settings``)."""
    epochs, batch_size, seed, limit = settings["epochs"], settings["batch_size"], settings["seed"], settings["limit"]
    sparsity, balance, bank_size = settings["sparsity"], settings["balance"], settings["bank_size"]
    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    data = load_mnist(data_dir).head(limit)
    train_x, train_y = to_tensor(data.train_images), torch.from_numpy(data.train_labels.astype(np.int64))
    test_x = to_tensor(data.test_images).contiguous(memory_format=torch.channels_last)
    test_y = torch.from_numpy(data.test_labels.astype(np.int64))
    per_epoch = steps_per_epoch(len(train_x), batch_size)
    total_steps = per_epoch * epochs

    model = SimpleCNN().to(memory_format=torch.channels_last)  # faster convolutions on CPU
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=total_steps, pct_start=PCT_START
    )
    prune, notes = None, []
    if sparsity > 0 or prune_dict is not None:
        pretrain, ramp, frequency = pruning_steps(total_steps, per_epoch)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prune = Prune(
                model,
                pretrain,
                ramp,
                frequency,
                prune_dict if prune_dict is not None else default_prune_dict(model, sparsity),
                balance=balance,
                bank_size=bank_size,
            )
        notes = [str(w.message) for w in caught]
        settings.update(pretrain_step=pretrain, sparse_step=ramp, frequency=frequency)

    sample_period = sample_every(total_steps)
    steps, history, step = [], [], 0
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        loss_sum, seen = 0.0, 0
        for batch, start in enumerate(range(0, len(order), batch_size), 1):
            index = order[start : start + batch_size]
            x, y = random_shift(train_x[index], MAX_SHIFT, generator), train_y[index]
            x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if prune is not None:
                prune.prune()
                if step % sample_period == 0 or step == total_steps:
                    steps.append(
                        {"step": step, "target": total_target(prune, _sizes(prune)), "sparsity": prune.sparsity()[1]}
                    )
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
            if on_batch is not None:
                on_batch(batch, per_epoch)
        record = epoch_record(
            epoch,
            evaluate(model, test_x, test_y),
            loss_sum,
            seen,
            prune,
            lambda: total_target(prune, _sizes(prune)),
            time.perf_counter() - epoch_start,
        )
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    if prune is not None:
        layer_sparsity, total_sparsity = prune.sparsity()
    else:  # dense: zeros counted in the weights a pruner would have listed
        weights = [model.get_parameter(name) for name in default_prune_dict(model, 0.0)]
        layer_sparsity = {
            name: float((w == 0).float().mean()) for name, w in zip(default_prune_dict(model, 0.0), weights)
        }
        total_sparsity = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return {
        "framework": "pytorch",
        "settings": settings,
        "test_accuracy": history[-1]["test_accuracy"],
        "layer_sparsity": layer_sparsity,
        "total_sparsity": total_sparsity,
        "balanced": prune.check()[1] if prune is not None else None,
        "epochs": history,
        "steps": steps,
        "wall_seconds": time.perf_counter() - started,
        "notes": notes,
        "weights": {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()},
        "pruner_state": prune.state_dict() if prune is not None else None,
        "model": model,
    }
