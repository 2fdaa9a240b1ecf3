"""`om sample` end to end: raw bytes on stdout, greedy rollout, seeds, --stop, prompts, pipes, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_eval_support import argmax_rollout, chars_codec, one_thread, run_cli, save_tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("sample") / "ckpt", seed=3)


def sample_out(args, input=None) -> bytes:
    result = run_cli(["sample", *args], input=input)
    assert result.exit_code == 0, result.stderr
    return result.stdout_bytes


def test_greedy_matches_argmax_rollout(ckpt):
    path, model, codec = ckpt
    prompt = b"Bytes in, bytes out."
    expected = bytes(argmax_rollout(model, codec, list(prompt), 30))
    assert sample_out([path, "--prompt", prompt.decode(), "--temperature", "0", "--max-bytes", "30"]) == expected


def test_seed_and_prompt_sources_agree(ckpt, tmp_path):
    path, _, _ = ckpt
    args = [path, "--max-bytes", "40", "--seed", "11", "--top-k", "50", "--top-p", "0.9"]
    a = sample_out([*args, "--prompt", "hello"])
    assert a == sample_out([*args, "--prompt", "hello"])
    f = tmp_path / "p.txt"
    f.write_bytes(b"hello")
    assert sample_out([*args, "--prompt-file", f]) == a
    assert sample_out(args, input=b"hello") == a  # prompt from stdin
    assert sample_out([*args, "--seed", "12", "--prompt", "hello"]) != a


def test_stop(ckpt):
    path, _, _ = ckpt
    args = [path, "--max-bytes", "60", "--seed", "6", "--prompt", "x"]
    full = sample_out(args)
    stop = full[25:27]
    assert sample_out([*args, "--stop", os.fsdecode(stop)]) == full[: full.find(stop)]


def test_chars_model(tmp_path):
    path, model, codec = save_tiny_checkpoint(tmp_path / "chars", codec=chars_codec(), seed=1)
    out = sample_out([path, "--prompt", "café", "--max-bytes", "64", "--seed", "3"])
    assert len(out) <= 64
    out.decode("utf-8")
    bad = run_cli(["sample", path, "--max-bytes", "5"], input=b"caf\xe9 au lait")
    assert_one_line_error(bad, "prompt: invalid UTF-8 at byte offset 3")


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("om sample: error:"), result.stderr
    assert result.stdout_bytes == b""
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--temperature", "-0.5"], "--temperature -0.5"),
        (["--temperature", "nan"], "--temperature nan"),
        (["--temperature", "1e9"], "--temperature"),
        (["--top-k", "-2"], "--top-k -2"),
        (["--top-p", "0"], "--top-p 0"),
        (["--top-p", "2"], "--top-p 2"),
        (["--max-bytes", "-1"], "--max-bytes -1"),
        (["--max-bytes", "99999999999"], "--max-bytes"),
        (["--seed", "-1"], "--seed -1"),
        (["--stop", ""], "--stop"),
        (["--prompt", "a", "--prompt-file", "x"], "--prompt-file"),
    ],
)
def test_bad_flags(ckpt, flags, needle):
    path, _, _ = ckpt
    assert_one_line_error(run_cli(["sample", path, *flags]), needle)


def test_missing_and_corrupt_checkpoint(tmp_path):
    assert_one_line_error(run_cli(["sample", tmp_path / "none"]), "none")
    path, _, _ = save_tiny_checkpoint(tmp_path / "ck")
    (path / "config.json").write_text("{not json")
    assert_one_line_error(run_cli(["sample", path]), "config.json")


def test_closed_pipe_ends_quietly(ckpt):
    """`om sample ... | head -c 10`: exit 0, no traceback, no 'Exception ignored' message."""
    path, _, _ = ckpt
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "omcli.app", "sample", str(path), "--max-bytes", "100000", "--seed", "1", "--temperature", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    first = proc.stdout.read(10)
    proc.stdout.close()  # what `head -c 10` does
    _, err = proc.communicate(timeout=120)
    assert len(first) == 10
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"Exception ignored" not in err and b"BrokenPipe" not in err


def test_threads_flag_and_default(ckpt, monkeypatch):
    import torch

    path, _, _ = ckpt
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = ["sample", path, "--max-bytes", "8", "--seed", "1"]
    result = run_cli([*args, "--threads", "2"])
    assert result.exit_code == 0 and torch.get_num_threads() == 2 and "2 threads)" in result.stderr, result.stderr
    out = run_cli(args)  # the default for batch-1 decoding: one thread
    assert out.exit_code == 0 and torch.get_num_threads() == 1 and "1 thread)" in out.stderr
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's setting replaces the default
    assert run_cli(args).exit_code == 0 and torch.get_num_threads() == 2
    assert_one_line_error(run_cli([*args, "--threads", "0"]), "--threads 0: must be from 1 to")


def test_num_samples_are_the_single_runs_with_seeds_in_a_row(ckpt):
    path, model, codec = ckpt
    flags = ["--max-bytes", "25", "--top-k", "40", "--prompt", "ab"]
    alone = [sample_out([path, *flags, "--seed", str(7 + i)]) for i in range(4)]
    assert len(set(alone)) > 1  # the seeds really differ
    out = sample_out([path, *flags, "--seed", "7", "--num-samples", "4"])
    expected = b"".join(f"==> sample {i + 1} of 4 (seed {7 + i}) <==\n".encode() + a + b"\n" for i, a in enumerate(alone))
    assert out == expected
    rows = json.loads(sample_out([path, *flags, "--seed", "7", "-n", "4", "--json"]))
    assert [(r["sample"], r["seed"], r["text"], r["bytes"]) for r in rows] == [
        (i + 1, 7 + i, a.decode("utf-8", "replace"), len(a)) for i, a in enumerate(alone)
    ]
    # Rows that end early (stop string, separator) leave the batch; the others run on unchanged.
    stopped = [sample_out([path, *flags, "--seed", str(7 + i), "--stop", "e"]) for i in range(4)]
    rows = json.loads(sample_out([path, *flags, "--seed", "7", "-n", "4", "--stop", "e", "--json"]))
    assert [r["text"] for r in rows] == [a.decode("utf-8", "replace") for a in stopped]
    greedy = sample_out([path, "--prompt", "ab", "--max-bytes", "25", "--temperature", "0"])
    rows = json.loads(sample_out([path, "--prompt", "ab", "--max-bytes", "25", "--temperature", "0", "-n", "3", "--json"]))
    assert [r["text"] for r in rows] == [greedy.decode("utf-8", "replace")] * 3


def test_num_samples_out_of_range_is_a_one_line_error(ckpt):
    path, _, _ = ckpt
    result = run_cli(["sample", path, "--num-samples", "0"])
    assert_one_line_error(result, "--num-samples 0")
