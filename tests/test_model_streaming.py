"""Invariant 1 (exact streaming) and 5 (bounded memory), plus the state's dict round trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from om import OmState
from tests.model_helpers import run_chunks, tiny_model

CONFIGS = {
    "rope": dict(positional="rope"),
    "cope": dict(positional="cope"),
    "rope+cope": dict(positional="rope+cope"),
    "no-stem": dict(stem_kernels=[]),
    "wide-stem": dict(stem_kernels=[2, 3, 4, 11]),  # tail longer than a segment
    "no-memory": dict(state_len=0),
    "three-passes": dict(dims_key=[8, 6, 4], dims_value=[8, 4, 6]),
    "gated-state": dict(state_update="gated"),
    "residual-state-aligned": dict(state_update="residual", state_positions="aligned"),
    "unrotated-state": dict(state_positions="unrotated"),
    "patched-2": dict(patch_size=2),
    "patched-3-depthwise-stem": dict(patch_size=3, stem_groups=32, decoder_layers=2),
    "patched-4-no-stem-no-memory": dict(patch_size=4, stem_kernels=[], state_len=0, decoder_layers=0),
    "patched-3-per-phase": dict(patch_size=3, decoder_context="per_phase"),
    "patched-2-wide-trunk": dict(patch_size=2, trunk_dim=48),
    "patched-4-lean-decoder": dict(patch_size=4, stem_kernels=[4], decoder_layers=2, decoder_mlp_ratio=0.5),
    "patched-4-local-attention": dict(patch_size=4, decoder_attention=True, decoder_layers=1),
    "ngram": dict(ngram_sizes=[2, 3, 5], ngram_buckets=64),
    "ngram-tail-longer-than-a-segment": dict(ngram_sizes=[1, 11], ngram_buckets=16, stem_kernels=[]),
    "patched-3-ngram": dict(patch_size=3, ngram_sizes=[3, 6], ngram_buckets=32, stem_kernels=[3]),
    "ngram-after-stem": dict(ngram_sizes=[2, 3, 5], ngram_buckets=64, ngram_after_stem=True),
    "patched-3-ngram-after-stem": dict(patch_size=3, ngram_sizes=[3, 6], ngram_buckets=32, stem_kernels=[3], ngram_after_stem=True),
    # One pass without CoPE: whole segments at inference take ARC.segments_batched.
    "one-pass": dict(dims_key=[8], dims_value=[6]),
    "one-pass-aligned-gated": dict(dims_key=[8], dims_value=[8], state_positions="aligned", state_update="gated"),
    "one-pass-unrotated-residual": dict(dims_key=[8], dims_value=[8], state_positions="unrotated", state_update="residual"),
    "one-pass-patched-2": dict(dims_key=[8], dims_value=[8], patch_size=2),
    "one-pass-partial-rope": dict(dims_key=[8], dims_value=[6], rope_fraction=0.5),
}
MODELS = {name: tiny_model(seed=i, **cfg) for i, (name, cfg) in enumerate(CONFIGS.items())}


def assert_states_equal(a: OmState, b: OmState, atol=1e-4):
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for key in da:
        assert da[key].shape == db[key].shape, key
        assert torch.allclose(da[key], db[key], atol=atol, rtol=0), key


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(CONFIGS)),
    length=st.integers(1, 45),
    data=st.data(),
)
def test_chunked_equals_one_call(name, length, data):
    model = MODELS[name]
    cuts = data.draw(st.lists(st.integers(1, max(1, length - 1)), max_size=6, unique=True).map(sorted))
    cuts = [c for c in cuts if c < length]
    tokens = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        whole, whole_state = model(tokens)
        chunked, chunked_state = run_chunks(model, tokens, cuts)
    assert chunked.shape == (2, length, model.config.vocab_size)
    assert (whole - chunked).abs().max().item() <= 1e-4
    assert_states_equal(whole_state, chunked_state)
    assert whole_state.offset == chunked_state.offset == length


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_token_at_a_time_equals_one_call(name):
    model = MODELS[name]
    tokens = torch.randint(0, model.config.vocab_size, (3, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model(tokens)
        stepped, _ = run_chunks(model, tokens, list(range(1, 29)))
    assert (whole - stepped).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["rope+cope", "patched-3-depthwise-stem", "patched-3-ngram"])
def test_streaming_continues_from_a_saved_state_dict(name):
    model = MODELS[name]
    tokens = torch.randint(0, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, _ = model(tokens)
        _, state = model(tokens[:, :13])  # mid-segment (and mid-patch): the cache and patch tail are part of the state
        restored = OmState.from_dict({k: v.clone() for k, v in state.to_dict().items()})
        rest, _ = model(tokens[:, 13:], restored)
    assert restored.offset == 13
    assert (whole[:, 13:] - rest).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["rope", "patched-2"])
def test_state_size_does_not_grow_with_tokens_consumed(name):
    model = MODELS[name]
    L, S, P = model.config.segment_len, model.config.state_len, model.config.patch_size
    sizes_by_phase = {}
    state = None
    with torch.no_grad():
        for step in range(20 * L * P + 3):
            _, state = model(torch.tensor([[step % 50]]), state)
            phase = state.offset % (L * P)
            sizes_by_phase.setdefault(phase, set()).add(state.num_bytes())
            for cache in state.caches:
                for k, v in cache or ():
                    assert k.shape[2] <= S + L and v.shape[2] <= S + L
    # Same position within a segment -> same size, however many segments came before.
    assert all(len(sizes) == 1 for sizes in sizes_by_phase.values())
    # And one bound for all phases: a segment's worth of cached rows at most.
    assert max(max(s) for s in sizes_by_phase.values()) < 20 * L * model.config.dim * 4


def test_a_patched_trunk_runs_once_per_patch_when_fed_one_token_at_a_time(monkeypatch):
    model = MODELS["patched-3-depthwise-stem"]
    P, rows = model.config.patch_size, []
    layer = model.layers[0]
    original = layer.extend
    monkeypatch.setattr(layer, "extend", lambda x, *args: (rows.append(x.shape[1]), original(x, *args))[1])
    state = None
    with torch.no_grad():
        for step in range(7 * P):
            _, state = model(torch.tensor([[step % 50]]), state)
    assert rows == [1] * 7  # one trunk row per completed patch, none for the tokens in between


@pytest.mark.parametrize("name", ["rope", "cope", "one-pass", "one-pass-aligned-gated", "one-pass-unrotated-residual",
                                  "one-pass-partial-rope", "no-memory", "one-pass-patched-2"])
@pytest.mark.parametrize("paths", ["default", "rope-elementwise-mlp-blocks-two-threads"])
def test_layer_major_equals_segment_by_segment(name, paths, monkeypatch):
    """Whole segments at inference, layer by layer (the default) or segment by segment: the same logits and state.
    The second set of paths turns the segment rows elementwise (RoPE not folded into weights), runs
    the MLP in blocks of 5 rows (the last one partial) and the state loop on every thread."""
    if paths != "default":
        monkeypatch.setattr("om.model.arc.FOLDED_ROPE_BYTES", 0)
        monkeypatch.setattr("om.model.arc.MLP_BLOCK_ROWS", 5)
        monkeypatch.setattr("om.model.arc.SEQUENTIAL_ONE_THREAD_SIZE", 0)
    model = MODELS[name]
    tokens = torch.randint(0, model.config.vocab_size, (2, 7 * model.config.segment_tokens + 3),
                           generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        fast, fast_state = model(tokens)
        model.layer_major = False
        try:
            slow, slow_state = model(tokens)
        finally:
            del model.layer_major
    assert (fast - slow).abs().max().item() <= 1e-4
    assert_states_equal(fast_state, slow_state)


def test_a_state_cast_to_another_float_type_keeps_its_token_ids():
    model = MODELS["ngram"]
    tokens = torch.randint(0, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole, _ = model(tokens)
        _, state = model(tokens[:, :11])
        cast = state.to(dtype=torch.float64).to(dtype=torch.float32)
        rest, _ = model(tokens[:, 11:], cast)
    assert cast.token_tail.dtype == torch.int64 and torch.equal(cast.token_tail, state.token_tail)
    assert (whole[:, 11:] - rest).abs().max().item() <= 1e-4
