"""The ```python blocks of a Markdown page, and how a test runs one: in order, one namespace per block,
in a temporary directory. A block preceded by the line ``<!-- not run: REASON -->`` is not run (the
test says why); keep those few: a block that needs data, a GPU or several processes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

OPTIONAL = {"transformers", "accelerate", "peft", "lightning", "pytorch_lightning", "mxnet", "onnx", "onnxruntime"}
_BLOCK = re.compile(r"^(?:<!-- not run: (?P<reason>[^\n]*?) -->\n)?```python\n(?P<code>.*?)^```", flags=re.S | re.M)


@dataclass(frozen=True)
class Example:
    page: str  # the page, relative to the repository root
    index: int  # 0 for the page's first python block
    code: str
    not_run: str | None  # the reason given by a "<!-- not run: ... -->" marker

    @property
    def id(self) -> str:
        return f"{self.page}[{self.index}]"


def python_examples(path: Path, root: Path) -> list[Example]:
    """Every ```python block of ``path``, in order."""
    page = path.relative_to(root).as_posix()
    found = _BLOCK.finditer(path.read_text())
    return [Example(page, i, m["code"], m["reason"]) for i, m in enumerate(found)]


def run_example(example: Example) -> None:
    """Execute ``example`` in a fresh namespace; skip it if it is marked not run (with its reason), or
    if it needs an optional extra that is not installed (CI installs every extra)."""
    if example.not_run is not None:
        if not example.not_run.strip():
            pytest.fail(f"{example.id}: a '<!-- not run: ... -->' marker must say why")
        pytest.skip(f"not run: {example.not_run}")
    try:
        exec(compile(example.code, example.id, "exec"), {"__name__": "__docs__"})
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"needs the optional {error.name!r}")
