"""`om sample` with prompts of 0 bytes and of 10 MB, and `--max-bytes 0`."""

from __future__ import annotations

import os
import random

import pytest

from tests.reliability.hostile_tools import assert_no_traceback, assert_one_line_error, om
from tests.test_eval_support import argmax_rollout, one_thread, save_tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
BIG = 10 * 1000 * 1000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("sample") / "ck", seed=5)


@pytest.fixture(scope="module")
def fast_ckpt(tmp_path_factory):
    """A model that reads fast (one narrow layer, long segments), to feed 10 MB in seconds."""
    path, _, _ = save_tiny_checkpoint(
        tmp_path_factory.mktemp("fast") / "ck", seed=2, dim=8, n_layers=1, n_heads=1, dims_key=[2], dims_value=[2],
        segment_len=512, state_len=1, stem_kernels=[], positional="none", mlp_ratio=1.0,
    )
    return path


def sample(*args, input=None):
    result = om("sample", *map(str, args), input=input)
    assert_no_traceback(result)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("om sample: ")
    return result.stdout_bytes


def test_empty_prompt_every_way(ckpt, tmp_path):
    """--prompt '', an empty --prompt-file and empty stdin all mean: start a new document."""
    path, model, codec = ckpt
    expected = bytes(argmax_rollout(model, codec, [], 24))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    greedy = ["--temperature", "0", "--max-bytes", "24"]
    assert sample(path, "--prompt", "", *greedy) == expected
    assert sample(path, "--prompt-file", empty, *greedy) == expected
    assert sample(path, *greedy, input=b"") == expected
    seeded = ["--seed", "3", "--max-bytes", "30"]
    assert sample(path, "--prompt", "", *seeded) == sample(path, *seeded, input=b"")


def test_max_bytes_zero(ckpt):
    path, _, _ = ckpt
    assert sample(path, "--max-bytes", "0", "--prompt", "hello") == b""
    assert sample(path, "--max-bytes", "0") == b""


def test_ten_megabyte_prompt_is_read_whole(ckpt, tmp_path):
    """10 MB from a file or stdin is read and encoded (invalid UTF-8 is fine for a byte model);
    with --max-bytes 0 nothing is generated, so nothing needs feeding and it returns at once."""
    path, _, _ = ckpt
    data = os.urandom(BIG)
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    assert sample(path, "--max-bytes", "0", "--prompt-file", big) == b""
    assert sample(path, "--max-bytes", "0", input=data) == b""


def test_long_prompt_is_fed_and_continued(fast_ckpt, tmp_path):
    """A long prompt is fed through the model in windows with the state carried, then continued;
    file and stdin give the same output. (64 KiB here: feeding runs at roughly 70-250 KB/s on
    two shared CPU cores, so a 10 MB prompt takes minutes; see the closing note of the issue.)"""
    data = random.Random(0).randbytes(64 << 10)  # 128 segments, several windows; fixed, so the run is reproducible
    prompt = tmp_path / "prompt.bin"
    prompt.write_bytes(data)
    args = ["--max-bytes", "16", "--temperature", "0"]
    out = sample(fast_ckpt, "--prompt-file", prompt, *args)
    assert len(out) <= 16
    assert sample(fast_ckpt, *args, input=data) == out
    # The prompt was read: the next-byte distribution after it is not the one after a 1-byte prompt.
    import torch

    from om.checkpoint import load_checkpoint

    ck = load_checkpoint(fast_ckpt)
    sep = ck.codec.doc_sep_id
    with torch.no_grad():
        after_long, _ = ck.model(torch.tensor([[sep, *data]]))
        after_x, _ = ck.model(torch.tensor([[sep, *b"x"]]))
    assert not torch.allclose(after_long[0, -1], after_x[0, -1], atol=1e-4)


def test_prompt_file_that_is_not_a_file(ckpt, tmp_path):
    """A FIFO or a device as --prompt-file would block or never end: refused."""
    path, _, _ = ckpt
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, needle in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"), (tmp_path, "not a regular file"),
                           (tmp_path / "none", "no such prompt file")):
        assert_one_line_error(om("sample", str(path), "--prompt-file", str(target)), "sample", needle)
