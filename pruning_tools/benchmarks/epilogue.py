"""The ReLU in the convolution's epilogue, on and off, in one interleaved run.

ResNet-50 (torchvision's layout, trained-looking BatchNorms) pruned to ``--sparsity`` in banks of 64
and converted with every bank-balanced layer (BatchNorm folded in both), once with the ReLU after
``conv1`` / ``conv2`` of each block applied by the kernel and once without; the masked dense model
beside them. Each round runs the three in turn (the order rotating); the table gives paired ratios.

    python -m pruning_tools.benchmarks.epilogue                      # batch 1 and 32, 1 thread
    python -m pruning_tools.benchmarks.epilogue --batch 8 --threads 2 --rounds 21
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import click
import torch
from torch import nn

from pruning_tools.benchmarks.harness import Task, header, interleaved, paired_ratio
from pruning_tools.benchmarks.inference import pruned, resnet
from pruning_tools.inference import convert, to_bank_sparse
from pruning_tools.inference.relu import FusedReLU


def models(build: Callable[[], nn.Module], sparsity: float) -> dict[str, nn.Module]:
    """The masked dense model and its two conversions, in eval mode: ``dense``, ``no epilogue ReLU``,
    ``epilogue ReLU``."""
    dense = build().eval()
    prune = pruned(dense, sparsity)
    plain, fused = copy.deepcopy(dense), copy.deepcopy(dense)
    with mock.patch.object(convert, "conv_relu_pairs", lambda graph, modules, outputs: []):
        to_bank_sparse(plain, prune.state_dict(), min_speedup=1e-9, min_weights=0)
    to_bank_sparse(fused, prune.state_dict(), min_speedup=1e-9, min_weights=0)
    if not any(isinstance(m, FusedReLU) for m in fused.modules()):
        raise RuntimeError("no ReLU was fused: the comparison would measure nothing")
    return {"dense": dense, "no epilogue ReLU": plain, "epilogue ReLU": fused}


def compare(built: dict[str, nn.Module], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median milliseconds of each model on ``x`` and the paired ratios, from one interleaved run; the
    conversions' outputs are checked against the dense model's first."""
    with torch.no_grad():
        expected = built["dense"](x)
        for name in ("no epilogue ReLU", "epilogue ReLU"):
            torch.testing.assert_close(built[name](x), expected, rtol=1e-3, atol=1e-3)

        def task(model: nn.Module) -> Task:
            return Task(lambda: model(x))

        timings = interleaved({name: task(m) for name, m in built.items()}, rounds, rotate=True)
    row = {f"{name} ms": t.median * 1e3 for name, t in timings.items()}
    row["no epilogue ÷ epilogue"] = paired_ratio(timings["no epilogue ReLU"], timings["epilogue ReLU"])
    row["dense ÷ epilogue"] = paired_ratio(timings["dense"], timings["epilogue ReLU"])
    row["dense ÷ no epilogue"] = paired_ratio(timings["dense"], timings["no epilogue ReLU"])
    return row


def run(batches: Sequence[int], threads: int, rounds: int, sparsity: float, small: bool = False) -> list[dict]:
    """One row per batch size; ``small``: a tiny ResNet on 32² images (tests)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        width, blocks, side = (8, (1, 1, 1, 1), 32) if small else (64, (3, 4, 6, 3), 224)
        built = models(resnet(width, blocks, 10 if small else 1000), sparsity)
        rows = []
        for batch in batches:
            row = compare(built, torch.randn(batch, 3, side, side), rounds)
            rows.append({"batch": batch, "threads": threads, **row})
        return rows
    finally:
        torch.set_num_threads(previous)


@click.command()
@click.option("--batch", "batches", multiple=True, type=int, default=(1, 32), show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch / OpenMP threads.")
@click.option("--rounds", default=15, show_default=True, help="Interleaved rounds per batch size.")
@click.option("--sparsity", default=0.9375, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows here.")
def main(batches, threads: int, rounds: int, sparsity: float, json_path: Path | None) -> None:
    """ResNet-50 converted with and without the ReLU epilogue, against dense, interleaved."""
    title = header("ReLU epilogue, ResNet-50", threads)
    print(title)
    rows = run(batches, threads, rounds, sparsity)
    print("| batch | dense ms | no epilogue ReLU ms | epilogue ReLU ms | no epilogue ÷ epilogue | dense ÷ epilogue |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['dense ms']:.1f} | {r['no epilogue ReLU ms']:.1f} | {r['epilogue ReLU ms']:.1f} "
              f"| {r['no epilogue ÷ epilogue']:.3f} | {r['dense ÷ epilogue']:.2f}x |")  # fmt: skip
    if json_path is not None:
        json_path.write_text(json.dumps({"title": title, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
