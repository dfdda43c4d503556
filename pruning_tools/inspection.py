"""``pruning-tools inspect``: sparsity and bank balance of every tensor in a checkpoint.

Reads a PyTorch state_dict (``.pt`` / ``.pth``, ``torch.load(..., weights_only=True)``; nested
dicts are flattened with dotted names), a safetensors file or an MXNet ``.params`` file. Tensors
with >= 2 dims are checked with ``pruning_tools.check_banks``; the budget of each bank comes from
``--sparsity`` or, by default, from the tensor's measured sparsity.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.table import Table

from .masks import check_banks, row_length

SUFFIXES = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".safetensors": "safetensors", ".params": "mxnet"}


def _flatten(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a (nested) dict / list, keyed by dotted path; other values are skipped."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, by name (format chosen by the file suffix)."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise click.BadParameter(
            f"{str(path)!r} has suffix {path.suffix!r}: expected one of " + ", ".join(sorted(SUFFIXES)),
            param_hint="PATH",
        )
    if kind == "torch":
        try:
            return _flatten(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # pickle errors come in many types
            raise click.ClickException(f"{path}: not a PyTorch weights-only checkpoint ({exc})") from exc
    if kind == "safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))  # stored by dtype and size: list them by name
        return {name: tensors[name] for name in sorted(tensors)}
    try:
        import mxnet as mx
    except ImportError as exc:
        raise click.ClickException(
            f"{path}: reading MXNet .params files needs mxnet (pip install 'pruning-tools[mxnet]'): {exc}"
        ) from exc
    loaded = mx.nd.load(str(path))
    if isinstance(loaded, list):
        loaded = {str(i): a for i, a in enumerate(loaded)}
    return {name: torch.from_numpy(array.asnumpy()) for name, array in loaded.items()}


def inspect_tensor(name: str, w: torch.Tensor, bank_size: int, layout: str, sparsity: float | None) -> dict:
    """One row of the report: shape, non-zeros, sparsity and (for >= 2 dims) the bank check."""
    nonzeros = int((w != 0).sum())
    row = {
        "name": name,
        "shape": list(w.shape),
        "dtype": str(w.dtype).replace("torch.", ""),
        "numel": w.numel(),
        "nonzeros": nonzeros,
        "sparsity": 1 - nonzeros / max(1, w.numel()),
        "balanced": None,
        "budget": None,
        "over_budget": None,
        "worst_bank": None,
        "worst_nonzeros": None,
        "worst_budget": None,
    }
    if w.dim() >= 2 and w.numel():
        check = check_banks(w, bank_size, layout, sparsity=sparsity)
        full_banks = row_length(w.shape, layout) // bank_size
        worst_is_tail = check.worst_bank[1] >= full_banks
        row.update(
            balanced=check.balanced,
            budget=check.budget,
            over_budget=check.over_budget,
            worst_bank=list(check.worst_bank),
            worst_nonzeros=check.worst_nonzeros,
            worst_budget=check.tail_budget if worst_is_tail else check.budget,
        )
    return row


def inspect_file(
    path: str | Path,
    bank_size: int = 64,
    layout: str = "channels_last",
    sparsity: float | None = None,
    match: tuple[str, ...] = (),
) -> dict:
    """Report of every tensor of ``path`` (or those whose name matches one of the globs ``match``)."""
    tensors = load_tensors(path)
    names = [n for n in tensors if not match or any(fnmatch.fnmatchcase(n, m) for m in match)]
    rows = [inspect_tensor(n, tensors[n], bank_size, layout, sparsity) for n in names]
    numel = sum(r["numel"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    unbalanced = [r["name"] for r in rows if r["balanced"] is False]
    return {
        "path": str(path),
        "bank_size": bank_size,
        "layout": layout,
        "sparsity": sparsity,
        "tensors": rows,
        "totals": {
            "tensors": len(rows),
            "numel": numel,
            "nonzeros": nonzeros,
            "sparsity": 1 - nonzeros / max(1, numel),
            "unbalanced": unbalanced,
        },
        "balanced": not unbalanced,
    }


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
    type=click.Choice(["channels_last", "flat"]),
    default="channels_last",
    show_default=True,
    help="How conv weights are read into rows (see the README).",
)
@click.option(
    "--sparsity",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Budget every bank for this sparsity (default: each tensor's measured sparsity).",
)
@click.option("--match", multiple=True, metavar="GLOB", help="List only tensors whose name matches (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--require-balanced", is_flag=True, help="Exit with code 1 when a listed tensor is not bank-balanced.")
def inspect(path, bank_size, layout, sparsity, match, as_json, require_balanced) -> None:
    """Table of every tensor in PATH (.pt/.pth, .safetensors, MXNet .params): shape, sparsity,
    non-zeros, bank balance with the worst bank, and totals."""
    report = inspect_file(path, bank_size, layout, sparsity, match)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        console = Console()
        console.width = max(console.width, 120)  # keep names whole when piped
        console.print(report_table(report))
    if require_balanced and not report["balanced"]:
        click.echo(f"not bank-balanced: {', '.join(report['totals']['unbalanced'])}", err=True)
        raise SystemExit(1)
