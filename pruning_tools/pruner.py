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
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import numpy as np
import torch
from torch import Tensor

from . import distributed as D
from . import geometry as G
from . import integrity
from . import masks as M
from . import pruner_state as S
from .config import ParamSpec, PruneConfig, check_sparsity
from .criteria import Magnitude, Movement, make_criterion
from .pruner_state import STATE_FORMAT
from .schedule import is_refresh_step, last_step, target_sparsity


class FrameworkBridge(Protocol):
    """What the pruner needs from a framework: the weights by name, as torch tensors, and a way to
    zero the pruned ones. ``pytorch_pruning.TorchBridge`` and ``mxnet_pruning.MxnetBridge``."""

    def read(self, name: str) -> Tensor:
        """Parameter ``name`` as a torch tensor: the parameter itself (PyTorch) or a host copy (MXNet)."""
        ...

    def apply_mask(self, name: str, mask: Tensor) -> Tensor | None:
        """Zero parameter ``name`` where ``mask`` is False: exactly ``+0.0``, a NaN there cleared too.
        Returns the torch tensor masked when there is one (PyTorch), else ``None``."""
        ...

    def grad(self, name: str) -> Tensor | None:
        """The gradient of parameter ``name`` (of this rank's shard), or None: read by ``criterion="movement"``."""
        ...


# ---------------------------------------------------------------- state files


def write_state_file(state: Mapping[str, Any], path: str | Path) -> None:
    """Write a pruner ``state_dict()`` to a safetensors file, without pickle, atomically, checksummed.

    Per-parameter tensors (the bit-packed masks and, with ``criterion="movement"``, the float32
    movement scores: ``pruner_state.PER_PARAMETER_TENSORS``) become tensors ``<entry>/<name>``
    (``masks/<name>`` uint8, ``scores/<name>`` float32); everything else (plain ints, floats, strings)
    goes into the file's metadata as JSON, which round-trips floats exactly. A failed write leaves
    the previous file intact (``pruning_tools.atomic``).
    """
    tensor_keys = [entry.key for entry in S.PER_PARAMETER_TENSORS]
    tensors = {
        f"{key}/{name}": np.ascontiguousarray(t.numpy() if isinstance(t, Tensor) else np.asarray(t))
        for key in tensor_keys
        for name, t in state.get(key, {}).items()
    }
    plain = {key: value for key, value in state.items() if key not in tensor_keys}
    integrity.save_file(tensors, path, metadata={"format": STATE_FORMAT, "state": json.dumps(plain)})


def read_state_file(path: str | Path) -> dict:
    """Inverse of ``write_state_file``: the state dict, masks as uint8 numpy arrays (movement scores
    as float32 numpy arrays).

    The file's checksums are verified (``integrity.IntegrityError`` names a damaged tensor); the
    content itself is validated by ``load_state_dict`` against the pruner it is loaded into.
    """
    not_state = f"{path} is not a pruner state file of format {STATE_FORMAT!r}"
    try:
        tensors, metadata = integrity.load_file(path, framework="numpy")
    except integrity.IntegrityError as error:
        raise integrity.IntegrityError(f"{not_state}, or it is damaged: {error}") from error
    except OSError as error:
        raise ValueError(f"{not_state}: {error}") from error
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(not_state)
    if "state" not in metadata:
        raise ValueError(f"{not_state}: its 'state' metadata is missing")
    state = integrity.parse_json(metadata["state"], f"{path}: its 'state' metadata")
    if not isinstance(state, dict):
        raise ValueError(f"{not_state}: its 'state' metadata is a {type(state).__name__}, expected a dict")
    tensor_keys = {entry.key for entry in S.PER_PARAMETER_TENSORS}
    for key in tensor_keys:
        state[key] = {}
    for full, t in tensors.items():
        key, _, name = full.partition("/")
        if key not in tensor_keys or not name:
            raise ValueError(f"{path}: tensor {full!r} is not an entry of a pruner state ({sorted(tensor_keys)})")
        state[key][name] = t
    if not state["scores"]:  # a magnitude pruner's state has none
        del state["scores"]
    return state


def read_state(path: str | Path) -> dict:
    """A pruner state from a file: the safetensors file of ``Prune.save``, or a ``state_dict()`` saved
    with ``torch.save`` (read with ``weights_only=True``: no pickle code runs). Only regular files are
    read; a compressed record may not unpack beyond ``integrity.allocation_limit``."""
    path = integrity.regular_file(path)
    if path.suffix.lower() == ".safetensors":
        return read_state_file(path)
    try:
        state = integrity.load_torch(path)
    except integrity.AllocationLimitError:
        raise
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path} is not a pruner state ({type(error).__name__}: {error})") from error
    if not S.is_state(state):
        raise ValueError(f"{path} is not a pruner state of format {STATE_FORMAT!r}")
    return dict(state)


def pruned_specs(source: Pruner | Mapping[str, Any] | str | Path) -> dict[str, ParamSpec]:
    """The per-parameter specs of a pruner, of its ``state_dict()`` or of a saved state file, each with
    ``sparsity`` set to the target its current mask was made for (the budget a checker applies).

    This is what the packed export and the bank-sparse conversion read geometry from (bank size,
    layout, output dim), so nobody restates it. A state's specs are validated as they are read.
    """
    if isinstance(source, Pruner):
        return {name: replace(spec, sparsity=source.mask_target(name)) for name, spec in source.config.params.items()}
    state = read_state(source) if isinstance(source, (str, Path)) else source
    if not S.is_state(state):
        raise ValueError(f"state is not a pruner state of format {STATE_FORMAT!r}")
    config, targets = state.get("config"), state.get("mask_targets", {})
    params = config.get("params") if isinstance(config, Mapping) else None
    if not isinstance(params, Mapping) or not isinstance(targets, Mapping):
        raise ValueError("state['config']['params'] and state['mask_targets'] must be dicts by parameter name")
    specs = {}
    for name, data in params.items():
        spec = ParamSpec.from_dict(data, where=f"state['config']['params'][{name!r}]")
        target = check_sparsity(f"state['mask_targets'][{name!r}]", targets.get(name, spec.sparsity))
        specs[name] = replace(spec, sparsity=target)
    return specs


# ---------------------------------------------------------------- the pruner


class PruneCheck(NamedTuple):
    """What ``Prune.check()`` found. Unpacks as ``per_parameter, ok``; true when ``ok``."""

    per_parameter: dict[str, bool]  # parameter name -> within its budget
    ok: bool  # every parameter within its budget

    def __bool__(self) -> bool:
        return self.ok


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
    _pooled_initial: float | None  # size-weighted initial sparsity of the global pool, computed once
    _nan_warned: set[str]  # parameters whose NaN weights were reported
    skipped_score_steps: int  # steps whose non-finite gradients added nothing to the movement scores
    _skipped_since_refresh: int
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

    def weight(self, name: str) -> Any:
        """The tensor this pruner masks for parameter ``name``: the model's own parameter, as it holds it
        now (a ``KeyError`` for a name the pruner does not prune)."""
        if name not in self.config.params:
            raise KeyError(f"{name!r} is not pruned by this pruner (it prunes {sorted(self.config.params)[:5]}...)")
        return self._bridge.read(name)

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
        zeros = {name: spec.numel - self._strategy.count_nonzero(self._read(name))
                 for name, spec in self.config.params.items()}  # fmt: skip
        total = sum(spec.numel for spec in self.config.params.values())
        per_layer = {name: zeros[name] / max(1, spec.numel) for name, spec in self.config.params.items()}
        return per_layer, sum(zeros.values()) / max(1, total)

    @torch.no_grad()
    def check(self) -> PruneCheck:
        """Whether every bank (or tensor, or pool) holds at most the budget of the target its current
        mask was made for: ``PruneCheck(per_parameter, ok)``, which unpacks as ``per_parameter, ok``."""
        self._check_ready()
        ok = {}
        pooled_nonzeros, pooled_size = 0, 0
        for name, spec in self.config.params.items():
            w, target = self._read(name), self._mask_targets[name]
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
        return PruneCheck(ok, all(ok.values()))

    def masks(self) -> dict[str, Tensor]:
        """Current keep-masks (bool, shape of each parameter, or of its local shard under FSDP2);
        all-True for untouched ones. These are the pruner's own tensors: read them, do not modify them."""
        self._check_ready()
        out = {}
        for name, m in self._masks.items():
            if m is None:
                local = self._strategy.local(self._read(name))
                m = torch.ones(local.shape, dtype=torch.bool, device=self._mask_device(local))
            out[name] = m
        return out

    def state_dict(self) -> dict:
        """Plain data (ints, floats, strings, uint8 tensors; with ``criterion="movement"`` also the
        float32 scores accumulated so far): loads with ``weights_only=True``.

        Every parameter has a mask (all kept where nothing is pruned yet), so a state that lost one
        is refused on load. Layout: ``pruning_tools.pruner_state``."""
        self._check_ready()
        state = {
            "format": STATE_FORMAT,
            "step": self._step,
            "config": self.config.to_dict(),
            "initial_sparsity": dict(self._initial),
            "mask_targets": dict(self._mask_targets),
            "masks": {name: M.pack_bits(m.cpu()) for name, m in self.masks().items()},
        }
        if isinstance(self._criterion, Movement):
            state["scores"] = self._criterion.state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``; the settings (shapes and dtypes included) must match this
        pruner's. The whole state is validated first (``pruner_state.validate_state``), then applied
        at once: a bad state raises ``ValueError`` and changes nothing."""
        self._check_ready()
        local_shapes = {name: self._local_shape(name) for name in self.config.params}
        valid = S.validate_state(state, self.config, local_shapes)
        masks: dict[str, Tensor | None] = {}
        for name in self.config.params:
            packed = valid.tensors["masks"].get(name)
            if packed is None:
                masks[name] = None
            else:
                local = self._strategy.local(self._read(name))
                masks[name] = self._place(M.unpack_bits(packed, local_shapes[name]), local)
        self._criterion.load_state(valid.tensors.get("scores", {}))
        self._masks = masks
        self._step = valid.step
        self._initial = valid.numbers["initial_sparsity"]
        self._mask_targets = valid.numbers["mask_targets"]
        self._pooled_initial = None

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
            p = self._read(name)
            if D.is_sharded(p):
                continue
            received = D.broadcast_mask(mask, src, group)
            self._masks[name] = None if bool(received.all()) else self._place(received, p)
        self._apply()

    # ------------------------------------------------------------ internals

    def _plain_state(self) -> dict:
        """``state_dict()`` with numpy masks (what ``write_state_file`` stores)."""
        state = Pruner.state_dict(self)
        state["masks"] = {name: np.asarray(packed) for name, packed in state["masks"].items()}
        if "scores" in state:
            state["scores"] = {name: s.numpy() for name, s in state["scores"].items()}
        return state

    def _read(self, name: str) -> Tensor:
        """Parameter ``name`` as the model holds it now, checked against the shape the pruner was built for."""
        w = self._bridge.read(name)
        expected = self.config.params[name].shape
        if tuple(w.shape) != expected:
            raise RuntimeError(
                f"parameter {name!r} now has shape {list(w.shape)}, but this pruner was built for "
                f"{list(expected)}: the model's parameter was replaced by one of another shape; build a new "
                "Prune for the changed model"
            )
        return w

    def _local_shape(self, name: str) -> tuple[int, ...]:
        """Shape of this rank's part of parameter ``name`` (what its mask has); no read unless sharded."""
        if isinstance(self._strategy, D.ShardedMasks):
            return self._strategy.local_shape(self._read(name))
        return self.config.params[name].shape

    def _apply(self) -> None:
        # masks follow their parameters: after a model moved (``model.cuda()``) once its masks were
        # made (``restore_sparsity``, ``load``), each mask is moved once, not copied on every step
        for name, mask in self._masks.items():
            if mask is not None:
                w = self._bridge.apply_mask(name, mask)
                if w is not None:
                    self._masks[name] = self._place(mask, w)

    def _init_state(self) -> None:
        """Step 0: no masks, or the existing zeros with ``restore_sparsity``/``fix_sparsity``."""
        self._step = 0
        restore = self.config.restore_sparsity or self.config.fix_sparsity
        self._masks = {}
        self._initial = {}
        self._pooled_initial = None
        self._nan_warned = set()
        self.skipped_score_steps = 0
        self._skipped_since_refresh = 0
        for name, spec in self.config.params.items():
            w = self._read(name)
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
        """Where the mask of ``p`` (a weight or its local shard) lives: beside it, or on the host."""
        return torch.device("cpu") if self.config.prune_device == "cpu" else p.device

    def _place(self, mask: Tensor, p: Tensor) -> Tensor:
        """``mask`` where ``prune_device`` keeps the mask of ``p`` (a weight or its local shard). A host
        mask of a GPU weight lies in pinned memory, so re-applying it on every step is an asynchronous
        copy: no host synchronisation on the steps without a refresh."""
        device = self._mask_device(p)
        if mask.device != device:
            mask = mask.to(device)
        if device.type == "cpu" and p.device.type == "cuda" and not mask.is_pinned():
            mask = mask.pin_memory()
        return mask

    def _existing_zeros(self, p: Tensor) -> Tensor | None:
        local = self._strategy.local(p)
        mask = local.detach() != 0
        return None if bool(mask.all()) else self._place(mask, local)

    def _pooled(self, values: Mapping[str, float]) -> float:
        """Size-weighted mean of ``values`` over the parameters in global mode (sizes from the specs)."""
        sizes = {n: s.numel for n, s in self.config.params.items() if s.balance == "global"}
        return sum(values[n] * size for n, size in sizes.items()) / max(1, sum(sizes.values()))

    def _initial_of(self, name: str) -> float:
        if self.config.params[name].balance == "global":
            if self._pooled_initial is None:  # once, not once per parameter: refreshes stay linear
                self._pooled_initial = self._pooled(self._initial)
            return self._pooled_initial
        return self._initial[name]

    def _accumulate_scores(self) -> None:
        """Add this step's term to the criterion's scores (nothing for magnitude). A step whose new
        scores would not all be finite, on any rank, adds nothing to any of them (``criteria``): one
        warning, the first time."""
        if isinstance(self._criterion, Magnitude):
            return
        proposed = {}
        for name in self.config.params:
            w = self._strategy.local(self._read(name))
            new = self._criterion.proposed(name, w, self._bridge.grad(name))
            if new is not None:
                proposed[name] = new
        flags = [torch.isfinite(s).all().cpu() for s in proposed.values()]
        if self._strategy.all_ranks(torch.stack(flags).all() if flags else torch.tensor(True)):
            for name, new in proposed.items():
                self._criterion.commit(name, new)
            return
        self.skipped_score_steps += 1
        self._skipped_since_refresh += 1
        if self.skipped_score_steps == 1:
            bad = [name for name, ok in zip(proposed, flags) if not bool(ok)]
            warnings.warn(
                f"criterion='movement': step {self._step} has non-finite gradients or weights "
                f"({', '.join(bad) or 'on another rank'}; a mixed-precision step skipped by GradScaler?): it adds "
                "nothing to the movement scores, as the optimizer skipped it (reported once; the count is "
                "Prune.skipped_score_steps)",
                RuntimeWarning,
                stacklevel=4,
            )

    def _nan_report(self, name: str) -> M.NanReport:
        """What the mask functions call when ``name`` holds NaN weights: one warning per parameter."""

        def report(count: int) -> None:
            if name not in self._nan_warned:
                self._nan_warned.add(name)
                warnings.warn(
                    f"{name}: {count} NaN weight(s) at step {self._step}; a NaN ranks below every weight, so "
                    "they are pruned first (the training may have diverged; reported once per parameter)",
                    RuntimeWarning,
                    stacklevel=5,
                )

        return report

    def _refresh(self) -> None:
        pool = []
        try:
            scores = {name: self._criterion.scores(name) for name in self.config.params}  # raises before any change
        except RuntimeError as error:
            if self._skipped_since_refresh:
                raise RuntimeError(
                    f"{error}; {self._skipped_since_refresh} step(s) since then had non-finite gradients or "
                    "weights and added nothing (Prune.skipped_score_steps): the training has diverged, or every "
                    "mixed-precision step was skipped"
                ) from error
            raise
        self._skipped_since_refresh = 0
        for name, spec in self.config.params.items():
            target = self.target(name)
            self._mask_targets[name] = target
            if spec.balance == "global":
                pool.append(name)
                continue
            w = self._read(name).detach()
            local = self._strategy.local(w)
            self._masks[name] = self._place(
                self._strategy.compute_mask(
                    w,
                    self._previous(name, local),
                    target,
                    spec,
                    name,
                    self._mask_device(local),
                    self._nan_report(name),
                    scores=scores[name],
                ),
                local,
            )
        if pool:
            weights = [self._read(n).detach() for n in pool]  # one read (host copy for MXNet) per weight
            locals_ = [self._strategy.local(w) for w in weights]
            devices = [self._mask_device(t) for t in locals_]
            current = [self._previous(n, t) for n, t in zip(pool, locals_)]
            target = self._pooled(self._mask_targets)
            pooled = [scores[n] for n in pool]
            pooled_scores = None if any(sc is None for sc in pooled) else cast(list[Tensor], pooled)
            masks = self._strategy.global_masks(
                weights,
                current,
                target,
                pool,
                devices,
                [self._nan_report(n) for n in pool],
                scores=pooled_scores,
            )
            for name, mask, t in zip(pool, masks, locals_):
                self._masks[name] = self._place(mask, t)
        for name in self.config.params:
            self._criterion.refreshed(name)

    def _previous(self, name: str, local: Tensor) -> Tensor | None:
        """The current mask of ``name`` on the device its new mask is computed on (it differs when the
        model moved, e.g. ``model.cuda()`` after ``restore_sparsity`` or ``load``)."""
        mask = self._masks[name]
        device = self._mask_device(local)
        return mask if mask is None or mask.device == device else mask.to(device)

    def _warn_unreachable(self) -> None:
        """One warning per parameter whose target its pattern cannot reach (``geometry.unreachable``:
        falling short by half a bank or more, e.g. rows of 1 or 3 at 2:4; overshooting is rounding)."""
        for name, spec in self.config.params.items():
            if spec.numel == 0:  # e.g. a layer of zero width, matched by a glob
                if spec.sparsity > 0:
                    warnings.warn(f"{name} {list(spec.shape)} has no elements: nothing to prune", stacklevel=4)
                continue
            if spec.balance == "global":
                continue
            realised = G.unreachable(spec.shape, spec.balance, spec.sparsity, spec.geometry)
            if realised is not None:
                rows = G.row_length(spec.shape, spec.layout, spec.out_dim)
                where = f", rows of {rows}" if spec.balance == "fix" else ""
                warnings.warn(
                    f"{name} {list(spec.shape)}: target sparsity {spec.sparsity} cannot be reached with "
                    f"balance={spec.balance!r}, bank_size={spec.bank_size}, layout={spec.layout!r}{where}; "
                    f"it will reach {realised:.4f}",
                    stacklevel=4,
                )


PrunerBase = Pruner  # the name of earlier releases
