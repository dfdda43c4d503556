"""The state every framework adapter shares: step counter, masks, targets, checks, state_dict.

Framework-free in the sense that it never sees a model: an adapter hands it the pruned weights
as torch tensors (``_weights()``, in config order; views or copies) and writes the masks back
into its own weights (``_apply()``). Masks are bool torch tensors computed by ``masks.py``; the
schedule comes from ``schedule.py`` and the settings from ``config.py``. So PyTorch and MXNet
share one copy of the logic and produce identical masks from identical weights.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import distributed as D
from . import masks as M
from .config import PruneConfig
from .schedule import is_refresh_step, target_sparsity

STATE_FORMAT = "pruning_tools.Prune/1"
_MASK_PREFIX = "masks/"


def write_state_file(state: Mapping[str, Any], path: str | Path) -> None:
    """Write a pruner ``state_dict()`` to a safetensors file, without pickle.

    The bit-packed masks become uint8 tensors ``masks/<name>``; everything else (plain ints,
    floats, strings) goes into the file's metadata as JSON, which round-trips floats exactly.
    """
    from safetensors.numpy import save_file

    tensors = {
        _MASK_PREFIX + name: np.ascontiguousarray(np.asarray(packed, dtype=np.uint8))
        for name, packed in state["masks"].items()
    }
    plain = {key: value for key, value in state.items() if key != "masks"}
    save_file(tensors, str(path), metadata={"format": STATE_FORMAT, "state": json.dumps(plain)})


def read_state_file(path: str | Path) -> dict:
    """Inverse of ``write_state_file``: the state dict, masks as uint8 numpy arrays."""
    from safetensors import SafetensorError, safe_open

    try:
        f = safe_open(str(path), framework="numpy")
    except SafetensorError as error:
        raise ValueError(f"{path} is not a pruner state file of format {STATE_FORMAT!r}: {error}") from error
    with f:
        metadata = f.metadata() or {}
        if metadata.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a pruner state file of format {STATE_FORMAT!r}")
        state = json.loads(metadata["state"])
        state["masks"] = {key[len(_MASK_PREFIX) :]: f.get_tensor(key) for key in f.keys()}
    return state


class PrunerBase:
    """Schedule-driven masks over named weights. Subclasses set ``self.config`` and implement
    ``_weights()`` and ``_apply()``, then call ``_init_state()`` once the weights exist."""

    config: PruneConfig

    # ------------------------------------------------------------ adapter hooks

    def _weights(self) -> dict[str, Tensor]:
        """Pruned weights as torch tensors, keyed like ``config.params`` (read only)."""
        raise NotImplementedError

    def _apply(self) -> None:
        """Multiply every weight by its mask (masks that are None leave the weight alone)."""
        raise NotImplementedError

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
        return target_sparsity(
            t, self.config.pretrain_step, self.config.sparse_step, self._initial_of(name), spec.sparsity
        )

    @torch.no_grad()
    def prune(self) -> None:
        """Advance one step: refresh the masks if the schedule says so, then apply them."""
        self._check_ready()
        self._step += 1
        c = self.config
        if not c.fix_sparsity and is_refresh_step(self._step, c.pretrain_step, c.sparse_step, c.frequency):
            self._refresh(self._weights())
        self._apply()

    @torch.no_grad()
    def sparsity(self) -> tuple[dict[str, float], float]:
        """``(per-parameter fraction of zeros, overall fraction)``, counted in the weights."""
        self._check_ready()
        weights = self._weights()
        zeros = {name: p.numel() - D.count_nonzero(p) for name, p in weights.items()}  # over all shards
        total = sum(p.numel() for p in weights.values())
        per_layer = {name: zeros[name] / max(1, p.numel()) for name, p in weights.items()}
        return per_layer, sum(zeros.values()) / max(1, total)

    @torch.no_grad()
    def check(self) -> tuple[dict[str, bool], bool]:
        """``(per-parameter ok, all ok)``: every bank (or tensor, or pool) holds at most the budget
        of the target its current mask was made for."""
        self._check_ready()
        weights = self._weights()
        ok = {}
        pooled_nonzeros, pooled_budget = 0, 0
        for name, p in weights.items():
            spec, target = self.config.params[name], self._mask_targets[name]
            if spec.balance == "fix" and p.dim() >= 2:
                ok[name] = D.banks_balanced(p, spec.bank_size, spec.layout, spec.out_dim, target)
            else:
                nonzeros = D.count_nonzero(p)
                if spec.balance == "global":
                    pooled_nonzeros += nonzeros
                    pooled_budget += p.numel()
                ok[name] = nonzeros <= M.keep_count(p.numel(), target) if spec.balance == "none" else True
        if pooled_budget:
            pooled_target = self._pooled(self._mask_targets, weights)
            within = pooled_nonzeros <= M.keep_count(pooled_budget, pooled_target)
            for name, spec in self.config.params.items():
                if spec.balance == "global":
                    ok[name] = within
        return ok, all(ok.values())

    def masks(self) -> dict[str, Tensor]:
        """Current keep-masks (bool, shape of each parameter, or of its local shard under FSDP2);
        all-True for untouched ones. These are the pruner's own tensors: read them, do not modify them."""
        self._check_ready()
        weights = self._weights()
        return {
            name: (m if m is not None else torch.ones_like(D.local(weights[name]), dtype=torch.bool))
            for name, m in self._masks.items()
        }

    def state_dict(self) -> dict:
        """Plain data (ints, floats, strings, uint8 tensors): loads with ``weights_only=True``."""
        self._check_ready()
        packed = {name: M.pack_bits(m.cpu()) for name, m in self._masks.items() if m is not None}
        return {
            "format": STATE_FORMAT,
            "step": self._step,
            "config": self.config.to_dict(),
            "initial_sparsity": dict(self._initial),
            "mask_targets": dict(self._mask_targets),
            "masks": packed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``; the settings must match this pruner's."""
        self._check_ready()
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"state is not a pruner state of format {STATE_FORMAT!r}")
        mine, theirs = self.config.to_dict(), dict(state["config"])
        differing = sorted(k for k in mine if mine[k] != theirs.get(k))
        if differing:
            raise ValueError(f"state was saved with different settings: {differing}")
        masks = {}
        for name, p in self._weights().items():
            packed = state["masks"].get(name)
            if packed is None:
                masks[name] = None
            else:
                packed = torch.as_tensor(packed, dtype=torch.uint8)
                masks[name] = M.unpack_bits(packed, D.local(p).shape).to(self._mask_device(p))
        self._masks = masks
        self._step = int(state["step"])
        self._initial = {name: float(v) for name, v in state["initial_sparsity"].items()}
        self._mask_targets = {name: float(v) for name, v in state["mask_targets"].items()}

    # ------------------------------------------------------------ internals

    def _init_state(self) -> None:
        """Step 0: no masks, or the existing zeros with ``restore_sparsity``/``fix_sparsity``."""
        self._step = 0
        weights = self._weights()
        restore = self.config.restore_sparsity or self.config.fix_sparsity
        self._masks: dict[str, Tensor | None] = {}
        self._initial: dict[str, float] = {}
        for name, p in weights.items():
            self._masks[name] = self._existing_zeros(p) if restore else None
            self._initial[name] = self._measured(p) if restore else 0.0
        self._mask_targets = dict(self._initial)  # target each current mask was made for
        self._warn_unreachable(weights)

    def _mask_device(self, p: Tensor) -> torch.device:
        return torch.device("cpu") if self.config.prune_device == "cpu" else p.device

    def _existing_zeros(self, p: Tensor) -> Tensor | None:
        mask = (D.local(p).detach() != 0).to(self._mask_device(p))
        return None if bool(mask.all()) else mask

    @staticmethod
    def _measured(p: Tensor) -> float:
        return (p.numel() - D.count_nonzero(p.detach())) / max(1, p.numel())

    def _pooled(self, values: Mapping[str, float], weights: Mapping[str, Tensor] | None = None) -> float:
        """Size-weighted mean of ``values`` over the parameters in global mode."""
        weights = self._weights() if weights is None else weights
        sizes = {n: weights[n].numel() for n, s in self.config.params.items() if s.balance == "global"}
        return sum(values[n] * size for n, size in sizes.items()) / max(1, sum(sizes.values()))

    def _initial_of(self, name: str) -> float:
        if self.config.params[name].balance == "global":
            return self._pooled(self._initial)
        return self._initial[name]

    def _refresh(self, weights: Mapping[str, Tensor]) -> None:
        pool = []
        for name, p in weights.items():
            spec, target = self.config.params[name], self.target(name)
            self._mask_targets[name] = target
            if spec.balance == "global":
                pool.append(name)
                continue
            self._masks[name] = D.compute_mask(
                p.detach(),
                self._masks[name],
                target,
                spec.balance,
                spec.bank_size,
                spec.layout,
                spec.out_dim,
                name=name,
                device=self._mask_device(p),
            )
        if pool:
            pooled = [weights[n].detach() for n in pool]
            devices = [self._mask_device(weights[n]) for n in pool]
            target = self._pooled({n: self.target(n) for n in pool}, weights)
            masks = D.global_masks(pooled, [self._masks[n] for n in pool], target, pool, devices)
            for name, mask in zip(pool, masks):
                self._masks[name] = mask

    def _warn_unreachable(self, weights: Mapping[str, Tensor]) -> None:
        for name, spec in self.config.params.items():
            shape = tuple(weights[name].shape)
            if spec.balance == "global":
                continue
            realised = M.realised_sparsity(
                shape, spec.balance, spec.sparsity, spec.bank_size, spec.layout, spec.out_dim
            )
            # rounding to whole weights per bank (or per tensor) is not "unreachable"
            if spec.balance == "fix":
                granularity = 0.5 / min(spec.bank_size, M.row_length(shape, spec.layout, spec.out_dim))
            else:
                granularity = 0.5 / max(1, math.prod(shape))
            if abs(realised - spec.sparsity) > granularity + 1e-9:
                warnings.warn(
                    f"{name} {list(shape)}: target sparsity {spec.sparsity} cannot be reached with "
                    f"balance={spec.balance!r}, bank_size={spec.bank_size}, layout={spec.layout!r}; "
                    f"it will reach {realised:.4f}",
                    stacklevel=4,
                )
