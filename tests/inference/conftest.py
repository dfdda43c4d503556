"""What the inference tests share: the two computation paths and the tolerance against the dense model."""

from __future__ import annotations

import shutil

import pytest

from pruning_tools import _native

HAVE_CC = shutil.which("cc") is not None
PATHS = [pytest.param("native", marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler")), "torch"]
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(params=PATHS)
def path(request):
    """Run the test on the C kernel ("native": it must build) and on the PyTorch fallback."""
    with _native.use_engine(request.param):
        yield request.param
