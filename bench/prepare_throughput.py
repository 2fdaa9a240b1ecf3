"""Throughput (MB/s) and peak memory of `om prepare` per codec, on >= 50 MB of Python stdlib sources.

Run from the repository root: `python -m bench.prepare_throughput`. The corpus is the standard
library's valid-UTF-8 `*.py` files, mirrored into `.bench-cache/prepare/corpus/copyN/` as many
times as needed to pass 50 MB (so later copies duplicate earlier ones; the figures are about speed,
not about the data). Each codec runs `om prepare` as a subprocess; its own summary line gives the
time from the start of the command (interpreter and torch import excluded), `os.wait4` the peak
RSS. A last run streams a larger input through stdin to show that memory does not grow with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

from bench.report import ROOT, machine, markdown_table, write_section

CACHE = ROOT / ".bench-cache" / "prepare"
MIN_BYTES = 50 * 10**6
COMMAND = [sys.executable, "-m", "omcli.app"]


def build_corpus(min_bytes: int = MIN_BYTES) -> tuple[Path, dict]:
    """Mirror the stdlib's UTF-8 *.py files until the corpus holds `min_bytes`; reuse if built."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus, manifest_path = CACHE / "corpus", CACHE / "corpus.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("stdlib") == str(stdlib) and manifest.get("min_bytes") == min_bytes and corpus.is_dir():
            return corpus, manifest
    shutil.rmtree(corpus, ignore_errors=True)
    files, skipped = [], 0
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or any(part.startswith(".") for part in path.relative_to(stdlib).parts):
            continue
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1  # a few test files are deliberately not UTF-8
            continue
        files.append((path.relative_to(stdlib), data))
    one_copy = sum(len(d) for _, d in files)
    copies = -(-min_bytes // one_copy)
    for k in range(1, copies + 1):
        for rel, data in files:
            target = corpus / f"copy{k}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    manifest = {
        "stdlib": str(stdlib),
        "min_bytes": min_bytes,
        "files_per_copy": len(files),
        "skipped_not_utf8": skipped,
        "bytes_per_copy": one_copy,
        "copies": copies,
        "files": copies * len(files),
        "bytes": copies * one_copy,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return corpus, manifest


def run_prepare(args: list[str], stdin_source: Path | None = None, stdin_repeat: int = 0) -> dict:
    """Run `om prepare ARGS` and return its in-run seconds, wall seconds and peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*COMMAND, "prepare", *args],
        stdin=subprocess.PIPE if stdin_source else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    if stdin_source:
        data = stdin_source.read_bytes()
        try:  # as `om prepare` does on its side: a 1 MiB pipe
            import fcntl

            fcntl.fcntl(proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass

        def feed():
            with proc.stdin:
                for _ in range(stdin_repeat):
                    proc.stdin.write(data)

        threading.Thread(target=feed, daemon=True).start()
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stderr.read()), daemon=True)
    reader.start()
    proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = out[0].decode(errors="replace") if out else ""
    if proc.returncode != 0:
        raise SystemExit(f"om prepare {' '.join(args)} failed ({proc.returncode}):\n{stderr}")
    found = re.search(r"bytes in ([\d.]+) s", stderr)
    return {"seconds": float(found.group(1)) if found else wall, "wall": wall, "rss_mb": usage.ru_maxrss / 1024}


def startup_rss() -> float:
    """Peak RSS of the CLI doing nothing but `--version` (interpreter, torch, the app)."""
    proc = subprocess.Popen([*COMMAND, "--version"], stdout=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per codec; the fastest counts")
    parser.add_argument("--stream-copies", type=int, default=6, help="corpus copies piped through stdin")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    corpus, manifest = build_corpus()
    mb = manifest["bytes"] / 1e6
    print(f"corpus: {corpus} ({manifest['files']} files, {mb:.1f} MB)", file=sys.stderr)
    baseline = startup_rss()
    rows = []
    for codec in ("bytes", "chars", "sentencepiece"):
        out = CACHE / f"out-{codec}"
        repeat = 1 if codec == "sentencepiece" else max(1, args.repeat)
        runs = []
        for _ in range(repeat):
            shutil.rmtree(out, ignore_errors=True)  # outside the timing (no --force replacement)
            runs.append(run_prepare([str(corpus), "-o", str(out), "--codec", codec]))
        best = min(runs, key=lambda r: r["seconds"])
        meta = json.loads((out / "meta.json").read_text())
        tokens = sum(s["tokens"] for s in meta["splits"].values())
        rows.append([
            codec, f"{mb:.1f}", f"{best['seconds']:.2f}", f"{mb / best['seconds']:.1f}", f"{best['wall']:.2f}",
            f"{max(r['rss_mb'] for r in runs):.0f}", f"{tokens:,}", f"{manifest['bytes'] / tokens:.2f}",
        ])
        print(" | ".join(rows[-1]), file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)

    # The same corpus concatenated several times on stdin: memory must not follow the input size.
    stream = CACHE / "stream.txt"
    if not stream.exists() or stream.stat().st_size != manifest["bytes_per_copy"]:
        with open(stream, "wb") as f:
            for path in sorted((corpus / "copy1").rglob("*.py")):
                f.write(path.read_bytes())
    stream_mb = args.stream_copies * stream.stat().st_size / 1e6
    for codec in ("bytes", "chars"):
        out = CACHE / f"out-stream-{codec}"
        shutil.rmtree(out, ignore_errors=True)
        run = run_prepare(["-", "-o", str(out), "--codec", codec], stream, args.stream_copies)
        meta = json.loads((out / "meta.json").read_text())
        tokens = sum(s["tokens"] for s in meta["splits"].values())
        rows.append([
            f"{codec}, stdin", f"{stream_mb:.1f}", f"{run['seconds']:.2f}", f"{stream_mb / run['seconds']:.1f}",
            f"{run['wall']:.2f}", f"{run['rss_mb']:.0f}", f"{tokens:,}", f"{meta['input_bytes'] / tokens:.2f}",
        ])
        print(" | ".join(rows[-1]), file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)

    table = markdown_table(
        ["codec", "input MB", "prepare s", "MB/s", "wall s (with startup)", "peak RSS MB", "tokens", "bytes/token"], rows
    )
    body = (
        "## om prepare throughput\n\n"
        f"Machine: {machine()}. Load average before / after the runs: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
        "(other work on a shared machine slows these figures down).\n\n"
        f"Corpus: {manifest['files']} files, {manifest['bytes'] / 1e6:.1f} MB: the {manifest['files_per_copy']} "
        f"valid UTF-8 `*.py` files of the Python standard library ({manifest['bytes_per_copy'] / 1e6:.1f} MB; "
        f"{manifest['skipped_not_utf8']} non-UTF-8 files left out) mirrored {manifest['copies']} times. "
        f"The `stdin` rows pipe {args.stream_copies} concatenated copies through stdin (chars spools it to disk "
        "first, since it reads its input twice). "
        "`prepare s` is the command's own time (start of the command to the end, the interpreter and torch "
        f"import excluded); `wall s` includes them. Peak RSS of the CLI doing nothing (`om --version`): "
        f"{baseline:.0f} MB, mostly torch (imported by `om`); the command fixes glibc's mmap threshold "
        "(`om.data.heap.limit_heap_growth`) so that heap fragmentation does not grow with the input. "
        "Defaults: val fraction 0.1, chars vocab 4096, SentencePiece unigram "
        "1024 trained on a 1 MB sample. Best of "
        f"{max(1, args.repeat)} runs for bytes and chars, 1 for sentencepiece.\n\n"
        f"{table}\n\n"
        "Targets (issue 3): bytes >= 100 MB/s, chars >= 10 MB/s, peak RSS < 500 MB for any input size.\n\n"
        "Reproduce: `python -m bench.prepare_throughput`\n"
    )
    print(body)
    if not args.no_write:
        write_section("prepare", body)


if __name__ == "__main__":
    main()
