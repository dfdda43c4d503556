"""`pruning-tools demo --structure channel`: the MNIST CNN with whole channels removed, shrunk and saved."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from pruning_tools import load_shrunk
from pruning_tools.cli import main
from pruning_tools.demo.torch_backend import SimpleCNN

SLICE = ["--limit", "256", "--epochs", "2", "--batch-size", "32"]


def test_demo_structure_channel_shrinks_and_saves(tmp_path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main, ["demo", *SLICE, "--structure", "channel", "--sparsity", "0.5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "conv2.weight: 127 -> 63 channels" in result.output
    masked = float(result.output.split("masked model ")[1].split("%")[0])
    shrunk = float(result.output.split("shrunk model: test accuracy ")[1].split("%")[0])
    assert shrunk == masked
    recorded = json.loads((out / "results.json").read_text())["shrunk"]
    assert recorded["macs_per_image"] == [3_911_488, 997_280]  # conv1 + conv2 + conv3 + fc, one 28 x 28 image
    assert recorded["params"] == [377480, 96584] and recorded["test_accuracy"] * 100 == pytest.approx(shrunk, abs=0.01)
    model = load_shrunk(SimpleCNN(), out / "shrunk.safetensors")
    assert model.conv3.out_channels == 128 and model.fc.in_features == 512
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_demo_structure_channel_needs_pytorch() -> None:
    result = CliRunner().invoke(main, ["demo", "--structure", "channel", "--framework", "mxnet"])
    assert result.exit_code != 0 and "--structure channel needs --framework pytorch" in result.output
