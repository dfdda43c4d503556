"""nn.MultiheadAttention and the nn.Transformer stacks, converted, compute what they computed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning_tools import pytorch_pruning, to_bank_sparse
from pruning_tools.inference import BankSparseLinear, BankSparseMultiheadAttention

from .conftest import TOL


def prune_all(model: nn.Module, sparsity: float = 0.9375, bank_size: int = 16) -> pytorch_pruning.Prune:
    names = [n for n, p in model.named_parameters() if p.dim() == 2]
    prune = pytorch_pruning.Prune(model, 0, 0, 1, {n: sparsity for n in names}, bank_size=bank_size)
    prune.prune()
    return prune


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 48])
def test_attention_with_masks_and_weights(path, batch_first, kdim):
    torch.manual_seed(0)
    holder = nn.ModuleDict({"attn": nn.MultiheadAttention(64, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)})
    prune = prune_all(holder)
    reference = copy.deepcopy(holder["attn"])  # the masked dense attention
    report = to_bank_sparse(holder, prune, min_speedup=1e-9, min_weights=0)
    converted = holder["attn"]
    assert report.converted == ["attn"] and isinstance(converted, BankSparseMultiheadAttention)
    n, length, source = 3, 5, 7
    kv_dim = kdim or 64
    layout = lambda s, d: (n, s, d) if batch_first else (s, n, d)  # noqa: E731
    q, k, v = torch.randn(layout(length, 64)), torch.randn(layout(source, kv_dim)), torch.randn(layout(source, kv_dim))
    padding = torch.zeros(n, source, dtype=torch.bool)
    padding[0, -2:] = True
    attn_mask = torch.randn(length, source)
    with torch.no_grad():
        for kwargs in (
            {},
            {"key_padding_mask": padding},
            {"attn_mask": attn_mask, "need_weights": False},
            {"attn_mask": attn_mask > 1.0, "key_padding_mask": padding, "average_attn_weights": False},
        ):
            out, weights = converted(q, k, v, **kwargs)
            ref_out, ref_weights = reference(q, k, v, **kwargs)
            torch.testing.assert_close(out, ref_out, **TOL)
            if ref_weights is None:
                assert weights is None
            else:
                torch.testing.assert_close(weights, ref_weights, **TOL)
        if kdim is None:  # self-attention (one fused projection), cross-attention, unbatched input
            torch.testing.assert_close(converted(q, q, q)[0], reference(q, q, q)[0], **TOL)
            m = torch.randn(layout(source, 64))
            torch.testing.assert_close(converted(q, m, m)[0], reference(q, m, m)[0], **TOL)
            u = q[0] if batch_first else q[:, 0]
            torch.testing.assert_close(converted(u, u, u)[0], reference(u, u, u)[0], **TOL)


def test_the_model_itself_is_not_swapped():
    mha = nn.MultiheadAttention(64, 4)
    report = to_bank_sparse(mha, prune_all(mha), min_speedup=1e-9, min_weights=0)
    assert report.converted == [] and "wrap it" in report.layers[0].reason


def transformer_pair(kind: str):
    torch.manual_seed(1)
    if kind == "encoder":
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, activation="gelu", batch_first=True)
        model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    else:
        layer = nn.TransformerDecoderLayer(64, 4, 128, dropout=0.0, batch_first=True, norm_first=True)
        model = nn.TransformerDecoder(layer, 2)
    prune = prune_all(model, 0.9375, 16)
    return model, prune


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("training", [False, True])
def test_transformer_stacks_in_both_modes(path, kind, training):
    model, prune = transformer_pair(kind)
    converted = copy.deepcopy(model)
    report = to_bank_sparse(converted, prune.state_dict(), min_speedup=1e-9, min_weights=0)
    assert len(report.converted) == (6 if kind == "encoder" else 8)  # per layer: attention(s), linear1, linear2
    model.train(training)
    converted.train(training)
    x = torch.randn(2, 9, 64)
    memory = torch.randn(2, 5, 64)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, -3:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(9)
    with torch.set_grad_enabled(training):
        if kind == "encoder":
            calls = [((x,), {}), ((x,), {"src_key_padding_mask": padding}), ((x,), {"mask": causal, "is_causal": True})]
        else:
            calls = [((x, memory), {}), ((x, memory), {"tgt_mask": causal, "tgt_is_causal": True})]
        for args, kwargs in calls:
            expected = model(*args, **kwargs)
            out = converted(*args, **kwargs)
            if "src_key_padding_mask" in kwargs:  # the dense encoder's nested path zeroes padded positions
                out, expected = out[~padding], expected[~padding]
            torch.testing.assert_close(out, expected, **TOL)


def test_encoder_under_compile(path):
    model, prune = transformer_pair("encoder")
    model.eval()
    converted = copy.deepcopy(model)
    to_bank_sparse(converted, prune.state_dict(), min_speedup=1e-9, min_weights=0)
    x = torch.randn(2, 9, 64)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(converted, fullgraph=True)(x), model(x), **TOL)


def test_cross_attention_projection_rows(path):
    torch.manual_seed(4)
    linear = nn.Linear(64, 192)
    prune = pytorch_pruning.Prune(linear, 0, 0, 1, {"weight": 0.75}, bank_size=16)
    prune.prune()
    sparse = BankSparseLinear.from_linear(linear, 16)
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(sparse.forward_rows(x, 64, 192), linear(x)[:, 64:], **TOL)


def test_measured_rule_on_an_encoder(monkeypatch):
    """Timing the converted encoder must not take PyTorch's fused path (it reads dense weights)."""
    from pruning_tools.inference import convert

    monkeypatch.setattr(convert, "_median_ratio", lambda dense, sparse, budget: (dense(), sparse(), 2.0)[-1])
    model, prune = transformer_pair("encoder")
    model.eval()
    x = torch.randn(1, 9, 64)
    with torch.no_grad():
        expected = model(x)
    report = to_bank_sparse(model, prune, example_inputs=x, min_speedup=0.01)
    assert report.measured_speedup == 2.0 and len(report.converted) == 6
    assert model.layers[0].activation_relu_or_gelu == 0 and "fused transformer path" in report.notes[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, **TOL)
