"""The examples run as scripts on slices of real MNIST."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_pytorch_example_runs_on_a_slice(monkeypatch, capsys, mnist_dir):
    example = EXAMPLES / "pytorch_pruning_mnist.py"
    monkeypatch.setattr(sys, "argv", [str(example), "--data", str(mnist_dir), "--limit", "256", "--epochs", "2"])
    with pytest.warns(UserWarning, match="conv1.weight"):
        runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "epoch 2: test accuracy" in out and "sparsity 0.90" in out
    assert "every bank within its budget: True" in out


@pytest.mark.mxnet
def test_mxnet_example_runs_on_a_slice(monkeypatch, capsys, mnist_dir):
    pytest.importorskip("mxnet")
    example = EXAMPLES / "mxnet_pruning_mnist.py"
    monkeypatch.setattr(sys, "argv", [str(example), "--data", str(mnist_dir), "--limit", "256", "--epochs", "2"])
    with pytest.warns(UserWarning, match="cnn_conv1_weight"):
        runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "epoch 2: test accuracy" in out and "sparsity 0.90" in out
    assert "every bank within its budget: True" in out
