"""Reading any checkpoint and the one checker: inspect, export, check_banks and Prune.check agree."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pruning_tools import checkpoints
from pruning_tools.export import NotBankBalancedError, save_packed
from pruning_tools.masks import check_banks
from pruning_tools.pytorch_pruning import Prune


def uneven_row() -> torch.Tensor:
    """One row of two banks of 64 holding 4 and 2 non-zeros."""
    w = torch.zeros(1, 128)
    w[0, [1, 5, 9, 13]] = 1.0
    w[0, [70, 80]] = -2.0
    return w


def test_no_two_commands_disagree_about_one_tensor(tmp_path):
    w = uneven_row()
    path = tmp_path / "w.safetensors"
    save_file({"fc.weight": w}, str(path))
    by_checker = check_banks(w, 64).balanced  # budget from the measured sparsity: 6 of 128 -> 3 per bank
    by_inspect = checkpoints.inspect_file(path)["tensors"][0]["balanced"]
    try:
        save_packed({"fc.weight": w}, tmp_path / "p.safetensors", bank_size=64)
        by_export = True
    except NotBankBalancedError:
        by_export = False
    model = torch.nn.Linear(128, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w)
    by_pruner = Prune(model, 0, 0, 1, {"weight": 0.5}, fix_sparsity=True).check()[1]  # its mask: the zeros there
    assert by_checker is by_inspect is by_export is by_pruner is False
    # with the target it was pruned to (4 of 64), all say balanced
    assert check_banks(w, 64, sparsity=0.9375).balanced
    assert checkpoints.inspect_file(path, sparsity=0.9375)["balanced"]
    assert save_packed({"fc.weight": w}, tmp_path / "p.safetensors", specs={"fc.weight": {"sparsity": 0.9375}}).packed


def test_reading_errors_are_library_errors_naming_the_file(tmp_path):
    odd = tmp_path / "model.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"model.npz.*expected one of"):
        checkpoints.load_tensors(odd)
    for name, content in (("model.pt", b"not a checkpoint"), ("model.safetensors", b"\x00" * 3)):
        broken = tmp_path / name
        broken.write_bytes(content)
        with pytest.raises(ValueError, match=name):
            checkpoints.load_tensors(broken)


def test_nested_checkpoints_are_flattened_with_dotted_names(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"fc.weight": torch.ones(2, 2)}, "step": 3, "ema": [torch.zeros(1)]}, path)
    assert sorted(checkpoints.load_tensors(path)) == ["ema.0", "model.fc.weight"]


def test_a_packed_file_gives_each_packed_tensor_its_geometry(tmp_path):
    from pruning_tools.geometry import BankGeometry

    w = torch.zeros(128, 8)  # Conv1D-like [in, out]: banks of 4 along dim 0
    w[::4] = 1.0
    path = tmp_path / "p.safetensors"
    save_packed({"c.weight": w, "c.bias": torch.ones(8)}, path, bank_size=4, out_dims={"c.weight": 1})
    tensors, geometry = checkpoints.read_checkpoint(path)
    assert geometry == {"c.weight": BankGeometry(4, "channels_last", 1)}
    assert torch.equal(tensors["c.weight"], w)
    row = checkpoints.inspect_file(path, bank_size=64)["tensors"][1]  # sorted: c.bias, c.weight
    assert (row["name"], row["packed"], row["balanced"]) == (
        "c.weight",
        {"bank_size": 4, "layout": "channels_last", "out_dim": 1},
        True,
    )
    with pytest.raises(ValueError, match="bank_size=1 is not allowed"):
        checkpoints.inspect_file(path, bank_size=1)
