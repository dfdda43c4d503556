"""The fast mask engine against a slow, obviously-correct reference, for exact equality.

Both engines are checked: the compiled kernels (``pruning_tools._native``) and the pure PyTorch
path that serves whatever the kernels do not (GPU tensors, no C compiler).

The reference walks every bank with Python loops over small tensors: it lists ``(score, index)``
pairs, sorts them by score descending then index ascending (ties to the lower index), and keeps
the first ``budget``. Scores are ``|w|`` for live weights and below every live score for weights
already pruned. Values are drawn from a small set so ties are common; fp16 and bf16 included.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pruning_tools import _native
from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools._native import mask_kernels as native

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------- reference


def ref_keep_count(n: int, sparsity: float) -> int:
    """``round(n * (1 - sparsity))``, half up."""
    return int(math.floor(n * (1.0 - sparsity) + 0.5 + 1e-9))


def ref_scores(w: torch.Tensor, mask: torch.Tensor | None) -> list[float]:
    """Flat list of scores: ``|w|`` where alive, -1 where pruned (all exact in float64)."""
    values = w.detach().double().abs().reshape(-1).tolist()
    alive = [True] * len(values) if mask is None else mask.reshape(-1).tolist()
    return [v if a else -1.0 for v, a in zip(values, alive)]


def ref_select(scores: list[float], k: int) -> list[bool]:
    """Keep the ``k`` largest scores, ties to the lower position."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = [False] * len(scores)
    for i in order[:k]:
        keep[i] = True
    return keep


def ref_row_positions(shape: tuple[int, ...], layout: str, out_dim: int) -> list[list[tuple[int, ...]]]:
    """Bank rows as lists of multi-indices into a tensor of ``shape``, by the definition."""
    if len(shape) < 2:
        return [[(i,) for i in range(shape[0])]] if shape else [[()]]
    if layout == "last_dim" and len(shape) > 2:  # rows along the last dim (of the [out, in, ...] view)
        perm = [1, 0, *range(2, len(shape))] if out_dim else list(range(len(shape)))
        prefixes = [()]
        for size in [shape[d] for d in perm[:-1]]:
            prefixes = [(*p, j) for p in prefixes for j in range(size)]

        def original(viewed):
            index = [0] * len(shape)
            for view_dim, dim in enumerate(perm):
                index[dim] = viewed[view_dim]
            return tuple(index)

        return [[original((*p, j)) for j in range(shape[perm[-1]])] for p in prefixes]
    out, inp, kernel = shape[out_dim], shape[1 - out_dim], shape[2:]

    def index(o, i, kpos):
        return (o, i, *kpos) if out_dim == 0 else (i, o, *kpos)

    kernels = [()]
    for size in kernel:
        kernels = [(*k, j) for k in kernels for j in range(size)]
    if layout == "flat" or len(shape) == 2:
        return [[index(o, i, kp) for i in range(inp) for kp in kernels] for o in range(out)]
    return [[index(o, i, kp) for i in range(inp)] for o in range(out) for kp in kernels]


def ref_bank_mask(w, mask, sparsity, bank_size, layout, out_dim):
    """Bank-balanced keep-mask, bank by bank."""
    shape = tuple(w.shape)
    flat_scores = ref_scores(w, mask)
    strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
    keep = [False] * len(flat_scores)
    k_full = max(1, ref_keep_count(bank_size, sparsity))
    for row in ref_row_positions(shape, layout, out_dim):
        flat = [sum(i * s for i, s in zip(pos, strides)) for pos in row]
        for start in range(0, len(flat), bank_size):
            bank = flat[start : start + bank_size]
            if len(bank) == bank_size:
                k = k_full
            else:
                k = min(k_full, max(1, ref_keep_count(len(bank), sparsity)))
            for j, kept in zip(bank, ref_select([flat_scores[j] for j in bank], k)):
                keep[j] = kept
    return torch.tensor(keep, dtype=torch.bool).reshape(shape)


def ref_unstructured_mask(w, mask, sparsity):
    scores = ref_scores(w, mask)
    return torch.tensor(ref_select(scores, ref_keep_count(len(scores), sparsity)), dtype=torch.bool).reshape(w.shape)


def ref_global_masks(weights, masks, sparsity):
    scores = [s for w, m in zip(weights, masks) for s in ref_scores(w, m)]
    keep = ref_select(scores, ref_keep_count(len(scores), sparsity))
    out, start = [], 0
    for w in weights:
        out.append(torch.tensor(keep[start : start + w.numel()], dtype=torch.bool).reshape(w.shape))
        start += w.numel()
    return out


@contextlib.contextmanager
def engine(name: str):
    """Run the block with the compiled kernels ("native") or with the PyTorch path only ("torch")."""
    if name == "native" and native.library() is None:
        pytest.skip("no C compiler here: the compiled kernels are not built")
    with _native.use_engine(name):
        yield


ENGINES = pytest.mark.parametrize("engine_name", ["native", "torch"])


# ---------------------------------------------------------------- strategies


@st.composite
def weights(draw, min_dims=1, max_dims=4):
    """A small tensor whose values come from a few levels (many ties), maybe with an old mask."""
    dims = draw(st.integers(min_dims, max_dims))
    shape = tuple(draw(st.lists(st.integers(1, 7 if dims <= 2 else 4), min_size=dims, max_size=dims)))
    if dims >= 2:
        shape = (shape[0], draw(st.integers(1, 70)), *shape[2:])  # rows long enough for bank tails
    dtype = draw(st.sampled_from(DTYPES))
    levels = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-levels, levels + 1, shape, generator=g).to(dtype) / 8
    if draw(st.booleans()):
        values = values + torch.randn(shape, generator=g).to(dtype) * 1e-3  # a few ties survive in fp16/bf16
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(shape, generator=g) < draw(st.floats(0.0, 1.0))
        values = values * mask  # pruned weights are zero, as the adapter leaves them
    return values, mask


sparsities = st.one_of(st.sampled_from([0.0, 0.5, 0.75, 0.9, 0.9375, 0.99]), st.floats(0.0, 0.999))


# ---------------------------------------------------------------- comparisons


@ENGINES
@settings(max_examples=150, deadline=None)
@given(
    wm=weights(min_dims=2),
    sparsity=sparsities,
    bank_size=st.sampled_from([2, 3, 4, 5, 8, 16, 64]),
    layout=st.sampled_from(["channels_last", "flat", "last_dim"]),
    transposed=st.booleans(),
)
def test_bank_mask_equals_reference(engine_name, wm, sparsity, bank_size, layout, transposed):
    w, mask = wm
    out_dim = 1 if transposed and w.dim() >= 2 else 0
    with engine(engine_name):
        got = M.bank_mask(w, mask, sparsity, bank_size, layout, out_dim)
    want = ref_bank_mask(w, mask, sparsity, bank_size, layout, out_dim)
    assert got.dtype == torch.bool and got.shape == w.shape
    assert torch.equal(got, want)


@ENGINES
@settings(max_examples=100, deadline=None)
@given(wm=weights(), sparsity=sparsities)
def test_unstructured_mask_equals_reference(engine_name, wm, sparsity):
    w, mask = wm
    with engine(engine_name):
        got = M.unstructured_mask(w, mask, sparsity)
    assert torch.equal(got, ref_unstructured_mask(w, mask, sparsity))


@ENGINES
@settings(max_examples=60, deadline=None)
@given(tensors=st.lists(weights(), min_size=1, max_size=4), sparsity=sparsities)
def test_global_masks_equal_reference(engine_name, tensors, sparsity):
    ws, ms = [w for w, _ in tensors], [m for _, m in tensors]
    with engine(engine_name):
        got = M.global_masks(ws, ms, sparsity)
    for g, r in zip(got, ref_global_masks(ws, ms, sparsity)):
        assert torch.equal(g, r)


@ENGINES
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bank_size,sparsity", [(4, 0.5), (64, 0.9375), (64, 0.9), (16, 0.75), (64, 0.5)])
def test_all_equal_weights_keep_the_first_of_each_bank(engine_name, dtype, bank_size, sparsity):
    w = torch.ones(6, 2 * bank_size + 3, dtype=dtype)
    with engine(engine_name):
        got = M.bank_mask(w, None, sparsity, bank_size)
    assert torch.equal(got, ref_bank_mask(w, None, sparsity, bank_size, "channels_last", 0))
    k = max(1, ref_keep_count(bank_size, sparsity))
    assert got[:, :k].all() and not got[:, k:bank_size].any()


@ENGINES
@pytest.mark.parametrize("dtype", DTYPES)
def test_larger_conv_tensors_equal_reference(engine_name, dtype):
    """Sizes beyond the property tests: real conv shapes with ties, once each."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randint(-6, 7, (8, 96, 3, 3), generator=g) / 4).to(dtype)
    mask = torch.rand(w.shape, generator=g) < 0.7
    w = w * mask
    with engine(engine_name):
        for layout in ("channels_last", "flat"):
            for bank_size, s in ((64, 0.9375), (4, 0.5), (32, 0.8), (64, 0.3), (100, 0.9)):
                assert torch.equal(
                    M.bank_mask(w, mask, s, bank_size, layout), ref_bank_mask(w, mask, s, bank_size, layout, 0)
                )
        assert torch.equal(M.unstructured_mask(w, mask, 0.9), ref_unstructured_mask(w, mask, 0.9))
        assert torch.equal(M.unstructured_mask(w, mask, 0.2), ref_unstructured_mask(w, mask, 0.2))


def test_compiled_kernels_serve_plain_cpu_tensors():
    """Where a C compiler exists the fast path must really be taken (or the tests above test little)."""
    if native.library() is None:
        pytest.skip("no C compiler here")
    w = torch.randn(16, 64, 3, 3)
    assert native.bank_mask(w, None, 4, 0, G.BankGeometry(64, "channels_last", 0)) is not None
    assert native.largest_masks([w], [None], 100) is not None
    assert native.bank_mask(w.to(torch.float16), w > 0, 4, 0, G.BankGeometry(64, "flat", 0)) is not None


@pytest.mark.parametrize("threads", [1, 2])
def test_large_tensors_same_masks_on_both_engines(threads):
    """Tensors large enough for the kernels' threads; few levels, so ties straddle thresholds."""
    if native.library() is None:
        pytest.skip("no C compiler here")
    g = torch.Generator().manual_seed(threads)
    w = (torch.randint(-50, 51, (64, 128, 3, 3), generator=g) / 16).float()  # 73728 weights, many ties
    smooth = torch.randn(300, 700, generator=g)  # 210000 weights, no ties
    mask = torch.rand(w.shape, generator=g) < 0.8
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cases = [
            lambda: M.bank_mask(w, mask, 0.9375, 64),
            lambda: M.bank_mask(w, None, 0.5, 4, "flat"),
            lambda: M.unstructured_mask(w, mask, 0.9),
            lambda: M.unstructured_mask(smooth, None, 0.9),
            lambda: M.global_masks([w, smooth, w.half()], [mask, None, None], 0.8),
            lambda: M.global_masks([w, smooth], [mask, None], 0.7),
        ]
        for case in cases:
            with engine("native"):
                fast = case()
            with engine("torch"):
                slow = case()
            fast, slow = (x if isinstance(x, list) else [x] for x in (fast, slow))
            assert all(torch.equal(a, b) for a, b in zip(fast, slow))
        keep = M.bank_mask(w, mask, 0.9, 16)
        applied = w.clone()
        M.apply_mask_(applied, keep)
        assert torch.equal(applied, w * keep)
    finally:
        torch.set_num_threads(saved)


def test_without_a_compiler_the_pytorch_path_serves(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PRUNING_TOOLS_CACHE", str(tmp_path))
    monkeypatch.delenv("PRUNING_TOOLS_KERNEL", raising=False)
    _native.reset()
    try:
        with pytest.warns(RuntimeWarning, match="mask_select kernel unavailable"):
            assert native.library() is None
        _native.reset()
        monkeypatch.setenv("PRUNING_TOOLS_KERNEL", "native")
        with pytest.raises(RuntimeError, match="mask_select kernel is unavailable"):
            native.library()
        monkeypatch.setenv("PRUNING_TOOLS_KERNEL", "torch")
        _native.reset()  # the variable is read at first use
        assert native.library() is None
    finally:
        monkeypatch.undo()
        _native.reset()
