"""The state every framework adapter shares: step counter, masks, targets, checks, state_dict, files.

Framework-free in the sense that it never sees a model: an adapter hands it a *bridge* (names,
shapes, read a weight as a torch tensor, zero the pruned weights) and a *strategy* for computing and
counting masks (``pruning_tools.distributed``: whole tensors, or DTensor shards). Masks are bool
torch tensors computed by ``masks.py``; the schedule comes from ``schedule.py`` and the settings from
``config.py``. So PyTorch and MXNet share one copy of the logic and produce identical masks from
identical weights.

Data flows one way: config -> schedule -> masks -> the bridge writes the weights.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor

from . import distributed as D
from . import geometry as G
from . import masks as M
from .config import ParamSpec, PruneConfig
from .criteria import Magnitude, Movement, make_criterion
from .schedule import is_refresh_step, last_step, target_sparsity

STATE_FORMAT = "pruning_tools.Prune/1"
_MASK_PREFIX = "masks/"
_SCORE_PREFIX = "scores/"
_SETTING_DEFAULTS = {"criterion": "magnitude"}  # settings a state written before they existed holds implicitly


class FrameworkBridge(Protocol):
    """What the pruner needs from a framework: the weights by name, as torch tensors, and a way to
    zero the pruned ones. ``pytorch_pruning.TorchBridge`` and ``mxnet_pruning.MxnetBridge``."""

    def read(self, name: str) -> Tensor:
        """Parameter ``name`` as a torch tensor: the parameter itself (PyTorch) or a host copy (MXNet)."""
        ...

    def apply_mask(self, name: str, mask: Tensor) -> None:
        """Zero parameter ``name`` where ``mask`` is False: exactly ``+0.0``, a NaN there cleared too."""
        ...

    def grad(self, name: str) -> Tensor | None:
        """The gradient of parameter ``name`` (of this rank's shard), or None: read by ``criterion="movement"``."""
        ...


# ---------------------------------------------------------------- state files


def write_state_file(state: Mapping[str, Any], path: str | Path) -> None:
    """Write a pruner ``state_dict()`` to a safetensors file, without pickle.

    The bit-packed masks become uint8 tensors ``masks/<name>``, movement scores (``criterion="movement"``)
    float32 tensors ``scores/<name>``; everything else (plain ints, floats, strings) goes into the
    file's metadata as JSON, which round-trips floats exactly.
    """
    from safetensors.numpy import save_file

    tensors = {
        _MASK_PREFIX + name: np.ascontiguousarray(np.asarray(packed, dtype=np.uint8))
        for name, packed in state["masks"].items()
    }
    for name, scores in state.get("scores", {}).items():
        tensors[_SCORE_PREFIX + name] = np.ascontiguousarray(np.asarray(scores, dtype=np.float32))
    plain = {key: value for key, value in state.items() if key not in ("masks", "scores")}
    save_file(tensors, str(path), metadata={"format": STATE_FORMAT, "state": json.dumps(plain)})


def read_state_file(path: str | Path) -> dict:
    """Inverse of ``write_state_file``: the state dict, masks as uint8 numpy arrays (movement scores
    as float32 numpy arrays under ``"scores"``, when the file holds any)."""
    from safetensors import SafetensorError, safe_open

    try:
        f = safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a pruner state file of format {STATE_FORMAT!r}: {error}") from error
    with f:
        metadata = f.metadata() or {}
        if metadata.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a pruner state file of format {STATE_FORMAT!r}")
        state = json.loads(metadata["state"])
        keys = list(f.keys())
        state["masks"] = {key[len(_MASK_PREFIX) :]: f.get_tensor(key) for key in keys if key.startswith(_MASK_PREFIX)}
        scores = {key[len(_SCORE_PREFIX) :]: f.get_tensor(key) for key in keys if key.startswith(_SCORE_PREFIX)}
        if scores:
            state["scores"] = scores
    return state


def read_state(path: str | Path) -> dict:
    """A pruner state from a file: the safetensors file of ``Prune.save``, or a ``state_dict()`` saved
    with ``torch.save`` (read with ``weights_only=True``: no pickle code runs)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_state_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path} is not a pruner state ({type(error).__name__}: {error})") from error
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a pruner state of format {STATE_FORMAT!r}")
    return dict(state)


def pruned_specs(source: Pruner | Mapping[str, Any] | str | Path) -> dict[str, ParamSpec]:
    """The per-parameter specs of a pruner, of its ``state_dict()`` or of a saved state file, each with
    ``sparsity`` set to the target its current mask was made for (the budget a checker applies).

    This is what the packed export and the bank-sparse conversion read geometry from (bank size,
    layout, output dim), so nobody restates it.
    """
    if isinstance(source, Pruner):
        return {name: replace(spec, sparsity=source.mask_target(name)) for name, spec in source.config.params.items()}
    state = read_state(source) if isinstance(source, (str, Path)) else source
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"state is not a pruner state of format {STATE_FORMAT!r}")
    targets = state.get("mask_targets", {})
    specs = {}
    for name, data in state["config"]["params"].items():
        spec = ParamSpec.from_dict(data)
        specs[name] = replace(spec, sparsity=float(targets.get(name, spec.sparsity)))
    return specs


# ---------------------------------------------------------------- the pruner


class Pruner:
    """Schedule-driven masks over named weights. Adapters set ``config``, ``_bridge`` and
    ``_strategy`` and call ``_init_state()`` once the weights exist."""

    config: PruneConfig
    _bridge: FrameworkBridge
    _strategy: D.LocalMasks
    _step: int
    _masks: dict[str, Tensor | None]  # None: nothing pruned yet
    _initial: dict[str, float]
    _mask_targets: dict[str, float]
    _criterion: Magnitude | Movement

    # ------------------------------------------------------------ adapter hooks

    def _check_ready(self) -> None:
        """Raise when the adapter cannot read its weights yet (MXNet deferred initialisation)."""

    # ------------------------------------------------------------ public API

    @property
    def step(self) -> int:
        """Number of ``prune()`` calls so far."""
        return self._step

    def target(self, name: str, step: int | None = None) -> float:
        """Scheduled target sparsity of parameter ``name`` at ``step`` (default: the current step)."""
        spec = self.config.params[name]
        t = self._step if step is None else step
        if self.config.fix_sparsity:
            return self._initial[name]
        c = self.config
        return target_sparsity(t, c.pretrain_step, c.sparse_step, self._initial_of(name), spec.sparsity)

    def mask_target(self, name: str) -> float:
        """The target sparsity the current mask of ``name`` was made for (its budget in ``check()``)."""
        return self._mask_targets[name]

    @torch.no_grad()
    def prune(self) -> None:
        """Advance one step: refresh the masks if the schedule says so, then apply them."""
        self._check_ready()
        self._step += 1
        c = self.config
        if not c.fix_sparsity and self._step <= last_step(c.pretrain_step, c.sparse_step):
            self._accumulate_scores()
        if not c.fix_sparsity and is_refresh_step(self._step, c.pretrain_step, c.sparse_step, c.frequency):
            self._refresh()
        self._apply()

    @torch.no_grad()
    def sparsity(self) -> tuple[dict[str, float], float]:
        """``(per-parameter fraction of zeros, overall fraction)``, counted in the weights."""
        self._check_ready()
        zeros = {name: spec.numel - self._strategy.count_nonzero(self._bridge.read(name))
                 for name, spec in self.config.params.items()}  # fmt: skip
        total = sum(spec.numel for spec in self.config.params.values())
        per_layer = {name: zeros[name] / max(1, spec.numel) for name, spec in self.config.params.items()}
        return per_layer, sum(zeros.values()) / max(1, total)

    @torch.no_grad()
    def check(self) -> tuple[dict[str, bool], bool]:
        """``(per-parameter ok, all ok)``: every bank (or tensor, or pool) holds at most the budget
        of the target its current mask was made for."""
        self._check_ready()
        ok = {}
        pooled_nonzeros, pooled_size = 0, 0
        for name, spec in self.config.params.items():
            w, target = self._bridge.read(name), self._mask_targets[name]
            if spec.balance == "fix" and len(spec.shape) >= 2:
                ok[name] = self._strategy.banks_balanced(w, spec, target)
                continue
            nonzeros = self._strategy.count_nonzero(w)
            if spec.balance == "global":
                pooled_nonzeros += nonzeros
                pooled_size += spec.numel
            ok[name] = nonzeros <= G.keep_count(spec.numel, target) if spec.balance == "none" else True
        if pooled_size:
            within = pooled_nonzeros <= G.keep_count(pooled_size, self._pooled(self._mask_targets))
            for name, spec in self.config.params.items():
                if spec.balance == "global":
                    ok[name] = within
        return ok, all(ok.values())

    def masks(self) -> dict[str, Tensor]:
        """Current keep-masks (bool, shape of each parameter, or of its local shard under FSDP2);
        all-True for untouched ones. These are the pruner's own tensors: read them, do not modify them."""
        self._check_ready()
        out = {}
        for name, m in self._masks.items():
            if m is None:
                m = torch.ones_like(self._strategy.local(self._bridge.read(name)), dtype=torch.bool)
            out[name] = m
        return out

    def state_dict(self) -> dict:
        """Plain data (ints, floats, strings, uint8 tensors; with ``criterion="movement"`` also the
        float32 scores accumulated since the last refresh, and their step counts): loads with
        ``weights_only=True``."""
        self._check_ready()
        packed = {name: M.pack_bits(m.cpu()) for name, m in self._masks.items() if m is not None}
        state = {
            "format": STATE_FORMAT,
            "step": self._step,
            "config": self.config.to_dict(),
            "initial_sparsity": dict(self._initial),
            "mask_targets": dict(self._mask_targets),
            "masks": packed,
        }
        scores, steps = self._criterion.state()
        if isinstance(self._criterion, Movement):
            state["scores"], state["score_steps"] = scores, steps
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``; the settings must match this pruner's."""
        self._check_ready()
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"state is not a pruner state of format {STATE_FORMAT!r}")
        differing = _differing_settings(self.config.to_dict(), dict(state["config"]))
        if differing:
            raise ValueError(f"state was saved with different settings: {differing}")
        masks: dict[str, Tensor | None] = {}
        for name in self.config.params:
            packed = state["masks"].get(name)
            if packed is None:
                masks[name] = None
            else:
                local = self._strategy.local(self._bridge.read(name))
                packed = torch.as_tensor(packed, dtype=torch.uint8)
                masks[name] = M.unpack_bits(packed, local.shape).to(self._mask_device(local))
        self._criterion.load_state(state.get("scores", {}), state.get("score_steps", {}))
        self._masks = masks
        self._step = int(state["step"])
        self._initial = {name: float(v) for name, v in state["initial_sparsity"].items()}
        self._mask_targets = {name: float(v) for name, v in state["mask_targets"].items()}

    def save(self, path: str | Path) -> None:
        """Write ``state_dict()`` to a safetensors file (no pickle); ``load(path)`` resumes from it."""
        write_state_file(self._plain_state(), path)

    def load(self, path: str | Path) -> None:
        """Resume from a file written by ``save`` (or a ``state_dict()`` saved with ``torch.save``)."""
        self.load_state_dict(read_state(path))

    def broadcast_masks(self, src: int = 0, group: Any = None) -> None:
        """Make every rank's masks equal rank ``src``'s and re-apply them to the weights.

        For replicated weights (DDP) the masks already agree by construction; this is the explicit
        guarantee. Call it on every rank, after ``prune()``. Sharded parameters (DTensors) are
        skipped: each rank holds the mask of its own shard.
        """
        self._check_ready()
        for name, mask in self.masks().items():
            if D.is_sharded(self._bridge.read(name)):
                continue
            received = D.broadcast_mask(mask, src, group)
            self._masks[name] = None if bool(received.all()) else received
        self._apply()

    # ------------------------------------------------------------ internals

    def _plain_state(self) -> dict:
        """``state_dict()`` with numpy masks (what ``write_state_file`` stores)."""
        state = Pruner.state_dict(self)
        state["masks"] = {name: np.asarray(packed) for name, packed in state["masks"].items()}
        if "scores" in state:
            state["scores"] = {name: s.numpy() for name, s in state["scores"].items()}
        return state

    def _apply(self) -> None:
        for name, mask in self._masks.items():
            if mask is not None:
                self._bridge.apply_mask(name, mask)

    def _init_state(self) -> None:
        """Step 0: no masks, or the existing zeros with ``restore_sparsity``/``fix_sparsity``."""
        self._step = 0
        restore = self.config.restore_sparsity or self.config.fix_sparsity
        self._masks = {}
        self._initial = {}
        for name, spec in self.config.params.items():
            w = self._bridge.read(name)
            self._masks[name] = self._existing_zeros(w) if restore else None
            self._initial[name] = (
                (spec.numel - self._strategy.count_nonzero(w)) / max(1, spec.numel) if restore else 0.0
            )
        self._mask_targets = dict(self._initial)  # target each current mask was made for
        local = {name: self._strategy.local(self._bridge.read(name)) for name in self.config.params}
        shapes = {name: tuple(t.shape) for name, t in local.items()}
        self._criterion = make_criterion(self.config.criterion, shapes, {name: t.device for name, t in local.items()})
        self._warn_unreachable()

    def _mask_device(self, p: Tensor) -> torch.device:
        return torch.device("cpu") if self.config.prune_device == "cpu" else p.device

    def _existing_zeros(self, p: Tensor) -> Tensor | None:
        local = self._strategy.local(p)
        mask = (local.detach() != 0).to(self._mask_device(local))
        return None if bool(mask.all()) else mask

    def _pooled(self, values: Mapping[str, float]) -> float:
        """Size-weighted mean of ``values`` over the parameters in global mode (sizes from the specs)."""
        sizes = {n: s.numel for n, s in self.config.params.items() if s.balance == "global"}
        return sum(values[n] * size for n, size in sizes.items()) / max(1, sum(sizes.values()))

    def _initial_of(self, name: str) -> float:
        if self.config.params[name].balance == "global":
            return self._pooled(self._initial)
        return self._initial[name]

    def _accumulate_scores(self) -> None:
        """Add this step's term to the criterion's scores (nothing for magnitude)."""
        if isinstance(self._criterion, Magnitude):
            return
        for name in self.config.params:
            w = self._strategy.local(self._bridge.read(name))
            self._criterion.accumulate(name, w, self._bridge.grad(name))

    def _refresh(self) -> None:
        pool = []
        scores = {name: self._criterion.scores(name) for name in self.config.params}  # raises before any change
        for name, spec in self.config.params.items():
            target = self.target(name)
            self._mask_targets[name] = target
            if spec.balance == "global":
                pool.append(name)
                continue
            w = self._bridge.read(name).detach()
            device = self._mask_device(self._strategy.local(w))
            self._masks[name] = self._strategy.compute_mask(
                w, self._masks[name], target, spec, name, device, scores=scores[name]
            )
        if pool:
            weights = [self._bridge.read(n).detach() for n in pool]
            devices = [self._mask_device(self._strategy.local(w)) for w in weights]
            target = self._pooled({n: self._mask_targets[n] for n in pool})
            pooled = [scores[n] for n in pool]
            pooled_scores = None if any(sc is None for sc in pooled) else cast(list[Tensor], pooled)
            masks = self._strategy.global_masks(
                weights, [self._masks[n] for n in pool], target, pool, devices, scores=pooled_scores
            )
            for name, mask in zip(pool, masks):
                self._masks[name] = mask
        for name in self.config.params:
            self._criterion.reset(name)

    def _warn_unreachable(self) -> None:
        for name, spec in self.config.params.items():
            shape = spec.shape
            if spec.balance == "global":
                continue
            realised = G.realised_sparsity(
                shape, spec.balance, spec.sparsity, spec.bank_size, spec.layout, spec.out_dim
            )
            # rounding to whole weights per bank (or per tensor) is not "unreachable"
            if spec.balance == "fix":
                granularity = 0.5 / max(1, min(spec.bank_size, G.row_length(shape, spec.layout, spec.out_dim)))
            else:
                granularity = 0.5 / max(1, math.prod(shape))
            if abs(realised - spec.sparsity) > granularity + 1e-9:
                warnings.warn(
                    f"{name} {list(shape)}: target sparsity {spec.sparsity} cannot be reached with "
                    f"balance={spec.balance!r}, bank_size={spec.bank_size}, layout={spec.layout!r}; "
                    f"it will reach {realised:.4f}",
                    stacklevel=4,
                )


def _differing_settings(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """Settings that differ between two ``config.to_dict()``; per-parameter keys a state written by an
    older release lacks (``shape``) are not counted as differing."""
    differing = [key for key in mine if key != "params" and mine[key] != theirs.get(key, _SETTING_DEFAULTS.get(key))]
    their_params = theirs.get("params", {})
    if set(mine["params"]) != set(their_params):
        differing.append("params")
    else:
        for name, spec in mine["params"].items():
            other = their_params[name]
            if any(spec[k] != other[k] for k in spec if k in other) or not set(other) <= set(spec):
                differing.append(f"params[{name!r}]")
    return sorted(differing)


PrunerBase = Pruner  # the name of earlier releases
