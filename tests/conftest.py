"""Shared test fixtures: where the repository's data lies (the package itself never knows)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST shipped in the repository (``data/mnist/``)."""
    return MNIST_DIR
