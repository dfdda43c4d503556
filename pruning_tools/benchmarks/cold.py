"""The bank-sparse products with their data in cache and evicted from it, against dense.

Called back to back, a layer finds its weights and input in cache; inside a model the other layers
evicted them since its last call. For BERT-base's feed-forward shapes at 128 rows, each layer is timed
in three states: ``warm`` (right after a call of itself), ``after others`` (right after ``--others`` layers of its
kind, with their own weights, as in an encoder: converted ones before the converted layer, dense ones
before the dense) and ``after 64 MB`` (right after writing 64 MB: every cache evicted). The eviction
is untimed; dense and bank-sparse run interleaved, the order rotating; the table gives medians and
dense ÷ bank-sparse.

    python -m pruning_tools.benchmarks.cold
    PRUNING_TOOLS_ISA=avx2 python -m pruning_tools.benchmarks.cold --threads 2

``CC="cc -DNO_PREFETCH"`` builds the kernel without its software prefetches (a separate cache entry),
to compare.
"""

from __future__ import annotations

import click
import torch
from rich.console import Console
from rich.table import Table

from pruning_tools import _native
from pruning_tools.benchmarks.harness import Task, header, interleaved
from pruning_tools.benchmarks.isa import masked_weight
from pruning_tools.inference import BankSparseLinear

LINEARS = ((3072, 768), (768, 3072))  # [out, in]: BERT-base's feed-forward layers
ROWS = 128  # tokens
SWEEP_BYTES = 64 << 20


def layers(out_f: int, in_f: int, keep: int, count: int) -> list[tuple[torch.nn.Linear, BankSparseLinear]]:
    """``count`` pairs (dense masked ``nn.Linear``, its bank-sparse conversion), each with its own weights."""
    pairs = []
    for _ in range(count):
        fc = torch.nn.Linear(in_f, out_f)
        with torch.no_grad():
            fc.weight.copy_(masked_weight(fc.weight, keep))
        pairs.append((fc, BankSparseLinear.from_linear(fc)))
    return pairs


def tasks(pairs, x: torch.Tensor, sweep: torch.Tensor) -> dict[str, Task]:
    """Dense and bank-sparse calls of ``pairs[0]`` on ``x`` in each state (the others evict)."""
    (dense, sparse), others = pairs[0], pairs[1:]

    def after_dense() -> None:
        for fc, _ in others:
            fc(x)

    def after_sparse() -> None:
        for _, bank in others:
            bank(x)

    def write() -> None:
        sweep.fill_(1.0)

    out: dict[str, Task] = {}
    for state, dense_setup, sparse_setup in (
        ("warm", lambda: dense(x), lambda: sparse(x)),
        ("after others", after_dense, after_sparse),
        ("after 64 MB", write, write),
    ):
        out[f"dense {state}"] = Task(lambda: dense(x), dense_setup)
        out[f"sparse {state}"] = Task(lambda: sparse(x), sparse_setup)
    return out


@click.command()
@click.option("--rounds", default=30, show_default=True, type=click.IntRange(min=1), help="Interleaved rounds.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="torch / OpenMP threads.")
@click.option(
    "--keep", default=4, show_default=True, type=click.IntRange(1, 63), help="Kept per bank of 64 (4: 93.75 %)."
)
@click.option(
    "--others",
    default=6,
    show_default=True,
    type=click.IntRange(min=0),
    help="Layers called between two calls of the timed one.",
)
def main(rounds: int, threads: int, keep: int, others: int) -> None:
    """Dense and bank-sparse layers warm, after other layers and after a 64 MB write."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    _native.set_threads(threads)
    console = Console(width=140)
    click.echo(header("benchmarks/cold.py", threads) + f"; kernel ISA {_native.isa.chosen()}; {rounds} rounds")
    table = Table("layer", "state", "dense ms", "bank-sparse ms", "dense ÷ bank-sparse")
    sweep = torch.empty(SWEEP_BYTES // 4)
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            for out_f, in_f in LINEARS:
                pairs = layers(out_f, in_f, keep, 1 + others)
                x = torch.randn(ROWS, in_f)
                torch.testing.assert_close(pairs[0][1](x), pairs[0][0](x), rtol=1e-3, atol=1e-3)
                t = {k: v.median for k, v in interleaved(tasks(pairs, x, sweep), rounds, warmup=2, rotate=True).items()}
                for state in ("warm", "after others", "after 64 MB"):
                    dense, sparse = t[f"dense {state}"], t[f"sparse {state}"]
                    label = f"Linear {out_f}x{in_f}, {ROWS} rows, {1 - keep / 64:.2%}"
                    table.add_row(label, state, f"{dense * 1e3:.3f}", f"{sparse * 1e3:.3f}", f"{dense / sparse:.2f}")
    finally:  # the process's settings as they were (the tests call main in-process)
        torch.set_num_threads(previous)
        _native.set_threads(0)
    console.print(table)


if __name__ == "__main__":
    main()
