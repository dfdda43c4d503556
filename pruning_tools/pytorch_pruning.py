"""PyTorch adapter: finds the parameters, holds their masks, applies them.

>>> import torch
>>> from pruning_tools import pytorch_pruning
>>> model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
>>> prune = pytorch_pruning.Prune(model, 0, 0, 1, {"*.weight": 0.75})
>>> prune.prune()  # one-shot at the first step (sparse_step=0)
>>> layers, total = prune.sparsity()
>>> layers["0.weight"], round(total, 4)
(0.75, 0.75)
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from . import masks as M
from .config import PruneConfig, ParamSpec, make_config
from .schedule import is_refresh_step, target_sparsity

STATE_FORMAT = "pruning_tools.Prune/1"


def _out_dims(model: nn.Module) -> dict[str, int]:
    """Parameter name -> dim of output channels (1 for ConvTranspose weights)."""
    out = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            out[f"{prefix}.weight" if prefix else "weight"] = 1
    return out


class Prune:
    """Gradual magnitude pruning of a PyTorch model, unstructured or bank-balanced.

    Call ``prune()`` after every ``optimizer.step()``. Arguments (see ``docs/pytorch_parameters.md``):

    - ``model``: the ``nn.Module`` to prune (a DDP wrapper works too; names as it reports them).
    - ``pretrain_step``: dense steps before pruning starts.
    - ``sparse_step``: steps over which the target climbs from the initial to the final sparsity
      (0: one-shot at ``pretrain_step + 1``).
    - ``frequency``: masks are refreshed every ``frequency`` steps of the ramp, and at its end.
    - ``prune_dict``: ``{name or glob: sparsity}`` or ``{name or glob: {"sparsity": s, "balance":
      ..., "bank_size": ..., "layout": ...}}``; sparsities in [0, 1).
    - ``restore_sparsity``: start from the zeros already in the weights (fine-tuning a sparse model).
    - ``fix_sparsity``: keep the existing zeros as the masks forever (implies ``restore_sparsity``).
    - ``balance``: ``"fix"`` (bank-balanced), ``"none"`` (per tensor) or ``"global"`` (one
      threshold across all listed parameters).
    - ``prune_device``: ``"default"`` (masks beside each parameter) or ``"cpu"``.
    - ``bank_size``, ``layout``: bank geometry (keyword only).
    """

    def __init__(
        self,
        model: nn.Module,
        pretrain_step: int = 0,
        sparse_step: int = 0,
        frequency: int = 100,
        prune_dict: Mapping[str, Any] | None = None,
        restore_sparsity: bool = False,
        fix_sparsity: bool = False,
        balance: str = "fix",
        prune_device: str = "default",
        *,
        bank_size: int = 64,
        layout: str = "channels_last",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
        named = dict(model.named_parameters())
        self.config: PruneConfig = make_config(
            pretrain_step, sparse_step, frequency, prune_dict, restore_sparsity, fix_sparsity,
            balance, prune_device, bank_size, layout,
            shapes={name: tuple(p.shape) for name, p in named.items()},
            out_dims=_out_dims(model),
        )
        self._params: dict[str, nn.Parameter] = {name: named[name] for name in self.config.params}
        for name, p in self._params.items():
            if not p.is_floating_point():
                raise TypeError(
                    f"prune_dict entry {name!r} has dtype {p.dtype}: expected a floating-point parameter"
                )
        self.model = model
        self._step = 0
        restore = self.config.restore_sparsity or self.config.fix_sparsity
        self._masks: dict[str, Tensor | None] = {}
        self._initial: dict[str, float] = {}
        for name, p in self._params.items():
            self._masks[name] = self._existing_zeros(p) if restore else None
            self._initial[name] = self._measured(name) if restore else 0.0
        self._mask_targets = dict(self._initial)  # target each current mask was made for
        self._warn_unreachable()

    # ------------------------------------------------------------ public API

    @property
    def step(self) -> int:
        """Number of ``prune()`` calls so far."""
        return self._step

    def prepare(self) -> "Prune":
        """No-op kept for API parity with the MXNet class (whose parameters initialise lazily)."""
        return self

    def target(self, name: str, step: int | None = None) -> float:
        """Scheduled target sparsity of parameter ``name`` at ``step`` (default: the current step)."""
        spec = self.config.params[name]
        t = self._step if step is None else step
        if self.config.fix_sparsity:
            return self._initial[name]
        return target_sparsity(t, self.config.pretrain_step, self.config.sparse_step,
                               self._initial_of(name), spec.sparsity)

    @torch.no_grad()
    def prune(self) -> None:
        """Advance one step: refresh the masks if the schedule says so, then apply them."""
        self._step += 1
        c = self.config
        if not c.fix_sparsity and is_refresh_step(self._step, c.pretrain_step, c.sparse_step, c.frequency):
            self._refresh()
        self._apply()

    @torch.no_grad()
    def sparsity(self) -> tuple[dict[str, float], float]:
        """``(per-parameter fraction of zeros, overall fraction)``, counted in the weights."""
        zeros = {name: int((p == 0).sum()) for name, p in self._params.items()}
        total = sum(p.numel() for p in self._params.values())
        per_layer = {name: zeros[name] / max(1, p.numel()) for name, p in self._params.items()}
        return per_layer, sum(zeros.values()) / max(1, total)

    @torch.no_grad()
    def check(self) -> tuple[dict[str, bool], bool]:
        """``(per-parameter ok, all ok)``: every bank (or tensor, or pool) holds at most the budget
        of the target its current mask was made for."""
        ok = {}
        pooled_nonzeros, pooled_budget = 0, 0
        for name, p in self._params.items():
            spec, target = self.config.params[name], self._mask_targets[name]
            if spec.balance == "fix" and p.dim() >= 2:
                ok[name] = M.check_banks(p, spec.bank_size, spec.layout, spec.out_dim, target).balanced
            else:
                nonzeros = int((p != 0).sum())
                if spec.balance == "global":
                    pooled_nonzeros += nonzeros
                    pooled_budget += p.numel()
                ok[name] = nonzeros <= M.keep_count(p.numel(), target) if spec.balance == "none" else True
        if pooled_budget:
            pooled_target = self._pooled(self._mask_targets)
            within = pooled_nonzeros <= M.keep_count(pooled_budget, pooled_target)
            for name, spec in self.config.params.items():
                if spec.balance == "global":
                    ok[name] = within
        return ok, all(ok.values())

    def masks(self) -> dict[str, Tensor]:
        """Current keep-masks (bool, shape of each parameter); all-True for untouched ones."""
        return {name: (m if m is not None else torch.ones_like(self._params[name], dtype=torch.bool))
                for name, m in self._masks.items()}

    def state_dict(self) -> dict:
        """Plain data (ints, floats, strings, uint8 tensors): loads with ``weights_only=True``."""
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
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"state is not a pruner state of format {STATE_FORMAT!r}")
        mine, theirs = self.config.to_dict(), dict(state["config"])
        differing = sorted(k for k in mine if mine[k] != theirs.get(k))
        if differing:
            raise ValueError(f"state was saved with different settings: {differing}")
        masks = {}
        for name, p in self._params.items():
            packed = state["masks"].get(name)
            masks[name] = None if packed is None else M.unpack_bits(packed, p.shape).to(self._mask_device(p))
        self._masks = masks
        self._step = int(state["step"])
        self._initial = {name: float(v) for name, v in state["initial_sparsity"].items()}
        self._mask_targets = {name: float(v) for name, v in state["mask_targets"].items()}

    # ------------------------------------------------------------ internals

    def _mask_device(self, p: Tensor) -> torch.device:
        return torch.device("cpu") if self.config.prune_device == "cpu" else p.device

    def _existing_zeros(self, p: Tensor) -> Tensor | None:
        mask = (p.detach() != 0).to(self._mask_device(p))
        return None if bool(mask.all()) else mask

    def _measured(self, name: str) -> float:
        p = self._params[name]
        return float((p.detach() == 0).sum()) / max(1, p.numel())

    def _pooled(self, values: Mapping[str, float]) -> float:
        """Size-weighted mean of ``values`` over the parameters in global mode."""
        sizes = {n: self._params[n].numel() for n, s in self.config.params.items() if s.balance == "global"}
        return sum(values[n] * size for n, size in sizes.items()) / max(1, sum(sizes.values()))

    def _initial_of(self, name: str) -> float:
        if self.config.params[name].balance == "global":
            return self._pooled(self._initial)
        return self._initial[name]

    def _refresh(self) -> None:
        pool = []
        for name, p in self._params.items():
            spec, target = self.config.params[name], self.target(name)
            self._mask_targets[name] = target
            if spec.balance == "global":
                pool.append(name)
                continue
            w = p.detach().to(self._mask_device(p))
            self._masks[name] = M.compute_mask(w, self._masks[name], target, spec.balance,
                                               spec.bank_size, spec.layout, spec.out_dim)
        if pool:
            weights = [self._params[n].detach().to(self._mask_device(self._params[n])) for n in pool]
            target = self._pooled({n: self.target(n) for n in pool})
            for name, mask in zip(pool, M.global_masks(weights, [self._masks[n] for n in pool], target)):
                self._masks[name] = mask

    def _apply(self) -> None:
        for name, mask in self._masks.items():
            if mask is not None:
                p = self._params[name]
                p.mul_(mask if mask.device == p.device else mask.to(p.device))

    def _warn_unreachable(self) -> None:
        for name, spec in self.config.params.items():
            shape = tuple(self._params[name].shape)
            if spec.balance == "global":
                continue
            realised = M.realised_sparsity(shape, spec.balance, spec.sparsity, spec.bank_size,
                                           spec.layout, spec.out_dim)
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
                    stacklevel=3,
                )
