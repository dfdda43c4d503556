"""The model zoo of the benchmarks and the examples, built here so that no model zoo is needed.

- ``ResNet50`` / ``resnet50()``: torchvision's layout ("v1b": stride on the 3x3 conv; its state_dict
  keys match torchvision's, so a torchvision checkpoint loads) or "v1d" (deep stem, average-pool
  shortcut downsampling); 25.5 M conv/linear weights at ``width=64``; smaller ``width``/``blocks``
  give a tiny model for tests.
- ``bert_like()``: the Linear stack of a BERT-base encoder: per block 4 x ``[768, 768]`` (q, k, v,
  out), ``[3072, 768]`` and ``[768, 3072]``.
"""

from __future__ import annotations

import torch
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
        self, num_classes: int = 1000, variant: str = "v1b", base_width: int = 64, blocks=(3, 4, 6, 3)
    ) -> None:
        super().__init__()
        if variant not in ("v1b", "v1d"):
            raise ValueError(f"variant={variant!r} is not allowed: expected 'v1b' or 'v1d'")
        w = base_width
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


def resnet50(width: int = 64, num_classes: int = 1000, blocks=(3, 4, 6, 3), variant: str = "v1b") -> ResNet50:
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


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every Conv and Linear layer, by dotted name."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, kinds)}
