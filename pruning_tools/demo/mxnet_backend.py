"""The demo's MXNet (Gluon) side: the original example's CNN, its input pipeline and one training step.

The recipe (``recipe.py``) and the loop (``trainer.py``) are shared with PyTorch. MXNet reads its
thread count when it is imported: set ``OMP_NUM_THREADS`` to cap it. The run behind
``docs/results/mxnet_bank64_90.json``::

    OMP_NUM_THREADS=2 pruning-tools demo --framework mxnet --out runs/mxnet90
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..mxnet_pruning import Prune, gluon, mx
from .data import MnistData
from .recipe import BATCH_SIZE, EPOCHS, LEARNING_RATE, MAX_SHIFT, MEAN, PCT_START, STD, WEIGHT_DECAY  # noqa: F401


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

    def hybrid_forward(self, F: Any, x: Any) -> Any:  # F: mx.nd or mx.sym; x [B, 1, 28, 28] (MXNet is untyped)
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


class MxnetBackend:
    """What the shared loop needs from Gluon: batches, one training step, evaluation, weights."""

    framework = "mxnet"

    def __init__(self, data: MnistData, settings: dict[str, Any], total_steps: int) -> None:
        mx.random.seed(settings["seed"])
        self.rng = np.random.default_rng(settings["seed"])
        self.train_x, self.train_y = normalise(data.train_images), data.train_labels.astype(np.int64)
        self.test_x, self.test_y = normalise(data.test_images), data.test_labels.astype(np.int64)
        self.model = SimpleCNN()
        self.model.initialize(mx.init.Xavier(magnitude=2.0))  # deferred: shapes known after the first batch
        self.model.hybridize()
        self.trainer = gluon.Trainer(
            self.model.collect_params(), "adam", {"learning_rate": LEARNING_RATE, "wd": WEIGHT_DECAY}
        )
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()  # log-softmax + NLL on the logits
        self.batch_size, self.total_steps = settings["batch_size"], total_steps

    def default_prune_dict(self, sparsity: float) -> dict[str, float]:
        return default_prune_dict(self.model, sparsity)

    def pruner(self, *args: Any, **kwargs: Any) -> Prune:
        return Prune(self.model, *args, **kwargs)

    def batches(self) -> Iterator[np.ndarray]:
        """One epoch of shuffled index batches."""
        order = self.rng.permutation(len(self.train_x))
        return (order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size))

    def train_step(self, index: np.ndarray, step: int, prune: Prune | None) -> float:
        """Forward, backward, learning-rate and trainer step on one batch; the summed loss. The pruner
        takes its initial state after the first forward pass (deferred initialisation)."""
        x = mx.nd.array(random_shift(self.train_x[index], MAX_SHIFT, self.rng))  # [B, 1, 28, 28]
        y = mx.nd.array(self.train_y[index])  # [B]
        with mx.autograd.record():
            loss = self.loss_fn(self.model(x), y)  # [B]
        loss.backward()
        self.trainer.set_learning_rate(one_cycle_lr(step, self.total_steps, LEARNING_RATE))
        if prune is not None:
            prune.prepare()  # a no-op after the first call
        self.trainer.step(len(index))
        return float(loss.sum().asscalar())

    def evaluate(self) -> float:
        return evaluate(self.model, self.test_x, self.test_y)

    def weights(self) -> dict[str, np.ndarray]:
        """Every parameter (BN statistics included) as a numpy copy."""
        return {name: p.data().asnumpy().copy() for name, p in self.model.collect_params().items()}
