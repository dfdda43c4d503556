"""Where the commands write: checked before the expensive work, never the input itself, every file
written named, a replaced file said so, the same file mode for every file of a run."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from .helpers import assert_one_line_error, invoke

REPO = Path(__file__).resolve().parents[2]
SLICE = ["--limit", "64", "--epochs", "1", "--batch-size", "32"]


def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


def written(output: str) -> dict[str, str]:
    """``{path: "wrote" or "replaced"}`` from the lines a command prints for the files it wrote."""
    lines = [line.split(" ", 1) for line in output.splitlines() if line.startswith(("wrote ", "replaced "))]
    return {rest.removesuffix(" (it existed before)"): verb for verb, rest in lines}


# ---------------------------------------------------------------- checked before the work


def test_demo_out_under_a_file_fails_before_training(tmp_path, tiny_mnist):
    result = invoke("demo", "--data", tiny_mnist, *SLICE, "--out", a_file(tmp_path) / "run")
    assert_one_line_error(result, "a_file is a file, not a directory", exit_codes=(2,))
    assert "epoch" not in result.output  # not one epoch trained


def test_demo_missing_data_fails_before_anything_is_written(tmp_path):
    result = invoke("demo", "--data", tmp_path / "nonexistent", "--out", tmp_path / "run")
    assert_one_line_error(result, "MNIST not found in", exit_codes=(2,))
    assert not (tmp_path / "run").exists()


def test_sensitivity_out_under_a_file_fails_before_training(tmp_path, tiny_mnist):
    result = invoke("sensitivity", "--data", tiny_mnist, "--out", a_file(tmp_path) / "s", "--epochs", "1")
    assert_one_line_error(result, "is a file, not a directory", exit_codes=(2,))
    assert "training" not in result.output


@pytest.mark.parametrize("option", ["--json", "--markdown"])
def test_bench_output_checked_before_the_run(option, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    for path, message in ((a_file(tmp_path) / "b.out", "is a file"), (tmp_path / "no" / "b.out", "does not exist")):
        result = invoke("bench", "--quick", option, path)
        assert_one_line_error(result, message, exit_codes=(2,))
        assert "median ms" not in result.output  # no table: nothing ran


def test_export_refuses_to_replace_its_input(tmp_path, checkpoint, pruner_state):
    before = checkpoint.read_bytes()
    assert_one_line_error(invoke("export", checkpoint, checkpoint), "replace its input", exit_codes=(2,))
    link = tmp_path / "link.safetensors"
    link.symlink_to(checkpoint)
    assert_one_line_error(invoke("export", checkpoint, link), "replace its input", exit_codes=(2,))
    result = invoke("export", checkpoint, pruner_state, "--pruner-state", pruner_state)
    assert_one_line_error(result, "is also --pruner-state", exit_codes=(2,))
    assert checkpoint.read_bytes() == before


# ---------------------------------------------------------------- every file named, replacing said


def test_export_names_its_file_and_says_when_it_replaced_one(tmp_path, checkpoint):
    out = tmp_path / "packed.safetensors"
    assert written(invoke("export", checkpoint, out).output) == {str(out): "wrote"}
    assert written(invoke("export", checkpoint, out).output) == {str(out): "replaced"}


def test_demo_names_every_file_and_what_it_replaced(tmp_path, tiny_mnist):
    out = tmp_path / "run"
    first = invoke("demo", "--data", tiny_mnist, *SLICE, "--out", out)
    assert first.exit_code == 0, first.output
    files = {str(p) for p in out.iterdir()}
    assert written(first.output) == dict.fromkeys(files, "wrote")
    second = invoke("demo", "--data", tiny_mnist, *SLICE, "--out", out)
    assert "holds 6 file(s) of an earlier run" in second.output
    assert written(second.output) == dict.fromkeys(files, "replaced")
    dense = invoke("demo", "--data", tiny_mnist, *SLICE, "--sparsity", "0", "--out", out)
    assert dense.exit_code == 0, dense.output
    assert str(out / "pruner_state.safetensors") not in written(dense.output)  # a dense run has no pruner
    assert "left from an earlier run, not rewritten by this one: pruner_state.safetensors" in dense.output


def test_the_demo_files_have_one_mode(tmp_path, tiny_mnist):
    """safetensors writes through a private temporary file: the weights came out 0600, the rest 0644."""
    out = tmp_path / "run"
    assert invoke("demo", "--data", tiny_mnist, *SLICE, "--out", out).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes


def sensitivity_model(tmp_path, monkeypatch) -> str:
    (tmp_path / "toy_outputs_model.py").write_text(
        textwrap.dedent("""
        import torch

        def build():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 64))
            x = torch.randn(16, 64)
            dense = model(x).detach()
            return model, lambda m: -float(((m(x) - dense) ** 2).mean().detach())
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_outputs_model", None)
    return "toy_outputs_model:build"


def test_sensitivity_runs_into_one_directory_say_what_they_replace(tmp_path, monkeypatch):
    """The README's two sensitivity commands shared a directory: the second replaced the first's
    results without a word."""
    model, out = sensitivity_model(tmp_path, monkeypatch), tmp_path / "s"
    common = ["sensitivity", "--model", model, "--levels", "0.5,0.9", "--out", out, "--no-progress"]
    first = invoke(*common, "--target", "0.6")
    assert first.exit_code == 0, first.output
    names = {"sensitivity.json", "sensitivity.csv", "suggestion.json", "sensitivity.png", "targets.png"}
    assert {p.name for p in out.iterdir()} == names
    assert written(first.output) == {str(out / n): "wrote" for n in names}
    second = invoke(*common)  # no suggestion asked: table and curves only
    assert second.exit_code == 0, second.output
    assert "holds 5 file(s) of an earlier run" in second.output
    assert written(second.output) == {
        str(out / n): "replaced" for n in ("sensitivity.json", "sensitivity.csv", "sensitivity.png")
    }
    assert json.loads((out / "suggestion.json").read_text())["target"] == 0.6  # the first run's, untouched


def test_sensitivity_trained_weights_are_named_and_reused(tmp_path, tiny_mnist):
    out = tmp_path / "s"
    common = ["sensitivity", "--data", tiny_mnist, "--levels", "0.5", "--score-images", "32", "--no-progress"]
    first = invoke(*common, "--epochs", "1", "--out", out)
    assert first.exit_code == 0, first.output
    assert written(first.output)[str(out / "dense.safetensors")] == "wrote"
    again = invoke(*common, "--weights", out / "dense.safetensors", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert str(tmp_path / "again" / "dense.safetensors") not in written(again.output)


def test_bench_names_its_files(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = tmp_path / "bench.md"
    result = invoke("bench", "--quick", "--rounds", "1", "--train-rounds", "1", "--markdown", path)
    assert result.exit_code == 0, result.output
    assert written(result.output) == {str(path): "wrote"}
    assert "ratios are not measurements" in path.read_text()
