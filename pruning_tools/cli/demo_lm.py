"""``pruning-tools demo --task lm``: the language-model demo, with a progress bar and one line per stage.

Options shared with the MNIST demo: ``--sparsity``, ``--balance``, ``--bank-size`` (the one-shot
pattern; ``--bank-size 4 --sparsity 0.5`` is 2:4), ``--data`` (default ``data/python-docs/`` of the
current directory), ``--out`` (default ``runs/demo-lm``), ``--seed``, ``--threads``, ``--limit`` (the
first N bytes of every split); of this task: ``--method``, ``--steps``, ``--calibration``. Files: see
``pruning_tools.demo.lm.app.write_lm_outputs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from ._common import Written, console, earlier_files, output_directory, say_replacing, shown, write_run

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_DATA = Path("data/python-docs")  # relative to the current directory (a checkout)
DEFAULT_OUT = "runs/demo-lm"
OUTPUT_NAMES = (
    "weights.safetensors",
    "dense_weights.safetensors",
    "pruner_state.safetensors",
    "results.json",
    "layer_sparsity.png",
    "bank_histogram.png",
)
MNIST_ONLY = ("framework", "prune_dict", "epochs", "batch_size", "download")


def run_lm(ctx: click.Context) -> None:
    """Run the LM demo with the options of the ``demo`` command in ``ctx``."""
    options = ctx.params
    _refuse_mnist_options(ctx)
    data_dir, out, earlier = _lm_paths(ctx)
    method = options["method"] or "sparsegpt"
    out_console = console()
    out_console.print(
        f"[bold]demo lm[/]: dense GPT, then {method} at sparsity {options['sparsity']} balance {options['balance']} "
        f"bank {options['bank_size']}, then fine-tuning -> {shown(out)}",
        highlight=False,
    )
    say_replacing(out, earlier)
    result = _run_with_progress(out_console, data_dir, options, method)
    _print_stages(out_console, result)
    _write_outputs(out_console, result, out, earlier)


def _refuse_mnist_options(ctx: click.Context) -> None:
    """Refuse the options of the MNIST demo given with --task lm."""
    given = [name for name in MNIST_ONLY if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise click.UsageError(f"{flags}: not an option of --task lm (they belong to the MNIST demo)")


def _lm_paths(ctx: click.Context) -> tuple[Path, Path, list[str]]:
    """The corpus directory (checked), the output directory and the earlier run's files in it."""
    from ..demo.lm.data import has_corpus

    options = ctx.params
    data_dir = options["data_dir"] or DEFAULT_DATA
    if not has_corpus(data_dir):
        raise click.UsageError(f"no LM corpus in {data_dir}/: pass --data DIR (the repository's data/python-docs/)")
    out = options["out"] if ctx.get_parameter_source("out") is not ParameterSource.DEFAULT else DEFAULT_OUT
    out = output_directory(out, "--out")  # before the training, not after it
    return data_dir, out, earlier_files(out, OUTPUT_NAMES)


def _run_with_progress(out_console: Console, data_dir: Path, options: dict[str, Any], method: str) -> dict[str, Any]:
    """Train, prune one-shot and fine-tune under a transient progress bar; the demo's result."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..demo.lm.app import run_lm_demo

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=out_console,
        transient=True,
    ) as progress:
        bar = progress.add_task("dense training", total=None)

        def on_log(stage: str, entry: dict) -> None:
            progress.update(bar, description=f"{stage} (loss {entry['loss']:.3f})", completed=entry["step"])

        def on_layer(done: int, total: int, name: str) -> None:
            progress.update(bar, description=f"one-shot {method}: {name}", completed=done, total=total)

        return run_lm_demo(
            data_dir,
            sparsity=options["sparsity"],
            balance=options["balance"],
            bank_size=options["bank_size"],
            method=method,
            steps=options["steps"],
            seed=options["seed"],
            threads=options["threads"],
            limit=options["limit"],
            sequences=options["calibration"] or 128,
            on_log=on_log,
            on_layer=on_layer,
        )


def _print_stages(out_console: Console, result: dict[str, Any]) -> None:
    """One line per stage (test perplexity, time), the one-shot's cost, and a failed check."""
    for stage, data in result["stages"].items():
        out_console.print(
            f"{stage:<9} test perplexity {data['test']['perplexity']:.3f} per byte "
            f"({data['test']['bits_per_byte']:.3f} bits)  {data['seconds']:.0f} s",
            highlight=False,
        )
    report = result["stages"]["oneshot"]["report"]
    out_console.print(
        f"one-shot: {report['seconds']:.1f} s, peak {report['peak_bytes'] / 2**20:.1f} MiB held "
        f"(process peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB), {report['mode']}",
        highlight=False,
    )
    if not result["balanced"]:
        out_console.print("[bold red]warning:[/] the pruner's check() failed after fine-tuning")


def _write_outputs(out_console: Console, result: dict[str, Any], out: Path, earlier: list[str]) -> None:
    """Write the run's files into ``out``, print the notes and the total, and name every file."""
    from ..demo.lm.app import write_lm_outputs

    files, notes = write_run(write_lm_outputs, result, out)
    for note in notes:
        out_console.print(note, markup=False, highlight=False)
    out_console.print(
        f"total sparsity {result['total_sparsity']:.4f}, {result['wall_seconds']:.0f} s",
        markup=False,
        highlight=False,
    )
    written = Written()
    written.add(files.values(), existed=[out / name for name in earlier])
    written.report()
