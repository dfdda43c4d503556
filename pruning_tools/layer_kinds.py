"""What kind of layer a module is, decided by class so that optional libraries are never imported.

>>> import torch
>>> is_transposed_linear(torch.nn.Linear(4, 2)), is_convolution(torch.nn.Conv1d(4, 2, 3))
(False, True)
"""

from __future__ import annotations

from torch import nn

_CONV_CLASS_ENDINGS = ("Conv1d", "Conv2d", "Conv3d")  # third-party convs, e.g. torchvision's DeformConv2d


def is_transposed_linear(module: nn.Module) -> bool:
    """A linear layer whose weight is stored ``[in, out]`` (``y = x @ W + b``): transformers' ``Conv1D``
    (GPT-2 and kin). Not ``nn.Conv1d``, which is a convolution."""
    return any(c.__name__ == "Conv1D" and c.__module__.split(".")[0] == "transformers" for c in type(module).__mro__)


def is_convolution(module: nn.Module) -> bool:
    """A convolution: ``torch.nn``'s (transposed ones included), or a module whose class name ends in
    ``Conv1d/2d/3d``."""
    return isinstance(module, nn.modules.conv._ConvNd) or type(module).__name__.endswith(_CONV_CLASS_ENDINGS)


__all__ = ["is_convolution", "is_transposed_linear"]
