"""Moved to ``pruning_tools._native`` (one loader for every kernel); this import path keeps working,
with a DeprecationWarning, for one release."""

from __future__ import annotations

import ctypes

from .. import _native
from .._deprecated import warn_moved

KernelUnavailableError = _native.KernelUnavailableError


def mode() -> str:
    warn_moved("pruning_tools.kernels.mode", "pruning_tools._native.engine")
    return _native.engine()


def library() -> ctypes.CDLL | None:
    warn_moved("pruning_tools.kernels.library", 'pruning_tools._native.library("bank_sparse")')
    return _native.library("bank_sparse")


def reset() -> None:
    warn_moved("pruning_tools.kernels.reset", "pruning_tools._native.reset")
    _native.reset()


def set_threads(n: int) -> None:
    warn_moved("pruning_tools.kernels.set_threads", "pruning_tools._native.set_threads")
    _native.set_threads(n)


def cache_dir():
    warn_moved("pruning_tools.kernels.cache_dir", "pruning_tools._native.cache_dir")
    return _native.cache_dir()
