"""The test environments, each set up from scratch: ``bash scripts/test.sh`` runs them all.

- ``tests``: the PyTorch stack on current releases (``requirements-dev.txt``, the docs tools of
  ``requirements-docs.txt`` included): ruff, mypy over the whole package, the whole test suite (the
  documentation site built strict among them),
  then the C kernels rebuilt with AddressSanitizer under the kernel, converted-layer and file tests.
- ``mxnet``: MXNet 1.9.1 with its numpy < 1.24 (``requirements-mxnet.txt``): the tests marked ``mxnet``.

Arguments after ``--`` go to pytest (``bash scripts/test.sh -- tests/test_masks.py -x``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "mxnet"]
PYTHON = "3.11"
ROOT = Path(__file__).parent
SANITIZED_TESTS = ["tests/native", "tests/inference", "-k", "not torch and not compile"]


def mxnet_test_files() -> list[str]:
    """The test files holding tests marked ``mxnet`` (the other files may need packages this environment
    lacks), and the MXNet adapter for its doctests."""
    files = [p for p in sorted((ROOT / "tests").rglob("test_*.py")) if "pytest.mark.mxnet" in p.read_text()]
    return [str(p.relative_to(ROOT)) for p in files] + [
        "pruning_tools/mxnet_pruning.py",
        "pruning_tools/demo/mxnet_backend.py",
    ]


def _install(session: nox.Session, requirements: str) -> None:
    session.install("--upgrade", "pip")
    session.install("-r", requirements)
    session.install("--no-deps", "-e", ".")


def _compiler_file(name: str) -> str:
    cc = shutil.which("cc") or "cc"
    return subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Lint, types, every test of the PyTorch stack, then the sanitized kernels."""
    _install(session, "requirements-dev.txt")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("python", "-m", "pytest", "-q", *session.posargs)
    if session.posargs:
        return
    asan = _compiler_file("libasan.so")
    if not Path(asan).is_file():
        session.warn("no AddressSanitizer runtime for cc: the sanitized kernel tests are skipped")
        return
    with tempfile.TemporaryDirectory() as cache:
        # python is not instrumented: preload the sanitizer's runtime (and libstdc++, whose exceptions it intercepts)
        env = {
            "PRUNING_TOOLS_CACHE": cache,
            "PRUNING_TOOLS_SANITIZE": "address",
            "PRUNING_TOOLS_KERNEL": "native",
            "LD_PRELOAD": f"{asan} {_compiler_file('libstdc++.so')}",
            "ASAN_OPTIONS": "detect_leaks=0",
        }
        session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *SANITIZED_TESTS, env=env)


@nox.session(python=PYTHON)
def mxnet(session: nox.Session) -> None:
    """The MXNet adapter, the PyTorch/MXNet parity suite and the MXNet demo paths, in MXNet's own stack."""
    _install(session, "requirements-mxnet.txt")
    session.run("python", "-c", "import mxnet, numpy; print('mxnet', mxnet.__version__, 'numpy', numpy.__version__)")
    targets = session.posargs or mxnet_test_files()
    session.run("python", "-m", "pytest", "-q", "-m", "mxnet", "-p", "no:cacheprovider", *targets)
