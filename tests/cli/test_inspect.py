"""`pruning-tools inspect` on checkpoints made here: .pt, safetensors, MXNet .params."""

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from pruning_tools import bank_mask
from pruning_tools.cli import main


def tensors() -> dict[str, torch.Tensor]:
    """A bank-balanced weight (4 of every 64 kept), an unbalanced one with the same count, a bias."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 128, generator=g)
    balanced = w * bank_mask(w, None, 0.9375)  # [8, 128]: every bank of 64 keeps 4
    unbalanced = balanced.clone()
    zeros_in_bank = torch.nonzero(unbalanced[0, :64] == 0).flatten()[:2]
    unbalanced[0, zeros_in_bank] = 1.0  # row 0, bank 0 now holds 6 non-zeros ...
    kept_in_bank = torch.nonzero(unbalanced[1, 64:]).flatten()[:2]
    unbalanced[1, 64 + kept_in_bank] = 0.0  # ... row 1, bank 1 only 2: same overall sparsity
    return {"fc.weight": balanced, "bad.weight": unbalanced, "fc.bias": torch.ones(8)}


def run(*args):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def report(*args) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def by_name(rep: dict) -> dict:
    return {row["name"]: row for row in rep["tensors"]}


def check_rows(rep: dict) -> None:
    rows = by_name(rep)
    assert rows["fc.weight"]["balanced"] is True and rows["fc.weight"]["shape"] == [8, 128]
    assert rows["fc.weight"]["nonzeros"] == 8 * 2 * 4 and rows["fc.weight"]["sparsity"] == pytest.approx(0.9375)
    bad = rows["bad.weight"]
    assert bad["balanced"] is False and bad["nonzeros"] == 64 and bad["budget"] == 4
    assert bad["over_budget"] == 1 and bad["worst_bank"] == [0, 0] and bad["worst_nonzeros"] == 6
    assert rows["fc.bias"]["balanced"] is None and rows["fc.bias"]["sparsity"] == 0
    assert rep["totals"]["unbalanced"] == ["bad.weight"] and rep["balanced"] is False
    assert rep["totals"]["numel"] == 2 * 8 * 128 + 8 and rep["totals"]["nonzeros"] == 64 + 64 + 8


def test_torch_state_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tensors(), path)
    check_rows(report(path))


def test_nested_torch_checkpoint_is_flattened(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": tensors(), "epoch": 3}, path)
    assert set(by_name(report(path))) == {"model.fc.weight", "model.bad.weight", "model.fc.bias"}


def test_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(tensors(), str(path))
    check_rows(report(path))


@pytest.mark.mxnet
def test_mxnet_params(tmp_path):
    mx = pytest.importorskip("mxnet")
    path = tmp_path / "model.params"
    mx.nd.save(str(path), {name: mx.nd.array(t.numpy()) for name, t in tensors().items()})
    check_rows(report(path))


def test_mxnet_missing_gives_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "model.params"
    path.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "mxnet", None)  # import mxnet now raises ImportError
    result = run(path)
    assert result.exit_code == 1 and "needs mxnet" in result.output


def test_require_balanced_exit_code_and_match(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tensors(), path)
    failed = run(path, "--require-balanced")
    assert failed.exit_code == 1 and "not bank-balanced: bad.weight" in failed.output
    assert run(path, "--require-balanced", "--match", "fc.*").exit_code == 0
    assert run(path).exit_code == 0  # without the flag the report alone never fails


def test_explicit_sparsity_sets_the_budget(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tensors(), path)
    rows = by_name(report(path, "--sparsity", "0.96875"))  # 2 of 64 allowed: 4 is over budget
    assert rows["fc.weight"]["balanced"] is False and rows["fc.weight"]["budget"] == 2
    rows = by_name(report(path, "--bank-size", "128"))  # one bank per row: 8 per row is the budget
    assert rows["bad.weight"]["balanced"] is False and rows["fc.weight"]["balanced"] is True


def test_table_output(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tensors(), path)
    out = run(path).output
    assert "bad.weight" in out and "no (1 banks over)" in out and "total of the 3 listed" in out


def test_bad_suffix_and_bad_file(tmp_path):
    odd = tmp_path / "model.npz"
    odd.write_bytes(b"x")
    result = run(odd)
    assert result.exit_code == 2 and "'.npz'" in result.output and ".safetensors" in result.output
    broken = tmp_path / "model.pt"
    broken.write_bytes(b"not a checkpoint")
    result = run(broken)
    assert result.exit_code == 1 and "not a PyTorch weights-only checkpoint" in result.output


# ---------------------------------------------------------------- packed files, empty selections


def test_packed_file_is_read_as_what_it_encodes(tmp_path):
    """``inspect`` on an exported file checked the raw ``::values`` / ``::indices`` parts (0.74 %
    sparsity, "balanced"); it reads the dense tensors the file encodes, with the file's bank size."""
    from pruning_tools.export import save_packed

    g = torch.Generator().manual_seed(1)
    w16 = torch.randn(4, 48, generator=g)
    w16 = w16 * bank_mask(w16, None, 0.75, bank_size=16)  # bank 16: 4 of every 16 kept
    dense = tensors()
    del dense["bad.weight"]
    path = tmp_path / "model.packed.safetensors"
    save_packed({**dense, "small.weight": w16}, path, bank_size=64, specs={"small.weight": {"bank_size": 16}})
    rep = report(path, "--require-balanced")
    rows = by_name(rep)
    assert set(rows) == {"fc.weight", "fc.bias", "small.weight"}  # no '::values', no '::indices'
    assert rows["fc.weight"]["sparsity"] == pytest.approx(0.9375) and rows["fc.weight"]["packed"]["bank_size"] == 64
    assert rows["small.weight"]["packed"] == {"bank_size": 16, "layout": "channels_last", "out_dim": 0}
    assert rows["small.weight"]["budget"] == 4 and rows["small.weight"]["balanced"] is True
    assert rep["balanced"] is True and rep["totals"]["checked"] == 2
    assert "packed, bank 16" in run(path).output


def test_require_balanced_with_nothing_to_check_fails(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.pt"
    torch.save(tensors(), path)
    result = run(path, "--require-balanced", "--match", "encoder.*")
    assert result.exit_code == 1 and "--match 'encoder.*' matches none of the 3 tensors" in result.output
    assert "no tensor listed" in run(path, "--match", "encoder.*").output  # without the flag: said, exit 0
    result = run(path, "--require-balanced", "--match", "*.bias")
    assert result.exit_code == 1 and "none of the 1 listed tensors has >= 2 dims" in result.output
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    result = run(empty, "--require-balanced")
    assert result.exit_code == 1 and "holds no tensor" in result.output
    assert report(empty)["balanced"] is None and report(empty)["totals"]["sparsity"] is None


def test_totals_say_over_which_tensors_they_count(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tensors(), path)
    out = run(path, "--match", "*.weight").output
    assert "total sparsity" in out and "over the 2 tensors matching '*.weight'" in out
    assert "1-D ones included" in out
    rep = report(path, "--match", "*.weight")
    assert rep["match"] == ["*.weight"] and rep["totals"]["tensors"] == 2 and rep["tensors_in_file"] == 3


def test_transposed_weights_and_last_dim_layout(tmp_path):
    from safetensors.torch import save_file

    from pruning_tools.checkpoints import inspect_file

    g = torch.Generator().manual_seed(0)
    conv1d = torch.randn(128, 64, generator=g)  # GPT-2 Conv1D [in, out]
    conv1d = conv1d * bank_mask(conv1d, None, 0.9375, out_dim=1)  # 4 of every 64 inputs
    pos = torch.randn(1, 5, 128, generator=g)
    pos = pos * bank_mask(pos, None, 0.9375, layout="last_dim")
    path = tmp_path / "m.safetensors"
    save_file({"c_attn.weight": conv1d, "pos": pos}, str(path))
    assert run(path, "--match", "c_attn.weight", "--require-balanced").exit_code == 1  # read along outputs
    rep = report(path, "--match", "c_attn.weight", "--require-balanced", "--transposed", "c_*.weight")
    assert by_name(rep)["c_attn.weight"]["balanced"] and by_name(rep)["c_attn.weight"]["out_dim"] == 1
    assert report(path, "--match", "pos", "--layout", "last_dim")["balanced"]
    assert inspect_file(path, sparsity=0.9375, transposed=("c_attn.weight",), layout="last_dim")["balanced"]
