"""`om cache CKPT INPUT... -o FILE`: read inputs once and save the stream state (see docs/eval-sample.md)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from omcli.common import stderr, user_errors
from omcli.eval import CKPT_HELP, DEVICE_HELP, ERRORS_HELP


@user_errors("cache")
def cache_command(
    checkpoint: str = typer.Argument(..., metavar="CKPT", help=CKPT_HELP),
    inputs: List[str] = typer.Argument(..., metavar="INPUT...", help="Files, folders or - (stdin), read as one stream joined by document separators."),
    output: Path = typer.Option(..., "-o", "--output", help="Context cache file to write (safetensors)."),
    errors: str = typer.Option("strict", "--errors", help=ERRORS_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Save the model state after reading the inputs, for `om sample/eval --context-cache`."""
    from om.checkpoint import load_checkpoint
    from om.context_cache import save_context
    from om.device import resolve_device
    from om.evaluate import check_errors, read_context

    check_errors(errors)
    ckpt = load_checkpoint(checkpoint, device=resolve_device(device, "--device"))
    context = read_context(ckpt.model, ckpt.codec, inputs, errors=errors)
    path = save_context(output, context, ckpt.fingerprint, ckpt.codec, ckpt.model)
    size = path.stat().st_size
    stderr.print(
        f"om cache: wrote {path}: {context.offset + 1:,} tokens from {len(context.inputs)} input(s), "
        f"{context.bytes_read:,} bytes read, {size / 1024:,.1f} KiB",
        markup=False,
        highlight=False,
    )
    print(path, flush=True)
