"""Old import paths kept for one release: each warns once per call site and forwards to the new home."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def warn_moved(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path goes away in the next release", DeprecationWarning, stacklevel=3)


def forward(old_module: str, new_module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a module that moved: every name is looked up in ``new_module``."""

    def __getattr__(name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        target = importlib.import_module(new_module)
        value = getattr(target, name)  # AttributeError names the new module
        warn_moved(f"{old_module}.{name}", f"{new_module}.{name}")
        return value

    return __getattr__
