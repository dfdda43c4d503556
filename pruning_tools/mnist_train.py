"""Moved to ``pruning_tools.demo`` (``demo.torch_backend``; ``train_mnist`` is ``demo.trainer.train_mnist`` with
``framework="pytorch"``); this import path keeps working, with a DeprecationWarning, for one release."""

from __future__ import annotations

import functools
from typing import Any

from ._deprecated import forward, warn_moved

_forward = forward(__name__, "pruning_tools.demo.torch_backend")


def __getattr__(name: str) -> Any:
    if name == "train_mnist":
        from .demo.trainer import train_mnist

        warn_moved(f"{__name__}.train_mnist", 'pruning_tools.demo.trainer.train_mnist(framework="pytorch")')
        return functools.partial(train_mnist, framework="pytorch")
    return _forward(name)
