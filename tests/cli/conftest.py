"""Fixtures of the command-line tests: small checkpoints made here, a pruner state, a tiny MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import balanced_weight


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A safetensors checkpoint: one balanced weight and a bias."""
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"fc.weight": balanced_weight(), "fc.bias": torch.ones(8)}, str(path))
    return path


@pytest.fixture
def pruner_state(tmp_path) -> Path:
    """``Prune.save`` of a one-layer model whose weight is ``checkpoint``'s shape."""
    from pruning_tools import Prune

    model = torch.nn.Sequential(torch.nn.Linear(128, 8))
    prune = Prune(model, 0, 0, 1, {"0.weight": 0.9375})
    prune.prune()
    path = tmp_path / "state.safetensors"
    prune.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """A directory of the four MNIST files holding 96 random training and 32 test images."""
    from pruning_tools.demo import data

    rng = np.random.default_rng(0)
    tiny = data.MnistData(
        rng.integers(0, 256, (96, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 96, dtype=np.uint8),
        rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 32, dtype=np.uint8),
    )
    return data.write_idx_dir(tmp_path_factory.mktemp("mnist"), tiny)
