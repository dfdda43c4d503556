"""What a pruner state holds, declared once, and its validation before anything of it is applied.

A state (``Prune.state_dict()``, or read back from a file) is plain data::

    {"format": STATE_FORMAT, "step": int, "config": PruneConfig.to_dict(),
     "initial_sparsity": {name: float}, "mask_targets": {name: float},   # PER_PARAMETER_NUMBERS
     "masks": {name: uint8 [ceil(n / 8)]},                               # PER_PARAMETER_TENSORS
     "scores": {name: float32 [local shape]}}    # criterion="movement" only (pruning_tools.criteria)

Everything read from a file is untrusted: ``validate_state`` checks every entry against this pruner's
settings and parameters (types, ranges, names, dtypes, tensor sizes, padding bits) and returns the
values ready to apply, so a pruner applies a state whole or not at all. A new per-parameter entry
(e.g. training-time scores) is declared by adding a ``ParamTensors`` or ``ParamNumbers`` to the tuples
below: state files, validation and the error messages follow.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import geometry as G
from . import masks as M
from .config import ParamSpec, PruneConfig, check_sparsity

STATE_FORMAT = "pruning_tools.Prune/1"


@dataclass(frozen=True)
class ParamNumbers:
    """A per-parameter number: ``state[key] = {name: number}``, each checked by ``check(argument, value)``."""

    key: str
    check: Callable[[str, Any], float]


@dataclass(frozen=True)
class ParamTensors:
    """A per-parameter tensor: ``state[key] = {name: tensor}`` (``key/name`` in a state file).

    ``shape(local_shape)`` is the stored shape for a parameter whose (local shard's) shape is
    ``local_shape``; ``required(name, numbers)`` says whether a parameter must have one, given the
    validated per-parameter numbers; ``check(tensor, local_shape)`` returns what else is wrong, or None.
    """

    key: str
    dtype: torch.dtype
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    required: Callable[[str, Mapping[str, Mapping[str, float]]], bool]
    check: Callable[[Tensor, tuple[int, ...]], str | None] | None = None


def _packed_shape(local_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (math.ceil(math.prod(local_shape) / 8),)


def _padding_is_zero(packed: Tensor, local_shape: tuple[int, ...]) -> str | None:
    pad = (-math.prod(local_shape)) % 8
    if pad and int(packed[-1]) & ((1 << pad) - 1):
        return f"its last {pad} padding bits are not zero"
    return None


def _mask_required(name: str, numbers: Mapping[str, Mapping[str, float]]) -> bool:
    """A mask may be absent only where nothing was pruned (states of earlier releases omitted those)."""
    return numbers["mask_targets"][name] > 0 or numbers["initial_sparsity"][name] > 0


PER_PARAMETER_NUMBERS: tuple[ParamNumbers, ...] = (
    ParamNumbers("initial_sparsity", check_sparsity),
    ParamNumbers("mask_targets", check_sparsity),
)


def _finite(scores: Tensor, local_shape: tuple[int, ...]) -> str | None:
    return None if bool(torch.isfinite(scores).all()) else "it holds non-finite scores"


PER_PARAMETER_TENSORS: tuple[ParamTensors, ...] = (
    ParamTensors("masks", torch.uint8, _packed_shape, _mask_required, _padding_is_zero),
    # movement scores: present for every parameter exactly when criterion="movement" (checked below)
    ParamTensors("scores", torch.float32, lambda shape: shape, lambda name, numbers: False, _finite),
)
TOP_LEVEL = ("format", "step", "config")
OPTIONAL = ("structure",)  # the channel groups of a structure="channel" pruner (pruning_tools.structured)
SETTING_DEFAULTS = {
    "criterion": "magnitude",
    "structure": "none",
    "round_to": 1,
}  # what a state written before a setting existed implies


@dataclass
class ValidState:
    """A state checked against one pruner: ``numbers[key][name]``, ``tensors[key][name]`` (CPU torch
    tensors of the declared dtype and shape; absent where a parameter has none)."""

    step: int
    numbers: dict[str, dict[str, float]]
    tensors: dict[str, dict[str, Tensor]]


def is_state(state: Any) -> bool:
    """Whether ``state`` claims to be a pruner state (a mapping with our format string)."""
    return isinstance(state, Mapping) and state.get("format") == STATE_FORMAT


def validate_state(state: Any, config: PruneConfig, local_shapes: Mapping[str, tuple[int, ...]]) -> ValidState:
    """Check a whole pruner ``state`` against ``config`` and the parameters' (local) shapes.

    Raises ``ValueError`` naming the entry, the parameter and what was expected; returns the values
    ready to apply. Nothing is modified.
    """
    if not is_state(state):
        raise ValueError(f"state is not a pruner state of format {STATE_FORMAT!r}")
    allowed = (
        TOP_LEVEL + tuple(e.key for e in PER_PARAMETER_NUMBERS) + tuple(e.key for e in PER_PARAMETER_TENSORS) + OPTIONAL
    )
    unknown = sorted(str(key) for key in set(state) - set(allowed))
    if unknown:
        raise ValueError(f"state has unknown entries {unknown}: expected only {list(allowed)}")
    optional = [e.key for e in PER_PARAMETER_TENSORS] + list(OPTIONAL)
    missing = [key for key in allowed if key not in state and key not in optional]
    if missing:
        raise ValueError(f"state lacks the entries {missing}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"state['step']={step!r} is not allowed: expected an integer >= 0")
    if not isinstance(state["config"], Mapping):
        raise ValueError(f"state['config'] is a {type(state['config']).__name__}: expected a dict of settings")
    differing = differing_settings(config.to_dict(), state["config"])
    if differing:
        raise ValueError(f"state was saved with different settings: {differing}")
    names = list(config.params)
    values: dict[str, dict[str, float]] = {}
    for entry in PER_PARAMETER_NUMBERS:
        given = _per_parameter(state, entry.key, names, every=True)
        values[entry.key] = {name: entry.check(f"state[{entry.key!r}][{name!r}]", given[name]) for name in names}
    tensors: dict[str, dict[str, Tensor]] = {}
    for tensor_entry in PER_PARAMETER_TENSORS:
        given = _per_parameter(state, tensor_entry.key, names, every=False)
        out = {}
        for name in names:
            where = f"state[{tensor_entry.key!r}][{name!r}]"
            if name not in given:
                if tensor_entry.required(name, values):
                    raise ValueError(
                        f"{where} is missing: parameter {name!r} has been pruned (mask target "
                        f"{values['mask_targets'][name]}), so its state needs one"
                    )
                continue
            out[name] = _tensor(where, given[name], tensor_entry, tuple(local_shapes[name]))
        tensors[tensor_entry.key] = out
    for name, packed in tensors["masks"].items():
        problem = _mask_against_target(packed, config.params[name], values, name, tuple(local_shapes[name]))
        if problem:
            raise ValueError(f"state['masks'][{name!r}] contradicts its target: {problem}")
    scored = set(tensors.get("scores", {}))
    if config.criterion == "movement" and scored != set(names):
        raise ValueError(
            f"state['scores'] lacks the parameters {[n for n in names if n not in scored]}: a criterion='movement' "
            "state holds the movement scores of every pruned parameter"
        )
    if config.criterion != "movement" and scored:
        raise ValueError(f"state['scores'] holds movement scores, but this pruner has criterion={config.criterion!r}")
    return ValidState(int(step), values, tensors)


def _mask_against_target(
    packed: Tensor, spec: ParamSpec, numbers: Mapping[str, Mapping[str, float]], name: str, local: tuple[int, ...]
) -> str | None:
    """What is wrong with a mask for the target it was made for, or None. A mask never keeps more than
    its target's budget (every bank, under ``balance="fix"``; the whole tensor under ``"none"``), and
    keeps exactly that budget when nothing was pruned before the pruner began (``initial_sparsity``
    0: the targets only rise, so a refresh always had enough live weights to choose from). A mask made
    of the model's own zeros (``restore_sparsity`` / ``fix_sparsity``, its target the initial sparsity)
    follows no bank budget: it keeps exactly the weights that were not zero. Global masks share one
    pooled budget and are not checked one by one; nor are counts of a shard against a whole tensor's."""
    target, initial = numbers["mask_targets"][name], numbers["initial_sparsity"][name]
    numel = math.prod(local)
    if spec.balance == "global" or numel == 0:
        return None
    mask = M.unpack_bits(packed, local)
    kept = int(mask.sum())
    if initial > 0 and target == initial:  # the model's own zeros, not a budget
        allowed = G.keep_count(numel, target)
        if local == spec.shape and kept != allowed:
            return f"it keeps {kept} of {numel} weights, where the initial sparsity {initial} leaves {allowed}"
        return None
    if spec.balance == "fix":
        budget = G.bank_budget(G.row_length(local, spec.layout, spec.out_dim), spec.bank_size, target)
        allowed = G.row_count(local, spec.layout, spec.out_dim) * (budget.full_banks * budget.keep + budget.tail_keep)
        if not M.check_banks(mask.to(torch.uint8), spec.bank_size, spec.layout, spec.out_dim, target).balanced:
            return f"some bank keeps more than the {budget.keep} weights of target {target}"
    elif local == spec.shape:
        allowed = G.keep_count(numel, target)
    else:
        return None
    if kept > allowed or (initial == 0 and kept != allowed):
        return f"it keeps {kept} of {numel} weights, where target {target} keeps {allowed}"
    return None


def _per_parameter(state: Mapping[str, Any], key: str, names: list[str], every: bool) -> Mapping[str, Any]:
    given = state.get(key, {})
    if not isinstance(given, Mapping):
        raise ValueError(f"state[{key!r}] is a {type(given).__name__}: expected a dict by parameter name")
    unknown = sorted(str(n) for n in set(given) - set(names))
    if unknown:
        raise ValueError(f"state[{key!r}] names parameters this pruner does not have: {unknown}")
    absent = [n for n in names if n not in given]
    if every and absent:
        raise ValueError(f"state[{key!r}] lacks the parameters {absent}")
    return given


def _tensor(where: str, value: Any, entry: ParamTensors, local_shape: tuple[int, ...]) -> Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{where} has dtype {value.dtype}: expected {entry.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise ValueError(f"{where} is a {type(value).__name__}: expected a {entry.dtype} tensor")
    if value.dtype != entry.dtype:
        raise ValueError(f"{where} has dtype {value.dtype}: expected {entry.dtype}")
    expected = entry.shape(local_shape)
    if tuple(value.shape) != expected:
        raise ValueError(
            f"{where} has shape {list(value.shape)}: expected {list(expected)} for a parameter of shape "
            f"{list(local_shape)}"
        )
    value = value.detach().cpu()
    problem = entry.check(value, local_shape) if entry.check is not None else None
    if problem:
        raise ValueError(f"{where} is not valid: {problem}")
    return value


def differing_settings(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """What differs between this pruner's ``config.to_dict()`` and a state's, one readable item each.

    Per-parameter keys that a state written by an earlier release lacks (``shape``, ``dtype``) are
    not counted as differing; a parameter's shape and dtype are named with both values.
    """
    differing = [
        f"{key}: {theirs.get(key, SETTING_DEFAULTS.get(key))!r} in the state, {mine[key]!r} here"
        for key in mine
        if key != "params" and mine[key] != theirs.get(key, SETTING_DEFAULTS.get(key))
    ]
    unknown = sorted(str(key) for key in set(theirs) - set(mine))
    if unknown:
        differing.append(f"unknown settings {unknown}")
    their_params = theirs.get("params", {})
    if not isinstance(their_params, Mapping):
        return [*differing, f"params: a {type(their_params).__name__} in the state, expected a dict"]
    if set(mine["params"]) != set(their_params):
        only_state = sorted(set(their_params) - set(mine["params"]))
        only_here = sorted(set(mine["params"]) - set(their_params))
        differing.append(f"params: only in the state {only_state}, only here {only_here}")
        return differing
    for name, spec in mine["params"].items():
        other = their_params[name]
        if not isinstance(other, Mapping):
            differing.append(f"params[{name!r}]: a {type(other).__name__} in the state, expected a dict")
            continue
        for key in sorted(set(spec) | set(other)):
            if key not in spec:
                differing.append(f"params[{name!r}]: unknown setting {key!r}")
            elif key in other and _normal(other[key]) != _normal(spec[key]) and not _unrecorded(key, other, spec):
                what = "shape" if key == "shape" else key
                differing.append(
                    f"params[{name!r}] {what}: {_normal(other[key])!r} in the state, {_normal(spec[key])!r} here"
                )
    return differing


def _unrecorded(key: str, theirs: Mapping[str, Any], mine: Mapping[str, Any]) -> bool:
    """A dtype that one side did not record (``""``) is not a difference."""
    return key == "dtype" and "" in (theirs[key], mine[key])


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


__all__ = [
    "PER_PARAMETER_NUMBERS",
    "PER_PARAMETER_TENSORS",
    "STATE_FORMAT",
    "ParamNumbers",
    "ParamTensors",
    "ValidState",
    "differing_settings",
    "is_state",
    "validate_state",
]
