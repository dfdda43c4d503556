"""Every ```python block of the documentation pages (docs/**/*.md) runs, as README.md's do
(tests/test_readme.py); a block marked ``<!-- not run: REASON -->`` is skipped with that reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.markdown_examples import python_examples, run_example

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [e for page in sorted((ROOT / "docs").rglob("*.md")) for e in python_examples(page, ROOT)]


def test_the_docs_have_examples():
    assert len(EXAMPLES) >= 10, [e.id for e in EXAMPLES]


def test_few_examples_are_not_run():
    """A marker is for blocks that cannot run here (data, a GPU, several processes), not a way out."""
    not_run = [e.id for e in EXAMPLES if e.not_run is not None]
    assert len(not_run) <= 3, not_run


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_docs_example_runs(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_example(example)
