"""Text read from a file (tensor names, paths) reaches the terminal as plain, visible characters: no
rich markup is interpreted, no control character (ANSI colours, OSC titles, bidi overrides) is
written raw. And output that does not go to a terminal is never cut at a width."""

from __future__ import annotations

import json
import re
import sys
import textwrap

from safetensors.torch import save_file

from .helpers import assert_one_line_error, balanced_weight, invoke

EVIL = {
    "x[/bold]": "x\\[/bold]",  # unmatched closing tag: crashed rich
    "[green]yes[/green]": "\\[green]yes\\[/green]",  # would fake a 'balanced' cell
    "\x1b]0;pwned\x07title": "\\x1b]0;pwned\\x07title",  # OSC: sets the terminal's title
    "\x1b[31mred\x1b[0m": "\\x1b[31mred\\x1b[0m",  # ANSI colour
    "abc\u202edcba": "abc\\u202edcba",  # right-to-left override
    "two\nlines": "two\\nlines",
}
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def evil_checkpoint(tmp_path, balanced=True):
    tensors = {name: balanced_weight(seed=i) for i, name in enumerate(EVIL)}
    if not balanced:
        w = tensors["[green]yes[/green]"]
        w[0, :8] = 1.0  # bank 0 of row 0: 8 non-zeros, over its budget
    path = tmp_path / "evil[bold].safetensors"
    save_file(tensors, str(path))
    return path


def assert_safe(output: str) -> None:
    assert not RAW_CONTROL.search(output), repr(output)


def test_inspect_table_shows_names_verbatim(tmp_path):
    result = invoke("inspect", evil_checkpoint(tmp_path))
    assert result.exit_code == 0, result.output
    assert_safe(result.output)
    for shown in ("x[/bold]", "[green]yes[/green]", "\\x1b]0;pwned\\x07title", "\\x1b[31mred\\x1b[0m", "two\\nlines"):
        assert shown in result.output, shown
    assert "evil[bold].safetensors" in result.output  # the path in the title too


def test_inspect_require_balanced_names_the_tensor_safely(tmp_path):
    result = invoke("inspect", evil_checkpoint(tmp_path, balanced=False), "--require-balanced")
    assert result.exit_code == 1
    assert_safe(result.output)
    assert "not bank-balanced: [green]yes[/green]" in result.output


def test_inspect_json_escapes_control_characters(tmp_path):
    result = invoke("inspect", evil_checkpoint(tmp_path), "--json")
    assert result.exit_code == 0
    assert_safe(result.output)
    assert set(EVIL) == {row["name"] for row in json.loads(result.output)["tensors"]}  # the names themselves


def test_export_table_and_errors(tmp_path):
    out = tmp_path / "packed.safetensors"
    result = invoke("export", evil_checkpoint(tmp_path), out)
    assert result.exit_code == 0, result.output
    assert_safe(result.output)
    assert "x[/bold]" in result.output and "\\x1b[31mred\\x1b[0m" in result.output
    failed = invoke("export", evil_checkpoint(tmp_path, balanced=False), tmp_path / "again.safetensors")
    line = assert_one_line_error(failed, "is not bank-balanced", exit_codes=(1,))
    assert_safe(failed.output)
    assert "[green]yes[/green]" in line


def test_printable_and_shown():
    from pruning_tools.cli._common import printable, shown

    for raw, expected in EVIL.items():
        assert shown(raw) == expected
    assert printable("[b]\x1b\x9b\u2028") == "[b]\\x1b\\x9b\\u2028"
    assert printable("naïve 名前 ✓") == "naïve 名前 ✓"  # only control characters are rewritten


def test_piped_output_is_not_cut(tmp_path):
    """Not a terminal (CliRunner, a pipe, a file): full names, full paths, full numbers."""
    name = "encoder." + ".".join(f"block{i}" for i in range(40)) + ".weight"  # ~300 characters
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "model.safetensors"
    save_file({name: balanced_weight()}, str(path))
    result = invoke("inspect", path)
    assert result.exit_code == 0
    assert name in result.output and str(path) in result.output
    out = deep / "packed.safetensors"
    result = invoke("export", path, out)
    assert result.exit_code == 0 and name in result.output and f"wrote {out}" in result.output


def test_piped_sensitivity_table_keeps_whole_values(tmp_path, monkeypatch):
    (tmp_path / "wide_sensitivity_model.py").write_text(
        textwrap.dedent("""
        import torch

        def build():
            torch.manual_seed(0)
            model = torch.nn.Sequential()
            model.add_module("a_rather_long_module_name_" * 4, torch.nn.Linear(64, 64))
            x = torch.randn(16, 64)
            dense = model(x).detach()
            return model, lambda m: -float(((m(x) - dense) ** 2).mean().detach())
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("wide_sensitivity_model", None)
    levels = "0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95,0.98"
    result = invoke(
        "sensitivity", "--model", "wide_sensitivity_model:build", "--levels", levels, "--out", tmp_path, "--no-progress"
    )
    assert result.exit_code == 0, result.output
    assert "a_rather_long_module_name_" * 4 + ".weight" in result.output
    table = json.loads((tmp_path / "sensitivity.json").read_text())
    for score in table["scores"][0]:
        assert f"{score:.4f}" in result.output  # e.g. -0.0213, never -0.02…
    assert "…" not in result.output


def test_terminal_keeps_its_width(monkeypatch):
    from rich.console import Console

    from pruning_tools.cli._common import console

    assert console().width == 100_000  # the tests do not run in a terminal
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    monkeypatch.setenv("COLUMNS", "90")
    assert console().width == 90


def test_names_in_a_prune_dict_error_are_escaped(tmp_path, tiny_mnist):
    result = invoke("demo", "--prune-dict", '{"\\u001b[2Jconv9.weight": 0.5}', "--data", tiny_mnist, "--out", tmp_path)
    line = assert_one_line_error(result, "matches no parameter", exit_codes=(2,))
    assert "\\x1b[2Jconv9.weight" in line
    assert_safe(result.output)
