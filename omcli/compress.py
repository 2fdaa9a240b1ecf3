"""`om compress CKPT FILE -o OUT` and `om decompress CKPT FILE -o OUT`: lossless coding with a
bytes-codec checkpoint's next-byte probabilities (see docs/compress.md). The work is done by
`om.compress`; this module parses, reads, writes and prints."""

from __future__ import annotations

import sys
import time
from typing import Optional

import typer

from omcli.common import ByteProgress, progress_option, rate_text, set_threads, stderr, threads_option, threads_text, user_errors
from omcli.eval import CKPT_HELP

FILE_HELP = "The file to read; - reads stdin."
OUT_HELP = "Where to write (atomically: a temporary file, then renamed); - writes stdout."


def _read_input(path: str) -> tuple[bytes, str]:
    """(the bytes of FILE, its name for messages); `-` is stdin."""
    from pathlib import Path

    from om.errors import OmUserError

    if path == "-":
        stdin = sys.stdin.buffer if sys.stdin is not None else None
        if stdin is None or stdin.isatty():
            raise OmUserError("FILE -: stdin is a terminal; pipe the data in (`< FILE`)")
        return stdin.read(), "<stdin>"
    file = Path(path)
    if not file.is_file():
        raise OmUserError(f"{path}: {'not a regular file' if file.exists() else 'no such file'}")
    return file.read_bytes(), path


def _write_output(path: str, data: bytes, what: str) -> None:
    """Write `data` to `path` atomically, or to stdout for `-`."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from om.atomic import failed_write_is_run_error, writing_file

    with failed_write_is_run_error(lambda reason: f"{path}: cannot write the {what} ({reason}); nothing was written"):
        with writing_file(path, "compress") as tmp:
            tmp.write_bytes(data)


def _load(checkpoint: str):
    from om.checkpoint import load_checkpoint
    from om.compress import check_model

    ckpt = load_checkpoint(checkpoint, device="cpu")  # CPU fp32 only: the probabilities must be reproducible
    check_model(ckpt.model, ckpt.codec, str(ckpt.path))
    return ckpt


@user_errors("compress")
def compress_command(
    checkpoint: str = typer.Argument(..., metavar="CKPT", help=CKPT_HELP),
    file: str = typer.Argument(..., metavar="FILE", help=FILE_HELP),
    output: str = typer.Option(..., "--output", "-o", help=OUT_HELP),
    block_size: int = typer.Option(4096, "--block-size", help="Bytes per block; each block is coded as its own document "
                                   "(longer blocks compress a little better, shorter ones run faster on small files)."),
    wave_rows: int = typer.Option(256, "--wave-rows", help="Blocks coded side by side in one batch."),
    threads: Optional[int] = threads_option("compress"),
    progress: Optional[bool] = progress_option(),
) -> None:
    """Compress FILE losslessly with a bytes-codec checkpoint (decompress it with the same checkpoint)."""
    from om.compress import check_sizes, compress_bytes
    from om.errors import OmUserError

    check_sizes(block_size, wave_rows)
    if output == "-" and sys.stdout.isatty():
        raise OmUserError("-o -: stdout is a terminal; redirect it to a file (`> FILE.omz`)")
    used_threads = set_threads(threads, "compress")
    data, name = _read_input(file)
    ckpt = _load(checkpoint)
    t0 = time.perf_counter()
    with ByteProgress("compress", progress) as shown:
        blob = compress_bytes(ckpt, data, block_size, wave_rows, used_threads, progress=shown)
    seconds = time.perf_counter() - t0
    _write_output(output, blob, "compressed file")
    bpb = f"{8 * len(blob) / len(data):.4f} bits/byte" if data else "empty input"
    stderr.print(
        f"om compress: {name}: {len(data):,} -> {len(blob):,} bytes ({bpb}), {seconds:.2f} s, {rate_text(len(data), seconds)}, "
        f"block {block_size:,}, {threads_text(used_threads)}",
        markup=False, highlight=False, soft_wrap=True,
    )


@user_errors("decompress")
def decompress_command(
    checkpoint: str = typer.Argument(..., metavar="CKPT", help=CKPT_HELP + " The one the file was compressed with."),
    file: str = typer.Argument(..., metavar="FILE", help=FILE_HELP),
    output: str = typer.Option(..., "--output", "-o", help=OUT_HELP + " Written only once the data is verified."),
    progress: Optional[bool] = progress_option(),
) -> None:
    """Restore a file made by `om compress`, byte for byte (its thread count and block size come from the file)."""
    from om.compress import decompress_bytes

    blob, name = _read_input(file)
    ckpt = _load(checkpoint)
    t0 = time.perf_counter()
    with ByteProgress("decompress", progress) as shown:
        data = decompress_bytes(ckpt, blob, name, progress=shown)
    seconds = time.perf_counter() - t0
    _write_output(output, data, "decompressed file")
    stderr.print(
        f"om decompress: {name}: {len(blob):,} -> {len(data):,} bytes, {seconds:.2f} s, {rate_text(len(data), seconds)}",
        markup=False, highlight=False, soft_wrap=True,
    )
