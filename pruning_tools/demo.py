"""``pruning-tools demo``: prune the simple CNN on MNIST and write weights, state, results and plots.

Files written to ``--out``: ``weights.safetensors`` (final weights), ``pruner_state.pt`` (the
pruner's ``state_dict()``, loads with ``torch.load(..., weights_only=True)``), ``results.json``
(accuracy, sparsity per layer, timings, settings, per-epoch records, sampled schedule) and the PNG
plots ``sparsity_schedule.png``, ``layer_sparsity.png``, ``bank_histogram.png``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import mnist

TRAINERS = {"pytorch": "pruning_tools.mnist_train", "mxnet": "pruning_tools.mxnet_mnist"}
NOT_IN_JSON = ("weights", "pruner_state", "model")


def load_trainer(framework: str) -> ModuleType:
    """The module holding the framework's ``train_mnist``, imported lazily (MXNet is an optional extra)."""
    module_name = TRAINERS[framework]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " (install the extra: pip install 'pruning-tools[mxnet]')" if framework == "mxnet" else ""
        raise click.ClickException(f"--framework {framework} is not available: {exc}{hint}") from exc
    return module


def plain(obj: Any) -> Any:
    """Pruner state -> tensors, numbers, strings, lists and dicts only (for weights_only loading)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if hasattr(obj, "asnumpy"):  # an MXNet NDArray
        return torch.from_numpy(obj.asnumpy())
    return obj


def write_outputs(result: dict, out: Path, console: Console | None = None) -> dict[str, Path]:
    """Write weights, pruner state, results.json and plots of a ``train_mnist`` result into ``out``."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    files = {"weights": out / "weights.safetensors", "results": out / "results.json"}
    save_file({name: np.array(w, order="C") for name, w in result["weights"].items()}, str(files["weights"]))
    if result.get("pruner_state") is not None:
        files["pruner_state"] = out / "pruner_state.pt"
        torch.save(plain(result["pruner_state"]), files["pruner_state"])
    if importlib.util.find_spec("matplotlib") is None:  # the optional extra "plots"
        if console is not None:
            console.print("[yellow]no plots: matplotlib is not installed (pip install 'pruning-tools[plots]')")
    else:
        from . import plots

        bank_size = result["settings"]["bank_size"]
        pruned = {name: w for name, w in result["weights"].items() if name in result["layer_sparsity"]}
        if result["steps"]:
            files["schedule_plot"] = plots.plot_sparsity_curve(result["steps"], out / "sparsity_schedule.png")
        files["layer_plot"] = plots.plot_layer_sparsity(result["layer_sparsity"], out / "layer_sparsity.png")
        files["bank_plot"] = plots.plot_bank_histogram(
            pruned or result["weights"], bank_size, out / "bank_histogram.png"
        )
    summary = {k: v for k, v in result.items() if k not in NOT_IN_JSON}
    summary["files"] = {k: p.name for k, p in files.items()}
    files["results"].write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return files


def parse_prune_dict(text: str | None) -> dict | None:
    """``--prune-dict`` JSON -> dict (the library validates names and values)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{text!r} is not JSON ({exc})", param_hint="--prune-dict") from exc
    if not isinstance(value, dict):
        raise click.BadParameter(
            f'{text!r} is not allowed: expected a JSON object such as {{"fc.weight": 0.9}}', param_hint="--prune-dict"
        )
    return value


def epoch_line(record: dict, epochs: int) -> str:
    return (
        f"epoch {record['epoch']:>2}/{epochs}  test acc {record['test_accuracy']:.2%}  "
        f"loss {record['train_loss']:.4f}  target {record['target']:.4f}  "
        f"sparsity {record['sparsity']:.4f}  {record['seconds']:.1f} s"
    )


@click.command("demo")
@click.option("--framework", type=click.Choice(sorted(TRAINERS)), default="pytorch", show_default=True)
@click.option(
    "--sparsity",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.9,
    show_default=True,
    help="Final sparsity of every conv / dense weight (0: dense, no pruning).",
)
@click.option(
    "--balance",
    type=click.Choice(["fix", "none"]),
    default="fix",
    show_default=True,
    help="fix: bank-balanced; none: unstructured per tensor.",
)
@click.option("--bank-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option(
    "--prune-dict",
    "prune_dict",
    default=None,
    metavar="JSON",
    callback=lambda _c, _p, v: parse_prune_dict(v),
    help="Which weights to prune, as the library's prune_dict, e.g. '{\"conv[23].weight\": 0.9, "
    '"fc.weight": 0.9}\' (default: every conv / dense weight at --sparsity).',
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default: the framework's recipe (8).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the recipe's (128).")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory with the MNIST *-ubyte.gz files (default: data/mnist/ in the repository).",
)
@click.option(
    "--download",
    is_flag=True,
    help="When no directory holds MNIST, fetch it from the usual mirrors (MD5-checked) into --data "
    "or ~/.cache/pruning-tools/mnist.",
)
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="CPU threads for torch (one is fastest for this small network on shared cores).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N train and test images (a quick look).",
)
def demo(
    framework,
    sparsity,
    balance,
    bank_size,
    prune_dict,
    epochs,
    batch_size,
    data_dir,
    download,
    out,
    seed,
    threads,
    limit,
) -> None:
    """Train the simple CNN on MNIST with gradual pruning; write weights, state, results.json, plots."""
    console = Console()
    trainer = load_trainer(framework)
    if download:
        try:
            data_dir = mnist.load_mnist(data_dir, download_missing=True).source
        except (OSError, RuntimeError, ValueError) as exc:
            raise click.ClickException(f"--download failed: {exc}") from exc
    train_mnist, total_epochs = trainer.train_mnist, epochs or getattr(trainer, "EPOCHS", "?")
    kwargs = dict(
        sparsity=sparsity,
        balance=balance,
        bank_size=bank_size,
        prune_dict=prune_dict,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        limit=limit,
    )
    console.print(f"[bold]demo[/] {framework}: sparsity {sparsity} balance {balance} bank {bank_size} -> {out}")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("epoch 1", total=None)

        def on_epoch(record: dict) -> None:
            console.print(epoch_line(record, total_epochs))
            progress.reset(task, description=f"epoch {record['epoch'] + 1}")

        def on_batch(batch: int, batches: int) -> None:
            progress.update(task, completed=batch, total=batches)

        accepted = inspect.signature(train_mnist).parameters
        if "on_batch" in accepted:
            kwargs["on_batch"] = on_batch
        if "threads" in accepted:
            kwargs["threads"] = threads
        try:
            result = train_mnist(data_dir, on_epoch=on_epoch, **kwargs)
        except (FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
    for note in result.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    if result.get("balanced") is False:
        console.print(
            "[bold red]warning:[/] the pruner's check() failed: some bank or tensor holds more "
            "non-zeros than its budget (see `pruning-tools inspect`)"
        )
    started = time.perf_counter()
    files = write_outputs(result, Path(out), console)
    console.print(
        f"test accuracy {result['test_accuracy']:.2%}, total sparsity {result['total_sparsity']:.4f}, "
        f"{result['wall_seconds']:.0f} s training, {time.perf_counter() - started:.1f} s writing"
    )
    console.print("wrote " + ", ".join(str(p) for p in files.values()))
