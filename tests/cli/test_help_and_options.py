"""What a newcomer meets first: ``--help`` without importing torch, the same option spelled the same
way (and checked the same way) in every command, old spellings still accepted but not advertised,
the licence and the original tool named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from pruning_tools.cli import COMMANDS, main
from pruning_tools.cli._common import Fraction

from .helpers import invoke

REPO = Path(__file__).resolve().parents[2]


def commands() -> dict[str, click.Command]:
    ctx = click.Context(main)
    return {name: main.get_command(ctx, name) for name in COMMANDS}


@pytest.mark.parametrize("args", [[], *([name] for name in COMMANDS)], ids=lambda a: " ".join(a) or "main")
def test_help_imports_no_torch(args):
    """``pruning-tools --help`` took about 5 s: it imported torch. No help screen needs it."""
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom pruning_tools.cli import main\n"
        f"result = CliRunner().invoke(main, {[*args, '--help']!r})\n"
        "assert result.exit_code == 0, result.output\nprint(sorted(m for m in ('torch', 'numpy', 'safetensors') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_same_option_same_checks_everywhere():
    seen: dict[str, tuple[str, type]] = {}
    for name, command in commands().items():
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            key = param.opts[0]
            if key in ("--json", "--out", "--epochs", "--threads", "--sparsity"):  # meaning differs by command
                continue
            kind = type(param.type)
            if key in seen:
                assert seen[key][1] is kind, (key, name, seen[key])
            seen[key] = (name, kind)
    for name, command in commands().items():
        for param in command.params:
            if param.opts[0] == "--bank-size":
                assert isinstance(param.type, click.IntRange) and param.type.min == 2, name
            if param.opts[0] in ("--sparsity", "--target", "--uniform"):
                assert isinstance(param.type, Fraction), (name, param.opts)


def test_mnist_directory_is_data_everywhere_with_the_old_spelling_hidden(tmp_path):
    for name in ("demo", "sensitivity"):
        data = next(p for p in commands()[name].params if p.name == "data_dir")
        assert data.opts == ["--data", "--data-dir"], name
        help_text = invoke(name, "--help").output
        assert "--data DIRECTORY" in help_text and "--data-dir" not in help_text
        old = invoke(name, "--data-dir", tmp_path / "nothing", "--out", tmp_path / "o")
        assert old.exit_code == 2 and "MNIST not found in" in old.output  # still read, as --data
        a_file = tmp_path / "a_file"
        a_file.write_text("x")
        error = invoke(name, "--data-dir", a_file).output
        assert "Invalid value for '--data':" in error and "--data-dir" not in error


def test_licence_file_is_the_apache_2_text():
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()


def test_readme_names_the_original_tool():
    readme = (REPO / "README.md").read_text()
    assert "Pruning Tools by Moffett AI" in readme and "github.com/jiacliu09/pruningTools2" in readme


def test_readme_commands_name_files_that_exist_after_the_demo():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert "model.pt" not in block
    for line in block.splitlines():
        if line.startswith("pruning-tools inspect"):
            assert line.split()[2].startswith(("runs/demo/", "runs/demo95/")), line
