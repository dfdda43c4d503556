"""``scripts/gpu_check.py`` without a GPU: its CPU mode (what CI runs), and its pieces with CPU tensors
standing in for CUDA ones, so that a bug in the check does not wait for a GPU to be found."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pruning_tools import _native
from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools.benchmarks.gpu import cases as C
from pruning_tools.benchmarks.gpu import correctness as K
from pruning_tools.benchmarks.gpu import sparse as S
from pruning_tools.benchmarks.gpu.report import (
    EXIT_FAILED,
    EXIT_NO_CUDA,
    EXIT_OK,
    Report,
    Row,
    check_row,
    goal_row,
    info_row,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"
CPU = torch.device("cpu")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the command


def test_without_cuda_the_script_says_so_and_exits_77(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU: this is the CPU mode wherever it runs
    out = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == EXIT_NO_CUDA == 77, run.stdout + run.stderr
    assert "No CUDA device is present" in run.stdout
    assert "--device cpu" in run.stdout  # says what else can be done
    assert not out.exists()  # nothing checked, nothing written


def test_cpu_stand_in_runs_every_section(tmp_path):
    out, md = tmp_path / "report.json", tmp_path / "report.md"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out), "--markdown", str(md)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)  # its own process: threads, warnings
    assert run.returncode == EXIT_OK, run.stdout + run.stderr
    assert "no number here is a GPU measurement" in run.stdout
    report = json.loads(out.read_text())
    assert report["environment"]["stand_in"] is True and report["environment"]["threads"] == 1
    sections = {r["section"] for r in report["rows"]}
    assert {"masks", "prune_device", "cost", "2:4", "bank-sparse", "scope"} <= sections
    checks = [r for r in report["rows"] if r["ok"] is not None and not r["goal"]]
    assert len(checks) >= 20 and all(r["ok"] for r in checks), [r for r in checks if not r["ok"]]
    assert any(r["goal"] == "<= 1.02x" for r in report["rows"])  # the training-step goal is reported
    assert md.read_text().count("\n| ") == len(report["rows"]) + 1  # header row + one per row


def test_bad_device_is_a_usage_error():
    result = CliRunner().invoke(load_script().main, ["--device", "tpu"])
    assert result.exit_code == 2
    assert "--device" in result.output


# ---------------------------------------------------------------- case lists


def test_cases_cover_resnet50_bert_base_and_edges():
    cases = C.default_mask_cases()
    shapes = {c.geometry.shape for c in cases}
    assert {(64, 64, 3, 3), (2048, 512, 1, 1), (1000, 2048), (64, 3, 7, 7)} <= shapes  # ResNet-50
    assert {(768, 768), (3072, 768), (768, 3072)} <= shapes  # BERT-base
    assert {g.shape for g in C.EDGE} <= shapes
    assert {c.dtype for c in cases} == {torch.float32, torch.bfloat16, torch.float16}
    assert {c.pattern.label for c in cases} == {p.label for p in C.PATTERNS}
    assert any(c.pattern.bank_size == 4 and c.pattern.sparsity == 0.5 for c in cases)  # 2:4
    tails = [c for c in cases if c.pattern.bank_size == 64 and G.row_length(c.geometry.shape) % 64]
    assert tails  # tail banks
    assert len({c.seed for c in cases}) == len(cases)
    pools = {c.name: c for c in C.default_global_cases()}
    assert len(pools["ResNet-50"].geometries) == 54 and len(pools["BERT-base"].geometries) == 72


@pytest.mark.parametrize("dtype", C.DTYPES)
def test_case_weights_are_reproducible_and_hold_what_they_claim(dtype):
    a = C.weight((64, 96), dtype, "ties", 7)
    assert a.dtype == dtype and torch.equal(a, C.weight((64, 96), dtype, "ties", 7))
    assert not torch.equal(a, C.weight((64, 96), dtype, "ties", 8))
    zeros = a[a == 0]
    assert bool(zeros.signbit().any()) and bool((~zeros.signbit()).any())  # -0.0 and +0.0
    tiny = C.weight((64, 96), dtype, "tiny", 7)
    nonzero = tiny[tiny != 0].abs()
    assert bool((nonzero < torch.finfo(dtype).tiny).any())  # subnormals in this dtype
    odd = C.weight((64, 96), dtype, "nonfinite", 7)
    assert bool(odd.isnan().any()) and bool((odd == math.inf).any()) and bool((odd == -math.inf).any())


def test_case_tensors_start_from_the_previous_mask():
    case = next(c for c in C.default_mask_cases(quick=True) if c.previous == "ramp")
    w, prev = C.case_tensors(case)
    assert prev is not None and prev.shape == w.shape
    assert bool((w[~prev] == 0).all())  # pruned weights are zero, as Prune leaves them
    assert C.case_tensors(C.MaskCase(case.geometry, case.pattern, case.dtype, "normal", None, 1))[1] is None


# ---------------------------------------------------------------- comparisons, with CPU tensors standing in


@pytest.fixture(autouse=True)
def one_thread():
    """The comparisons below run in this process: one thread, as the stand-in does (the cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cases():
    edges = [g for g in C.EDGE if g.numel <= 3000]
    return C.mask_cases(edges, dtypes=(torch.float32, torch.bfloat16))


def test_the_pytorch_path_equals_the_cpu_engine_on_the_stand_in():
    comparisons = K.compare_mask_cases(small_cases(), CPU)
    assert comparisons and all(c.equal for c in comparisons), [c.label for c in comparisons if not c.equal]
    assert all(c.device == "cpu" for c in comparisons)
    rows = K.mask_rows(comparisons, CPU)
    assert rows and all(r.ok for r in rows)


def test_the_stand_in_really_runs_the_pytorch_path(monkeypatch):
    seen = []
    real = M.keep_largest
    monkeypatch.setattr(M, "keep_largest", lambda *a: seen.append(1) or real(*a))
    K.compare_mask_cases(small_cases()[:5], CPU)
    assert seen  # keep_largest is the PyTorch path's selection: the device side did not take the C kernel


def flip_first(mask: torch.Tensor) -> torch.Tensor:
    mask = mask.clone()
    mask.view(-1)[0] ^= True
    return mask


def test_a_wrong_device_mask_is_found_and_named():
    cases = small_cases()[:12]
    broken = lambda *args: flip_first(M.compute_mask(*args))
    comparisons = K.compare_mask_cases(cases, CPU, device_compute=broken)
    assert all(c.mismatches == 1 for c in comparisons)
    rows = K.mask_rows(comparisons, CPU)
    assert all(r.ok is False and r.status == "FAIL" for r in rows)
    assert rows[0].data["failing"][0].endswith("1 positions differ")
    wrong_shape = K.compare_mask_cases(cases[:1], CPU, device_compute=lambda *a: M.compute_mask(*a).reshape(-1))
    assert not wrong_shape[0].equal


def test_a_case_that_raises_fails_by_name_and_the_others_go_on():
    cases = C.mask_cases(C.EDGE[:3], C.PATTERNS[:1], (torch.float32,), (("normal", None),))  # [10, 100] first

    def raising(w, *args):
        if w.dim() == 2 and w.shape[1] == 100:
            raise RuntimeError("no kernel image is available")
        return M.compute_mask(w, *args)

    comparisons = K.compare_mask_cases(cases, CPU, device_compute=raising)
    assert [c.equal for c in comparisons] == [False, True, True]
    (row,) = K.mask_rows(comparisons, CPU)
    assert row.value == "2/3 equal" and "no kernel image" in row.data["failing"][0]


def test_a_section_that_raises_is_a_failed_row():
    script = load_script()
    (row,) = script.guarded("cost", lambda: 1 / 0)
    assert row.ok is False and row.status == "FAIL" and "ZeroDivisionError" in row.value
    assert "Traceback" in row.data["traceback"]


def test_a_wrong_global_mask_is_found():
    case = C.default_global_cases(quick=True)[0]
    assert all(c.equal for c in K.compare_global_cases([case], CPU))
    broken = lambda *args: [flip_first(m) for m in M.global_masks(*args)]
    (result,) = K.compare_global_cases([case], CPU, device_compute=broken)
    assert result.mismatches == len(case.geometries)


def test_a_mask_computed_elsewhere_than_the_device_fails():
    comparisons = [K.Comparison("w", "g", 0, 3, 3, "cpu")]  # equal, but not computed on the GPU
    (row,) = K.mask_rows(comparisons, torch.device("cuda"))
    assert row.ok is False and row.data["elsewhere"] == ["w"]


def test_prune_scenarios_follow_the_cpu_run_on_the_stand_in():
    rows = K.prune_rows(CPU)
    checks = [r for r in rows if r.ok is not None]
    assert len(checks) == 8 and all(r.ok for r in checks), [r.value for r in checks if not r.ok]
    assert any("moved after Prune()" in r.name for r in checks)


def test_a_device_pruner_that_differs_is_caught(monkeypatch):
    real = M.bank_mask

    def broken(*args, **kwargs):  # wrong only on the device side (the PyTorch engine)
        mask = real(*args, **kwargs)
        return flip_first(mask) if _native.engine() == "torch" else mask

    monkeypatch.setattr(M, "bank_mask", broken)
    run = K.follow_training(CPU, torch.float32, "default")
    assert run.mask_mismatch_steps and run.weight_mismatch_steps


def test_syncs_are_not_counted_without_cuda_and_the_call_still_runs():
    calls = []
    syncs = K.count_syncs(lambda: calls.append(1), CPU)
    assert calls == [1]
    assert syncs.total is None and "no CUDA" in syncs.note


# ---------------------------------------------------------------- sparse products


def test_two_four_keeps_two_of_every_four():
    w = S.two_four(torch.randn(8, 64))
    assert bool(((w != 0).reshape(8, 16, 4).sum(-1) == 2).all())


def test_semi_structured_backends_say_why_not_without_cuda():
    usable, refused = S.semi_structured_backends(CPU)
    assert usable == {} and set(refused) == {"CUTLASS", "cuSPARSELt"}


def test_sparse_rows_pass_the_dense_product_and_catch_a_wrong_one():
    shapes, dtypes = {"small": (64, 128)}, (torch.bfloat16,)
    good = S.semi_rows(CPU, shapes, {"dense": lambda w: w}, dtypes, (1, 16), rounds=1, repeat=1)
    assert all(r.ok for r in good if r.ok is not None)
    speed = next(r for r in good if "speed" in r.name)
    assert set(speed.data["speedup"]) == {1, 16}

    def wrong(w):
        w = w.clone()
        w[0, 0] += 1
        return w

    bad = S.semi_rows(CPU, shapes, {"wrong": wrong}, dtypes, (1, 16), rounds=1, repeat=1)
    outputs = next(r for r in bad if "outputs" in r.name)
    assert outputs.ok is False and outputs.value == "0/2 equal"


def test_a_shape_the_backend_refuses_is_reported_and_the_others_run():
    def picky(w):
        if w.shape[0] != 64:
            raise RuntimeError("shape not supported")
        return w

    shapes = {"ok": (64, 128), "refused": (32, 128)}
    rows = S.semi_rows(CPU, shapes, {"picky": picky}, (torch.float16,), (1,), rounds=1, repeat=1)
    names = {r.name: r for r in rows}
    assert names["picky float16: F.linear outputs == masked dense (tolerance)"].value == "1/1 equal"
    assert "shape not supported" in names["picky float16: not run"].value


def test_close_enough_is_relative_to_the_dense_rounding():
    assert S.close_enough(0.01, 0.01, 1.0, torch.bfloat16)
    assert not S.close_enough(0.5, 0.01, 1.0, torch.bfloat16)
    assert S.close_enough(*S.errors(torch.ones(3), torch.ones(3), torch.ones(3)), torch.float32)


def test_bank_sparse_rows_on_the_stand_in():
    rows = S.bank_sparse_rows(CPU, {"small": (64, 128)}, (1, 4), rounds=1, repeat=1)
    assert rows[0].ok and rows[0].value == "2/2 equal"


# ---------------------------------------------------------------- report


def test_report_exit_codes_table_json_and_markdown():
    report = Report({"device": "cuda:0", "device_name": "Some GPU"})
    report.extend([info_row("cost", "a | b", "[768, 768] 1.0x"), goal_row("cost", "train", 1.05, 1.02)])
    assert report.exit_code() == EXIT_OK  # a missed goal is reported, not a failure
    assert report.goals_missed and report.rows[1].status == "goal missed"
    report.extend([check_row("masks", "m", 3, 4)])
    assert report.exit_code() == EXIT_FAILED == 1 and report.failed[0].status == "FAIL"
    data = json.loads(report.to_json())
    assert data["exit_code"] == 1 and data["rows"][2]["value"] == "3/4 equal"
    assert "a \\| b" in report.to_markdown()
    from rich.console import Console

    buffer = io.StringIO()
    report.print_table(Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "[768, 768] 1.0x" in text and "Some GPU" in text and "exit code 1" in text


def test_rows_of_nothing_do_not_pass():
    assert check_row("masks", "empty", 0, 0).ok is False
    assert goal_row("cost", "nan", math.nan, 1.02).ok is False
    assert Row("s", "n", "v").status == "info"
