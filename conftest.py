"""Doctest collection of the package: modules whose optional framework is not installed are left out
(CI installs every extra, so there all are collected)."""

from __future__ import annotations

from importlib.util import find_spec

_NEEDS = {
    "pruning_tools/mxnet_pruning.py": ("mxnet",),
    "pruning_tools/integrations/transformers.py": ("transformers",),
    "pruning_tools/integrations/lightning.py": ("lightning", "pytorch_lightning"),
}

collect_ignore = [path for path, modules in _NEEDS.items() if not any(find_spec(m) for m in modules)]
