"""A griffe extension for the documentation site (mkdocs.yml): doctest examples written straight into a
docstring (``>>>`` lines and their output, up to the next blank line) are shown as ``pycon`` code
blocks, instead of being read as Markdown block quotes. The docstrings themselves stay plain doctests,
run by pytest's ``--doctest-modules``."""

from __future__ import annotations

import re
from typing import Any

import griffe

FENCE = "```"
DOCTEST_FLAGS = re.compile(r"\s*#\s*doctest:.*$")  # "# doctest: +ELLIPSIS" and the like: for the runner only


def fence_doctests(text: str) -> str:
    """``text`` with every run of doctest lines that starts a line (``>>>`` at column 0, its ``...``
    continuations and output, up to a blank line) inside a ```` ```pycon ```` fence, without doctest
    flags. Lines already inside a fenced block are left alone."""
    out: list[str] = []
    in_fence = in_example = False
    for line in text.split("\n"):
        if in_example and not line.strip():
            out.append(FENCE)
            in_example = False
        elif not in_example and line.startswith(FENCE):
            in_fence = not in_fence
        elif not in_fence and not in_example and line.startswith(">>>"):
            out.append(FENCE + "pycon")
            in_example = True
        out.append(DOCTEST_FLAGS.sub("", line) if in_example else line)
    if in_example:
        out.append(FENCE)
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Rewrites each loaded object's docstring with ``fence_doctests`` (what is rendered, not the source)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
