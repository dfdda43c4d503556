"""The tree shows the design: the library apart from its applications, each concept in one room."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pruning_tools"
APPLICATIONS = ("cli", "demo", "benchmarks")  # rooms that may use click, rich and matplotlib
UI_LIBRARIES = ("click", "rich", "matplotlib")


def library_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in APPLICATIONS]


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of its code."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_library_code_never_imports_click_rich_or_matplotlib():
    offenders = {str(p.relative_to(PACKAGE)): sorted(imported_roots(p) & set(UI_LIBRARIES)) for p in library_modules()}
    assert {name: libs for name, libs in offenders.items() if libs} == {}


def test_the_library_does_not_import_its_applications():
    for path in library_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                assert node.module.split(".")[0] not in APPLICATIONS, (path, node.module)


def test_import_pruning_tools_is_light():
    loaded = run_python(
        "import sys, pruning_tools; from pruning_tools import Prune; "
        "print(sorted(m for m in ('click', 'rich', 'matplotlib') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_help_does_not_import_torch():
    loaded = run_python(
        "import sys\nfrom click.testing import CliRunner\nfrom pruning_tools.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\nassert result.exit_code == 0, result.output\n"
        "assert all(name in result.output for name in ('demo', 'inspect', 'export', 'sensitivity', 'bench'))\n"
        "print('torch' in sys.modules)"
    )
    assert loaded == "False"


def test_no_repository_path_is_baked_into_the_package():
    """Only the command line knows a default (``data/mnist/`` of the current directory, a checkout)."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "parents[" not in text and "REPO_ROOT" not in text, path
        if path.relative_to(PACKAGE).parts[0] != "cli":
            assert 'Path("data' not in text and "shared/datasets" not in text, path


def test_version_comes_from_the_package_metadata():
    from importlib import metadata

    import pruning_tools

    assert pruning_tools.__version__ == metadata.version("bank-pruning-tools")
    assert (PACKAGE / "py.typed").is_file()


def test_the_seed_import_paths_of_the_original_tool_work_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from pruning_tools import Prune, pytorch_pruning  # noqa: F401

        assert pytorch_pruning.Prune is Prune


def test_dir_of_the_package_lists_its_public_names_only():
    import pruning_tools

    assert set(dir(pruning_tools)) == {*pruning_tools.__all__, "__version__"}
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib", "metadata"} & set(dir(pruning_tools))


def test_every_function_fits_on_a_screen():
    """No function of the package is longer than 80 lines (docstring included): long ones split by what they do."""
    long = {
        f"{path.relative_to(PACKAGE)}:{node.name}": node.end_lineno - node.lineno + 1
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    }
    assert long == {}


def _imports_of(path: Path, module: str, modules: set[str]) -> set[str]:
    """The package's modules that ``module`` (at ``path``) imports, at any depth of its code (blocks under
    ``if TYPE_CHECKING:`` never run and are left out); ``from a import b`` is module ``a.b`` if there is one."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    found = set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return found & modules


# Prune(..., structure="channel") returns its subclass StructuredPrune: the constructor imports it when
# asked for it, and the subclass imports Prune. The one cycle, deferred, kept on purpose.
ALLOWED_CYCLES = [{"pruning_tools.pytorch_pruning", "pruning_tools.structured.pruner"}]


def test_no_import_cycle_in_the_package():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports_of(p, m, set(modules)) - {m} for m, p in modules.items()}
    reach: dict[str, set[str]] = {}
    for start in graph:  # everything each module reaches through imports
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        reach[start] = seen
    cycles = {frozenset({a, b}) for a in graph for b in graph[a] if a in reach.get(b, set()) and a != b}
    unexpected = [sorted(c) for c in cycles if not any(c <= allowed for allowed in ALLOWED_CYCLES)]
    assert unexpected == []
