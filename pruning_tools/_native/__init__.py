"""The compiled kernels: one loader, one cache, one engine switch. The C sources lie beside this file.

Each kernel is plain C99 (+ OpenMP where it helps) with no torch headers, built by the system C
compiler (``$CC`` or ``cc``) in about a second at first use and loaded with ``ctypes``. The shared
library is cached under ``$PRUNING_TOOLS_CACHE`` (default ``~/.cache/pruning_tools``), keyed by the
source, the flags, the compiler and (for a kernel built ``per_isa``) the instruction-set level, so a
later process loads it without compiling. A kernel
with a ``python_module`` is also built as that CPython extension where Python's headers are found
(``module(name)``: the same code, called without ctypes' per-call argument conversion).

- ``mask_select`` (``mask_select.c``): bank-balanced selection, radix-select histograms and masked
  zeroing for the mask engine (wrapped by ``mask_kernels``).
- ``bank_sparse`` (``bank_sparse.c``): ``y = x Wᵀ + b`` and k×k convolutions from packed banks
  (``pruning_tools.inference``); every entry point checks its sizes once per call, and only runs on a
  weight whose indices its own ``bank_check`` has read. Built once per instruction-set level
  (``isa``: AVX-512, AVX2 + FMA, portable), the level chosen at run time from the CPU's flags or forced
  by ``PRUNING_TOOLS_ISA`` / ``use_isa(level)``.

``PRUNING_TOOLS_SANITIZE=address`` builds every kernel with AddressSanitizer (a separate cache entry;
the process must preload the sanitizer's runtime, see ``scripts/test.sh``).

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
import importlib.util
import os
import platform
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch  # noqa: F401  (loads torch's OpenMP runtime first, so the kernels share its threads)

from . import isa
from .isa import use_isa

ENGINES = ("auto", "native", "torch")
HERE = Path(__file__).parent

_P, _I = ctypes.c_void_p, ctypes.c_int64


@dataclass(frozen=True)
class Kernel:
    """One C source, how it is compiled, and the ``ctypes`` signatures of its entry points."""

    source: Path
    flags: tuple[str, ...]  # -fopenmp is dropped (one thread) when the compiler lacks OpenMP
    signatures: dict[str, tuple[list, object]]  # function -> (argtypes, restype)
    python_module: str | None = None  # also built as this CPython extension where Python.h is found
    per_isa: bool = False  # one build per instruction-set level (isa.FLAGS), the level chosen at run time


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
        ("-O3", "-std=gnu99", "-fopenmp", "-shared", "-fPIC"),
        {  # descriptors are pointers to pruning_tools.inference.native.BankWeight / ConvGeometry
            "bank_check": ([_P, _P], ctypes.c_int),  # weight, int64 *where
            "bank_linear": ([_P, _P, _I, _I, _P], ctypes.c_int),  # weight, x, batch, in_features, y
            "bank_conv2d": ([_P, _P, _P, _P], ctypes.c_int),  # weight, geometry, x, y
            "bank_set_threads": ([ctypes.c_int], None),
            "bank_team_size": ([], ctypes.c_int),  # the team the next shared product would use
        },
        python_module="_bank_sparse",  # linear / conv2d without ctypes' per-call conversions (module())
        per_isa=True,
    ),
}

SANITIZERS = {"address": ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")}


def flags_of(kernel: Kernel, python: bool = True, level: str | None = None) -> tuple[str, ...]:
    """The compiler flags of ``kernel``: plus, for a kernel built ``per_isa``, those of instruction-set
    ``level`` (default: ``isa.chosen()``), plus a sanitizer's when ``PRUNING_TOOLS_SANITIZE`` names one
    (``address``: AddressSanitizer, for tests; the process must preload the sanitizer's runtime), plus
    (``python``) those building its CPython extension module where Python.h is found."""
    sanitizer = os.environ.get("PRUNING_TOOLS_SANITIZE", "")
    if sanitizer and sanitizer not in SANITIZERS:
        raise ValueError(f"PRUNING_TOOLS_SANITIZE={sanitizer!r} is not allowed: expected one of {sorted(SANITIZERS)}")
    own = isa.FLAGS[level or isa.chosen()] if kernel.per_isa else ()
    flags = (*kernel.flags, *own, *SANITIZERS.get(sanitizer, ()))
    extension = _python_flags() if python and kernel.python_module else None
    return (*flags, *extension) if extension else flags


def _python_flags() -> tuple[str, ...] | None:
    """Flags that build a kernel as a CPython extension too, or None where Python.h is missing."""
    include = sysconfig.get_paths().get("include")
    if not include or not Path(include, "Python.h").is_file():
        return None
    return (f"-I{include}", "-DBANK_PYTHON_MODULE")


# keyed by the kernel's name, plus "@level" for a kernel built per instruction-set level
_loaded: dict[str, ctypes.CDLL | None] = {}  # key -> library, None once it failed (or engine "torch")
_modules: dict[str, object | None] = {}  # key -> its extension module (None: ctypes only)
_errors: dict[str, str] = {}  # key -> why it is None
_digests: dict[str, str] = {}  # key -> sha256 (12 hex digits) of the source its library was built from
_threads = [0]  # set_threads()'s last value


class _Override(threading.local):
    engine: str | None = None  # set by use_engine, per thread


_override = _Override()
_lock = threading.Lock()


class KernelUnavailableError(RuntimeError):
    """A compiled kernel was required (engine ``native``) but could not be built or loaded."""


def _check_engine(argument: str, value: object) -> str:
    if not isinstance(value, str) or value not in ENGINES:
        raise ValueError(f"{argument}={value!r} is not allowed: expected one of {', '.join(ENGINES)}")
    return value


_from_environment: list[str] = []  # PRUNING_TOOLS_KERNEL as read at first use (reset() reads it again)


def engine() -> str:
    """The engine in force: the innermost ``use_engine`` block's, else ``PRUNING_TOOLS_KERNEL`` (read
    at first use), else ``auto``."""
    chosen = _override.engine
    if chosen is not None:
        return chosen
    if not _from_environment:
        _from_environment.append(_check_engine("PRUNING_TOOLS_KERNEL", os.environ.get("PRUNING_TOOLS_KERNEL", "auto")))
    return _from_environment[0]


@contextlib.contextmanager
def use_engine(name: str) -> Iterator[None]:
    """Compute with ``name`` (``"auto"``, ``"native"`` or ``"torch"``) inside the ``with`` block (this thread)."""
    _check_engine("engine", name)
    previous = _override.engine
    _override.engine = name
    try:
        yield
    finally:
        _override.engine = previous


def reset() -> None:
    """Forget every loaded kernel and failure: the next ``library()`` call reads the engine and tries again."""
    with _lock:
        _loaded.clear()
        _modules.clear()
        _errors.clear()
        _digests.clear()
        _from_environment.clear()
        isa.reset()


def cache_dir() -> Path:
    """Where compiled kernels are cached: ``$PRUNING_TOOLS_CACHE``, else ``~/.cache/pruning_tools``."""
    return Path(os.environ.get("PRUNING_TOOLS_CACHE") or Path.home() / ".cache" / "pruning_tools")


def _compiler() -> list[str]:
    return (os.environ.get("CC") or "cc").split()


def library_path(source: Path, flags: Sequence[str], level: str = "") -> Path:
    """Where the library compiled from ``source`` with ``flags`` (those of instruction-set ``level``,
    where it is built per level) by this compiler is cached. The flags name every instruction the build
    may use (no ``-march=native``), so the file runs on any CPU of its level."""
    cc = _compiler()
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(
        "\0".join([source.read_text(), " ".join(flags), " ".join(cc), version, platform.machine(), level]).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"{source.stem}-{level + '-' if level else ''}{key}.so"


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


def compiled(source: Path, flags: Sequence[str], level: str = "") -> Path:
    """Path of the cached shared library of ``source``, compiling it first if needed."""
    path = library_path(source, flags, level)
    if not path.exists():
        _build(path, source, flags)
    return path


def _load(kernel: Kernel, level: str) -> tuple[ctypes.CDLL, object | None]:
    """The library (ctypes) and, for a kernel with a ``python_module``, the same file imported as that
    extension module (None where it cannot be built: the library alone, through ctypes). ``level``:
    the instruction-set level of a kernel built ``per_isa`` ("" for the others)."""
    module, path = None, None
    full, plain = flags_of(kernel, level=level or None), flags_of(kernel, python=False, level=level or None)
    if full != plain:
        try:
            path = compiled(kernel.source, full, level)
        except (OSError, RuntimeError, subprocess.SubprocessError):
            path = None  # no Python headers that work: the plain library
    if path is not None:
        spec = importlib.util.spec_from_file_location(str(kernel.python_module), path)
        if spec is not None and spec.loader is not None:
            try:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            except ImportError:
                module = None  # the library still loads through ctypes
    lib = ctypes.CDLL(str(path if path is not None else compiled(kernel.source, plain, level)))
    for name, (argtypes, restype) in kernel.signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    if hasattr(lib, "bank_set_threads"):
        lib.bank_set_threads(_threads[0])  # as set_threads() left it for the builds loaded before
    return lib, module


def _key(name: str) -> tuple[str, str]:
    """``(key of the loaded tables, instruction-set level or "")`` of kernel ``name`` now."""
    if name in KERNELS and KERNELS[name].per_isa:
        level = isa.chosen()
        return f"{name}@{level}", level
    return name, ""


def library(name: str) -> ctypes.CDLL | None:
    """The loaded kernel ``name`` (a key of ``KERNELS``; built for the instruction-set level in force
    where it is built per level), or ``None`` where the PyTorch path is to be used."""
    key, level = _key(name)
    lib = _loaded.get(key)
    chosen = engine()
    if lib is not None and chosen != "torch":  # the common case, checked first: this runs on every forward
        return lib
    if chosen == "torch":
        return None
    if key not in _loaded:
        with _lock:
            if key not in _loaded:
                try:
                    digest = source_digest(KERNELS[name].source)  # as read just before the build
                    _loaded[key], _modules[key] = _load(KERNELS[name], level)
                    _digests[key] = digest
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # no compiler, build or load error
                    _loaded[key], _errors[key] = None, f"{type(e).__name__}: {e}"
                    if chosen == "auto":
                        warnings.warn(
                            f"{name} kernel unavailable, using the PyTorch path ({_errors[key]})",
                            RuntimeWarning,
                            stacklevel=3,
                        )
    if _loaded[key] is None and chosen == "native":
        raise KernelUnavailableError(f"engine 'native' but the {name} kernel is unavailable: {_errors.get(key)}")
    return _loaded[key]


def source_digest(source: Path) -> str:
    """sha256 of the file ``source`` now, 12 hex digits."""
    return hashlib.sha256(source.read_bytes()).hexdigest()[:12]


def loaded_digest(name: str) -> str | None:
    """``source_digest`` of the source that the loaded kernel ``name`` (the level in force) was built
    from, as read when it was loaded: a source edited or upgraded since, in a running process, does
    not change it. None where the PyTorch path is used."""
    return _digests.get(_key(name)[0]) if library(name) is not None else None


def module(name: str) -> object | None:
    """The extension module of kernel ``name`` (same code as ``library(name)``, called without ctypes),
    or None where it is not built (no Python headers) or the library is unavailable."""
    return _modules.get(_key(name)[0]) if library(name) is not None else None


def set_threads(n: int) -> None:
    """Fix the inference kernel's OpenMP team to ``n`` threads for every product large enough to share
    (``n = 0``: the default, ``torch.get_num_threads()`` minus the cores other processes keep busy)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} is not allowed: expected an integer >= 0")
    _threads[0] = n
    library("bank_sparse")  # (built and loaded now, as before)
    for key, lib in list(_loaded.items()):  # every level's build keeps its own setting
        if lib is not None and key.startswith("bank_sparse@"):
            lib.bank_set_threads(n)


__all__ = [
    "ENGINES",
    "KERNELS",
    "Kernel",
    "KernelUnavailableError",
    "cache_dir",
    "compiled",
    "engine",
    "flags_of",
    "library",
    "library_path",
    "loaded_digest",
    "module",
    "reset",
    "isa",
    "set_threads",
    "source_digest",
    "use_engine",
    "use_isa",
]
