"""``pip install -e .`` without the extra ``plots``: every command still does its work and writes its
results, names the figures it could not draw, and gives the right install command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HINT = "pip install 'bank-pruning-tools[plots]'"


def run_without_matplotlib(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """``pruning-tools ARGS`` in a fresh interpreter where ``import matplotlib`` fails."""
    code = (
        "import sys\nsys.modules['matplotlib'] = None  # import matplotlib now raises ImportError\n"
        "from pruning_tools.cli import main\nmain(sys.argv[1:])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_sensitivity_writes_its_results_and_says_why_no_figure(tmp_path):
    (tmp_path / "toy_plotless_model.py").write_text(
        textwrap.dedent("""
        import torch

        def build():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32))
            x = torch.randn(16, 64)
            dense = model(x).detach()
            return model, lambda m: -float(((m(x) - dense) ** 2).mean().detach())
    """)
    )
    out = tmp_path / "s"
    args = ["sensitivity", "--model", "toy_plotless_model:build", "--levels", "0.5,0.9", "--target", "0.6"]
    proc = run_without_matplotlib([*args, "--out", out, "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert HINT in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name for p in out.iterdir()} == {"sensitivity.json", "sensitivity.csv", "suggestion.json"}
    assert json.loads(proc.stdout)["overall_sparsity"] >= 0.6


def test_demo_writes_its_results_and_the_hint_keeps_its_brackets(tmp_path, tiny_mnist):
    out = tmp_path / "run"
    args = ["demo", "--data", tiny_mnist, "--limit", "64", "--epochs", "1", "--batch-size", "32", "--out", out]
    proc = run_without_matplotlib(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert HINT in proc.stdout  # rich ate "[plots]" as markup: it said pip install 'pruning-tools'
    assert {p.name for p in out.iterdir()} == {"weights.safetensors", "pruner_state.safetensors", "results.json"}


def test_the_readme_install_shows_the_extras():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert 'pip install -e ".[plots]"' in readme and "figures" in readme
