"""How a failing rank of a torchrun launch ends: one line naming the rank, a non-zero exit, no hang.

torchrun notices the exit and stops the other ranks; a rank blocked in a collective with a dead
peer gets a communication error, reported the same way.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Callable, TypeVar

import typer

from om.errors import OmRunError, OmUserError

F = TypeVar("F", bound=Callable)


def _describe(err: BaseException) -> tuple[str, int]:
    """(message, exit code) for an exception that ends a rank."""
    import torch.distributed as dist

    if isinstance(err, OmUserError):
        return str(err), 2
    if isinstance(err, OmRunError):  # a full disk, a NaN loss: no traceback, as in one process
        return str(err), 1
    if isinstance(err, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(err, OSError):  # a full disk, a missing file: one line, as in one process
        name = getattr(err, "filename", None)
        return (f"{name}: {err.strerror or err}" if name else str(err)), 1
    text = " ".join(str(err).split())
    if len(text) > 300:
        text = text[:297] + "..."
    if isinstance(err, getattr(dist, "DistError", ())):
        return f"lost contact with the other ranks ({type(err).__name__}: {text}); another rank probably failed first", 1
    traceback.print_exception(err)  # a bug: its traceback matters
    return f"{type(err).__name__}: {text}", 1


def rank_failures(command: str) -> Callable[[F], F]:
    """Decorator for a subcommand that may run as one rank of several (torchrun, WORLD_SIZE > 1):
    an exception prints `om COMMAND: rank N failed: ...` on stderr and ends the process at once
    (exit 2 for a user error, 1 otherwise, with the traceback first for a bug), skipping interpreter shutdown, which can block on a
    process group whose peers are gone. With one process it changes nothing."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            from om.train.distributed import env_rank, env_world_size  # imports torch: not at `om --help`

            if env_world_size() <= 1:
                return fn(*args, **kwargs)
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, SystemExit):
                raise
            except BaseException as err:  # noqa: BLE001 - every failure must end this rank
                message, code = _describe(err)
                print(f"om {command}: rank {env_rank()} failed: {' '.join(message.split())}", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(code)

        return inner  # type: ignore[return-value]

    return wrap
