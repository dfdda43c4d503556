"""Misuses of the command line: every one is a single clear ``Error:`` line and a non-zero exit code,
never a traceback (and the expensive work is not started when an argument already says it must fail)."""

from __future__ import annotations

import importlib.util
import pickle

import pytest
import torch
from safetensors.torch import save_file

from .helpers import assert_one_line_error, balanced_weight, invoke, tampered_state


class NotATensor:  # pickled into a .pt: torch.load(weights_only=True) must refuse it
    pass


def bad_checkpoints(tmp_path, checkpoint):
    """``(path, what the error says)`` for checkpoints that cannot be read."""
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json, not tensors")
    misnamed_pt = tmp_path / "misnamed.pt"
    misnamed_pt.write_bytes(checkpoint.read_bytes())  # safetensors content, .pt name
    misnamed_st = tmp_path / "misnamed.safetensors"
    torch.save({"fc.weight": balanced_weight()}, misnamed_st)  # torch content, .safetensors name
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"x": NotATensor()}, protocol=2))
    short_pt = tmp_path / "short.pt"
    short_pt.write_bytes(b"PK\x03\x04 truncated zip")
    params = tmp_path / "bad.params"
    params.write_bytes(b"nonsense" * 4)
    cases = [
        (empty, "is not a readable safetensors file"),
        (garbage, "is not a readable safetensors file"),
        (misnamed_pt, "holds a safetensors file, but its suffix '.pt' announces a PyTorch checkpoint"),
        (misnamed_st, "holds a PyTorch checkpoint, but its suffix '.safetensors' announces a safetensors file"),
        (pickled, "not a PyTorch weights-only checkpoint"),
        (short_pt, "not a PyTorch weights-only checkpoint"),
    ]
    if importlib.util.find_spec("mxnet") is not None:
        cases.append((params, "not an MXNet .params file"))
    return cases


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_unreadable_checkpoints(command, tmp_path, checkpoint):
    for path, message in bad_checkpoints(tmp_path, checkpoint):
        args = [command, path] + ([tmp_path / "out.safetensors"] if command == "export" else [])
        line = assert_one_line_error(invoke(*args), message, exit_codes=(1,))
        assert str(path.name) in line
        assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "{ckpt}", "--sparsity", "nan"],
        ["export", "{ckpt}", "{out}", "--sparsity", "nan"],
        ["demo", "--sparsity", "nan"],
        ["demo", "--sparsity", "inf"],
        ["sensitivity", "--target", "nan"],
        ["sensitivity", "--uniform", "-inf"],
        ["sensitivity", "--max-drop", "nan"],
    ],
)
def test_nan_and_infinite_numbers_are_refused(args, tmp_path, checkpoint):
    args = [a.format(ckpt=checkpoint, out=tmp_path / "o.safetensors") for a in args]
    assert_one_line_error(invoke(*args), "is not", exit_codes=(2,))


def test_output_path_under_a_missing_directory_or_a_file(tmp_path, checkpoint):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, message in (
        (tmp_path / "missing" / "out.safetensors", "does not exist"),
        (a_file / "out.safetensors", "is a file, not a directory"),
        (tmp_path, "is a directory"),
        (tmp_path / "packed.pt", "a packed file is a .safetensors file"),  # it would be misread as torch.save's
    ):
        assert_one_line_error(invoke("export", checkpoint, out), message, exit_codes=(2,))


def test_tampered_pruner_state(tmp_path, checkpoint, pruner_state):
    """A pruner state whose settings were edited or damaged: one line naming what is wrong."""

    def setting(key, value):
        return lambda s: s["config"]["params"]["0.weight"].__setitem__(key, value)

    cases = {
        "json": (lambda s: "{not json", "is not a pruner state"),
        "params": (lambda s: s["config"].__setitem__("params", 5), "must be dicts by parameter name"),
        "no_config": (lambda s: s.pop("config"), "is not a pruner state"),
        "bank": (setting("bank_size", "x"), "['0.weight']['bank_size']='x'"),
        "layout": (setting("layout", "bogus"), "['0.weight']['layout']='bogus'"),
        "sparsity": (setting("sparsity", 7), "['0.weight']['sparsity']=7"),
        "target": (lambda s: s.__setitem__("mask_targets", {"0.weight": "abc"}), "'0.weight'"),
    }
    model = tmp_path / "weights.safetensors"
    save_file({"0.weight": balanced_weight(), "0.bias": torch.ones(8)}, str(model))
    for key, (change, message) in cases.items():
        state = tampered_state(pruner_state, tmp_path / f"{key}.safetensors", change)
        result = invoke("export", model, tmp_path / "out.safetensors", "--pruner-state", state)
        line = assert_one_line_error(result, message, exit_codes=(2,))
        assert "--pruner-state" in line, key
    edited = tampered_state(pruner_state, tmp_path / "edited.safetensors", setting("bank_size", 32), resign=False)
    result = invoke("export", model, tmp_path / "out.safetensors", "--pruner-state", edited)
    assert_one_line_error(result, "does not match its checksum", exit_codes=(2,))
    flipped = tmp_path / "flipped.safetensors"
    raw = bytearray(pruner_state.read_bytes())
    raw[20:30] = b"##########"  # inside the JSON header
    flipped.write_bytes(bytes(raw))
    result = invoke("export", model, tmp_path / "out.safetensors", "--pruner-state", flipped)
    assert_one_line_error(result, "is not a pruner state", exit_codes=(2,))


def test_sensitivity_weights_of_another_model(tmp_path, checkpoint, mnist_dir):
    result = invoke("sensitivity", "--data", mnist_dir, "--weights", checkpoint, "--out", tmp_path / "s")
    line = assert_one_line_error(result, "are not the MNIST demo CNN's weights", exit_codes=(1,))
    assert "missing: conv1.weight" in line and "fc.weight [8, 128] (the CNN's is [10, 1024])" in line
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    result = invoke("sensitivity", "--data", mnist_dir, "--weights", garbage, "--out", tmp_path / "s")
    assert_one_line_error(result, "is not a readable safetensors file", exit_codes=(1,))


def test_library_errors_are_one_line_without_control_characters():
    import click

    from pruning_tools.cli._common import library_errors

    @library_errors
    def fails():
        raise RuntimeError("first line\n\x1b[31msecond\x1b[0m line\n")

    with pytest.raises(click.ClickException) as caught:
        fails()
    assert caught.value.message == "first line; \\x1b[31msecond\\x1b[0m line"


def test_damaged_mnist_files(tmp_path, tiny_mnist):
    """A truncated gzip gave "Aborted!", a short IDX header a struct.error traceback."""
    import gzip
    import shutil

    for name, damage in (
        ("truncated", lambda raw: raw[: len(raw) // 2]),
        ("short header", lambda raw: gzip.compress(bytes([0, 0, 8, 1, 0]))),
        ("not gzip", lambda raw: b"garbage"),
    ):
        data = tmp_path / name.replace(" ", "_")
        shutil.copytree(tiny_mnist, data)
        target = data / "t10k-labels-idx1-ubyte.gz"
        target.write_bytes(damage(target.read_bytes()))
        result = invoke("demo", "--data", data, "--epochs", "1", "--out", tmp_path / "run")
        line = assert_one_line_error(result, "not a gzipped IDX file", exit_codes=(1,))
        assert str(target) in line, name
