"""Item 7 of issue 15: every file we write goes through temp file + fsync + rename; a failed write
leaves the old file intact (fault tests on each writer)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from pruning_tools import atomic, integrity
from pruning_tools.pytorch_pruning import Prune


class DiskFull(OSError):
    pass


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "notes.txt"
    atomic.write_text(target, "good\n")
    with pytest.raises(DiskFull):
        with atomic.atomic_open(target, "w") as f:
            f.write("half")
            raise DiskFull("no space left on device")
    assert target.read_text() == "good\n"
    assert leftovers(tmp_path) == []
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_fsync_then_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    atomic.write_text(tmp_path / "a.json", "{}")
    assert calls[:2] == ["fsync", "replace"]  # the data reaches the disk before the name points at it

    def failing_fsync(fd):
        raise DiskFull("EIO")

    atomic.write_text(tmp_path / "b.json", "old")
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(DiskFull):
        atomic.write_text(tmp_path / "b.json", "new")
    assert (tmp_path / "b.json").read_text() == "old" and leftovers(tmp_path) == []


def test_new_files_get_the_usual_mode_and_replacements_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic.write_text(tmp_path / "fresh.txt", "x")
    assert stat.S_IMODE((tmp_path / "fresh.txt").stat().st_mode) == 0o666 & ~umask
    (tmp_path / "private.txt").write_text("x")
    os.chmod(tmp_path / "private.txt", 0o600)
    atomic.write_text(tmp_path / "private.txt", "y")
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600


def test_bad_modes_and_directories_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mode='a'"):
        with atomic.atomic_open(tmp_path / "x", "a"):
            pass
    with pytest.raises(IsADirectoryError):
        atomic.write_text(tmp_path, "x")


def pruner():
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 8)
    prune = Prune(model, 0, 0, 1, {"weight": 0.5}, bank_size=16)
    prune.prune()
    return prune


def test_failed_pruner_save_keeps_the_previous_state_file(tmp_path, monkeypatch):
    """The reproduction: torch.save over a good state file destroyed it on a failed write."""
    prune = pruner()
    path = tmp_path / "pruner.safetensors"
    prune.save(path)
    good = path.read_bytes()
    import safetensors.numpy

    def torn_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 17)  # a torn write, then the failure
        raise DiskFull("no space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", torn_write)
    prune.prune()
    with pytest.raises(DiskFull):
        prune.save(path)
    assert path.read_bytes() == good and leftovers(tmp_path) == []
    monkeypatch.undo()
    again = Prune(torch.nn.Linear(64, 8), 0, 0, 1, {"weight": 0.5}, bank_size=16)
    again.load(path)
    assert again.step == 1


def test_save_torch_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic.save_torch({"step": 1}, path)
    real = torch.save

    def failing(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        raise DiskFull("no space left on device")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(DiskFull):
        atomic.save_torch({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1} and leftovers(tmp_path) == []


def test_packed_export_and_demo_outputs_go_through_the_atomic_writer(tmp_path, monkeypatch):
    from pruning_tools.demo.outputs import write_outputs
    from pruning_tools.export import save_packed

    prune = pruner()
    model = prune.model
    written = []
    real = atomic.atomic_path

    def spy(path):
        written.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(atomic, "atomic_path", spy)
    monkeypatch.setattr(integrity, "atomic_path", spy)
    save_packed(model.state_dict(), tmp_path / "m.packed.safetensors", bank_size=64)
    result = {
        "weights": {k: v.detach().numpy() for k, v in model.state_dict().items()},
        "pruner_state": prune.state_dict(),
        "layer_sparsity": {"weight": 0.5},
        "settings": {"bank_size": 16},
        "steps": [{"step": 1, "target": 0.5, "sparsity": 0.5}],
        "test_accuracy": 0.5,
    }
    files, _ = write_outputs(result, tmp_path / "run")
    names = {p.name for p in files.values()}
    assert "m.packed.safetensors" in written
    assert names <= set(written), names - set(written)  # weights, state, results.json and every plot
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test_accuracy"] == 0.5
    assert leftovers(tmp_path / "run") == []


def test_sensitivity_tables_are_written_atomically(tmp_path, monkeypatch):
    from pruning_tools import sensitivity

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16))
    table = sensitivity.sweep(model, lambda m: float(m[0].weight.detach().abs().sum()), levels=[0.5], progress=False)
    for name in ("t.json", "t.csv"):
        (tmp_path / name).write_text("old")

    def fail(path):
        raise DiskFull("no space left on device")  # the data is written, the flush to disk fails

    monkeypatch.setattr(atomic, "_fsync_file", fail)
    with pytest.raises(DiskFull):
        table.save_json(tmp_path / "t.json")
    with pytest.raises(DiskFull):
        table.save_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.json").read_text() == (tmp_path / "t.csv").read_text() == "old"
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    table.save_json(tmp_path / "t.json")
    assert sensitivity.SensitivityTable.load_json(tmp_path / "t.json").levels == table.levels


def test_numpy_and_torch_tensors_both_save(tmp_path):
    integrity.save_file({"a": np.zeros(3, np.float32)}, tmp_path / "n.safetensors")
    integrity.save_file({"a": torch.zeros(3)}, tmp_path / "t.safetensors")
    assert (tmp_path / "n.safetensors").read_bytes() == (tmp_path / "t.safetensors").read_bytes()


def test_safetensors_files_get_the_usual_mode_too(tmp_path):
    """safetensors writes through its own private temporary file (mode 0600) and renames it over ours:
    the demo's weights came out 0600 beside 0644 results."""
    from pruning_tools.integrity import save_file

    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "w.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    save_file({"w": np.ones(3, dtype=np.float32)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # a replaced file keeps its mode
