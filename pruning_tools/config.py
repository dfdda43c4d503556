"""Validated settings. Every user error is raised here, at construction, before any weight is touched.

Framework-free: adapters pass in parameter names, shapes and dtypes as plain Python values.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

BALANCES = ("fix", "none", "global")
LAYOUTS = ("channels_last", "flat")
PRUNE_DEVICES = ("default", "cpu")
CRITERIA = ("magnitude", "movement")  # what a training-time refresh ranks by (pruning_tools.criteria)
PARAM_OPTION_KEYS = ("sparsity", "balance", "bank_size", "layout")


def _fail(argument: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{argument}={value!r} is not allowed: expected {allowed}")


def check_step(argument: str, value: Any, minimum: int = 0) -> int:
    """An integer >= ``minimum`` (bools are refused: they are almost always a misplaced argument)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(argument, value, f"an integer >= {minimum}")
    if value < minimum:
        _fail(argument, value, f"an integer >= {minimum}")
    return int(value)


def check_sparsity(argument: str, value: Any) -> float:
    """A real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(argument, value, "a number in [0, 1)")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value < 1.0:
        _fail(argument, value, "a number in [0, 1)")
    return value


def check_choice(argument: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        _fail(argument, value, "one of " + ", ".join(repr(a) for a in allowed))
    return value


def check_bool(argument: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(argument, value, "True or False")
    return value


def check_bank_size(argument: str, value: Any) -> int:
    return check_step(argument, value, minimum=2)


@dataclass(frozen=True)
class ParamSpec:
    """Resolved pruning settings of one parameter.

    ``out_dim`` is the dimension holding output channels (1 for ConvTranspose weights, else 0).
    ``balance`` is the pattern actually used: 1-D parameters asked for ``"fix"`` fall back to
    ``"none"``. ``shape`` is the parameter's shape (so nothing has to re-read a weight to size it).
    """

    sparsity: float
    balance: str
    bank_size: int
    layout: str
    out_dim: int = 0
    shape: tuple[int, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict:
        """Plain data (JSON-ready)."""
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamSpec:
        """Inverse of ``to_dict`` (states written before ``shape`` existed read as shape ``()``)."""
        known = {key: data[key] for key in ("sparsity", "balance", "bank_size", "layout", "out_dim") if key in data}
        return cls(**known, shape=tuple(int(n) for n in data.get("shape", ())))


@dataclass(frozen=True)
class PruneConfig:
    """Validated constructor arguments of ``Prune`` (both frameworks)."""

    pretrain_step: int
    sparse_step: int
    frequency: int
    restore_sparsity: bool
    fix_sparsity: bool
    balance: str
    prune_device: str
    bank_size: int
    layout: str
    params: dict[str, ParamSpec] = field(default_factory=dict)
    criterion: str = "magnitude"

    def to_dict(self) -> dict:
        """Plain data (for state_dict and results files)."""
        out = asdict(self)
        out["params"] = {name: spec.to_dict() for name, spec in self.params.items()}
        return out

    def with_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> PruneConfig:
        """The same settings with the parameters' shapes filled in (MXNet knows them after deferred
        initialisation)."""
        params = {name: replace(spec, shape=tuple(shapes[name])) for name, spec in self.params.items()}
        return replace(self, params=params)


def _param_options(key: str, value: Any, defaults: dict) -> dict:
    """The settings one prune_dict entry asks for: a sparsity, or a dict of overrides."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(PARAM_OPTION_KEYS))
        if unknown:
            _fail(
                f"prune_dict[{key!r}]", dict(value), f"a dict with keys among {PARAM_OPTION_KEYS} (unknown: {unknown})"
            )
        if "sparsity" not in value:
            _fail(f"prune_dict[{key!r}]", dict(value), "a dict with a 'sparsity' entry")
        options = dict(defaults, **value)
    else:
        options = dict(defaults, sparsity=value)
    where = f"prune_dict[{key!r}]"
    return {
        "sparsity": check_sparsity(where, options["sparsity"]),
        "balance": check_choice(f"{where}['balance']", options["balance"], BALANCES),
        "bank_size": check_bank_size(f"{where}['bank_size']", options["bank_size"]),
        "layout": check_choice(f"{where}['layout']", options["layout"], LAYOUTS),
    }


def resolve_prune_dict(
    prune_dict: Any,
    shapes: Mapping[str, tuple[int, ...]],
    defaults: dict,
    out_dims: Mapping[str, int] | None = None,
) -> dict[str, ParamSpec]:
    """Match prune_dict keys (exact names or glob patterns) to parameter names.

    Keys are applied in the dict's order, so a later key overrides an earlier one for the names
    both match; an exact name always wins over a pattern. ``shapes`` maps every parameter name,
    in model order, to its shape; the result follows that order. The caller's dict is only read.
    """
    if prune_dict is None:
        raise ValueError(
            "prune_dict=None is not allowed: expected a dict mapping parameter names or glob "
            "patterns to target sparsities, e.g. {'*.weight': 0.9}"
        )
    if not isinstance(prune_dict, Mapping):
        _fail("prune_dict", prune_dict, "a dict mapping parameter names or glob patterns to sparsities")
    if not prune_dict:
        _fail("prune_dict", dict(prune_dict), "a non-empty dict, e.g. {'*.weight': 0.9}")
    names = list(shapes)
    chosen: dict[str, tuple[bool, dict]] = {}
    for key, value in prune_dict.items():
        if not isinstance(key, str):
            _fail("prune_dict key", key, "a parameter name or glob pattern (str)")
        options = _param_options(key, value, defaults)
        exact = key in shapes
        matches = [key] if exact else fnmatch.filter(names, key)
        if not matches:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.4) or names[:3]
            raise ValueError(f"prune_dict key {key!r} matches no parameter of the model; closest names: {close}")
        for name in matches:
            if exact or not chosen.get(name, (False, None))[0]:
                chosen[name] = (exact, options)
    out_dims = out_dims or {}
    resolved = {}
    for name in names:
        if name not in chosen:
            continue
        options = dict(chosen[name][1])
        if options["balance"] == "fix" and len(shapes[name]) < 2:
            options["balance"] = "none"
        resolved[name] = ParamSpec(**options, out_dim=out_dims.get(name, 0), shape=tuple(shapes[name]))
    return resolved


def make_config(
    pretrain_step: Any,
    sparse_step: Any,
    frequency: Any,
    prune_dict: Any,
    restore_sparsity: Any,
    fix_sparsity: Any,
    balance: Any,
    prune_device: Any,
    bank_size: Any,
    layout: Any,
    shapes: Mapping[str, tuple[int, ...]],
    out_dims: Mapping[str, int] | None = None,
    criterion: Any = "magnitude",
) -> PruneConfig:
    """Validate every constructor argument and resolve prune_dict against ``shapes``."""
    defaults: dict[str, Any] = {
        "balance": check_choice("balance", balance, BALANCES),
        "bank_size": check_bank_size("bank_size", bank_size),
        "layout": check_choice("layout", layout, LAYOUTS),
    }
    return PruneConfig(
        pretrain_step=check_step("pretrain_step", pretrain_step),
        sparse_step=check_step("sparse_step", sparse_step),
        frequency=check_step("frequency", frequency, minimum=1),
        restore_sparsity=check_bool("restore_sparsity", restore_sparsity),
        fix_sparsity=check_bool("fix_sparsity", fix_sparsity),
        balance=defaults["balance"],
        prune_device=check_choice("prune_device", prune_device, PRUNE_DEVICES),
        bank_size=defaults["bank_size"],
        layout=defaults["layout"],
        criterion=check_choice("criterion", criterion, CRITERIA),
        params=resolve_prune_dict(prune_dict, shapes, defaults, out_dims),
    )
