"""Save a shrunk model without pickle, and load it into a fresh instance of the original architecture.

``save_shrunk(model, path)`` writes every tensor of ``model.state_dict()`` to a safetensors file
(atomic, checksummed: ``pruning_tools.integrity``) with, in its metadata, the size attributes of
every module and a Hugging Face config's head counts and ``intermediate_size``. ``load_shrunk(model,
path)`` takes a model built the way the original was (``AutoModel.from_config(config)``, ``MyNet()``),
checks that the file is of that architecture, then gives each tensor the recorded shape, sets the
recorded attributes and loads the weights. A tensor present on one side only, a dimension that
grew, a damaged file: ``ValueError`` before anything changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import integrity
from .shrink import CONFIG_HEADS, HEAD_ATTRIBUTES

FORMAT = "pruning_tools.shrunk/1"
SIZE_ATTRIBUTES = (
    "in_features", "out_features", "in_channels", "out_channels", "groups", "num_features", "nf", "embedding_dim",
    *HEAD_ATTRIBUTES,
)  # fmt: skip
CONFIG_FIELDS = (*CONFIG_HEADS, "head_dim", "intermediate_size")


def _sizes(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{module path: {attribute: value}}`` of the integer size attributes of every module."""
    out = {}
    for path, module in model.named_modules():
        found = {a: v for a in SIZE_ATTRIBUTES if type(v := module.__dict__.get(a)) is int}
        if found:
            out[path] = found
    return out


def _config_fields(model: nn.Module) -> dict[str, int]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {}
    return {f: v for f in CONFIG_FIELDS if type(v := getattr(config, f, None)) is int}


def save_shrunk(model: nn.Module, path: str | Path) -> None:
    """Write ``model`` (shrunk or not) to a safetensors file that ``load_shrunk`` reads back into a
    fresh instance of the original architecture. Atomic: a failed write leaves an earlier file intact."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
    tensors = {  # bfloat16 (no numpy type) stored as float32, cast back on load from the recorded dtype
        name: np.array(t.detach().cpu().float().numpy() if t.dtype == torch.bfloat16 else t.detach().cpu().numpy())
        for name, t in model.state_dict().items()
    }
    dtypes = {name: str(t.dtype).replace("torch.", "") for name, t in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "sizes": json.dumps(_sizes(model)),
        "config": json.dumps(_config_fields(model)),
        "dtypes": json.dumps(dtypes),
    }
    integrity.save_file(tensors, path, metadata=metadata)


def _read(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    not_ours = f"path={str(path)!r} is not a shrunk-model file of format {FORMAT!r}"
    try:
        tensors, metadata = integrity.load_file(path, framework="pt")
    except integrity.IntegrityError as error:
        raise integrity.IntegrityError(f"{not_ours}, or it is damaged: {error}") from error
    except OSError as error:
        raise ValueError(f"{not_ours}: {error}") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(not_ours)
    try:
        sizes, config, dtypes = (json.loads(metadata[k]) for k in ("sizes", "config", "dtypes"))
    except (KeyError, ValueError) as error:
        raise ValueError(f"{not_ours}: its metadata is missing or not JSON ({error})") from error
    ok = isinstance(sizes, dict) and all(
        isinstance(p, str)
        and isinstance(a, dict)
        and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in a.items())
        for p, a in sizes.items()
    )
    ok = (
        ok
        and isinstance(config, dict)
        and all(f in CONFIG_FIELDS and type(v) is int and v > 0 for f, v in config.items())
    )
    ok = ok and isinstance(dtypes, dict) and set(dtypes) == set(tensors)
    if not ok:
        raise ValueError(f"{not_ours}: its size records are malformed")
    for name, dtype in dtypes.items():
        wanted = getattr(torch, str(dtype), None)
        if not isinstance(wanted, torch.dtype):
            raise ValueError(f"{not_ours}: tensor {name!r} has an unknown dtype {dtype!r}")
        tensors[name] = tensors[name].to(wanted)
    return tensors, sizes, config


def load_shrunk(model: nn.Module, path: str | Path) -> nn.Module:
    """Give ``model`` (a fresh instance of the original architecture) the shapes, size attributes
    and weights saved by ``save_shrunk``; returns ``model``. Raises ``ValueError`` (nothing changed)
    when the file is of another architecture, and ``integrity.IntegrityError`` when it is damaged."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
    tensors, sizes, config = _read(path)
    current = model.state_dict(keep_vars=True)
    only_file, only_model = sorted(set(tensors) - set(current)), sorted(set(current) - set(tensors))
    if only_file or only_model:
        raise ValueError(
            f"model={type(model).__name__} is not the architecture saved in {str(path)!r}: tensors only in the file "
            f"{only_file[:5]}, only in the model {only_model[:5]}; expected a fresh instance of the original model"
        )
    for name, t in tensors.items():
        mine = current[name]
        if t.dim() != mine.dim() or any(a > b for a, b in zip(t.shape, mine.shape)):
            raise ValueError(
                f"model={type(model).__name__} is not the architecture saved in {str(path)!r}: {name!r} is "
                f"{list(t.shape)} in the file and {list(mine.shape)} in the model (a shrunk tensor never grows)"
            )
    modules = dict(model.named_modules())
    for module_path, attributes in sizes.items():
        module = modules.get(module_path)
        if module is None or any(type(module.__dict__.get(a)) is not int for a in attributes):
            raise ValueError(
                f"model={type(model).__name__} is not the architecture saved in {str(path)!r}: module "
                f"{module_path!r} is missing or lacks the size attributes {sorted(attributes)}"
            )
    model_config = getattr(model, "config", None)
    if config and (model_config is None or any(not hasattr(model_config, f) for f in config)):
        raise ValueError(
            f"model={type(model).__name__} has no config with the fields {sorted(config)} saved in the file"
        )
    # ---- everything checked: change the model
    replaced: dict[int, Tensor] = {}
    for name, t in tensors.items():
        old = current[name]
        if tuple(old.shape) == tuple(t.shape) or id(old) in replaced:
            continue
        empty = torch.empty(t.shape, dtype=old.dtype, device=old.device)
        replaced[id(old)] = nn.Parameter(empty, old.requires_grad) if isinstance(old, nn.Parameter) else empty
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for key, held in list(slots.items()):
                if held is not None and id(held) in replaced:
                    slots[key] = replaced[id(held)]  # type: ignore[assignment]
    for module_path, attributes in sizes.items():
        for attr, value in attributes.items():
            setattr(modules[module_path], attr, value)
    for field_name, value in config.items():
        setattr(model_config, field_name, value)
    model.load_state_dict(tensors, strict=True)
    return model


def recorded_sizes(path: str | Path) -> Mapping[str, Mapping[str, int]]:
    """The module size attributes a shrunk-model file records (after checking the file)."""
    return _read(path)[1]
