import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools.config import LAYOUTS


def bank_counts_ok(w, keep, sparsity, bank_size, layout, out_dim=0):
    """Every full bank keeps exactly k, every tail bank exactly its budget (dense random input)."""
    full, tail = M.bank_nonzeros(keep, bank_size, layout, out_dim)
    budget = G.bank_budget(G.row_length(w.shape, layout, out_dim), bank_size, sparsity)
    assert full.shape[1] == budget.full_banks
    assert bool((full == budget.keep).all())
    if budget.tail_len:
        assert bool((tail == budget.tail_keep).all())
    else:
        assert tail is None


@pytest.mark.parametrize(
    "shape",
    [(10, 127), (16, 64), (3, 200), (8, 1, 3, 3), (8, 5, 3, 3), (12, 6, 1, 1), (4, 9, 5), (4, 127, 2, 2, 2), (5, 1000)],
)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.9375, 0.99])
def test_exact_budget_per_bank_and_tail_bank(shape, layout, sparsity):
    torch.manual_seed(0)
    w = torch.randn(shape)
    keep = M.bank_mask(w, None, sparsity, 64, layout)
    assert keep.shape == w.shape and keep.dtype == torch.bool
    bank_counts_ok(w, keep, sparsity, 64, layout)


def test_budget_definitions():
    assert G.bank_budget(64, 64, 0.9375) == (1, 4, 0, 0)
    assert G.bank_budget(127, 64, 0.9) == (1, 6, 63, 6)
    assert G.bank_budget(5, 64, 0.9) == (0, 6, 5, 1)  # tail only, at least 1
    assert G.bank_budget(200, 64, 0.5) == (3, 32, 8, 4)
    assert G.bank_budget(4, 4, 0.5).keep == 2
    assert G.keep_count(10, 0.25) == 8  # 7.5 rounds half up
    assert G.keep_count(64, 0.9) == 6


def test_two_four_sparsity():
    torch.manual_seed(1)
    w = torch.randn(32, 48)
    keep = M.bank_mask(w, None, 0.5, bank_size=4)
    groups = keep.reshape(32, 12, 4).sum(-1)
    assert bool((groups == 2).all())
    # the kept two are the largest two |w| of every group of four
    top2 = w.abs().reshape(32, 12, 4).topk(2, dim=-1).indices
    assert bool(keep.reshape(32, 12, 4).gather(-1, top2).all())


def test_channels_last_rows_run_along_input_channels():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # [out, in, kh, kw]
    rows = G.to_rows(w, "channels_last")
    assert rows.shape == (2 * 4, 3)
    assert torch.equal(rows[1], w[0, :, 0, 1])  # out 0, kernel position (0, 1), all input channels
    assert G.to_rows(w, "flat").shape == (2, 12)
    for layout in LAYOUTS:
        assert torch.equal(G.from_rows(G.to_rows(w, layout), w.shape, layout), w)


def test_conv_transpose_output_channels_on_dim_one():
    w = torch.randn(6, 4, 3, 3)  # ConvTranspose: [in, out, kh, kw]
    rows = G.to_rows(w, "channels_last", out_dim=1)
    assert rows.shape == (4 * 9, 6)
    assert torch.equal(rows[0], w[:, 0, 0, 0])
    for layout in LAYOUTS:
        assert torch.equal(G.from_rows(G.to_rows(w, layout, 1), w.shape, layout, 1), w)
    keep = M.bank_mask(w, None, 0.5, 4, "channels_last", out_dim=1)
    bank_counts_ok(w, keep, 0.5, 4, "channels_last", out_dim=1)


def test_keeps_largest_among_alive_and_only_shrinks():
    torch.manual_seed(2)
    w = torch.randn(8, 128)
    first = M.bank_mask(w, None, 0.5)
    w_big = w.clone()
    w_big[~first] = 100.0  # revived by an optimizer: must stay pruned
    second = M.bank_mask(w_big, first, 0.75)
    assert not bool((second & ~first).any())
    bank_counts_ok(w, second, 0.75, 64, "channels_last")


def test_alive_zero_beats_dead_weight():
    w = torch.tensor([[0.0, 5.0, 0.0, 3.0]])
    alive = torch.tensor([[True, False, True, True]])
    keep = M.bank_mask(w, alive, 0.5, bank_size=4)
    assert keep.tolist() == [[True, False, False, True]]  # 3.0 and the first alive zero


def test_ties_go_to_lower_index_deterministically():
    w = torch.ones(3, 8)
    keep = M.bank_mask(w, None, 0.5, bank_size=4)
    assert keep.tolist() == [[True, True, False, False] * 2] * 3
    w = torch.tensor([[1.0, 2.0, 2.0, 2.0, 2.0, 0.5]])
    assert M.unstructured_mask(w, None, 0.5).tolist() == [[False, True, True, True, False, False]]


def test_unstructured_exact_count():
    torch.manual_seed(3)
    for n, s in [(1000, 0.9), (999, 0.5), (7, 0.3), (12345, 0.95)]:
        w = torch.randn(n)
        keep = M.unstructured_mask(w, None, s)
        assert int(keep.sum()) == G.keep_count(n, s)
        assert float(w.abs()[keep].min()) >= float(w.abs()[~keep].max())


def test_global_one_threshold():
    torch.manual_seed(4)
    ws = [torch.randn(100, 10), torch.randn(50) * 3, torch.randn(7, 7, 2)]
    keeps = M.global_masks(ws, [None] * 3, 0.8)
    n = sum(w.numel() for w in ws)
    assert sum(int(k.sum()) for k in keeps) == G.keep_count(n, 0.8)
    kept_min = min(float(w.abs()[k].min()) for w, k in zip(ws, keeps))
    dropped_max = max(float(w.abs()[~k].max()) for w, k in zip(ws, keeps))
    assert kept_min >= dropped_max


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision(dtype):
    torch.manual_seed(5)
    w = torch.randn(16, 130).to(dtype)
    keep = M.bank_mask(w, None, 0.9)
    bank_counts_ok(w, keep, 0.9, 64, "channels_last")
    assert int(M.unstructured_mask(w, None, 0.9).sum()) == G.keep_count(w.numel(), 0.9)


def test_realised_sparsity():
    assert G.realised_sparsity((10, 128), "fix", 0.9) == pytest.approx(1 - 12 / 128)
    assert G.realised_sparsity((10, 1, 3, 3), "fix", 0.9) == 0.0  # rows of length 1
    assert G.realised_sparsity((10, 1, 3, 3), "fix", 0.9, G.BankGeometry(layout="flat")) == pytest.approx(8 / 9)
    assert G.realised_sparsity((1000,), "none", 0.9) == pytest.approx(0.9)


def test_checker_flags_unbalanced_bank_and_names_the_worst():
    torch.manual_seed(6)
    w = torch.randn(4, 128)
    w = w * M.bank_mask(w, None, 0.9375)  # 4 of 64 per bank
    report = M.check_banks(w, 64, sparsity=0.9375)
    assert report.balanced and report.budget == 4 and report.over_budget == 0 and report.banks == 8
    w[2, 64:80] = 1.0  # bank (2, 1) now holds far more than 4
    report = M.check_banks(w, 64, sparsity=0.9375)
    assert not report.balanced and report.over_budget == 1
    assert report.worst_bank == (2, 1) and report.worst_nonzeros >= 16
    assert report.bank_ok.shape == (4, 2) and not bool(report.bank_ok[2, 1])


def test_checker_infers_budget_without_sparsity():
    torch.manual_seed(7)
    w = torch.randn(32, 127)
    w = w * M.bank_mask(w, None, 0.9)
    assert M.check_banks(w).balanced
    u = torch.randn(32, 127)
    u = u * M.unstructured_mask(u, None, 0.9)
    assert not M.check_banks(u).balanced


def test_pack_bits_round_trip():
    torch.manual_seed(8)
    for shape in [(1,), (7,), (8,), (3, 5, 7), (64, 65)]:
        m = torch.rand(shape) > 0.5
        packed = M.pack_bits(m)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(m.numel() / 8)
        assert torch.equal(M.unpack_bits(packed, shape), m)


@settings(max_examples=60, deadline=None)
@given(
    out=st.integers(1, 6),
    cin=st.integers(1, 140),
    k=st.sampled_from([(), (1,), (3,), (2, 2), (1, 2, 2)]),
    bank=st.sampled_from([2, 4, 8, 16, 64]),
    sparsity=st.floats(0, 0.99),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_property_every_bank_meets_budget(out, cin, k, bank, sparsity, layout, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((out, cin, *k), generator=g)
    keep = M.bank_mask(w, None, sparsity, bank, layout)
    bank_counts_ok(w, keep, sparsity, bank, layout)
    assert M.check_banks(w * keep, bank, layout, sparsity=sparsity).balanced
    assert torch.equal(keep, M.bank_mask(w.clone(), None, sparsity, bank, layout))  # deterministic


# ---------------------------------------------------------------- the checker's arguments


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sparsity": -0.5}, ValueError, "sparsity=-0.5 is not allowed"),  # was: balanced, budget 96 of 64
        ({"sparsity": 1.0}, ValueError, "sparsity=1.0 is not allowed"),
        ({"sparsity": float("nan")}, ValueError, "sparsity=nan"),
        ({"sparsity": "0.5"}, ValueError, "sparsity='0.5'"),
        ({"layout": "bogus"}, ValueError, "layout='bogus' is not allowed: expected one of 'channels_last', 'flat'"),
        ({"bank_size": 1}, ValueError, "bank_size=1 is not allowed: expected an integer >= 2"),
        ({"bank_size": 64.5}, ValueError, "bank_size=64.5"),
        ({"bank_size": True}, ValueError, "bank_size=True"),
        ({"out_dim": 2}, ValueError, "out_dim=2 is not allowed: expected 0 or 1"),
    ],
)
def test_check_banks_validates_its_arguments(kwargs, error, message):
    w = torch.randn(8, 128)
    with pytest.raises(error, match=message.replace("[", r"\[").replace("(", r"\(")):
        M.check_banks(w, **kwargs)


def test_check_banks_takes_an_integral_float_bank_size():
    w = torch.randn(8, 128)
    a, b = M.check_banks(w, 64.0), M.check_banks(w, 64)  # what config.check_step accepts elsewhere
    assert (a.budget, a.banks, a.balanced) == (b.budget, b.banks, b.balanced) and torch.equal(a.bank_ok, b.bank_ok)


@pytest.mark.parametrize("w", [[[1.0, 0.0]], None, 3.0])
def test_check_banks_wants_a_tensor(w):
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        M.check_banks(w)


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (2, 0, 3, 3), (0,)])
def test_check_banks_of_an_empty_tensor(shape):
    report = M.check_banks(torch.zeros(shape))
    assert report.balanced and report.banks == 0 and report.over_budget == 0


@pytest.mark.parametrize(
    "kwargs, named",
    [({"bank_size": 1}, "bank_size=1"), ({"layout": "rows"}, "layout='rows'"), ({"out_dim": 2}, "out_dim=2")],
)
def test_bank_mask_refuses_a_bad_geometry_by_name(kwargs, named):
    with pytest.raises(ValueError, match=f"{named} is not allowed"):
        M.bank_mask(torch.randn(4, 8), None, 0.5, **kwargs)
