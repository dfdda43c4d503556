"""Shared test fixtures: where the repository's data lies (the package itself never knows)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers models are built from configs: nothing to download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST shipped in the repository (``data/mnist/``)."""
    return MNIST_DIR
