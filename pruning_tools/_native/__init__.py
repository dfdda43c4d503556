"""The compiled kernels: one loader, one cache, one engine switch. The C sources lie beside this file.

Each kernel is plain C99 (+ OpenMP where it helps) with no Python or torch headers, built by the
system C compiler (``$CC`` or ``cc``) in about a second at first use and loaded with ``ctypes``. The
shared library is cached under ``$PRUNING_TOOLS_CACHE`` (default ``~/.cache/pruning_tools``), keyed
by the source, the flags, the compiler and the CPU, so a later process loads it without compiling.

- ``mask_select`` (``mask_select.c``): bank-balanced selection, radix-select histograms and masked
  zeroing for the mask engine (wrapped by ``mask_kernels``).
- ``bank_sparse`` (``bank_sparse.c``): ``y = x Wᵀ + b`` from packed banks (``pruning_tools.inference``).

The engine: ``auto`` (default: a kernel when it builds, else the pure-PyTorch path with one warning),
``native`` (a kernel or ``KernelUnavailableError``), ``torch`` (always the PyTorch path). It comes from
``PRUNING_TOOLS_KERNEL``, read at first use, or from ``use_engine(...)``, which overrides it inside a
``with`` block; ``reset()`` forgets what was loaded and read.

>>> with use_engine("torch"):
...     library("mask_select") is None
True
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch  # noqa: F401  (loads torch's OpenMP runtime first, so the kernels share its threads)

ENGINES = ("auto", "native", "torch")
HERE = Path(__file__).parent

_P, _I = ctypes.c_void_p, ctypes.c_int64


@dataclass(frozen=True)
class Kernel:
    """One C source, how it is compiled, and the ``ctypes`` signatures of its entry points."""

    source: Path
    flags: tuple[str, ...]  # -fopenmp is dropped (one thread) when the compiler lacks OpenMP
    signatures: dict[str, tuple[list, object]]  # function -> (argtypes, restype)


def _mask_select_signatures() -> dict[str, tuple[list, object]]:
    out: dict[str, tuple[list, object]] = {}
    for bits in (16, 32, 64):
        out[f"bank_select_{bits}"] = ([_P, _P, _P] + [_I] * 9 + [ctypes.c_uint64, _P], None)
        out[f"histogram_{bits}"] = ([_P, _P, _I, ctypes.c_int, ctypes.c_uint64, _P, _I, ctypes.c_uint64], None)
        out[f"keep_above_{bits}"] = ([_P, _P, _P, _I, ctypes.c_uint64, _P, _I, ctypes.c_uint64, _P], None)
        out[f"keep_largest_{bits}"] = ([_P, _P, _P, _I, _I, ctypes.c_uint64, _P], None)
        out[f"zero_pruned_{bits}"] = ([_P, _P, _I, _I], None)
    return out


KERNELS = {
    "mask_select": Kernel(
        HERE / "mask_select.c", ("-O3", "-std=gnu99", "-fopenmp", "-shared", "-fPIC"), _mask_select_signatures()
    ),
    "bank_sparse": Kernel(
        HERE / "bank_sparse.c",
        ("-O3", "-march=native", "-std=gnu99", "-fopenmp", "-shared", "-fPIC"),
        {
            # x, batch, in_features, y, values, idx, tail_values, tail_idx, bias, rows, banks, k, bank, tail_k
            "bank_linear": ([_P, _I, _I, _P] + [_P] * 5 + [_I] * 5, ctypes.c_int),
            "bank_set_threads": ([ctypes.c_int], None),
        },
    ),
}

_loaded: dict[str, ctypes.CDLL | None] = {}  # kernel name -> library, None once it failed (or engine "torch")
_errors: dict[str, str] = {}  # kernel name -> why it is None
_override = threading.local()  # .engine set by use_engine
_lock = threading.Lock()


class KernelUnavailableError(RuntimeError):
    """A compiled kernel was required (engine ``native``) but could not be built or loaded."""


def _check_engine(argument: str, value: object) -> str:
    if not isinstance(value, str) or value not in ENGINES:
        raise ValueError(f"{argument}={value!r} is not allowed: expected one of {', '.join(ENGINES)}")
    return value


def engine() -> str:
    """The engine in force: the innermost ``use_engine`` block's, else ``PRUNING_TOOLS_KERNEL``, else ``auto``."""
    chosen = getattr(_override, "engine", None)
    if chosen is not None:
        return chosen
    return _check_engine("PRUNING_TOOLS_KERNEL", os.environ.get("PRUNING_TOOLS_KERNEL", "auto"))


@contextlib.contextmanager
def use_engine(name: str) -> Iterator[None]:
    """Compute with ``name`` (``"auto"``, ``"native"`` or ``"torch"``) inside the ``with`` block (this thread)."""
    _check_engine("engine", name)
    previous = getattr(_override, "engine", None)
    _override.engine = name
    try:
        yield
    finally:
        _override.engine = previous


def reset() -> None:
    """Forget every loaded kernel and failure: the next ``library()`` call reads the engine and tries again."""
    with _lock:
        _loaded.clear()
        _errors.clear()


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


def library_path(source: Path, flags: Sequence[str]) -> Path:
    """Where the library compiled from ``source`` with ``flags`` by this compiler for this CPU is cached."""
    cc = _compiler()
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(
        "\0".join([source.read_text(), " ".join(flags), " ".join(cc), version, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"{source.stem}-{key}.so"


def _build(target: Path, source: Path, flags: Sequence[str]) -> None:
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


def compiled(source: Path, flags: Sequence[str]) -> Path:
    """Path of the cached shared library of ``source``, compiling it first if needed."""
    path = library_path(source, flags)
    if not path.exists():
        _build(path, source, flags)
    return path


def _load(kernel: Kernel) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(compiled(kernel.source, kernel.flags)))
    for name, (argtypes, restype) in kernel.signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def library(name: str) -> ctypes.CDLL | None:
    """The loaded kernel ``name`` (a key of ``KERNELS``), or ``None`` where the PyTorch path is to be used."""
    lib = _loaded.get(name)
    chosen = engine()
    if lib is not None and chosen != "torch":  # the common case, checked first: this runs on every forward
        return lib
    if chosen == "torch":
        return None
    if name not in _loaded:
        with _lock:
            if name not in _loaded:
                try:
                    _loaded[name] = _load(KERNELS[name])
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # no compiler, build or load error
                    _loaded[name], _errors[name] = None, f"{type(e).__name__}: {e}"
                    if chosen == "auto":
                        warnings.warn(
                            f"{name} kernel unavailable, using the PyTorch path ({_errors[name]})",
                            RuntimeWarning,
                            stacklevel=3,
                        )
    if _loaded[name] is None and chosen == "native":
        raise KernelUnavailableError(f"engine 'native' but the {name} kernel is unavailable: {_errors.get(name)}")
    return _loaded[name]


def set_threads(n: int) -> None:
    """Fix the inference kernel's OpenMP team to ``n`` threads for every product large enough to share
    (``n = 0``: the default, ``torch.get_num_threads()`` minus the cores other processes keep busy)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} is not allowed: expected an integer >= 0")
    lib = library("bank_sparse")
    if lib is not None:
        lib.bank_set_threads(n)


__all__ = [
    "ENGINES",
    "KERNELS",
    "Kernel",
    "KernelUnavailableError",
    "cache_dir",
    "compiled",
    "engine",
    "library",
    "library_path",
    "reset",
    "set_threads",
    "use_engine",
]
