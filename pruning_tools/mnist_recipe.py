"""Moved to ``pruning_tools.demo.recipe``; this import path keeps
working, with a DeprecationWarning, for one release."""

from ._deprecated import forward

__getattr__ = forward(__name__, "pruning_tools.demo.recipe")
