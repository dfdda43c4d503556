"""ResNet-50's convolutions one at a time, on the inputs they get in the model, NCHW and channels-last.

A ResNet-50 (torchvision layout) is pruned one-shot to ``--sparsity``, bank-balanced (bank 64), and a copy
is converted whole (every bank-balanced layer, whatever the rule would say). Each converted convolution
is then called on the input it receives in the model's forward pass at ``--batch``, in NCHW and in
channels-last memory: the masked dense ``nn.Conv2d`` and its bank-sparse conversion (BatchNorm folded,
ReLU fused where the model allows: what the converted model runs; its results are checked by the
tests, not here) interleaved, the order rotating, each
task repeated to about a millisecond per round. The table sums the medians per stage and kernel size
and gives dense ÷ bank-sparse: the convolutions' own speed, without the rest of the model.

    python -m pruning_tools.benchmarks.conv_layers
    PRUNING_TOOLS_ISA=avx2 python -m pruning_tools.benchmarks.conv_layers --threads 2 --json out.json
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections import Counter, defaultdict
from typing import cast

import click
import torch
from rich.console import Console
from rich.table import Table

from pruning_tools import _native
from pruning_tools.atomic import write_text
from pruning_tools.benchmarks.harness import header, interleaved
from pruning_tools.benchmarks.inference import pruned
from pruning_tools.benchmarks.models import resnet50
from pruning_tools.inference import BankSparseConv, convert, to_bank_sparse

LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


def converted_convs(
    batch: int, sparsity: float, tiny: bool
) -> list[tuple[str, torch.nn.Conv2d, BankSparseConv, torch.Tensor]]:
    """``(name, dense conv, its conversion, the input it gets in the model)`` for every converted convolution."""
    torch.manual_seed(0)
    dense = (resnet50(width=16, blocks=(1, 1, 1, 1)) if tiny else resnet50()).eval()
    prune = pruned(dense, sparsity)
    fast = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = to_bank_sparse(fast, prune.state_dict(), min_speedup=1e-9, min_weights=0)
    fast.eval()
    names = [n for n in report.converted if isinstance(fast.get_submodule(n), BankSparseConv)]
    size = 64 if tiny else 224
    inputs = convert._record_inputs(dense, [dense.get_submodule(n) for n in names], torch.randn(batch, 3, size, size))
    return [
        (
            n,
            cast(torch.nn.Conv2d, dense.get_submodule(n)),
            cast(BankSparseConv, fast.get_submodule(n)),
            inputs[id(dense.get_submodule(n))][0][0],  # (args, kwargs, n): its first argument
        )
        for n in names
    ]


def time_conv(dense: torch.nn.Conv2d, sparse: BankSparseConv, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per call of ``dense`` and ``sparse`` in each layout (interleaved, rotating)."""
    tasks, calls = {}, {}
    for layout, memory in LAYOUTS.items():
        xl = x.contiguous(memory_format=memory)
        start = time.perf_counter()
        dense(xl)
        n = max(1, min(200, int(1e-3 / max(time.perf_counter() - start, 1e-6))))  # ~1 ms of dense per round
        for kind, module in (("dense", dense), ("sparse", sparse)):
            tasks[f"{kind} {layout}"] = lambda module=module, xl=xl, n=n: [module(xl) for _ in range(n)]
            calls[f"{kind} {layout}"] = n
    timings = interleaved(tasks, rounds, warmup=1, rotate=True)
    return {name: t.median / calls[name] for name, t in timings.items()}


def group_of(name: str, conv: torch.nn.Conv2d) -> str:
    """``"layer2 3x3"``: the stage (first part of the name) and the kernel size."""
    stage = name.split(".")[0]
    return f"{stage if stage.startswith('layer') else 'stem'} {conv.kernel_size[0]}x{conv.kernel_size[1]}"


def table(rows: list[dict]) -> Table:
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        for key, seconds in row["seconds"].items():
            sums[row["group"]][key] += seconds
            sums["all"][key] += seconds
    out = Table("convolutions", "count", *(f"{layout} dense ms / ÷" for layout in LAYOUTS))
    counts = Counter(row["group"] for row in rows) + Counter(all=len(rows))
    for group, s in sorted(sums.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        cells = [f"{s[f'dense {lay}'] * 1e3:.2f} / {s[f'dense {lay}'] / s[f'sparse {lay}']:.2f}x" for lay in LAYOUTS]
        out.add_row(group, str(counts[group]), *cells)
    return out


@click.command()
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--sparsity", type=click.FloatRange(0.5, 0.99), default=0.9375, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=7, show_default=True, help="Interleaved rounds per layer.")
@click.option("--tiny", is_flag=True, help="A narrow, shallow ResNet (tests).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(threads: int, batch: int, sparsity: float, rounds: int, tiny: bool, json_path: str | None) -> None:
    """ResNet-50's converted convolutions, one at a time: dense ÷ bank-sparse per stage, NCHW and channels-last."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        title = header("benchmarks/conv_layers.py", threads) + (
            f"; kernel ISA {_native.isa.chosen()} (CPU runs {', '.join(_native.isa.supported())}); "
            f"batch {batch}; {sparsity:.2%} bank 64; {rounds} rounds, medians"
        )
        Console(width=140).print(title)
        rows = []
        with torch.no_grad():
            for name, dense, sparse, x in converted_convs(batch, sparsity, tiny):
                rows.append(
                    {"name": name, "group": group_of(name, dense), "seconds": time_conv(dense, sparse, x, rounds)}
                )
        Console(width=140).print(table(rows))
    finally:
        torch.set_num_threads(previous)
    if json_path:
        write_text(json_path, json.dumps({"header": title, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
