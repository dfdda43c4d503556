"""Swap the pruned layers of a model for their bank-sparse versions, in place."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ParamSpec
from ..export import NotBankBalancedError, worth_packing
from .modules import BankSparseConv1x1, BankSparseLinear, is_pointwise_conv


def _specs(source: Any) -> dict[str, ParamSpec] | None:
    if source is None:
        return None
    from ..pruner import Pruner, pruned_specs

    if isinstance(source, (Pruner, Mapping, str, Path)):
        return pruned_specs(source)
    raise TypeError(
        f"pruner={type(source).__name__} is not allowed: expected a Prune, its state_dict(), a saved state file or None"
    )


def to_bank_sparse(model: nn.Module, pruner: Any = None, *, bank_size: int = 64) -> list[str]:
    """Replace, in place, every ``nn.Linear`` and 1×1 conv of ``model`` whose weight is bank-balanced
    and sparse by its bank-sparse version. Returns the replaced module names.

    ``pruner``: the ``Prune`` that pruned ``model``, its ``state_dict()`` or a saved state file; each
    layer's bank size and budget then come from the pruner's spec of its weight (layers it did not
    prune bank-balanced stay as they are). Without it, ``bank_size`` applies to every layer and the
    budget is each weight's measured sparsity.
    """
    specs = _specs(pruner)
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            make = BankSparseLinear.from_linear
        elif is_pointwise_conv(module):
            make = BankSparseConv1x1.from_conv
        else:
            continue
        weight = f"{name}.weight" if name else "weight"
        geometry: int | ParamSpec = bank_size
        if specs is not None:
            spec = specs.get(weight)
            if spec is None or spec.balance != "fix":
                continue
            geometry = spec
        if not worth_packing(module.weight, geometry.bank_size if isinstance(geometry, ParamSpec) else geometry):
            continue
        try:
            sparse = make(module, geometry)
        except NotBankBalancedError:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
        replaced.append(name)
    return replaced


__all__ = ["to_bank_sparse"]
