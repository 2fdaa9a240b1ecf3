"""Eval throughput and peak memory over 1 / 16 / 128 MiB inputs; sampling speed early vs late.

Run from the repository root:  python -m bench.eval_sample_speed  [--threads 1] [--budget-s 900]

- Inputs: the Python standard library's .py sources, concatenated in path order and repeated to
  exactly N MiB (cached under .bench-cache/eval-sample/).
- Models (random init, bytes codec, saved as checkpoints under .bench-cache/eval-sample/):
  "reference" (dim 256, 4 layers, segment_len 128, state_len 16, the default heads/passes/stem)
  and "tiny" (dim 16, 1 layer, 1 head, segment_len 256, state_len 4, no stem, no positions), which
  is fast enough to stream 128 MiB on a shared 2-core CPU and so measures how peak RSS scales.
- Every eval is its own `om eval --json` subprocess, so peak RSS (ru_maxrss) is per run.
- Sampling: the reference model generates 16,000 bytes in one call (temperature 1, seed 0, the
  separator disallowed so the length is fixed); every byte is timestamped, and bytes/s over bytes
  0-1,000 is compared with bytes 15,000-16,000 (total time of each span, and 1 / the median time
  per byte, which other processes on a shared machine disturb less).
- A tiny-model run whose projected time would pass --budget-s is shrunk to the largest power-of-2
  MiB that fits, and the table says so.

Prints a markdown table and writes it to BENCHMARKS.md (section "eval-sample").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

from bench.report import ROOT, machine, markdown_table, write_section

CACHE = ROOT / ".bench-cache" / "eval-sample"
MIB = 1 << 20
REFERENCE = dict(dim=256, n_layers=4, segment_len=128, state_len=16)
TINY = dict(
    dim=16, n_layers=1, n_heads=1, dims_key=[8], dims_value=[8], segment_len=256, state_len=4,
    stem_kernels=[], mlp_ratio=1.0, positional="none",
)


def corpus(mib: int) -> Path:
    """A file of exactly `mib` MiB of stdlib Python source (built once, then cached)."""
    path = CACHE / f"stdlib-{mib}mib.txt"
    if path.is_file() and path.stat().st_size == mib * MIB:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    blob = b"".join(p.read_bytes() for p in files if p.is_file())
    need, tmp = mib * MIB, path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        while need > 0:
            part = blob[:need]
            f.write(part)
            need -= len(part)
    os.replace(tmp, path)
    return path


def checkpoint(name: str, overrides: dict) -> Path:
    from om import OmConfig, OmLLM
    from om.checkpoint import save_checkpoint
    from om.data import BytesCodec

    path = CACHE / f"ckpt-{name}"
    if (path / "trainer.json").is_file():
        return path
    torch.manual_seed(0)
    codec = BytesCodec()
    config = OmConfig(vocab_size=codec.vocab_size, **overrides)
    return save_checkpoint(path, OmLLM(config).eval(), config, codec, trainer={"step": 0, "note": "random init (benchmark)"})


def run_eval(ckpt: Path, data: Path, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "omcli.app", "eval", str(ckpt), str(data), "--json", "--device", "cpu"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    report = json.loads(out.stdout)
    report["wall_s"] = time.perf_counter() - t0
    return report


def sampling_speed(ckpt: Path, threads: int, total: int = 16_000, span: int = 1_000) -> dict:
    from om.checkpoint import load_checkpoint
    from om.sampling import generate

    torch.set_num_threads(threads)
    ck = load_checkpoint(ckpt)
    stamps = [time.perf_counter()]
    for piece in generate(ck.model, ck.codec, b"", max_bytes=total, temperature=1.0, seed=0, end_at_separator=False):
        now = time.perf_counter()
        stamps.extend([now] * len(piece))  # bytes codec: one byte per token
    assert len(stamps) == total + 1, len(stamps)
    gaps = [b - a for a, b in zip(stamps[:-1], stamps[1:])]  # gaps[i]: time to produce byte i
    early = span / sum(gaps[:span])
    late = span / sum(gaps[total - span :])
    # The median per-byte time is robust to other processes preempting this one on a shared machine.
    early_med = 1.0 / statistics.median(gaps[:span])
    late_med = 1.0 / statistics.median(gaps[total - span :])
    return {
        "early": early, "late": late, "ratio": late / early,
        "early_median": early_med, "late_median": late_med, "ratio_median": late_med / early_med,
        "seconds": stamps[-1] - stamps[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: the machine is shared)")
    parser.add_argument("--sizes", default="1,16,128", help="MiB sizes for the tiny-model RSS runs")
    parser.add_argument("--reference-sizes", default="1", help="MiB sizes for the reference-model eval runs")
    parser.add_argument("--budget-s", type=float, default=900.0, help="longest projected time for one tiny-model run")
    parser.add_argument("--sample-bytes", type=int, default=16_000, help="length of the timed generation")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    ref_ckpt, tiny_ckpt = checkpoint("reference", REFERENCE), checkpoint("tiny", TINY)
    rows, notes, by_model = [], [], {"reference": {}, "tiny": {}}
    plan = [("reference", ref_ckpt, int(s)) for s in args.reference_sizes.split(",") if s]
    plan += [("tiny", tiny_ckpt, int(s)) for s in args.sizes.split(",") if s]
    for name, ckpt, mib in plan:
        speed = max(by_model[name].values(), default=None, key=lambda r: r["bytes"])
        if speed is not None and mib * MIB / speed["bytes_per_second"] > args.budget_s:
            fit = max(1, int(args.budget_s * speed["bytes_per_second"] / MIB))
            fit = 1 << (fit.bit_length() - 1)
            projected = mib * MIB / speed["bytes_per_second"]
            notes.append(f"{name} {mib} MiB was projected at {projected:.0f} s (> {args.budget_s:.0f} s); ran {fit} MiB instead")
            mib = fit
            if mib in by_model[name]:
                continue
        print(f"eval {name} {mib} MiB ...", file=sys.stderr, flush=True)
        r = run_eval(ckpt, corpus(mib), args.threads)
        by_model[name][mib] = r
        rows.append([name, f"{mib} MiB", f"{r['bytes']:,}", f"{r['bytes_per_second']:,.0f}", f"{r['peak_rss_mb']:.1f}",
                     f"{r['wall_s']:.1f}", f"{r['bits_per_byte']:.3f}"])
    tiny = by_model["tiny"]
    ratio = None
    if tiny:
        small, large = min(tiny), max(tiny)
        ratio = tiny[large]["peak_rss_mb"] / tiny[small]["peak_rss_mb"]
        notes.append(f"peak RSS ratio {large} MiB / {small} MiB (tiny model): {ratio:.3f} (target <= 1.1)")

    print(f"sampling {args.sample_bytes:,} bytes ...", file=sys.stderr, flush=True)
    n = args.sample_bytes
    s = sampling_speed(ref_ckpt, args.threads, total=n)
    notes.append(
        f"sampling (reference model, one generation of {n:,} bytes in {s['seconds']:.1f} s): bytes 0-1,000 at "
        f"{s['early']:,.1f} bytes/s, bytes {n - 1000:,}-{n:,} at {s['late']:,.1f} bytes/s, ratio {s['ratio']:.3f} "
        f"(target >= 0.9); from the median time per byte: {s['early_median']:,.1f} vs {s['late_median']:,.1f} bytes/s, "
        f"ratio {s['ratio_median']:.3f}"
    )
    table = markdown_table(
        ["model", "input", "bytes", "eval bytes/s", "peak RSS MB", "wall s", "bits/byte"], rows
    )
    body = "\n".join([
        "## Eval and sampling speed (`python -m bench.eval_sample_speed`)",
        "",
        f"Machine: {machine()}; {args.threads} torch thread(s) per run.",
        f"Models (random init, bytes codec): reference = {REFERENCE}; tiny = {TINY}.",
        "Inputs: Python stdlib sources repeated to size; each eval is one `om eval --json` subprocess.",
        "",
        table,
        "",
        *[f"- {n}" for n in notes],
    ])
    print(body)
    if not args.no_write:
        write_section("eval-sample", body)


if __name__ == "__main__":
    main()
