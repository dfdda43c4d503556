"""``pruning-tools inspect``: sparsity and bank balance of every tensor in a checkpoint
(``pruning_tools.checkpoints`` reads and checks; this draws the table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from ._common import Fraction, console, library_errors, printable, shown

if TYPE_CHECKING:
    from rich.console import JustifyMethod

COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("tensor", "left"),
    ("shape", "left"),
    ("sparsity", "right"),
    ("non-zeros", "right"),
    ("balanced", "center"),
    ("worst bank: nz/budget", "left"),
)


def report_table(report: dict) -> Table:
    """The report as a rich table, totals in the last row. Names and paths read from the file are
    escaped: no markup, no control characters reach the terminal."""
    table = Table(
        title=f"{shown(report['path'])}  (bank {report['bank_size']}, {report['layout']})",
        caption=totals_caption(report),
    )
    for column, justify in COLUMNS:
        table.add_column(column, justify=justify, overflow="fold")
    for r in report["tensors"]:
        if r["balanced"] is None:
            balanced, worst = "-", ""
        else:
            balanced = "[green]yes" if r["balanced"] else f"[red]no ({r['over_budget']} banks over)"
            worst = f"row {r['worst_bank'][0]} bank {r['worst_bank'][1]}: {r['worst_nonzeros']}/{r['worst_budget']}"
        if "packed" in r:
            worst += f" (packed, bank {r['packed']['bank_size']})"
        table.add_row(
            shown(r["name"]),
            "x".join(map(str, r["shape"])) or "scalar",
            f"{r['sparsity']:.2%}",
            f"{r['nonzeros']:,}/{r['numel']:,}",
            balanced,
            worst,
        )
    t = report["totals"]
    table.add_section()
    verdict = {True: "[green]all", False: f"[red]{len(t['unbalanced'])} not", None: "none checked"}
    table.add_row(
        f"total of the {t['tensors']} listed",
        "",
        "-" if t["sparsity"] is None else f"{t['sparsity']:.2%}",
        f"{t['nonzeros']:,}/{t['numel']:,}",
        verdict[report["balanced"]],
        "",
    )
    return table


def totals_caption(report: dict) -> str:
    """Over which tensors the total is counted."""
    t = report["totals"]
    globs = " or ".join(shown(repr(m)) for m in report["match"])
    which = f"matching {globs}" if report["match"] else "of the file"
    if not t["tensors"]:
        if not report["tensors_in_file"]:
            return "no tensor listed: the file holds no tensor"
        return f"no tensor listed: none of the {report['tensors_in_file']} tensors of the file matches {globs}"
    return (
        f"total sparsity {t['sparsity']:.2%} over the {t['tensors']} tensors {which} "
        f"({t['numel']:,} values, 1-D ones included; {t['checked']} with >= 2 dims bank-checked)"
    )


def nothing_checked(report: dict) -> str:
    """Why ``--require-balanced`` has nothing to check."""
    if not report["tensors_in_file"]:
        return f"{printable(report['path'])} holds no tensor"
    if not report["tensors"]:
        globs = " ".join(printable(repr(m)) for m in report["match"])
        return f"--match {globs} matches none of the {report['tensors_in_file']} tensors of {printable(report['path'])}"
    return f"none of the {report['totals']['tensors']} listed tensors has >= 2 dims: no bank was checked"


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--bank-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option(
    "--layout",
    type=click.Choice(["channels_last", "flat", "last_dim"]),
    default="channels_last",
    show_default=True,
    help="How N-D weights are read into rows: conv rows along input channels, W[o].flatten(), or rows "
    "along the last dim (N-D parameters that are not conv weights); see the Concepts guide (docs/guide/concepts.md).",
)
@click.option(
    "--sparsity",
    type=Fraction(),
    default=None,
    help="Budget every bank for this sparsity (default: each tensor's measured sparsity).",
)
@click.option("--match", multiple=True, metavar="GLOB", help="List only tensors whose name matches (repeatable).")
@click.option(
    "--transposed",
    multiple=True,
    metavar="GLOB",
    help="Tensors stored [in, out] (output dim 1, e.g. GPT-2 Conv1D: '*.c_attn.weight'); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--require-balanced",
    is_flag=True,
    help="Exit with code 1 when a listed tensor is not bank-balanced, or when nothing was checked "
    "(no tensor listed, or none with >= 2 dims).",
)
@library_errors
def inspect(
    path: str,
    bank_size: int,
    layout: str,
    sparsity: float | None,
    match: tuple[str, ...],
    transposed: tuple[str, ...],
    as_json: bool,
    require_balanced: bool,
) -> None:
    """Table of every tensor in PATH (.pt/.pth, .safetensors, MXNet .params): shape, sparsity,
    non-zeros, bank balance with the worst bank, and totals over the listed tensors.

    A packed file (`pruning-tools export`) is read as the dense tensors it encodes, each checked with
    the bank size and layout the file records.
    """
    from ..checkpoints import SUFFIXES, inspect_file

    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise click.BadParameter(
            f"{path!r} has suffix {suffix!r}: expected one of " + ", ".join(sorted(SUFFIXES)), param_hint="PATH"
        )
    report = inspect_file(path, bank_size, layout, sparsity, match, transposed)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        console().print(report_table(report))
    if require_balanced and report["balanced"] is None:
        raise click.ClickException(f"--require-balanced: {nothing_checked(report)}")
    if require_balanced and not report["balanced"]:
        names = ", ".join(printable(name) for name in report["totals"]["unbalanced"])
        click.echo(f"not bank-balanced: {names}", err=True)
        raise SystemExit(1)
