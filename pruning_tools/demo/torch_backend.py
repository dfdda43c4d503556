"""The demo's PyTorch side: the original example's CNN, its input pipeline and one training step.

The recipe (``recipe.py``) and the loop (``trainer.py``) are shared with MXNet; this module holds
what is PyTorch's own: the network, tensors, Adam with PyTorch's ``OneCycleLR``, evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pytorch_pruning import Prune
from .data import MnistData
from .recipe import BATCH_SIZE, EPOCHS, LEARNING_RATE, MAX_SHIFT, MEAN, PCT_START, STD, WEIGHT_DECAY  # noqa: F401

EXAMPLE_IMAGES = 2  # test images of the forward that structure="channel" traces


class SimpleCNN(nn.Module):
    """The original example's CNN: three stride-2 3x3 convs with BN + ReLU, then one dense layer.

    Input ``[N, 1, 28, 28]`` -> conv1 ``[N, 64, 13, 13]`` -> conv2 ``[N, 127, 6, 6]`` -> conv3
    ``[N, 256, 2, 2]`` -> flatten ``[N, 1024]`` -> fc ``[N, 10]`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 64, 3, stride=2, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 127, 3, stride=2, bias=False), nn.BatchNorm2d(127)
        self.conv3, self.bn3 = nn.Conv2d(127, 256, 3, stride=2, bias=False), nn.BatchNorm2d(256)
        self.fc = nn.Linear(1024, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.flatten(1))  # logits, no softmax: cross_entropy applies log-softmax itself


def to_tensor(images: np.ndarray) -> Tensor:
    """uint8 ``[N, 28, 28]`` -> normalised float32 ``[N, 1, 28, 28]``."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image of ``x`` ``[N, 1, H, W]`` by its own random (dy, dx) in
    ``[-max_shift, max_shift]``, filling with the background value."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    background = float(x.min())
    padded = F.pad(x, (max_shift,) * 4, value=background)  # [N, 1, H + 2s, W + 2s]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = dy[:, None] + torch.arange(h)[None]  # [N, H]
    cols = dx[:, None] + torch.arange(w)[None]  # [N, W]
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # [N, 1, H, W]


def default_prune_dict(model: nn.Module, sparsity: float) -> dict[str, float]:
    """Every conv / dense weight at ``sparsity``."""
    return {
        f"{name}.weight": sparsity
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``images`` ``[N, 1, 28, 28]`` with ``labels`` ``[N]`` (a fraction)."""
    model.eval()
    correct = sum(
        int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(images), batch_size)
    )
    return correct / max(1, len(images))


class TorchBackend:
    """What the shared loop needs from PyTorch: batches, one training step, evaluation, weights."""

    framework = "pytorch"

    def __init__(self, data: MnistData, settings: dict[str, Any], total_steps: int) -> None:
        torch.manual_seed(settings["seed"])
        self.generator = torch.Generator().manual_seed(settings["seed"])
        self.train_x, self.train_y = to_tensor(data.train_images), torch.from_numpy(data.train_labels.astype(np.int64))
        self.test_x = to_tensor(data.test_images).contiguous(memory_format=torch.channels_last)
        self.test_y = torch.from_numpy(data.test_labels.astype(np.int64))
        # faster convolutions on CPU; torch's Module.to overloads omit the documented memory_format
        self.model = SimpleCNN().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=LEARNING_RATE, total_steps=total_steps, pct_start=PCT_START
        )
        self.batch_size = settings["batch_size"]

    def default_prune_dict(self, sparsity: float) -> dict[str, float]:
        return default_prune_dict(self.model, sparsity)

    def pruner(self, *args: Any, **kwargs: Any) -> Prune:
        return Prune(self.model, *args, **kwargs)

    def example_inputs(self) -> tuple[Tensor]:
        """``EXAMPLE_IMAGES`` test images, the forward that ``structure="channel"`` traces."""
        return (self.test_x[:EXAMPLE_IMAGES],)

    def batches(self) -> Iterator[Tensor]:
        """One epoch of shuffled index batches."""
        self.model.train()
        order = torch.randperm(len(self.train_x), generator=self.generator)
        return (order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size))

    def train_step(self, index: Tensor, step: int, prune: Prune | None) -> float:
        """Forward, backward, optimizer and learning-rate step on one batch; the summed loss."""
        x, y = random_shift(self.train_x[index], MAX_SHIFT, self.generator), self.train_y[index]
        x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()) * len(y)

    def evaluate(self) -> float:
        return evaluate(self.model, self.test_x, self.test_y)

    def weights(self) -> dict[str, np.ndarray]:
        """Every entry of the state dict (BN statistics included) as a numpy copy."""
        return {name: t.detach().cpu().numpy().copy() for name, t in self.model.state_dict().items()}
