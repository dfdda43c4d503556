"""The bank-sparse kernel of every instruction-set level this CPU runs, against masked dense PyTorch.

For each layer shape, sparsity and row count, dense ``F.linear`` / ``F.conv2d`` on the masked weight and
the bank-sparse module under each level (``pruning_tools._native.use_isa``; a copy per level, so that
none re-describes its weight between calls) run interleaved, the order
rotating; the table gives dense ÷ bank-sparse time (ratios of medians from the same run) per level.
The shapes are those of BERT-base's feed-forward layers and of ResNet-50's third stage.

    python -m pruning_tools.benchmarks.isa                       # every level, 1 thread
    python -m pruning_tools.benchmarks.isa --threads 2 --reps 30 --level avx2
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import click
import torch
from rich.console import Console
from rich.table import Table

from pruning_tools import _native
from pruning_tools.benchmarks.harness import header, interleaved
from pruning_tools.inference import BankSparseConv, BankSparseLinear
from pruning_tools.masks import bank_mask

LINEARS = ((3072, 768), (768, 3072))  # [out, in]
ROWS = (1, 8, 16, 64, 256)
CONVS = (  # (label, out, in, kernel, stride, padding, batch, size)
    ("conv 3x3 256->256, 14x14", 256, 256, 3, 1, 1, 1, 14),
    ("conv 1x1 1024->256, 14x14", 256, 1024, 1, 1, 0, 1, 14),
    ("conv 3x3 64->64, 56x56", 64, 64, 3, 1, 1, 1, 56),
)


def masked_weight(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """``weight`` with ``keep`` of every 64 input channels kept per row (channels-last rows for convs)."""
    rows = weight.permute(0, 2, 3, 1).reshape(-1, weight.shape[1]) if weight.dim() == 4 else weight
    mask = bank_mask(rows, None, 1 - keep / 64, 64)
    if weight.dim() == 4:
        o, c, kh, kw = weight.shape
        mask = mask.reshape(o, kh, kw, c).permute(0, 3, 1, 2)
    return weight * mask


def cases(keep: int, rows: tuple[int, ...], convs: bool):
    """``(label, dense layer, bank-sparse layer, input)`` for every shape."""
    torch.manual_seed(0)
    for out_f, in_f in LINEARS:
        fc = torch.nn.Linear(in_f, out_f)
        with torch.no_grad():
            fc.weight.copy_(masked_weight(fc.weight, keep))
        sparse = BankSparseLinear.from_linear(fc)
        for n in rows:
            yield f"Linear {out_f}x{in_f}, {n} rows", fc, sparse, torch.randn(n, in_f)
    if not convs:
        return
    for label, o, c, k, s, p, n, size in CONVS:
        conv = torch.nn.Conv2d(c, o, k, s, p)
        with torch.no_grad():
            conv.weight.copy_(masked_weight(conv.weight, keep))
        yield label, conv, BankSparseConv.from_conv(conv), torch.randn(n, c, size, size)


def _in_level(level: str, module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """``module(x)`` under ``level``; ``module`` must be this level's own copy (a module called under
    another level than its last re-describes its weight for that level: a check of every index)."""

    def call() -> object:
        with _native.use_isa(level):
            return module(x)

    return call


@click.command()
@click.option("--reps", default=15, show_default=True, help="Interleaved repetitions per case.")
@click.option("--threads", default=1, show_default=True, help="torch / OpenMP threads.")
@click.option("--level", "levels", multiple=True, type=click.Choice(_native.isa.LEVELS), help="Default: every one.")
@click.option("--keep", "keeps", multiple=True, type=int, default=(4, 6), show_default=True, help="Kept per bank.")
@click.option("--rows", "rows", multiple=True, type=int, default=ROWS, show_default=True)
@click.option("--no-conv", is_flag=True, help="Linear layers only.")
def main(reps: int, threads: int, levels, keeps, rows, no_conv) -> None:
    """Dense ÷ bank-sparse time per instruction-set level, ratios from one interleaved run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    _native.set_threads(threads)
    try:
        with torch.no_grad():
            run(reps, threads, tuple(levels) or _native.isa.supported(), keeps, rows, no_conv)
    finally:  # the process's settings as they were (the tests call main in-process)
        torch.set_num_threads(previous)
        _native.set_threads(0)


def run(reps: int, threads: int, levels: tuple[str, ...], keeps, rows, no_conv) -> None:
    """The table of ``main`` (torch's threads and grad mode already set)."""
    console = Console(width=140)
    console.print(
        header("benchmarks/isa.py", threads) + f"; CPU flags: {' '.join(sorted(_native.isa.cpu_flags() & FLAGS))}; "
        f"levels {', '.join(levels)}; {reps} reps, medians"
    )
    table = Table("layer", "sparsity", "dense ms", *(f"{level} ×" for level in levels))
    for keep in keeps:
        for label, dense, sparse, x in cases(keep, tuple(rows), not no_conv):
            own = {level: copy.deepcopy(sparse) for level in levels}  # one copy per level, described once
            for level in levels:  # every build loaded and warm, results checked
                with _native.use_isa(level):
                    torch.testing.assert_close(own[level](x), dense(x), rtol=1e-3, atol=1e-3)
            tasks: dict[str, Callable[[], object]] = {level: _in_level(level, own[level], x) for level in levels}
            tasks = {"dense": functools.partial(dense, x), **tasks}
            t = {name: timing.median for name, timing in interleaved(tasks, reps, warmup=2, rotate=True).items()}
            table.add_row(
                label,
                f"{1 - keep / 64:.2%}",
                f"{t['dense'] * 1e3:.3f}",
                *(f"{t['dense'] / t[level]:.2f}" for level in levels),
            )
    console.print(table)


FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "asimd", "neon"})

if __name__ == "__main__":
    main()
