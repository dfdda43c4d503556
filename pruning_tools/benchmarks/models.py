"""The model zoo of the benchmarks and the examples, built here so that no model zoo is needed.

- ``ResNet50`` / ``resnet50()``: torchvision's layout ("v1b": stride on the 3x3 conv; its state_dict
  keys match torchvision's, so a torchvision checkpoint loads) or "v1d" (deep stem, average-pool
  shortcut downsampling); 25.5 M conv/linear weights at ``width=64``; smaller ``width``/``blocks``
  give a tiny model for tests.
- ``bert_like()``: the Linear stack of a BERT-base encoder: per block 4 x ``[768, 768]`` (q, k, v,
  out), ``[3072, 768]`` and ``[768, 3072]``.
- ``bert_encoder()``: a real BERT-base encoder (``nn.TransformerEncoder``: 12 post-norm layers, d 768,
  12 heads, FFN 3072, GELU, LayerNorm), input ``[N, tokens, 768]`` (embeddings left out).
- ``GPTDecoder`` / ``gpt_decoder()``: a GPT-2-style decoder (pre-norm blocks, d 1024, 24 layers, 16
  heads, MLP 4096, GELU, learned positions, an untied LM head) that decodes one token at a time with
  a KV cache (``generate``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 with expansion 4, and a projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)  # v1b: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:  # [N, inplanes, H, W] -> [N, 4 * planes, H / stride, W / stride]
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50, ``variant`` "v1b" (torchvision) or "v1d" (deep stem, avg-pool downsampling).
    ``base_width`` scales every layer (64: the real network); ``blocks`` per stage (3, 4, 6, 3).
    ``[N, 3, H, W]`` -> logits ``[N, num_classes]``."""

    def __init__(
        self, num_classes: int = 1000, variant: str = "v1b", base_width: int = 64, blocks: Sequence[int] = (3, 4, 6, 3)
    ) -> None:
        super().__init__()
        if variant not in ("v1b", "v1d"):
            raise ValueError(f"variant={variant!r} is not allowed: expected 'v1b' or 'v1d'")
        w = base_width
        self.conv1: nn.Module
        if variant == "v1b":
            self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        else:  # three 3x3 convs
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(w // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False),
                nn.BatchNorm2d(w // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(w // 2, w, 3, padding=1, bias=False),
            )
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.variant, self.inplanes = variant, w
        self.layer1 = self._layer(w, blocks[0], 1)
        self.layer2 = self._layer(w * 2, blocks[1], 2)
        self.layer3 = self._layer(w * 4, blocks[2], 2)
        self.layer4 = self._layer(w * 8, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w * 8 * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            conv = nn.Conv2d(self.inplanes, planes * 4, 1, stride=1 if self.variant == "v1d" else stride, bias=False)
            parts: list[nn.Module] = [conv, nn.BatchNorm2d(planes * 4)]
            if self.variant == "v1d" and stride != 1:
                parts.insert(0, nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
            downsample = nn.Sequential(*parts)
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # [N, 3, H, W] -> [N, num_classes]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(
    width: int = 64, num_classes: int = 1000, blocks: Sequence[int] = (3, 4, 6, 3), variant: str = "v1b"
) -> ResNet50:
    """ResNet-50 (torchvision layout by default); smaller ``width``/``blocks`` give a tiny model for tests."""
    return ResNet50(num_classes, variant, width, blocks)


class EncoderLinears(nn.Module):
    """The Linear layers of one transformer encoder block (attention and MLP weights only)."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)


def bert_like(hidden: int = 768, ffn: int = 3072, blocks: int = 12) -> nn.Module:
    """``blocks`` x [4 x Linear(hidden, hidden), Linear(hidden, ffn), Linear(ffn, hidden)]."""
    return nn.ModuleList(EncoderLinears(hidden, ffn) for _ in range(blocks))


def bert_encoder(hidden: int = 768, heads: int = 12, ffn: int = 3072, layers: int = 12) -> nn.TransformerEncoder:
    """BERT-base's encoder stack (post-norm, GELU, dropout 0.1 in training): ``[N, T, hidden]`` -> same."""
    layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.1, activation="gelu", batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class GPTBlock(nn.Module):
    """Pre-norm block: causal self-attention with a KV cache, then a GELU MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [N, T, d]``, cache ``[N, heads, S, d / heads]`` -> ``x``, cache ``[N, heads, S + T, d / heads]``."""
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=-1)
        split = lambda z: z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), torch.cat([past_k, split(k)], dim=2), torch.cat([past_v, split(v)], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=int(t) > 1)  # one new token: every cached one
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, d))
        return x + self.out(F.gelu(self.fc(self.ln_2(x)))), k, v


class GPTDecoder(nn.Module):
    """GPT-2-style decoder; ``forward(tokens [N, T], past_k, past_v)`` with caches ``[layers, N, heads, S,
    d / heads]`` (``S`` = 0 at the start) -> ``(logits [N, T, vocab], past_k, past_v)`` of length ``S + T``."""

    def __init__(self, vocab: int = 50257, d: int = 1024, layers: int = 24, heads: int = 16, context: int = 1024):
        super().__init__()
        self.d, self.heads, self.layers = d, heads, layers
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if p.shape[0] == d else 0.02)

    def empty_cache(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        shape = (self.layers, batch, self.heads, 0, self.d // self.heads)
        return torch.zeros(shape), torch.zeros(shape)

    def forward(self, tokens: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        start = past_k.shape[3]
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)  # [N, T, d]
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past_k[i], past_v[i])
            keys.append(k)
            values.append(v)
        return self.lm_head(self.ln_f(x)), torch.stack(keys), torch.stack(values)


def gpt_decoder(vocab: int = 50257, d: int = 1024, layers: int = 24, heads: int = 16) -> GPTDecoder:
    """The GPT-style decoder of the inference benchmark (d 1024, 24 layers: 302 M block weights + the head)."""
    return GPTDecoder(vocab, d, layers, heads)


# one decoding step: (tokens, past_k, past_v) -> (logits, past_k, past_v)
DecodeStep = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


@torch.no_grad()
def generate(step: DecodeStep, first: Tensor, past_k: Tensor, past_v: Tensor, tokens: int) -> Tensor:
    """Greedy decoding, one token at a time: ``step(tokens [N, 1], past_k, past_v) -> (logits, past_k,
    past_v)`` (a ``GPTDecoder`` or an ONNX session wrapped alike). Returns the ``[N, tokens]`` generated."""
    out, token = [], first
    for _ in range(tokens):
        logits, past_k, past_v = step(token, past_k, past_v)
        token = logits[:, -1].argmax(-1, keepdim=True)  # [N, 1]
        out.append(token)
    return torch.cat(out, dim=1)


def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    """Weights of every Conv and Linear layer, by dotted name."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, kinds)}
