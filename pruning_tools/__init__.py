"""pruning-tools: gradual pruning, unstructured or bank-balanced, for PyTorch and MXNet; one-shot
pruning with calibration data (magnitude, Wanda, SparseGPT) for PyTorch.

``from pruning_tools import Prune`` is ``pruning_tools.pytorch_pruning.Prune``;
``pruning_tools.oneshot(model, calibration, prune_dict, method=...)`` is ``pruning_tools.oneshot.oneshot``.
The top-level names are imported on first use, so ``import pruning_tools`` (and the command line's
``--help``) stays light.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("pruning-tools")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Prune": "pytorch_pruning",
    "BankCheck": "masks",
    "bank_mask": "masks",
    "check_banks": "masks",
    "oneshot": "oneshot",
    "unstructured_mask": "masks",
    "schedule_step": "schedule",
    "target_sparsity": "schedule",
    "to_bank_sparse": "inference",
    "load_bank_sparse": "inference",
    "calibrate": "inference",
}

if TYPE_CHECKING:
    from .inference import calibrate, load_bank_sparse, to_bank_sparse
    from .masks import BankCheck, bank_mask, check_banks, unstructured_mask
    from .oneshot import oneshot
    from .pytorch_pruning import Prune
    from .schedule import schedule_step, target_sparsity


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "BankCheck",
    "Prune",
    "bank_mask",
    "calibrate",
    "check_banks",
    "oneshot",
    "load_bank_sparse",
    "schedule_step",
    "target_sparsity",
    "to_bank_sparse",
    "unstructured_mask",
]
