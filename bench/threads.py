"""Torch CPU threads for `om eval` / `om cache` (windows of many tokens) and `om sample` (batch-1
decoding, one token per forward call): bytes/s at 1 thread vs 2 (or --threads 1,2,4,...).

Run from the repository root:  python -m bench.threads  [--threads 1,2] [--repeats 3] [--no-write]

- Models (random init, bytes codec): "quickstart" (the model of recipes/quickstart.yaml) and
  "reference" (dim 256, 4 layers, the model of bench/eval_sample_speed.py).
- Eval: `om.evaluate.evaluate` over --eval-bytes of Python stdlib source, one input (what `om
  eval FILE` and `om cache FILE` do: windows of up to 8192 tokens, batch 1).
- Sampling: `om.sampling.generate`, --sample-bytes bytes from an empty prompt (temperature 1,
  seed 0, the separator disallowed so the length is fixed), as `om sample` does.
- Each figure is the median of --repeats runs; the thread counts alternate run by run, so a change
  in the machine's load hits every count alike. One untimed warm-up run per model first.

The defaults of `--threads` in omcli/common.py (DEFAULT_THREADS) follow these figures. Other
processes on the machine distort them (a thread that waits for a busy core stalls the others at
every synchronisation): take them on an otherwise idle machine before changing a default.

Prints a markdown table and writes it to BENCHMARKS.md (section "threads").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

from bench.report import machine, markdown_table, write_section

MODELS = {
    "quickstart": dict(dim=128, n_layers=2, n_heads=4, dims_key=[32, 16], dims_value=[32, 16], mlp_ratio=4.0,
                       segment_len=64, state_len=8, stem_kernels=[2, 3, 4], positional="rope"),
    "reference": dict(dim=256, n_layers=4, segment_len=128, state_len=16),
}


def stdlib_text(size: int) -> bytes:
    """`size` bytes of the Python standard library's sources, in path order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out, have = [], 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        out.append(data)
        have += len(data)
        if have >= size:
            break
    return b"".join(out)[:size]


def build(overrides: dict):
    from om import OmConfig, OmLLM
    from om.data import BytesCodec

    torch.manual_seed(0)
    codec = BytesCodec()
    return OmLLM(OmConfig(vocab_size=codec.vocab_size, **overrides)).eval(), codec


def eval_speed(model, codec, data: bytes) -> float:
    from om.evaluate import evaluate

    result = evaluate(model, codec, [data])
    return result.total.bytes / result.seconds


def sample_speed(model, codec, n: int) -> float:
    from om.sampling import generate

    t0 = time.perf_counter()
    made = sum(len(p) for p in generate(model, codec, b"", max_bytes=n, temperature=1.0, seed=0, end_at_separator=False))
    return made / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to compare (comma-separated)")
    parser.add_argument("--models", default="quickstart,reference", help=f"which of {', '.join(MODELS)}")
    parser.add_argument("--eval-bytes", type=int, default=64 << 10, help="bytes scored per eval run")
    parser.add_argument("--sample-bytes", type=int, default=200, help="bytes generated per sampling run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    counts = [int(t) for t in args.threads.split(",") if t]
    data = stdlib_text(args.eval_bytes)
    load_before = os.getloadavg()[0]
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        model, codec = build(MODELS[name])
        torch.set_num_threads(counts[0])
        eval_speed(model, codec, data[: 16 << 10])  # warm-up
        sample_speed(model, codec, 20)
        jobs = (("eval", eval_speed, data), ("sample", sample_speed, args.sample_bytes))
        for work, measure, amount in jobs:
            speeds: dict[int, list[float]] = {t: [] for t in counts}
            for _ in range(max(1, args.repeats)):
                for t in counts:
                    torch.set_num_threads(t)
                    speeds[t].append(measure(model, codec, amount))
            base = statistics.median(speeds[counts[0]])
            for t in counts:
                median = statistics.median(speeds[t])
                rows.append([name, work, t, f"{median:,.0f}", f"{median / base:.2f}"])
                print(f"{name} {work} {t} thread(s): {median:,.0f} bytes/s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]
    table = markdown_table(["model", "work", "threads", "bytes/s (median)", f"vs {counts[0]} thread(s)"], rows)
    body = "\n".join([
        "## Torch threads for eval and sampling (`python -m bench.threads`)",
        "",
        f"Machine: {machine()}. Load average before / after: {load_before:.1f} / {load_after:.1f} "
        "(other processes distort thread scaling: take these figures on an idle machine).",
        f"Models: {', '.join(f'{n} = {MODELS[n]}' for n in args.models.split(',') if n)} (random init, bytes codec). "
        f"eval: {len(data):,} bytes of stdlib source, one input (as `om eval FILE` / `om cache FILE`); "
        f"sample: {args.sample_bytes:,} bytes from an empty prompt (batch-1 decoding, as `om sample`). "
        f"Median of {args.repeats} runs, thread counts alternating.",
        "",
        table,
        "",
        "The defaults of `--threads` (`DEFAULT_THREADS` in omcli/common.py) follow these figures.",
    ])
    print(body)
    if not args.no_write:
        write_section("threads", body)


if __name__ == "__main__":
    main()
