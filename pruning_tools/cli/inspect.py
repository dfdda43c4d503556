"""``pruning-tools inspect``: sparsity and bank balance of every tensor in a checkpoint
(``pruning_tools.checkpoints`` reads and checks; this draws the table)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from ._common import console, library_errors


def report_table(report: dict) -> Table:
    """The report as a rich table, totals in the last row."""
    table = Table(title=f"{report['path']}  (bank {report['bank_size']}, {report['layout']})")
    for column, justify in (
        ("tensor", "left"),
        ("shape", "left"),
        ("sparsity", "right"),
        ("non-zeros", "right"),
        ("balanced", "center"),
        ("worst bank: nz/budget", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")
    for r in report["tensors"]:
        if r["balanced"] is None:
            balanced, worst = "-", ""
        else:
            balanced = "[green]yes" if r["balanced"] else f"[red]no ({r['over_budget']} banks over)"
            worst = f"row {r['worst_bank'][0]} bank {r['worst_bank'][1]}: {r['worst_nonzeros']}/{r['worst_budget']}"
        table.add_row(
            r["name"],
            "x".join(map(str, r["shape"])) or "scalar",
            f"{r['sparsity']:.2%}",
            f"{r['nonzeros']:,}/{r['numel']:,}",
            balanced,
            worst,
        )
    t = report["totals"]
    table.add_section()
    table.add_row(
        f"total ({t['tensors']} tensors)",
        "",
        f"{t['sparsity']:.2%}",
        f"{t['nonzeros']:,}/{t['numel']:,}",
        "[green]all" if report["balanced"] else f"[red]{len(t['unbalanced'])} not",
        "",
    )
    return table


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--bank-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option(
    "--layout",
    type=click.Choice(["channels_last", "flat", "last_dim"]),
    default="channels_last",
    show_default=True,
    help="How N-D weights are read into rows: conv rows along input channels, W[o].flatten(), or rows "
    "along the last dim (N-D parameters that are not conv weights); see the README.",
)
@click.option(
    "--sparsity",
    type=click.FloatRange(0, 1, max_open=True),
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
@click.option("--require-balanced", is_flag=True, help="Exit with code 1 when a listed tensor is not bank-balanced.")
@library_errors
def inspect(path, bank_size, layout, sparsity, match, transposed, as_json, require_balanced) -> None:
    """Table of every tensor in PATH (.pt/.pth, .safetensors, MXNet .params): shape, sparsity,
    non-zeros, bank balance with the worst bank, and totals."""
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
    if require_balanced and not report["balanced"]:
        click.echo(f"not bank-balanced: {', '.join(report['totals']['unbalanced'])}", err=True)
        raise SystemExit(1)
