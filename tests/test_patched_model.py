"""A patched model (`patch_size` > 1) through everything a user runs: training with exact resume in
carry mode, `om eval` over any split, `om cache` contexts, one-byte-at-a-time sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from om.evaluate import evaluate, read_context
from om.sampling import generate
from om.train import Trainer
from om.train.recipe import read_yaml, validate_recipe
from tests.test_eval_support import argmax_rollout, one_thread, run_cli, save_tiny_checkpoint, stream_nll  # noqa: F401
from tests.test_train_loop import TINY, _metrics
from tests.train_fixtures import dataset, isolated_cache  # noqa: F401 (fixtures)

PATCHED = dict(patch_size=3, stem_kernels=[2, 3], stem_groups=4, decoder_layers=1)
RNG = np.random.default_rng(5)
TEXT = bytes(RNG.integers(32, 127, 101, dtype=np.uint8))  # ends inside a patch and inside a segment


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("patched") / "ckpt", seed=6, **PATCHED)


def _recipe(dataset, **train):
    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    raw["model"].update(PATCHED)
    raw["train"].update(train)
    raw["out"].update(sample_bytes=0, progress=False)
    return validate_recipe(raw, "tiny.yaml")


def test_samples_are_whole_patched_segments_and_carry_resume_is_exact(tmp_path, dataset):
    train = dict(state="carry", grad_accum=2, max_steps=6, log_every=1, eval_every=0, checkpoint_every=3)
    whole = Trainer(_recipe(dataset, **train), tmp_path / "whole").run()
    Trainer(_recipe(dataset, **train), tmp_path / "split").run(stop_at_step=3)
    second = Trainer(_recipe(dataset, **train), tmp_path / "split").run()
    assert second.step == 6
    for name in ("model.safetensors", "state.safetensors"):
        a, b = load_file(second.checkpoint / name), load_file(whole.checkpoint / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "whole")
    # tiny.yaml: 2 segments of 8 patches of 3 tokens per sample, 4 rows, 2 micro batches.
    tokens = [m["tokens"] for m in _metrics(tmp_path / "whole") if m["event"] == "train"]
    assert np.diff([0, *tokens]).tolist() == [4 * 2 * 2 * 8 * 3] * 6


def test_eval_over_any_window_equals_one_forward_pass(ckpt):
    _, model, codec = ckpt
    reference = stream_nll(model, codec, TEXT)
    for window in (1, 5, 24, 64):
        got = evaluate(model, codec, [TEXT], window=window, chunk_bytes=7).inputs[0]
        assert got.nll_nats == pytest.approx(reference, rel=1e-5), window


def test_a_cached_context_continues_the_stream_exactly(ckpt, tmp_path):
    path, model, codec = ckpt
    for cut in (1, 23, 24, 50):  # inside a patch, at a segment's end, elsewhere
        context = read_context(model, codec, [TEXT[:cut]], window=5)
        continued = evaluate(model, codec, [TEXT[cut:]], context=context, window=7).inputs[0]
        whole = evaluate(model, codec, [TEXT], window=64).inputs[0]
        prefix = evaluate(model, codec, [TEXT[:cut]], window=64).inputs[0]
        assert continued.nll_nats == pytest.approx(whole.nll_nats - prefix.nll_nats, rel=1e-4, abs=1e-4), cut
    (tmp_path / "prefix.txt").write_bytes(TEXT[:50])
    made = run_cli(["cache", path, tmp_path / "prefix.txt", "-o", tmp_path / "ctx.safetensors"])
    assert made.exit_code == 0, made.stderr
    base = ["sample", path, "--max-bytes", "30", "--temperature", "0"]
    after_cache = run_cli([*base, "--context-cache", tmp_path / "ctx.safetensors"])
    after_prefix = run_cli([*base, "--prompt", TEXT[:50].decode()])
    assert after_cache.exit_code == after_prefix.exit_code == 0, after_cache.stderr
    assert after_cache.stdout_bytes == after_prefix.stdout_bytes and after_cache.stdout_bytes


def test_greedy_sampling_one_byte_at_a_time_equals_full_forward_passes(ckpt):
    _, model, codec = ckpt
    prompt = TEXT[:10]
    sampled = b"".join(generate(model, codec, prompt, max_bytes=20, temperature=0.0))
    rolled = argmax_rollout(model, codec, list(prompt), 20)
    assert bytes(rolled)[: len(sampled)] == sampled and len(sampled) > 0
