"""The one timing harness: interleaved rounds, medians, paired ratios, and the machine they ran on.

These machines are shared and noisy, so nothing here reports a bare time as a result: every task runs
once per round, in turn (the order rotates when asked), so load from other processes hits all tasks
alike, and results are ratios of tasks timed in the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    """Seconds of every round of one task."""

    task: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


@dataclass
class Task:
    """``run`` is timed; ``setup`` (untimed) runs before it each round; ``max_rounds``: a slow task (seconds
    per run, its one-time costs do not matter) skips the warm-up and sits out the rounds after its first
    ``max_rounds``."""

    run: Callable[[], object]
    setup: Callable[[], object] | None = None
    max_rounds: int | None = None


def interleaved(
    tasks: Mapping[str, Task | Callable[[], object]], rounds: int, warmup: int = 1, rotate: bool = False
) -> dict[str, Timing]:
    """Run every task once per round, in turn (``rotate``: the order shifts by one each round)."""
    as_tasks = {name: t if isinstance(t, Task) else Task(t) for name, t in tasks.items()}
    names = list(as_tasks)
    timings = {name: Timing(name) for name in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if rotate else names
        for name in order:
            task = as_tasks[name]
            if task.max_rounds is not None and not warmup <= r < warmup + task.max_rounds:
                continue
            if task.setup is not None:
                task.setup()
            start = time.perf_counter()
            task.run()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                timings[name].seconds.append(elapsed)
    return timings


def paired_ratio(task: Timing, base: Timing) -> float:
    """Median over rounds of ``task / base`` timed in the same round (load that drifts between rounds
    cancels); rounds the task sat out are left out."""
    return statistics.median(t / b for t, b in zip(task.seconds, base.seconds))


def machine() -> str:
    """CPU model and core count, for the record."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def load_average() -> str:
    """1, 5 and 15 minute load averages (other jobs on the machine), or "?" where unknown."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def header(title: str, threads: int) -> str:
    """One line naming the run: what, where, torch, threads, when, and the load."""
    import torch

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"{title}: {machine()}, torch {torch.__version__}, {threads} thread(s), started {started}, "
        f"load average {load_average()}"
    )


def ort_options(threads: int) -> Any:
    """onnxruntime ``SessionOptions`` for an interleaved run: ``threads`` intra-op threads, one inter-op,
    every graph optimisation, and **no spinning**: onnxruntime's threads otherwise spin 10-50 ms after
    each run on the cores the next task needs (measured on 2 cores: the PyTorch model timed after it
    1.5-3x slower). Not spinning costs onnxruntime itself about 6 % at 2 threads and nothing at 1
    (ResNet-50, batch 1, timed alone)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
