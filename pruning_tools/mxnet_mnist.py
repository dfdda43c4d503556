"""Train the original example's simple CNN on MNIST with gradual pruning (MXNet Gluon).

The same recipe as ``mnist_train`` (PyTorch): dense warm-up, then the target sparsity climbs on
the cubic schedule, then the masks are frozen and the network fine-tunes. Adam with a one-cycle
learning rate, random shifts of up to 2 pixels, plain cross-entropy on logits.

MXNet reads its thread count when it is imported: set ``OMP_NUM_THREADS`` to cap it. From the
shell (the run behind ``docs/results/mxnet_bank64_90.json``)::

    OMP_NUM_THREADS=2 python -m pruning_tools.mxnet_mnist --out docs/results/mxnet_bank64_90.json
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

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
from .mxnet_pruning import Prune, gluon, mx


class SimpleCNN(gluon.nn.HybridBlock):
    """The original example's CNN: three stride-2 3x3 convs with BN + ReLU, then one dense layer.

    Input ``[N, 1, 28, 28]`` -> conv1 ``[N, 64, 13, 13]`` -> conv2 ``[N, 127, 6, 6]`` -> conv3
    ``[N, 256, 2, 2]`` -> flatten ``[N, 1024]`` -> fc ``[N, 10]`` logits. Input channels are left
    to deferred initialisation (shapes are known after the first forward pass). Parameter names:
    ``cnn_conv1_weight``, ..., ``cnn_fc_weight``.
    """

    def __init__(self) -> None:
        super().__init__(prefix="cnn_")
        with self.name_scope():
            self.conv1 = gluon.nn.Conv2D(64, 3, strides=2, use_bias=False, prefix="conv1_")
            self.bn1 = gluon.nn.BatchNorm(prefix="bn1_")
            self.conv2 = gluon.nn.Conv2D(127, 3, strides=2, use_bias=False, prefix="conv2_")
            self.bn2 = gluon.nn.BatchNorm(prefix="bn2_")
            self.conv3 = gluon.nn.Conv2D(256, 3, strides=2, use_bias=False, prefix="conv3_")
            self.bn3 = gluon.nn.BatchNorm(prefix="bn3_")
            self.fc = gluon.nn.Dense(10, prefix="fc_")  # flattens [N, 256, 2, 2] -> [N, 1024]

    def hybrid_forward(self, F, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x)  # logits, no softmax: the loss applies log-softmax itself


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` -> normalised float32 ``[N, 1, 28, 28]``."""
    x = images.astype(np.float32) / 255.0
    return ((x - MEAN) / STD)[:, None]


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image of ``x`` ``[N, 1, H, W]`` by its own random (dy, dx) in
    ``[-max_shift, max_shift]``, filling with the background value."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), constant_values=float(x.min()))  # [N, 1, H+2s, W+2s]
    dy, dx = rng.integers(0, 2 * s + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None]  # [N, H]
    cols = dx[:, None] + np.arange(w)[None]  # [N, W]
    return padded[np.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]  # [N, 1, H, W]


def one_cycle_lr(step: int, total_steps: int, max_lr: float, pct_start: float = PCT_START) -> float:
    """Learning rate at ``step`` (1-based) of a cosine one-cycle: ``max_lr / 25`` up to ``max_lr``
    over ``pct_start`` of the steps, then down to ``max_lr / 25e4`` (PyTorch's ``OneCycleLR``).

    >>> [round(one_cycle_lr(t, 100, 1.0), 6) for t in (1, 15, 100)]
    [0.04, 1.0, 4e-06]
    """
    initial, final = max_lr / 25.0, max_lr / 25.0 / 1e4
    peak = max(1.0, pct_start * total_steps - 1)
    t = step - 1
    if t <= peak:
        start, end, progress = initial, max_lr, t / peak
    else:
        start, end, progress = max_lr, final, min(1.0, (t - peak) / max(1.0, total_steps - 1 - peak))
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


def default_prune_dict(net: gluon.Block, sparsity: float) -> dict[str, float]:
    """Every conv / dense weight at ``sparsity``."""
    names: list[str] = []
    net.apply(
        lambda block: names.append(block.weight.name) if isinstance(block, (gluon.nn.Conv2D, gluon.nn.Dense)) else None
    )
    return {name: sparsity for name in sorted(names)}


def evaluate(net: gluon.Block, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Accuracy of ``net`` on ``images`` ``[N, 1, 28, 28]`` with ``labels`` ``[N]`` (a fraction)."""
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = net(mx.nd.array(images[i : i + batch_size]))  # [B, 10]
        correct += int((logits.argmax(axis=1).asnumpy().astype(np.int64) == labels[i : i + batch_size]).sum())
    return correct / max(1, len(images))


def _sizes(prune: Prune) -> dict[str, int]:
    params = prune.net.collect_params()
    return {name: math.prod(params[name].shape) for name in prune.config.params}


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
) -> dict:
    """Train ``SimpleCNN`` on MNIST: dense warm-up -> gradual pruning -> fine-tune at fixed sparsity.

    ``prune_dict=None`` prunes every conv / dense weight to ``sparsity``; ``sparsity=0`` trains dense
    (no pruner). ``limit`` keeps the first ``limit`` train and test images. ``on_epoch(record)`` is
    called after each epoch, ``on_batch(batch, batches_per_epoch)`` after each batch. Returns the
    results dict (see the README; ``weights`` holds every parameter as numpy, BN statistics included).
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
    )
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    started = time.perf_counter()
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)

    data = load_mnist(data_dir).head(limit)
    train_x, train_y = normalise(data.train_images), data.train_labels.astype(np.int64)
    test_x, test_y = normalise(data.test_images), data.test_labels.astype(np.int64)
    per_epoch = steps_per_epoch(len(train_x), batch_size)
    total_steps = per_epoch * epochs

    net = SimpleCNN()
    net.initialize(mx.init.Xavier(magnitude=2.0))  # deferred: shapes known after the first batch
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": LEARNING_RATE, "wd": WEIGHT_DECAY})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()  # log-softmax + NLL on the logits
    prune, notes = None, []
    if sparsity > 0 or prune_dict is not None:
        pretrain, ramp, frequency = pruning_steps(total_steps, per_epoch)
        prune = Prune(
            net,
            pretrain,
            ramp,
            frequency,
            prune_dict if prune_dict is not None else default_prune_dict(net, sparsity),
            balance=balance,
            bank_size=bank_size,
        )
        settings.update(pretrain_step=pretrain, sparse_step=ramp, frequency=frequency)

    sample_period = sample_every(total_steps)
    steps, history, step = [], [], 0
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        order = rng.permutation(len(train_x))
        loss_sum, seen = 0.0, 0
        for batch, start in enumerate(range(0, len(order), batch_size), 1):
            index = order[start : start + batch_size]
            x = mx.nd.array(random_shift(train_x[index], MAX_SHIFT, rng))  # [B, 1, 28, 28]
            y = mx.nd.array(train_y[index])  # [B]
            with mx.autograd.record():
                loss = loss_fn(net(x), y)  # [B]
            loss.backward()
            step += 1
            trainer.set_learning_rate(one_cycle_lr(step, total_steps, LEARNING_RATE))
            if prune is not None:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    prune.prepare()  # takes the initial state after the first forward; then a no-op
                notes += [str(w.message) for w in caught]
            trainer.step(len(index))
            if prune is not None:
                prune.prune()
                if step % sample_period == 0 or step == total_steps:
                    steps.append(
                        {"step": step, "target": total_target(prune, _sizes(prune)), "sparsity": prune.sparsity()[1]}
                    )
            loss_sum += float(loss.sum().asscalar())
            seen += len(index)
            if on_batch is not None:
                on_batch(batch, per_epoch)
        record = epoch_record(
            epoch,
            evaluate(net, test_x, test_y),
            loss_sum,
            seen,
            prune,
            lambda: total_target(prune, _sizes(prune)),
            time.perf_counter() - epoch_start,
        )
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    layer_sparsity, total_sparsity = (
        prune.sparsity() if prune is not None else ({name: 0.0 for name in default_prune_dict(net, 0.0)}, 0.0)
    )
    return {
        "framework": "mxnet",
        "settings": settings,
        "test_accuracy": history[-1]["test_accuracy"],
        "layer_sparsity": layer_sparsity,
        "total_sparsity": total_sparsity,
        "balanced": prune.check()[1] if prune is not None else None,
        "epochs": history,
        "steps": steps,
        "wall_seconds": time.perf_counter() - started,
        "notes": notes,
        "weights": {name: p.data().asnumpy().copy() for name, p in net.collect_params().items()},
        "pruner_state": prune.state_dict() if prune is not None else None,
    }


def to_plain(value: Any) -> Any:
    """JSON-ready copy: numpy arrays and scalars become lists and numbers."""
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


@click.command()
@click.option("--data-dir", default=None, help="Directory with the MNIST *-ubyte.gz files (default: searched).")
@click.option("--sparsity", default=0.9, show_default=True, help="Target sparsity of every conv / dense weight.")
@click.option("--balance", default="fix", show_default=True, type=click.Choice(["fix", "none", "global"]))
@click.option("--bank-size", default=64, show_default=True)
@click.option("--epochs", default=None, type=int, help=f"Default: the recipe's {EPOCHS}.")
@click.option("--seed", default=0, show_default=True)
@click.option("--limit", default=None, type=int, help="Use only the first N train and test images.")
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the results as JSON (no weights, no pruner state).",
)
def main(data_dir, sparsity, balance, bank_size, epochs, seed, limit, out) -> None:
    """Train the simple CNN on MNIST with gradual pruning (MXNet) and report the results."""

    def report(record: dict) -> None:
        click.echo(
            f"epoch {record['epoch']}: test accuracy {record['test_accuracy']:.4f}, "
            f"loss {record['train_loss']:.4f}, sparsity {record['sparsity']:.4f} "
            f"(target {record['target']:.4f}), {record['seconds']:.0f} s"
        )

    result = train_mnist(
        data_dir,
        sparsity=sparsity,
        balance=balance,
        bank_size=bank_size,
        epochs=epochs,
        seed=seed,
        limit=limit,
        on_epoch=report,
    )
    for key in ("weights", "pruner_state"):  # results only; masks follow from the weights
        result.pop(key)
    for note in result["notes"]:
        click.echo(f"note: {note}")
    click.echo(
        f"test accuracy {result['test_accuracy']:.4f} at total sparsity {result['total_sparsity']:.4f}, "
        f"every bank within budget: {result['balanced']}, {result['wall_seconds']:.0f} s"
    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(to_plain(result), indent=1) + "\n")
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
