"""`om cache CKPT INPUT... -o FILE`: read inputs once and save the stream state (see docs/eval-sample.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from omcli.common import ByteProgress, ErrorsChoice, errors_option, progress_option, set_threads, stderr, threads_option, user_errors
from omcli.eval import CKPT_HELP, DEVICE_HELP


@user_errors("cache")
def cache_command(
    checkpoint: str = typer.Argument(..., metavar="CKPT", help=CKPT_HELP),
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT...", help="Files, folders or - (stdin), read as one stream joined by document separators."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Context cache file to write (safetensors); - writes it to stdout."),
    errors: ErrorsChoice = errors_option(),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    threads: Optional[int] = threads_option("cache"),
    progress: Optional[bool] = progress_option(),
) -> None:
    """Save the model state after reading the inputs, for `om sample/eval --context-cache`."""
    from om.checkpoint import load_checkpoint
    from om.context_cache import context_bytes, save_context
    from om.device import resolve_device
    from om.errors import OmUserError, printable
    from om.evaluate import read_context
    from om.model.sizing import format_bytes

    errors = ErrorsChoice(errors).value
    to_stdout = str(output) == "-"
    if to_stdout and sys.stdout.isatty():
        raise OmUserError("--output -: stdout is a terminal; redirect it to a file (`> FILE`) or give -o FILE")
    set_threads(threads, "cache")
    ckpt = load_checkpoint(checkpoint, device=resolve_device(device))
    with ByteProgress("cache", progress) as shown:
        context = read_context(ckpt.model, ckpt.codec, inputs, errors=errors, progress=shown)
    if to_stdout:
        data = context_bytes(context, ckpt.fingerprint, ckpt.codec, ckpt.model)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        where, size = "<stdout>", len(data)
    else:
        path = save_context(output, context, ckpt.fingerprint, ckpt.codec, ckpt.model)
        where, size = printable(str(path)), path.stat().st_size
    stderr.print(
        f"om cache: wrote {where}: {context.offset + 1:,} tokens from {len(context.inputs)} input(s), "
        f"{context.bytes_read:,} bytes read, {format_bytes(size)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if not to_stdout:
        print(where, flush=True)  # the path, for scripts; with -o - stdout holds the cache itself
