"""The ReLU after a converted convolution applied in the kernel's epilogue, in eval mode.

Where the model's graph (``torch.fx``, the trace that folds BatchNorms) sends a converted ``Conv2d``'s
output — or the output of the BatchNorm folded into it — to an ``nn.ReLU`` and nowhere else, the
convolution applies ``max(y, 0)`` as it writes its output (``fused_relu``): the ReLU's own pass over
the activations disappears. The ``nn.ReLU`` becomes a ``FusedReLU``: an input that is the last output
of one of those convolutions, unchanged since, passes through; any other input (torchvision's blocks
call one ``self.relu`` after the residual add too) is ReLU'd as before. In training mode, under
``torch.compile`` / tracing, and on the PyTorch fallback, the convolution applies nothing and the ReLU
computes as it did.

Called directly, outside the model, such a convolution returns its output after the ReLU in eval mode
(as a folded one returns it after the BatchNorm).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fold import module_calls, replace_everywhere, sole_module_user
from .modules import BankSparseConv


class FusedReLU(nn.ReLU):
    """An ``nn.ReLU`` some of whose inputs come from convolutions that applied it already."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling() and not torch.jit.is_tracing():
            for conv in self.__dict__.get("_fused_from", ()):
                if conv.relu_applied_to(x):
                    return x
        return super().forward(x)


def conv_relu_pairs(
    graph: torch.fx.Graph, modules: dict[str, nn.Module], outputs: dict[str, str]
) -> list[tuple[str, str]]:
    """``(conv, relu)`` names where ``graph`` sends the node ``outputs`` maps to a converted
    convolution (the convolution itself, or the BatchNorm folded into it) to an ``nn.ReLU`` and
    nowhere else, that node's module called once (the ReLU may be called elsewhere too)."""
    calls = module_calls(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or str(node.target) not in outputs or calls[str(node.target)] != 1:
            continue
        user = sole_module_user(node)
        if user is not None and type(modules.get(str(user.target))) is nn.ReLU:
            pairs.append((outputs[str(node.target)], str(user.target)))
    return pairs


def fuse_relu(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Mark each convolution of ``pairs`` ``fused_relu`` and make each ReLU a ``FusedReLU`` (every
    place the model holds that module) that knows which convolutions apply it."""
    feeds: dict[int, tuple[nn.ReLU, list[BankSparseConv]]] = {}
    for conv_name, relu_name in pairs:
        conv, relu = model.get_submodule(conv_name), model.get_submodule(relu_name)
        if not isinstance(conv, BankSparseConv) or type(relu) is not nn.ReLU:
            raise TypeError(f"{conv_name} -> {relu_name}: expected a converted convolution and an nn.ReLU")
        feeds.setdefault(id(relu), (relu, []))[1].append(conv)
    for relu, convs in feeds.values():
        fused = FusedReLU(inplace=relu.inplace)
        fused.train(relu.training)
        fused.__dict__["_fused_from"] = tuple(convs)  # not children: they stay where they are
        replace_everywhere(model, relu, fused)
        for conv in convs:
            conv.fused_relu = True


__all__ = ["FusedReLU", "conv_relu_pairs", "fuse_relu"]
