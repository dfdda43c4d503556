"""Benchmark of the mask engine against torch.nn.utils.prune and torch.ao.pruning, in one run.

``pruning-tools bench`` builds ResNet-50 and a
BERT-base-like Linear stack and times, interleaved round by round (every task once per round,
so background load hits all of them alike), medians with min/max:

1. mask refresh of all conv/linear weights (bank 64 at 93.75 %, unstructured 90 %, 2:4, global
   90 %), each as a ratio to one memory pass ``torch.abs(w, out=buf)`` over the same weights;
2. ``prune()`` on a step without refresh, as a ratio to one ``torch._foreach_mul_`` pass with
   float masks;
3. extra bytes per pruned weight (everything the pruner keeps);
4. the same refreshes with ``torch.nn.utils.prune`` and ``torch.ao.pruning.WeightNormSparsifier``
   (Linear layers only: it reads the last two dims as the matrix) and our speedup over each;
5. a ResNet-50 training step with and without ``prune()``, interleaved A/B.

``--quick`` runs the same code on tiny models (for CI: it checks that everything runs; the
numbers are not meaningful there).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.ao.pruning import WeightNormSparsifier
from torch.nn.utils import prune as torch_prune

from pruning_tools import masks as M
from pruning_tools.benchmarks.harness import Task, Timing, interleaved, paired_ratio
from pruning_tools.benchmarks.models import bert_like, prunable_weights, resnet50
from pruning_tools.pytorch_pruning import Prune

# (label, balance, bank_size, sparsity)
PATTERNS = (
    ("bank-64 93.75%", "fix", 64, 0.9375),
    ("unstructured 90%", "none", 64, 0.9),
    ("2:4", "fix", 4, 0.5),
    ("global 90%", "global", 64, 0.9),
)


@dataclass
class Row:
    """One line of the result table; ``ratio`` is against ``baseline`` (a task of the same table)."""

    model: str
    task: str
    median_ms: float
    min_ms: float
    max_ms: float
    baseline: str = ""
    ratio: float = math.nan


SLOW_ROUNDS = 3  # rounds of the other libraries' tasks (seconds each on the full models)


def _rows(model: str, timings: dict[str, Timing], baselines: dict[str, str]) -> list[Row]:
    rows = []
    for name, t in timings.items():
        base = baselines.get(name, "")
        ratio = paired_ratio(t, timings[base]) if base else math.nan
        rows.append(Row(model, name, 1e3 * t.median, 1e3 * min(t.seconds), 1e3 * max(t.seconds), base, ratio))
    return rows


# ---------------------------------------------------------------- our engine


def our_refresh(
    weights: Sequence[Tensor], masks: Sequence[Tensor | None], balance: str, bank_size: int, sparsity: float
) -> list[Tensor]:
    """Masks of all ``weights`` for one pattern, as ``Prune`` computes them on a refresh step."""
    if balance == "global":
        return M.global_masks(weights, masks, sparsity)
    return [M.compute_mask(w, m, sparsity, balance, bank_size) for w, m in zip(weights, masks)]


def mask_bytes(prune: Prune) -> int:
    """Bytes of every tensor the pruner holds (its masks)."""
    return sum(m.numel() * m.element_size() for m in prune.masks().values())


# ---------------------------------------------------------------- torch.nn.utils.prune / torch.ao


def _torch_prune_tasks(
    model: nn.Module, dense: dict[str, Tensor], sparsity: float
) -> tuple[Callable[[], None], Callable[[], None], Callable[[], None], Callable[[], int]]:
    """(setup, per-tensor l1_unstructured run, global_unstructured run, mask-bytes probe)."""
    modules = {f"{n}.weight": m for n, m in model.named_modules() if f"{n}.weight" in dense}
    pairs = [(m, "weight") for m in modules.values()]

    def reset() -> None:
        for name, m in modules.items():
            if torch_prune.is_pruned(m):
                torch_prune.remove(m, "weight")
            with torch.no_grad():
                m.weight.copy_(dense[name])

    def per_tensor() -> None:
        for m, _ in pairs:
            torch_prune.l1_unstructured(m, "weight", amount=sparsity)

    def global_() -> None:
        torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured, amount=sparsity)

    def extra_bytes() -> int:  # the mask buffer plus the weight recomputed from weight_orig
        return sum(
            m.weight_mask.numel() * m.weight_mask.element_size() + m.weight.numel() * m.weight.element_size()
            for m, _ in pairs
        )

    return reset, per_tensor, global_, extra_bytes


def _weight_norm_task(model: nn.Module, block: tuple[int, int], zeros: int, level: float) -> WeightNormSparsifier:
    """A prepared WeightNormSparsifier over the Linear layers; ``step()`` recomputes the masks."""
    sparsifier = WeightNormSparsifier(sparsity_level=level, sparse_block_shape=block, zeros_per_block=zeros)
    config = [{"tensor_fqn": f"{n}.weight"} for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    sparsifier.prepare(model, config)
    return sparsifier


# ---------------------------------------------------------------- one model


def bench_refresh(model_name: str, model: nn.Module, rounds: int) -> tuple[list[Row], dict]:
    """Refresh, re-apply, memory and library comparisons on one model."""
    params = prunable_weights(model)
    names = list(params)
    dense = {n: p.detach().clone() for n, p in params.items()}
    weights = list(dense.values())
    numel = sum(w.numel() for w in weights)
    bufs = [torch.empty_like(w) for w in weights]
    info: dict = {"weights": numel, "tensors": len(weights)}

    # previous masks: the pattern at half the target, weights zero where pruned (mid-ramp state)
    state = {}
    for label, balance, bank, s in PATTERNS:
        prev = our_refresh(weights, [None] * len(weights), balance, bank, s / 2)
        state[label] = ([w * m for w, m in zip(weights, prev)], prev)

    tasks: dict = {"memory pass (abs out=)": Task(lambda: [torch.abs(w, out=b) for w, b in zip(weights, bufs)])}
    baselines = {}
    results = {}
    for label, balance, bank, s in PATTERNS:
        ws, prev = state[label]

        def run(
            ws: list[Tensor] = ws,
            prev: list[Tensor] = prev,
            balance: str = balance,
            bank: int = bank,
            s: float = s,
            label: str = label,
        ) -> None:
            results[label] = our_refresh(ws, prev, balance, bank, s)

        tasks[f"ours {label}"] = Task(run)
        baselines[f"ours {label}"] = "memory pass (abs out=)"

    ws_none, _ = state["unstructured 90%"]
    reset, per_tensor, global_, torch_extra = _torch_prune_tasks(model, dict(zip(names, ws_none)), 0.9)
    tasks["nn.utils.prune l1_unstructured 90%"] = Task(per_tensor, reset, SLOW_ROUNDS)
    tasks["nn.utils.prune global_unstructured 90%"] = Task(global_, reset, SLOW_ROUNDS)
    for t in ("nn.utils.prune l1_unstructured 90%", "nn.utils.prune global_unstructured 90%"):
        baselines[t] = "memory pass (abs out=)"

    timings = interleaved(tasks, rounds)
    # the same sparsity as torch's (sanity: the unstructured masks agree)
    reset()
    per_tensor()
    modules = dict(model.named_modules())
    torch_masks = [modules[n[: -len(".weight")]].weight_mask.bool() for n in names]
    info["same masks as l1_unstructured up to ties"] = all(
        _same_up_to_ties(ours, theirs, w) for ours, theirs, w in zip(results["unstructured 90%"], torch_masks, ws_none)
    )
    info["torch extra bytes per weight"] = torch_extra() / numel
    reset()
    info["sparsity"] = {label: 1 - sum(int(m.sum()) for m in results[label]) / numel for label, *_ in PATTERNS}
    rows = _rows(model_name, timings, baselines)
    info["speedup over l1_unstructured"] = paired_ratio(
        timings["nn.utils.prune l1_unstructured 90%"], timings["ours unstructured 90%"]
    )
    info["speedup over global_unstructured"] = paired_ratio(
        timings["nn.utils.prune global_unstructured 90%"], timings["ours global 90%"]
    )
    return rows, info


def _same_up_to_ties(ours: Tensor, theirs: Tensor, w: Tensor) -> bool:
    """Same number kept, and where the masks differ all weights have one magnitude (a tie that
    topk breaks its own way; we break it to the lower index)."""
    differ = ours != theirs
    if not differ.any():
        return True
    tied = w.abs()[differ]
    return int(ours.sum()) == int(theirs.sum()) and bool((tied == tied[0]).all())


def bench_weight_norm(model_name: str, model: nn.Module, rounds: int) -> tuple[list[Row], dict]:
    """Our refresh against WeightNormSparsifier.step() on the same Linear weights and patterns."""
    linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    weights = [m.weight.detach().clone() for m in linear.values()]
    bufs = [torch.empty_like(w) for w in weights]
    patterns = {
        "bank-64 93.75%": ((1, 64), 60, 1.0, "fix", 64, 0.9375),
        "unstructured 90%": ((1, 1), 1, 0.9, "none", 64, 0.9),
        "2:4": ((1, 4), 2, 1.0, "fix", 4, 0.5),
    }
    tasks: dict = {"memory pass (abs out=)": Task(lambda: [torch.abs(w, out=b) for w, b in zip(weights, bufs)])}
    baselines, info, sparsifiers = {}, {}, {}
    for label, (block, zeros, level, balance, bank, s) in patterns.items():
        sparsifier = sparsifiers[label] = _weight_norm_task(_copy_linears(linear), block, zeros, level)
        tasks[f"ours {label}"] = Task(partial(our_refresh, weights, [None] * len(weights), balance, bank, s))
        tasks[f"WeightNormSparsifier {label}"] = Task(sparsifier.step, max_rounds=SLOW_ROUNDS)
        baselines[f"ours {label}"] = baselines[f"WeightNormSparsifier {label}"] = "memory pass (abs out=)"
    timings = interleaved(tasks, rounds)
    for label in patterns:
        info[f"speedup over WeightNormSparsifier {label}"] = paired_ratio(
            timings[f"WeightNormSparsifier {label}"], timings[f"ours {label}"]
        )
        info[f"WeightNormSparsifier {label} extra bytes per weight"] = (  # its masks after step()
            _parametrization_bytes(sparsifiers[label].model) / sum(w.numel() for w in weights)
        )
    return _rows(model_name + " (Linear)", timings, baselines), info


def _parametrization_bytes(model: nn.Module) -> int:
    """Bytes of the masks a sparsifier's parametrizations hold."""
    return sum(b.numel() * b.element_size() for name, b in model.named_buffers() if name.endswith(".mask"))


def _copy_linears(linear: dict[str, nn.Linear]) -> nn.Module:
    """A fresh module holding copies of the Linear layers (the sparsifier parametrizes it)."""
    holder = nn.Module()
    for i, m in enumerate(linear.values()):
        copy = nn.Linear(m.in_features, m.out_features, bias=False)
        with torch.no_grad():
            copy.weight.copy_(m.weight)
        holder.add_module(f"l{i}", copy)
    return holder


def bench_apply(model_name: str, model: nn.Module, rounds: int) -> tuple[list[Row], dict]:
    """``prune()`` on a step without refresh against one float ``_foreach_mul_`` pass."""
    params = prunable_weights(model)
    prune = Prune(model, 0, 0, 1, {n: 0.9375 for n in params})  # one-shot at step 1, then re-apply only
    prune.prune()
    masks = prune.masks()
    weights = [p.data for p in params.values()]
    float_masks = [masks[n].to(p.dtype) for n, p in params.items()]
    tasks = {
        "_foreach_mul_ float masks": Task(lambda: torch._foreach_mul_(weights, float_masks)),
        "prune() no refresh": Task(prune.prune),
    }
    timings = interleaved(tasks, rounds)
    numel = sum(w.numel() for w in weights)
    info = {"extra bytes per pruned weight": mask_bytes(prune) / numel, "prune check": prune.check()[1]}
    return _rows(model_name, timings, {"prune() no refresh": "_foreach_mul_ float masks"}), info


def bench_train_step(model: nn.Module, batch: int, size: int, rounds: int) -> tuple[list[Row], dict]:
    """A full SGD training step with and without ``prune()``, interleaved A/B."""
    params = prunable_weights(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    prune = Prune(model, 0, 0, 1, {n: 0.9375 for n in params})
    prune.prune()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def step_and_prune() -> None:
        step()
        prune.prune()

    timings = interleaved(
        {
            "train step": Task(step),
            "train step + prune()": Task(step_and_prune),
            "prune() alone": Task(prune.prune),
        },
        rounds,
    )
    rows = _rows(
        f"ResNet-50 train (batch {batch}, {size}x{size})",
        timings,
        {"train step + prune()": "train step", "prune() alone": "train step"},
    )
    return rows, {"sparsity after training": prune.sparsity()[1]}


# ---------------------------------------------------------------- driver


def log(message: str, err: bool = True) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def run_benchmark(
    quick: bool = False, rounds: int | None = None, train_rounds: int | None = None, threads: int = 1
) -> tuple[list[Row], dict]:
    """Every table of the benchmark. ``quick``: tiny models and few rounds (a smoke run)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message=".*cannot be reached", category=UserWarning)
    rounds = rounds or (2 if quick else 7)
    train_rounds = train_rounds or (2 if quick else 20)
    if quick:
        cnn, bert = resnet50(width=8, num_classes=10, blocks=(1, 1, 1, 1)), bert_like(64, 128, 2)
        batch, size = 2, 32
    else:
        cnn, bert = resnet50(), bert_like()
        batch, size = 8, 112
    rows, info = [], {}
    for name, model in (("ResNet-50", cnn), ("BERT-like", bert)):
        log(f"{name}: refresh", err=True)
        r, i = bench_refresh(name, model, rounds)
        rows += r
        info[name] = i
        log(f"{name}: re-apply", err=True)
        r, i = bench_apply(name, model, rounds * 3)
        rows += r
        info[name].update(i)
    log("BERT-like: WeightNormSparsifier", err=True)
    r, i = bench_weight_norm("BERT-like", bert, rounds)
    rows += r
    info["BERT-like"].update(i)
    log("ResNet-50: training steps", err=True)
    r, i = bench_train_step(cnn, batch, size, train_rounds)
    rows += r
    info["train"] = i
    return rows, info


def print_rows(rows: list[Row], header: str) -> None:
    """The result table (rich; full width when not on a terminal). The extra numbers go to the
    ``--json`` / ``--markdown`` files only."""
    from rich.table import Table

    from pruning_tools.cli._common import console

    table = Table(title=header)
    for col in ("model", "task", "median ms", "min ms", "max ms", "ratio", "to"):
        table.add_column(col, justify="right" if "ms" in col or col == "ratio" else "left")
    for r in rows:
        ratio = "" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        table.add_row(r.model, r.task, f"{r.median_ms:.2f}", f"{r.min_ms:.2f}", f"{r.max_ms:.2f}", ratio, r.baseline)
    console().print(table)


def to_markdown(rows: list[Row], info: dict, header: str) -> str:
    """The result table and the extra numbers as Markdown."""
    lines = [
        f"{header}",
        "",
        "| model | task | median ms | min ms | max ms | ratio | to |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = "" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        lines.append(
            f"| {r.model} | {r.task} | {r.median_ms:.1f} | {r.min_ms:.1f} | {r.max_ms:.1f} | {ratio} | {r.baseline} |"
        )
    lines += ["", "```json", json.dumps(info, indent=1, default=float), "```", ""]
    return "\n".join(lines)
