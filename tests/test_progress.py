"""Progress of `om eval` / `om cache` on stderr: the library callback, the display, and the commands."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console

from om.evaluate import evaluate, read_context
from omcli.common import ByteProgress
from tests.test_eval_support import one_thread, save_tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = bytes(np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("progress") / "ckpt", seed=2)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain(enabled=None, **kwargs):
    """A ByteProgress printing plain lines into a string (not a terminal), with a clock we move."""
    clock, out = Clock(), io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    return ByteProgress("eval", enabled, console=console, after_s=3.0, every_s=10.0, clock=clock, **kwargs), clock, out


def test_plain_lines_only_for_a_long_run():
    progress, clock, out = plain()
    with progress:
        for t, done in [(0.5, 100_000), (4.0, 400_000), (5.0, 500_000), (14.0, 1_400_000), (20.0, 2_000_000)]:
            clock.now = 100.0 + t
            progress(done, 2_000_000)
    lines = out.getvalue().splitlines()
    assert lines == [
        "om eval: 400.0 KB of 2.0 MB (20%), 100.0 KB/s, 16s left",
        "om eval: 1.4 MB of 2.0 MB (70%), 100.0 KB/s, 6s left",
        "om eval: 2.0 MB read in 20s (100.0 KB/s)",
    ]
    short, clock, out = plain()
    with short:
        clock.now += 2.0
        short(10_000_000, None)  # fast and done before the threshold: nothing at all
    assert out.getvalue() == ""


def test_forced_unknown_total_and_off():
    forced, clock, out = plain(enabled=True)
    with forced:
        forced(1_500_000, None)
        clock.now += 1.0
        forced(3_000_000, None)
    assert out.getvalue().splitlines() == ["om eval: 1.5 MB", "om eval: 3.0 MB read in 1s (3.0 MB/s)"]
    off, clock, out = plain(enabled=False)
    with off:
        clock.now += 100.0
        off(1, 2)
    assert out.getvalue() == ""


def test_terminal_bar():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with ByteProgress("cache", True, console=console) as progress:
        progress(500_000, 1_000_000)
        progress(1_000_000, 1_000_000)
    assert progress.lines == 0 and "om cache" in out.getvalue()


def test_library_callbacks_reach_the_total(ckpt, tmp_path):
    _, model, codec = ckpt
    calls = []
    f = tmp_path / "in.bin"
    f.write_bytes(DATA)
    evaluate(model, codec, [str(f), DATA[:1000]], window=64, batch_size=1, progress=lambda d, t: calls.append((d, t)))
    assert len(calls) > 10 and calls[-1] == (len(DATA) + 1000, len(DATA) + 1000)
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    calls.clear()
    evaluate(model, codec, [io.BytesIO(DATA)], window=64, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (len(DATA), None)  # a stream's size is unknown
    calls.clear()
    context = read_context(model, codec, [DATA, DATA[:500]], window=64, progress=lambda d, t: calls.append((d, t)))
    assert len(calls) > 10 and calls[-1] == (len(DATA) + 500, len(DATA) + 500)
    assert context.offset == read_context(model, codec, [DATA, DATA[:500]], window=64).offset


def om(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "omcli.app", *map(str, args)], env=env, timeout=300, **kwargs)


def test_piped_stderr_gets_progress_lines_and_stdout_stays_clean(ckpt, tmp_path):
    path, _, _ = ckpt
    big = tmp_path / "big.txt"
    big.write_bytes(DATA * 5)  # 15 KB: some seconds for this tiny model (segments of 8 bytes)
    result = om("eval", path, big, "--json", "--progress", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bytes"] == len(DATA) * 5  # stdout: the JSON and nothing else
    lines = result.stderr.splitlines()
    assert len(lines) >= 2 and all(line.startswith("om eval: ") and " KB" in line for line in lines), lines
    assert lines[-1].startswith("om eval: 15.0 KB read in ")
    small = tmp_path / "small.txt"
    small.write_bytes(DATA[:500])
    quiet = om("eval", path, small, "--json", capture_output=True, text=True)  # well under 3 s: no progress by default
    assert quiet.returncode == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["bytes"] == 500
    with open(tmp_path / "c.st", "wb") as out:
        cached = om("cache", path, big, "-o", "-", "--progress", stdout=out, stderr=subprocess.PIPE, text=True)
    assert cached.returncode == 0, cached.stderr
    lines = cached.stderr.splitlines()
    assert lines[0].startswith("om cache: ") and " of 15.0 KB " in lines[0] and lines[-1].startswith("om cache: wrote <stdout>")
    from om.context_cache import read_header

    assert read_header(tmp_path / "c.st")["bytes"] == str(len(DATA) * 5)
