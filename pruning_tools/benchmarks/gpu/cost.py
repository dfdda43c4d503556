"""What pruning costs on the device, as ratios of tasks timed in one interleaved run.

Timed with ``benchmarks.harness`` (every task once per round, medians of paired ratios); on CUDA a
task ends with ``torch.cuda.synchronize()`` so its time is the device's work, not the launch. Small
tasks repeat ``repeat`` times inside one timed run so that the synchronisation does not dominate.

1. a refresh of every ResNet-50 / BERT-base weight (``benchmarks.masks.PATTERNS``) ÷ one memory pass
   ``torch.abs(w, out=buf)`` over the same weights (``benchmarks.masks.bench_refresh``'s reference);
2. ``prune()`` on a step without refresh ÷ one ``torch._foreach_mul_`` pass with float masks, for
   ``prune_device="default"`` and ``"cpu"``;
3. a ResNet-50 training step (batch 64, bf16 autocast, SGD with momentum) with ``prune()`` ÷ without.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn

from pruning_tools.benchmarks.gpu.correctness import count_syncs
from pruning_tools.benchmarks.gpu.report import Row, goal_row, info_row
from pruning_tools.benchmarks.harness import Task, Timing, interleaved, paired_ratio
from pruning_tools.benchmarks.masks import PATTERNS, our_refresh
from pruning_tools.benchmarks.models import bert_like, prunable_weights, resnet50
from pruning_tools.pytorch_pruning import Prune

TRAIN_GOAL = 1.02  # the goal for a training step with prune() ÷ without


def synchronize(device: torch.device) -> None:
    """Wait for ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_task(fn: Callable[[], object], device: torch.device, repeat: int = 1, max_rounds: int | None = None) -> Task:
    """A harness task timing ``repeat`` calls of ``fn`` and the device's work for them."""

    def run() -> None:
        for _ in range(repeat):
            fn()
        synchronize(device)

    return Task(run, setup=lambda: synchronize(device), max_rounds=max_rounds)


def build(model_name: str, device: torch.device, quick: bool) -> nn.Module:
    """ResNet-50 or the BERT-base Linear stack, initialised on ``device`` (``quick``: tiny ones)."""
    with torch.device(device):
        if model_name == "ResNet-50":
            return resnet50(width=8, num_classes=10, blocks=(1, 1, 1, 1)) if quick else resnet50()
        return bert_like(64, 128, 2) if quick else bert_like()


def _ms(t: Timing) -> float:
    return 1e3 * t.median


def refresh_rows(model_name: str, device: torch.device, rounds: int, quick: bool = False) -> list[Row]:
    """Each pattern's refresh of every weight (mid-ramp: from the masks at half the target) ÷ one
    memory pass over them."""
    weights = [p.detach() for p in prunable_weights(build(model_name, device, quick)).values()]
    numel = sum(w.numel() for w in weights)
    bufs = [torch.empty_like(w) for w in weights]
    tasks = {"memory pass": device_task(lambda: [torch.abs(w, out=b) for w, b in zip(weights, bufs)], device, 10)}
    for label, balance, bank, s in PATTERNS:
        prev = our_refresh(weights, [None] * len(weights), balance, bank, s / 2)
        ws = [w * m for w, m in zip(weights, prev)]
        tasks[label] = device_task(partial(our_refresh, ws, prev, balance, bank, s), device)
    timings = interleaved(tasks, rounds)
    memory = timings["memory pass"]
    memory_s = memory.median / 10
    rows = [
        info_row(
            "cost",
            f"{model_name}: one memory pass over {numel / 1e6:.1f} M weights ({len(weights)} tensors)",
            f"{1e3 * memory_s:.3f} ms, {2 * 4 * numel / memory_s / 1e9:.0f} GB/s",
            ms=1e3 * memory_s,
        )
    ]
    for label, *_ in PATTERNS:
        ratio = paired_ratio(timings[label], memory) * 10  # the memory task ran 10 passes
        rows.append(
            info_row(
                "cost",
                f"{model_name}: refresh {label} ÷ one memory pass",
                f"{ratio:.1f}x ({_ms(timings[label]):.2f} ms)",
                ratio=ratio,
                ms=_ms(timings[label]),
            )
        )
    return rows


def apply_rows(model_name: str, device: torch.device, rounds: int, quick: bool = False) -> list[Row]:
    """``prune()`` on steps without refresh (``prune_device`` "default" and "cpu") ÷ a float-mask
    ``_foreach_mul_`` over the same weights."""
    model = build(model_name, device, quick)
    params = prunable_weights(model)
    prunes = {pd: Prune(model, 0, 0, 1, {n: 0.9375 for n in params}, prune_device=pd) for pd in ("default", "cpu")}
    for prune in prunes.values():
        prune.prune()  # the one-shot refresh; every later call only re-applies
    masks = prunes["default"].masks()
    weights = [p.data for p in params.values()]
    float_masks = [masks[n].to(p.dtype) for n, p in params.items()]
    repeat = 10
    tasks = {"_foreach_mul_": device_task(lambda: torch._foreach_mul_(weights, float_masks), device, repeat)}
    for pd, prune in prunes.items():
        tasks[pd] = device_task(prune.prune, device, repeat)
    timings = interleaved(tasks, rounds)
    rows = []
    for pd in prunes:
        ratio = paired_ratio(timings[pd], timings["_foreach_mul_"])
        rows.append(
            info_row(
                "cost",
                f"{model_name}: prune() without refresh, prune_device={pd!r} ÷ _foreach_mul_",
                f"{ratio:.2f}x ({_ms(timings[pd]) / repeat:.3f} ms)",
                ratio=ratio,
                ms=_ms(timings[pd]) / repeat,
                foreach_ms=_ms(timings["_foreach_mul_"]) / repeat,
            )
        )
    if device.type == "cuda":
        for pd, prune in prunes.items():
            syncs = count_syncs(prune.prune, device)
            rows.append(
                Row(
                    "prune_device",
                    f"{model_name}: host syncs in one prune() without refresh, prune_device={pd!r}",
                    f"{syncs.total} (debug mode {syncs.debug_mode}, profiler {syncs.profiler}) {syncs.note}".strip(),
                    ok=syncs.total == 0,
                )
            )
    return rows


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def train_rows(device: torch.device, rounds: int, quick: bool = False, batch: int = 64, size: int = 224) -> list[Row]:
    """A ResNet-50 training step (bf16 autocast, SGD momentum + weight decay) with ``prune()`` ÷ without;
    ``prune()`` alone in the same rounds."""
    if quick:
        batch, size = 2, 32
    model = build("ResNet-50", device, quick)
    params = prunable_weights(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    prune = Prune(model, 0, 0, 1, {n: 0.9375 for n in params})
    prune.prune()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def step_and_prune() -> None:
        step()
        prune.prune()

    with _cudnn_benchmark(device):
        tasks = {
            "step": device_task(step, device),
            "step + prune()": device_task(step_and_prune, device),
            "prune()": device_task(prune.prune, device),
        }
        timings = interleaved(tasks, rounds, warmup=2, rotate=True)
    ratio = paired_ratio(timings["step + prune()"], timings["step"])
    label = f"ResNet-50 train step (batch {batch}, {size}x{size}, bf16 autocast)"
    return [
        goal_row(
            "cost",
            f"{label}: with prune() ÷ without",
            ratio,
            TRAIN_GOAL,
            step_ms=_ms(timings["step"]),
            with_prune_ms=_ms(timings["step + prune()"]),
            prune_ms=_ms(timings["prune()"]),
            rounds=rounds,
            still_sparse=prune.check()[1],
        ),
        info_row(
            "cost",
            f"{label}: prune() alone ÷ step",
            f"{paired_ratio(timings['prune()'], timings['step']):.4f} ({_ms(timings['prune()']):.3f} ms "
            f"of {_ms(timings['step']):.1f} ms)",
        ),
    ]


def cost_rows(device: torch.device, quick: bool = False) -> list[Row]:
    """Every cost ratio (``quick``: tiny models and two rounds, to check that the code runs)."""
    rounds, train_rounds = (2, 2) if quick else (7, 20)
    rows = []
    for model_name in ("ResNet-50", "BERT-base"):
        rows += refresh_rows(model_name, device, rounds, quick)
        rows += apply_rows(model_name, device, rounds * 3, quick)
    rows += train_rows(device, train_rounds, quick)
    return rows
