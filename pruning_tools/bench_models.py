"""Models the benchmark prunes, built here so no model zoo is needed.

``resnet50()`` follows the torchvision layout (bottleneck blocks ``[3, 4, 6, 3]``, stride on the
3x3 conv, 25.5 M conv/linear weights at ``width=64``). ``bert_like()`` is the Linear stack of a
BERT-base encoder: per block 4 x ``[768, 768]`` (q, k, v, out), ``[3072, 768]`` and ``[768, 3072]``.
"""

from __future__ import annotations

from torch import Tensor, nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 with expansion 4 and a projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:  # [N, inplanes, H, W] -> [N, 4 * planes, H / stride, W / stride]
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """torchvision-style ResNet with bottleneck blocks: ``[N, 3, H, W] -> [N, num_classes]``."""

    def __init__(self, blocks=(3, 4, 6, 3), width: int = 64, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = width, []
        for i, n in enumerate(blocks):
            planes = width * 2**i
            layers = [Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            layers += [Bottleneck(inplanes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))  # [N, num_classes]


def resnet50(width: int = 64, num_classes: int = 1000, blocks=(3, 4, 6, 3)) -> ResNet:
    """ResNet-50 (torchvision layout); smaller ``width``/``blocks`` give a tiny model for tests."""
    return ResNet(blocks, width, num_classes)


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
