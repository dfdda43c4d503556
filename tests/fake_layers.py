"""Stand-ins for layers of libraries the tests need not import."""

from __future__ import annotations

import torch
from torch import nn


class Conv1D(nn.Module):
    """Behaves like transformers' GPT-2 ``Conv1D``: weight ``[in, out]``, ``y = x @ W + b``. Its module
    path says transformers, which is how ``Prune``, ``oneshot`` and ``to_bank_sparse`` recognise the
    class (transformers is not imported). ``weight_std``: the weights' spread; ``random_bias``: a
    normal bias, else zeros."""

    def __init__(self, nf: int, nx: int, weight_std: float = 0.02, random_bias: bool = True) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * weight_std)
        self.bias = nn.Parameter(torch.randn(nf) if random_bias else torch.zeros(nf))

    def forward(self, x):
        shape = x.shape[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(shape)


Conv1D.__module__ = "transformers.pytorch_utils"
