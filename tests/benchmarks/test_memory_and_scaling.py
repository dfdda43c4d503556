"""Item 9 of issue 15 (peak extra memory of the PyTorch path, measured as peak RSS of a fresh process:
deterministic, not a timing) and smoke runs of the scaling benchmark of items 8 and 10."""

from __future__ import annotations

import platform

import pytest

from pruning_tools.benchmarks import memory, scaling

NUMEL = 1 << 23  # 32 MiB of fp32: 8 blocks on the PyTorch path (16 from 64 MiB on)

linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="peak RSS is read from /proc/self/status")


@linux_only
def test_the_measurement_is_calibrated():
    clone = memory.measure("clone", "linear", "fix", 0.9375, "torch", NUMEL)
    assert 0.95 <= clone["peak_extra"] <= 1.1  # a copy of the weight reads as one weight


@linux_only
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_bank_refresh_on_the_pytorch_path_stays_within_one_and_a_half_weights(kind):
    """The reproduction: 5.55x a 1 GiB weight for one bank refresh (int64 copies for the tie-break)."""
    assert memory.measure("refresh", kind, "fix", 0.5, "torch", NUMEL)["peak_extra"] <= 1.5


@linux_only
@pytest.mark.parametrize("balance", ["none", "global"])
def test_unstructured_and_global_refresh_on_the_pytorch_path_stay_within_one_and_a_half_weights(balance):
    assert memory.measure("refresh", "linear", balance, 0.9, "torch", NUMEL)["peak_extra"] <= 1.5


@linux_only
def test_check_and_sparsity_stay_within_half_a_weight():
    """The reproduction: check() + sparsity() took 2.28x (bank counts summed through int64)."""
    assert memory.measure("check", "conv", "fix", 0.9375, "torch", NUMEL)["peak_extra"] <= 0.5


@linux_only
def test_restore_sparsity_construction_holds_little_more_than_the_mask():
    restore = memory.measure("restore", "linear", "fix", 0.9375, "torch", NUMEL)
    assert restore["peak_extra"] <= 0.5  # the mask itself is 0.25x of an fp32 weight


def test_scaling_benchmark_runs_and_reports_ratios():
    rows = scaling.global_scaling([20, 40], rounds=1)
    assert [r["parameters"] for r in rows] == [20, 40] and rows[0]["per parameter vs smallest"] == 1.0
    small = scaling.small_tensors(10, (16, 64), rounds=1)
    assert small["none / fix"] > 0
    sizes = scaling.by_size([8, 18], rounds=1)
    assert [r["picked"] for r in sizes] == ["8-bit radix, one call", "16-bit radix"]
    table = scaling.to_markdown({"global": rows, "small": small, "by_size": sizes}, "title")
    assert "none / fix" in table and "picked" in table
