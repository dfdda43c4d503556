"""Item 4 of issue 15: one rule for non-finite weights on every path (the C kernels, the PyTorch path
that GPUs and non-contiguous tensors take): a NaN scores like a pruned weight, so it is pruned first;
+-inf is the largest magnitude. The pruner warns once per parameter."""

from __future__ import annotations

import warnings

import pytest
import torch

from pruning_tools import _native
from pruning_tools import masks as M
from pruning_tools.pytorch_pruning import Prune

NAN, INF = float("nan"), float("inf")


def reference_keep(scores: list[float], k: int) -> list[bool]:
    """The rule, written out: NaN and dead score -1; keep the k largest, ties to the lower index."""
    keyed = [(-1.0 if s != s else s) for s in scores]
    order = sorted(range(len(keyed)), key=lambda i: (-keyed[i], i))
    kept = set(order[:k])
    return [i in kept for i in range(len(keyed))]


def paths(w: torch.Tensor):
    """The same weight on every path: the C kernel, the PyTorch path, and a non-contiguous view."""
    with _native.use_engine("native"):
        yield "kernel", w
    with _native.use_engine("torch"):
        yield "torch", w
    with _native.use_engine("auto"):
        yield "non-contiguous", w.t().contiguous().t()  # same values, served by the PyTorch path


def test_reproduction_nan_no_longer_zeroes_the_bank_or_the_tensor():
    torch.manual_seed(0)
    w = torch.randn(64, 4).t()  # non-contiguous: the PyTorch path, which zeroed everything before
    w[0, 3] = NAN
    bank = M.bank_mask(w, None, 0.5, 16)
    assert int(bank[0, :16].sum()) == 8 and not bool(bank[0, 3])
    flat = M.unstructured_mask(w, None, 0.5)
    assert int(flat.sum()) == 128 and not bool(flat[0, 3])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_bank_masks_follow_the_rule_on_every_path(dtype):
    values = [0.5, NAN, -INF, 0.25, NAN, 2.0, -0.5, NAN]  # a bank of 8 keeping 3
    w = torch.tensor([values, values[::-1]], dtype=dtype)
    expected = torch.tensor([reference_keep([abs(v) for v in row], 3) for row in (values, values[::-1])])
    for label, x in paths(w):
        assert torch.equal(M.bank_mask(x, None, 0.625, 8), expected), label


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_more_nans_than_pruned_slots_keep_the_lowest_index_ones(dtype):
    w = torch.tensor([[NAN, 1.0, NAN, NAN]], dtype=dtype)  # keep 2 of 4: one number, then NaN at index 0
    for label, x in paths(w):
        assert M.bank_mask(x, None, 0.5, 4).tolist() == [[True, True, False, False]], label


def test_unstructured_and_global_masks_follow_the_rule_on_every_path():
    torch.manual_seed(1)
    w = torch.randn(300, 500)  # large enough for the radix kernel
    w[torch.rand_like(w) < 0.01] = NAN
    w[0, :3] = INF
    keep = int(w.numel() * 0.3)
    for label, x in paths(w):
        mask = M.unstructured_mask(x, None, 0.7)
        assert int(mask.sum()) == keep and not bool(mask[x.isnan()].any()) and bool(mask[0, :3].all()), label
    other = torch.randn(40, 500)
    other[1, 1] = NAN
    results = []
    for label, x in paths(w):
        with _native.use_engine("native" if label == "kernel" else "torch"):
            y = other if label != "non-contiguous" else other.t().contiguous().t()
            results.append(M.global_masks([x, y], [None, None], 0.7))
    for masks in results:
        assert sum(int(m.sum()) for m in masks) == int((w.numel() + other.numel()) * 0.3 + 0.5)
        assert not bool(masks[1][1, 1]) and not bool(masks[0][w.isnan()].any())
        assert all(torch.equal(a, b) for a, b in zip(masks, results[0]))


def test_large_finite_bfloat16_is_not_taken_for_nan():
    """bf16 and fp16 share the 16-bit kernel; +inf differs (0x7F80 vs 0x7C00)."""
    big = torch.tensor([[2.0**121, 1.0, 0.5, 0.25]], dtype=torch.bfloat16)  # bits 0x7C00: NaN as fp16
    for label, x in paths(big):
        assert M.bank_mask(x, None, 0.75, 4).tolist() == [[True, False, False, False]], label


@pytest.mark.parametrize("engine", ["native", "torch"])
@pytest.mark.parametrize("balance", ["fix", "none", "global"])
def test_pruner_warns_once_naming_the_parameter(engine, balance):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    with torch.no_grad():
        model[0].weight[3, 5] = NAN
    with _native.use_engine(engine):
        prune = Prune(model, 0, 4, 1, {"*.weight": 0.75}, balance=balance, bank_size=16)
        with pytest.warns(RuntimeWarning, match=r"0.weight: 1 NaN weight\(s\) at step 1.*pruned first") as seen:
            prune.prune()
        assert [str(w.message).split(":")[0] for w in seen if issubclass(w.category, RuntimeWarning)] == ["0.weight"]
        assert float(model[0].weight.detach()[3, 5]) == 0.0
        with torch.no_grad():
            model[0].weight[7, 7] = NAN  # NaN again later: no second warning for the same parameter
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            prune.prune()
    assert prune.check()[1] and not bool(model[0].weight.isnan().any())
