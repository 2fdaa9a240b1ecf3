"""`om sample CKPT`: stream a continuation as raw bytes to stdout (see docs/eval-sample.md)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from omcli.common import (
    ErrorsChoice,
    errors_option,
    rate_text,
    set_threads,
    silence_stdout,
    stderr,
    threads_option,
    threads_text,
    user_errors,
)
from omcli.eval import CACHE_HELP, CKPT_HELP, DEVICE_HELP, read_context_cache


def _read_prompt(prompt: Optional[str], prompt_file: Optional[Path], stdin_taken: bool = False) -> bytes:
    from om.errors import OmUserError

    if prompt is not None and prompt_file is not None:
        raise OmUserError("--prompt and --prompt-file: give one or the other")
    if prompt is not None:
        return os.fsencode(prompt)  # the argument's original bytes, even if not valid UTF-8
    if prompt_file is not None:
        if not prompt_file.is_file():
            what = "not a regular file" if prompt_file.exists() else "no such prompt file"
            raise OmUserError(f"{prompt_file}: {what}")
        return prompt_file.read_bytes()
    stdin = sys.stdin
    if stdin_taken or stdin is None or stdin.isatty():
        return b""  # nothing piped in (or stdin holds the --context-cache): an empty prompt rather than waiting on the terminal
    return stdin.buffer.read()


@user_errors("sample")
def sample_command(
    checkpoint: str = typer.Argument(..., metavar="CKPT", help=CKPT_HELP),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt text (default: --prompt-file, else stdin if piped, else empty)."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="Read the prompt from this file (raw bytes)."),
    max_bytes: int = typer.Option(256, "--max-bytes", help="Generate at most this many bytes."),
    temperature: float = typer.Option(1.0, "--temperature", help="0 = greedy; higher = more random (at most 100)."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling: the smallest set of tokens with probability >= p (1 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (same seed, same output); default: random."),
    stop: Optional[str] = typer.Option(None, "--stop", help="End when the output contains this text (it is not printed)."),
    context_cache: Optional[Path] = typer.Option(None, "--context-cache", help=CACHE_HELP),
    errors: ErrorsChoice = errors_option(),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    threads: Optional[int] = threads_option("sample"),
    num_samples: int = typer.Option(1, "--num-samples", "-n", help="Generate this many continuations side by side in one batch; "
                                    "sample i (from 1) uses seed + i - 1. Each is printed after a line '==> sample i of N (seed S) <==' "
                                    "and ends with a newline."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON list of {sample, seed, bytes, text} instead "
                                     "(text: the bytes as UTF-8, invalid sequences as U+FFFD)."),
) -> None:
    """Generate a continuation of the prompt; raw bytes on stdout, flushed as they are produced."""
    from om.checkpoint import load_checkpoint
    from om.device import resolve_device
    from om.sampling import SamplingOptions, generate, generate_many

    stop_bytes = os.fsencode(stop) if stop is not None else None
    SamplingOptions(max_bytes, temperature, top_k, top_p, seed, stop_bytes).validate()
    errors = ErrorsChoice(errors).value
    used_threads = set_threads(threads, "sample")
    cache_on_stdin = context_cache is not None and str(context_cache) == "-"
    prompt_bytes = _read_prompt(prompt, prompt_file, stdin_taken=cache_on_stdin)
    ckpt = load_checkpoint(checkpoint, device=resolve_device(device))
    context = read_context_cache(context_cache, ckpt)
    if num_samples != 1 or json_output:
        t0 = time.perf_counter()
        samples = generate_many(ckpt.model, ckpt.codec, prompt_bytes, num_samples, max_bytes, temperature, top_k, top_p,
                                seed, stop_bytes, context, errors)
        seconds = time.perf_counter() - t0
        _print_samples(samples, json_output)
        total = sum(len(s.data) for s in samples)
        stderr.print(
            f"om sample: {len(samples)} samples, {total:,} bytes in {seconds:.2f} s "
            f"({rate_text(total, seconds)}, {threads_text(used_threads)})",
            markup=False,
            highlight=False,
        )
        return
    pieces = generate(
        ckpt.model, ckpt.codec, prompt_bytes, max_bytes, temperature, top_k, top_p, seed, stop_bytes, context, errors
    )
    out = sys.stdout.buffer
    written, t0 = 0, time.perf_counter()
    try:
        for piece in pieces:
            out.write(piece)
            out.flush()
            written += len(piece)
    except BrokenPipeError:
        silence_stdout()
        return
    seconds = time.perf_counter() - t0
    stderr.print(
        f"om sample: {written:,} bytes in {seconds:.2f} s ({rate_text(written, seconds)}, {threads_text(used_threads)})",
        markup=False,
        highlight=False,
    )


def _print_samples(samples, json_output: bool) -> None:
    out = sys.stdout.buffer
    try:
        if json_output:
            import json

            rows = [{"sample": s.index + 1, "seed": s.seed, "bytes": len(s.data), "text": s.data.decode("utf-8", "replace")}
                    for s in samples]
            out.write((json.dumps(rows, ensure_ascii=False) + "\n").encode("utf-8"))
        else:
            for s in samples:
                out.write(f"==> sample {s.index + 1} of {len(samples)} (seed {s.seed}) <==\n".encode() + s.data + b"\n")
        out.flush()
    except BrokenPipeError:
        silence_stdout()
