"""`pruning-tools bench --structured --quick` runs every task (its ratios are not measurements)."""

from __future__ import annotations

from click.testing import CliRunner

from pruning_tools.cli import main


def test_bench_structured_quick_runs_every_task(tmp_path) -> None:
    out = tmp_path / "structured.json"
    result = CliRunner().invoke(main, ["bench", "--structured", "--quick", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    for task in ("resnet50 shrunk onnxruntime", "bert shrunk eager", "bert shrunk + bank-sparse 87.5%"):
        assert f"| {task} | 1 | 8 |" in result.output
    assert "| HF Llama (GQA) | ok:" in result.output and out.is_file()
