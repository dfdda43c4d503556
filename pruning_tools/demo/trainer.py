"""The demo's one MNIST trainer, for both frameworks: the loop, the schedule, the records, the result.

The frameworks differ only in their backend (``torch_backend.TorchBackend``,
``mxnet_backend.MxnetBackend``): the network, its batches, one training step, evaluation, weights.
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Callable, Iterator, Sized
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from ..config import STRUCTURES, check_choice
from ..pruner import Pruner
from .data import MnistData, load_mnist
from .recipe import epoch_record, make_settings, pruning_steps, sample_every, steps_per_epoch, total_target

BACKENDS = {"pytorch": ("torch_backend", "TorchBackend"), "mxnet": ("mxnet_backend", "MxnetBackend")}


Batch = TypeVar("Batch", bound=Sized)  # the indices of one batch: a torch tensor (PyTorch) or a numpy array (MXNet)
P = TypeVar("P", bound=Pruner)  # the framework's pruner


class Backend(Protocol[Batch, P]):
    """What the shared loop needs from a framework (``TorchBackend``, ``MxnetBackend``): batches, one
    training step, evaluation, weights, and the pruner of its model."""

    framework: str

    @property
    def model(self) -> object: ...

    def default_prune_dict(self, sparsity: float) -> dict[str, float]: ...

    def pruner(self, *args: Any, **kwargs: Any) -> P: ...

    def example_inputs(self) -> tuple[Any, ...]:
        """The inputs of one forward, for structure="channel" (PyTorch only)."""
        raise NotImplementedError(f"{self.framework}: structure='channel' needs the PyTorch backend")

    def batches(self) -> Iterator[Batch]: ...

    def train_step(self, index: Batch, step: int, prune: P | None) -> float: ...

    def evaluate(self) -> float: ...

    def weights(self) -> dict[str, np.ndarray]: ...


# a backend class: ``(data, settings, total_steps) -> backend``
BackendClass = Callable[[MnistData, dict[str, Any], int], Backend[Any, Any]]


def load_backend(framework: str) -> BackendClass:
    """The backend class of ``framework`` (``"pytorch"`` or ``"mxnet"``), imported now (MXNet is an
    optional extra: its ``ImportError`` says how to install it)."""
    if framework not in BACKENDS:
        raise ValueError(f"framework={framework!r} is not allowed: expected one of {', '.join(map(repr, BACKENDS))}")
    module, name = BACKENDS[framework]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def check_prune_dict(framework: str, prune_dict: dict[str, Any] | None, balance: str, bank_size: int) -> None:
    """Resolve ``prune_dict`` against the demo network of ``framework`` now, before any data is read: a
    key that matches no parameter, or a bad setting, is the pruner's ``ValueError`` at once."""
    if prune_dict is None:
        return
    backend = importlib.import_module(f"{__package__}.{BACKENDS[framework][0]}")
    net = backend.SimpleCNN()
    if framework == "mxnet":
        net.initialize()  # deferred: names now, shapes at the first batch (the pruner waits for them)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run itself reports what the pruner says
        backend.Prune(net, 0, 1, 1, prune_dict, balance=balance, bank_size=bank_size)


def library_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """The messages of the warnings this library raised; any other package's warning (an import's
    deprecation notice, say) is handed back to Python, which shows it as usual."""
    notes = []
    for w in caught:
        if Path(w.filename).resolve().is_relative_to(PACKAGE):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return notes


PACKAGE = Path(__file__).resolve().parent.parent  # the installed pruning_tools/ package (warnings raised by its code)


def train_mnist(
    data_dir: str | Path | None = None,
    *,
    framework: str = "pytorch",
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
    structure: str = "none",
) -> dict:
    """Train ``SimpleCNN`` on MNIST: dense warm-up -> gradual pruning -> fine-tune at fixed sparsity.

    ``data_dir``: the directory of the four IDX files (``load_mnist``). ``framework``: ``"pytorch"``
    or ``"mxnet"``. ``prune_dict=None`` prunes every conv / dense weight to ``sparsity``;
    ``sparsity=0`` trains dense (no pruner). ``limit`` keeps the first ``limit`` train and test
    images. ``on_epoch(record)`` is called after each epoch, ``on_batch(batch, batches_per_epoch)``
    after each batch. ``threads`` sets torch's CPU threads while training (None: leave as is; MXNet's
    come from ``OMP_NUM_THREADS``); one is the default because this small network gains little from
    more and loses much when the cores are shared.

    Returns ``{"framework", "settings", "test_accuracy", "layer_sparsity", "total_sparsity",
    "balanced", "epochs": [per-epoch records], "steps": [{"step", "target", "sparsity"}] (sampled),
    "wall_seconds", "notes" (pruner warnings), "weights": {name: numpy array} (every parameter and
    buffer), "pruner_state" (``Prune.state_dict()``, None when dense), "model"}``.
    """
    check_choice("structure", structure, STRUCTURES)
    if structure != "none" and framework != "pytorch":
        raise ValueError(f"structure={structure!r} is not allowed with framework={framework!r}: expected 'pytorch'")
    backend_class = load_backend(framework)
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
        framework=framework,
        structure=structure,
    )
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(backend_class, data_dir, settings, on_epoch, on_batch)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    backend_class: Callable[[MnistData, dict[str, Any], int], Backend[Batch, P]],
    data_dir: str | Path | None,
    settings: dict[str, Any],
    on_epoch: Callable[[dict], None] | None,
    on_batch: Callable[[int, int], None] | None,
) -> dict:
    """The loop of ``train_mnist`` (arguments already checked, gathered in ``settings``)."""
    started = time.perf_counter()
    data = load_mnist(data_dir).head(settings["limit"])
    per_epoch = steps_per_epoch(len(data.train_images), settings["batch_size"])
    total_steps = per_epoch * settings["epochs"]
    backend = backend_class(data, settings, total_steps)

    prune, notes = None, []
    sparsity, prune_dict = settings["sparsity"], settings["prune_dict"]
    if sparsity > 0 or prune_dict is not None:
        pretrain, ramp, frequency = pruning_steps(total_steps, per_epoch)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            targets = prune_dict if prune_dict is not None else backend.default_prune_dict(sparsity)
            if settings["structure"] == "channel":  # whole channels, traced on two test images
                structured = {"structure": "channel", "example_inputs": backend.example_inputs()}
                prune = backend.pruner(pretrain, ramp, frequency, targets, **structured)
            else:
                prune = backend.pruner(
                    pretrain, ramp, frequency, targets, balance=settings["balance"], bank_size=settings["bank_size"]
                )
        notes += library_notes(caught)
        settings.update(pretrain_step=pretrain, sparse_step=ramp, frequency=frequency)

    sample_period = sample_every(total_steps)
    steps, history, step = [], [], 0
    for epoch in range(1, settings["epochs"] + 1):
        epoch_start = time.perf_counter()
        loss_sum, seen = 0.0, 0
        for batch, index in enumerate(backend.batches(), 1):
            step += 1
            if step == 1:  # MXNet's pruner takes its initial state here: keep what it says
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    loss_sum += backend.train_step(index, step, prune)
                notes += library_notes(caught)
            else:
                loss_sum += backend.train_step(index, step, prune)
            seen += len(index)
            if prune is not None:
                prune.prune()
                if step % sample_period == 0 or step == total_steps:
                    steps.append({"step": step, "target": total_target(prune), "sparsity": prune.sparsity()[1]})
            if on_batch is not None:
                on_batch(batch, per_epoch)
        record = epoch_record(epoch, backend.evaluate(), loss_sum, seen, prune, time.perf_counter() - epoch_start)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    weights = backend.weights()
    if prune is not None:
        layer_sparsity, total_sparsity = prune.sparsity()
    else:  # dense: zeros counted in the weights a pruner would have listed
        listed = {name: weights[name] for name in backend.default_prune_dict(0.0)}
        layer_sparsity = {name: float((w == 0).mean()) for name, w in listed.items()}
        total_sparsity = sum(int((w == 0).sum()) for w in listed.values()) / sum(w.size for w in listed.values())
    return {
        "framework": backend.framework,
        "settings": settings,
        "test_accuracy": history[-1]["test_accuracy"],
        "layer_sparsity": layer_sparsity,
        "total_sparsity": total_sparsity,
        "balanced": prune.check()[1] if prune is not None else None,
        "epochs": history,
        "steps": steps,
        "wall_seconds": time.perf_counter() - started,
        "notes": notes,
        "weights": weights,
        "pruner_state": prune.state_dict() if prune is not None else None,
        "model": backend.model,
    }
