"""The PyTorch path works block by block (item 9 of issue 15): with tiny blocks, so that every tensor
spans many, its masks and bank counts equal the compiled kernels' and the one-block results, ties
that straddle blocks included."""

from __future__ import annotations

import pytest
import torch

from pruning_tools import _native
from pruning_tools import geometry as G
from pruning_tools import masks as M


@pytest.fixture
def tiny_blocks(monkeypatch):
    monkeypatch.setattr(M, "BLOCK_ELEMENTS", 37)
    monkeypatch.setattr(M, "BLOCKS", 10**9)
    monkeypatch.setattr(M, "SMALL_TENSOR", 1)  # the radix rounds even for these small tensors


def tied(shape, seed, dtype=torch.float32):
    torch.manual_seed(seed)
    w = torch.randint(-4, 5, shape).to(dtype) / 4  # few distinct magnitudes: ties everywhere
    alive = torch.rand(shape) > 0.25
    return w, alive


def kernel_or_one_block(fn):
    """``fn()`` with the compiled kernels where they serve it, else on the PyTorch path in one block."""
    with _native.use_engine("auto"):
        return fn()


@pytest.mark.parametrize("shape", [(7, 40), (3, 5, 3, 3), (200,), (1, 129)])
@pytest.mark.parametrize("sparsity", [0.3, 0.75])
def test_unstructured_masks_equal_across_blocks(tiny_blocks, shape, sparsity):
    w, alive = tied(shape, 1)
    with _native.use_engine("torch"):
        blocked = M.unstructured_mask(w, alive, sparsity)
        non_contiguous = M.unstructured_mask(w.clone().transpose(0, -1).contiguous().transpose(0, -1), alive, sparsity)
    reference = M.keep_largest(M.magnitude_scores(w, alive).reshape(-1), int(w.numel() * (1 - sparsity) + 0.5))
    assert torch.equal(blocked.reshape(-1), reference)
    assert torch.equal(non_contiguous, blocked)
    assert torch.equal(kernel_or_one_block(lambda: M.unstructured_mask(w, alive, sparsity)), blocked)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_global_masks_equal_across_blocks(tiny_blocks, dtype):
    weights, masks = zip(*(tied(s, i, dtype) for i, s in enumerate([(9, 17), (40,), (2, 3, 3, 3)])))
    with _native.use_engine("torch"):
        blocked = M.global_masks(list(weights), list(masks), 0.6)
    with _native.use_engine("auto"):
        fast = M.global_masks(list(weights), list(masks), 0.6)
    assert all(torch.equal(a, b) for a, b in zip(blocked, fast))
    scores = torch.cat([M.magnitude_scores(w, m).reshape(-1).float() for w, m in zip(weights, masks)])
    reference = M.keep_largest(scores, int(scores.numel() * 0.4 + 0.5))
    assert torch.equal(torch.cat([b.reshape(-1) for b in blocked]), reference)


@pytest.mark.parametrize(
    "shape, layout, out_dim", [((12, 100), "channels_last", 0), ((6, 20, 3, 3), "channels_last", 0),
                               ((6, 20, 3, 3), "flat", 0), ((20, 6, 3, 3), "channels_last", 1)]
)  # fmt: skip
def test_bank_masks_and_counts_equal_across_blocks(tiny_blocks, shape, layout, out_dim):
    w, alive = tied(shape, 2)
    with _native.use_engine("torch"):
        blocked = M.bank_mask(w, alive, 0.7, 8, layout, out_dim)
        counts = M.bank_nonzeros(w * blocked, 8, layout, out_dim)
        report = M.check_banks(w * blocked, 8, layout, out_dim, sparsity=0.7)
    with _native.use_engine("auto"):
        fast = M.bank_mask(w, alive, 0.7, 8, layout, out_dim)
    assert torch.equal(blocked, fast)
    assert report.balanced
    banks, tail = G.split_banks(G.to_rows(w * blocked != 0, layout, out_dim), 8)  # one block
    assert counts[0].dtype == torch.int16 and torch.equal(counts[0].long(), banks.sum(-1))
    assert (counts[1] is None) == (tail.shape[1] == 0)
    if counts[1] is not None:
        assert torch.equal(counts[1].long(), tail.sum(-1))


def test_checker_counts_equal_one_block(monkeypatch):
    torch.manual_seed(3)
    w = torch.randn(10, 70)
    w[w.abs() < 0.8] = 0
    one = M.check_banks(w, 16)
    monkeypatch.setattr(M, "BLOCK_ELEMENTS", 50)
    monkeypatch.setattr(M, "BLOCKS", 10**9)
    many = M.check_banks(w, 16)
    assert (one.balanced, one.over_budget, one.worst_bank, one.worst_nonzeros) == (
        many.balanced,
        many.over_budget,
        many.worst_bank,
        many.worst_nonzeros,
    )
    assert torch.equal(one.bank_ok, many.bank_ok)
