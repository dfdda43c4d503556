"""pruning-tools: gradual pruning, unstructured or bank-balanced, for PyTorch and MXNet; one-shot
pruning with calibration data (magnitude, Wanda, SparseGPT) for PyTorch.

``from pruning_tools import Prune`` is ``pruning_tools.pytorch_pruning.Prune``;
``pruning_tools.oneshot(model, calibration, prune_dict, method=...)`` is ``pruning_tools.oneshot.oneshot``;
``shrink``, ``save_shrunk`` and ``load_shrunk`` come from ``pruning_tools.structured`` (structured pruning).
The top-level names are imported on first use, so ``import pruning_tools`` (and the command line's
``--help``) stays light.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("bank-pruning-tools")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Prune": "pytorch_pruning",
    "BankCheck": "masks",
    "bank_mask": "masks",
    "check_banks": "masks",
    "oneshot": "post_training",
    "unstructured_mask": "masks",
    "schedule_step": "schedule",
    "target_sparsity": "schedule",
    "to_bank_sparse": "inference",
    "load_bank_sparse": "inference",
    "shrink": "structured.shrink",
    "save_shrunk": "structured.files",
    "load_shrunk": "structured.files",
    "calibrate": "inference",
}

if TYPE_CHECKING:
    from .inference import calibrate, load_bank_sparse, to_bank_sparse
    from .masks import BankCheck, bank_mask, check_banks, unstructured_mask
    from .post_training import oneshot
    from .pytorch_pruning import Prune
    from .schedule import schedule_step, target_sparsity
    from .structured.files import load_shrunk, save_shrunk
    from .structured.shrink import shrink


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])


__all__ = [
    "BankCheck",
    "Prune",
    "bank_mask",
    "calibrate",
    "check_banks",
    "oneshot",
    "load_bank_sparse",
    "load_shrunk",
    "save_shrunk",
    "schedule_step",
    "shrink",
    "target_sparsity",
    "to_bank_sparse",
    "unstructured_mask",
]
