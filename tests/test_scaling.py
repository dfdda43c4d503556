"""Items 8 and 10 of issue 15, without timing anything: a global refresh does work linear in the number
of parameters (counted), reads each weight once, and small unstructured tensors take the one-call
kernel, which gives the same masks as the other methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_tools import _native
from pruning_tools import masks as M
from pruning_tools._native import mask_kernels as native
from pruning_tools.config import ParamSpec
from pruning_tools.pytorch_pruning import Prune


def spec_reads_per_refresh(count: int, monkeypatch) -> int:
    """How often a global refresh of ``count`` parameters asks a spec for its size."""
    torch.manual_seed(0)
    model = nn.ModuleList(nn.Linear(4, 4, bias=False) for _ in range(count))
    prune = Prune(model, 0, 100, 1, {"*.weight": 0.9}, balance="global")
    prune.prune()
    calls = [0]
    numel = ParamSpec.numel

    def counted(self):
        calls[0] += 1
        return numel.fget(self)

    monkeypatch.setattr(ParamSpec, "numel", property(counted))
    prune.prune()  # a refresh
    prune.check()
    monkeypatch.setattr(ParamSpec, "numel", numel)
    return calls[0]


def test_global_refresh_is_linear_in_the_number_of_parameters(monkeypatch):
    """The reproduction: target() re-read every weight's size for every parameter (quadratic)."""
    small, large = spec_reads_per_refresh(100, monkeypatch), spec_reads_per_refresh(400, monkeypatch)
    assert large <= 10 * 400  # quadratic would be about 400 * 400
    assert large / small == pytest.approx(4, rel=0.25)


def test_global_refresh_reads_each_weight_once():
    torch.manual_seed(0)
    model = nn.ModuleList(nn.Linear(4, 4, bias=False) for _ in range(50))
    prune = Prune(model, 0, 100, 1, {"*.weight": 0.9}, balance="global")
    reads = []
    read = prune._bridge.read
    prune._bridge.read = lambda name: (reads.append(name), read(name))[1]
    prune.prune()
    assert sorted(reads) == sorted(prune.config.params)  # one read per weight, then one apply each


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 256, 4097])
def test_the_one_call_kernel_equals_the_other_methods(dtype, n):
    torch.manual_seed(n)
    w = torch.randn(n).to(dtype)
    w[::5] = 0  # ties at zero
    w[1::7] = 0.75  # ties among live weights
    alive = torch.rand(n) > 0.3
    for k in (1, n // 3, n - 1, n):
        small = native.keep_largest(w, alive, k)
        expected = M.keep_largest(M.magnitude_scores(w, alive), k)
        assert small is not None and torch.equal(small, expected), (k, dtype)
        if n >= 256 and k < n:
            radix = native.largest_masks([w], [alive], k)
            assert radix is None or torch.equal(radix[0], expected)


def test_small_tensors_take_the_one_call_kernel(monkeypatch):
    """The reproduction: a 65,536-bin histogram for 4,096 weights (about 1 ms per tensor)."""
    if native.library() is None:
        pytest.skip("no compiler: the PyTorch path serves every tensor")
    calls = {"small": 0, "radix": 0}
    small, radix = native.keep_largest, native.largest_masks

    def counted(kind, function):
        def call(*args):
            calls[kind] += 1
            return function(*args)

        return call

    monkeypatch.setattr(native, "keep_largest", counted("small", small))
    monkeypatch.setattr(native, "largest_masks", counted("radix", radix))
    M.unstructured_mask(torch.randn(64, 64), None, 0.9)
    assert calls == {"small": 1, "radix": 0}
    M.unstructured_mask(torch.randn(M.SMALL_TENSOR), None, 0.9)
    assert calls == {"small": 1, "radix": 1}


def test_pruner_masks_do_not_depend_on_the_engine_for_small_unstructured_tensors():
    weights = {}
    for engine in ("native", "torch"):
        with _native.use_engine(engine):
            torch.manual_seed(3)
            model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32))
            prune = Prune(model, 0, 3, 1, {"*.weight": 0.8, "0.bias": 0.5, "1.bias": 0.5}, balance="none")
            for _ in range(3):
                prune.prune()
            weights[engine] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(weights["native"][k], weights["torch"][k]) for k in weights["torch"])
