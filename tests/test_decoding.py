"""`IncrementalDecoder` computes what `OmLLM.forward` computes, one token at a time, for every kind of model."""

import pytest
import torch

from om.model.decoding import IncrementalDecoder
from tests.model_helpers import tiny_model
from tests.test_model_streaming import CONFIGS, assert_states_equal

EXTRA = {
    "rope-half": dict(rope_fraction=0.5),
    "no-positions": dict(positional="none"),
    "one-row-segments": dict(segment_len=1),
    "two-row-segments": dict(segment_len=2),
    "depthwise-stem": dict(stem_groups=32),
    "patched-4-gated": dict(patch_size=4, state_update="gated", stem_groups=4),
    "patched-3-per-phase": dict(patch_size=3, decoder_context="per_phase", decoder_layers=2),
    "patched-2-wide-trunk": dict(patch_size=2, trunk_dim=48, dims_key=[8], dims_value=[8]),
    "patched-4-lean-decoder": dict(patch_size=4, stem_kernels=[4], decoder_layers=3, decoder_mlp_ratio=0.5,
                                   dims_key=[8], dims_value=[8]),
    "one-wide-stem": dict(stem_kernels=[1], dims_key=[8], dims_value=[8]),
    "patched-3-local-attention-gated": dict(patch_size=3, decoder_attention=True, decoder_layers=2, state_update="gated",
                                            dims_key=[8], dims_value=[8]),
}
ALL = {**CONFIGS, **EXTRA}
MODELS = {name: tiny_model(seed=10 + i, **cfg) for i, (name, cfg) in enumerate(ALL.items())}


def _decode(model, tokens: torch.Tensor, start: int):
    """Forward tokens[:, :start], then the decoder one token at a time: (logits (B, T, V), decoder)."""
    with torch.inference_mode():
        logits, state = model(tokens[:, :start]) if start else (None, model.init_state(tokens.shape[0]))
        decoder = IncrementalDecoder(model, state)
        steps = [decoder.step(tokens[:, t]) for t in range(start, tokens.shape[1])]
    pieces = ([logits] if start else []) + [torch.stack(steps, dim=1)]
    return torch.cat(pieces, dim=1), decoder


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("start", [0, 5])
def test_decoder_equals_forward(name, start):
    model = MODELS[name]
    tokens = torch.randint(0, model.config.vocab_size, (3, 41), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        whole, whole_state = model(tokens)
    stepped, decoder = _decode(model, tokens, start)
    assert (whole - stepped).abs().max().item() <= 1e-4
    assert_states_equal(whole_state, decoder.state())


@pytest.mark.parametrize("name", ["rope", "patched-3-depthwise-stem", "three-passes", "patched-4-local-attention", "ngram",
                                  "patched-3-ngram"])
def test_exported_state_continues_like_the_decoder(name):
    """state() mid-segment (and mid-patch) is a copy: forward from it matches the decoder going on."""
    model = MODELS[name]
    tokens = torch.randint(0, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(4))
    _, decoder = _decode(model, tokens[:, :13], 0)
    saved = decoder.state()
    with torch.inference_mode():
        expected, _ = model(tokens[:, 13:], saved)
        got = torch.stack([decoder.step(tokens[:, t]) for t in range(13, 30)], dim=1)
        again, _ = model(tokens[:, 13:], saved)  # the decoder going on did not touch the exported state
    assert (expected - got).abs().max().item() <= 1e-4
    assert torch.equal(expected, again)


def _select_mid_stream(model, tokens: torch.Tensor, cut: int, checks=None):
    """The decoder over 3 rows of tokens up to `cut`, then rows [2, 0] only to the end, against
    the forward pass: -> (max |logit difference| after the cut, the decoder, the forward state).
    `checks`: called with the decoder just before and just after the select."""
    keep = [2, 0]
    with torch.inference_mode():
        whole, whole_state = model(tokens)
        decoder = IncrementalDecoder(model, model.init_state(3))
        for t in range(cut):
            decoder.step(tokens[:, t])
        if checks:
            checks[0](decoder)
        decoder.select(keep)
        if checks:
            checks[1](decoder)
        got = torch.stack([decoder.step(tokens[keep, t]) for t in range(cut, tokens.shape[1])], dim=1)
    return (whole[keep, cut:] - got).abs().max().item(), decoder, whole_state


@pytest.mark.parametrize("name", ["rope", "patched-2", "ngram"])
def test_select_keeps_rows(name):
    model = MODELS[name]
    tokens = torch.randint(0, model.config.vocab_size, (3, 27), generator=torch.Generator().manual_seed(5))
    assert _select_mid_stream(model, tokens, 11)[0] <= 1e-4


def test_rows_take_the_fast_path():
    """A one-pass model without CoPE never calls ARCformer.extend (its state rows are projected once
    per segment); with several passes only a segment's first and last rows do; with CoPE every row."""
    calls = {}
    for name in ("rope", "one-pass", "cope"):
        model = MODELS[name]
        layer = model.layers[0]
        count = [0]
        original = layer.extend

        def counting(*args, _original=original, _count=count, **kwargs):
            _count[0] += 1
            return _original(*args, **kwargs)

        layer.extend = counting
        try:
            _decode(model, torch.zeros(1, 3 * model.config.segment_len, dtype=torch.long), 0)
        finally:
            del layer.extend
        calls[name] = count[0]
    assert len(MODELS["rope"].config.dims_key) > 1 and len(MODELS["one-pass"].config.dims_key) == 1
    assert calls == {"rope": 2 * 3, "one-pass": 0, "cope": 3 * MODELS["cope"].config.segment_len}


@pytest.mark.parametrize("name", ["ngram", "patched-3-ngram", "ngram-after-stem"])
@pytest.mark.parametrize("python_rows", [0, 2, 8])
def test_ngram_rows_by_python_and_by_tensor_ops_agree_with_forward(name, python_rows, monkeypatch):
    """At batch <= NGRAM_PYTHON_ROWS the decoder hashes n-grams in Python integers, else by tensor
    ops; with 2, selecting 2 of 3 rows moves it from one to the other mid-stream."""
    import om.model.decoding as decoding

    monkeypatch.setattr(decoding, "NGRAM_PYTHON_ROWS", python_rows)
    model = MODELS[name]
    tokens = torch.randint(0, model.config.vocab_size, (3, 29), generator=torch.Generator().manual_seed(7))

    def by_python(rows: int):
        def check(decoder):
            assert (decoder.tail_ids is not None) == (python_rows >= rows)
        return check

    gap, decoder, whole_state = _select_mid_stream(model, tokens, 12, (by_python(3), by_python(2)))
    assert gap <= 1e-4
    assert torch.equal(decoder.state().token_tail, whole_state.token_tail[[2, 0]])


@pytest.mark.parametrize("name", ["one-pass", "wide-stem", "patched-3-depthwise-stem", "one-wide-stem", "ngram", "patched-3-ngram",
                                  "ngram-after-stem", "patched-3-ngram-after-stem"])
def test_stem_by_table_and_by_matmul_agree_with_forward(name, monkeypatch):
    """The decoder's stem runs by table lookup for small vocabularies and as one matmul otherwise: both
    equal the forward pass, and so does the stem tail they export mid-stream."""
    import om.model.decoding as decoding

    model = MODELS[name]
    tokens = torch.randint(0, model.config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        whole, whole_state = model(tokens)
    for limit in (decoding.STEM_TABLE_BYTES, 0):
        monkeypatch.setattr(decoding, "STEM_TABLE_BYTES", limit)
        stepped, decoder = _decode(model, tokens, 3)
        assert (decoder.stem_table is not None) == (limit > 0)
        assert (whole - stepped).abs().max().item() <= 1e-4
        assert_states_equal(whole_state, decoder.state())


def _forward_sampling(model, codec, prompt: bytes, n: int, options) -> bytes:
    """Sampling as it was before the decoder: `model(token, state)` for every generated token."""
    from om.sampling import _banned, next_token

    generator = torch.Generator().manual_seed(options.seed)
    banned = _banned(codec, model.config.vocab_size, end_at_separator=False)
    out = []
    with torch.inference_mode():
        logits, state = model(torch.tensor([[codec.doc_sep_id, *prompt]]))
        for _ in range(n):
            token = next_token(logits[0, -1].masked_fill(banned, float("-inf")), options, generator)
            out.append(token)
            logits, state = model(torch.tensor([[token]]), state)
    return bytes(out)


@pytest.mark.parametrize("name", ["rope", "three-passes", "patched-3-depthwise-stem", "gated-state"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_gives_the_same_bytes_as_before(name, temperature):
    from om.data.codecs import BytesCodec
    from om.sampling import SamplingOptions, generate

    model = tiny_model(seed=2, vocab_size=257, **ALL[name])
    codec = BytesCodec()
    options = SamplingOptions(max_bytes=120, temperature=temperature, seed=11)
    expected = _forward_sampling(model, codec, b"prompt", 120, options)
    got = b"".join(generate(model, codec, b"prompt", max_bytes=120, temperature=temperature, seed=11, end_at_separator=False))
    assert got == expected
