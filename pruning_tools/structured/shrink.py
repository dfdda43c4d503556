"""``shrink(model, prune)``: remove the masked channels for real, in place, and report what changed.

Everything is validated before the first tensor changes (names, shapes, module kinds, head counts),
so an error leaves the model exactly as it was. Modules keep their classes; the attributes that
describe sizes follow (``in_features``/``out_features``, ``in_channels``/``out_channels``/``groups``,
``num_features``, ``nf``, ``embedding_dim``; head counts of attention modules; a Hugging Face
config's head counts and ``intermediate_size`` where every layer agrees).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import masks as M
from ..pruner import read_state
from ..pruner_state import is_state
from . import groups as G
from .trace import is_transposed_linear

HEAD_ATTRIBUTES = (
    "num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_key_value_heads", "num_kv_heads",
    "all_head_size", "split_size", "inner_dim",
)  # fmt: skip
CONFIG_HEADS = ("num_attention_heads", "num_key_value_heads", "n_head")


@dataclass
class GroupChange:
    """What ``shrink`` did to one group: its producers and its units and channels before and after."""

    producers: list[str]
    units_before: int
    units_after: int
    channels_before: int  # output channels of the first producer
    channels_after: int


@dataclass
class ShrinkReport:
    """What ``shrink`` did: per group the layers and channels before -> after; parameters and MACs
    (multiply-accumulates of the Linear and convolution layers for the traced input) before -> after;
    what was left dense and why."""

    groups: list[GroupChange] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    left_dense: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = ["structured shrink:"]
        for g in self.groups:
            lines.append(
                f"  {', '.join(g.producers)}: {g.channels_before} -> {g.channels_after} channels"
                + (f" ({g.units_before} -> {g.units_after} units)" if g.units_before != g.channels_before else "")
            )
        ratio = lambda a, b: f"{b / a:.3f}x" if a else "n/a"  # noqa: E731
        params = ratio(self.params_before, self.params_after)
        lines.append(f"  parameters: {self.params_before:,} -> {self.params_after:,} ({params})")
        lines.append(
            f"  MACs: {self.macs_before:,} -> {self.macs_after:,} ({ratio(self.macs_before, self.macs_after)})"
        )
        if self.left_dense:
            lines.append(f"  left dense ({len(self.left_dense)}):")
            lines.extend(f"    {name}: {why}" for name, why in self.left_dense.items())
        return "\n".join(lines)


def _source(prune: Any) -> tuple[G.Plan, dict[str, Tensor], Any]:
    """``(plan, masks by parameter name, the pruner or None)`` from a pruner, a state or a state file."""
    from .pruner import StructuredPrune

    if isinstance(prune, StructuredPrune):
        return prune.plan, {n: m.cpu() for n, m in prune.masks().items()}, prune
    if hasattr(prune, "state_dict") and hasattr(prune, "config"):
        raise ValueError(
            f"prune={type(prune).__name__} with structure={prune.config.structure!r} is not allowed: expected a "
            "pruner built with structure='channel' (or its state_dict(), or a state file)"
        )
    if isinstance(prune, (str, Path)):
        state = read_state(prune)
    elif isinstance(prune, Mapping):
        state = dict(prune)
    else:
        raise TypeError(
            f"prune={type(prune).__name__} is not allowed: expected a structure='channel' Prune, its state_dict() "
            "or the path of a state file"
        )
    if not is_state(state) or "structure" not in state:
        raise ValueError("prune is not the state of a structure='channel' pruner (it has no 'structure' entry)")
    plan = G.Plan.from_dict(state["structure"])
    params = state["config"].get("params", {}) if isinstance(state.get("config"), Mapping) else {}
    masks = {}
    for name, packed in state.get("masks", {}).items():
        spec = params.get(name)
        shape = tuple(spec.get("shape", ())) if isinstance(spec, Mapping) else ()
        packed = torch.as_tensor(packed)
        if packed.dtype != torch.uint8 or packed.numel() != math.ceil(math.prod(shape) / 8):
            raise ValueError(f"state['masks'][{name!r}] does not fit its parameter's shape {list(shape)}")
        masks[name] = M.unpack_bits(packed, shape)
    return plan, masks, None


def _unwrapped_names(plan: G.Plan, masks: dict[str, Tensor], names: set[str]) -> tuple[G.Plan, dict[str, Tensor]]:
    """The plan and masks of a pruner built on a DDP wrapper, renamed for the wrapped model
    (``module.conv1.weight`` -> ``conv1.weight``) when that is the model given; else unchanged."""
    members = {n for g in plan.groups for n in g.members()}
    if members <= names or not all(n.startswith("module.") and n[7:] in names for n in members):
        return plan, masks
    groups = [
        G.Group({(n[7:], d): idx for (n, d), idx in g.slices.items()}, tuple(n[7:] for n in g.producers),
                tuple(n[7:] for n in g.buffers))
        for g in plan.groups
    ]  # fmt: skip
    layers = {
        k.removeprefix("module."): {**v, "weight": v["weight"].removeprefix("module.")} for k, v in plan.layers.items()
    }
    return G.Plan(groups, plan.left_dense, layers), {n.removeprefix("module."): m for n, m in masks.items()}


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    module = model
    for part in path:
        module = module._modules[part]  # type: ignore[assignment]
    return module, attr


def _common_parent(names: list[str]) -> str:
    parts = [n.split(".")[:-2] for n in names]  # drop the layer and the parameter
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _macs(model: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> int:
    params = dict(model.named_parameters())
    return sum(
        int(info["positions"]) * params[info["weight"]].numel() for info in layers.values() if info["weight"] in params
    )


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _slices_to_drop(
    plan: Any, removed: list[list[int]], masks: Mapping[str, Tensor], tensors: Mapping[str, Tensor]
) -> dict[str, dict[int, set[int]]]:
    """``{tensor name: {dim: indices removed}}`` of every group's removed units, each tensor checked to be
    the model's and to hold the group's slices (a ``ValueError`` before anything changes)."""
    drop: dict[str, dict[int, set[int]]] = {}
    for g, gone in zip(plan.groups, removed):
        for (name, dim), idx in g.slices.items():
            tensor = tensors.get(name)
            if tensor is None:
                raise ValueError(f"model has no parameter or buffer {name!r}: prune was built for another model")
            if name in masks and tuple(tensor.shape) != tuple(masks[name].shape):
                raise ValueError(
                    f"model's {name!r} has shape {list(tensor.shape)} but prune's mask {list(masks[name].shape)}: "
                    "prune was built for another model (or this one was already shrunk)"
                )
            if dim >= tensor.dim() or max(max(u) for u in idx) >= tensor.shape[dim]:
                raise ValueError(f"model's {name!r} of shape {list(tensor.shape)} does not hold the group's slices")
            if gone:
                drop.setdefault(name, {}).setdefault(dim, set()).update(i for u in gone for i in idx[u])
    return drop


def _slice_tensors(model: nn.Module, drop: Mapping[str, Mapping[int, set[int]]], tensors: Mapping[str, Tensor]) -> None:
    """Replace every tensor of ``drop`` in ``model`` (tied ones once) by its slice without the removed indices."""
    replaced: dict[int, Tensor] = {}
    with torch.no_grad():
        for name, dims in drop.items():
            old = tensors[name]
            if id(old) in replaced:
                continue
            new = old.detach()
            for dim, gone_idx in dims.items():
                keep = torch.tensor(
                    [i for i in range(new.shape[dim]) if i not in gone_idx], dtype=torch.long, device=new.device
                )
                new = new.index_select(dim, keep)
            value = (
                nn.Parameter(new.clone(), requires_grad=old.requires_grad)
                if isinstance(old, nn.Parameter)
                else new.clone()
            )
            replaced[id(old)] = value
        for module in model.modules():
            for key, t in list(module._parameters.items()):
                if t is not None and id(t) in replaced:
                    module._parameters[key] = replaced[id(t)]  # type: ignore[assignment]
            for key, b in list(module._buffers.items()):
                if b is not None and id(b) in replaced:
                    module._buffers[key] = replaced[id(b)]


def shrink(model: nn.Module, prune: Any) -> ShrinkReport:
    """Remove the channels ``prune`` masked from ``model``, in place; return what changed.

    ``prune``: a ``Prune(..., structure="channel")`` built on ``model`` (then spent), its
    ``state_dict()``, or a state file it saved. A pruner built on a DDP wrapper shrinks the wrapped
    model (``shrink(ddp.module, prune)``; wrap the shrunk model afresh). The shrunk model computes
    what the masked one did. Raises ``ValueError`` (nothing changed) when the model is not the
    pruner's, a shape differs, or a layer holding a removed slice is of a kind whose sizes this
    function cannot update.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
    plan, masks, pruner = _source(prune)
    if pruner is not None and model not in (pruner.model, getattr(pruner.model, "module", None)):
        raise ValueError(
            "prune was built for another model: expected shrink(model, prune) with the model given to that Prune "
            "(or the model inside its DistributedDataParallel wrapper)"
        )
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    plan, masks = _unwrapped_names(plan, masks, set(params) | set(buffers))
    removed = [G.removed_units(g, masks) for g in plan.groups]
    drop = _slices_to_drop(plan, removed, masks, {**buffers, **params})
    modules = dict(model.named_modules())
    plans = [_module_update(modules, name, dims) for name, dims in drop.items()]  # raises before any change
    heads = _head_updates(model, plan, removed)
    report = ShrinkReport(params_before=_count(model), macs_before=_macs(model, plan.layers))
    report.left_dense = dict(plan.left_dense)
    for g, gone in zip(plan.groups, removed):
        p0 = g.producers[0]
        width = g.width(p0)
        report.groups.append(
            GroupChange(list(g.producers), g.units, g.units - len(gone), g.units * width, (g.units - len(gone)) * width)
        )
    _slice_tensors(model, drop, {**buffers, **params})  # every check passed: change the model
    for update in plans:
        update()
    for update in heads:
        update()
    report.params_after = _count(model)
    report.macs_after = _macs(model, plan.layers)
    if pruner is not None:
        pruner.mark_spent()
    return report


def _weight_shape(module: nn.Module) -> torch.Size:
    weight = module._parameters["weight"]
    assert weight is not None
    return weight.shape


def _module_update(modules: Mapping[str, nn.Module], name: str, dims: Mapping[int, set[int]]) -> Any:
    """A function updating the size attributes of ``name``'s module once its tensors are sliced;
    raises ``ValueError`` now for a module kind whose sizes cannot be updated."""
    path, _, attr = name.rpartition(".")
    module = modules[path]
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        depthwise = module.groups == module.in_channels == module.out_channels
        if module.groups != 1 and not depthwise:
            raise ValueError(f"{path}: a grouped convolution (groups={module.groups}) cannot lose channels")

        def conv() -> None:
            w = module.weight
            if depthwise:
                module.in_channels = module.out_channels = module.groups = w.shape[0]
            else:
                module.out_channels, module.in_channels = w.shape[0], w.shape[1]

        return conv
    if isinstance(module, nn.Linear):
        linear = module

        def resize_linear() -> None:
            linear.out_features, linear.in_features = linear.weight.shape

        return resize_linear
    if is_transposed_linear(module):
        return lambda: setattr(module, "nf", _weight_shape(module)[1])
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return lambda: setattr(
            module,
            "num_features",
            module.running_mean.shape[0] if module.running_mean is not None else module.weight.shape[0],
        )
    if isinstance(module, nn.Embedding):
        return lambda: setattr(module, "embedding_dim", module.weight.shape[1])
    raise ValueError(f"{path} ({type(module).__name__}) holds removed channels of {name!r} but shrink cannot resize it")


def _head_updates(model: nn.Module, plan: G.Plan, removed: list[list[int]]) -> list[Any]:
    """Updates of head counts (attention modules, a Hugging Face config) for groups of heads; checked now."""
    modules = dict(model.named_modules())
    updates = []
    for g, gone in zip(plan.groups, removed):
        if not gone or g.width(g.producers[0]) == 1:
            continue
        parent = modules[_common_parent(list(g.producers))]
        for attr in HEAD_ATTRIBUTES:
            value = getattr(parent, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                new = value * (g.units - len(gone))
                if new % g.units:
                    raise ValueError(f"{attr}={value} of {type(parent).__name__} does not split into {g.units} units")
                updates.append((parent, attr, new // g.units))
    config = getattr(model, "config", None)
    config_updates: list[tuple[Any, str, int]] = []
    layers = getattr(config, "num_hidden_layers", None)
    if config is not None and isinstance(layers, int):
        ratios = {
            (g.units, g.units - len(gone)) for g, gone in zip(plan.groups, removed) if g.width(g.producers[0]) > 1
        }
        head_groups = sum(g.width(g.producers[0]) > 1 for g in plan.groups)
        if head_groups == layers and len(ratios) == 1:
            units, kept = next(iter(ratios))
            heads = getattr(config, "num_attention_heads", None)
            if isinstance(heads, int) and "head_dim" in config.to_dict():
                head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
                config_updates.append((config, "head_dim", head_dim))
            for attr in CONFIG_HEADS:
                value = getattr(config, attr, None)
                if isinstance(value, int) and (value * kept) % units == 0:
                    config_updates.append((config, attr, value * kept // units))
        size = getattr(config, "intermediate_size", None)
        if isinstance(size, int):
            sizes = [
                g.units - len(gone)
                for g, gone in zip(plan.groups, removed)
                if g.units == size and g.width(g.producers[0]) == 1
            ]
            if len(sizes) == layers and len(set(sizes)) == 1:
                config_updates.append((config, "intermediate_size", sizes[0]))

    def apply(target: Any, attr: str, value: int) -> Any:
        return lambda: setattr(target, attr, value)

    return [apply(*u) for u in updates + config_updates]
