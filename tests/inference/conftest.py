"""What the inference tests share: the computation paths (the C kernel of every instruction-set level
this CPU runs, and the PyTorch fallback) and the tolerance against the dense model."""

from __future__ import annotations

import shutil

import pytest

from pruning_tools import _native
from pruning_tools.inference import calibration

HAVE_CC = shutil.which("cc") is not None
LEVELS = [
    pytest.param(
        level,
        marks=pytest.mark.skipif(
            not HAVE_CC or level not in _native.isa.supported(),
            reason="no C compiler" if not HAVE_CC else f"this CPU does not run {level}",
        ),
        id=level,
    )
    for level in _native.isa.LEVELS
]
PATHS = [pytest.param(("native", p.values[0]), marks=p.marks, id=f"native-{p.id}") for p in LEVELS]
PATHS.append(pytest.param(("torch", None), id="torch"))
TOL = dict(rtol=1e-4, atol=1e-5)  # (no test compares floats bit for bit: vector widths differ per level)


@pytest.fixture(params=PATHS)
def path(request):
    """Run the test on the C kernel of each instruction-set level ("native": it must build) and on the
    PyTorch fallback ("torch")."""
    engine, level = request.param
    with _native.use_engine(engine), _native.use_isa(level or "auto"):
        yield engine


@pytest.fixture(params=LEVELS)
def level(request):
    """Each instruction-set level this CPU runs, forced for the test (engine "native")."""
    with _native.use_engine("native"), _native.use_isa(request.param):
        yield request.param


# A rule that does not depend on the machine: dense 1 ns per multiply-add, bank-sparse 4 ns per stored
# slot for linear layers and 5 ns for convolutions, 1 µs per call (what the rule assumed before it was
# calibrated). Conversion tests use it so that which layers convert is the same everywhere.
FIXED_RULE = calibration.Calibration(
    {"cpu": "fixed for tests"},
    1.0,
    1.0,
    {
        "linear": (calibration.Point(65536, 1, 1.0, 4.0), calibration.Point(65536, 256, 1.0, 4.0)),
        "conv": (calibration.Point(65536, 49, 1.0, 5.0), calibration.Point(65536, 784, 1.0, 5.0)),
        "conv1x1": (calibration.Point(65536, 49, 1.0, 5.0), calibration.Point(65536, 784, 1.0, 5.0)),
    },
)


@pytest.fixture
def fixed_rule():
    """``to_bank_sparse``'s rule from ``FIXED_RULE`` instead of this machine's calibration."""
    with calibration.use_calibration(FIXED_RULE):
        yield FIXED_RULE
