"""The deploy path does each thing once: a packed tensor made in this process is validated once, and
``load_bank_sparse`` rebuilds a dense weight only for a layer that stays dense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_tools
from pruning_tools import export as E
from pruning_tools.inference import convert as C
from pruning_tools.masks import bank_mask


def pruned_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(bank_mask(m.weight, None, 0.9375))
    return model


def count_validations(monkeypatch) -> list[str]:
    seen: list[str] = []
    validate = E._validate_packed

    def counted(p, where):
        seen.append(where)
        return validate(p, where)

    monkeypatch.setattr(E, "_validate_packed", counted)
    return seen


def test_a_packed_tensor_made_here_is_validated_once(monkeypatch):
    model, x = pruned_model(), torch.randn(4, 256)
    with torch.no_grad():
        expected = model(x)
    seen = count_validations(monkeypatch)
    report = pruning_tools.to_bank_sparse(model, bank_size=64, min_speedup=1e-9, min_weights=0)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert len(report.converted) == 3
    assert len(seen) == len(report.converted), seen  # pack() made them; the operators check each once


def test_a_packed_tensor_changed_after_its_check_is_checked_again():
    w = torch.randn(8, 64)
    p = E.pack(w * bank_mask(w, None, 0.75), 64)
    E.check_packed(p)  # made valid: passes without work
    with torch.no_grad():
        p.indices[0, 0, 0] = 200  # outside the bank: the version counter moves
    with pytest.raises(ValueError, match="indices holds 200"):
        E.check_packed(p)
    p.indices = E.pack(w * bank_mask(w, None, 0.75), 64).indices.clone()  # another tensor: checked anew
    assert not p.unchanged_since_checked()
    E.check_packed(p)
    assert p.unchanged_since_checked()


def test_load_bank_sparse_rebuilds_dense_weights_only_where_layers_stay_dense(tmp_path, monkeypatch):
    model, x = pruned_model(), torch.randn(4, 256)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "m.safetensors"
    E.save_packed(model, path, bank_size=64)
    unpacked: list[tuple[int, ...]] = []
    unpack = C.unpack

    def counted(p):
        unpacked.append(tuple(p.shape))
        return unpack(p)

    monkeypatch.setattr(C, "unpack", counted)
    fresh = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8))
    report = pruning_tools.load_bank_sparse(fresh, path, min_weights=20000, min_speedup=1e-9)
    assert report.converted == ["0", "2"]  # the [8, 256] layer is below min_weights: it stays dense
    assert unpacked == [(8, 256)]  # only that one was rebuilt dense
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, rtol=1e-4, atol=1e-5)
