"""Peak extra memory of the pruner's operations, as a multiple of the weight's size, from one run.

    python -m pruning_tools.benchmarks.memory  # 256 MiB fp32 weights, PyTorch path and C kernel
    python -m pruning_tools.benchmarks.memory --size-mib 1024 --json docs/memory.json --markdown docs/memory.md

How it measures: each case runs in a fresh Python process (``--child``), which builds its weight and
pruner, then resets the kernel's peak-RSS mark (``/proc/self/clear_refs``, Linux) and reads
``VmHWM - VmRSS`` around the one operation. Peak resident memory counts everything the operation
allocates, in torch, numpy, the C kernels or Python, which ``tracemalloc`` (Python objects only) and
torch's profiler (torch's allocator only) do not; glibc is told to hand every block over 64 KiB back
to the system on free (``MALLOC_MMAP_THRESHOLD_``), so memory freed by one step is not silently reused
by the next and the peak is the operation's own. A calibration row (``w.clone()``, which must read
1.00x) shows the method is sound. The new mask (1 byte per weight, 0.25x of an fp32 weight) is part of
the peak: it is what a refresh produces.

Goals: a bank refresh on the PyTorch path <= 1.5x, ``check()`` + ``sparsity()`` <= 0.5x.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# (case, shape kind, balance, sparsity, what it is)
CASES = (
    ("clone", "linear", "fix", 0.9375, "calibration: w.clone() (must read 1.00x)"),
    ("refresh", "linear", "fix", 0.9375, "bank refresh, Linear, bank 64 keeps 4"),
    ("refresh", "linear", "fix", 0.5, "bank refresh, Linear, bank 64 keeps 32"),
    ("refresh", "conv", "fix", 0.9375, "bank refresh, 3x3 conv (channels-last rows), keeps 4"),
    ("refresh", "linear", "none", 0.9, "unstructured refresh, 90 %"),
    ("refresh", "linear", "global", 0.9, "global refresh (one tensor), 90 %"),
    ("check", "linear", "fix", 0.9375, "check() + sparsity(), bank 64"),
    ("check", "conv", "fix", 0.9375, "check() + sparsity(), 3x3 conv"),
    ("restore", "linear", "fix", 0.9375, "Prune(..., restore_sparsity=True) construction"),
)
GOALS = {"refresh:fix": 1.5, "check": 0.5, "restore": 1.5}  # restore: the issue names no number; 1.5x, ours


@dataclass
class Row:
    case: str
    description: str
    engine: str
    shape: list[int]
    tensor_mib: float
    peak_extra: float  # peak extra bytes / tensor bytes
    retained: float  # still allocated after the operation / tensor bytes
    goal: float | None


# ---------------------------------------------------------------- the child process


def _status() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset), bytes."""
    with open("/proc/self/status") as f:
        values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.startswith(("VmRSS", "VmHWM"))}
    return values["VmRSS"], values["VmHWM"]


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _shape(kind: str, numel: int) -> tuple[int, ...]:
    if kind == "conv":  # [out, in, 3, 3], rows of 256 input channels
        return (max(1, numel // (256 * 9)), 256, 3, 3)
    return (max(1, numel // 4096), 4096)


def child(case: str, kind: str, balance: str, sparsity: float, engine: str, numel: int) -> dict:
    """Run one case in this process and return its measurement."""
    import warnings

    import torch

    from pruning_tools import _native
    from pruning_tools.pytorch_pruning import Prune

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = _shape(kind, numel)
    layer = torch.nn.Linear(1, 1, bias=False) if kind == "linear" else torch.nn.Conv2d(1, 1, 1, bias=False)
    layer.weight = torch.nn.Parameter(torch.empty(shape).normal_())  # no temporaries
    w = layer.weight
    with _native.use_engine(engine), torch.no_grad():
        if case == "restore":
            w.masked_fill_(w.abs() < 1.5, 0)  # about 87 % zeros
        run: Callable[[], object]
        if case in ("refresh", "check"):
            prune = Prune(layer, 0, 2, 1, {"weight": sparsity}, balance=balance)
            prune.prune()  # the first refresh: warm-up, and a mask exists for the measured one
            if case == "check":
                prune.prune()
                run = lambda: (prune.check(), prune.sparsity())
            else:
                run = lambda: prune.prune()  # step 2: a refresh from the existing mask
        else:
            run = {
                "clone": lambda: w.clone(),
                "restore": lambda: Prune(layer, 0, 0, 1, {"weight": sparsity}, restore_sparsity=True),
            }[case]
        import gc

        gc.collect()
        before, _ = _status()
        _reset_peak()
        result = run()
        after, peak = _status()
        del result
    size = w.numel() * w.element_size()
    return {"shape": list(shape), "tensor_bytes": size, "peak_extra": (peak - before) / size,
            "retained": (after - before) / size}  # fmt: skip


# ---------------------------------------------------------------- the parent


def measure(case: str, kind: str, balance: str, sparsity: float, engine: str, numel: int) -> dict:
    """One case in a fresh process (so nothing one case freed is reused by the next)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1")
    args = [
        sys.executable,
        "-m",
        "pruning_tools.benchmarks.memory",
        "--child",
        case,
        kind,
        balance,
        str(sparsity),
        engine,
    ]
    args.append(str(numel))
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"memory case {case} {kind} {engine} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(size_mib: float = 256, engines: tuple[str, ...] = ("torch", "native")) -> list[Row]:
    numel = int(size_mib * 2**20) // 4
    rows = []
    for case, kind, balance, sparsity, description in CASES:
        for engine in engines if case != "clone" else ("torch",):
            m = measure(case, kind, balance, sparsity, engine, numel)
            goal = (GOALS.get(f"{case}:{balance}") or GOALS.get(case)) if engine == "torch" else None
            mib = m["tensor_bytes"] / 2**20
            rows.append(Row(case, description, engine, m["shape"], mib, m["peak_extra"], m["retained"], goal))
    return rows


def to_markdown(rows: list[Row], title: str) -> str:
    lines = [
        title,
        "",
        "| operation | engine | weight | MiB | peak extra / weight | retained / weight | goal |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        engine = {"torch": "PyTorch path", "native": "C kernel"}[r.engine]
        goal = "" if r.goal is None else (f"<= {r.goal}x: " + ("met" if r.peak_extra <= r.goal else "**missed**"))
        lines.append(
            f"| {r.description} | {engine} | {r.shape} | {r.tensor_mib:.0f} | {r.peak_extra:.2f}x | "
            f"{r.retained:.2f}x | {goal} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        case, kind, balance, sparsity, engine, numel = argv[1:7]
        print(json.dumps(child(case, kind, balance, float(sparsity), engine, int(numel))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=float, default=256, help="size of the fp32 weight (default 256 MiB)")
    parser.add_argument("--engine", choices=("torch", "native", "both"), default="both")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if platform.system() != "Linux":
        raise SystemExit("benchmarks/memory.py reads /proc/self/status: Linux only")
    from pruning_tools.benchmarks.harness import header

    title = header(f"benchmarks/memory.py --size-mib {args.size_mib:g}", 1)
    engines = ("torch", "native") if args.engine == "both" else (args.engine,)
    rows = run(args.size_mib, engines)
    table = to_markdown(rows, title)
    print(table, end="")
    from pruning_tools.atomic import write_text

    if args.json:
        write_text(args.json, json.dumps({"header": title, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    if args.markdown:
        write_text(args.markdown, table)


if __name__ == "__main__":
    main()
