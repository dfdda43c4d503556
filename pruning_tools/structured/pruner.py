"""``Prune(..., structure="channel")``: the gradual schedule removing whole channels, heads and neurons.

Built on the shared pruner: the same step counter, schedule, frequency, state files and masks. What
differs is what a refresh computes: per group (``groups.py``) the units to keep, ranked by their
score over all members, and the masks of every member (weights, biases, norm parameters, the
consuming layers' input columns). So the masked model computes what the shrunk model will.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as D
from ..config import ParamSpec, make_config
from ..criteria import Magnitude
from ..pruner import PruneCheck
from ..pytorch_pruning import Prune, TorchBridge
from ..schedule import target_sparsity
from . import groups as G
from .trace import trace


class StructuredPrune(Prune):
    """What ``Prune(model, ..., structure="channel", example_inputs=..., round_to=...)`` builds.

    ``prune_dict`` targets a weight's **output channels**: the fraction of its rows (a Linear's
    neurons, a conv's filters, an attention projection's heads) removed, its whole group following.
    Weights coupled in one group must have equal targets (or be left out: they follow). ``round_to``:
    kept channel counts are multiples of it (where the group allows: a head holds ``head_dim``
    channels). ``balance``, ``bank_size`` and ``layout`` do not apply to channel masks.

    After ``pruning_tools.shrink(model, prune)`` this pruner is spent: build a new one on the shrunk model.
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
        criterion: str = "magnitude",
        structure: str = "channel",
        example_inputs: Any = None,
        round_to: int = 1,
    ) -> None:
        bridge = TorchBridge(model)
        if any(bridge.spelled[name] != name for name in bridge.names()):
            raise ValueError(
                "model=OptimizedModule is not allowed with structure='channel': build the pruner on the model "
                "before torch.compile (a shrunk model is compiled afresh)"
            )
        with warnings.catch_warnings():  # the note on biases matched by a glob concerns single-weight masks
            warnings.filterwarnings("ignore", message="prune_dict patterns also match")
            config = make_config(
                pretrain_step,
                sparse_step,
                frequency,
                prune_dict,
                restore_sparsity,
                fix_sparsity,
                balance,
                prune_device,
                bank_size,
                layout,
                shapes=bridge.shapes(),
                aliases=bridge.aliases(),
                dtypes=bridge.dtypes(),
                criterion=criterion,
                not_parameters=bridge.not_parameters(),
                structure=structure,
                round_to=round_to,
            )
        if config.structure != "channel":
            raise ValueError(f"structure={structure!r} is not allowed for StructuredPrune: expected 'channel'")
        plan = G.build_plan(trace(model, example_inputs), bridge.names())
        self.plan, targets = _targeted(plan, config.params, config.round_to)
        self._final = targets
        shapes = bridge.shapes()
        specs: dict[str, ParamSpec] = {}
        for g, target in zip(self.plan.groups, targets):
            for name, _ in g.slices:
                if name not in shapes:
                    continue  # a buffer: sliced by shrink, never masked
                old = specs.get(name)
                sparsity = max(target if name in g.producers else 0.0, old.sparsity if old else 0.0)
                specs[name] = ParamSpec(
                    sparsity, "none", config.bank_size, config.layout, 0, shapes[name], bridge.dtypes()[name]
                )
        self.config = replace(config, params=specs)
        for name in specs:
            if not bridge.is_floating(name):
                raise TypeError(f"parameter {name!r} has dtype {bridge.read(name).dtype}: expected floating point")
            if self.config.criterion == "movement" and not bridge.read(name).requires_grad:
                raise ValueError(f"criterion='movement' is not allowed for {name!r}: it does not require grad")
        self._strategy = D.strategy_for({name: bridge.read(name) for name in specs}, specs)
        if isinstance(self._strategy, D.ShardedMasks):
            raise ValueError("structure='channel' is not allowed with sharded (DTensor) parameters: use DDP")
        self._bridge = bridge
        self.model = model
        self._spent = False
        self._removed: list[list[int]] = [[] for _ in self.plan.groups]
        self._group_initial = [0.0 for _ in self.plan.groups]
        self._init_state()

    # ------------------------------------------------------------ public API

    def channel_sparsity(self) -> dict[str, float]:
        """Per producing weight, the fraction of its output channels (units) removed now."""
        self._check_ready()
        out = {}
        for g, gone in zip(self.plan.groups, self._removed):
            for name in g.producers:
                out[name] = len(gone) / g.units
        return out

    def removed_units(self) -> list[list[int]]:
        """Per group of ``plan.groups``, the units masked now."""
        self._check_ready()
        return [list(r) for r in self._removed]

    def target(self, name: str, step: int | None = None) -> float:
        """Scheduled fraction of output channels removed from ``name``'s group at ``step`` (0 for a
        parameter that only consumes or follows)."""
        for i, g in enumerate(self.plan.groups):
            if name in g.producers:
                return self._group_target(i, step)
        return 0.0

    @torch.no_grad()
    def check(self) -> PruneCheck:
        """Whether every masked slice is zero in the weights: ``PruneCheck(per_parameter, ok)``."""
        self._check_ready()
        ok = {}
        for name, mask in self.masks().items():
            w = self._read(name)
            ok[name] = not bool((w.detach()[~mask.to(w.device)] != 0).any())
        return PruneCheck(ok, all(ok.values()))

    def state_dict(self) -> dict:
        """The shared state plus ``"structure"``: the groups (plain data), so ``shrink`` needs no inputs."""
        state = super().state_dict()
        state["structure"] = self.plan.to_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``: its groups must be this model's; then as ``Prune.load_state_dict``."""
        self._check_ready()
        theirs = G.Plan.from_dict(state.get("structure") if isinstance(state, Mapping) else None)
        if theirs.to_dict()["groups"] != self.plan.to_dict()["groups"]:
            raise ValueError(
                "state['structure'] holds other channel groups than this pruner traced (another model, or other "
                "prune_dict targets): build the pruner for the model the state was saved from"
            )
        super().load_state_dict(state)
        self._removed = [G.removed_units(g, self.masks()) for g in self.plan.groups]
        self._group_initial = [self._initial_of_group(i) for i in range(len(self.plan.groups))]

    def _plain_state(self) -> dict:
        state = super()._plain_state()
        state["structure"] = self.plan.to_dict()
        return state

    def broadcast_masks(self, src: int = 0, group: Any = None) -> None:
        """As ``Prune.broadcast_masks``; the removed units follow the received masks."""
        super().broadcast_masks(src, group)
        self._removed = [G.removed_units(g, self.masks()) for g in self.plan.groups]

    def mark_spent(self) -> None:
        """Called by ``shrink``: the model's tensors no longer have the shapes this pruner masks."""
        self._spent = True

    # ------------------------------------------------------------ internals

    def _check_ready(self) -> None:
        if getattr(self, "_spent", False):
            raise RuntimeError(
                "this pruner's model was shrunk (pruning_tools.shrink): its masks describe the old shapes; "
                "build a new Prune on the shrunk model to go on pruning"
            )

    def _group_target(self, i: int, step: int | None = None) -> float:
        c = self.config
        if c.fix_sparsity:
            return self._group_initial[i]
        t = self._step if step is None else step
        return target_sparsity(t, c.pretrain_step, c.sparse_step, self._group_initial[i], self._final[i])

    def _initial_of_group(self, i: int) -> float:
        return len(self._removed[i]) / self.plan.groups[i].units

    def _init_state(self) -> None:
        super()._init_state()
        restore = self.config.restore_sparsity or self.config.fix_sparsity
        weights = {name: self._read(name) for name in self.config.params}
        if restore:  # units already zero in every member start removed
            zero = {name: w.detach() != 0 for name, w in weights.items()}
            self._removed = [G.removed_units(g, zero) for g in self.plan.groups]
        self._group_initial = [self._initial_of_group(i) for i in range(len(self.plan.groups))]
        self._set_masks()
        self._initial = {name: self._zero_fraction(name) for name in self.config.params}
        self._mask_targets = dict(self._initial)

    def _zero_fraction(self, name: str) -> float:
        mask = self._masks.get(name)
        return 0.0 if mask is None else 1.0 - float(mask.float().mean())

    def _set_masks(self) -> None:
        shapes = {name: spec.shape for name, spec in self.config.params.items()}
        masks = G.masks_for(self.plan.groups, self._removed, shapes)
        for name in self.config.params:
            m = masks[name]
            local = self._read(name)
            self._masks[name] = None if bool(m.all()) else self._place(m.to(local.device), local)

    def _refresh(self) -> None:
        movement = not isinstance(self._criterion, Magnitude)
        tensors: dict[str, Tensor] = {}
        for name in self.config.params:
            s = self._criterion.scores(name) if movement else None  # raises before any change
            tensors[name] = s if s is not None else self._read(name)
        removed = []
        for i, g in enumerate(self.plan.groups):
            target = self._group_target(i)
            keep = G.kept_units(g.units, target, self.config.round_to, g.width(g.producers[0]))
            scores = G.summed_scores(g, tensors) if movement else G.unit_scores(g, tensors)
            kept = set(G.choose(scores, keep))
            removed.append([u for u in range(g.units) if u not in kept])
        self._removed = removed
        self._set_masks()
        for name in self.config.params:
            self._mask_targets[name] = self._zero_fraction(name)
            self._criterion.refreshed(name)


def _targeted(plan: G.Plan, listed: Mapping[str, ParamSpec], round_to: int) -> tuple[G.Plan, list[float]]:
    """The groups ``prune_dict`` targets (through any of their producing weights) and their final
    targets; errors for coupled weights given different targets and for targets that remove every
    unit; one warning naming the listed weights whose output channels stay, and why."""
    chosen, targets = [], []
    covered: set[str] = set()
    for g in plan.groups:
        given = {name: listed[name].sparsity for name in g.producers if name in listed}
        covered.update(g.members())
        if not given or max(given.values()) == 0:
            continue
        if len(set(given.values())) > 1:
            raise ValueError(
                f"prune_dict gives coupled weights different targets {given}: they lose the same output "
                "channels, so expected one target for all of them (or list only one)"
            )
        target = next(iter(given.values()))
        if G.removes_everything(g.units, target):
            raise ValueError(
                f"prune_dict target {target} for {list(given)} is not allowed: it would remove every one of "
                f"the {g.units} units of their group; expected a target leaving at least one"
            )
        if G.kept_units(g.units, target, round_to, g.width(g.producers[0])) == g.units:
            warnings.warn(
                f"round_to={round_to} keeps every one of the {g.units} units of {list(g.producers)} at target "
                f"{target}: no multiple of {round_to} channels below their count exists, so they stay whole",
                stacklevel=4,
            )
        chosen.append(g)
        targets.append(target)
    stay = {
        name: plan.left_dense.get(name, "not a producing weight of any channel group")
        for name, spec in listed.items()
        if spec.sparsity > 0 and len(spec.shape) >= 2 and name not in {p for g in chosen for p in g.producers}
    }
    if stay:
        lines = "; ".join(f"{name}: {why}" for name, why in stay.items())
        warnings.warn(
            f"structure='channel': the output channels of {len(stay)} listed weight(s) stay: {lines}", stacklevel=4
        )
    return G.Plan(chosen, plan.left_dense, plan.layers), targets
