"""Helpers shared by the subcommands: one-line errors with exit code 2, stderr console."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console

from om.errors import OmUserError

F = TypeVar("F", bound=Callable)

# Diagnostics, progress bars and tables meant for people go to stderr; results go to stdout.
stderr = Console(stderr=True)


def fail(message: str, command: str | None = None) -> None:
    """Print `om CMD: error: message` on stderr (one line) and exit with code 2."""
    prefix = f"om {command}: error: " if command else "om: error: "
    print(prefix + " ".join(str(message).split()), file=sys.stderr, flush=True)
    raise typer.Exit(code=2)


def user_errors(command: str) -> Callable[[F], F]:
    """Decorator for a subcommand: user errors become a one-line message and exit code 2."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except OmUserError as err:
                fail(str(err), command)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
                name = err.filename if getattr(err, "filename", None) else ""
                fail(f"{name}: {err.strerror or err}" if name else str(err), command)

        return inner  # type: ignore[return-value]

    return wrap
