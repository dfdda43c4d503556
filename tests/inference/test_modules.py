"""BankSparseLinear / BankSparseConv1x1 equal the masked dense layers, on the C kernel and the fallback."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pruning_tools import _native
from pruning_tools.export import NotBankBalancedError, save_packed
from pruning_tools.inference import BankSparseConv1x1, BankSparseLinear, to_bank_sparse
from pruning_tools.masks import bank_mask

HAVE_CC = shutil.which("cc") is not None
PATHS = [pytest.param("native", marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler")), "torch"]
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(params=PATHS)
def path(request):
    """Run the test on the C kernel ("native": it must build) and on the PyTorch fallback."""
    with _native.use_engine(request.param):
        yield request.param


def pruned_linear(out_f, in_f, sparsity, bank_size=64, bias=True, seed=0):
    torch.manual_seed(seed)
    fc = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        fc.weight.mul_(bank_mask(fc.weight, None, sparsity, bank_size))
    return fc


@pytest.mark.parametrize(
    "out_f, in_f, bank_size",
    [
        (64, 256, 64),
        (10, 100, 64),
        (33, 70, 64),
        (5, 3, 64),
        (17, 193, 64),
        (40, 96, 16),
        (24, 48, 4),
        (9, 400, 200),
        (6, 700, 300),  # int16 indices: the fallback serves them on both paths
    ],
)
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.9375])
def test_equals_masked_dense_linear(path, out_f, in_f, bank_size, sparsity):
    fc = pruned_linear(out_f, in_f, sparsity, bank_size, bias=out_f % 2 == 0)
    sparse = BankSparseLinear.from_linear(fc, bank_size)
    with torch.no_grad():
        for batch in (1, 2, 7, 8, 9, 16, 33, 64, 100):
            x = torch.randn(batch, in_f)
            torch.testing.assert_close(sparse(x), F.linear(x, fc.weight, fc.bias), **TOL)


def test_kernel_path_is_taken_and_equals_fallback(path):
    fc = pruned_linear(128, 640, 0.9375)
    sparse = BankSparseLinear.from_linear(fc)
    x = torch.randn(3, 5, 640)  # leading dims are kept
    with torch.no_grad():
        y = sparse(x)
    assert y.shape == (3, 5, 128)
    assert (_native.library("bank_sparse") is not None) == (path == "native")
    sparse._columns = None
    torch.testing.assert_close(y, sparse._gather(x.reshape(-1, 640)).reshape(3, 5, 128), **TOL)


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_shared_work_with_a_fixed_team(monkeypatch):
    """Products large enough for an OpenMP team (the default may pick one thread on a busy machine)."""
    monkeypatch.setenv("PRUNING_TOOLS_KERNEL", "native")
    fc = pruned_linear(512, 1000, 0.9)  # 512 rows x 16 banks x 6 (+ tail 40 keeps 4)
    sparse = BankSparseLinear.from_linear(fc)
    try:
        for threads in (2, 3):
            _native.set_threads(threads)
            with torch.no_grad():
                for batch in (1, 5, 64, 70):
                    x = torch.randn(batch, 1000)
                    torch.testing.assert_close(sparse(x), F.linear(x, fc.weight, fc.bias), **TOL)
    finally:
        _native.set_threads(0)
    with pytest.raises(ValueError, match="n=-1"):
        _native.set_threads(-1)


def test_gradient_through_input_and_other_dtypes_use_the_fallback(path):
    fc = pruned_linear(32, 128, 0.9).double()
    sparse = BankSparseLinear.from_linear(fc)
    x = torch.randn(4, 128, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    sparse(x).pow(2).sum().backward()
    F.linear(x_ref, fc.weight, fc.bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_empty_batch(path):
    sparse = BankSparseLinear.from_linear(pruned_linear(8, 64, 0.5))
    assert sparse(torch.randn(0, 64)).shape == (0, 8)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv2d(96, 40, 1), (2, 96, 5, 7)),
        (nn.Conv2d(64, 16, 1, stride=2, bias=False), (3, 64, 9, 8)),
        (nn.Conv1d(80, 24, 1), (2, 80, 11)),
        (nn.Conv3d(64, 8, 1), (1, 64, 2, 3, 4)),
    ],
)
def test_pointwise_conv_equals_masked_dense_conv(path, conv, shape):
    torch.manual_seed(1)
    with torch.no_grad():
        conv.weight.mul_(bank_mask(conv.weight, None, 0.9, 16))
    sparse = BankSparseConv1x1.from_conv(conv, bank_size=16)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), conv(x), **TOL)


def test_from_packed_file_and_whole_model(path, tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    with torch.no_grad():
        for m in (model[0], model[3]):
            m.weight.mul_(bank_mask(m.weight, None, 0.9375))
    x = torch.randn(5, 64, 2, 2)
    with torch.no_grad():
        expected = model(x)
    save_packed(model.state_dict(), tmp_path / "m.safetensors")
    from_file = BankSparseLinear.from_file(tmp_path / "m.safetensors", "3")
    h = torch.relu(model[0](x)).flatten(1)
    with torch.no_grad():
        torch.testing.assert_close(from_file(h), model[3](h), **TOL)
    with pytest.raises(KeyError, match="'5'"):
        BankSparseLinear.from_file(tmp_path / "m.safetensors", "5")  # dense layer: not packed
    assert to_bank_sparse(model) == ["0", "3"]
    assert isinstance(model[0], BankSparseConv1x1) and isinstance(model[3], BankSparseLinear)
    assert isinstance(model[5], nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, **TOL)


def test_bad_inputs_are_named():
    fc = pruned_linear(8, 64, 0.5)
    sparse = BankSparseLinear.from_linear(fc)
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 64\]"):
        sparse(torch.randn(2, 65))
    with pytest.raises(TypeError, match="linear=Conv2d"):
        BankSparseLinear.from_linear(nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="bias of shape"):
        BankSparseLinear(sparse.packed(), torch.zeros(3))
    with pytest.raises(ValueError, match="1x1"):
        BankSparseConv1x1.from_conv(nn.Conv2d(8, 8, 3))
    dense_random = nn.Linear(128, 16)
    with torch.no_grad():
        dense_random.weight.mul_(dense_random.weight.abs() > 0.07)  # unstructured zeros
    with pytest.raises(NotBankBalancedError, match="weight"):
        BankSparseLinear.from_linear(dense_random)


@settings(max_examples=25, deadline=None)
@given(
    out_f=st.integers(1, 40),
    in_f=st.integers(1, 300),
    bank_size=st.sampled_from([4, 8, 16, 64, 128]),
    sparsity=st.sampled_from([0.25, 0.5, 0.75, 0.9, 0.95]),
    batch=st.integers(1, 70),
    seed=st.integers(0, 999),
)
def test_random_layers_equal_masked_dense(out_f, in_f, bank_size, sparsity, batch, seed):
    fc = pruned_linear(out_f, in_f, sparsity, bank_size, bias=seed % 2 == 0, seed=seed)
    sparse = BankSparseLinear.from_linear(fc, bank_size)
    x = torch.randn(batch, in_f)
    with torch.no_grad():
        expected = F.linear(x, fc.weight, fc.bias)
        torch.testing.assert_close(sparse(x), expected, **TOL)  # C kernel where it builds
        torch.testing.assert_close(sparse._gather(x), expected, **TOL)  # fallback
