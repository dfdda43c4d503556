"""``pruning-tools sensitivity``: sweep, table, plots and a suggested prune_dict from the shell."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from ._common import (
    Fraction,
    HiddenAlias,
    NonNegative,
    Written,
    console,
    earlier_files,
    library_errors,
    output_directory,
    printable,
    say_replacing,
    shown,
)

if TYPE_CHECKING:
    from ..sensitivity import SensitivityTable

OUTPUT_NAMES = (
    "dense.safetensors",
    "sensitivity.json",
    "sensitivity.csv",
    "suggestion.json",
    "sensitivity.png",
    "targets.png",
)
DEFAULT_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)  # pruning_tools.sensitivity.DEFAULT_LEVELS (no torch for --help)


def load_user_model(spec: str) -> tuple[Any, Callable[[Any], float]]:
    """``"pkg.module:function"`` -> ``function()``, which must return ``(model, evaluate)``."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise click.BadParameter(f"{spec!r}: expected 'pkg.module:function'", param_hint="--model")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise click.BadParameter(f"{spec!r}: {error}", param_hint="--model") from error
    if not callable(function):
        raise click.BadParameter(
            f"{spec!r} names a {type(function).__name__}, not a function: expected 'pkg.module:function', a "
            "function returning (model, evaluate)",
            param_hint="--model",
        )
    result = function()
    if not (isinstance(result, tuple) and len(result) == 2 and callable(result[1])):
        raise click.BadParameter(
            f"{spec!r} returned {type(result).__name__}: expected a tuple "
            "(model, evaluate) with evaluate a callable model -> score",
            param_hint="--model",
        )
    return result


def mnist_model(
    data_dir: str | None,
    weights: str | None,
    epochs: int,
    limit: int | None,
    score_images: int,
    seed: int,
    out: Path,
    score: str = "loss",
    written: Written | None = None,
) -> tuple[Any, Callable[[Any], float]]:
    """The MNIST demo CNN, dense (loaded from ``weights`` or trained for ``epochs`` and saved as
    ``out/dense.safetensors``), scored on the last ``score_images`` training images (the test set
    stays unseen) by minus the mean cross-entropy (``score="loss"``) or by accuracy.

    A freshly trained model is scored as reloaded from the file it was saved to, so that a later
    ``--weights out/dense.safetensors`` run computes exactly the same table."""
    import torch
    import torch.nn.functional as F

    from ..demo.data import load_mnist
    from ..demo.torch_backend import evaluate, to_tensor
    from ..demo.trainer import train_mnist
    from ..integrity import save_file

    if weights is None:
        click.echo(f"training the dense CNN for {epochs} epoch(s) ...", err=True)
        result = train_mnist(data_dir, sparsity=0.0, epochs=epochs, limit=limit, seed=seed)
        weights = str((written or Written()).before(out / "dense.safetensors"))
        save_file({k: v.contiguous() for k, v in result["model"].state_dict().items()}, weights)
        click.echo(f"dense test accuracy {result['test_accuracy']:.4f}; weights -> {printable(weights)}", err=True)
    model = load_cnn(weights)  # checksums verified
    data = load_mnist(data_dir).head(limit)
    images = to_tensor(data.train_images[-score_images:])
    labels = torch.from_numpy(data.train_labels[-score_images:].astype("int64"))
    if score == "accuracy":
        return model, lambda m: evaluate(m, images, labels)

    @torch.no_grad()
    def minus_loss(m: torch.nn.Module) -> float:
        m.eval()
        total = sum(
            float(F.cross_entropy(m(images[i : i + 1000]), labels[i : i + 1000], reduction="sum"))
            for i in range(0, len(labels), 1000)
        )
        return -total / len(labels)

    return model, minus_loss


def load_cnn(path: str | Path):
    """The MNIST demo CNN with the weights of the safetensors file ``path``; a file of another model
    is a ``ValueError`` naming what does not fit."""
    from ..checkpoints import load_tensors
    from ..demo.torch_backend import SimpleCNN

    model = SimpleCNN()
    tensors = load_tensors(path)
    expected = model.state_dict()
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    wrong = [
        f"{name} {list(tensors[name].shape)} (the CNN's is {list(t.shape)})"
        for name, t in expected.items()
        if name in tensors and tensors[name].shape != t.shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
            for label, names in (("missing", missing), ("not the CNN's", unexpected), ("other shapes", wrong))
            if names
        ]
        raise ValueError(f"--weights {path} are not the MNIST demo CNN's weights ({'; '.join(parts)})")
    model.load_state_dict(tensors)
    return model


def _print_table(table) -> None:
    from rich.table import Table

    view = Table(title=f"score (dense {table.baseline:.4f}) with one parameter pruned at each sparsity")
    view.add_column("parameter")
    view.add_column("size", justify="right")
    for level in table.levels:
        view.add_column(f"{level:.4f}", justify="right")
    sizes = table.sizes()
    for name, row in zip(table.names, table.scores):
        view.add_row(shown(name), str(sizes[name]), *(f"{s:.4f}" for s in row))
    console(stderr=True).print(view)


@contextlib.contextmanager
def _progress_bar(enabled: bool):
    """A rich progress bar fed by ``sweep``'s ``progress(done, total, name, level)`` callback."""
    if not enabled:
        yield False
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("sensitivity", total=None)

        def advance(done: int, total: int, name: str, level: float) -> None:
            bar.update(task, completed=done, total=total, description=f"{shown(name)} @ {level:.4f}")

        yield advance


@click.command("sensitivity")
@click.option(
    "--model",
    "model_spec",
    default=None,
    metavar="PKG.MODULE:FUNCTION",
    help="Function returning (model, evaluate); default: the MNIST demo CNN.",
)
@click.option("--params", multiple=True, help="Parameter name or glob (repeatable); default: all >= 2-D weights.")
@click.option(
    "--levels",
    default=",".join(str(v) for v in DEFAULT_LEVELS),
    show_default=True,
    help="Comma-separated sparsities, snapped to what the pattern realises.",
)
@click.option("--balance", type=click.Choice(["fix", "none"]), default="fix", show_default=True)
@click.option("--bank-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--layout", type=click.Choice(["channels_last", "flat"]), default="channels_last", show_default=True)
@click.option("--target", type=Fraction(), default=None, help="Overall sparsity of the suggested prune_dict.")
@click.option(
    "--uniform",
    type=Fraction(),
    default=None,
    help="Suggest at the overall sparsity a uniform prune_dict at this value reaches.",
)
@click.option("--max-drop", type=NonNegative(), default=None, help="Score drop tolerated per parameter.")
@click.option("--lower-is-better", is_flag=True, help="The score is a loss.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/sensitivity"),
    show_default=True,
    help="Directory for sensitivity.json/.csv/.png, suggestion.json, targets.png (existing files are "
    "replaced, and said so).",
)
@click.option(
    "--data",
    "--data-dir",
    "data_dir",
    cls=HiddenAlias,
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="MNIST: directory of the IDX files (default: as for `pruning-tools demo`).",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="MNIST: dense weights (safetensors) instead of training.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=2, show_default=True, help="MNIST: dense training epochs."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="MNIST: use only the first N images.")
@click.option(
    "--score-images",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="MNIST: score on the last N training images.",
)
@click.option(
    "--score",
    type=click.Choice(["loss", "accuracy"]),
    default="loss",
    show_default=True,
    help="MNIST: minus the mean cross-entropy, or the accuracy.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@library_errors
def sensitivity(
    model_spec,
    params,
    levels,
    balance,
    bank_size,
    layout,
    target,
    uniform,
    max_drop,
    lower_is_better,
    out,
    data_dir,
    weights,
    epochs,
    limit,
    score_images,
    score,
    seed,
    progress,
) -> None:
    """Prune one parameter at a time, one-shot; score; restore; suggest a prune_dict."""
    level_values = _checked_levels(levels, balance, bank_size, target, uniform)
    out = output_directory(out, "--out")  # before the training and the sweep, not after them
    say_replacing(out, earlier_files(out, OUTPUT_NAMES))
    written = Written()
    if model_spec is None:
        from .demo import mnist_data_dir

        data_dir = mnist_data_dir(data_dir, download=False)
        model, evaluate = mnist_model(data_dir, weights, epochs, limit, score_images, seed, out, score, written)
    else:
        model, evaluate = load_user_model(model_spec)
    table = _run_sweep(model, evaluate, params, level_values, balance, bank_size, layout, lower_is_better, progress)
    _print_table(table)
    table.save_json(written.before(out / "sensitivity.json"))
    table.save_csv(written.before(out / "sensitivity.csv"))
    report, bars = _suggestion(table, target, uniform, max_drop, out, written)
    plots_missing = not _plot(table, bars if report is not None else None, out, written)
    written.report(err=True)
    if plots_missing:
        click.echo("no plots: matplotlib is not installed (pip install 'bank-pruning-tools[plots]')", err=True)
    if report is None:
        click.echo("pass --target, --uniform or --max-drop for a suggested prune_dict", err=True)
    else:
        click.echo(json.dumps(report, indent=1))


def _checked_levels(
    levels: str, balance: str, bank_size: int, target: float | None, uniform: float | None
) -> list[float]:
    """--levels as numbers the pattern can realise, and --target and --uniform not both; before any work."""
    from ..sensitivity import snap_levels

    try:
        level_values = [float(v) for v in levels.split(",") if v.strip()]
    except ValueError as error:
        raise click.BadParameter(f"{levels!r}: expected comma-separated numbers", param_hint="--levels") from error
    if target is not None and uniform is not None:
        raise click.UsageError("give --target or --uniform, not both")
    try:  # fail before the (slow) sweep
        snap_levels(level_values, balance, bank_size)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--levels") from error
    return level_values


def _run_sweep(
    model: Any,
    evaluate: Callable[[Any], float],
    params: tuple[str, ...],
    level_values: list[float],
    balance: str,
    bank_size: int,
    layout: str,
    lower_is_better: bool,
    progress: bool,
) -> SensitivityTable:
    """The sweep under a progress bar; the library's errors about the model as usage errors."""
    from ..sensitivity import sweep

    try:
        with _progress_bar(progress) as report_progress:
            return sweep(
                model,
                evaluate,
                list(params) or None,
                level_values,
                balance=balance,
                bank_size=bank_size,
                layout=layout,
                higher_is_better=not lower_is_better,
                progress=report_progress,
            )
    except (ValueError, TypeError) as error:
        raise click.UsageError(str(error)) from error


def _suggestion(
    table: SensitivityTable,
    target: float | None,
    uniform: float | None,
    max_drop: float | None,
    out: Path,
    written: Written,
) -> tuple[dict[str, Any] | None, dict[str, dict[str, float]]]:
    """The suggested prune_dict's report, written to suggestion.json (None when none was asked for),
    and the targets to plot by label."""
    from ..atomic import write_text
    from ..sensitivity import overall_sparsity, predicted_drop, suggest_prune_dict

    if uniform is not None:
        target = overall_sparsity(table, {name: uniform for name in table.names})
    if target is None and max_drop is None:
        return None, {}
    try:
        suggestion = suggest_prune_dict(table, target, max_drop)
    except ValueError as error:
        written.report(err=True)
        raise click.UsageError(str(error)) from error
    report: dict[str, Any] = {
        "prune_dict": suggestion,
        "overall_sparsity": overall_sparsity(table, suggestion),
        "predicted_drop": predicted_drop(table, suggestion),
        "target": target,
        "max_drop": max_drop,
    }
    bars = {"suggested": suggestion}
    if uniform is not None:
        bars[f"uniform {uniform}"] = {name: uniform for name in table.names}
        report["uniform"] = uniform
    write_text(written.before(out / "suggestion.json"), json.dumps(report, indent=1) + "\n")
    return report, bars


def _plot(table: SensitivityTable, bars: dict[str, dict[str, float]] | None, out: Path, written: Written) -> bool:
    """Plot the curves, and the targets when there are ``bars``; False when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:  # the optional extra "plots"
        return False
    from ..demo.sensitivity_plots import plot_curves, plot_targets

    plot_curves(table, written.before(out / "sensitivity.png"))
    if bars is not None:
        plot_targets(table, bars, written.before(out / "targets.png"))
    return True
