"""Without its framework, each integration says which extra to install."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    "module, missing, extra",
    [
        ("pruning_tools.integrations.transformers", ["transformers"], "transformers"),
        ("pruning_tools.integrations.lightning", ["lightning", "lightning.pytorch", "pytorch_lightning"], "lightning"),
    ],
)
def test_missing_framework_names_the_extra(monkeypatch, module, missing, extra):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # "import name" now raises ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf'pip install "bank-pruning-tools\[{extra}\]"'):
        importlib.import_module(module)


def test_the_package_imports_no_framework():
    import subprocess

    code = (
        "import sys, pruning_tools.integrations; "
        "print(sorted(m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
