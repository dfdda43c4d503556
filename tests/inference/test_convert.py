"""to_bank_sparse / load_bank_sparse: which layers convert and why, the report, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import pruning_tools
from pruning_tools import pytorch_pruning
from pruning_tools.benchmarks.models import resnet50
from pruning_tools.cli import main
from pruning_tools.export import save_packed
from pruning_tools.inference import (
    BankSparseConv,
    BankSparseLinear,
    ConversionReport,
    convert,
    load_bank_sparse,
    to_bank_sparse,
)
from pruning_tools.masks import bank_mask
from pruning_tools.pruner import pruned_specs

from ..fake_layers import Conv1D
from .conftest import TOL

EVERY = dict(min_speedup=1e-9, min_weights=0)  # convert every bank-balanced layer
pytestmark = pytest.mark.usefixtures("fixed_rule")  # which layers the default rule converts: the same everywhere


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),  # rows of 3 input channels: no bank
        nn.ReLU(),
        nn.Conv2d(16, 128, 3, stride=2, padding=1),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1, groups=2),  # grouped: stays dense
        nn.Conv2d(128, 256, 1),
        nn.Flatten(),
        nn.Linear(256 * 16, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def pruned_cnn(sparsity: float = 0.9375):
    model = cnn()
    names = {"2.weight": {"sparsity": sparsity, "bank_size": 16}, "6.weight": sparsity, "8.weight": sparsity,
             "10.weight": {"sparsity": 0.5, "balance": "none"}}  # fmt: skip
    prune = pytorch_pruning.Prune(model, 0, 0, 1, names)
    prune.prune()
    return model.eval(), prune


def test_the_issue_example_and_the_report():
    model, prune = pruned_cnn()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    report = pruning_tools.to_bank_sparse(model, prune)  # the top-level name
    assert isinstance(report, ConversionReport)
    assert report.converted == ["2", "6", "8"]
    assert isinstance(model[2], BankSparseConv) and isinstance(model[8], BankSparseLinear)
    why = {layer.name: layer.reason for layer in report.layers}
    assert "not pruned" in why["0"] and "grouped" in why["5"] and "unstructured" in why["10"]
    text = str(report)
    assert "3 of 6 layers converted" in text and "Conv2d 3x3" in text and "bank-sparse" in text
    for layer in report.layers:
        if layer.converted:
            assert layer.expected_speedup > 1 and layer.measured_speedup is None
    with torch.no_grad():
        out = model(x)
    assert float((out - expected).abs().max() / expected.abs().max()) <= 1e-4


@pytest.mark.parametrize("source", ["prune", "state_dict", "file"])
def test_the_pruner_in_every_form(source, tmp_path):
    model, prune = pruned_cnn()
    if source == "file":
        prune.save(tmp_path / "state.safetensors")
        given = tmp_path / "state.safetensors"
    else:
        given = prune if source == "prune" else prune.state_dict()
    target = model if source == "prune" else copy.deepcopy(model)
    assert to_bank_sparse(target, given).converted == ["2", "6", "8"]


def test_a_pruner_of_another_model_is_refused():
    model, prune = pruned_cnn()
    other, _ = pruned_cnn()
    with pytest.raises(ValueError, match="another tensor than the model's.*state_dict"):
        to_bank_sparse(other, prune)
    state = prune.state_dict()
    with pytest.raises(
        ValueError, match="'2.weight' has shape \\[128, 16, 3, 3\\] in the pruner and \\[64, 16, 3, 3\\]"
    ):
        changed = cnn()
        changed[2] = nn.Conv2d(16, 64, 3)
        to_bank_sparse(changed, state)
    with pytest.raises(ValueError, match="prunes '2.weight', which is not a parameter"):
        to_bank_sparse(nn.Sequential(nn.Linear(4, 4)), state)
    with pytest.raises(TypeError, match="pruner=int"):
        to_bank_sparse(model, 3)
    with pytest.raises(ValueError, match="min_speedup=0"):
        to_bank_sparse(model, prune, min_speedup=0)
    assert isinstance(model[2], nn.Conv2d)  # nothing changed


def test_a_bad_bank_size_is_refused_before_any_layer_is_looked_at():
    model, _ = pruned_cnn()
    for bad in (1, 2.5, True, "64"):
        with pytest.raises(ValueError, match=f"bank_size={bad!r} is not allowed"):
            to_bank_sparse(model, bank_size=bad)
    assert isinstance(model[2], nn.Conv2d)  # nothing changed


def test_a_model_without_convertible_layers_is_left_alone():
    model = nn.Sequential(nn.ReLU(), nn.LayerNorm(8))
    report = to_bank_sparse(model)
    assert report.layers == [] and "no convertible layer" in str(report) and "nothing changed" in str(report)
    dense = nn.Sequential(nn.Linear(128, 256))  # no zeros at all
    report = to_bank_sparse(dense)
    assert report.converted == [] and "dense weight" in report.layers[0].reason
    assert isinstance(dense[0], nn.Linear)


def test_without_a_pruner_bank_size_and_measured_sparsity_apply():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    with torch.no_grad():
        model[0].weight.mul_(bank_mask(model[0].weight, None, 0.875, 32))
        model[1].weight.mul_(model[1].weight.abs() > 0.06)  # unstructured zeros
    report = to_bank_sparse(model, bank_size=32)
    assert report.converted == ["0"] and "not bank-balanced" in report.layers[1].reason


def test_the_rule_keeps_small_and_little_sparse_layers_dense():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512), nn.Linear(64, 64))
    prune = pytorch_pruning.Prune(model, 0, 0, 1, {"0.weight": 0.9375, "1.weight": 0.5, "2.weight": 0.9375})
    prune.prune()
    report = to_bank_sparse(model, prune)
    why = {layer.name: layer.reason for layer in report.layers}
    assert report.converted == ["0"]
    assert "too little sparsity" in why["1"] and "too small" in why["2"]


def test_measured_rule_and_whole_model_speedup(monkeypatch):
    model, prune = pruned_cnn()
    x = torch.randn(2, 3, 8, 8)
    report = to_bank_sparse(copy.deepcopy(model), prune.state_dict(), example_inputs=x, min_speedup=0.01)
    measured = [layer for layer in report.layers if layer.measured_speedup is not None]
    assert [layer.name for layer in measured] == ["2", "6", "8"] and report.measured_speedup > 0
    assert "measured" in str(report)
    # a layer measured slower stays dense; a whole model measured slower is undone
    monkeypatch.setattr(convert, "_median_ratio", lambda dense, sparse, budget: 0.5)
    target = copy.deepcopy(model)
    report = to_bank_sparse(target, prune.state_dict(), example_inputs=x, min_speedup=0.4)
    assert report.converted == [] and "undone" in report.notes[0]
    assert isinstance(target[2], nn.Conv2d) and isinstance(target[8], nn.Linear)
    report = to_bank_sparse(target, prune.state_dict(), example_inputs=x)
    assert report.converted == [] and "measured 0.50x" in report.layers[1].reason


def test_training_mode_and_batch_norm_are_kept():
    model = resnet50(width=8, num_classes=10, blocks=(1, 1, 1, 1))
    names = {n: 0.75 for n, p in model.named_parameters() if p.dim() == 4 and p.shape[1] >= 16}
    prune = pytorch_pruning.Prune(model, 0, 0, 1, names, bank_size=16)
    prune.prune()
    x = torch.randn(2, 3, 32, 32)
    for training in (True, False):
        converted = copy.deepcopy(model).train(training)
        report = to_bank_sparse(converted, prune.state_dict(), **EVERY)
        assert len(report.converted) == len(names)
        assert all(m.training == training for m in converted.modules())
        reference = copy.deepcopy(model).train(training)
        with torch.no_grad():
            torch.testing.assert_close(converted(x), reference(x), **TOL)


def test_transformers_conv1d_with_an_out_dim_1_spec():
    torch.manual_seed(3)
    model = nn.Sequential(Conv1D(192, 256), nn.GELU(), Conv1D(256, 192))
    prune = pytorch_pruning.Prune(model, 0, 0, 1, {"0.weight": 0.9375, "2.weight": 0.9375})
    prune.prune()  # the pruner banks Conv1D weights [in, out] along the input dim: out_dim=1
    assert all(spec.out_dim == 1 for spec in pruned_specs(prune).values())
    x = torch.randn(2, 5, 256)
    with torch.no_grad():
        expected = model(x)
    state = prune.state_dict()
    masked = copy.deepcopy(model)
    report = to_bank_sparse(copy.deepcopy(model), state)
    assert report.converted == ["0", "2"]
    report = to_bank_sparse(model, prune)
    assert report.converted == ["0", "2"] and isinstance(model[0], BankSparseLinear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, **TOL)
    wrong = copy.deepcopy(state)  # a spec that banks the weight along its output dim does not convert
    wrong["config"]["params"]["0.weight"]["out_dim"] = 0
    report = to_bank_sparse(masked, wrong)
    assert report.converted == ["2"] and "out_dim=0, expected 1" in report.layers[0].reason


def test_load_bank_sparse_from_an_exported_file(tmp_path):
    model, prune = pruned_cnn()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "model.packed.safetensors"
    save_packed(model, path, prune)
    fresh = cnn().eval()  # another initialisation, never pruned
    report = pruning_tools.load_bank_sparse(fresh, path)
    assert report.converted == ["2", "6", "8"]
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, **TOL)
    with pytest.raises(ValueError, match="does not fit the model: unexpected"):
        load_bank_sparse(nn.Sequential(nn.Linear(3, 3)), path)


def test_export_command_output_loads_into_a_model(tmp_path):
    model, prune = pruned_cnn()
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    prune.save(tmp_path / "state.safetensors")
    out = tmp_path / "model.packed.safetensors"
    run = CliRunner().invoke(
        main, ["export", str(tmp_path / "ckpt.pt"), str(out), "--pruner-state", str(tmp_path / "state.safetensors")]
    )
    assert run.exit_code == 0, run.output
    fresh = cnn().eval()
    assert load_bank_sparse(fresh, out).converted == ["2", "6", "8"]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), **TOL)
