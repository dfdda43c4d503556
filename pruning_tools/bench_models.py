"""Moved out of the installed package to the repository's ``benchmarks/models.py``; from a checkout
this import path keeps working, with a DeprecationWarning, for one release."""

from __future__ import annotations

from typing import Any

from ._deprecated import warn_moved


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        from benchmarks import models
    except ImportError as error:
        raise ImportError(
            f"pruning_tools.bench_models.{name} moved to benchmarks/models.py of the repository (not installed): "
            "run from a checkout"
        ) from error
    value = getattr(models, name)  # AttributeError names the new module
    warn_moved(f"pruning_tools.bench_models.{name}", f"benchmarks.models.{name}")
    return value
