"""Doctest collection of the package: modules whose optional framework is not installed are left out
(each nox environment installs the extras it tests), and the MXNet adapter's doctests are marked
``mxnet`` like the MXNet tests, so that the MXNet environment runs them."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

_NEEDS = {
    "pruning_tools/mxnet_pruning.py": ("mxnet",),
    "pruning_tools/demo/mxnet_backend.py": ("mxnet",),
    "pruning_tools/integrations/transformers.py": ("transformers",),
    "pruning_tools/integrations/lightning.py": ("lightning", "pytorch_lightning"),
}

collect_ignore = [path for path, modules in _NEEDS.items() if not any(find_spec(m) for m in modules)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in ("mxnet_pruning.py", "mxnet_backend.py") and "tests" not in item.path.parts:
            item.add_marker(pytest.mark.mxnet)
