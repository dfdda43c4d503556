"""BatchNorm folded into the bank-sparse convolution before it, in eval mode.

In eval mode a ``BatchNorm2d`` with running statistics is an affine map per channel,
``y = x · scale + shift`` (``scale = γ / sqrt(running_var + ε)``, ``shift = β − running_mean · scale``),
so ``bn(conv(x))`` is one convolution whose packed values are scaled per output channel (row ``r`` of
the packed weight belongs to channel ``r // (kh · kw)``) and whose bias is ``bias · scale + shift``:
the BatchNorm's pass over the activations disappears.

``to_bank_sparse`` folds a pair when the model's graph (``torch.fx``, traced symbolically: nothing
runs) shows a converted ``Conv2d`` whose output goes to a ``BatchNorm2d`` and nowhere else. Both
modules stay in the model, with their tensors and ``state_dict`` names: the convolution becomes a
``BankSparseConvBN`` (its buffers unfolded; the folded copy is built at the first eval-mode call and
again whenever the BatchNorm's or its own tensors change), the BatchNorm a ``FoldedBatchNorm2d``
(the same parameters and buffers). In training mode both compute exactly what they did (batch
statistics, running-statistics updates); in eval mode the convolution applies the BatchNorm and the
BatchNorm passes its input through.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .modules import BankSparseConv


def _version(t: Tensor | None) -> tuple[int, int]:
    if t is None:
        return (0, -1)
    return (id(t), -1 if t.is_inference() else t._version)


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` folded into the convolution before it (``BankSparseConvBN``): itself in
    training mode, the identity in eval mode (the convolution applied it)."""

    def forward(self, x: Tensor) -> Tensor:
        conv = self.__dict__.get("_folded_into")
        if conv is not None and conv.folds():
            return x
        return super().forward(x)


class BankSparseConvBN(BankSparseConv):
    """``BankSparseConv`` whose following ``FoldedBatchNorm2d`` it applies itself in eval mode."""

    _conv_args: tuple[Any, ...]

    def folds(self) -> bool:
        """Whether this call applies the BatchNorm: both modules in eval mode, running statistics kept."""
        bn = self.__dict__.get("_bn")
        return (
            bn is not None
            and not self.training
            and not bn.training
            and bn.running_mean is not None
            and bn.running_var is not None
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.folds():
            return super().forward(x)
        return self._folded()(x)

    def applies_relu(self) -> bool:
        """Never on its own path (the BatchNorm comes before the ReLU); the folded copy does."""
        return False

    def relu_applied_to(self, y: Tensor) -> bool:
        cached = self.__dict__.get("_folded_cache")
        return cached is not None and cached[1].relu_applied_to(y)

    def _folded(self) -> BankSparseConv:
        """The convolution with the BatchNorm in its values and bias (rebuilt when a tensor changed)."""
        bn: nn.BatchNorm2d = self.__dict__["_bn"]
        b = self._buffers
        key = tuple(_version(t) for t in (b["values"], b["tail_values"], b["bias"], bn.weight, bn.bias,
                                           bn.running_mean, bn.running_var)) + (bn.eps, self.fused_relu)  # fmt: skip
        cached = self.__dict__.get("_folded_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        mean, var = bn.running_mean, bn.running_var
        if mean is None or var is None:  # (folds() said no)
            raise RuntimeError("folding a BatchNorm without running statistics")
        with torch.no_grad():
            scale = torch.rsqrt(var.double() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            bias = shift if b["bias"] is None else b["bias"].double() * scale + shift
            per_row = scale.repeat_interleave(self.kernel_positions)  # [rows]: channel r // (kh * kw)
            packed = self.packed()
            values = packed.values * per_row[:, None, None].to(packed.values.dtype)
            tail = packed.tail_values * per_row[:, None].to(packed.tail_values.dtype)
            folded_packed = replace(packed, values=values, tail_values=tail)  # same geometry and indices
            dtype = b["bias"].dtype if b["bias"] is not None else packed.values.dtype
            folded = BankSparseConv(folded_packed, bias.to(dtype), *self._conv_args).eval()
            folded.fused_relu = self.fused_relu
        self.__dict__["_folded_cache"] = (key, folded)
        return folded

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_folded_cache", None)  # rebuilt on first use
        return state


def fold(
    conv: BankSparseConv, bn: nn.BatchNorm2d, conv_args: tuple[Any, ...]
) -> tuple[BankSparseConvBN, FoldedBatchNorm2d]:
    """The pair that replaces ``conv`` (a converted convolution) and ``bn`` (the BatchNorm applied to its
    output alone): the same tensors, the BatchNorm applied by the convolution in eval mode.
    ``conv_args``: the convolution's stride, padding, dilation and padding mode."""
    new_bn = FoldedBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for name, p in bn.named_parameters(recurse=False):
        setattr(new_bn, name, p)  # the same Parameter objects
    for name, t in bn.named_buffers(recurse=False):
        new_bn._buffers[name] = t
    new_bn.train(bn.training)
    new_conv = BankSparseConvBN(conv.packed(), conv._buffers["bias"], *conv_args)
    new_conv._conv_args = conv_args
    new_conv.train(conv.training)
    new_conv.__dict__["_bn"] = new_bn  # not a child: the BatchNorm stays where it was (and in state_dict)
    new_bn.__dict__["_folded_into"] = new_conv
    return new_conv, new_bn


def traced(model: nn.Module) -> tuple[torch.fx.Graph | None, str | None]:
    """The model's ``torch.fx`` graph (traced symbolically: nothing runs), or None and why not."""
    try:
        return torch.fx.symbolic_trace(model).graph, None
    except Exception as error:  # noqa: BLE001  (tracing fails in many ways on arbitrary models)
        return None, f"the model could not be traced by torch.fx ({type(error).__name__})"


def module_calls(graph: torch.fx.Graph) -> dict[str, int]:
    """How many times the graph calls each module (by qualified name)."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    return calls


def sole_module_user(node: torch.fx.Node) -> torch.fx.Node | None:
    """The one node using ``node``'s output, when it is a module called on it alone, else None."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,) or users[0].kwargs:
        return None
    return users[0]


def replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` in every place ``model`` (or a module inside it) holds ``old`` as a child."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is old:
                parent._modules[name] = new


def conv_bn_pairs(graph: torch.fx.Graph, modules: dict[str, nn.Module], convs: Iterable[str]) -> list[tuple[str, str]]:
    """``(conv, batch norm)`` names where ``graph`` (of the model whose ``named_modules`` are
    ``modules``) sends the output of one of ``convs`` (an ``nn.Conv2d``) to a ``BatchNorm2d`` with
    running statistics and nowhere else, each module called once."""
    wanted, calls = set(convs), module_calls(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted or not isinstance(modules[node.target], nn.Conv2d):
            continue
        user = sole_module_user(node)
        if user is None:
            continue
        bn = modules.get(str(user.target))
        once = calls[str(node.target)] == 1 and calls[str(user.target)] == 1
        if once and type(bn) is nn.BatchNorm2d and bn.track_running_stats and bn.running_mean is not None:
            pairs.append((str(node.target), str(user.target)))
    return pairs


__all__ = [
    "BankSparseConvBN",
    "FoldedBatchNorm2d",
    "conv_bn_pairs",
    "fold",
    "module_calls",
    "replace_everywhere",
    "sole_module_user",
    "traced",
]
