"""Helpers shared by the subcommands: one-line errors (exit code 2 for bad input, 1 for a failed
run), quiet exit on a closed stdout pipe, stderr console."""

from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console

from om.errors import OmRunError, OmUserError, printable

F = TypeVar("F", bound=Callable)

# Diagnostics, progress bars and tables meant for people go to stderr; results go to stdout.
stderr = Console(stderr=True)


class StdoutConsole(Console):
    """A rich Console for results on stdout. On a closed pipe it raises BrokenPipeError, which
    `user_errors` turns into the quiet exit 0 of every command, where rich would exit with 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def fail(message: str, command: str | None = None, code: int = 2) -> None:
    """Print `om CMD: error: message` on stderr (one line) and exit with `code` (2: bad input)."""
    prefix = f"om {command}: error: " if command else "om: error: "
    print(prefix + " ".join(printable(str(message)).split()), file=sys.stderr, flush=True)
    raise typer.Exit(code=code)


def silence_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so later writes and the interpreter's final
    flush are quiet (`om ... | head -c 1` must not print a traceback)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file descriptor (tests); nothing to silence


def _os_error_text(err: OSError) -> str:
    name = err.filename if getattr(err, "filename", None) else ""
    return f"{name}: {err.strerror or err}" if name else (err.strerror or str(err))


def user_errors(command: str) -> Callable[[F], F]:
    """Decorator for a subcommand: user errors become a one-line message and exit code 2; a failed
    run (`OmRunError`, or an OSError such as a full disk) one line and exit code 1; a closed stdout
    pipe a quiet exit with code 0, as for `om sample ... | head -c 1`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except OmUserError as err:
                fail(str(err), command)
            except OmRunError as err:
                fail(str(err), command, code=1)
            except BrokenPipeError:
                silence_stdout()
                return None
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
                fail(_os_error_text(err), command)
            except OSError as err:  # ENOSPC, EIO, ...: the machine's fault, not the arguments'
                fail(_os_error_text(err), command, code=1)

        return inner  # type: ignore[return-value]

    return wrap
