"""`om prepare` on the command line: output, one-line errors with exit code 2, stdin, interruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from om.data import open_dataset, prepare_dataset
from omcli.app import app

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, input=None):
    return CliRunner().invoke(app, ["prepare", *map(str, args)], input=input)


def test_cli_prepares_and_prints_the_folder(tmp_path, monkeypatch):
    # CliRunner does not set sys.argv; the command line recorded in meta.json comes from it.
    monkeypatch.setattr(sys, "argv", ["/venv/bin/om", "prepare", "corpus", "-o", "ds"])
    for i in range(12):
        (tmp_path / "corpus").mkdir(exist_ok=True)
        (tmp_path / "corpus" / f"{i}.txt").write_text(f"text number {i}\n" * (i + 1))
    out = tmp_path / "ds"
    result = _run(tmp_path / "corpus", "-o", out, "--codec", "chars", "--vocab-size", "40", "--val-fraction", "0.2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "train" in result.stderr and "val" in result.stderr and "bytes/token" in result.stderr
    ds = open_dataset(out)
    assert ds.codec.name == "chars" and ds.codec.vocab_size <= 40
    assert ds.meta["command_line"] == "om prepare corpus -o ds" and ds.meta["split"]["val_fraction"] == 0.2


def test_cli_reads_stdin(tmp_path):
    result = _run("-", "-o", tmp_path / "ds", "--quiet", input=b"piped text\n" * 50)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    ds = open_dataset(tmp_path / "ds")
    assert ds.meta["sources"][0]["path"] == "-" and ds.meta["input_bytes"] == 550
    assert ds.codec.decode(ds.split("train")) + ds.codec.decode(ds.split("val")) == b"piped text\n" * 50


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing", "-o", "{tmp}/ds"], "{tmp}/missing: no such file or folder"),
        (["{tmp}/empty", "-o", "{tmp}/ds"], "no input bytes: every input is empty ({tmp}/empty)"),
        (["{tmp}/folder", "-o", "{tmp}/ds"], "{tmp}/folder: no file in this folder"),
        (["{tmp}/bad.txt", "-o", "{tmp}/ds", "--codec", "chars"], "{tmp}/bad.txt: invalid UTF-8 at byte offset 3"),
        (["{tmp}/bad.txt", "-o", "{tmp}/ds", "--val-fraction", "1.5"], "--val-fraction 1.5 is not in [0, 1)"),
        (["{tmp}/bad.txt", "-o", "{tmp}/ds", "--codec", "chars", "--vocab-size", "3"], "--vocab-size 3 is too small"),
        # Library errors about an argument name the flag that set it.
        (["{tmp}/bad.txt", "-o", "{tmp}/ds", "--vocab-size", "100"], "error: --vocab-size 100 is too small for the bytes codec"),
        (["{tmp}/bad.txt", "-o", "{tmp}/ds", "--codec", "chars"], "(--errors replace substitutes U+FFFD)"),
        (["{tmp}", "-o", "{tmp}/ds", "--include", "*.md", "--exclude", "x"],
         "{tmp}: no file in this folder matches --include *.md --exclude x"),
        (["{tmp}/bad.txt", "-o", "{tmp}/ds", "--codec", "sentencepiece", "--vocab-size", "200"],
         "error: --vocab-size 200 is too small"),
        (["{tmp}/bad.txt", "-o", "{tmp}/taken"], "{tmp}/taken: folder exists and is not empty"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    (tmp_path / "bad.txt").write_bytes(b"abc\xffdef")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_bytes(b"x")
    result = _run(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("om prepare: error: ")
    assert message.format(tmp=tmp_path) in lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert not (tmp_path / "ds").exists()


def test_cli_usage_errors_exit_2(tmp_path):
    assert _run(tmp_path, "-o", tmp_path / "ds", "--codec", "words").exit_code == 2
    assert _run(tmp_path, "-o", tmp_path / "ds", "--val-fraction", "x").exit_code == 2
    assert _run(tmp_path).exit_code == 2  # no -o


def _feed(proc, data):
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except (BrokenPipeError, ValueError):  # the run was killed before reading it all
        pass


def test_interrupted_run_leaves_no_dataset(tmp_path):
    """`kill` (SIGTERM) mid-run: no DIR, no temporary folder. SIGKILL: the next run cleans up."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    data = b"0123456789abcdef" * 560_000  # 9 MB: more than one 8 MiB chunk gets encoded
    runs = {}
    for how in ("SIGTERM", "SIGKILL"):
        parent = tmp_path / how
        parent.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-m", "omcli.app", "prepare", "-", "-o", str(parent / "ds"), "--quiet"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
        )
        # Feed the data but keep stdin open: the run waits for more, mid-way through.
        threading.Thread(target=_feed, args=(proc, data), daemon=True).start()
        runs[how] = (proc, parent)
    deadline = time.monotonic() + 60
    for how, (proc, parent) in runs.items():
        while True:
            written = [p for p in parent.glob(".ds.om-prepare-*.tmp/train.bin") if p.stat().st_size > 0]
            if written or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert written, f"{how}: the run never started writing ({proc.poll()})"
        proc.send_signal(getattr(signal, how))
    for how, (proc, parent) in runs.items():
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode()
        proc.stdin.close()
        assert "Traceback" not in stderr
        assert not (parent / "ds").exists()
        leftovers = [p.name for p in parent.iterdir()]
        if how == "SIGKILL":
            assert proc.returncode == -signal.SIGKILL and len(leftovers) == 1
            (tmp_path / "a.txt").write_bytes(b"next run")
            prepare_dataset([tmp_path / "a.txt"], parent / "ds")
            assert [p.name for p in parent.iterdir()] == ["ds"]  # the stale folder is gone
        else:
            assert proc.returncode == 128 + signal.SIGTERM and leftovers == [], leftovers
