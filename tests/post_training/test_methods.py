"""Wanda and SparseGPT on single layers against the slow references of ``reference.py``; every pattern."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_tools
from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools.post_training import layers as L
from pruning_tools.post_training import sparsegpt as S
from pruning_tools.pytorch_pruning import TorchBridge

from ..fake_layers import Conv1D
from .reference import ref_banks, ref_error, ref_sparsegpt, ref_wanda_mask

# (balance, bank_size, sparsity): unstructured, 2:4, 4:8, bank 16 at 75 % with tail banks
PATTERNS = [("none", 64, 0.5), ("fix", 4, 0.5), ("fix", 8, 0.5), ("fix", 16, 0.75), ("fix", 64, 0.9375)]


def linear(d_in: int, d_out: int, dtype=torch.float64, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, d_out)).to(dtype)


def correlated_inputs(n: int, d: int, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    """Inputs with unequal scales and correlations (so Wanda and SparseGPT differ from magnitude)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d, dtype=torch.float64)
    scale = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.1
    return ((torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) * scale).to(dtype)


def ref_patterns(balance, bank_size, sparsity, row_len, width):
    return None if balance == "none" else ref_banks(row_len, width, bank_size, sparsity)


@pytest.mark.parametrize("balance, bank_size, sparsity", PATTERNS)
def test_wanda_mask_equals_reference(balance, bank_size, sparsity):
    model = linear(40, 12)  # rows of 40: bank 16 -> two full banks and a tail bank of 8
    w = model[0].weight.detach().clone()
    x = correlated_inputs(96, 40)
    spec = {"0.weight": {"sparsity": sparsity, "balance": balance, "bank_size": bank_size}}
    pruning_tools.oneshot(model, x.split(32), spec, method="wanda")
    expected = ref_wanda_mask(w, x, sparsity, ref_patterns(balance, bank_size, sparsity, 40, 40))
    assert torch.equal(model[0].weight != 0, expected)
    assert torch.equal(model[0].weight[expected], w[expected])  # no update: kept weights unchanged


@pytest.mark.parametrize("balance, bank_size, sparsity", PATTERNS)
def test_sparsegpt_equals_reference(balance, bank_size, sparsity):
    model = linear(40, 12)
    w = model[0].weight.detach().clone()
    x = correlated_inputs(96, 40)
    spec = {"0.weight": {"sparsity": sparsity, "balance": balance, "bank_size": bank_size}}
    report = pruning_tools.oneshot(model, x.split(32), spec, method="sparsegpt", block_size=16)
    keep_total = G.keep_count(w.numel(), sparsity)
    expected_w, expected_keep = ref_sparsegpt(
        w, x, ref_patterns(balance, bank_size, sparsity, 40, 40), keep_total, block=16
    )
    got = model[0].weight.detach()
    assert torch.equal(got != 0, expected_keep)
    assert torch.allclose(got, expected_w, rtol=1e-7, atol=1e-9)
    layer = report.layers["0.weight"]
    assert layer.error_after == pytest.approx(ref_error(w, got, x), rel=1e-6)
    assert layer.error_before == pytest.approx(ref_error(w, w * expected_keep, x), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("balance, bank_size, sparsity", PATTERNS)
def test_sparsegpt_budgets_zeros_and_error_below_magnitude(dtype, balance, bank_size, sparsity):
    x = correlated_inputs(256, 100, dtype)  # rows of 100: tails for banks 8, 16, 64
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = linear(100, 24, dtype)
        spec = {"0.weight": {"sparsity": sparsity, "balance": balance, "bank_size": bank_size}}
        report = pruning_tools.oneshot(model, x.split(64), spec, method=method)
        w = model[0].weight.detach()
        assert bool(torch.isfinite(w).all()) and w.dtype == dtype
        if balance == "fix":
            full, tail = M.bank_nonzeros(w, bank_size)
            budget = G.bank_budget(100, bank_size, sparsity)
            assert bool((full == budget.keep).all())  # exactly the budget (random weights: no kept zero)
            assert tail is None or bool((tail == budget.tail_keep).all())
            assert M.check_banks(w, bank_size, sparsity=sparsity).balanced
        else:
            assert int(torch.count_nonzero(w)) == G.keep_count(w.numel(), sparsity)
        assert not torch.signbit(w[w == 0]).any()  # +0.0, never -0.0
        errors[method] = report.layers["0.weight"].error_after
        assert report.layers["0.weight"].balanced
    assert errors["sparsegpt"] < errors["magnitude"]
    assert errors["sparsegpt"] < errors["wanda"]


def test_singular_and_dead_inputs_are_dampened_never_nan():
    torch.manual_seed(0)
    model = linear(16, 8, torch.float32)
    x = torch.randn(64, 4) @ torch.randn(4, 16)  # rank 4 of 16: a singular Hessian
    x[:, 3] = 0  # an input that is always zero
    report = pruning_tools.oneshot(model, [x], {"0.weight": 0.5}, method="sparsegpt", bank_size=4)
    w = model[0].weight.detach()
    assert bool(torch.isfinite(w).all()) and M.check_banks(w, 4, sparsity=0.5).balanced
    assert report.layers["0.weight"].damping == pytest.approx(0.01)
    zeros = torch.zeros(8, 16)  # every input zero: all dead, still finite
    model = linear(16, 8, torch.float32)
    pruning_tools.oneshot(model, [zeros], {"0.weight": 0.5}, method="sparsegpt", bank_size=4)
    assert bool(torch.isfinite(model[0].weight).all())


def test_failed_factorisation_raises_dampening_then_gives_up(monkeypatch):
    h = torch.eye(4)
    calls = []
    real = torch.linalg.cholesky_ex

    def failing(a, upper=False):
        calls.append(float(a[0, 0]))
        out = real(a, upper=upper)
        return out.L, torch.tensor(1) if len(calls) <= 2 else out.info

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing)
    upper, damping = S.inverse_hessian_factor(h, 0.01)
    assert damping == pytest.approx(1.0)  # 0.01 -> 0.1 -> 1.0 (two failures)
    calls.clear()
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a, upper=False: (a, torch.tensor(1)))
    with pytest.raises(RuntimeError, match="cannot be factorised"):
        S.inverse_hessian_factor(h, 0.01)


def test_share_sums_exactly():
    for total in (0, 1, 7, 1000):
        for parts in (1, 3, 7):
            bounds = [round(i * 100 / parts) for i in range(parts + 1)]
            shares = [S.share(total, b, 100) - S.share(total, a, 100) for a, b in zip(bounds, bounds[1:])]
            assert sum(shares) == total and min(shares) >= 0


def test_conv1d_of_transformers_is_banked_along_its_inputs():
    torch.manual_seed(0)
    layer = Conv1D(12, 40, weight_std=0.1, random_bias=False).double()  # weight [40 in, 12 out]
    reference = linear(40, 12)
    with torch.no_grad():
        reference[0].weight.copy_(layer.weight.T)
        reference[0].bias.copy_(layer.bias)
    x = correlated_inputs(96, 40).reshape(3, 32, 40)
    assert TorchBridge(nn.Sequential(layer)).out_dims() == {"0.weight": 1}
    for method in ("wanda", "sparsegpt"):
        a, b = nn.Sequential(Conv1D(12, 40, weight_std=0.1, random_bias=False).double()), linear(40, 12)
        a.load_state_dict(nn.Sequential(layer).state_dict())
        b.load_state_dict(reference.state_dict())
        pruning_tools.oneshot(a, list(x), {"0.weight": 0.5}, method=method, bank_size=8)
        pruning_tools.oneshot(b, list(x), {"0.weight": 0.5}, method=method, bank_size=8)
        assert torch.allclose(a[0].weight.T, b[0].weight, rtol=1e-9, atol=1e-12)
        assert M.check_banks(a[0].weight, 8, out_dim=1, sparsity=0.5).balanced


@pytest.mark.parametrize("layout", ["channels_last", "flat"])
def test_conv_patches_reproduce_the_convolution(layout):
    torch.manual_seed(0)
    for conv, shape in (
        (nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), (2, 3, 9, 8)),
        (nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect"), (2, 4, 7, 7)),
        (nn.Conv1d(3, 4, 3, stride=2), (2, 3, 11)),
        (nn.Conv3d(2, 3, 2), (1, 2, 4, 4, 4)),
    ):
        x = torch.randn(shape)
        spec = pruning_tools.config.ParamSpec(0.5, "fix", 4, layout, 0, tuple(conv.weight.shape))
        target, _ = L.describe("0.weight", "0.weight", spec, conv.weight, dict(nn.Sequential(conv).named_modules()))
        patches = L.conv_patches(conv, x, layout)  # [N * positions, D]
        y = conv(x) - conv.bias.reshape(1, -1, *[1] * (x.dim() - 2))  # [N, O, *L]
        expected = y.movedim(1, -1).reshape(-1, conv.out_channels)
        assert torch.allclose(patches @ target.matrix(conv.weight).T, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("layout", ["channels_last", "flat"])
def test_conv_layers_get_exact_bank_budgets(method, layout):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(20, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1))
    calibration = [torch.randn(4, 20, 6, 6) for _ in range(3)]
    magnitude = nn.Sequential(nn.Conv2d(20, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1))
    magnitude.load_state_dict(model.state_dict())
    spec = {"0.weight": 0.5, "2.weight": 0.75}
    report = pruning_tools.oneshot(model, calibration, spec, method=method, bank_size=8, layout=layout)
    base = pruning_tools.oneshot(magnitude, calibration, spec, method="magnitude", bank_size=8, layout=layout)
    for name, sparsity in spec.items():
        w = dict(model.named_parameters())[name]
        assert M.check_banks(w, 8, layout, sparsity=sparsity).balanced and bool(torch.isfinite(w).all())
        assert report.layers[name].sparsity == pytest.approx(base.layers[name].sparsity)
    if method == "sparsegpt":
        assert report.layers["0.weight"].error_after < base.layers["0.weight"].error_after


def test_multihead_attention_projections():
    torch.manual_seed(0)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Attention()
    x = torch.randn(3, 5, 16)
    mha = model.attn
    spec = pruning_tools.config.ParamSpec(0.5, "fix", 4, "channels_last", 0, (16, 16))
    weight = model.attn.out_proj.weight
    target, sources = L.describe(
        "attn.out_proj.weight", "attn.out_proj.weight", spec, weight, dict(model.named_modules())
    )
    attended = sources[0].features((x, x, x), {"need_weights": False}, None)  # [15, 16]
    y = attended @ mha.out_proj.weight.T + mha.out_proj.bias
    assert torch.allclose(y, model(x).reshape(-1, 16), atol=1e-6)
    calibration = [torch.randn(4, 5, 16) for _ in range(4)]
    report = pruning_tools.oneshot(model, calibration, {"attn.*weight": 0.5}, method="sparsegpt", bank_size=4)
    assert sorted(report.layers) == ["attn.in_proj_weight", "attn.out_proj.weight"]
    for name in report.layers:
        w = dict(model.named_parameters())[name]
        assert M.check_banks(w, 4, sparsity=0.5).balanced and report.layers[name].error_after < 1
    assert not mha._forward_hooks and not mha._forward_pre_hooks


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_real_tiny_gpt2(method):
    from tests.tiny_transformers import tiny_gpt2

    model = tiny_gpt2(hidden=64).eval()
    g = torch.Generator().manual_seed(0)
    calibration = [{"input_ids": torch.randint(0, 100, (4, 16), generator=g)} for _ in range(4)]
    conv1d = {"transformer.h.*.attn.c_attn.weight": 0.5, "transformer.h.*.mlp.c_*.weight": 0.5}
    with torch.no_grad():
        dense = model(**calibration[0]).logits
    report = pruning_tools.oneshot(model, calibration, conv1d, method=method, bank_size=4)
    assert report.mode == "chained blocks" and len(report.layers) == 6
    for name, layer in report.layers.items():
        w = model.get_parameter(name)
        assert layer.pattern == "2:4" and layer.balanced and M.check_banks(w, 4, out_dim=1, sparsity=0.5).balanced
        assert not M.check_banks(w, 4, sparsity=0.5).balanced  # banked along the inputs, not the outputs
    with torch.no_grad():
        assert bool(torch.isfinite(model(**calibration[0]).logits).all())
        assert not torch.equal(model(**calibration[0]).logits, dense)
