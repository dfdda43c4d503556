"""The documentation site builds with ``mkdocs build --strict`` (no broken link, no page left out of
the navigation, no API entry that does not resolve), every library module has its API page, every
public function and class has a docstring, and the README's links lead to files that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pruning_tools"
APPLICATIONS = ("cli", "demo", "benchmarks")  # documented by the guides and the command line's --help


def library_modules() -> list[str]:
    """Dotted names of the library's modules (packages by their ``__init__``), applications left out."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] in APPLICATIONS or parts[-1] == "__main__":
            continue
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        names.append(".".join(("pruning_tools", *parts)))
    return names


def documented_modules() -> set[str]:
    """Every ``::: name`` directive of the API pages."""
    pages = (ROOT / "docs" / "reference").glob("*.md")
    return {m for page in pages for m in re.findall(r"^::: (\S+)", page.read_text(), flags=re.M)}


def test_every_library_module_has_an_api_entry():
    undocumented = [m for m in library_modules() if m not in documented_modules()]
    assert undocumented == []


def test_every_api_entry_names_a_module_that_exists():
    for name in documented_modules():
        parts = name.split(".")[1:]
        path = PACKAGE.joinpath(*parts)
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), name


def test_every_public_function_and_class_has_a_docstring():
    griffe = pytest.importorskip("griffe", reason="griffe comes with requirements-docs.txt (mkdocstrings-python)")
    package = griffe.load("pruning_tools", search_paths=[str(ROOT)], allow_inspection=False)
    missing = []
    for name in library_modules():
        module = package if name == "pruning_tools" else package[name.removeprefix("pruning_tools.")]
        for member in module.members.values():
            if member.is_alias or member.name.startswith("_") or not (member.is_function or member.is_class):
                continue
            if not member.docstring:
                missing.append(member.path)
    assert missing == []


def test_readme_links_lead_to_files():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the documentation"
    assert [t for t in local if not (ROOT / t).exists()] == []


def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -r requirements-docs.txt")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's notice about its successor
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pages = sorted((tmp_path / "site" / "reference").glob("*/index.html"))
    assert len(pages) == len(list((ROOT / "docs" / "reference").glob("*.md"))) - 1  # + reference/index.html
    quoted = [p.parent.name for p in pages if "<blockquote" in p.read_text()]
    assert quoted == []  # doctests in docstrings render as code (scripts/griffe_doctests.py), not as quotes
    assert "doctest:" not in (tmp_path / "site" / "reference" / "post_training" / "index.html").read_text()
