"""A closed stdout pipe (`om sample ... | head -c 1`, `om eval ... --json | head -c 1`, and every
other command that writes to stdout): a quiet exit with code 0, no traceback, no "Exception
ignored" message, and the command's work (a checkpoint, a dataset, a cache file) still done.

The two cases the issue names run as real processes, since the interpreter's final flush of a
block-buffered stdout is part of what is tested; `sample` reads one byte first, exactly like
`head -c 1`. The reader of `eval --json` goes away before anything is written (the command is
still importing torch), so its write fails with EPIPE every time, whatever the output's size. The
other commands run in forked children (cheap) whose stdout pipe has no reader from the start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.fault_tools import fork_om, prepare_json_dataset, train_args
from tests.test_eval_support import save_tiny_checkpoint

NOISE = ("Traceback", "Exception ignored", "BrokenPipe", "Broken pipe", "Errno 32")
SMALL_TEXT = b"def f(x):\n    return x + 1\n" * 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path, _, _ = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt")
    return path


def _quiet(name: str, code: int, err: str) -> None:
    assert code == 0, f"{name}: exit {code}\n{err}"
    assert not any(word in err for word in NOISE), f"{name}:\n{err}"


def test_sample_and_eval_json_into_head(tmp_path, ckpt):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    om = [sys.executable, "-m", "omcli.app"]
    pipes = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    sample = subprocess.Popen([*om, "sample", str(ckpt), "--max-bytes", "100000", "--seed", "1"], **pipes)
    text = tmp_path / "input.txt"
    text.write_bytes(SMALL_TEXT)
    evaluate = subprocess.Popen([*om, "eval", str(ckpt), str(text), "--json"], **pipes)
    evaluate.stdout.close()  # gone before the result is written
    first = sample.stdout.read(1)  # `head -c 1`
    sample.stdout.close()
    assert len(first) == 1
    for name, proc in (("sample", sample), ("eval --json", evaluate)):
        err = proc.stderr.read().decode(errors="replace")
        _quiet(name, proc.wait(timeout=300), err)


def test_every_command_that_prints_exits_quietly(tmp_path, ckpt):
    text = tmp_path / "input.txt"
    text.write_bytes(SMALL_TEXT)
    dataset = prepare_json_dataset(tmp_path / "ds")
    cases = {
        "eval": (["eval", str(ckpt), str(text)], None),  # the table, through rich
        "cache": (["cache", str(ckpt), str(text), "-o", str(tmp_path / "ctx.safetensors")], None),
        "prepare": (["prepare", "-", "-o", str(tmp_path / "piped"), "--quiet"], b"piped text\n" * 100),
        "train": (train_args(dataset, tmp_path / "run", "train.max_steps=2"), None),
    }
    for name, (args, stdin) in cases.items():
        child = fork_om(args, tmp_path / "logs", name=name, stdin=stdin, stdout_closed=True)
        _quiet(name, child.wait(), child.err())
    # The work was done before the result could not be printed.
    assert (tmp_path / "ctx.safetensors").is_file()
    assert (tmp_path / "piped" / "meta.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step-0000002" / "trainer.json").is_file()
