"""Helpers shared by the subcommands: one-line errors (exit code 2 for bad input, 1 for a failed
run), quiet exit on a closed stdout pipe, stderr console, the usage line, `--errors`, `--threads`
and progress on stderr.

Nothing here imports torch or numpy at import time: `om --help` and usage errors must stay fast.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import sys
import time
from enum import Enum
from typing import Callable, TypeVar

import typer
from rich.console import Console

from om.errors import OmRunError, OmUserError, printable, renamed_keys

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


def option_flags(fn: Callable) -> dict[str, str]:
    """{parameter name: its long flag} for the typer options of a command function, e.g.
    {"vocab_size": "--vocab-size"}: the names under which the command's user gave the values."""
    flags = {}
    for name, param in inspect.signature(fn).parameters.items():
        if isinstance(param.default, typer.models.OptionInfo):
            decls = [d.split("/")[0] for d in param.default.param_decls or () if d.startswith("--")]
            if decls:
                flags[name] = decls[0]
    return flags


def user_errors(command: str) -> Callable[[F], F]:
    """Decorator for a subcommand: user errors become a one-line message and exit code 2; a failed
    run (`OmRunError`, or an OSError such as a full disk) one line and exit code 1; a closed stdout
    pipe a quiet exit with code 0, as for `om sample ... | head -c 1`.

    A library error about an argument the command passes on from one of its options (a parameter
    of the same name, such as `vocab_size`) names that option's flag (`--vocab-size`)."""

    def wrap(fn: F) -> F:
        flags = option_flags(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                with renamed_keys(flags):
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


class OmCommand(typer.core.TyperCommand):
    """A subcommand whose usage line names arguments the usual way: `om eval [OPTIONS] CKPT
    [INPUT...]` (required bare, optional in brackets, repeatable with `...`), where typer would
    write `{CKPT} [[INPUT]...]...` for a metavar of its own."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                pieces.append(usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


def usage_name(param) -> str:
    """`NAME`, `[NAME]`, `NAME...` or `[NAME...]` for a typer argument in a usage line."""
    name = (param.metavar or param.name.upper()).strip("[]").removesuffix("...")
    if param.nargs != 1:
        name += "..."
    return name if param.required else f"[{name}]"


# Options shared by several commands, spelled and shown alike everywhere ----------------------------
class ErrorsChoice(str, Enum):
    """What `--errors` accepts (om prepare, eval, sample and cache)."""

    strict = "strict"
    replace = "replace"


ERRORS_HELP = "Invalid UTF-8 for a chars/SentencePiece model: strict (an error naming the input and byte offset) or replace (U+FFFD)."


def errors_option():
    """The `--errors strict|replace` option, the same in every command."""
    return typer.Option(ErrorsChoice.strict, "--errors", help=ERRORS_HELP)


# Torch CPU threads when --threads is not given; None: torch's default (one per core, or
# OMP_NUM_THREADS). From `python -m bench.threads`: batch-1 decoding does not gain from a second
# thread (its matrices are too small to split); evaluation windows do when the cores are free (and
# lose when other processes keep them busy). Re-measure on an otherwise idle machine before changing
# these (BENCHMARKS.md, section "threads").
# om compress: one thread; a second made it slower (docs/compress.md, "Threads"), and the
# count is recorded in the file and set again by om decompress, as the probabilities depend on it.
DEFAULT_THREADS: dict[str, int | None] = {"eval": None, "cache": None, "sample": 1, "compress": 1}
MAX_THREADS = 1024


def threads_option(command: str):
    """The `--threads N` option of `command`, its help naming the command's default."""
    default = DEFAULT_THREADS[command]
    shown = "one per core" if default is None else str(default)
    return typer.Option(
        None, "--threads", show_default=False,
        help=f"Torch CPU threads (default: {shown}; OMP_NUM_THREADS, when set, replaces the default).",
    )


def set_threads(threads: int | None, command: str) -> int:
    """Set torch's CPU thread count for `command` and return it: `threads` if given (it must be
    from 1 to MAX_THREADS, else an `OmUserError` about `threads`), else the command's default
    (`DEFAULT_THREADS`), unless OMP_NUM_THREADS is set, which torch already follows."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise OmUserError(f"threads {threads}: must be from 1 to {MAX_THREADS}", key="threads")
    import torch

    if threads is None and not os.environ.get("OMP_NUM_THREADS", "").strip():
        threads = DEFAULT_THREADS[command]
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# Progress ----------------------------------------------------------------------------------------
PROGRESS_AFTER_S = 3.0  # by default a run shows progress only once it has taken this long
PROGRESS_EVERY_S = 10.0  # plain lines (stderr not a terminal): at most one per this many seconds


def progress_option():
    """The `--progress/--no-progress` option of `om eval` and `om cache`."""
    return typer.Option(
        None, "--progress/--no-progress", show_default=False,
        help=f"Progress on stderr (default: only for a run that takes more than {PROGRESS_AFTER_S:g} s).",
    )


def rate_text(n: int, seconds: float) -> str:
    """`n` bytes in `seconds`, for a summary line: "12,345 bytes/s"."""
    return f"{n / seconds if seconds > 0 else 0:,.0f} bytes/s"


def threads_text(threads: int) -> str:
    """"1 thread", "2 threads"."""
    return f"{threads} thread{'s' if threads != 1 else ''}"


def _size(n: float) -> str:
    from om.model.sizing import format_bytes  # the one formatter of sizes (bytes, KB, MB, ...: powers of 1000)

    return format_bytes(n)


def _duration(seconds: float) -> str:
    from om.train.progress import format_duration  # the one formatter of durations (45s, 3m12s, 2h05m)

    return format_duration(seconds)


class ByteProgress:
    """Progress of a command reading its inputs, on stderr; a callback `(bytes_done, bytes_total)`
    (total None when unknown, as for stdin), as `om.evaluate.evaluate` and `read_context` call it.

    enabled: None (shown once the run has taken `after_s`, so small inputs print nothing), True
    (from the start) or False (never). On a terminal it is a rich bar (bytes, bytes/s, time left) that
    disappears at the end; otherwise (a pipe, a log file) one plain line at most every `every_s`
    seconds, and a last line with the total once any line was printed:

        om eval: 12.6 MB of 100.0 MB (12%), 1.2 MB/s, 1m12s left

    Use as a context manager around the call. Nothing goes to stdout.
    """

    def __init__(self, command: str, enabled: bool | None = None, console=None, after_s: float = PROGRESS_AFTER_S,
                 every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.command, self.enabled, self.clock = command, enabled, clock
        self.console = console if console is not None else stderr
        self.after_s = 0.0 if enabled else after_s
        self.every_s = every_s
        self.start = clock()
        self.done, self.total = 0, None
        self.lines = 0  # plain lines printed
        self._last_line = None
        self._bar = None
        self._task = None

    def __enter__(self) -> "ByteProgress":
        self.start = self.clock()
        return self

    def __call__(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total
        if self.enabled is False:
            return
        now = self.clock()
        if now - self.start < self.after_s:
            return
        if self.console.is_terminal:
            self._draw(done, total, now - self.start)
        elif self._last_line is None or now - self._last_line >= self.every_s:
            self._line(self._text(done, total, now - self.start))
            self._last_line = now

    def _text(self, done: int, total: int | None, elapsed: float) -> str:
        speed = done / elapsed if elapsed > 0 else 0.0
        text = f"om {self.command}: {_size(done)}"
        if total:
            text += f" of {_size(total)} ({min(100, int(100 * done / total))}%)"
        if speed > 0:
            text += f", {_size(speed)}/s"
        if total and speed > 0 and done < total:
            text += f", {_duration((total - done) / speed)} left"
        return text

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        self.lines += 1

    def _draw(self, done: int, total: int | None, elapsed: float) -> None:
        if self._bar is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"om {self.command}"), BarColumn(), TextColumn("{task.fields[amount]}"), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.command, total=total, amount="")
        amount = _size(done) + (f" / {_size(total)}" if total else "")  # om's units, not rich's (kB, MiB)
        if elapsed > 0:
            amount += f", {_size(done / elapsed)}/s"
        self._bar.update(self._task, completed=done, total=total, amount=amount)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.lines and exc[0] is None:
            elapsed = self.clock() - self.start
            speed = f" ({_size(self.done / elapsed)}/s)" if elapsed > 0 else ""
            self._line(f"om {self.command}: {_size(self.done)} read in {_duration(elapsed)}{speed}")
