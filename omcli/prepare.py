"""`om prepare`: turn files, folders or stdin into a dataset folder (see docs/prepare.md)."""

from __future__ import annotations

import shlex
import sys
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from om.errors import printable
from omcli.common import ErrorsChoice, errors_option, stderr, user_errors


class CodecChoice(str, Enum):
    bytes = "bytes"
    chars = "chars"
    sentencepiece = "sentencepiece"


class ModelTypeChoice(str, Enum):
    unigram = "unigram"
    bpe = "bpe"


def _summary(meta: dict, seconds: float):
    from rich.table import Table

    table = Table(title=f"om prepare: {meta['codec']} codec, vocab {meta['vocab_size']}, {meta['dtype']}", title_justify="left")
    for column in ("split", "documents", "bytes", "tokens", "bytes/token"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, info in meta["splits"].items():
        ratio = f"{info['bytes'] / info['tokens']:.3f}" if info["tokens"] else "-"
        table.add_row(name, f"{info['documents']:,}", f"{info['bytes']:,}", f"{info['tokens']:,}", ratio)
    speed = meta["input_bytes"] / 1e6 / seconds if seconds > 0 else float("inf")
    note = (
        f"{len(meta['sources'])} input(s), {meta['input_bytes']:,} bytes in {seconds:.2f} s ({speed:.1f} MB/s); "
        f"validation split by {meta['split']['method']} (val fraction {meta['split']['val_fraction']})"
    )
    return table, note


@user_errors("prepare")
def prepare(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...", help="Files, folders (walked recursively) or - for stdin."),
    output: Path = typer.Option(..., "-o", "--output", help="Dataset folder to create."),
    codec: CodecChoice = typer.Option(CodecChoice.bytes, "--codec", help="How text becomes ids."),
    vocab_size: Optional[int] = typer.Option(
        None, "--vocab-size", help="All ids, specials included (default: bytes 257, chars 4096, sentencepiece 1024)."
    ),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of the bytes for validation, in [0, 1)."),
    include: Optional[List[str]] = typer.Option(None, "--include", help="Only files in folders matching this glob (repeatable)."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Skip files and folders matching this glob (repeatable)."),
    errors: ErrorsChoice = errors_option(),
    sp_model_type: ModelTypeChoice = typer.Option(ModelTypeChoice.unigram, "--sp-model-type", help="SentencePiece model."),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty output folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary table."),
) -> None:
    """Encode documents into train.bin / val.bin with meta.json and the codec's files."""
    from om.data import RichProgress, prepare_dataset
    from om.data.heap import limit_heap_growth

    started = time.perf_counter()
    limit_heap_growth()  # this process only prepares: keep its memory flat whatever the input size
    options = dict(
        codec=codec.value,
        vocab_size=vocab_size,
        val_fraction=val_fraction,
        include=include or (),
        exclude=exclude or (),
        force=force,
        errors=errors.value,
        command_line=shlex.join(["om", *sys.argv[1:]]),
        sp_model_type=sp_model_type.value,
    )
    if quiet:
        meta = prepare_dataset(inputs, output, **options)
    else:
        with RichProgress(stderr) as bar:
            meta = prepare_dataset(inputs, output, progress=bar, **options)
        table, note = _summary(meta, time.perf_counter() - started)
        stderr.print(table)
        stderr.print(note, highlight=False)
    print(printable(str(output)))  # stdout may not accept a non-UTF-8 folder name as is
