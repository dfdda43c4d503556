"""``pruning-tools bench``: the mask-engine benchmark of the repository's ``benchmarks/masks.py``.

The benchmarks are not installed with the package: this command runs them from a checkout (the
current directory, or one above it, holding ``benchmarks/harness.py``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from ._common import library_errors


def import_benchmarks() -> None:
    """Make the checkout's ``benchmarks`` package importable, or say why it cannot be."""
    here = Path.cwd().resolve()
    for root in (here, *here.parents):
        if (root / "benchmarks" / "harness.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return
    raise click.ClickException(
        "pruning-tools bench runs the benchmarks of a checkout of the repository (benchmarks/ is not installed): "
        "run it from the repository"
    )


@click.command("bench")
@click.option("--quick", is_flag=True, help="Tiny models, two rounds: a smoke run for CI.")
@click.option(
    "--rounds", type=click.IntRange(1), default=None, help="Interleaved rounds per task (default 7; quick 2)."
)
@click.option("--train-rounds", type=click.IntRange(1), default=None, help="A/B pairs of training steps (default 20).")
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="torch and kernel threads (on a shared machine more than 1 mostly measures the scheduler).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the results here.")
@click.option(
    "--markdown",
    "md_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the table as Markdown here.",
)
@library_errors
def bench(
    quick: bool, rounds: int | None, train_rounds: int | None, threads: int, json_path: str | None, md_path: str | None
) -> None:
    """Time the mask engine against torch.nn.utils.prune and torch.ao.pruning (one interleaved run)."""
    import_benchmarks()
    from benchmarks import masks
    from benchmarks.harness import header

    from ..atomic import atomic_open

    title = header(f"pruning-tools bench{' --quick' if quick else ''}", threads)
    rows, info = masks.run_benchmark(quick, rounds, train_rounds, threads)
    masks.print_rows(rows, info, title)
    if json_path:
        with atomic_open(json_path, "w") as f:
            json.dump({"header": title, "rows": [asdict(r) for r in rows], "info": info}, f, indent=1, default=float)
    if md_path:
        with atomic_open(md_path, "w") as f:
            f.write(masks.to_markdown(rows, info, title))
