"""Whole models on the CPU: bank-sparse against dense PyTorch eager and onnxruntime, from one run.

For each model, the same dense weights are pruned one-shot, bank-balanced (bank 64), at 93.75 %
(keep 4) and 90 % (keep 6) and converted by ``pruning_tools.to_bank_sparse(model, prune)`` with its
default rule. Per thread count, every task runs once per round, the order rotating (load from other
processes hits all alike), and the table gives medians and the ratios of medians:

- dense eager: the masked (pruned) model in PyTorch, eval mode (``nn.TransformerEncoder`` takes its
  fused "fast path"), ``torch.no_grad``;
- onnxruntime: the dense ONNX of the same pruned model (``torch.onnx.export``), all graph
  optimisations, ``intra_op_num_threads`` = threads, its threads not spinning (``harness.ort_options``);
- bank-sparse at 93.75 % and at 90 %.

ResNet-50 runs twice at batch 1: images in PyTorch's default (NCHW) memory format, and
channels-last (``resnet1cl``: the dense model and the images converted; its onnxruntime row is the
same NCHW graph). PyTorch's NCHW max-pool took 6 ms of the converted model's 36 ms.

Dense timings are of the 93.75 % model (dense compute does not depend on which weights are zero).
Every converted model is checked against its masked dense model first (max relative error <= 1e-4).

The physical bound of a row: the converted layers need 16x fewer multiply-adds and 12.8x fewer weight
bytes at 93.75 % (4-byte value + 1-byte index per kept weight), 10.7x and 8.5x at 90 %; the parts
left dense (attention products, softmax, norms, the RGB stem) keep their time. Bound = 1 / ((1 - f) + f
/ r), with f the converted layers' share of the dense model's multiply-adds and r the smaller of
the two reductions.

    python -m pruning_tools.benchmarks.inference  # the tables of docs/results/inference.md (about 15 minutes)
    python -m pruning_tools.benchmarks.inference --quick  # tiny models, seconds (what the tests run)
    pruning-tools bench --inference --json out.json --markdown out.md
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pruning_tools import pytorch_pruning, to_bank_sparse
from pruning_tools.atomic import atomic_open
from pruning_tools.benchmarks.harness import Task, header, interleaved, load_average, ort_options
from pruning_tools.benchmarks.models import GPTDecoder, bert_encoder, generate, gpt_decoder, resnet50

if TYPE_CHECKING:
    import onnxruntime as ort

SPARSITIES = (0.9375, 0.9)
REDUCTION = {0.9375: 12.8, 0.9: 64 * 4 / (6 * 5)}  # the smaller of MAC and weight-byte reductions
GOALS: dict[str, dict[int, tuple[float | None, float | None]]] = {  # model -> threads -> (vs eager, vs ORT), 93.75 %
    "BERT-base encoder": {1: (4.0, 2.5), 2: (3.5, None)},
    "GPT decoder": {1: (5.0, None), 2: (4.0, None)},
    "ResNet-50 b1": {1: (3.0, 2.0), 2: (2.5, None)},
    "ResNet-50 b1 CL": {1: (3.0, 2.0), 2: (2.5, None)},  # the same goal, images in channels-last format
    "ResNet-50 b32": {1: (2.0, None), 2: (2.0, None)},
    "Linear 768x3072": {1: (3.0, None), 2: (3.0, None)},
    "Linear 3072x768": {1: (3.0, None), 2: (3.0, None)},
}


@dataclass
class Case:
    """One model with its runnable tasks (each call is one timed run)."""

    name: str
    shape: str
    dense: Callable[[], object]
    ort: Callable[[int], Callable[[], object]] | None  # threads -> run
    sparse: dict[float, Callable[[], object]]
    converted: dict[float, str]  # "k of n layers"
    error: dict[float, float]  # max relative error against the masked dense model
    share: float  # converted layers' share of the dense multiply-adds
    slow: bool = False  # seconds per run: no warm-up round


@dataclass
class Row:
    model: str
    shape: str
    threads: int
    sparsity: float
    dense_ms: float
    ort_ms: float | None
    sparse_ms: float
    vs_eager: float
    vs_ort: float | None
    bound: float
    goal_eager: float | None
    goal_ort: float | None
    converted: str
    error: float
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- building the cases


def prune_dict(model: nn.Module, sparsity: float, min_row: int = 64) -> dict[str, float]:
    """Every 2-D+ weight of a Linear / conv / attention whose rows hold at least one bank."""
    out = {}
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not name.endswith(("wte.weight", "wpe.weight")) and p.shape[1] >= min_row:
            out[name] = sparsity
    return out


def pruned(model: nn.Module, sparsity: float) -> pytorch_pruning.Prune:
    prune = pytorch_pruning.Prune(model, 0, 0, 1, prune_dict(model, sparsity), bank_size=64)
    prune.prune()
    return prune


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def macs_of(model: nn.Module, run: Callable[[], object]) -> dict[int, int]:
    """``id(module) -> multiply-adds`` of every Linear / conv / attention projection in one run."""
    counts: dict[int, int] = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: Any) -> None:  # output: a tensor or a tuple
        if isinstance(module, nn.MultiheadAttention):
            x = args[0]
            counts[id(module)] = counts.get(id(module), 0) + 4 * x.numel() * module.embed_dim
        elif isinstance(module, nn.Linear):
            counts[id(module)] = counts.get(id(module), 0) + output.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            k = module.in_channels * math.prod(module.kernel_size) // module.groups
            counts[id(module)] = counts.get(id(module), 0) + output.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        run()
    for h in handles:
        h.remove()
    return counts


def share_of(model: nn.Module, run: Callable[[], object], extra_macs: int) -> float:
    """The share of the multiply-adds in pruned layers (``extra_macs``: attention products, not layers)."""
    counts = macs_of(model, run)
    pruned_ids = set()
    names = set(prune_dict(model, 0.5))
    for name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if any((f"{name}.{n}" if name else n) in names for n in own):
            pruned_ids.add(id(module))
    inside = sum(c for i, c in counts.items() if i in pruned_ids)
    return inside / (sum(counts.values()) + extra_macs)


def onnx_session(model: nn.Module, args: tuple, path: Path, names: dict) -> Callable[[int], ort.InferenceSession]:
    """Export ``model`` to ONNX and return ``threads -> InferenceSession``."""
    import onnxruntime as ort

    from pruning_tools.onnx import export_onnx

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused path is not exportable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, args, str(path), **names)
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)

    def session(threads: int) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), ort_options(threads), providers=["CPUExecutionProvider"])

    return session


RULE: dict = {}  # to_bank_sparse's arguments: the default rule (--quick: every bank-balanced layer)


def feed_forward_case(
    name: str, shape: str, build: Callable[[], nn.Module], x: torch.Tensor, tmp: Path, extra_macs: int = 0
) -> Case:
    """A model called once on ``x`` (ResNet, BERT, a Linear)."""
    torch.manual_seed(0)
    dense = build().eval()
    sparse, converted, error = {}, {}, {}
    for sparsity in sorted(SPARSITIES):  # 90 % on a copy, then 93.75 % on the dense model itself
        model = copy.deepcopy(dense) if sparsity != max(SPARSITIES) else dense
        prune = pruned(model, sparsity)
        with torch.no_grad():
            expected = model(x)
        fast = copy.deepcopy(model)
        report = to_bank_sparse(fast, prune.state_dict(), **RULE)  # a copy: the pruner's state, not the pruner
        fast.eval()
        with torch.no_grad():
            error[sparsity] = relative_error(fast(x), expected)
        sparse[sparsity] = _call(fast, x)
        converted[sparsity] = f"{len(report.converted)} of {len(report.layers)}"
        del model
    share = share_of(dense, _call(dense, x), extra_macs)
    session = onnx_session(dense, (x,), tmp / f"{name}.onnx", {"input_names": ["x"], "output_names": ["y"]})
    feed = {"x": x.contiguous().numpy()}  # onnxruntime takes C-contiguous arrays (channels-last images copied once)

    def ort_run(threads: int) -> Callable[[], object]:
        s = session(threads)
        return lambda: s.run(None, feed)

    return Case(name, shape, _call(dense, x), ort_run, sparse, converted, error, share)


def _call(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def gpt_case(tmp: Path, quick: bool) -> Case:
    """GPT decoder: 128 tokens generated one at a time with a KV cache (quick: a tiny model, 4 tokens)."""
    torch.manual_seed(0)
    dims = dict(vocab=1000, d=128, layers=2, heads=4) if quick else {}
    tokens = 4 if quick else 128
    dense = gpt_decoder(**dims).eval()
    first = torch.zeros(1, 1, dtype=torch.long)
    sparse, converted, error = {}, {}, {}
    check_k, check_v = dense.empty_cache()
    for sparsity in sorted(SPARSITIES):
        model = copy.deepcopy(dense) if sparsity != max(SPARSITIES) else dense
        prune = pruned(model, sparsity)
        with torch.no_grad():
            expected = model(first, check_k, check_v)[0]
        fast = copy.deepcopy(model)
        report = to_bank_sparse(fast, prune.state_dict(), **RULE)  # a copy: the pruner's state, not the pruner
        fast.eval()
        with torch.no_grad():
            error[sparsity] = relative_error(fast(first, check_k, check_v)[0], expected)
        sparse[sparsity] = _generate(fast, first, tokens)
        converted[sparsity] = f"{len(report.converted)} of {len(report.layers)}"
        del model
    past = 64  # the share: at a mid-length cache
    pk, pv = (torch.zeros(dense.layers, 1, dense.heads, past, dense.d // dense.heads) for _ in range(2))
    attention = 2 * past * dense.d * dense.layers
    share = share_of(dense, lambda: dense(first, pk, pv), attention)
    names = {
        "input_names": ["tokens", "past_k", "past_v"],
        "output_names": ["logits", "keys", "values"],
        "dynamic_axes": {"past_k": {3: "past"}, "past_v": {3: "past"}, "keys": {3: "total"}, "values": {3: "total"}},
    }
    session = onnx_session(dense, (first, pk, pv), tmp / "gpt.onnx", names)

    def ort_run(threads: int) -> Callable[[], object]:
        s = session(threads)

        def step(
            token: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, keys, values = s.run(
                None, {"tokens": token.numpy(), "past_k": past_k.numpy(), "past_v": past_v.numpy()}
            )
            return torch.from_numpy(logits), torch.from_numpy(keys), torch.from_numpy(values)

        return lambda: generate(step, first, *dense.empty_cache(), tokens)

    shape = f"batch 1, {tokens} tokens generated"
    return Case("GPT decoder", shape, _generate(dense, first, tokens), ort_run, sparse, converted, error, share, True)


def _generate(model: GPTDecoder, first: torch.Tensor, tokens: int) -> Callable[[], object]:
    return lambda: generate(model, first, *model.empty_cache(), tokens)


def resnet(width: int, blocks: Sequence[int], classes: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = resnet50(width=width, num_classes=classes, blocks=blocks)
        for m in model.modules():  # trained-looking norms (the zoo zero-initialises the last of each block)
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None  # the zoo tracks statistics
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.normal_(m.bias, 0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        return model

    return build


def linear(out_f: int, in_f: int) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(nn.Linear(in_f, out_f))


def build_cases(quick: bool, models: set[str], tmp: Path) -> list[Case]:
    cases = []
    if "linear" in models:
        for out_f, in_f in ((768, 3072), (3072, 768)):
            size = (out_f // 4, in_f // 4) if quick else (out_f, in_f)
            cases.append(
                feed_forward_case(f"Linear {out_f}x{in_f}", "batch 1", linear(*size), torch.randn(1, size[1]), tmp)
            )
    if "bert" in models:
        hidden, heads, ffn, layers, tokens = (128, 4, 256, 2, 16) if quick else (768, 12, 3072, 12, 128)
        attention = 2 * tokens * tokens * hidden * layers
        cases.append(
            feed_forward_case(
                "BERT-base encoder",
                f"batch 1, {tokens} tokens",
                lambda: bert_encoder(hidden, heads, ffn, layers),
                torch.randn(1, tokens, hidden),
                tmp,
                attention,
            )  # fmt: skip
        )
    if "gpt" in models:
        cases.append(gpt_case(tmp, quick))
    for batch, key in ((1, "resnet1"), (32, "resnet32"), (1, "resnet1cl")):
        if key in models:
            width, blocks, side = (8, (1, 1, 1, 1), 32) if quick else (64, (3, 4, 6, 3), 224)
            build = resnet(width, blocks, 10 if quick else 1000)
            x = torch.randn(batch if not quick else min(batch, 2), 3, side, side)
            name, shape = f"ResNet-50 b{batch}", f"batch {x.shape[0]}, {side}²"
            if key.endswith("cl"):  # dense and converted models fed channels-last images
                x, name, shape = x.contiguous(memory_format=torch.channels_last), name + " CL", shape + " channels-last"
                build = _channels_last(build)
            cases.append(feed_forward_case(name, shape, build, x, tmp))
    return cases


def _channels_last(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``build`` with the model's 4-d tensors in channels-last memory format."""
    return lambda: build().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# ---------------------------------------------------------------- per-call overhead


def overhead(rounds: int, calls: int = 2000) -> dict[str, float]:
    """Microseconds per call of a product too small to take time (an 8 x 64 weight, batch 1): what a
    call costs besides its arithmetic. Dense ``nn.Linear`` for reference; ours through the module (eager:
    the kernel called directly), its ``forward`` alone (without ``nn.Module.__call__``), and the
    ``torch.ops`` operator (what compiled, traced and exported models call)."""
    from pruning_tools.inference import BankSparseLinear
    from pruning_tools.inference import ops as bank_ops
    from pruning_tools.masks import bank_mask

    torch.manual_seed(0)
    dense = nn.Linear(64, 8)
    with torch.no_grad():
        dense.weight.mul_(bank_mask(dense.weight, None, 0.9375))
    sparse = BankSparseLinear.from_linear(dense)
    x = torch.randn(1, 64)
    b = sparse._buffers
    parts = (b["values"], b["indices"], b["tail_values"], b["tail_indices"], b["bias"], 64)

    def repeat(f: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                f()

        return run

    with torch.no_grad():
        tasks = {
            "nn.Linear (dense)": repeat(lambda: dense(x)),
            "BankSparseLinear": repeat(lambda: sparse(x)),
            "BankSparseLinear.forward": repeat(lambda: sparse.forward(x)),
            "torch.ops.pruning_tools.bank_linear": repeat(lambda: bank_ops.bank_linear(x, *parts)),
        }
        timings = interleaved(tasks, rounds, warmup=1, rotate=True)
    return {name: t.median / calls * 1e6 for name, t in timings.items()}


# ---------------------------------------------------------------- running


def run_cases(cases: list[Case], threads: int, rounds: int) -> tuple[list[Row], dict]:
    """One interleaved run per case at ``threads``: dense, onnxruntime, sparse at each sparsity."""
    torch.set_num_threads(threads)
    rows, loads = [], {"start": load_average()}
    for case in cases:
        tasks: dict[str, Task] = {"dense": Task(case.dense)}
        if case.ort is not None:
            tasks["ort"] = Task(case.ort(threads))
        for sparsity, run in case.sparse.items():
            tasks[f"sparse {sparsity}"] = Task(run)
        warmup = 0 if case.slow else 1
        if case.slow:  # one untimed call each (kernels built, sessions warm)
            for task in tasks.values():
                task.run()
        timings = interleaved(tasks, rounds, warmup=warmup, rotate=True)
        dense = timings["dense"].median
        ort = timings["ort"].median if "ort" in timings else None
        for sparsity in SPARSITIES:
            t = timings[f"sparse {sparsity}"].median
            goal = GOALS.get(case.name, {}).get(threads, (None, None)) if sparsity == 0.9375 else (None, None)
            r = REDUCTION[sparsity]
            rows.append(
                Row(
                    case.name,
                    case.shape,
                    threads,
                    sparsity,
                    dense * 1e3,
                    None if ort is None else ort * 1e3,
                    t * 1e3,
                    dense / t,
                    None if ort is None else ort / t,
                    1 / ((1 - case.share) + case.share / r),
                    goal[0],
                    goal[1],
                    case.converted[sparsity],
                    case.error[sparsity],
                )  # fmt: skip
            )
    loads["end"] = load_average()
    return rows, loads


def run_benchmark(quick: bool, threads: tuple[int, ...], models: set[str], rounds: int | None) -> dict:
    """Every case at every thread count; the result as plain data (``rows``, ``runs``)."""
    rounds = rounds or (2 if quick else 5)
    # --quick checks that every converted model computes the masked one: its tiny layers convert whatever
    # this machine's calibration says of them
    RULE.clear()
    RULE.update(dict(min_speedup=1e-9, min_weights=0) if quick else {})
    result: dict = {"runs": [], "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cases = build_cases(quick, models, Path(tmp))
        result["build_seconds"] = time.perf_counter() - started
        torch.set_num_threads(1)
        result["overhead_us"] = overhead(rounds)
        for t in threads:
            started = time.perf_counter()
            rows, loads = run_cases(cases, t, rounds)
            result["runs"].append(
                {"threads": t, "rounds": rounds, "load average": loads, "seconds": time.perf_counter() - started}
            )
            result["rows"] += [asdict(r) for r in rows]
    return result


def met(value: float | None, goal: float | None) -> str:
    if goal is None or value is None:
        return ""
    return "met" if value >= goal else "**missed**"


def to_markdown(result: dict, title: str) -> str:
    lines = [title, ""]
    calls = ", ".join(f"{name} {us:.1f} µs" for name, us in result["overhead_us"].items())
    lines += [f"- per call of a trivial product (8 x 64, batch 1; 1 thread): {calls}"]
    for run in result["runs"]:
        load = run["load average"]
        lines.append(
            f"- {run['threads']} thread(s): {run['rounds']} rounds, load average {load['start']} at the start, "
            f"{load['end']} at the end, {run['seconds']:.0f} s"
        )
    lines += [
        "",
        "| model | shape | threads | sparsity | dense ms | onnxruntime ms | bank-sparse ms | vs eager | goal | "
        "vs onnxruntime | goal | bound | converted | max rel. error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|---:|",
    ]
    for r in result["rows"]:
        ort = "" if r["ort_ms"] is None else f"{r['ort_ms']:.2f}"
        vs_ort = "" if r["vs_ort"] is None else f"{r['vs_ort']:.2f}x"
        goal_e = "" if r["goal_eager"] is None else f"≥ {r['goal_eager']:g}x {met(r['vs_eager'], r['goal_eager'])}"
        goal_o = "" if r["goal_ort"] is None else f"≥ {r['goal_ort']:g}x {met(r['vs_ort'], r['goal_ort'])}"
        lines.append(
            f"| {r['model']} | {r['shape']} | {r['threads']} | {r['sparsity']:.2%} | {r['dense_ms']:.2f} | {ort} | "
            f"{r['sparse_ms']:.2f} | {r['vs_eager']:.2f}x | {goal_e} | {vs_ort} | {goal_o} | {r['bound']:.1f}x | "
            f"{r['converted']} | {r['error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def print_result(result: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in (
        "model",
        "threads",
        "sparsity",
        "dense ms",
        "ORT ms",
        "sparse ms",
        "vs eager",
        "vs ORT",
        "bound",
        "converted",
    ):
        table.add_column(col, justify="left" if col in ("model", "converted") else "right")
    for r in result["rows"]:
        table.add_row(
            r["model"], str(r["threads"]), f"{r['sparsity']:.2%}", f"{r['dense_ms']:.2f}",
            "" if r["ort_ms"] is None else f"{r['ort_ms']:.2f}", f"{r['sparse_ms']:.2f}",
            f"{r['vs_eager']:.2f}x {met(r['vs_eager'], r['goal_eager'])}",
            "" if r["vs_ort"] is None else f"{r['vs_ort']:.2f}x {met(r['vs_ort'], r['goal_ort'])}",
            f"{r['bound']:.1f}x", r["converted"],
        )  # fmt: skip
    console = Console(width=160)
    console.print(table)
    for run in result["runs"]:
        console.print(f"{run['threads']} thread(s): load average {run['load average']}, {run['seconds']:.0f} s")
    console.print(
        "per call (8 x 64, batch 1): " + ", ".join(f"{k} {v:.1f} µs" for k, v in result["overhead_us"].items())
    )


MODELS = ("linear", "bert", "gpt", "resnet1", "resnet32", "resnet1cl")  # resnet1cl: channels-last images


def isa_line() -> str:
    """The kernel's instruction-set level and what the CPU offers, for the table's title."""
    from pruning_tools import _native

    flags = sorted(_native.isa.cpu_flags() & {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "asimd"})
    return (
        f"CPU {_native.isa.cpu_model()} (flags: {' '.join(flags) or 'none of avx2/avx512/asimd'}); "
        f"kernel ISA {_native.isa.chosen()} (this CPU runs {', '.join(_native.isa.supported())})"
    )


def main(argv: list[str] | None = None) -> None:
    import click

    @click.command()
    @click.option("--quick", is_flag=True, help="Tiny models, 2 rounds: a smoke run (seconds).")
    @click.option("--threads", "threads", multiple=True, type=click.IntRange(1), default=(1, 2), show_default=True)
    @click.option("--model", "models", multiple=True, type=click.Choice(MODELS), default=MODELS, show_default=True)
    @click.option("--rounds", type=click.IntRange(1), default=None, help="Interleaved rounds (default 5; quick 2).")
    @click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
    @click.option("--markdown", "md_path", type=click.Path(dir_okay=False), default=None)
    def cli(
        quick: bool,
        threads: tuple[int, ...],
        models: tuple[str, ...],
        rounds: int | None,
        json_path: str | None,
        md_path: str | None,
    ) -> None:
        """Whole models: bank-sparse vs dense eager vs onnxruntime, at 93.75 % and 90 %."""
        run(quick, threads, models, rounds, json_path, md_path)

    cli.main(args=argv, standalone_mode=True)


def run(
    quick: bool,
    threads: Sequence[int],
    models: Iterable[str],
    rounds: int | None,
    json_path: str | None,
    md_path: str | None,
) -> dict:
    """What ``pruning-tools bench --inference`` runs: the benchmark, its table, the files."""
    previous = torch.get_num_threads()
    title = header(f"benchmarks/inference.py{' --quick' if quick else ''}", max(threads))
    title += f"; threads {', '.join(map(str, threads))}; bank 64; fp32; {isa_line()}"
    try:
        result = run_benchmark(quick, tuple(threads), set(models), rounds)
    finally:
        torch.set_num_threads(previous)
    result["header"] = title
    print_result(result, title)
    outputs = ((json_path, lambda: json.dumps(result, indent=1)), (md_path, lambda: to_markdown(result, title)))
    for path, text in outputs:
        if path:
            with atomic_open(path, "w") as f:
                f.write(text())
            print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
