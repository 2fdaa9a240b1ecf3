"""Rerun every benchmark and rewrite BENCHMARKS.md.

    python -m bench.run_all [--only quality,speed,...] [--skip ...] [--dry-run]

Each script owns one section of BENCHMARKS.md and rewrites only that section, so a partial rerun
(`--only`) leaves the other figures as they were. The whole set takes about three hours on a
2-core machine, most of it the 10-minute training runs of the quality table. Timing figures need
a quiet machine: on a shared Linux box, `chrt -f 1 python -m bench.run_all` keeps other work off
the cores while it runs (it needs CAP_SYS_NICE).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.report import machine, write_section

# name -> the command that reproduces that section (the same line BENCHMARKS.md quotes)
BENCHES: dict[str, list[str]] = {
    "prepare": ["bench.prepare_throughput"],
    "eval-sample": ["bench.eval_sample_speed"],
    "model-throughput": ["bench.model_throughput"],
    "speed": ["bench.speed", "--steps", "3"],
    "profile": ["bench.profile_step"],
    "ddp": ["bench.ddp_speedup"],
    "recipe-search": ["bench.recipe_search", "--minutes", "2.5", "--threads", "1"],
    "quality": ["bench.quality", "--minutes", "10"],
    "recall": ["bench.recall_probe", "run", "--minutes", "4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--skip", default="", help="comma-separated benches to leave out")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args()
    only, skip = set(filter(None, args.only.split(","))), set(filter(None, args.skip.split(",")))
    unknown = (only | skip) - set(BENCHES)
    if unknown:
        sys.exit(f"bench.run_all: unknown bench {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}")
    chosen = [name for name in BENCHES if (not only or name in only) and name not in skip]
    failed = []
    for name in chosen:
        argv = [sys.executable, "-m", *BENCHES[name]]
        print(f"== {name}: python -m {' '.join(BENCHES[name])}", file=sys.stderr, flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        if subprocess.run(argv).returncode != 0:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if args.dry_run:
        return
    commands = "\n".join(f"- {name}: `python -m {' '.join(BENCHES[name])}`" for name in BENCHES)
    write_section("run-all", (
        "## How to rerun everything\n\n"
        "`python -m bench.run_all` runs each script below in turn; each rewrites its own section. "
        f"Last full or partial run: {machine()}; ran {', '.join(chosen)}"
        + (f" (failed: {', '.join(failed)})" if failed else "") + ".\n\n" + commands))
    if failed:
        sys.exit(f"bench.run_all: {', '.join(failed)} failed")


if __name__ == "__main__":
    main()
