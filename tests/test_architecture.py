"""The tree shows the design: the library apart from its applications, each concept in one room."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pruning_tools"
APPLICATIONS = ("cli", "demo")  # rooms that may use click, rich and matplotlib
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
                assert node.module.split(".")[0] not in APPLICATIONS or path.name in _SHIMS, (path, node.module)


_SHIMS = {"mnist.py", "mnist_recipe.py", "mnist_train.py", "mxnet_mnist.py", "plots.py", "sensitivity_plot.py"}


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

    assert pruning_tools.__version__ == metadata.version("pruning-tools")
    assert (PACKAGE / "py.typed").is_file()


MOVED = [
    ("pruning_tools.masks", "to_rows", "pruning_tools.geometry"),
    ("pruning_tools.masks", "keep_count", "pruning_tools.geometry"),
    ("pruning_tools.masks", "bank_budget", "pruning_tools.geometry"),
    ("pruning_tools.masks", "realised_sparsity", "pruning_tools.geometry"),
    ("pruning_tools.pruner_base", "PrunerBase", "pruning_tools.pruner"),
    ("pruning_tools.pruner_base", "write_state_file", "pruning_tools.pruner"),
    ("pruning_tools.native", "largest_masks", "pruning_tools._native.mask_kernels"),
    ("pruning_tools.sparse_linear", "BankSparseLinear", "pruning_tools.inference"),
    ("pruning_tools.sparse_linear", "to_bank_sparse", "pruning_tools.inference"),
    ("pruning_tools.export", "export_onnx", "pruning_tools.onnx"),
    ("pruning_tools.inspection", "load_tensors", "pruning_tools.checkpoints"),
    ("pruning_tools.inspection", "inspect_file", "pruning_tools.checkpoints"),
    ("pruning_tools.mnist", "load_mnist", "pruning_tools.demo.data"),
    ("pruning_tools.mnist_recipe", "pruning_steps", "pruning_tools.demo.recipe"),
    ("pruning_tools.mnist_train", "SimpleCNN", "pruning_tools.demo.torch_backend"),
    ("pruning_tools.plots", "plot_bank_histogram", "pruning_tools.demo.plots"),
    ("pruning_tools.sensitivity_plot", "plot_curves", "pruning_tools.demo.sensitivity_plots"),
    ("pruning_tools.bench_models", "resnet50", "benchmarks.models"),
    ("pruning_tools.bench", "interleaved", "benchmarks.harness"),
]


@pytest.mark.parametrize("old, name, new", MOVED)
def test_moved_names_keep_working_with_a_deprecation_warning(old, name, new):
    import importlib

    with pytest.warns(DeprecationWarning, match="moved to"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_old_kernel_module_and_trainers_keep_working():
    import importlib

    from pruning_tools import _native

    with pytest.warns(DeprecationWarning, match="moved to"):
        kernels = importlib.import_module("pruning_tools.kernels")
        assert kernels.mode() == _native.engine()
    with pytest.warns(DeprecationWarning, match="moved to"):
        train = importlib.import_module("pruning_tools.mnist_train").train_mnist
    assert train.keywords == {"framework": "pytorch"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the seed import paths of the original tool: no warning
        from pruning_tools import Prune, pytorch_pruning  # noqa: F401

        assert pytorch_pruning.Prune is Prune
