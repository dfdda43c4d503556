"""``pruning-tools demo``: prune the simple CNN on MNIST and write weights, state, results and plots.

Files written to ``--out`` (``pruning_tools.demo.outputs``): ``weights.safetensors`` (final weights),
``pruner_state.safetensors`` (``Prune.save``'s file), ``results.json`` (accuracy, sparsity per layer,
timings, settings, per-epoch records, sampled schedule) and the PNG plots ``sparsity_schedule.png``,
``layer_sparsity.png``, ``bank_histogram.png``.

The data directory defaults to ``data/mnist/`` of the current directory (a checkout of the
repository), else ``../shared/datasets/mnist/``; ``--data`` names another one.

``--task lm`` runs the language-model demo instead (``demo_lm``: a byte-level GPT on the Python
documentation in ``data/python-docs/``, one-shot pruning, fine-tuning).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._common import (
    Fraction,
    HiddenAlias,
    Written,
    console,
    earlier_files,
    library_errors,
    output_directory,
    say_replacing,
    shown,
    write_run,
)

if TYPE_CHECKING:
    from rich.console import Console

FRAMEWORKS = ("mxnet", "pytorch")
DEFAULT_DATA_DIRS = (Path("data/mnist"), Path("../shared/datasets/mnist"))  # relative to the current directory


def default_data_dirs() -> tuple[Path, ...]:
    """Where the demo looks for MNIST by default: a checkout's ``data/mnist/`` and its neighbour, then
    the user cache that ``--download`` fills (so an installed package finds what it fetched once)."""
    from ..demo.data import CACHE_DIR

    return (*DEFAULT_DATA_DIRS, CACHE_DIR)


def default_data_dir() -> Path | None:
    """The first of ``default_data_dirs()`` holding MNIST, or None."""
    from ..demo.data import has_mnist

    return next((d for d in default_data_dirs() if has_mnist(d)), None)


def mnist_data_dir(data_dir: Path | None, download: bool, option: str = "--data") -> Path | None:
    """The MNIST directory to read, checked now (before any training): ``data_dir`` itself, which must
    hold the four IDX files unless ``download``; by default the first of ``default_data_dirs()`` that
    does (None with ``download``: the user cache)."""
    from ..demo.data import FILES, has_mnist

    if data_dir is None:
        found = default_data_dir()
        if found is None and not download:
            places = " or ".join(f"{d}/" for d in default_data_dirs())
            raise click.UsageError(f"no MNIST found in {places}: pass {option} DIR or --download")
        return found
    if download or has_mnist(data_dir):
        return data_dir
    if not data_dir.is_dir():
        why = "no such directory"
    else:
        why = "it lacks " + ", ".join(name for name in FILES.values() if not (data_dir / name).is_file())
    raise click.BadParameter(
        f"MNIST not found in {data_dir} ({why}): pass the directory holding the four *-ubyte.gz files, "
        "or add --download to fetch them",
        param_hint=option,
    )


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
@click.option(
    "--task",
    type=click.Choice(["mnist", "lm"]),
    default="mnist",
    show_default=True,
    help="mnist: the CNN with gradual pruning; lm: a small GPT on text, one-shot pruned, then fine-tuned.",
)
@click.option(
    "--method",
    type=click.Choice(["magnitude", "wanda", "sparsegpt"]),
    default=None,
    help="--task lm: the one-shot method [default: sparsegpt].",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="--task lm: dense training steps [default: 1000]."
)
@click.option(
    "--calibration",
    type=click.IntRange(min=1),
    default=None,
    help="--task lm: calibration sequences for one-shot pruning [default: 128].",
)
@click.option("--framework", type=click.Choice(FRAMEWORKS), default="pytorch", show_default=True)
@click.option(
    "--sparsity",
    type=Fraction(),
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
    "--structure",
    type=click.Choice(["none", "channel"]),
    default="none",
    show_default=True,
    help="channel: remove whole conv filters (--sparsity is the fraction of channels removed; --balance and "
    "--bank-size do not apply), then shrink the model and save it as shrunk.safetensors.",
)
@click.option(
    "--prune-dict",
    "prune_dict",
    default=None,
    metavar="JSON",
    callback=lambda _c, _p, v: parse_prune_dict(v),
    help="Which weights to prune, as the library's prune_dict, e.g. '{\"conv[23].weight\": 0.9, "
    '"fc.weight": 0.9}\' (default: every conv / dense weight at --sparsity).',
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default: the recipe's (8).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the recipe's (128).")
@click.option(
    "--data",
    "--data-dir",
    "data_dir",
    cls=HiddenAlias,
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory with the MNIST *-ubyte.gz files (default: data/mnist/ of the current directory, "
    "else ../shared/datasets/mnist/).",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch missing MNIST files from the usual mirrors (MD5-checked) into --data or ~/.cache/pruning-tools/mnist.",
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
@library_errors
def demo(
    task,
    method,
    steps,
    calibration,
    framework,
    sparsity,
    balance,
    bank_size,
    structure,
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
    """Train the simple CNN on MNIST with gradual pruning; write weights, state, results.json, plots.

    With --task lm: train a small GPT on the Python documentation (data/python-docs/), prune it one-shot
    to --sparsity/--balance/--bank-size, fine-tune it; files in runs/demo-lm unless --out is given."""
    ctx = click.get_current_context()
    if task == "lm":
        from .demo_lm import run_lm

        return run_lm(ctx)
    return run_mnist(ctx)


def run_mnist(ctx: click.Context) -> None:
    """Run the MNIST demo with the options of the ``demo`` command in ``ctx``."""
    options = ctx.params
    _refuse_lm_options(options)
    if options["structure"] == "channel" and options["framework"] != "pytorch":
        raise click.UsageError("--structure channel needs --framework pytorch")
    from ..demo.outputs import OUTPUT_NAMES

    out_console = console()
    _check_framework_and_prune_dict(options)
    data_dir = mnist_data_dir(options["data_dir"], options["download"])
    out = output_directory(options["out"], "--out")  # before the training, not after it
    earlier = earlier_files(out, OUTPUT_NAMES)
    if options["download"]:
        data_dir = _download(data_dir)
    framework, prune_dict = options["framework"], options["prune_dict"]
    what = f"sparsity {options['sparsity']}" if prune_dict is None else f"prune_dict {shown(json.dumps(prune_dict))}"
    if options["structure"] == "channel":
        pattern = "whole channels"
    else:
        pattern = f"balance {options['balance']} bank {options['bank_size']}"
    out_console.print(f"[bold]demo[/] {framework}: {what} {pattern} -> {shown(out)}")
    say_replacing(out, earlier)
    result = _train_with_progress(out_console, data_dir, options)
    _print_training_notes(out_console, result)
    structured = options["structure"] == "channel"
    if framework == "pytorch" and result.get("pruner_state") is not None and not structured:
        result["deployment"] = _deploy(result, data_dir, options["limit"], options["threads"])
    if structured and result.get("pruner_state") is not None:  # before writing: the run's files hold it
        _shrink(result, data_dir, options["limit"], out_console)
    _write_outputs(out_console, result, out, earlier)
    if "deployment" in result:
        _print_deployment(out_console, result["deployment"])


def _refuse_lm_options(options: dict[str, Any]) -> None:
    """Refuse the options of the LM demo given without --task lm."""
    for name in ("method", "steps", "calibration"):
        if options[name] is not None:
            raise click.UsageError(f"--{name} is an option of --task lm")


def _check_framework_and_prune_dict(options: dict[str, Any]) -> None:
    """Load the framework's backend and check --prune-dict against the demo network, before any data."""
    from ..demo.trainer import check_prune_dict, load_backend

    framework = options["framework"]
    try:
        load_backend(framework)
    except ImportError as exc:
        hint = " (install the extra: pip install 'bank-pruning-tools[mxnet]')" if framework == "mxnet" else ""
        raise click.ClickException(f"--framework {framework} is not available: {exc}{hint}") from exc
    try:  # before the data, the output directory and the banner
        check_prune_dict(framework, options["prune_dict"], options["balance"], options["bank_size"])
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--prune-dict") from exc


def _download(data_dir: Path | None) -> Path:
    """Fetch the missing MNIST files (--download); the directory they are in."""
    from ..demo.data import load_mnist

    try:
        return Path(load_mnist(data_dir, download_missing=True).source)
    except (OSError, RuntimeError, ValueError) as exc:
        raise click.ClickException(f"--download failed: {exc}") from exc


def _train_with_progress(out_console: Console, data_dir: Path | None, options: dict[str, Any]) -> dict[str, Any]:
    """Train and prune under a transient progress bar, one line per epoch; the training's result."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..demo import recipe
    from ..demo.trainer import train_mnist

    total_epochs = options["epochs"] or recipe.EPOCHS
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=out_console,
        transient=True,
    ) as progress:
        task = progress.add_task("epoch 1", total=None)

        def on_epoch(record: dict) -> None:
            out_console.print(epoch_line(record, total_epochs), highlight=False)
            progress.reset(task, description=f"epoch {record['epoch'] + 1}")

        def on_batch(batch: int, batches: int) -> None:
            progress.update(task, completed=batch, total=batches)

        return train_mnist(
            data_dir,
            framework=options["framework"],
            sparsity=options["sparsity"],
            balance=options["balance"],
            bank_size=options["bank_size"],
            prune_dict=options["prune_dict"],
            epochs=options["epochs"],
            batch_size=options["batch_size"],
            seed=options["seed"],
            limit=options["limit"],
            on_epoch=on_epoch,
            on_batch=on_batch,
            threads=options["threads"],
            structure=options["structure"],
        )


def _print_training_notes(out_console: Console, result: dict[str, Any]) -> None:
    """The training's notes, and a warning when the pruner's check failed."""
    for note in result.get("notes", []):
        out_console.print(f"[yellow]note:[/] {shown(note)}")
    if result.get("balanced") is False:
        out_console.print(
            "[bold red]warning:[/] the pruner's check() failed: some bank or tensor holds more "
            "non-zeros than its budget (see `pruning-tools inspect`)"
        )


def _write_outputs(out_console: Console, result: dict[str, Any], out: Path, earlier: list[str]) -> None:
    """Write the run's files into ``out``; print the notes, the totals, every file and the stale ones."""
    from ..demo.outputs import write_outputs

    started = time.perf_counter()
    files, notes = write_run(write_outputs, result, out)
    for note in notes:
        out_console.print(f"[yellow]note:[/] {shown(note)}")
    counted = list(result["layer_sparsity"])
    values = sum(int(result["weights"][name].size) for name in counted)
    out_console.print(
        f"test accuracy {result['test_accuracy']:.2%}, total sparsity {result['total_sparsity']:.4f} over "
        f"{shown(', '.join(counted))} ({values:,} values; other tensors not counted), "
        f"{result['wall_seconds']:.0f} s training, {time.perf_counter() - started:.1f} s writing"
    )
    written = Written()
    written.add(files.values(), existed=[out / name for name in earlier])
    written.report()
    stale = [name for name in earlier if out / name not in files.values()]
    if stale:
        left = shown(", ".join(stale))
        out_console.print(f"[yellow]note:[/] left from an earlier run, not rewritten by this one: {left}")


def _print_deployment(out_console: Console, d: dict[str, Any]) -> None:
    """The converted model's accuracy and speed against the masked model's."""
    rule = ", ".join(d["rule_converted"]) or "none: measured slower"
    out_console.print(
        f"bank-sparse ({', '.join(d['converted'])}): test accuracy {d['accuracy']:.2%} (masked model "
        f"{d['masked_accuracy']:.2%}); {d['speedup']:.2f}x the masked model's speed on test images in "
        f"batches of 1000, {d['speedup_one']:.2f}x on one; to_bank_sparse's rule at batch 1000 converts: {rule}",
        highlight=False,
    )


def _shrink(result: dict, data_dir: Path | None, limit: int | None, out_console: Console) -> None:
    """Remove the masked channels of the trained model and check its test accuracy; ``result["shrunk"]``
    records it and the run's files will hold it (``shrunk.safetensors``)."""
    import numpy as np
    import torch

    from ..demo.data import load_mnist
    from ..demo.torch_backend import EXAMPLE_IMAGES, evaluate, to_tensor
    from ..structured.shrink import shrink

    model = result["model"]
    report = shrink(model, result["pruner_state"])
    data = load_mnist(data_dir).head(limit)
    accuracy = evaluate(model, to_tensor(data.test_images), torch.from_numpy(data.test_labels.astype(np.int64)))
    result["shrunk"] = {
        "test_accuracy": accuracy,
        "params": [report.params_before, report.params_after],
        "macs_per_image": [report.macs_before // EXAMPLE_IMAGES, report.macs_after // EXAMPLE_IMAGES],
        "channels": {", ".join(g.producers): [g.channels_before, g.channels_after] for g in report.groups},
    }
    out_console.print(str(report), highlight=False)
    per_image = " -> ".join(f"{m:,}" for m in result["shrunk"]["macs_per_image"])
    out_console.print(f"  (MACs of the {EXAMPLE_IMAGES} traced test images; per image {per_image})", highlight=False)
    out_console.print(
        f"shrunk model: test accuracy {accuracy:.2%} (masked model {result['test_accuracy']:.2%}), saved as "
        "shrunk.safetensors (load_shrunk(SimpleCNN(), path))",
        highlight=False,
    )


def _deploy(result: dict, data_dir, limit, threads: int) -> dict:
    """The converted model's accuracy and speedup (``demo.deploy``), at the training's thread count."""
    import torch

    from ..demo.deploy import deploy

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return deploy(result, data_dir, limit)
    finally:
        torch.set_num_threads(previous)
