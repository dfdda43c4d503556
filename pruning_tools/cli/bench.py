"""``pruning-tools bench``: the mask-engine benchmark (``pruning_tools.benchmarks.masks``), or with
``--inference`` the whole-model inference benchmark (``pruning_tools.benchmarks.inference``).

The benchmarks ship with the package so that a user measures the machine they deploy on.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from ..atomic import atomic_open
from ._common import Written, library_errors, output_file

QUICK_CAVEAT = (
    "--quick: tiny models and one or two rounds, to check that every task runs; its ratios are not "
    "measurements and may contradict the full run's (the figures of docs/results/ come from `pruning-tools bench`)"
)


@click.command("bench")
@click.option("--quick", is_flag=True, help="Tiny models, two rounds: a smoke run for CI.")
@click.option(
    "--inference",
    is_flag=True,
    help="Whole models (BERT, GPT, ResNet-50, Linear) bank-sparse vs dense eager vs onnxruntime, at 93.75 % and 90 %.",
)
@click.option(
    "--structured",
    is_flag=True,
    help="Structured pruning: ResNet-50 and BERT-base shrunk 50 % vs unpruned, eager and onnxruntime, "
    "Torch-Pruning side by side (when installed), shrunk + bank-sparse.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=None,
    help="Interleaved rounds per task (default 7, --inference 5; quick 2).",
)
@click.option("--train-rounds", type=click.IntRange(1), default=None, help="A/B pairs of training steps (default 20).")
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="torch and kernel threads (default 1; --inference: 1 and 2, one run each).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the rows and the extra numbers (sparsity reached, bytes per weight, mask agreement) here.",
)
@click.option(
    "--markdown",
    "md_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the table and the extra numbers as Markdown here.",
)
@library_errors
def bench(
    quick: bool,
    inference: bool,
    structured: bool,
    rounds: int | None,
    train_rounds: int | None,
    threads: int | None,
    json_path: str | None,
    md_path: str | None,
) -> None:
    """Time the mask engine against torch.nn.utils.prune and torch.ao.pruning (one interleaved run);
    --inference: whole models, bank-sparse against dense PyTorch and onnxruntime.

    Prints one table of medians and ratios; --json / --markdown also write it with the extra numbers.
    """
    for path, option in ((json_path, "--json"), (md_path, "--markdown")):
        if path:
            output_file(path, option)  # before the run, not after it
    if inference and structured:
        raise click.UsageError("--inference and --structured are two runs: pass one")
    if structured:
        from pruning_tools.benchmarks import structured as shrunk_models

        result = shrunk_models.run(quick, (threads,) if threads else (1, 2), rounds)
        table = shrunk_models.to_markdown(result) + (f"\n{QUICK_CAVEAT}\n" if quick else "")
        click.echo(table)
        _write(result, table, json_path, md_path)
        return
    if inference:
        from pruning_tools.benchmarks import inference as whole_models

        chosen = (threads,) if threads else (1, 2)
        result = whole_models.run(quick, chosen, whole_models.MODELS, rounds, None, None)
        _write(result, whole_models.to_markdown(result, result["header"]), json_path, md_path)
        return
    threads = threads or 1
    from pruning_tools.benchmarks import masks
    from pruning_tools.benchmarks.harness import header

    title = header(f"pruning-tools bench{' --quick' if quick else ''}", threads)
    rows, info = masks.run_benchmark(quick, rounds, train_rounds, threads)
    masks.print_rows(rows, title)
    if quick:
        click.echo(QUICK_CAVEAT)
    written = Written()
    if json_path:
        with atomic_open(written.before(json_path), "w") as f:
            results = {"header": title, "rows": [asdict(r) for r in rows], "info": info}
            if quick:
                results["caveat"] = QUICK_CAVEAT
            json.dump(results, f, indent=1, default=float)
    if md_path:
        with atomic_open(written.before(md_path), "w") as f:
            f.write(masks.to_markdown(rows, info, title) + (f"\n{QUICK_CAVEAT}\n" if quick else ""))
    written.report()


def _write(result: dict, table: str, json_path: str | None, md_path: str | None) -> None:
    """``result`` as JSON and ``table`` as Markdown, each where asked (atomically); name every file."""
    written = Written()
    if json_path:
        with atomic_open(written.before(json_path), "w") as f:
            json.dump(result, f, indent=1)
    if md_path:
        with atomic_open(written.before(md_path), "w") as f:
            f.write(table)
    written.report()
