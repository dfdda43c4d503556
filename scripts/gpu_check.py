"""The GPU path, checked in one command: correctness bit for bit, cost as ratios, 2:4 speed.

    python scripts/gpu_check.py                       # everything, on cuda:0 (a few minutes)
    python scripts/gpu_check.py --json gpu.json --markdown gpu.md
    python scripts/gpu_check.py --quick               # small cases: a smoke run on a GPU
    python scripts/gpu_check.py --device cpu --quick  # CPU tensors standing in for CUDA ones (CI, tests)

Sections (``--section``, repeatable; all by default), code in ``pruning_tools/benchmarks/gpu/``:

- ``masks``: masks computed on the device equal the CPU engine's bit for bit (bank 64 with tail
  banks, 2:4, bank 16, unstructured, global; float32 / bfloat16 / float16; ResNet-50's and
  BERT-base's weight shapes and edge shapes; ties, subnormals, NaN/inf, masks from a previous refresh);
- ``prune``: ``Prune`` on device parameters with ``prune_device="default"`` and ``"cpu"`` follows a
  CPU run step by step (masks and weight bits), host masks pinned, no host synchronisation in
  ``prune()`` on steps without a refresh (counted with the CUDA sync debug mode and the profiler);
- ``cost``: refresh ÷ one memory pass, ``prune()`` ÷ ``_foreach_mul_``, a ResNet-50 training step
  (batch 64, bf16 autocast) with ÷ without ``prune()`` (goal <= 1.02x);
- ``shrunk``: structured pruning: a shrunk ResNet-50 / BERT-base on the device against the
  unpruned model (``benchmarks/gpu/shrunk.py``);
- ``sparse``: 2:4 weights through ``torch.sparse.to_sparse_semi_structured`` (CUTLASS, cuSPARSELt,
  where supported): outputs equal the masked dense ones, speed against dense ``F.linear`` for
  BERT-base and LLM shapes at batch 1 / 16 / 256; ``BankSparseLinear`` (bank 64) on the device.

Exit codes: 0 every check passed (goals are reported, they do not fail the run), 1 a check failed,
2 bad arguments, 77 no CUDA device (nothing checked; ``--device cpu`` runs the CPU stand-in).
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import torch

from pruning_tools.benchmarks.gpu import cases, correctness, cost, shrunk, sparse
from pruning_tools.benchmarks.gpu.report import EXIT_NO_CUDA, Report, Row, info_row
from pruning_tools.benchmarks.harness import load_average, machine

SECTIONS = ("masks", "prune", "cost", "shrunk", "sparse")


def no_cuda_message() -> str:
    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"No CUDA device is present (torch {torch.__version__}, {built}): nothing was checked, "
        f"exit code {EXIT_NO_CUDA}. Run this on a machine with an NVIDIA GPU, or pass --device cpu "
        "for the CPU stand-in (CPU tensors in place of CUDA ones; not a GPU measurement)."
    )


def environment(device: torch.device) -> dict:
    """The machine, the software and the settings of this run, for the record."""
    env = {
        "device": str(device),
        "stand_in": device.type == "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": machine(),
        "load_average": load_average(),
        "reference_engine": correctness.reference_engine(),
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name,
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            cusparselt=torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None,
        )
    else:
        env["device_name"] = f"CPU stand-in ({machine()})"
    return env


def log(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def scope_rows() -> list[Row]:
    return [
        info_row("scope", "Triton / CUDA bank-sparse kernel", "none in the library (not built: no GPU to check it)"),
    ]


def guarded(section: str, run: Callable[[], list[Row]]) -> list[Row]:
    """A section's rows; an exception becomes a failed row with its traceback, and the run goes on
    (device time is scarce: one run should say as much as it can)."""
    try:
        return run()
    except Exception as error:  # noqa: BLE001 - reported as a failure, not swallowed
        return [
            Row(section, "section raised an exception", f"{type(error).__name__}: {error}"[:300], ok=False,
                data={"traceback": traceback.format_exc()})
        ]  # fmt: skip


def run_sections(
    device: torch.device, chosen: tuple[str, ...], quick: bool, profile: bool, started: float
) -> list[Row]:
    rows: list[Row] = []
    if "masks" in chosen:
        mask_cases, global_cases = cases.default_mask_cases(quick), cases.default_global_cases(quick)
        log(started, f"masks: {len(mask_cases)} tensors, {len(global_cases)} global pools")
        rows += guarded(
            "masks", lambda: correctness.mask_rows(correctness.compare_mask_cases(mask_cases, device), device)
        )
        rows += guarded(
            "masks", lambda: correctness.mask_rows(correctness.compare_global_cases(global_cases, device), device)
        )
    if "prune" in chosen:
        log(started, "prune: Prune on the device against a CPU run")
        rows += guarded("prune_device", lambda: correctness.prune_rows(device, profile))
    if "cost" in chosen:
        log(started, "cost: refresh, re-apply, training step")
        rows += guarded("cost", lambda: cost.cost_rows(device, quick))
    if "shrunk" in chosen:
        log(started, "shrunk: structured pruning, shrunk against unpruned")
        rows += guarded("shrunk", lambda: shrunk.shrunk_rows(device, quick))
    if "sparse" in chosen:
        log(started, "sparse: 2:4 semi-structured, BankSparseLinear")
        rows += guarded("2:4", lambda: sparse_section(device, quick))
    log(started, "done")
    return rows


def sparse_section(device: torch.device, quick: bool) -> list[Row]:
    backends, refused = sparse.semi_structured_backends(device)
    rows = [info_row("2:4", f"{name} backend", f"unavailable: {why}") for name, why in refused.items()]
    shapes = dict(sparse.BERT_SHAPES) if quick else {**sparse.BERT_SHAPES, **sparse.LLM_SHAPES}
    dtypes, batches = ((torch.float16,), (1, 16)) if quick else (sparse.DTYPES, sparse.BATCHES)
    rounds = 2 if quick else 10
    if device.type == "cpu":  # the stand-in runs the code with a dense "conversion": no speed to read
        backends, shapes = {"stand-in (dense, no sparse kernel)": lambda w: w}, {"small": (64, 128)}
    rows += sparse.semi_rows(device, shapes, backends, dtypes, batches, rounds=rounds)
    bank_shapes = sparse.BERT_SHAPES if device.type == "cuda" else {"small": (64, 128)}
    rows += guarded("bank-sparse", lambda: sparse.bank_sparse_rows(device, bank_shapes, batches, rounds=rounds))
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", "device_name", default="cuda", show_default=True, help="cuda, cuda:N, or cpu (stand-in).")
@click.option("--section", "sections", multiple=True, type=click.Choice(SECTIONS), help="Run only these sections.")
@click.option("--quick", is_flag=True, help="Small cases, few rounds: checks that everything runs.")
@click.option("--no-profile", is_flag=True, help="Count host syncs with the CUDA sync debug mode only.")
@click.option(
    "--threads", type=click.IntRange(1), default=None,
    help="CPU threads (the CPU reference; default: torch's, 1 with --device cpu, where the stand-in shares the cores).",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default="gpu_check.json", show_default=True,
    help="Where to write the report as JSON.",
)  # fmt: skip
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), default=None, help="Also write Markdown here.")
def main(
    device_name: str,
    sections: tuple[str, ...],
    quick: bool,
    no_profile: bool,
    threads: int | None,
    json_path: str,
    md_path: str | None,
) -> None:
    """Check the GPU path: masks bit for bit, Prune on GPU weights, cost ratios, 2:4 speed."""
    try:
        device = torch.device(device_name)
    except RuntimeError as error:
        raise click.BadParameter(str(error), param_hint="--device") from error
    if device.type not in ("cuda", "cpu"):
        raise click.BadParameter(f"{device_name!r}: expected cuda, cuda:N or cpu", param_hint="--device")
    if device.type == "cuda" and not torch.cuda.is_available():
        click.echo(no_cuda_message())
        sys.exit(EXIT_NO_CUDA)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    if threads is not None or device.type == "cpu":
        torch.set_num_threads(threads or 1)  # the stand-in on a shared machine: more threads mostly spin
    warnings.filterwarnings("ignore", message=".*cannot be reached", category=UserWarning)
    started = time.monotonic()
    report = Report(environment(device))
    report.extend(scope_rows())
    report.extend(run_sections(device, sections or SECTIONS, quick, not no_profile, started))
    report.environment["seconds"] = round(time.monotonic() - started, 1)
    report.print_table()
    Path(json_path).write_text(report.to_json())
    if md_path:
        Path(md_path).write_text(report.to_markdown())
    if device.type == "cpu":
        click.echo("CPU stand-in: correctness of the code paths only; no number here is a GPU measurement.")
    click.echo(f"Report written to {json_path} ({report.environment['seconds']} s).")
    sys.exit(report.exit_code())


if __name__ == "__main__":
    main()
