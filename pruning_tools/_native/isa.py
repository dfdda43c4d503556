"""Instruction-set levels of the compiled inference kernel: which ones this CPU runs, which one is used.

The kernel ``bank_sparse`` is built once per level, each with its own flags and vector width, and the
level is chosen at run time from the CPU's flags (never ``-march=native``: a cached build runs on any
CPU of its level):

- ``avx512``: AVX-512 F/BW/VL/DQ + FMA, 16-float vectors (32 registers).
- ``avx2``: AVX2 + FMA, 8-float vectors (16 registers).
- ``portable``: the compiler's baseline for the machine (SSE2 on x86-64, NEON on AArch64), 4-float
  vectors, one 128-bit register each (8-float ones, two registers each, made the SSE2 build's products
  5–10x slower from 16 rows up on an AMD EPYC Zen 4, the CPU measured).

``PRUNING_TOOLS_ISA`` (``auto``, the default, or a level; read at first use) and ``use_isa(level)``
(a ``with`` block, this thread) force a level, so that tests and benchmarks can run each; forcing a
level this CPU cannot run is a ``ValueError``.

>>> "portable" in supported()
True
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

LEVELS = ("avx512", "avx2", "portable")  # best first
REQUIRED = {  # /proc/cpuinfo flags each level needs
    "avx512": frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"}),
    "avx2": frozenset({"avx2", "fma"}),
    "portable": frozenset(),
}
FLAGS = {  # compiler flags and the kernel's vector width (floats) per level
    "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-DVL=16"),
    "avx2": ("-mavx2", "-mfma", "-DVL=8"),
    "portable": ("-DVL=4",),
}
CHOICES = ("auto", *LEVELS)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, for cache keys and reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def supported() -> tuple[str, ...]:
    """The levels this CPU runs, best first (``portable`` always); read once (every converted layer's call
    asks which level is in force)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    flags = cpu_flags()
    return tuple(level for level in LEVELS if level == "portable" or (x86 and REQUIRED[level] <= flags))


class _Override(threading.local):
    level: str | None = None  # set by use_isa, per thread


_override = _Override()
_from_environment: list[str] = []  # PRUNING_TOOLS_ISA as read at first use (reset() reads it again)


def _check(argument: str, value: object) -> str:
    if not isinstance(value, str) or value not in CHOICES:
        raise ValueError(f"{argument}={value!r} is not allowed: expected one of {', '.join(CHOICES)}")
    if value != "auto" and value not in supported():
        raise ValueError(
            f"{argument}={value!r} is not allowed on this CPU ({cpu_model()}): it runs {', '.join(supported())}"
        )
    return value


def chosen() -> str:
    """The level in force: the innermost ``use_isa`` block's, else ``PRUNING_TOOLS_ISA`` (read at first
    use), else the best this CPU runs."""
    level = _override.level
    if level is None:
        if not _from_environment:
            _from_environment.append(_check("PRUNING_TOOLS_ISA", os.environ.get("PRUNING_TOOLS_ISA", "auto")))
        level = _from_environment[0]
    return supported()[0] if level == "auto" else level


@contextlib.contextmanager
def use_isa(level: str) -> Iterator[None]:
    """Run the inference kernel built for ``level`` (``"auto"`` or one of ``supported()``) inside the
    ``with`` block (this thread)."""
    _check("isa", level)
    previous = _override.level
    _override.level = level
    try:
        yield
    finally:
        _override.level = previous


def reset() -> None:
    """Read ``PRUNING_TOOLS_ISA`` again at the next use."""
    _from_environment.clear()


__all__ = ["CHOICES", "FLAGS", "LEVELS", "chosen", "cpu_flags", "cpu_model", "reset", "supported", "use_isa"]
