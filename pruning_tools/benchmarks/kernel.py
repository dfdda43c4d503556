"""Bank-sparse CPU kernel against dense ``F.linear`` and ``torch.sparse`` CSR, from one run.

For each weight shape, sparsity and batch size the three products ``y = x Wᵀ + b`` run
interleaved (the order rotates every repetition) and the medians are compared, so load from
other processes on the machine hits all three alike. Prints milliseconds and the ratios.

    python -m pruning_tools.benchmarks.kernel  # the one-layer table of docs/results/inference.md (2 threads)
    python -m pruning_tools.benchmarks.kernel --reps 20 --shape 768x3072 --keep 4
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from functools import partial

import click
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from pruning_tools import _native
from pruning_tools.benchmarks.harness import Timing, header, interleaved
from pruning_tools.inference import BankSparseLinear
from pruning_tools.masks import bank_mask

SHAPES = ("4096x4096", "768x3072", "3072x768")  # [out, in]


def _csr_linear(csr: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ csr.T + bias`` with ``torch.sparse``: x ``[batch, in]``, csr ``[out, in]`` -> ``[batch, out]``."""
    return (csr @ x.t()).t() + bias


def cases(
    out_f: int, in_f: int, keep: int, batches: Sequence[int], reps: int, bank_size: int = 64
) -> Iterator[tuple[int, dict[str, Timing]]]:
    """Per batch size: ``(batch, timings of "dense", "csr" and "ours")``, each checked against ``F.linear``."""
    torch.manual_seed(0)
    weight = torch.randn(out_f, in_f)
    weight *= bank_mask(weight, None, 1 - keep / bank_size, bank_size)  # keep `keep` of every bank
    bias = torch.randn(out_f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        csr = weight.to_sparse_csr()
    fc = torch.nn.Linear(in_f, out_f)
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(bias)
    ours = BankSparseLinear.from_linear(fc, bank_size)
    for batch in batches:
        x = torch.randn(batch, in_f)
        expected = F.linear(x, weight, bias)
        assert torch.allclose(ours(x), expected, rtol=1e-4, atol=1e-4), "kernel disagrees with F.linear"
        assert torch.allclose(_csr_linear(csr, x, bias), expected, rtol=1e-4, atol=1e-4)
        timings = interleaved(
            {
                "dense": partial(F.linear, x, weight, bias),
                "csr": partial(_csr_linear, csr, x, bias),
                "ours": partial(ours, x),
            },
            reps,
            warmup=3,
            rotate=True,
        )
        yield batch, timings


@click.command()
@click.option("--reps", default=40, show_default=True, help="Interleaved repetitions per case.")
@click.option("--threads", default=2, show_default=True, help="torch / OpenMP threads.")
@click.option("--shape", "shapes", multiple=True, default=SHAPES, show_default=True, help="OUTxIN, repeatable.")
@click.option(
    "--keep",
    "keeps",
    multiple=True,
    type=int,
    default=(6, 4),
    show_default=True,
    help="Non-zeros kept per bank of 64 (6: 90 %, 4: 93.75 %), repeatable.",
)
@click.option("--batch", "batches", multiple=True, type=int, default=(1, 8, 64), show_default=True)
@click.option(
    "--fastest",
    is_flag=True,
    help="The fastest repetition instead of the median (other processes' load only adds time): to compare "
    "builds or commits at sizes of a fraction of a millisecond.",
)
def main(
    reps: int, threads: int, shapes: tuple[str, ...], keeps: tuple[int, ...], batches: tuple[int, ...], fastest: bool
) -> None:
    """Dense vs torch.sparse CSR vs the bank-sparse kernel, ratios from one run."""
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    path = "C kernel" if _native.library("bank_sparse") is not None else "PyTorch fallback"
    console = Console(width=120)
    console.print(
        header("benchmarks/kernel.py", torch.get_num_threads())
        + f"; bank 64, float32, {reps} interleaved reps, {'fastest' if fastest else 'medians'}; "
        f"ours = BankSparseLinear ({path}, kernel ISA {_native.isa.chosen()})"
    )
    table = Table("W [out, in]", "sparsity", "batch", "dense ms", "CSR ms", "ours ms", "dense/ours", "CSR/ours")
    for shape in shapes:
        out_f, in_f = (int(v) for v in shape.split("x"))
        for keep in keeps:
            for batch, timings in cases(out_f, in_f, keep, batches, reps):
                t = {name: timing.min if fastest else timing.median for name, timing in timings.items()}
                ms = {k: v * 1e3 for k, v in t.items()}
                table.add_row(
                    f"{out_f}×{in_f}",
                    f"{1 - keep / 64:.2%} ({keep}/64)",
                    str(batch),
                    f"{ms['dense']:.3f}",
                    f"{ms['csr']:.3f}",
                    f"{ms['ours']:.3f}",
                    f"{t['dense'] / t['ours']:.1f}×",
                    f"{t['csr'] / t['ours']:.1f}×",
                )
    console.print(table)
    console.print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share the cores)")


if __name__ == "__main__":
    main()
