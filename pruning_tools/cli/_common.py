"""What every subcommand shares: errors as one line, text from files made safe to print, the console,
option types, output locations checked before the work, and the list of files written."""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

import click

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

LIBRARY_ERRORS = (
    ValueError,
    TypeError,
    RuntimeError,
    OSError,
    ImportError,
    KeyError,
    EOFError,
)  # EOFError: click says "Aborted!"

# C0 and C1 control characters (ESC starts ANSI / OSC sequences), DEL, line and paragraph separators,
# and the bidirectional overrides that reorder what a terminal shows
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: Any) -> str:
    """``text`` with every control character written as a visible escape (``\\x1b``, ``\\n``, ...):
    nothing read from a file can move the cursor, recolour or retitle the terminal."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def shown(text: Any) -> str:
    """``printable(text)`` with rich markup escaped too: for text from a file inside rich output."""
    from rich.markup import escape

    return escape(printable(text))


def one_line(message: Any) -> str:
    """``message`` (text or an exception; a ``KeyError`` without its quotes) on one printable line."""
    if isinstance(message, KeyError) and message.args:
        message = message.args[0]
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return printable("; ".join(lines) or (type(message).__name__ if isinstance(message, BaseException) else "error"))


def library_errors(command: F) -> F:
    """Run ``command``; a library error (argument, value, what is allowed) becomes a click error: one
    printable line on stderr and exit code 1, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except click.ClickException as error:
            # it may quote names read from a file; rewritten in place to keep its class (exit code, usage
            # line): click >= 8.2 annotates ``message`` Final although nothing in click forbids this
            error.message = one_line(error.message)  # type: ignore[misc]
            raise
        except LIBRARY_ERRORS as error:
            raise click.ClickException(one_line(error)) from error

    return cast(F, wrapper)  # functools.wraps keeps the signature; the type system cannot see it


def console(stderr: bool = False) -> Console:
    """A rich console: the terminal's width on a terminal; unlimited width when the output goes to a
    file or a pipe, so that no value, name or path is cut or folded there."""
    from rich.console import Console

    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal:
        out = Console(stderr=stderr, highlight=False, width=100_000, soft_wrap=True)
    return out


# ---------------------------------------------------------------- option types


class Fraction(click.ParamType):
    """A number in ``[low, 1)`` (or ``[low, 1]`` with ``closed``); NaN and infinities refused."""

    name = "FLOAT"

    def __init__(self, low: float = 0.0, closed: bool = False) -> None:
        self.low, self.closed = low, closed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        inside = number <= 1 if self.closed else number < 1
        if not (math.isfinite(number) and number >= self.low and inside):
            self.fail(f"{value!r} is not in [{self.low:g}, 1{']' if self.closed else ')'}", param, ctx)
        return number


class NonNegative(click.ParamType):
    """A finite number >= 0."""

    name = "FLOAT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(number) and number >= 0):
            self.fail(f"{value!r} is not a finite number >= 0", param, ctx)
        return number


class HiddenAlias(click.Option):
    """An option whose first name is shown in ``--help`` and in errors; the others (old spellings)
    still work."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return repr(self.opts[0])

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown_opts, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown_opts


# ---------------------------------------------------------------- output locations


def _fail_location(option: str, message: str) -> None:
    raise click.BadParameter(printable(message), param_hint=option)


def _writable_directory(directory: Path, option: str, path: Path) -> None:
    """Raise unless ``directory`` (where ``path`` goes) exists, is a directory and is writable."""
    for parent in (directory, *directory.parents):
        if parent.exists() and not parent.is_dir():
            _fail_location(option, f"cannot write {path}: {parent} is a file, not a directory")
    if not directory.is_dir():
        _fail_location(option, f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        _fail_location(option, f"cannot write {path}: directory {directory} is not writable")


def output_file(path: str | Path, option: str) -> Path:
    """Check before any work that the file ``path`` can be written (its directory exists and is
    writable; it is not a directory). Returns it as a ``Path``."""
    path = Path(path)
    if path.is_dir():
        _fail_location(option, f"{path} is a directory: expected a file name")
    _writable_directory(path.parent if str(path.parent) else Path("."), option, path)
    if path.exists() and not os.access(path, os.W_OK):
        _fail_location(option, f"cannot write {path}: the file is not writable")
    return path


def output_directory(path: str | Path, option: str) -> Path:
    """Create the directory ``path`` (and its parents) now, before any work, or say why it cannot
    be; refuse a file or an unwritable directory. Returns it as a ``Path``."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            _fail_location(option, f"cannot write into {path}: {parent} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _fail_location(option, f"cannot create directory {path}: {error.strerror or error}")
    if not os.access(path, os.W_OK | os.X_OK):
        _fail_location(option, f"cannot write into {path}: the directory is not writable")
    return path


def earlier_files(directory: Path, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that already exist in ``directory`` (a run writing there replaces them)."""
    return [name for name in names if (directory / name).exists()]


def say_replacing(directory: Path, earlier: list[str]) -> None:
    """A note on stderr, before the work starts, naming the files of an earlier run in ``directory``."""
    if earlier:
        click.echo(
            f"note: {printable(directory)} holds {len(earlier)} file(s) of an earlier run "
            f"({printable(', '.join(earlier))}): those this run writes will be replaced",
            err=True,
        )


def write_run(write: Callable[..., Any], result: dict, out: Path) -> Any:
    """``write(result, out, committed)`` (a demo's ``write_outputs``: one run's files written apart,
    then moved into ``out``); if it is interrupted (Ctrl-C, a full disk) say on stderr what ``out`` now
    holds, then let the error go on."""
    committed: list[Path] = []
    try:
        return write(result, out, committed)
    except BaseException:
        if not committed:
            click.echo(f"interrupted while writing: {printable(out)} holds what it held before (nothing of this run)",
                       err=True)  # fmt: skip
        else:
            from ..demo.run_files import check_run

            landed = ", ".join(p.name for p in committed)
            click.echo(
                f"interrupted while moving this run's files into {printable(out)}: {printable(landed)} landed; "
                f"the rest is the earlier run's; results.json checks: {printable('; '.join(check_run(out)) or 'ok')}",
                err=True,
            )
        raise


class Written:
    """The files a command writes, and which of them it replaced: ``before(path)`` before writing
    each one (or ``add(paths, existed)`` afterwards, with what existed before), ``report()`` at the end
    (every file named; a replaced one said so)."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.existed: set[Path] = set()

    def before(self, path: str | Path) -> Path:
        """Note ``path`` as about to be written (replaced, if it exists). Returns it as a ``Path``."""
        path = Path(path)
        if path not in self.files:
            self.files.append(path)
            if path.exists():
                self.existed.add(path)
        return path

    def add(self, paths: Iterable[str | Path], existed: Iterable[str | Path] = ()) -> None:
        """Note ``paths`` as written; those in ``existed`` were there before."""
        self.files += [Path(p) for p in paths if Path(p) not in self.files]
        self.existed |= {Path(p) for p in existed}

    def lines(self) -> list[str]:
        """``wrote A`` / ``replaced B (it existed before)``, one line per file, in writing order."""
        return [
            f"replaced {printable(p)} (it existed before)" if p in self.existed else f"wrote {printable(p)}"
            for p in self.files
        ]

    def report(self, err: bool = False) -> None:
        """Print ``lines()``."""
        for line in self.lines():
            click.echo(line, err=err)
