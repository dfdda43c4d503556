"""A pruned MNIST-style CNN exported to ONNX runs in onnxruntime with the same outputs and zeros."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pruning_tools import Prune
from pruning_tools.masks import check_banks
from pruning_tools.onnx import export_onnx, onnx_initializers

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


class MnistCNN(nn.Module):
    """[N, 1, 28, 28] -> [N, 10] logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))  # [N, 32, 26, 26]
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # [N, 64, 12, 12]
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


PRUNED = ("conv2.weight", "fc1.weight", "fc2.weight")  # conv1 has rows of one input channel


@pytest.fixture(scope="module")
def pruned_model():
    torch.manual_seed(0)
    model = MnistCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    prune = Prune(
        model, pretrain_step=1, sparse_step=3, frequency=1, prune_dict={n: 0.9375 for n in PRUNED}, bank_size=32
    )
    for _ in range(5):
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        prune.prune()
    assert prune.check()[1]
    return model.eval()


def test_onnxruntime_matches_pytorch_and_keeps_the_zeros(pruned_model, tmp_path):
    path = tmp_path / "cnn.onnx"
    export_onnx(
        pruned_model,
        torch.randn(1, 1, 28, 28),
        path,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        expected = pruned_model(x).numpy()
    (got,) = session.run(None, {"image": x.numpy()})
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)

    inits = onnx_initializers(path)
    params = dict(pruned_model.named_parameters())
    for name in PRUNED:
        w = params[name].detach()
        stored = torch.from_numpy(inits[name].copy())
        assert torch.equal(stored, w), name  # same values, every zero included
        assert 0.93 < float((stored == 0).float().mean()) < 0.95, name
        assert check_banks(stored, bank_size=32).balanced, name
