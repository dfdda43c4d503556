"""Cost of the sharded exact k-th selection against the single-process mask engine, in one process.

The sharded path (``pruning_tools.distributed.keep_largest_sharded``, pure PyTorch, so it runs on
GPUs too) runs here with a world of 1 and an identity all-reduce, so the ratio is its compute
alone; under FSDP2 it adds two all-reduces of 2**16 counts and one of per-shard counts. The
single-process engine is ``masks.global_masks`` with whatever ``PRUNING_TOOLS_KERNEL`` selects
(default: the compiled CPU kernel; ``torch``: the PyTorch top-k path). Weights: a ResNet-50
(torchvision layout, ``benchmarks.models``), one 3x3 conv and all conv/linear weights
at once. Prints ratios of the fastest of ``--repeat`` interleaved rounds, never bare times.

    python -m pruning_tools.benchmarks.distributed --threads 1
    PRUNING_TOOLS_KERNEL=torch python -m pruning_tools.benchmarks.distributed --threads 1
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import torch

from pruning_tools import distributed as D
from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools.benchmarks.harness import header, interleaved
from pruning_tools.benchmarks.models import resnet50


def sharded(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Global masks of ``weights`` by the sharded selection, in a world of one."""
    scores = [M.magnitude_scores(w, None).float() for w in weights]
    k = G.keep_count(sum(w.numel() for w in weights), sparsity)
    return D.keep_largest_sharded(scores, k, [True] * len(weights), 0, 1, lambda x: x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.9375)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet50()
    weights = [p.detach() for p in model.parameters() if p.dim() > 1]
    conv = model.get_parameter("layer4.0.conv2.weight").detach()
    cases = {
        f"one conv {list(conv.shape)}": ([conv], lambda: M.global_masks([conv], [None], args.sparsity)),
        f"global, {len(weights)} tensors": (
            weights,
            lambda: M.global_masks(weights, [None] * len(weights), args.sparsity),
        ),
    }
    engine = os.environ.get("PRUNING_TOOLS_KERNEL", "auto")
    print(
        header("benchmarks/distributed.py", torch.get_num_threads())
        + f"; sparsity {args.sparsity}, fastest of {args.repeat}, single-process engine PRUNING_TOOLS_KERNEL={engine}"
    )
    for label, (ws, single) in cases.items():
        n = sum(w.numel() for w in ws)
        same = all(torch.equal(a, b.reshape(a.shape)) for a, b in zip(single(), sharded(ws, args.sparsity)))
        t = interleaved({"sharded": partial(sharded, ws, args.sparsity), "single": single}, args.repeat, warmup=0)
        ratio = t["sharded"].min / t["single"].min
        print(f"{label:28s} {n:>10d} weights  sharded/single-process time {ratio:5.2f}  identical masks {same}")


if __name__ == "__main__":
    main()
