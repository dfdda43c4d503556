"""One build of the inference kernel per instruction-set level: detection, the override, the cache,
and every level this CPU runs against masked dense PyTorch (tolerances, never bit-exact floats)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_tools import _native
from pruning_tools._native import isa
from pruning_tools.inference import BankSparseConv, BankSparseLinear
from pruning_tools.masks import bank_mask

from ..inference.conftest import TOL, level  # noqa: F401  (the fixture)

BANK_SPARSE = _native.KERNELS["bank_sparse"]


@pytest.fixture(autouse=True)
def fresh_loader():
    _native.reset()
    yield
    _native.reset()


def pruned(module: nn.Module, keep: int, bank_size: int = 64, seed: int = 0) -> nn.Module:
    """``module`` with ``keep`` of every ``bank_size`` weights along the input channels kept."""
    torch.manual_seed(seed)
    w = module.weight.detach()
    rows = w.permute(0, 2, 3, 1).reshape(-1, w.shape[1]) if w.dim() == 4 else w
    mask = bank_mask(rows, None, 1 - keep / bank_size, bank_size)
    if w.dim() == 4:
        o, c, kh, kw = w.shape
        mask = mask.reshape(o, kh, kw, c).permute(0, 3, 1, 2)
    with torch.no_grad():
        module.weight.mul_(mask)
    return module


def test_levels_this_cpu_runs_are_named_best_first():
    levels = isa.supported()
    assert levels[-1] == "portable" and list(levels) == [lv for lv in isa.LEVELS if lv in levels]
    flags = isa.cpu_flags()
    x86 = isa.platform.machine().lower() in ("x86_64", "amd64")
    assert ("avx2" in levels) == (x86 and {"avx2", "fma"} <= flags)
    assert isa.chosen() == levels[0]


def test_override_is_validated_and_scoped(monkeypatch):
    monkeypatch.setenv("PRUNING_TOOLS_ISA", "sse9")
    _native.reset()
    with pytest.raises(ValueError, match=r"PRUNING_TOOLS_ISA='sse9' is not allowed: expected one of auto, avx512"):
        isa.chosen()
    monkeypatch.setenv("PRUNING_TOOLS_ISA", "portable")
    _native.reset()
    assert isa.chosen() == "portable"
    with isa.use_isa("auto"):
        assert isa.chosen() == isa.supported()[0]
    assert isa.chosen() == "portable"
    with pytest.raises(ValueError, match="isa='neon' is not allowed"):
        with isa.use_isa("neon"):
            pass


def test_a_level_the_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(isa, "supported", lambda: ("portable",))
    monkeypatch.setenv("PRUNING_TOOLS_ISA", "avx512")
    _native.reset()
    with pytest.raises(ValueError, match=r"PRUNING_TOOLS_ISA='avx512' is not allowed on this CPU .*: it runs portable"):
        isa.chosen()
    with pytest.raises(ValueError, match="isa='avx2' is not allowed on this CPU"):
        with isa.use_isa("avx2"):
            pass


def test_each_level_is_its_own_cached_build(level, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("PRUNING_TOOLS_CACHE", str(tmp_path))
    lib = _native.library("bank_sparse")
    built = list(tmp_path.glob(f"bank_sparse-{level}-*.so"))
    assert lib is not None and len(built) == 1
    assert built[0] == _native.library_path(BANK_SPARSE.source, _native.flags_of(BANK_SPARSE, level=level), level)
    vector = {"avx512": 16, "avx2": 8, "portable": 4}[level]
    assert f"-DVL={vector}" in _native.flags_of(BANK_SPARSE, level=level)
    assert "-march=native" not in _native.flags_of(BANK_SPARSE, level=level)
    others = [lv for lv in isa.supported() if lv != level]
    for other in others:  # the key holds the level: another level's file, never this one's
        assert _native.library_path(BANK_SPARSE.source, _native.flags_of(BANK_SPARSE, level=other), other) != built[0]


@pytest.mark.parametrize(
    "keep, in_f, out_f",
    [(4, 768, 96), (6, 3072, 40), (5, 200, 33), (64, 64, 17), (4, 130, 7), (8, 200, 33), (16, 704, 23)],
)
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 16, 17, 64, 100, 256])
def test_linear_at_every_level_equals_masked_dense(level, keep, in_f, out_f, rows):  # noqa: F811
    fc = pruned(nn.Linear(in_f, out_f), keep)
    sparse = BankSparseLinear.from_linear(fc)
    x = torch.randn(rows, in_f)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), F.linear(x, fc.weight, fc.bias), **TOL)
    assert sparse._fast is not None and sparse._fast.lib is _native.library("bank_sparse")  # this level's build


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv2d(64, 24, 3, padding=1), (2, 64, 14, 14)),
        (nn.Conv2d(128, 32, 3, stride=2, padding=1), (1, 128, 15, 15)),
        (nn.Conv2d(256, 64, 1), (2, 256, 8, 8)),  # read in place (no copy)
        (nn.Conv2d(100, 20, (1, 7), padding=(0, 3), dilation=(1, 2)), (1, 100, 5, 19)),
    ],
    ids=["3x3", "3x3 stride 2", "1x1 in place", "1x7 dilated"],
)
@pytest.mark.parametrize("memory", ["nchw", "channels_last"])
def test_conv_at_every_level_equals_masked_dense(level, conv, shape, memory):  # noqa: F811
    conv = pruned(conv, 4)
    sparse = BankSparseConv.from_conv(conv)
    x = torch.randn(shape)
    if memory == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), conv(x), **TOL)


def test_switching_levels_rebuilds_the_descriptor_and_keeps_the_threads(level):  # noqa: F811
    fc = pruned(nn.Linear(512, 256), 4)
    sparse = BankSparseLinear.from_linear(fc)
    x = torch.randn(64, 512)
    expected = F.linear(x, fc.weight, fc.bias)
    with torch.no_grad():
        _native.set_threads(1)
        try:
            for other in isa.supported():
                with _native.use_isa(other):
                    torch.testing.assert_close(sparse(x), expected, **TOL)
                    assert sparse._fast is not None and sparse._fast.lib is _native.library("bank_sparse")
            torch.testing.assert_close(sparse(x), expected, **TOL)
        finally:
            _native.set_threads(0)


def test_a_module_called_under_another_level_runs_that_levels_build():
    """The descriptor holds a build's entry points: a layer first called under one level and then under
    another must run the other's build (``benchmarks/isa.py`` once measured one build under every name)."""
    levels = isa.supported()
    if len(levels) < 2:
        pytest.skip(f"this CPU runs one level only ({levels[0]})")
    fc = pruned(nn.Linear(128, 32), 4)
    sparse = BankSparseLinear.from_linear(fc)
    x = torch.randn(1, 128)
    seen = []
    with _native.use_engine("native"):
        for level in (*levels, levels[0]):
            with isa.use_isa(level):
                with torch.no_grad():
                    torch.testing.assert_close(sparse(x), F.linear(x, fc.weight, fc.bias), **TOL)
                assert sparse._fast is not None and sparse._fast.lib is _native.library("bank_sparse"), level
                seen.append(sparse._fast.described.linear)
    assert len({id(f) for f in seen[:-1]}) == len(levels)  # each level's own build's entry point
    assert seen[-1] is seen[0]  # and the first level's again when it is back in force
