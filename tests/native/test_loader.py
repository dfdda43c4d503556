"""The one kernel loader: engine switch, build cache, failures (``pruning_tools._native``)."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_tools import _native
from pruning_tools.inference import BankSparseLinear
from pruning_tools.masks import bank_mask

HAVE_CC = shutil.which("cc") is not None
TOL = dict(rtol=1e-5, atol=1e-5)
BANK_SPARSE = _native.KERNELS["bank_sparse"]


@pytest.fixture(autouse=True)
def fresh_loader():
    """Every test starts and ends with nothing loaded (the environment is restored by monkeypatch)."""
    _native.reset()
    yield
    _native.reset()


def pruned_linear(out_f, in_f, sparsity, bank_size=64, seed=0):
    torch.manual_seed(seed)
    fc = nn.Linear(in_f, out_f)
    with torch.no_grad():
        fc.weight.mul_(bank_mask(fc.weight, None, sparsity, bank_size))
    return fc


def test_use_engine_overrides_the_environment_inside_the_block(monkeypatch):
    monkeypatch.setenv("PRUNING_TOOLS_KERNEL", "torch")
    assert _native.engine() == "torch"
    with _native.use_engine("auto"):
        assert _native.engine() == "auto"
        with _native.use_engine("torch"):
            assert _native.library("mask_select") is None and _native.library("bank_sparse") is None
        assert _native.engine() == "auto"
    assert _native.engine() == "torch"
    with pytest.raises(ValueError, match="engine='fast' is not allowed"):
        with _native.use_engine("fast"):
            pass


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_both_kernels_come_from_the_one_loader():
    with _native.use_engine("native"):
        for name, kernel in _native.KERNELS.items():
            lib = _native.library(name)
            assert lib is not None and lib is _native.library(name)  # loaded once
            for function in kernel.signatures:
                assert getattr(lib, function) is not None


def test_failed_build_falls_back_with_a_warning(monkeypatch, tmp_path):
    fc = pruned_linear(16, 128, 0.9)  # (its mask with the loader as it is)
    monkeypatch.setenv("PRUNING_TOOLS_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("PRUNING_TOOLS_KERNEL", "auto")
    _native.reset()
    sparse = BankSparseLinear.from_linear(fc)
    x = torch.randn(3, 128)
    with pytest.warns(RuntimeWarning, match="bank_sparse kernel unavailable, using the PyTorch path"), torch.no_grad():
        y = sparse(x)
    torch.testing.assert_close(y, F.linear(x, fc.weight, fc.bias), **TOL)
    monkeypatch.setenv("PRUNING_TOOLS_KERNEL", "native")
    _native.reset()
    with pytest.raises(_native.KernelUnavailableError):
        _native.library("bank_sparse")
    monkeypatch.setenv("PRUNING_TOOLS_KERNEL", "fast")
    _native.reset()
    with pytest.raises(ValueError, match="PRUNING_TOOLS_KERNEL='fast'"):
        _native.library("bank_sparse")
    _native.reset()


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNING_TOOLS_CACHE", str(tmp_path))
    monkeypatch.setenv("PRUNING_TOOLS_KERNEL", "native")
    _native.reset()
    assert _native.library("bank_sparse") is not None
    built = list(tmp_path.glob("bank_sparse-*.so"))
    level = _native.isa.chosen()
    flags = _native.flags_of(BANK_SPARSE)
    assert len(built) == 1 and built[0] == _native.library_path(BANK_SPARSE.source, flags, level)
    _native.reset()

    def no_compiling(*args):
        raise AssertionError("compiled again although the library is cached")

    monkeypatch.setattr(_native, "_build", no_compiling)
    assert _native.library("bank_sparse") is not None
    _native.reset()
