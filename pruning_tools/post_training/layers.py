"""The layers one-shot pruning can calibrate: each weight as a matrix ``[outputs, inputs]`` and the
layer's inputs as feature rows in the same column order.

A weight's matrix is its bank rows (``geometry.to_rows``) regrouped per output: ``[O, D]`` with
``O = shape[out_dim]``. For ``nn.Linear`` and transformers' ``Conv1D`` (weight ``[in, out]``, read
with ``out_dim=1``, detected as ``Prune`` detects it) that is ``[out, in]``; for a convolution
``[out, in, *kernel]`` it is everything an output channel reads, ``D = in * prod(kernel)``, with the
columns in the order of the bank rows: ``channels_last`` = (kernel position, input channel), ``flat``
and ``last_dim`` = (input channel, kernel position). So
every bank is a run of consecutive columns and a Hessian over the ``D`` inputs (``X^T X`` of the
feature rows) sees exactly the weights one output combines.

``nn.MultiheadAttention``: ``in_proj_weight`` ``[3E, E]`` has three row groups fed by the query, the
key and the value; ``q/k/v_proj_weight`` (different key/value sizes) one each; ``out_proj.weight``
reads the attention output before the projection (recomputed with the projection set to the
identity, since ``out_proj`` is never called as a module).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import geometry as G
from ..config import ParamSpec
from ..layer_kinds import is_transposed_linear

# a source: (module whose forward is hooked, which of its inputs) -> feature rows [n, D]
Features = Callable[[tuple, dict, Any], Tensor]


@dataclass
class Source:
    """One stream of feature rows: ``features(args, kwargs, output)`` of ``module``'s forward."""

    key: str
    module_name: str
    width: int  # D: columns of the feature rows
    features: Features


@dataclass
class Target:
    """One weight to prune, read as a matrix ``[O, D]`` whose row groups are fed by ``sources``."""

    name: str
    spec: ParamSpec
    param: nn.Parameter
    hook_module: str  # the module whose forward carries the inputs (the layer, or its MultiheadAttention)
    rows: list[tuple[int, int, str]] = field(default_factory=list)  # (first row, end row, source key)
    outputs: int = 0  # O

    def matrix(self, w: Tensor) -> Tensor:
        """``w`` (the parameter's shape) -> ``[O, D]``."""
        spec = self.spec
        return G.to_rows(w, spec.layout, spec.out_dim).reshape(self.outputs, -1)

    def unmatrix(self, m: Tensor) -> Tensor:
        """``[O, D]`` -> the parameter's shape (contiguous)."""
        spec = self.spec
        row_len = G.row_length(spec.shape, spec.layout, spec.out_dim)
        return G.from_rows(m.reshape(-1, row_len), spec.shape, spec.layout, spec.out_dim)


def _first(args: tuple, kwargs: dict, index: int, name: str) -> Tensor:
    value = args[index] if len(args) > index else kwargs.get(name)
    if not isinstance(value, Tensor):
        raise TypeError(f"expected a tensor as the {name!r} input, got {type(value).__name__}")
    return value


def _rows(x: Tensor, width: int) -> Tensor:
    return x.reshape(-1, width)  # [tokens, D]


def conv_patches(module: nn.modules.conv._ConvNd, x: Tensor, layout: str) -> Tensor:
    """The input patches of a (non-grouped) convolution as rows ``[N * positions, C * prod(kernel)]``,
    columns ordered like the weight's bank rows (``channels_last``: kernel position, then channel)."""
    kernel = tuple(module.kernel_size)
    spatial = len(kernel)
    if x.dim() == spatial + 1:
        x = x.unsqueeze(0)  # unbatched input
    pad = tuple(module._reversed_padding_repeated_twice)
    if any(pad):
        x = F.pad(x, pad, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    for dim, (k, stride, dilation) in enumerate(zip(kernel, module.stride, module.dilation)):
        x = x.unfold(2 + dim, dilation * (k - 1) + 1, stride)  # appends a window dim
    x = x[(slice(None),) * (2 + spatial) + tuple(slice(None, None, d) for d in module.dilation)]  # [N, C, *L, *K]
    n, c = x.shape[:2]
    places = tuple(range(2, 2 + spatial))  # output positions
    window = tuple(range(2 + spatial, 2 + 2 * spatial))  # kernel positions
    order = (0, *places, *window, 1) if layout == "channels_last" else (0, *places, 1, *window)
    return x.permute(order).reshape(-1, c * math.prod(kernel))


def _attention_output(mha: nn.MultiheadAttention) -> Features:
    """The attention output before ``out_proj``: the module run again with an identity projection
    (the capture hook ignores the calls its own feature functions make)."""
    from torch.func import functional_call

    def features(args: tuple, kwargs: dict, output: Any) -> Tensor:
        e = mha.embed_dim
        weight = mha.out_proj.weight
        identity = {"out_proj.weight": torch.eye(e, dtype=weight.dtype, device=weight.device)}
        if mha.out_proj.bias is not None:
            identity["out_proj.bias"] = torch.zeros(e, dtype=weight.dtype, device=weight.device)
        return _rows(functional_call(mha, identity, args, kwargs)[0], e)

    return features


def describe(
    name: str, spelled: str, spec: ParamSpec, param: nn.Parameter, modules: Mapping[str, nn.Module]
) -> tuple[Target, list[Source]] | str:
    """The target and sources of parameter ``name`` (``spelled`` as ``named_parameters()`` spells it,
    the path of ``modules``, the model's ``named_modules()``), or why it has no calibration inputs."""
    module_name, _, attr = spelled.rpartition(".")
    module = modules.get(module_name)
    parent_name, _, child = module_name.rpartition(".")
    parent = modules.get(parent_name) if module_name else None
    what = type(module).__name__ if module is not None else "model"

    def one(kind_features: Features, width: int, outputs: int, hook: str) -> tuple[Target, list[Source]]:
        key = f"{hook}:input"
        target = Target(name, spec, param, hook, [(0, outputs, key)], outputs)
        return target, [Source(key, hook, width, kind_features)]

    if isinstance(parent, nn.MultiheadAttention) and child == "out_proj" and attr == "weight":
        e = parent.embed_dim
        key = f"{parent_name}:attention"
        target = Target(name, spec, param, parent_name, [(0, e, key)], e)
        return target, [Source(key, parent_name, e, _attention_output(parent))]
    if isinstance(module, nn.MultiheadAttention):
        e = module.embed_dim
        inputs = {"query": (0, e), "key": (1, module.kdim), "value": (2, module.vdim)}
        if attr == "in_proj_weight":
            sources = [
                Source(f"{module_name}:{which}", module_name, e, _input_rows(index, which, e))
                for which, (index, _) in inputs.items()
            ]
            rows = [(i * e, (i + 1) * e, s.key) for i, s in enumerate(sources)]
            return Target(name, spec, param, module_name, rows, 3 * e), sources
        which = {"q_proj_weight": "query", "k_proj_weight": "key", "v_proj_weight": "value"}.get(attr)
        if which is not None:
            index, width = inputs[which]
            key = f"{module_name}:{which}"
            target = Target(name, spec, param, module_name, [(0, e, key)], e)
            return target, [Source(key, module_name, width, _input_rows(index, which, width))]
        return f"{name} is the {attr!r} of an nn.MultiheadAttention: only its projection weights have inputs"
    if attr != "weight" or module is None:
        return f"{name} is a parameter {attr!r} of {what}: only layer weights have calibration inputs"
    if isinstance(module, nn.Linear):
        return one(_input_rows(0, "input", module.in_features), module.in_features, module.out_features, module_name)
    if is_transposed_linear(module):
        n_in, n_out = param.shape
        return one(_input_rows(0, "input", n_in), n_in, n_out, module_name)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return f"{name} belongs to a transposed convolution ({what}): not supported by calibration methods"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups != 1:
            return f"{name} belongs to a grouped convolution ({what}, groups={module.groups}): not supported"
        conv = module
        width = conv.in_channels * math.prod(conv.kernel_size)

        def patches(args: tuple, kwargs: dict, output: Any) -> Tensor:
            return conv_patches(conv, _first(args, kwargs, 0, "input"), spec.layout)

        return one(patches, width, conv.out_channels, module_name)
    return f"{name} belongs to {what}: its input is not a feature vector a weight row multiplies"


def _input_rows(index: int, which: str, width: int) -> Features:
    def features(args: tuple, kwargs: dict, output: Any) -> Tensor:
        return _rows(_first(args, kwargs, index, which), width)

    return features


__all__ = ["Source", "Target", "conv_patches", "describe"]
