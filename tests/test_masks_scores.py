"""Masks chosen by a criterion's score tensor: the same budgets, tie rule and checker as by ``|w|``.

The reference is the slow one of ``test_masks_reference`` with the given scores in place of ``|w|``
(``-inf`` for weights already pruned). Non-negative scores are served by the compiled kernels too,
signed ones (movement) by the PyTorch path; both engines are checked.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pruning_tools import geometry as G
from pruning_tools import masks as M

from .test_masks_reference import ENGINES, engine, ref_keep_count, ref_row_positions, ref_select, sparsities


def ref_scored(scores: torch.Tensor, mask: torch.Tensor | None) -> list[float]:
    values = scores.double().reshape(-1).tolist()
    alive = [True] * len(values) if mask is None else mask.reshape(-1).tolist()
    return [v if a else -math.inf for v, a in zip(values, alive)]


def ref_bank_mask_scored(scores, mask, sparsity, bank_size, layout, out_dim):
    shape = tuple(scores.shape)
    flat_scores = ref_scored(scores, mask)
    strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
    keep = [False] * len(flat_scores)
    k_full = max(1, ref_keep_count(bank_size, sparsity))
    for row in ref_row_positions(shape, layout, out_dim):
        flat = [sum(i * s for i, s in zip(pos, strides)) for pos in row]
        for start in range(0, len(flat), bank_size):
            bank = flat[start : start + bank_size]
            k = k_full if len(bank) == bank_size else min(k_full, max(1, ref_keep_count(len(bank), sparsity)))
            for j, kept in zip(bank, ref_select([flat_scores[j] for j in bank], k)):
                keep[j] = kept
    return torch.tensor(keep, dtype=torch.bool).reshape(shape)


@st.composite
def scored(draw, signed):
    dims = draw(st.integers(2, 4))
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 70)), *[draw(st.integers(1, 3)) for _ in range(dims - 2)])
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    levels = draw(st.integers(1, 30))
    low = -levels if signed else 0
    scores = torch.randint(low, levels + 1, shape, generator=g).float() / 4  # many ties
    w = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < 0.7 if draw(st.booleans()) else None
    return w, scores, mask


@ENGINES
@settings(max_examples=80, deadline=None)
@given(
    data=st.booleans().flatmap(scored),
    sparsity=sparsities,
    bank_size=st.sampled_from([2, 4, 5, 8, 64]),
    layout=st.sampled_from(["channels_last", "flat"]),
)
def test_bank_mask_by_scores_equals_reference(engine_name, data, sparsity, bank_size, layout):
    w, scores, mask = data
    with engine(engine_name):
        keep = M.bank_mask(w, mask, sparsity, bank_size, layout, scores=scores)
    assert torch.equal(keep, ref_bank_mask_scored(scores, mask, sparsity, bank_size, layout, 0))
    if mask is None:
        assert M.check_banks(w * keep, bank_size, layout, sparsity=sparsity).balanced


@ENGINES
@settings(max_examples=60, deadline=None)
@given(data=st.booleans().flatmap(scored), sparsity=sparsities)
def test_unstructured_mask_by_scores_equals_reference(engine_name, data, sparsity):
    w, scores, mask = data
    with engine(engine_name):
        keep = M.unstructured_mask(w, mask, sparsity, scores=scores)
    flat = ref_scored(scores, mask)
    expected = torch.tensor(ref_select(flat, ref_keep_count(len(flat), sparsity))).reshape(w.shape)
    assert torch.equal(keep, expected)


@ENGINES
def test_global_masks_by_scores_equal_reference(engine_name):
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(4, 9, generator=g), torch.randn(7, 5, generator=g)]
    scores = [torch.randint(-3, 4, w.shape, generator=g).float() for w in weights]
    masks = [None, torch.rand(7, 5, generator=g) < 0.5]
    with engine(engine_name):
        keep = M.global_masks(weights, masks, 0.6, scores=scores)
    flat = [s for sc, m in zip(scores, masks) for s in ref_scored(sc, m)]
    expected = ref_select(flat, ref_keep_count(len(flat), 0.6))
    assert torch.equal(torch.cat([k.reshape(-1) for k in keep]), torch.tensor(expected))


def test_scores_rank_instead_of_magnitude():
    w = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # the smallest weights score highest
    assert M.bank_mask(w, None, 0.5, 4, scores=scores).tolist() == [[False, False, True, True]]
    assert M.unstructured_mask(w, None, 0.5, scores=-scores).tolist() == [[True, True, False, False]]
    assert M.compute_mask(w, None, 0.5, "none", scores=scores).tolist() == [[False, False, True, True]]


def test_dead_weights_stay_dead_below_any_live_score():
    w = torch.ones(1, 4)
    mask = torch.tensor([[False, True, True, True]])
    scores = torch.tensor([[1e30, -math.inf, -1e30, -5.0]])  # the dead one scores highest; live -inf
    keep = M.bank_mask(w, mask, 0.25, 4, scores=scores)  # keep 3 of 4: every live one
    assert keep.tolist() == [[False, True, True, True]]
    assert M.unstructured_mask(w, mask, 0.5, scores=scores).tolist() == [[False, False, True, True]]


def test_scores_must_match_the_weight():
    with pytest.raises(ValueError, match=r"scores of shape \(3,\)"):
        M.bank_mask(torch.ones(2, 4), None, 0.5, 4, scores=torch.ones(3))


def test_low_precision_scores_and_the_kernel_path_agree():
    torch.manual_seed(0)
    w = torch.randn(16, 200)
    scores = w.abs().to(torch.bfloat16)  # ties after rounding
    for layout in ("channels_last", "flat"):
        keep = M.bank_mask(w, None, 0.75, 64, layout, scores=scores)
        with engine("torch"):
            assert torch.equal(keep, M.bank_mask(w, None, 0.75, 64, layout, scores=scores))
        budget = G.bank_budget(200, 64, 0.75)
        full, tail = M.bank_nonzeros(keep, 64, layout)
        assert bool((full == budget.keep).all()) and bool((tail == budget.tail_keep).all())


def test_magnitude_scores_give_the_magnitude_mask():
    torch.manual_seed(1)
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(M.bank_mask(w, None, 0.5, 2, scores=w.abs()), M.bank_mask(w, None, 0.5, 2))
