"""The command line: options checked before any work, clear one-line errors for a full disk, a FIFO or
a bad --model, and a demo interrupted while it writes that leaves one run, and says so."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import SafetensorError

from pruning_tools.cli import main
from pruning_tools.demo import run_files
from pruning_tools.demo.trainer import library_notes

from .helpers import assert_one_line_error, invoke

SLICE = ["--limit", "64", "--epochs", "1", "--batch-size", "32", "--sparsity", "0.5"]


def test_sensitivity_model_that_is_not_a_function(tmp_path):
    result = invoke("sensitivity", "--model", "os:sep", "--out", tmp_path / "out")
    line = assert_one_line_error(result, "--model", exit_codes=(2,))
    assert "'os:sep' names a str, not a function" in line and "not callable" not in result.output


def test_a_prune_dict_matching_nothing_is_refused_before_the_data_and_the_banner(tmp_path):
    out = tmp_path / "out"
    result = invoke("demo", "--prune-dict", '{"nothing.weight": 0.9}', "--data", tmp_path / "no-data", "--out", out)
    assert_one_line_error(result, "--prune-dict", exit_codes=(2,))
    assert "matches no parameter" in result.output and "conv2.weight" in result.output  # the closest names
    assert "demo pytorch" not in result.output  # no banner
    assert not out.exists()  # nothing created


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_a_fifo_given_as_input_is_a_one_line_error(tmp_path, command):
    fifo = tmp_path / "in.safetensors"
    os.mkfifo(fifo)
    args = [command, fifo] if command == "inspect" else [command, fifo, tmp_path / "out.safetensors"]
    line = assert_one_line_error(invoke(*args), "is a FIFO (named pipe): expected a regular file")
    assert str(fifo) in line


def test_a_full_disk_is_a_one_line_error(tmp_path, checkpoint, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "packed.safetensors"
    line = assert_one_line_error(invoke("export", checkpoint, out), f"cannot write {out}")
    assert "No space left on device" in line


# ---------------------------------------------------------------- the demo interrupted while writing


@pytest.fixture
def earlier_run(tmp_path, tiny_mnist):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["demo", *SLICE, "--data", str(tiny_mnist), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert run_files.check_run(out) == []
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def test_interrupted_while_writing_leaves_the_earlier_run_whole(earlier_run, tiny_mnist, monkeypatch):
    out, before = earlier_run
    from pruning_tools.demo import outputs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "write_manifest", interrupted)  # every other file of the run is written by then
    result = CliRunner().invoke(main, ["demo", *SLICE, "--sparsity", "0.75", "--data", tiny_mnist, "--out", out])
    assert isinstance(result.exception, KeyboardInterrupt) or result.exit_code != 0
    assert f"interrupted while writing: {out} holds what it held before" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier run, byte for byte
    assert run_files.check_run(out) == []


def test_interrupted_while_moving_the_files_in_says_which_landed(earlier_run, tiny_mnist, monkeypatch):
    out, before = earlier_run
    real, moves = os.replace, []

    def cut(source, target):
        if Path(target).parent == out:  # a move into the output directory (not an atomic write in the staging one)
            if len(moves) == 2:
                raise KeyboardInterrupt
            moves.append(Path(target).name)
        real(source, target)

    monkeypatch.setattr(os, "replace", cut)
    result = CliRunner().invoke(main, ["demo", *SLICE, "--sparsity", "0.75", "--data", tiny_mnist, "--out", out])
    assert result.exit_code != 0
    assert f"interrupted while moving this run's files into {out}: {', '.join(moves)} landed" in result.output
    problems = run_files.check_run(out)  # the earlier manifest does not vouch for the new files
    assert problems and all(any(name in p for name in moves) for p in problems), problems
    assert json.loads((out / "results.json").read_bytes()) == json.loads(before["results.json"])
    assert not [p for p in out.iterdir() if p.name.startswith(run_files.STAGING_PREFIX)]


def test_check_run_names_what_is_missing_or_foreign(tmp_path):
    assert "no complete run" in run_files.check_run(tmp_path)[0]
    with run_files.staged_run(tmp_path, []) as staging:
        (staging / "a.bin").write_bytes(b"a")
        (staging / "b.bin").write_bytes(b"b")
        run_files.write_manifest(staging, {})
    assert run_files.check_run(tmp_path) == []
    (tmp_path / "a.bin").write_bytes(b"other run")
    (tmp_path / "b.bin").unlink()
    problems = run_files.check_run(tmp_path)
    assert any("a.bin is not the file" in p for p in problems) and any("b.bin is missing" in p for p in problems)


# ---------------------------------------------------------------- the demo's notes


def test_notes_keep_the_librarys_warnings_and_leave_the_others_to_python():
    from types import SimpleNamespace

    from pruning_tools.demo.torch_backend import SimpleCNN, TorchBackend

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # as the demo builds its pruner; rows of one channel: the pruner warns
        TorchBackend.pruner(SimpleNamespace(model=SimpleCNN()), 0, 1, 1, {"conv1.weight": 0.9})
        warnings.warn_explicit("Please import `csr_matrix` from the `scipy.sparse` namespace", DeprecationWarning,
                               "/site-packages/mxnet/numpy/__init__.py", 10)  # fmt: skip
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        notes = library_notes(caught)
    assert notes and all("conv1.weight" in note for note in notes)
    assert [str(w.message) for w in shown] == ["Please import `csr_matrix` from the `scipy.sparse` namespace"]
