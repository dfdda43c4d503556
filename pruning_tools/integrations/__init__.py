"""Callbacks for training stacks: ``integrations.transformers.PruneCallback`` (Hugging Face
``Trainer``, extra ``transformers``) and ``integrations.lightning.PruneCallback`` (Lightning, extra
``lightning``). Each module imports its framework when it is imported, and says which extra to
install when it is missing; this package itself imports nothing heavy.

Both callbacks take ``Prune``'s arguments, build the pruner on the trainer's model when training
starts, call ``prune()`` once per optimizer step (so gradient accumulation counts optimizer steps),
log the sparsity and carry the pruner's state in the trainer's checkpoints.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

from ..config import check_step

STATE_FILE = "pruner_state.safetensors"  # the pruner's state in a checkpoint folder (Prune.save)


def prune_arguments(
    pretrain_step: Any, sparse_step: Any, frequency: Any, prune_dict: Any, prune_options: Mapping[str, Any]
) -> dict[str, Any]:
    """``Prune``'s keyword arguments (model left out), checked as far as they can be without the model:
    the step counts, ``prune_dict`` a non-empty mapping (copied: the caller's stays theirs), and every
    option a ``Prune`` argument. The rest is checked when the pruner is built."""
    from ..pytorch_pruning import Prune

    allowed = [p for p in inspect.signature(Prune.__init__).parameters if p not in ("self", "model", "prune_dict")]
    allowed = [p for p in allowed if p not in ("pretrain_step", "sparse_step", "frequency")]
    unknown = sorted(set(prune_options) - set(allowed))
    if unknown:
        raise TypeError(f"PruneCallback got unknown options {unknown}: expected Prune arguments among {allowed}")
    if not isinstance(prune_dict, Mapping) or not prune_dict:
        raise ValueError(
            f"prune_dict={prune_dict!r} is not allowed: expected a non-empty dict of parameter names or "
            "glob patterns to sparsities, e.g. {'*.weight': 0.9}"
        )
    return {
        "pretrain_step": check_step("pretrain_step", pretrain_step),
        "sparse_step": check_step("sparse_step", sparse_step),
        "frequency": check_step("frequency", frequency, minimum=1),
        "prune_dict": copy.deepcopy(dict(prune_dict)),
        **prune_options,
    }


def sparsity_logs(prune: Any) -> dict[str, float]:
    """``{"sparsity": overall fraction of zeros, "sparsity/<name>": per parameter}`` of a pruner."""
    layers, total = prune.sparsity()
    return {"sparsity": total, **{f"sparsity/{name}": value for name, value in layers.items()}}


__all__ = ["STATE_FILE", "prune_arguments", "sparsity_logs"]
