"""The C kernel of ``BankSparseLinear`` (``bank_sparse.c``), compiled at first use and cached.

The cache directory, the CPU signature and ``PRUNING_TOOLS_KERNEL`` defined here also serve the
mask engine's kernels (``mask_select.c``, loaded by ``pruning_tools.native``).

It is plain C99 + OpenMP with no Python or torch headers, built by the system C compiler
(``$CC`` or ``cc``) in about a second and loaded with ``ctypes``; the shared library is cached under
``$PRUNING_TOOLS_CACHE`` (default ``~/.cache/pruning_tools``), keyed by the source, the flags, the
compiler and the CPU, so a later process loads it without compiling.

``PRUNING_TOOLS_KERNEL`` picks the path: ``auto`` (default: the C kernel when it builds, else the
pure-PyTorch fallback with one warning), ``native`` (the C kernel or an error), ``torch`` (always
the fallback); it is read at first use (``reset()`` makes the next use read it again).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch  # noqa: F401  (loads torch's OpenMP runtime first, so the kernel shares its threads)

SOURCE = Path(__file__).with_name("bank_sparse.c")
FLAGS = ("-O3", "-march=native", "-std=gnu99", "-fopenmp", "-shared", "-fPIC")
MODES = ("auto", "native", "torch")

_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    # x, batch, in_features, y, values, idx, tail_values, tail_idx, bias, rows, banks, k, bank, tail_k
    "bank_linear": ([_P, _I, _I, _P] + [_P] * 5 + [_I] * 5, ctypes.c_int),
    "bank_set_threads": ([ctypes.c_int], None),
}

_state: dict[str, object] = {}  # "mode"; "lib": CDLL or None once tried; "error": why it is None


class KernelUnavailableError(RuntimeError):
    """The C kernel was required (``PRUNING_TOOLS_KERNEL=native``) but could not be built or loaded."""


def mode() -> str:
    value = os.environ.get("PRUNING_TOOLS_KERNEL", "auto")
    if value not in MODES:
        raise ValueError(f"PRUNING_TOOLS_KERNEL={value!r} is not allowed: expected one of {', '.join(MODES)}")
    return value


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNING_TOOLS_CACHE") or Path.home() / ".cache" / "pruning_tools")


def _cpu_signature() -> str:
    """CPU model and feature flags (``-march=native`` code must not run on another CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("flags", "model name", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> list[str]:
    return (os.environ.get("CC") or "cc").split()


def library_path(source: Path = SOURCE, flags: Sequence[str] = FLAGS) -> Path:
    """Where the library compiled from ``source`` with ``flags`` by this compiler for this CPU is cached."""
    cc = _compiler()
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(
        "\0".join([source.read_text(), " ".join(flags), " ".join(cc), version, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"{source.stem}-{key}.so"


def _build(target: Path, source: Path = SOURCE, flags: Sequence[str] = FLAGS) -> None:
    """Compile ``source`` into ``target`` atomically (concurrent builders are safe)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [*_compiler(), *flags, "-o", tmp, str(source)], capture_output=True, text=True, timeout=300
        )
        if done.returncode and "-fopenmp" in flags:  # no OpenMP here: try a one-thread build
            serial = [f for f in flags if f != "-fopenmp"]
            done = subprocess.run(
                [*_compiler(), *serial, "-o", tmp, str(source)], capture_output=True, text=True, timeout=300
            )
        if done.returncode:
            raise RuntimeError(f"{' '.join(_compiler())} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def compiled(source: Path = SOURCE, flags: Sequence[str] = FLAGS) -> Path:
    """Path of the cached shared library of ``source``, compiling it first if needed."""
    path = library_path(source, flags)
    if not path.exists():
        _build(path, source, flags)
    return path


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(compiled()))
    for name, (argtypes, restype) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded C kernel, or None when the fallback is to be used (see the module docstring)."""
    if _state.get("lib") is not None:  # the common case, checked first: this runs on every forward
        return _state["lib"]  # type: ignore[return-value]
    m = _state.setdefault("mode", mode())
    if m == "torch":
        return None
    if "lib" not in _state:
        try:
            _state["lib"], _state["error"] = _load(), None
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # no compiler, build or load error
            _state["lib"], _state["error"] = None, f"{type(e).__name__}: {e}"
            if m == "auto":
                warnings.warn(
                    f"bank-sparse C kernel unavailable, using the PyTorch fallback ({_state['error']})",
                    RuntimeWarning,
                    stacklevel=3,
                )
    if _state["lib"] is None and m == "native":
        raise KernelUnavailableError(f"PRUNING_TOOLS_KERNEL=native but the C kernel is unavailable: {_state['error']}")
    return _state["lib"]  # type: ignore[return-value]


def set_threads(n: int) -> None:
    """Fix the kernel's OpenMP team to ``n`` threads for every product large enough to share
    (``n = 0``: the default, ``torch.get_num_threads()`` minus the cores other processes keep busy)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} is not allowed: expected an integer >= 0")
    lib = library()
    if lib is not None:
        lib.bank_set_threads(n)


def reset() -> None:
    """Forget the loaded kernel and the mode (the next ``library()`` call reads
    ``PRUNING_TOOLS_KERNEL`` and tries again; for tests)."""
    _state.clear()
