"""Start-up time of the `om` command: help, usage errors, and `import torch` for comparison.

Run from the repository root:  python -m bench.startup  [--runs 11] [--no-write]

Each case is a fresh `python -m omcli.app ...` subprocess (what the `om` console script runs),
timed from spawn to exit; the figure is the median of --runs runs (after one untimed warm-up run
of each, so the files are in the page cache). `python -c "import torch"` shows what `om` would
pay if it imported torch at start-up; the commands that do work (eval, sample, train, ...) still
import it, once they have parsed their arguments.

Timings on a busy machine are inflated: the load average is printed with the figures, and the
figures that go into BENCHMARKS.md should be taken on an otherwise idle machine.

Prints a markdown table and writes it to BENCHMARKS.md (section "startup").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from bench.report import ROOT, machine, markdown_table, write_section

OM = [sys.executable, "-m", "omcli.app"]
CASES = [
    ("om --help", OM + ["--help"], 0),
    ("om train --help", OM + ["train", "--help"], 0),
    ("om eval --help", OM + ["eval", "--help"], 0),
    ("om sample --max-bytes abc (usage error)", OM + ["sample", "ckpt", "--max-bytes", "abc"], 2),
    ("om --version", OM + ["--version"], 0),
    ('python -c "import torch"', [sys.executable, "-c", "import torch"], 0),
]
TARGET_S = 0.5  # the goal for help and usage errors


def wall_time(cmd: list[str], expected_code: int) -> float:
    """Seconds from spawn to exit of one run of `cmd` (which must exit with `expected_code`)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    seconds = time.perf_counter() - t0
    if done.returncode != expected_code:
        raise SystemExit(f"{' '.join(cmd)}: exit code {done.returncode}, expected {expected_code}: {done.stderr.decode()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="timed runs per case (the median is reported)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    rows = []
    for name, cmd, code in CASES:
        wall_time(cmd, code)  # warm-up: page cache, .pyc files
        times = [wall_time(cmd, code) for _ in range(max(1, args.runs))]
        median = statistics.median(times)
        target = "" if "torch" in name or "version" in name else ("yes" if median < TARGET_S else "no")
        rows.append([f"`{name}`", f"{median:.3f}", f"{min(times):.3f}", f"{max(times):.3f}", target])
        print(f"{name}: median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f})", file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]
    table = markdown_table(["command", "median s", "min s", "max s", f"< {TARGET_S} s"], rows)
    body = "\n".join([
        "## Start-up time (`python -m bench.startup`)",
        "",
        f"Machine: {machine()}. Load average before / after: {load_before:.1f} / {load_after:.1f} "
        "(figures taken under load are inflated).",
        f"Each command is a fresh `python -m omcli.app ...` process, spawn to exit; median of {args.runs} runs after one "
        "warm-up run. `om` imports torch only in the commands that run a model, after parsing their arguments, "
        "so help and usage errors do not pay for it.",
        "",
        table,
    ])
    print(body)
    if not args.no_write:
        write_section("startup", body)


if __name__ == "__main__":
    main()
