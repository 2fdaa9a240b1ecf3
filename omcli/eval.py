"""`om eval CKPT [INPUT...]`: bits per byte over inputs of any length (see docs/eval-sample.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from omcli.common import ByteProgress, ErrorsChoice, errors_option, progress_option, set_threads, threads_option, user_errors

CKPT_HELP = "Checkpoint folder, or a run folder (its latest checkpoint)."
CACHE_HELP = "Start from the stream saved by `om cache` (made by the same checkpoint); - reads it from stdin."
DEVICE_HELP = "Torch device: auto (cuda if available), cpu, cuda, cuda:1, ..."


def read_context_cache(path: Optional[Path], ckpt, stdin_taken: bool = False):
    """The `--context-cache` of a command: None, a file, or `-` (the cache file's bytes on stdin)."""
    from om.context_cache import load_context, load_context_bytes
    from om.errors import OmUserError

    if path is None:
        return None
    if str(path) != "-":
        return load_context(path, ckpt.fingerprint, ckpt.codec)
    if stdin_taken:
        raise OmUserError("--context-cache - and INPUT -: stdin can be read only once")
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    if stdin is None or stdin.isatty():
        raise OmUserError("--context-cache -: stdin is a terminal; pipe a cache file in (`< FILE`)")
    return load_context_bytes(stdin.read(), "<stdin>", ckpt.fingerprint, ckpt.codec)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _print_table(report: dict) -> None:
    from rich.table import Table

    from omcli.common import StdoutConsole as Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped: do not fold long input names at 80 columns
        widest = max([len(str(r["name"])) for r in report["inputs"]] + [len(report["checkpoint"]["path"])])
        console = Console(highlight=False, width=100 + widest)
    head = report["headline"]
    console.print(
        f"[bold]{head} {_fmt(report[head])}[/bold]  "
        f"({report['checkpoint']['path']}, {report['codec']['name']} codec, vocab {report['codec']['vocab_size']})"
    )
    table = Table(show_footer=True)
    total = report
    columns = [
        ("input", "name", 0),
        ("bytes", "bytes", 0),
        ("tokens", "tokens", 0),
        ("docs", "documents", 0),
        ("bits/byte", "bits_per_byte", 4),
        ("byte ppl", "byte_perplexity", 2),
        ("bits/tok", "bits_per_token", 4),
        ("tok ppl", "token_perplexity", 2),
        ("words", "words", 0),
        ("word ppl", "word_perplexity", 2),
    ]

    def cell(row: dict, key: str, digits: int) -> str:
        if key == "name":
            return str(row.get(key, "total"))
        value = row.get(key)
        if key == "word_perplexity" and value is not None and value >= 1e6:
            return f"{value:.3g}"  # an untrained model's word perplexity would widen the table by 20 columns
        return _fmt(value, digits)

    def cells(row: dict) -> list[str]:
        return [cell(row, key, digits) for _, key, digits in columns]

    for (title, key, _), footer in zip(columns, cells(total)):
        table.add_column(title, footer=footer, justify="left" if key == "name" else "right", overflow="fold")
    for row in report["inputs"]:
        table.add_row(*cells(row))
    console.print(table)
    if "by_position" in report:
        seg = Table(title=f"by position (segments of {report['segment_len']} tokens)")
        for title in ("segments", "bytes", "tokens", "bits/byte", "bits/token"):
            seg.add_column(title, justify="right")
        for b in report["by_position"]:
            seg.add_row(b["segments"], _fmt(b["bytes"]), _fmt(b["tokens"]), _fmt(b["bits_per_byte"]), _fmt(b["bits_per_token"]))
        console.print(seg)
    console.print(
        f"nll {_fmt(report['nll_nats'], 2)} nats, {_fmt(report['seconds'], 2)} s, "
        f"{_fmt(report['bytes_per_second'], 0)} bytes/s, {report['threads']} thread(s), peak RSS {_fmt(report['peak_rss_mb'], 1)} MB"
    )


@user_errors("eval")
def eval_command(
    checkpoint: str = typer.Argument(..., metavar="CKPT", help=CKPT_HELP),
    inputs: Optional[List[str]] = typer.Argument(
        None,
        metavar="INPUT...",
        help="Files, folders or - (stdin), one stream each; default: the validation split of the checkpoint's dataset.",
    ),
    bytes_headline: bool = typer.Option(False, "--bytes", help="Make bits per byte the headline for every codec."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    batch_size: int = typer.Option(8, "--batch-size", help="Inputs evaluated side by side."),
    by_position: bool = typer.Option(False, "--by-position", help="Also report bits per byte by segment index."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="With --by-position: also draw bits/byte by position into this PNG."),
    context_cache: Optional[Path] = typer.Option(None, "--context-cache", help=CACHE_HELP),
    errors: ErrorsChoice = errors_option(),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    threads: Optional[int] = threads_option("eval"),
    progress: Optional[bool] = progress_option(),
    val_tokens: Optional[int] = typer.Option(
        None, "--val-tokens", min=1, help="Without INPUT: score only the first N ids of the validation split (as training logs it)."
    ),
    val_streams: int = typer.Option(
        1, "--val-streams", min=1, help="Without INPUT: cut the validation ids into this many contiguous streams."
    ),
) -> None:
    """Score inputs with a checkpoint: bits per byte, perplexities, speed and peak memory."""
    from om.checkpoint import load_checkpoint
    from om.device import resolve_device
    from om.errors import OmUserError
    from om.evaluate import check_batch_size, evaluate, validation_inputs

    check_batch_size(batch_size)
    errors = ErrorsChoice(errors).value
    used_threads = set_threads(threads, "eval")
    ckpt = load_checkpoint(checkpoint, device=resolve_device(device))
    context = read_context_cache(context_cache, ckpt, stdin_taken="-" in (inputs or ()))
    if plot is not None and not by_position:
        raise OmUserError("--plot draws the --by-position report; add --by-position")
    if inputs and (val_tokens is not None or val_streams != 1):
        raise OmUserError("--val-tokens and --val-streams choose a slice of the validation split; they take no INPUT")
    sources = list(inputs) if inputs else validation_inputs(ckpt, val_tokens, val_streams)
    with ByteProgress("eval", progress) as shown:
        result = evaluate(
            ckpt.model, ckpt.codec, sources, batch_size=batch_size, context=context, by_position=by_position, errors=errors,
            progress=shown,
        )
    report = result.to_dict()
    headline = "bits_per_byte" if bytes_headline or ckpt.codec.name == "bytes" else "bits_per_token"
    report = {
        "headline": headline,
        **report,
        "checkpoint": {"path": str(ckpt.path), "fingerprint": ckpt.fingerprint},
        "codec": {"name": ckpt.codec.name, "vocab_size": ckpt.codec.vocab_size},
        "context_cache": str(context_cache) if context_cache is not None else None,
        "segment_len": ckpt.config.segment_tokens,
        "batch_size": batch_size,
        "threads": used_threads,
    }
    if plot is not None:
        from om.plot import plot_by_position

        plot_by_position(report["by_position"], ckpt.config.segment_tokens, plot, title=f"{ckpt.path}: bits/byte by position")
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        sys.stdout.flush()
    else:
        _print_table(report)
