"""Training throughput of `om train` in 1 process vs 2 processes (torchrun, DDP over gloo) on CPU.

    python -m bench.ddp_speedup [--steps 60] [--repeats 2] [--no-write]

Both runs train the quickstart model (dim 128, 2 layers, L 64) on the Python standard library's
`json` and `email` packages for the same number of steps at the same global batch (micro batch 8
x grad_accum 2 = 16 samples of 128 bytes): one process with 2 torch threads, and
`torchrun --standalone --nproc_per_node=2 -m omcli train` with 1 thread per process (each rank
computes one of the two micro batches). Throughput is training bytes per second of wall-clock
spent in training steps (evaluation, saving and start-up excluded), over the steps after the first
logging window of 10 steps (warm-up): over all of them, and in the fastest window (on a machine
shared with other work, the fastest window is the best estimate of the undisturbed speed). The
runs alternate (1, 2, 1, 2, ...) and the median of each figure is kept; the final training loss
of the two must agree (same updates, up to float summation order).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import ROOT, machine, markdown_table, write_section

RECIPE = ROOT / "recipes" / "quickstart.yaml"
LOG_EVERY = 10


def overrides(steps: int, threads: int) -> list[str]:
    sets = [
        'data.sources=["{stdlib}/json", "{stdlib}/email"]',
        "train.max_minutes=null",
        f"train.max_steps={steps}",
        "train.micro_batch_size=8",
        "train.grad_accum=2",
        "train.warmup_steps=10",
        f"train.log_every={LOG_EVERY}",
        "train.eval_every=0",
        "train.eval_bytes=4096",
        "train.checkpoint_every=0",
        "train.keep_last=1",
        f"train.threads={threads}",
        "out.sample_bytes=0",
    ]
    return [arg for s in sets for arg in ("--set", s)]


def run(processes: int, steps: int, out: Path) -> dict:
    """One `om train` run; returns its steady-state bytes/s and final loss."""
    threads = 2 if processes == 1 else 1
    if processes == 1:
        launcher = [sys.executable, "-m", "omcli"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "omcli"]
    cmd = launcher + ["train", str(RECIPE), "--out", str(out), "--resume", "never", "--no-progress"] + overrides(steps, threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    steady = train[1:]  # the first window holds the warm-up steps
    nbytes = sum(r["bytes"] - prev["bytes"] for prev, r in zip(train, steady))
    seconds = sum((r["bytes"] - prev["bytes"]) / r["bytes_per_s"] for prev, r in zip(train, steady))
    best = max(r["bytes_per_s"] for r in steady)
    return {"bytes_per_s": nbytes / seconds, "best": best, "loss": train[-1]["loss"], "bytes": train[-1]["bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    os.environ.setdefault("OM_CACHE_DIR", str(ROOT / ".bench-cache" / "om"))

    load_before = os.getloadavg()[0]
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="om-ddp-bench-") as tmp:
        for i in range(args.repeats):
            for processes in (1, 2):
                result = run(processes, args.steps, Path(tmp) / f"p{processes}-{i}")
                results[processes].append(result)
                print(
                    f"{processes} process(es), run {i + 1}: {result['bytes_per_s']:,.0f} bytes/s "
                    f"(best window {result['best']:,.0f}), final loss {result['loss']:.6f}",
                    flush=True,
                )
    load_after = os.getloadavg()[0]

    speed = {p: statistics.median(r["bytes_per_s"] for r in rs) for p, rs in results.items()}
    best = {p: statistics.median(r["best"] for r in rs) for p, rs in results.items()}
    loss_gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(results[1], results[2]))
    ratio, best_ratio = speed[2] / speed[1], best[2] / best[1]
    rows = [
        ["1 process, 2 threads", f"{speed[1]:,.0f}", f"{best[1]:,.0f}", "1.00 / 1.00", f"{results[1][0]['loss']:.4f}"],
        [
            "2 processes (torchrun, gloo), 1 thread each",
            f"{speed[2]:,.0f}",
            f"{best[2]:,.0f}",
            f"{ratio:.2f} / {best_ratio:.2f}",
            f"{results[2][0]['loss']:.4f}",
        ],
    ]
    headers = ["run", "train bytes/s (all steps)", "train bytes/s (fastest window)", "speedup (all / fastest)", "final train loss"]
    table = markdown_table(headers, rows)
    print(table)
    print(f"2-process speedup: {ratio:.2f}x over all steps, {best_ratio:.2f}x in the fastest windows; final loss gap {loss_gap:.2e}")
    if not args.no_write:
        body = (
            "## Training on 2 processes (DDP) vs 1\n\n"
            f"Machine: {machine()}. Load average before / after the runs: {load_before:.1f} / {load_after:.1f} "
            "(other work on a shared machine slows these figures down).\n\n"
            f"Command: `python -m bench.ddp_speedup --steps {args.steps} --repeats {args.repeats}`\n\n"
            f"Model: `recipes/quickstart.yaml`'s; data: the stdlib `json` and `email` packages; {args.steps} steps at a global "
            "batch of 16 x 128 bytes (micro batch 8 x grad_accum 2; with 2 processes each computes one micro batch). "
            f"Median of {args.repeats} alternating runs of each; bytes/s over the steps after the first {LOG_EVERY} "
            f"(start-up, warm-up and the final evaluation excluded). Largest final-loss gap between the paired runs: {loss_gap:.1e}.\n\n"
            + table
        )
        write_section("ddp-speedup", body)


if __name__ == "__main__":
    main()
