"""`om cache` and --context-cache: the saved stream continues exactly; foreign or broken files refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from om.context_cache import StreamContext, load_context, read_header, save_context
from om.errors import OmUserError
from om.evaluate import evaluate, read_context
from tests.test_eval_support import bytes_codec, one_thread, run_cli, save_tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

RNG = np.random.default_rng(2)
PREFIX = bytes(RNG.integers(32, 127, 75, dtype=np.uint8))  # 75: ends inside a segment (L = 8)
MORE = bytes(RNG.integers(32, 127, 40, dtype=np.uint8))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("cache") / "ckpt", seed=4)


@pytest.fixture(scope="module")
def ngram_ckpt(tmp_path_factory):
    """With hashed n-gram embeddings: a cache must also hold the last token ids."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("cache-ngram") / "ckpt", seed=4, ngram_sizes=[2, 3, 5], ngram_buckets=64)


@pytest.fixture(params=["plain", "ngram"])
def any_ckpt(request):
    return request.getfixturevalue("ckpt" if request.param == "plain" else "ngram_ckpt")


def test_sample_after_cache_equals_sample_after_prefix(any_ckpt, tmp_path):
    path, _, _ = any_ckpt
    (tmp_path / "prefix.txt").write_bytes(PREFIX)
    cache = tmp_path / "ctx.safetensors"
    made = run_cli(["cache", path, tmp_path / "prefix.txt", "-o", cache])
    assert made.exit_code == 0, made.stderr
    assert made.stdout.strip() == str(cache)
    for flags in (["--temperature", "0"], ["--seed", "5", "--top-k", "20"]):
        base = ["sample", path, "--max-bytes", "48", *flags]
        after_cache = run_cli([*base, "--context-cache", cache, "--prompt", "Q:"])
        after_prefix = run_cli([*base, "--prompt", (PREFIX + b"Q:").decode()])
        assert after_cache.exit_code == after_prefix.exit_code == 0, after_cache.stderr
        assert after_cache.stdout_bytes == after_prefix.stdout_bytes
        assert len(after_cache.stdout_bytes) > 0
    # An empty prompt after the cache continues right after the prefix.
    empty = run_cli(["sample", path, "--max-bytes", "20", "--temperature", "0", "--context-cache", cache])
    fed = run_cli(["sample", path, "--max-bytes", "20", "--temperature", "0", "--prompt", PREFIX.decode()])
    assert empty.stdout_bytes == fed.stdout_bytes


def test_eval_after_cache_scores_the_continuation(any_ckpt, tmp_path):
    _, model, codec = any_ckpt
    context = read_context(model, codec, [PREFIX])
    cached = evaluate(model, codec, [MORE], context=context, window=16).inputs[0]
    whole = evaluate(model, codec, [PREFIX + MORE], window=16).inputs[0]
    prefix = evaluate(model, codec, [PREFIX], window=16).inputs[0]
    assert cached.bytes == len(MORE) and cached.tokens == len(MORE)
    assert cached.nll_nats == pytest.approx(whole.nll_nats - prefix.nll_nats, rel=1e-4)
    # Via the file and the CLI, several inputs side by side, each continuing the cache.
    file = tmp_path / "c.safetensors"
    save_context(file, context, "f" * 64, codec)
    loaded = load_context(file, "f" * 64, codec)
    both = evaluate(model, codec, [MORE, MORE[:9]], context=loaded, window=16)
    assert both.inputs[0].nll_nats == pytest.approx(cached.nll_nats, rel=1e-5)


def test_eval_cli_with_cache(ckpt, tmp_path):
    path, _, _ = ckpt
    (tmp_path / "prefix.txt").write_bytes(PREFIX)
    (tmp_path / "more.txt").write_bytes(MORE)
    cache = tmp_path / "ctx.st"
    assert run_cli(["cache", path, tmp_path / "prefix.txt", "-o", cache]).exit_code == 0
    result = run_cli(["eval", path, tmp_path / "more.txt", "--context-cache", cache, "--json", "--by-position"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["context_cache"] == str(cache) and report["bytes"] == len(MORE)
    # Positions count from the start of the cached stream: nothing lands in segment 0.
    assert report["by_position"][0]["first_segment"] == (len(PREFIX)) // 8


def test_several_inputs_are_joined_by_separators(ckpt):
    _, model, codec = ckpt
    a, b = PREFIX[:20], PREFIX[20:]
    context = read_context(model, codec, [a, b])
    sep = codec.doc_sep_id
    stream = [sep, *a, sep, *b]
    with torch.no_grad():
        _, state = model(torch.tensor([stream[:-1]]))
    assert context.pending == stream[-1] and context.offset == len(stream) - 1
    for x, y in zip(context.state.tensors(), state.tensors()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    assert context.bytes_read == len(PREFIX)


def test_file_round_trip_and_constant_size(ckpt, tmp_path):
    _, model, codec = ckpt
    L = model.config.segment_len
    sizes = []
    for n in (3 * L + 5, 30 * L + 5):
        ctx = read_context(model, codec, [bytes(RNG.integers(0, 256, n, dtype=np.uint8))])
        file = save_context(tmp_path / f"c{n}.st", ctx, "a" * 64, codec)
        back = load_context(file, "a" * 64, codec)
        assert back.pending == ctx.pending and back.offset == ctx.offset == n
        for x, y in zip(back.state.tensors(), ctx.state.tensors()):
            assert torch.equal(x, y)
        header = read_header(file)
        assert header["format"] == "om-context-cache" and header["codec"] == "bytes" and header["offset"] == str(n)
        sizes.append((back.state.num_bytes(), file.stat().st_size))
    # Same offset within a segment, 10x the text: same tensors (the header's numbers grow by digits).
    assert sizes[0][0] == sizes[1][0]
    assert abs(sizes[0][1] - sizes[1][1]) <= 64
    fresh = save_context(tmp_path / "fresh.st", StreamContext.fresh(codec), "a" * 64, codec, model)
    assert load_context(fresh, "a" * 64, codec).offset == 0


def test_empty_cache_input_is_a_fresh_start(ckpt, tmp_path):
    path, _, _ = ckpt
    (tmp_path / "empty.txt").write_bytes(b"")
    cache = tmp_path / "e.st"
    assert run_cli(["cache", path, tmp_path / "empty.txt", "-o", cache]).exit_code == 0
    args = ["sample", path, "--max-bytes", "16", "--temperature", "0", "--prompt", "hi"]
    assert run_cli([*args, "--context-cache", cache]).stdout_bytes == run_cli(args).stdout_bytes


def assert_one_line_error(result, command, *needles):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"om {command}: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_refuses_foreign_and_broken_caches(ckpt, tmp_path):
    path, _, _ = ckpt
    other, _, _ = save_tiny_checkpoint(tmp_path / "other", seed=99)
    (tmp_path / "p.txt").write_bytes(PREFIX)
    cache = tmp_path / "ctx.st"
    assert run_cli(["cache", other, tmp_path / "p.txt", "-o", cache]).exit_code == 0
    assert_one_line_error(run_cli(["sample", path, "--context-cache", cache]), "sample", "ctx.st", "made by checkpoint")
    assert_one_line_error(run_cli(["eval", path, tmp_path / "p.txt", "--context-cache", cache]), "eval", "ctx.st", "made by checkpoint")
    broken = tmp_path / "broken.st"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert_one_line_error(run_cli(["sample", path, "--context-cache", broken]), "sample", "broken.st", "not a context cache")
    assert_one_line_error(run_cli(["sample", path, "--context-cache", tmp_path / "none.st"]), "sample", "none.st", "not found")
    # A real cache whose tensors were damaged after the header.
    good = tmp_path / "good.st"
    assert run_cli(["cache", path, tmp_path / "p.txt", "-o", good]).exit_code == 0
    good.write_bytes(good.read_bytes()[:-64])
    assert_one_line_error(run_cli(["sample", path, "--context-cache", good]), "sample", "good.st", "corrupt")


def test_cache_errors(ckpt, tmp_path):
    path, _, _ = ckpt
    (tmp_path / "p.txt").write_bytes(PREFIX)
    assert_one_line_error(run_cli(["cache", path, tmp_path / "missing.txt", "-o", tmp_path / "c.st"]), "cache", "missing.txt")
    assert_one_line_error(run_cli(["cache", path, tmp_path / "p.txt", "-o", tmp_path / "no" / "c.st"]), "cache", "does not exist")
    assert_one_line_error(run_cli(["cache", tmp_path / "nockpt", tmp_path / "p.txt", "-o", tmp_path / "c.st"]), "cache", "nockpt")
    with pytest.raises(OmUserError):
        load_context(tmp_path / "p.txt", "x", bytes_codec())


def om_process(*args, **kwargs) -> subprocess.CompletedProcess:
    """`om ARGS` as its own process (the real entry point), OMP_NUM_THREADS=1 like the tests' torch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "omcli.app", *map(str, args)], env=env, timeout=300, **kwargs)


def test_cache_to_stdout_equals_cache_to_file(ckpt, tmp_path):
    path, _, codec = ckpt
    (tmp_path / "in.txt").write_bytes(PREFIX)
    to_file = om_process("cache", path, "in.txt", "-o", "ctx.st", cwd=tmp_path, capture_output=True)
    assert to_file.returncode == 0 and to_file.stdout.decode().strip() == "ctx.st", to_file.stderr
    with open(tmp_path / "piped.st", "wb") as out:  # om cache CKPT in.txt -o - > piped.st
        piped = om_process("cache", path, "in.txt", "-o", "-", cwd=tmp_path, stdout=out, stderr=subprocess.PIPE)
    assert piped.returncode == 0, piped.stderr
    assert not (tmp_path / "-").exists()
    assert "om cache: wrote <stdout>:" in piped.stderr.decode()
    # The same file (safetensors orders the metadata keys differently from one process to the next).
    assert read_header(tmp_path / "piped.st") == read_header(tmp_path / "ctx.st")
    a, b = load_file(tmp_path / "piped.st"), load_file(tmp_path / "ctx.st")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_context(tmp_path / "piped.st", read_header(tmp_path / "ctx.st")["checkpoint"], codec).offset == len(PREFIX)


def test_cache_from_stdin(ckpt, tmp_path):
    path, _, _ = ckpt
    (tmp_path / "p.txt").write_bytes(PREFIX)
    (tmp_path / "more.txt").write_bytes(MORE)
    made = run_cli(["cache", path, tmp_path / "p.txt", "-o", "-"])
    assert made.exit_code == 0 and made.stdout_bytes[:8] != b"" and "<stdout>" in made.stderr
    data = made.stdout_bytes
    (tmp_path / "c.st").write_bytes(data)
    sample = ["sample", path, "--max-bytes", "24", "--temperature", "0", "--prompt", "Q:"]
    from_stdin = run_cli([*sample, "--context-cache", "-"], input=data)
    assert from_stdin.exit_code == 0, from_stdin.stderr
    assert from_stdin.stdout_bytes == run_cli([*sample, "--context-cache", tmp_path / "c.st"]).stdout_bytes
    scored = [run_cli(["eval", path, tmp_path / "more.txt", "--json", "--context-cache", cache], input=data)
              for cache in ("-", tmp_path / "c.st")]
    assert json.loads(scored[0].stdout)["nll_nats"] == json.loads(scored[1].stdout)["nll_nats"]
    assert_one_line_error(run_cli(["eval", path, "-", "--context-cache", "-"], input=data), "eval", "stdin can be read only once")
    assert_one_line_error(run_cli([*sample, "--context-cache", "-"], input=b"junk"), "sample", "<stdin>", "not a context cache")


def test_cache_to_a_terminal_is_refused(ckpt, tmp_path):
    path, _, _ = ckpt
    (tmp_path / "p.txt").write_bytes(PREFIX)
    leader, follower = os.openpty()
    try:
        result = om_process("cache", path, tmp_path / "p.txt", "-o", "-", stdout=follower, stderr=subprocess.PIPE)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 2 and b"stdout is a terminal" in result.stderr, result.stderr


def test_cache_threads_flag(ckpt, tmp_path):
    path, _, _ = ckpt
    (tmp_path / "p.txt").write_bytes(PREFIX)
    assert run_cli(["cache", path, tmp_path / "p.txt", "-o", tmp_path / "c.st", "--threads", "2"]).exit_code == 0
    assert torch.get_num_threads() == 2  # the one_thread fixture puts it back
    assert_one_line_error(run_cli(["cache", path, tmp_path / "p.txt", "-o", tmp_path / "c.st", "--threads", "0"]), "cache", "--threads 0")
