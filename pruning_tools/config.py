"""Validated settings. Every user error is raised here, at construction, before any weight is touched.

Framework-free: adapters pass in parameter names, shapes and dtypes as plain Python values.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NoReturn

BALANCES = ("fix", "none", "global")
LAYOUTS = ("channels_last", "flat", "last_dim")  # rows of a weight: pruning_tools.geometry
PRUNE_DEVICES = ("default", "cpu")
CRITERIA = ("magnitude", "movement")  # what a training-time refresh ranks by (pruning_tools.criteria)
PARAM_OPTION_KEYS = ("sparsity", "balance", "bank_size", "layout", "out_dim")
OUT_DIMS = (0, 1)
STRUCTURES = ("none", "channel")  # what a mask removes: single weights, or whole channels (pruning_tools.structured)


def _fail(argument: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{argument}={value!r} is not allowed: expected {allowed}")


def check_step(argument: str, value: Any, minimum: int = 0) -> int:
    """An integer >= ``minimum``; an integral float (``47.0``, what ``steps / n`` gives) is that integer.
    Bools are refused (they are almost always a misplaced argument), and so is ``46.8``."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        if not math.isfinite(value) or not float(value).is_integer():
            _fail(argument, value, f"an integer >= {minimum} (a float only when integral, e.g. 47.0)")
        value = int(float(value))
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
    """``value`` if it is one of the strings ``allowed``, else ``ValueError`` naming ``argument`` and ``value``."""
    if not isinstance(value, str) or value not in allowed:
        _fail(argument, value, "one of " + ", ".join(repr(a) for a in allowed))
    return value


def check_bool(argument: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (not merely truthy), else ``ValueError`` naming ``argument``."""
    if not isinstance(value, bool):
        _fail(argument, value, "True or False")
    return value


MAX_BANK_SIZE = 2**31 - 1  # what the kernels, the packed files and the index dtypes address


def check_bank_size(argument: str, value: Any) -> int:
    """An integer in ``[2, 2**31 - 1]`` (an integral float is that integer)."""
    size = check_step(argument, value, minimum=2)
    if size > MAX_BANK_SIZE:
        _fail(argument, value, f"an integer in [2, {MAX_BANK_SIZE}] (2**31 - 1)")
    return size


@dataclass(frozen=True)
class BankGeometry:
    """How one weight is cut into banks: the three settings that always travel together.

    - ``bank_size``: weights per full bank (an integer in ``[2, 2**31 - 1]``); the last bank of a row
      is a shorter tail bank when the row length is not a multiple of it.
    - ``layout``: how rows are read (``"channels_last"``: a conv weight ``[out, in, *kernel]`` as
      ``[out * prod(kernel), in]``; ``"flat"``: ``[out, in * prod(kernel)]``; ``"last_dim"``:
      ``[prod(shape[:-1]), shape[-1]]``). For 2-D weights all three agree.
    - ``out_dim``: the dim of the output channels, 0 (``[out, in, ...]``) or 1 (ConvTranspose
      ``[in, out, *kernel]``, a transposed linear ``[in, out]``).

    Validated on construction: a bad value raises ``ValueError`` naming the field, the value and what
    is allowed (``bool`` is refused for ``out_dim``; an integral float ``bank_size`` becomes an int).

    >>> BankGeometry(4)
    BankGeometry(bank_size=4, layout='channels_last', out_dim=0)
    """

    bank_size: int = 64
    layout: str = "channels_last"
    out_dim: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bank_size", check_bank_size("bank_size", self.bank_size))
        check_choice("layout", self.layout, LAYOUTS)
        if isinstance(self.out_dim, bool) or self.out_dim not in OUT_DIMS:
            raise ValueError(
                f"out_dim={self.out_dim!r} is not allowed: expected 0 or 1 "
                "(the dim of the output channels; 1 for weights [in, out])"
            )
        object.__setattr__(self, "out_dim", int(self.out_dim))


@dataclass(frozen=True)
class ParamSpec:
    """Resolved pruning settings of one parameter.

    ``out_dim`` is the dimension holding output channels: 1 for ConvTranspose weights and transposed
    linear weights ``[in, out]`` (transformers' ``Conv1D``, or any parameter given ``"out_dim": 1``), else 0.
    ``layout`` is how its rows are read (``pruning_tools.geometry``): the pruner's ``layout`` for conv
    weights, ``"last_dim"`` for other parameters with more than 2 dims, unless ``prune_dict`` says.
    ``balance`` is the pattern actually used: 1-D parameters asked for ``"fix"`` fall back to
    ``"none"``. ``shape`` is the parameter's shape (so nothing has to re-read a weight to size it) and
    ``dtype`` its element type by name (``"float32"``, ``"bfloat16"``...; ``""``: not recorded).
    """

    sparsity: float
    balance: str
    bank_size: int
    layout: str
    out_dim: int = 0
    shape: tuple[int, ...] = ()
    dtype: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def geometry(self) -> BankGeometry:
        """``(bank_size, layout, out_dim)`` as one validated ``BankGeometry``."""
        return BankGeometry(self.bank_size, self.layout, self.out_dim)

    def to_dict(self) -> dict:
        """Plain data (JSON-ready)."""
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "spec") -> ParamSpec:
        """Inverse of ``to_dict``, every field validated (it may come from a file; ``where`` names it in
        errors). States written before ``shape`` / ``dtype`` existed read as ``()`` / ``""``."""
        if not isinstance(data, Mapping):
            _fail(where, data, "a dict of parameter settings")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            _fail(where, dict(data), f"a dict with keys among {[f.name for f in fields(cls)]} (unknown: {unknown})")
        missing = [key for key in ("sparsity", "balance", "bank_size", "layout") if key not in data]
        if missing:
            _fail(where, dict(data), f"a dict with the keys {missing}")
        out_dim = data.get("out_dim", 0)
        if isinstance(out_dim, bool) or out_dim not in OUT_DIMS:
            _fail(f"{where}['out_dim']", out_dim, "0 or 1")
        shape = data.get("shape", ())
        if not isinstance(shape, (list, tuple)):
            _fail(f"{where}['shape']", shape, "a list of integers >= 0")
        dtype = data.get("dtype", "")
        if not isinstance(dtype, str):
            _fail(f"{where}['dtype']", dtype, "a dtype name such as 'float32'")
        return cls(
            sparsity=check_sparsity(f"{where}['sparsity']", data["sparsity"]),
            balance=check_choice(f"{where}['balance']", data["balance"], BALANCES),
            bank_size=check_bank_size(f"{where}['bank_size']", data["bank_size"]),
            layout=check_choice(f"{where}['layout']", data["layout"], LAYOUTS),
            out_dim=int(out_dim),
            shape=tuple(check_step(f"{where}['shape']", n) for n in shape),
            dtype=dtype,
        )


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
    structure: str = "none"
    round_to: int = 1

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

    def with_dtypes(self, dtypes: Mapping[str, str]) -> PruneConfig:
        """The same settings with the parameters' dtypes (names such as ``"float32"``) filled in."""
        params = {name: replace(spec, dtype=str(dtypes[name])) for name, spec in self.params.items()}
        return replace(self, params=params)


def _param_options(key: str, value: Any, defaults: dict) -> tuple[dict, set[str]]:
    """The settings one prune_dict entry asks for (a sparsity, or a dict of overrides), and the keys it
    set explicitly."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(PARAM_OPTION_KEYS))
        if unknown:
            _fail(
                f"prune_dict[{key!r}]", dict(value), f"a dict with keys among {PARAM_OPTION_KEYS} (unknown: {unknown})"
            )
        if "sparsity" not in value:
            _fail(f"prune_dict[{key!r}]", dict(value), "a dict with a 'sparsity' entry")
        options, explicit = dict(defaults, **value), set(value)
    else:
        options, explicit = dict(defaults, sparsity=value), {"sparsity"}
    where = f"prune_dict[{key!r}]"
    checked = {
        "sparsity": check_sparsity(where, options["sparsity"]),
        "balance": check_choice(f"{where}['balance']", options["balance"], BALANCES),
        "bank_size": check_bank_size(f"{where}['bank_size']", options["bank_size"]),
        "layout": check_choice(f"{where}['layout']", options["layout"], LAYOUTS),
    }
    if "out_dim" in explicit:
        out_dim = options["out_dim"]
        if isinstance(out_dim, bool) or out_dim not in OUT_DIMS:
            _fail(f"{where}['out_dim']", out_dim, "0 or 1 (the dim of the output channels; 1 for weights [in, out])")
        checked["out_dim"] = int(out_dim)
    return checked, explicit


def resolve_prune_dict(
    prune_dict: Any,
    shapes: Mapping[str, tuple[int, ...]],
    defaults: dict,
    out_dims: Mapping[str, int] | None = None,
    layouts: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
    dtypes: Mapping[str, str] | None = None,
    not_parameters: Mapping[str, str] | None = None,
) -> dict[str, ParamSpec]:
    """Match prune_dict keys (exact names or glob patterns) to parameter names.

    Keys are applied in the dict's order, so a later key overrides an earlier one for the names
    both match; an exact name always wins over a pattern. ``shapes`` maps every parameter name,
    in model order, to its shape; the result follows that order. The caller's dict is only read.

    What the framework adapter knows of the model: ``out_dims`` (name -> 1 where output channels
    are on dim 1), ``layouts`` (name -> the layout to read it with when ``prune_dict`` does not say:
    ``"last_dim"`` for N-D parameters no convolution owns) and ``aliases`` (other spellings of a
    name -> the name: without a wrapper's prefix, with ``torch.compile``'s ``_orig_mod.``, a tied
    weight's second name); keys and globs may use either; ``dtypes`` (name -> dtype name) is recorded
    in the specs. Globs that catch parameters with fewer
    than 2 dims (biases, norm gains) still prune them, unstructured, and say so in one warning.
    ``not_parameters`` maps names the model holds that are not parameters (buffers, MXNet auxiliary
    states) to what they are: a key naming one is refused saying so; patterns never match them.
    """
    _check_prune_dict(prune_dict)
    names = list(shapes)
    aliases = {alias: name for alias, name in (aliases or {}).items() if alias not in shapes}
    chosen, named_by = _match_keys(prune_dict, shapes, defaults, aliases, not_parameters or {})
    _check_spellings(named_by, chosen)
    resolved, caught_low_dim = _build_specs(names, chosen, shapes, out_dims or {}, layouts or {}, dtypes or {})
    if caught_low_dim:
        _warn_low_dim(caught_low_dim)
    return resolved


def _check_prune_dict(prune_dict: Any) -> None:
    """Refuse a prune_dict that is None, not a mapping or empty."""
    if prune_dict is None:
        raise ValueError(
            "prune_dict=None is not allowed: expected a dict mapping parameter names or glob "
            "patterns to target sparsities, e.g. {'*.weight': 0.9}"
        )
    if not isinstance(prune_dict, Mapping):
        _fail("prune_dict", prune_dict, "a dict mapping parameter names or glob patterns to sparsities")
    if not prune_dict:
        _fail("prune_dict", dict(prune_dict), "a non-empty dict, e.g. {'*.weight': 0.9}")


def _match_keys(
    prune_dict: Mapping,
    shapes: Mapping[str, tuple[int, ...]],
    defaults: dict,
    aliases: Mapping[str, str],
    not_parameters: Mapping[str, str],
) -> tuple[
    dict[str, tuple[bool, str, dict, set[str]]],
    dict[str, list[tuple[str, bool, dict, frozenset[str]]]],
]:
    """Apply the keys in order: the key chosen per parameter name, and every key that named it."""
    names = list(shapes)
    spellings = [(name, name) for name in names] + list(aliases.items())  # (spelling, name)
    chosen: dict[str, tuple[bool, str, dict, set[str]]] = {}  # name -> (exact, key, options, explicit)
    named_by: dict[str, list[tuple[str, bool, dict, frozenset[str]]]] = {}  # name -> (key, exact, options, spellings)
    for key, value in prune_dict.items():
        if not isinstance(key, str):
            _fail("prune_dict key", key, "a parameter name or glob pattern (str)")
        options, explicit = _param_options(key, value, defaults)
        exact = key in shapes or key in aliases
        spelled = _spellings_matched(key, exact, aliases, spellings)
        matches = [aliases.get(key, key)] if exact else [name for name in names if name in spelled]
        if not matches:
            _fail_unmatched(key, names, spellings, not_parameters)
        for name in matches:
            named_by.setdefault(name, []).append((key, exact, options, spelled[name]))
            if exact or not chosen.get(name, (False,))[0]:
                chosen[name] = (exact, key, options, explicit)
    return chosen, named_by


def _spellings_matched(
    key: str, exact: bool, aliases: Mapping[str, str], spellings: list[tuple[str, str]]
) -> dict[str, frozenset[str]]:
    """Parameter name -> the spellings of it that ``key`` matches (itself when exact, else as a glob)."""
    if exact:
        return {aliases.get(key, key): frozenset([key])}
    spelled: dict[str, frozenset[str]] = {}
    for spelling, name in spellings:
        if fnmatch.fnmatch(spelling, key):
            spelled[name] = spelled.get(name, frozenset()) | {spelling}
    return spelled


def _fail_unmatched(
    key: str, names: list[str], spellings: list[tuple[str, str]], not_parameters: Mapping[str, str]
) -> NoReturn:
    """Refuse a key that matches no parameter, naming what it names instead or the closest names."""
    what = not_parameters.get(key)
    if what is not None:
        raise ValueError(f"prune_dict key {key!r} names {what}, not a parameter: only parameters are pruned")
    close = difflib.get_close_matches(key, [s for s, _ in spellings], n=3, cutoff=0.4) or names[:3]
    raise ValueError(f"prune_dict key {key!r} matches no parameter of the model; closest names: {close}")


def _build_specs(
    names: list[str],
    chosen: Mapping[str, tuple[bool, str, dict, set[str]]],
    shapes: Mapping[str, tuple[int, ...]],
    out_dims: Mapping[str, int],
    layouts: Mapping[str, str],
    dtypes: Mapping[str, str],
) -> tuple[dict[str, ParamSpec], list[str]]:
    """One ParamSpec per chosen name in model order, and the low-dim names a pattern caught."""
    resolved, caught_low_dim = {}, []
    for name in names:
        if name not in chosen:
            continue
        exact, key, options, explicit = chosen[name]
        options, shape = dict(options), tuple(shapes[name])
        out_dim = options.pop("out_dim", out_dims.get(name, 0))
        if out_dim and len(shape) < 2:
            _fail(f"prune_dict[{key!r}]['out_dim']", out_dim, f"0 for {name} of shape {list(shape)} (< 2 dims)")
        if "layout" not in explicit:
            options["layout"] = layouts.get(name, options["layout"])
        if options["balance"] == "fix" and len(shape) < 2:
            options["balance"] = "none"
        if not exact and len(shape) < 2 and options["sparsity"] > 0:
            caught_low_dim.append(name)
        resolved[name] = ParamSpec(**options, out_dim=out_dim, shape=shape, dtype=str(dtypes.get(name, "")))
    return resolved, caught_low_dim


def _warn_low_dim(caught_low_dim: list[str]) -> None:
    """Warn once that patterns caught parameters with fewer than 2 dims (pruned unstructured)."""
    warnings.warn(
        f"prune_dict patterns also match {len(caught_low_dim)} parameter{'s' * (len(caught_low_dim) != 1)} "
        f"with fewer than 2 dims (biases, norm gains), pruned unstructured: {caught_low_dim}; to keep them "
        "dense, list only parameters "
        "with p.dim() > 1, e.g. {n: 0.9 for n, p in model.named_parameters() if p.dim() > 1}",
        stacklevel=5,  # one more than resolve_prune_dict's own call needed
    )


def _check_spellings(
    named_by: Mapping[str, list[tuple[str, bool, dict, frozenset[str]]]],
    chosen: Mapping[str, tuple[bool, str, dict, set[str]]],
) -> None:
    """One parameter given different settings under different spellings (a tied weight's two names,
    a wrapper's prefix): two exact names are a ``ValueError``; otherwise the usual rule applies (an exact
    name over a pattern, else the later key) and a warning names the parameter, the keys and the winner.
    Keys that match one same spelling override each other as usual, silently."""
    conflicts = []
    for name, sources in named_by.items():
        for i, (key_a, exact_a, options_a, spelled_a) in enumerate(sources):
            for key_b, exact_b, options_b, spelled_b in sources[i + 1 :]:
                if options_a == options_b or spelled_a & spelled_b:
                    continue
                if exact_a and exact_b:
                    raise ValueError(
                        f"prune_dict keys {key_a!r} and {key_b!r} name one parameter ({name}: a tied weight, or "
                        f"another spelling of it) with different settings {options_a} and {options_b}: expected "
                        "one setting per parameter; give it under one name"
                    )
                conflicts.append(f"{name} by {key_a!r} and {key_b!r} ({chosen[name][1]!r} applies)")
    if conflicts:
        warnings.warn(
            "prune_dict gives one parameter different settings under different names (a tied weight, or "
            f"another spelling of it): {'; '.join(conflicts)}. The rule: an exact name wins over a pattern, "
            "else the later key; list the parameter once to silence this",
            stacklevel=5,
        )


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
    layouts: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
    dtypes: Mapping[str, str] | None = None,
    criterion: Any = "magnitude",
    not_parameters: Mapping[str, str] | None = None,
    structure: Any = "none",
    round_to: Any = 1,
) -> PruneConfig:
    """Validate every constructor argument and resolve prune_dict against ``shapes`` (the other
    mappings as in ``resolve_prune_dict``)."""
    defaults: dict[str, Any] = {
        "balance": check_choice("balance", balance, BALANCES),
        "bank_size": check_bank_size("bank_size", bank_size),
        "layout": check_choice("layout", layout, LAYOUTS),
    }
    structure = check_choice("structure", structure, STRUCTURES)
    round_to = check_step("round_to", round_to, minimum=1)
    if structure == "none" and round_to != 1:
        _fail("round_to", round_to, "1 unless structure='channel' (it rounds the kept channel counts)")
    if structure != "none" and isinstance(prune_dict, Mapping):
        for key, value in prune_dict.items():
            if isinstance(value, Mapping) and set(value) != {"sparsity"}:
                _fail(
                    f"prune_dict[{key!r}]",
                    dict(value),
                    "a sparsity (or {'sparsity': s}) with structure='channel': balance, bank_size, layout and "
                    "out_dim describe single-weight masks (bank-balance the shrunk model with a second Prune)",
                )
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
        structure=structure,
        round_to=round_to,
        params=resolve_prune_dict(prune_dict, shapes, defaults, out_dims, layouts, aliases, dtypes, not_parameters),
    )
