"""What every subcommand shares: library errors turned into one-line messages, and the console."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

LIBRARY_ERRORS = (ValueError, TypeError, RuntimeError, OSError, ImportError, KeyError)


def library_errors(command: F) -> F:
    """Run ``command``; a library error (argument, value, what is allowed) becomes a click error: one
    line on stderr and exit code 1, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except LIBRARY_ERRORS as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise click.ClickException(str(message)) from error

    return wrapper  # type: ignore[return-value]


def console(stderr: bool = False):
    """A rich console at least 120 columns wide (names stay whole when the output is piped)."""
    from rich.console import Console

    out = Console(stderr=stderr)
    out.width = max(out.width, 120)
    return out
