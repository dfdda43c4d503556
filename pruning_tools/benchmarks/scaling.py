"""How a mask refresh scales with the number of parameters, and what small tensors cost, from one run.

    python -m pruning_tools.benchmarks.scaling  # the tables of docs/results/memory-scale.md (a few minutes)
    python -m pruning_tools.benchmarks.scaling --quick  # seconds: smaller counts, fewer rounds
    python -m pruning_tools.benchmarks.scaling --json s.json --markdown s.md

1. ``balance="global"`` refresh against the number of parameters (PyTorch; MXNet when installed):
   time per refresh per parameter, relative to the smallest count. Linear scaling reads 1.0 at every
   count (quadratic would double with each doubling). For MXNet it also counts the host copies
   (``asnumpy``) per weight and refresh: the goal is exactly 1.
2. A refresh of many small tensors, unstructured against bank-balanced (the same tensors).
3. One unstructured mask by tensor size on the CPU: the one-call 8-bit radix kernel
   (``keep_largest``), the 16-bit radix kernel with histograms (``largest_masks``) and a top-k; the
   pruner picks by size (``masks.SMALL_TENSOR``), the last column says which it picks.

Every table is timed interleaved (``benchmarks.harness``: every task once per round, in turn), on one
thread; results are ratios of tasks timed in the same run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pruning_tools.benchmarks.harness import Task, header, interleaved

if TYPE_CHECKING:
    from pruning_tools.pytorch_pruning import Prune

GOAL_SMALL = 1.5  # ours: unstructured refresh of small tensors within 1.5x of bank-balanced


def torch_global(count: int, size: int = 32) -> tuple[nn.Module, Prune]:
    from pruning_tools.pytorch_pruning import Prune

    torch.manual_seed(0)
    model = nn.ModuleList(nn.Linear(size, size, bias=False) for _ in range(count))
    prune = Prune(model, 0, 10**9, 1, {"*.weight": 0.9}, balance="global")  # every step refreshes
    return model, prune


def global_scaling(counts: list[int], rounds: int) -> list[dict]:
    pruners = {n: torch_global(n)[1] for n in counts}
    timings = interleaved({f"P={n}": Task(pruners[n].prune) for n in counts}, rounds, rotate=True)
    base = counts[0]
    per_param = {n: timings[f"P={n}"].median / n for n in counts}
    return [
        {"framework": "PyTorch", "parameters": n, "ms per refresh": 1e3 * timings[f"P={n}"].median,
         "per parameter vs smallest": per_param[n] / per_param[base], "host copies per weight": None}
        for n in counts
    ]  # fmt: skip


def mxnet_scaling(counts: list[int], rounds: int) -> list[dict]:
    try:
        import mxnet as mx

        from pruning_tools import mxnet_pruning
    except ImportError:
        return []
    pruners, reads = {}, {}
    for n in counts:
        net = mx.gluon.nn.HybridSequential(prefix=f"n{n}_")
        with net.name_scope():
            for _ in range(n):
                net.add(mx.gluon.nn.Dense(32, in_units=32, use_bias=False))
        net.initialize()
        prune = mxnet_pruning.Prune(net, 0, 10**9, 1, {"*weight": 0.9}, balance="global")
        counter = {"reads": 0}
        read = prune._bridge.read

        def counted(name: str, read: Callable[[str], Tensor] = read, counter: dict[str, int] = counter) -> Tensor:
            counter["reads"] += 1
            return read(name)

        prune._bridge.read = counted  # type: ignore[method-assign]
        pruners[n], reads[n] = prune, counter
    timings = interleaved({f"P={n}": Task(pruners[n].prune) for n in counts}, rounds, rotate=True)
    base = counts[0]
    per_param = {n: timings[f"P={n}"].median / n for n in counts}
    steps = rounds + 1  # warm-up round included
    return [
        {"framework": "MXNet", "parameters": n, "ms per refresh": 1e3 * timings[f"P={n}"].median,
         "per parameter vs smallest": per_param[n] / per_param[base],
         "host copies per weight": reads[n]["reads"] / (steps * n)}
        for n in counts
    ]  # fmt: skip


def small_tensors(count: int, shape: tuple[int, int], rounds: int) -> dict:
    from pruning_tools.pytorch_pruning import Prune

    torch.manual_seed(0)
    model = nn.ModuleList(nn.Linear(shape[1], shape[0], bias=False) for _ in range(count))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruners = {b: Prune(model, 0, 10**9, 1, {"*.weight": 0.9}, balance=b) for b in ("fix", "none", "global")}
    timings = interleaved({b: Task(p.prune) for b, p in pruners.items()}, rounds, rotate=True)
    ms = {b: 1e3 * t.median for b, t in timings.items()}
    return {"tensors": count, "shape": list(shape), "ms per refresh": ms, "none / fix": ms["none"] / ms["fix"]}


def by_size(exponents: list[int], rounds: int) -> list[dict]:
    from pruning_tools import masks as M
    from pruning_tools._native import mask_kernels as native

    rows = []
    for e in exponents:
        n = 1 << e
        torch.manual_seed(e)
        w = torch.randn(n)
        mask = torch.rand(n) > 0.3
        k = int(n * 0.2)
        tasks = {
            "8-bit radix, one call": lambda w=w, mask=mask, k=k: native.keep_largest(w, mask, k),
            "16-bit radix": lambda w=w, mask=mask, k=k: native.largest_masks([w], [mask], k),
            "top-k": lambda w=w, mask=mask, k=k: M.keep_largest(M.magnitude_scores(w, mask), k),
        }
        reference = _first(tasks["top-k"]())
        if any(not torch.equal(_first(t()), reference) for t in tasks.values()):
            raise AssertionError(f"the three methods disagree at 2^{e}")
        timings = interleaved(tasks, max(3, min(rounds * 20, (1 << 24) // n)), rotate=True)
        us = {name: 1e6 * t.median for name, t in timings.items()}
        picked = "8-bit radix, one call" if n < M.SMALL_TENSOR else "16-bit radix"
        rows.append({"weights": n, "us": us, "picked": picked, "picked / best": us[picked] / min(us.values())})
    return rows


def _first(out: list[Tensor] | Tensor | None) -> Tensor:
    """The mask one method returned (``largest_masks`` returns a list; ``None``: the kernel could not serve it)."""
    first = out[0] if isinstance(out, list) else out
    if first is None:
        raise RuntimeError("the compiled mask kernel could not serve this tensor")
    return first


def run(quick: bool) -> dict:
    torch.set_num_threads(1)  # the mask kernels use torch's thread count
    rounds = 2 if quick else 7
    counts = [125, 250, 500] if quick else [250, 500, 1000, 2000]
    mx_counts = [50, 100, 200] if quick else [100, 200, 400, 800]
    results = {
        "global": global_scaling(counts, rounds) + mxnet_scaling(mx_counts, rounds),
        "small": small_tensors(200 if quick else 1000, (64, 64), rounds),
        "by_size": by_size(list(range(8, 19 if quick else 22, 2 if quick else 1)), 1 if quick else 3),
    }
    return results


def to_markdown(results: dict, title: str) -> str:
    out = [title, "", "**Global refresh against the number of parameters** (each a 32×32 weight):", ""]
    out += ["| framework | parameters | ms per refresh | time per parameter vs smallest | host copies per weight |",
            "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in results["global"]:
        copies = "" if r["host copies per weight"] is None else f"{r['host copies per weight']:.2f}"
        out.append(
            f"| {r['framework']} | {r['parameters']} | {r['ms per refresh']:.1f} | "
            f"{r['per parameter vs smallest']:.2f} | {copies} |"
        )
    s = results["small"]
    ms, ratio = s["ms per refresh"], s["none / fix"]
    verdict = "met" if ratio <= GOAL_SMALL else "**missed**"
    out += ["", f"**{s['tensors']} small tensors {s['shape']}**, one refresh (90 %):", "",
            "| bank-balanced (fix) ms | unstructured (none) ms | global ms | none / fix | goal (<= 1.5) |",
            "|---:|---:|---:|---:|---|",
            f"| {ms['fix']:.1f} | {ms['none']:.1f} | {ms['global']:.1f} | {ratio:.2f} | {verdict} |"]  # fmt: skip
    names = list(results["by_size"][0]["us"])
    out += ["", "**One unstructured mask (80 % pruned) by tensor size**, µs (medians):", "",
            "| weights | " + " | ".join(names) + " | picked | picked / fastest |",
            "|---:|" + "---:|" * len(names) + "---|---:|"]  # fmt: skip
    for r in results["by_size"]:
        cells = " | ".join(f"{r['us'][n]:.0f}" for n in names)
        out.append(f"| {r['weights']} | {cells} | {r['picked']} | {r['picked / best']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts and fewer rounds (seconds)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    title = header(f"benchmarks/scaling.py{' --quick' if args.quick else ''}", 1)
    results = run(args.quick)
    table = to_markdown(results, title)
    print(table, end="")
    from pruning_tools.atomic import write_text

    if args.json:
        write_text(args.json, json.dumps({"header": title, **results}, indent=1) + "\n")
    if args.markdown:
        write_text(args.markdown, table)


if __name__ == "__main__":
    main()
