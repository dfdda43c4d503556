"""Re-create the tables of docs/results/language-model.md: every run, one at a time, into docs/results/lm_*.json.

    python scripts/lm_results.py                 # everything missing (about 2 h on 2 shared cores)
    python scripts/lm_results.py --force         # everything again
    python scripts/lm_results.py --only oneshot  # one stage: dense, oneshot, gradual, finetune
    python scripts/lm_results.py --table         # print the Markdown table from the JSON files

Stages: the dense model (saved to runs/lm/dense.safetensors, reused by the others), one-shot pruning
(magnitude / Wanda / SparseGPT x 5 patterns), gradual pruning during continued training (bank-64 and
unstructured x 75 / 90 / 93.75 % x magnitude / movement, plus dense continued training as the
baseline), one-shot SparseGPT then a short fine-tune with restore_sparsity, SparseGPT's time with 1
and 2 threads. Every job (the dense run, the one-shot sweep, each gradual run, the fine-tunes) holds
the machine-wide lock /tmp/pt-heavy.lock while it computes (flock(2), as the `flock` command) and
releases it between jobs; each result records the load average. One seed per cell.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from pruning_tools.demo.lm import experiments as X  # noqa: E402
from pruning_tools.demo.lm.data import load_corpus  # noqa: E402
from pruning_tools.demo.lm.model import GPTConfig  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt")
GRADUAL = [
    (balance, s, c) for s in (0.75, 0.9, 0.9375) for balance in ("fix", "none") for c in ("magnitude", "movement")
]
FINETUNED = ("2:4", "bank-64 75%", ("fix", 64, 0.9))
LOCK = "/tmp/pt-heavy.lock"


@contextlib.contextmanager
def heavy_lock():
    """Hold the machine-wide lock for one heavy run."""
    with open(LOCK, "a") as handle:
        waited = time.perf_counter()
        fcntl.flock(handle, fcntl.LOCK_EX)
        print(f"  (lock after {time.perf_counter() - waited:.0f} s)", flush=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def slug(value) -> str:
    if isinstance(value, tuple):
        balance, bank, sparsity = value
        return f"{'bank' + str(bank) if balance == 'fix' else 'unstructured'}_{sparsity * 100:g}"
    return value.replace(":", "of").replace(" ", "_").replace("%", "").replace("-", "")


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    test, name = result["test"]["perplexity"], path.relative_to(ROOT)
    print(f"  -> {name}: test ppl {test:.4f}  sparsity {result['sparsity']:.4f}  {result['seconds']:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", choices=["dense", "oneshot", "gradual", "finetune", "timing", "norms"], action="append"
    )
    parser.add_argument("--force", action="store_true", help="rerun runs whose JSON exists")
    parser.add_argument("--table", action="store_true", help="only print the table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "python-docs")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "lm")
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
        return
    torch.set_num_threads(args.threads)
    stages = args.only or ["dense", "oneshot", "gradual", "finetune", "timing", "norms"]
    corpus = load_corpus(args.data)
    config = GPTConfig()
    dense_path = args.runs / "dense.safetensors"
    out = args.results

    def todo(name: str) -> Path | None:
        path = out / f"lm_{name}.json"
        return path if args.force or not path.exists() else None

    def log(entry: dict) -> None:
        print(f"    step {entry['step']:>4}  loss {entry['loss']:.4f}  {entry['seconds']:.0f} s", flush=True)

    if "dense" in stages and (todo("dense") or not dense_path.exists()):
        print("dense", flush=True)
        with heavy_lock():
            result, model = X.run_dense(corpus, config, on_log=log)
        args.runs.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dense_path))
        write(out / "lm_dense.json", result)
    dense = load_file(str(dense_path))
    if "oneshot" in stages:
        cells = [(m, p, todo(f"oneshot_{m}_{slug(p)}")) for p in X.PATTERNS for m in METHODS]
        cells = [cell for cell in cells if cell[2]]
        if cells:
            with heavy_lock():  # the 15 cells are one job of a few minutes
                for method, pattern, path in cells:
                    print(f"one-shot {method} {pattern}", flush=True)
                    write(path, X.run_oneshot(corpus, config, dense, method, pattern)[0])
    if "gradual" in stages:
        path = todo("gradual_dense_continued")
        if path:
            print("dense continued", flush=True)
            with heavy_lock():
                write(path, X.run_gradual(corpus, config, dense, "none", 0.0, on_log=log)[0])
        for balance, sparsity, criterion in GRADUAL:
            path = todo(f"gradual_{slug((balance, 64, sparsity))}_{criterion}")
            if path:
                print(f"gradual {balance} {sparsity} {criterion}", flush=True)
                with heavy_lock():
                    write(path, X.run_gradual(corpus, config, dense, balance, sparsity, criterion, on_log=log)[0])
    if "finetune" in stages:
        cells = [(p, todo(f"oneshot_finetune_sparsegpt_{slug(p)}")) for p in FINETUNED]
        cells = [cell for cell in cells if cell[1]]
        if cells:
            with heavy_lock():
                for pattern, path in cells:
                    print(f"one-shot SparseGPT {pattern} + fine-tune", flush=True)
                    write(path, X.run_oneshot_finetune(corpus, config, dense, pattern, on_log=log)[0])
    path = todo("sparsegpt_timing") if "timing" in stages else None
    if path:
        print("SparseGPT timing, 1 and 2 threads", flush=True)
        runs = {}
        with heavy_lock():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                result = X.run_oneshot(corpus, config, dense, "sparsegpt", "2:4")[0]
                runs[threads] = {"load": result["load"], **result["oneshot"], "test": result["test"]}
                runs[threads].pop("layers")
        torch.set_num_threads(args.threads)
        path.write_text(
            json.dumps({"pattern": "2:4", "calibration_sequences": X.CALIBRATION, "threads": runs}, indent=1) + "\n"
        )
        print(
            f"  -> {path.relative_to(ROOT)}: "
            + ", ".join(f"{t} thread(s) {r['seconds']:.1f} s" for t, r in runs.items())
        )
    path = todo("feature_norms") if "norms" in stages else None
    if path:
        with heavy_lock():
            spread = X.feature_norm_spread(corpus, config, dense)
        path.write_text(json.dumps(spread, indent=1) + "\n")
        worst = max(v["max_over_median"] for v in spread.values())
        print(f"  -> {path.relative_to(ROOT)}: input feature norms, max / median up to {worst:.1f}")
    print(table(out))


def table(results: Path) -> str:
    """The tables of docs/results/language-model.md (Markdown) from the JSON files present."""

    def read(name: str) -> dict | None:
        path = results / f"lm_{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def ppl(result: dict | None) -> str:
        return f"{result['test']['perplexity']:.3f}" if result else "—"

    dense = read("dense")
    lines = [f"Dense: test perplexity {ppl(dense)} per byte.", "", "| one-shot | " + " | ".join(X.PATTERNS) + " |"]
    lines.append("|---|" + "---:|" * len(X.PATTERNS))
    for method in METHODS:
        cells = [ppl(read(f"oneshot_{method}_{slug(p)}")) for p in X.PATTERNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "| gradual (continued training) | 75 % | 90 % | 93.75 % |", "|---|---:|---:|---:|"]
    lines.append(f"| dense, continued the same steps | {ppl(read('gradual_dense_continued'))} | | |")
    for balance in ("fix", "none"):
        for criterion in ("magnitude", "movement"):
            label = f"{'bank-64' if balance == 'fix' else 'unstructured'}, {criterion}"
            cells = [ppl(read(f"gradual_{slug((balance, 64, s))}_{criterion}")) for s in (0.75, 0.9, 0.9375)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| SparseGPT one-shot, then fine-tune | one-shot | fine-tuned |", "|---|---:|---:|"]
    for pattern in FINETUNED:
        result = read(f"oneshot_finetune_sparsegpt_{slug(pattern)}")
        before = {"test": result["before_finetune"]["test"]} if result else None
        label = f"bank-{pattern[1]} {pattern[2] * 100:g}%" if isinstance(pattern, tuple) else pattern
        lines.append(f"| {label} | {ppl(before)} | {ppl(result)} |")
    return "\n".join(lines + ["", *goals(read)])


def goals(read) -> list[str]:
    """The goals, measured: one line each, 'met' or 'MISSED'."""

    def test(name: str) -> float | None:
        result = read(name)
        return result["test"]["perplexity"] if result else None

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    out = []
    dense = test("dense")
    magnitude = test("oneshot_magnitude_2of4")
    if dense and magnitude:
        for method in ("wanda", "sparsegpt"):
            value = test(f"oneshot_{method}_2of4")
            if value:
                share = (value - dense) / (magnitude - dense)
                out.append(f"- 2:4 one-shot, {method}: raises perplexity by {share:.2f} of magnitude's raise "
                           f"(goal <= 0.25): {verdict(share <= 0.25)}")  # fmt: skip
    for criterion in ("magnitude", "movement"):
        value = test(f"gradual_bank64_90_{criterion}")
        if dense and value:
            ratio = value / dense - 1
            out.append(
                f"- gradual bank-64 90 %, {criterion}: {ratio:+.1%} vs dense "
                f"(goal within 10 %): {verdict(ratio <= 0.10)}"
            )
    pairs = [(f"gradual_bank64_{s:g}_{c}", f"gradual_unstructured_{s:g}_{c}", f"gradual {s:g} %, {c}")
             for s in (75, 90, 93.75) for c in ("magnitude", "movement")]  # fmt: skip
    pairs += [(f"oneshot_{m}_bank64_50", f"oneshot_{m}_unstructured_50", f"one-shot 50 %, {m}") for m in METHODS]
    for bank, free, label in pairs:
        a, b = test(bank), test(free)
        if a and b:
            out.append(
                f"- bank-64 vs unstructured, {label}: {a / b - 1:+.2%} (goal within 2 %): {verdict(a / b - 1 <= 0.02)}"
            )
    return out


if __name__ == "__main__":
    main()
