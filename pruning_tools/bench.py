"""Moved out of the installed package to the repository's ``benchmarks/masks.py``; from a checkout
this import path keeps working, with a DeprecationWarning, for one release."""

from __future__ import annotations

from typing import Any

from ._deprecated import warn_moved


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        from benchmarks import masks
    except ImportError as error:
        raise ImportError(
            f"pruning_tools.bench.{name} moved to benchmarks/masks.py of the repository (not installed): "
            "run from a checkout"
        ) from error
    value = getattr(masks, name)  # AttributeError names the new module
    warn_moved(f"pruning_tools.bench.{name}", f"benchmarks.masks.{name}")
    return value
