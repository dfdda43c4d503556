"""A converted layer computes from the memory its buffers hold now, whatever swapped it.

Every way PyTorch offers to put other memory under a buffer (``share_memory()``, ``.data =``,
``set_()``, ``load_state_dict(assign=True)``, ``to()`` / ``half()`` round trips, buffer reassignment,
``torch.utils.swap_tensors``), after a first forward has cached the kernel's descriptor, eager and
``torch.jit.trace``d: the next forward equals the dense product of the buffers as they are, and
indices put there unchecked are refused before the kernel reads them. Run under AddressSanitizer too
(``scripts/test.sh``), where reading freed memory aborts.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
import torch.nn.functional as F

from pruning_tools.export import PackedTensor, unpack
from pruning_tools.inference import ops
from pruning_tools.inference.modules import BankSparseConv, BankSparseLinear
from pruning_tools.masks import bank_mask

from .conftest import TOL

PARTS = ("values", "indices", "tail_values", "tail_indices", "bias")


def _linear() -> BankSparseLinear:
    torch.manual_seed(0)
    fc = torch.nn.Linear(100, 24)  # rows of 100: a full bank of 64 and a tail bank of 36
    with torch.no_grad():
        fc.weight.mul_(bank_mask(fc.weight, None, 0.75, bank_size=64))
    return BankSparseLinear.from_linear(fc)


def _conv() -> BankSparseConv:
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(80, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(bank_mask(conv.weight, None, 0.75, bank_size=64))
    return BankSparseConv.from_conv(conv)


LAYERS = {"linear": (_linear, (6, 100)), "conv": (_conv, (2, 80, 5, 5))}


def _dense(module, x, holder=None):
    """What the module must compute: the dense layer of the buffers ``holder`` (the module, or the
    traced model made of it) holds now."""
    state = (holder or module).state_dict()
    packed = PackedTensor(*(state[p] for p in PARTS[:4]), module.weight_shape, module.bank_size, module.layout)
    w, b = unpack(packed).to(x), state["bias"].to(x)
    return F.linear(x, w, b) if isinstance(module, BankSparseLinear) else F.conv2d(x, w, b, padding=1)


def _fresh(module, part):
    """A copy of buffer ``part`` in new memory, its values changed where that is harmless."""
    t = getattr(module, part)
    return t.clone() * 2 if t.is_floating_point() else t.clone()


def share_memory(m):
    m.share_memory()


def data_assign(m):
    for part in PARTS:
        getattr(m, part).data = _fresh(m, part)


def set_storage(m):
    for part in PARTS:
        getattr(m, part).set_(_fresh(m, part))


def load_assign(m):
    state = {name: (t.clone() * 3 if t.is_floating_point() else t.clone()) for name, t in m.state_dict().items()}
    m.load_state_dict(state, assign=True)


def double_round_trip(m):
    m.to(torch.float64).to(torch.float32)


def half_round_trip(m):
    m.half().float()


def buffer_reassigned(m):
    for part in PARTS:
        setattr(m, part, _fresh(m, part))


def swap_tensors(m):
    for part in PARTS:
        torch.utils.swap_tensors(getattr(m, part), _fresh(m, part))


def values_in_place(m):
    with torch.no_grad():
        m.values.mul_(-1)  # same memory: the kernel reads the new values without a new check


def apply_clone(m):
    m._apply(lambda t: t.clone())


SWAPS = [share_memory, data_assign, set_storage, load_assign, double_round_trip, half_round_trip, buffer_reassigned,
         swap_tensors, values_in_place, apply_clone]  # fmt: skip
TRACED_SWAPS = [f for f in SWAPS if f is not swap_tensors]  # PyTorch refuses it: the traced graph holds the tensors


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("swap", SWAPS, ids=lambda f: f.__name__)
def test_swapped_storage_is_what_the_next_forward_reads(path, layer, swap):
    make, shape = LAYERS[layer]
    m = make()
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _dense(m, x), **TOL)  # the descriptor is cached now
        swap(m)
        gc.collect()  # the old storages are freed here unless something still holds them
        torch.testing.assert_close(m(x), _dense(m, x), **TOL)
        torch.testing.assert_close(m(x), _dense(m, x), **TOL)  # and the new descriptor is reused


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("swap", TRACED_SWAPS, ids=lambda f: f.__name__)
def test_traced_model_reads_the_swapped_storage(path, layer, swap):
    make, shape = LAYERS[layer]
    m = make()
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the shape checks
        traced = torch.jit.trace(m, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), _dense(m, x), **TOL)
        swap(traced)
        gc.collect()
        torch.testing.assert_close(traced(x), _dense(m, x, traced), **TOL)


@pytest.mark.parametrize("how", ["data", "set_", "swap_tensors"])
@pytest.mark.parametrize("part", ["indices", "tail_indices"])
def test_unchecked_indices_swapped_in_are_refused(path, part, how):
    m = _linear()
    x = torch.randn(3, 100)
    with torch.no_grad():
        m(x)
        bad = getattr(m, part).clone()
        bad.view(-1)[0] = 250  # outside every bank: what the kernel must never read with
        t = getattr(m, part)
        if how == "data":
            t.data = bad
        elif how == "set_":
            t.set_(bad)
        else:
            torch.utils.swap_tensors(t, bad)
        with pytest.raises(ValueError, match="indices"):
            m(x)


def test_an_address_freed_and_reused_is_not_taken_for_the_checked_memory(path):
    """Two swaps without a forward between them: the second storage could land at the address the
    first check saw, with the same sizes and version; the check holds that storage, so it cannot."""
    m = _linear()
    x = torch.randn(3, 100)
    with torch.no_grad():
        m(x)
        checked_address = m.indices.data_ptr()
        for _ in range(50):
            m.indices.data = m.indices.clone()
            bad = torch.full_like(m.indices, 200)
            if bad.data_ptr() == checked_address:
                pytest.fail("a new tensor took the address of memory the cache still vouches for")
            m.indices.data = bad
            with pytest.raises(ValueError, match="indices"):
                m(x)
            m.indices.data = m.indices.clone().fill_(0)


def test_operator_cache_follows_storage_too(path):
    """``ops.checked`` (what traced, compiled and exported models call) re-checks a swapped storage."""
    m = _linear()
    parts = [getattr(m, p) for p in PARTS]
    first = ops.checked(*parts, m.bank_size, m.row_len)
    m.values.data = m.values.clone()
    second = ops.checked(*parts, m.bank_size, m.row_len)
    if first is not None:  # the kernel serves it: its descriptor points at the new memory
        assert second is not None and second.weight.values == m.values.data_ptr()
    assert ops.checked(*parts, m.bank_size, m.row_len) is second  # unchanged: remembered


NOT_FLOATING = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]


@pytest.mark.parametrize("dtype", NOT_FLOATING, ids=lambda d: str(d)[len("torch.") :])
@pytest.mark.parametrize("layer", LAYERS)
def test_non_floating_input_is_refused_as_by_the_dense_layer(path, layer, dtype):
    make, shape = LAYERS[layer]
    m = make()
    x = torch.ones(*shape, dtype=dtype)
    with pytest.raises(TypeError, match=f"dtype {dtype}"):
        m(x)
    if isinstance(m, BankSparseLinear):
        with pytest.raises(TypeError, match=f"dtype {dtype}"):
            m.forward_rows(x, 0, 4)
