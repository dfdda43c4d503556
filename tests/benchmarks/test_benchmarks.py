"""The benchmark's quick mode runs end to end and reports sane numbers (nothing about speed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pruning_tools import _native
from pruning_tools import geometry as G
from pruning_tools.benchmarks import kernel
from pruning_tools.benchmarks.masks import PATTERNS, _same_up_to_ties
from pruning_tools.benchmarks.models import bert_like, prunable_weights, resnet50
from pruning_tools.cli import main


def expected_sparsity(model, balance: str, bank_size: int, sparsity: float) -> float:
    """What the pattern must reach over all conv/linear weights of ``model``, by the budgets."""
    shapes = [tuple(p.shape) for p in prunable_weights(model).values()]
    total = sum(math.prod(s) for s in shapes)
    if balance == "global":
        return 1 - G.keep_count(total, sparsity) / total
    zeros = sum(G.realised_sparsity(s, balance, sparsity, G.BankGeometry(bank_size)) * math.prod(s) for s in shapes)
    return zeros / total


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    run = CliRunner().invoke(main, ["bench", "--quick", "--rounds", "1", "--train-rounds", "1", "--json", str(path)])
    assert run.exit_code == 0, run.output
    assert "nn.utils.prune l1_unstructured 90%" in run.output
    return json.loads(path.read_text())


def test_every_timing_is_positive_and_ordered(results):
    tasks = {(r["model"], r["task"]) for r in results["rows"]}
    for model in ("ResNet-50", "BERT-like"):
        for label, *_ in PATTERNS:
            assert (model, f"ours {label}") in tasks
        assert (model, "prune() no refresh") in tasks
    for r in results["rows"]:
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"], r
        if r["baseline"]:
            assert r["ratio"] > 0 and math.isfinite(r["ratio"]), r
            assert (r["model"], r["baseline"]) in tasks


def test_masks_reach_exactly_the_budgeted_sparsity(results):
    models = {"ResNet-50": resnet50(width=8, num_classes=10, blocks=(1, 1, 1, 1)), "BERT-like": bert_like(64, 128, 2)}
    for name, model in models.items():
        info = results["info"][name]
        assert info["weights"] == sum(p.numel() for p in prunable_weights(model).values())
        for label, balance, bank_size, sparsity in PATTERNS:
            assert info["sparsity"][label] == pytest.approx(
                expected_sparsity(model, balance, bank_size, sparsity), abs=1e-12
            ), (name, label)
        assert info["same masks as l1_unstructured up to ties"] is True
        assert info["prune check"] is True


def test_memory_and_speedups_are_reported(results):
    for name in ("ResNet-50", "BERT-like"):
        info = results["info"][name]
        assert info["extra bytes per pruned weight"] == 1.0  # one bool per weight
        assert info["torch extra bytes per weight"] == 8.0  # float mask + recomputed weight
        for key in ("speedup over l1_unstructured", "speedup over global_unstructured"):
            assert info[key] > 0 and math.isfinite(info[key])
    for label in ("bank-64 93.75%", "unstructured 90%", "2:4"):
        assert results["info"]["BERT-like"][f"WeightNormSparsifier {label} extra bytes per weight"] in (1.0, 4.0)
    assert results["info"]["train"]["sparsity after training"] > 0.5


def test_masks_agree_up_to_ties_only_when_the_differences_are_ties():
    import torch

    w = torch.tensor([0.5, 0.2, 0.2, 0.9])
    ours = torch.tensor([True, True, False, True])
    assert _same_up_to_ties(ours, ours.clone(), w)
    assert _same_up_to_ties(ours, torch.tensor([True, False, True, True]), w)  # the tied 0.2s swapped
    assert not _same_up_to_ties(ours, torch.tensor([False, True, True, True]), w)  # 0.5 for a 0.2
    assert not _same_up_to_ties(ours, torch.tensor([True, True, True, True]), w)  # one more kept


def test_kernel_benchmark_runs():
    """Smoke test of pruning_tools/benchmarks/kernel.py on a tiny case (it also checks the kernel's results)."""
    import torch

    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(
            kernel.main,
            ["--reps", "2", "--shape", "64x192", "--keep", "4", "--batch", "1", "--batch", "9", "--threads", "1"],
        )
        fastest = CliRunner().invoke(
            kernel.main,
            ["--reps", "2", "--shape", "64x192", "--keep", "4", "--batch", "3", "--threads", "1", "--fastest"],
        )
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(True)
    assert result.exit_code == 0, result.output
    assert "64×192" in result.output and "CSR/ours" in result.output and "medians" in result.output
    assert fastest.exit_code == 0 and "fastest" in fastest.output and "kernel ISA" in fastest.output, fastest.output


def test_bench_runs_anywhere_the_package_is_installed(tmp_path):
    """The benchmarks ship with the package: a directory with no checkout in sight runs them too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", "from pruning_tools.cli import main; main()", "bench", "--quick", "--rounds", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prune() alone" in done.stdout


def test_inference_benchmark_quick(tmp_path):
    """``pruning-tools bench --inference --quick``: every model, both sparsities, checked conversions."""
    out = tmp_path / "inference.json"
    args = ["bench", "--inference", "--quick", "--threads", "1", "--rounds", "1", "--json", str(out)]
    run = CliRunner().invoke(main, [*args, "--markdown", str(tmp_path / "inference.md")])
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    rows = result["rows"]
    models = {"Linear 768x3072", "Linear 3072x768", "BERT-base encoder", "GPT decoder", "ResNet-50 b1", "ResNet-50 b32"}
    models.add("ResNet-50 b1 CL")  # channels-last images
    assert {r["model"] for r in rows} == models and len(rows) == 2 * len(models)
    for r in rows:
        assert r["error"] <= 1e-4, r  # the converted model computes the masked model's outputs
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0 and r["ort_ms"] > 0, r
        assert math.isfinite(r["vs_eager"]) and 1 < r["bound"] <= 12.8, r
        assert not r["converted"].startswith("0 of"), r
    assert result["runs"][0]["threads"] == 1 and "load average" in result["runs"][0]
    table = (tmp_path / "inference.md").read_text()
    assert "| model | shape | threads | sparsity |" in table and "GPT decoder" in table
    assert f"kernel ISA {_native.isa.chosen()}" in table and f"CPU {_native.isa.cpu_model()}" in result["header"]


def test_isa_benchmark_runs_every_level(tmp_path):
    """``benchmarks/isa.py``: each level this CPU runs is checked against dense and timed (no speed asserted)."""
    from pruning_tools.benchmarks import isa

    run = CliRunner().invoke(isa.main, ["--reps", "1", "--keep", "4", "--rows", "2", "--no-conv"])
    assert run.exit_code == 0, run.output
    for level in _native.isa.supported():
        assert f"{level} ×" in run.output
    assert "Linear 3072x768, 2 rows" in run.output


def test_cold_benchmark_times_each_state():
    """``benchmarks/cold.py``: each layer checked against dense and timed warm, after others, after a sweep."""
    from pruning_tools.benchmarks import cold

    run = CliRunner().invoke(cold.main, ["--rounds", "1", "--others", "1"])
    assert run.exit_code == 0, run.output
    for state in ("warm", "after others", "after 64 MB"):
        assert run.output.count(state) == len(cold.LINEARS), run.output
    assert f"kernel ISA {_native.isa.chosen()}" in run.output
    refused = CliRunner().invoke(cold.main, ["--keep", "0"])
    assert refused.exit_code == 2 and "--keep" in refused.output and "0" in refused.output


def test_conv_layers_benchmark_times_every_converted_convolution(tmp_path):
    """``benchmarks/conv_layers.py``: each converted convolution timed in both layouts, summed per stage."""
    from pruning_tools.benchmarks import conv_layers

    out = tmp_path / "convs.json"
    run = CliRunner().invoke(conv_layers.main, ["--tiny", "--rounds", "1", "--json", str(out)])
    assert run.exit_code == 0, run.output
    rows = json.loads(out.read_text())["rows"]
    convs = conv_layers.converted_convs(1, 0.9375, tiny=True)
    assert [r["name"] for r in rows] == [name for name, *_ in convs] and len(rows) > 4
    assert all(set(r["seconds"]) == {"dense NCHW", "sparse NCHW", "dense channels-last", "sparse channels-last"}
               and min(r["seconds"].values()) > 0 for r in rows)  # fmt: skip
    assert "layer4 1x1" in run.output and "all" in run.output  # width 16: the first stages keep < 64 channels
    refused = CliRunner().invoke(conv_layers.main, ["--rounds", "0"])
    assert refused.exit_code == 2 and "--rounds" in refused.output


def test_default_rule_check_reports_whole_model_and_layers():
    """``benchmarks/default_rule.py``: a model converted with default arguments, timed whole and per layer."""
    import torch
    from torch import nn

    from pruning_tools.benchmarks import default_rule
    from pruning_tools.inference import calibration

    fixed = calibration.Calibration(
        {}, 1.0, 1.0, {f: (calibration.Point(1000, 1, 1.0, 2.0),) for f in calibration.FAMILIES}
    )
    with calibration.use_calibration(fixed):  # 16x fewer slots at half the speed each: 8x, converted
        row = default_rule.check_model(
            "tiny", lambda: nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 128)), torch.randn(4, 256),
            0.9375, 1,
        )  # fmt: skip
    assert row["converted"] == "2 of 2" and row["whole"] > 0 and row["verdict"] in ("slower", "not slower")
    first, second = row["layers"]
    assert first["name"] == "0" and first["n"] == 4 and first["measured"] > 0 and first["again"] > 0
    assert math.isclose(first["expected"], fixed.expected("linear", 256 * 128, 128 * 4 * 4, 4))
    assert first["repeat_within"] == (abs(first["again"] / first["measured"] - 1) <= 0.3)
    modelled = [fixed.times("linear", 256 * 128, 128 * 4 * 4, 4), fixed.times("linear", 128 * 128, 128 * 2 * 4, 4)]
    together = row["together"]
    assert math.isclose(together["expected"], sum(d for d, _ in modelled) / sum(s for _, s in modelled))
    measured = [layer["measured_s"] for layer in row["layers"]]
    assert math.isclose(together["measured"], sum(d for d, _ in measured) / sum(s for _, s in measured))
    assert default_rule.summary([row]).count("| tiny |") == 1


def test_onnxruntime_threads_do_not_spin_into_the_next_task():
    pytest.importorskip("onnxruntime")
    from pruning_tools.benchmarks.harness import ort_options

    options = ort_options(2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_epilogue_benchmark_compares_the_relu_on_and_off():
    """``benchmarks/epilogue.py``: both conversions checked against dense, then timed (no speed asserted)."""
    from pruning_tools.benchmarks import epilogue

    (row,) = epilogue.run((2,), threads=1, rounds=1, sparsity=0.75, small=True)
    assert row["batch"] == 2 and row["epilogue ReLU ms"] > 0 and row["no epilogue ÷ epilogue"] > 0
