"""Every ```python block of README.md runs, in order, in one namespace per block. A block that needs
an optional extra which is not installed (transformers, lightning, peft, ...) is skipped, saying
which; CI installs every extra, so there every block runs. The documentation pages' blocks run in
tests/test_docs.py, the same way (tests/markdown_examples.py)."""

from pathlib import Path

import pytest

from tests.markdown_examples import python_examples, run_example

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = python_examples(ROOT / "README.md", ROOT)


def test_readme_has_examples():
    assert EXAMPLES, "README.md has no python example"


def test_every_readme_example_runs_here():
    assert [e.id for e in EXAMPLES if e.not_run is not None] == []


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example_runs(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_example(example)
