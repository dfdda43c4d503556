"""Max-pooling of NCHW activations computed channels-last, in a model with converted convolutions.

PyTorch's CPU max-pool of NCHW tensors runs one plane at a time; its channels-last kernel vectorises
across channels. On ResNet-50's stem (64 × 112², 3 × 3, stride 2) the NCHW kernel took 6.8 ms, the
copy to channels-last, the pool and the copy back 1.4 ms (1 thread, AMD EPYC Zen 4, torch held to
AVX2): a sixth of the converted model's time. A maximum is exact, so the values are the same; the
output is NCHW-contiguous, as before. ``to_bank_sparse`` makes each ``nn.MaxPool2d`` of a model
whose convolutions it converts a ``ChannelsLastMaxPool2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fold import replace_everywhere


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """An ``nn.MaxPool2d`` that pools a float32 NCHW-contiguous CPU input ``[N, C, H, W]`` (C > 1)
    channels-last and returns ``[N, C, H', W']`` NCHW-contiguous, in eval mode and without gradients;
    any other input, or a module returning indices, pools as ``nn.MaxPool2d`` does."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.return_indices or not _fast_input(x):
            return super().forward(x)
        y = F.max_pool2d(
            x.contiguous(memory_format=torch.channels_last),
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
        )
        return y.contiguous()


def _fast_input(x: Tensor) -> bool:
    """Whether ``x`` is what the channels-last path serves: eager, no autograd, float32 on CPU, 4-d,
    NCHW-contiguous with more than one channel (else it already is channels-last as well)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if x.requires_grad or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return False
    return x.shape[1] > 1 and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)


def pool_channels_last(model: nn.Module) -> int:
    """Make every ``nn.MaxPool2d`` of ``model`` (exactly that class, returning no indices) a
    ``ChannelsLastMaxPool2d`` with the same settings, wherever the model holds it; the number made."""
    pools = [m for m in model.modules() if type(m) is nn.MaxPool2d and not m.return_indices]  # each once
    for pool in pools:
        new = ChannelsLastMaxPool2d(
            pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode
        )
        new.train(pool.training)
        replace_everywhere(model, pool, new)
    return len(pools)


__all__ = ["ChannelsLastMaxPool2d", "pool_channels_last"]
