"""Incremental generation (library): greedy = argmax rollout, seeds, filters, stop, caps, UTF-8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from om.errors import OmUserError
from om.sampling import SamplingOptions, TokenDecoder, _longest_prefix_suffix, generate, generate_many, next_token
from tests.test_eval_support import argmax_rollout, bytes_codec, chars_codec, model_for, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def byte_model():
    codec = bytes_codec()
    return model_for(codec, seed=3), codec


def sample(model, codec, prompt=b"", **kw) -> bytes:
    return b"".join(generate(model, codec, prompt, **kw))


@pytest.mark.parametrize("prompt", [b"", b"The state carries context across segments."])
def test_greedy_matches_full_forward_rollout(byte_model, prompt):
    model, codec = byte_model
    n = 40  # crosses several segment boundaries (segment_len 8)
    expected = bytes(argmax_rollout(model, codec, list(prompt), n))
    assert sample(model, codec, prompt, max_bytes=n, temperature=0) == expected


def test_seed_reproducible(byte_model):
    model, codec = byte_model
    kw = dict(max_bytes=50, temperature=1.0, end_at_separator=False)  # the length must not hang on luck
    a = sample(model, codec, b"ab", seed=7, **kw)
    b = sample(model, codec, b"ab", seed=7, **kw)
    c = sample(model, codec, b"ab", seed=8, **kw)
    assert a == b and len(a) == 50
    assert a != c


def test_max_bytes(byte_model):
    model, codec = byte_model
    assert sample(model, codec, max_bytes=0) == b""
    assert len(sample(model, codec, max_bytes=17, seed=1)) == 17


def test_stop_string_ends_before_it(byte_model):
    model, codec = byte_model
    full = sample(model, codec, b"x", max_bytes=60, temperature=1.0, seed=6)
    assert len(full) == 60
    stop = full[20:23]
    first = full.find(stop)
    assert sample(model, codec, b"x", max_bytes=60, temperature=1.0, seed=6, stop=stop) == full[:first]
    # A stop string never produced: the whole output, nothing held back.
    assert sample(model, codec, b"x", max_bytes=60, temperature=1.0, seed=6, stop=full + b"!") == full


def test_longest_prefix_suffix():
    assert _longest_prefix_suffix(b"abcXY", b"XYZ") == 2
    assert _longest_prefix_suffix(b"abc", b"XYZ") == 0
    assert _longest_prefix_suffix(b"aaa", b"aab") == 2


def test_top_k_and_top_p_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 3.0, 2.0, 1.0, -1.0])
    greedy = SamplingOptions(temperature=0)
    assert next_token(logits, greedy, g) == 1
    top2 = SamplingOptions(temperature=5.0, top_k=2)
    assert {next_token(logits, top2, g) for _ in range(200)} == {1, 2}
    probs = torch.softmax(logits, -1)  # 1: 0.64, 2: 0.24, 3: 0.09, ...
    nucleus = SamplingOptions(temperature=1.0, top_p=float(probs[1] + probs[2]) - 1e-3)
    assert {next_token(logits, nucleus, g) for _ in range(200)} == {1, 2}
    assert {next_token(logits, SamplingOptions(top_p=1e-6), g) for _ in range(20)} == {1}


def test_top_k_one_is_greedy(byte_model):
    model, codec = byte_model
    greedy = sample(model, codec, b"q", max_bytes=30, temperature=0)
    assert sample(model, codec, b"q", max_bytes=30, temperature=2.0, top_k=1, seed=9) == greedy


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(temperature=-1.0), "temperature -1.0:"),
        (dict(temperature=float("nan")), "temperature nan:"),
        (dict(temperature=1e6), "temperature 1000000.0:"),
        (dict(top_k=-1), "top_k -1:"),
        (dict(top_p=0.0), "top_p 0.0:"),
        (dict(top_p=1.5), "top_p 1.5:"),
        (dict(max_bytes=-1), "max_bytes -1:"),
        (dict(max_bytes=10**12), "max_bytes 1000000000000:"),
        (dict(seed=-3), "seed -3:"),
        (dict(stop=b""), "stop:"),
    ],
)
def test_bad_options(byte_model, options, name):
    """The error names the argument and its value (not a command-line flag) and is keyed by it."""
    model, codec = byte_model
    with pytest.raises(OmUserError) as info:
        generate(model, codec, b"", **options)  # raised at the call, before any output
    assert str(info.value).startswith(name) and "--" not in str(info.value)
    assert info.value.keys == tuple(options)


def test_chars_model_outputs_utf8_and_rejects_bad_prompt():
    codec = chars_codec()
    model = model_for(codec, seed=1)
    out = sample(model, codec, "café".encode(), max_bytes=80, seed=2)
    out.decode("utf-8")  # complete, valid UTF-8
    assert len(out) <= 80
    prompt = list(codec.encode("naïve".encode()))
    rollout = argmax_rollout(model, codec, prompt, 30)
    expected = codec.decode(np.array(rollout, dtype=np.int64))
    got = sample(model, codec, "naïve".encode(), max_bytes=len(expected), temperature=0)
    assert got == expected and len(rollout) > 0
    with pytest.raises(OmUserError, match="prompt: invalid UTF-8 at byte offset 1"):
        generate(model, codec, b"a\xffb")


def test_decoder_holds_back_unfinished_utf8():
    class Pieces:  # a SentencePiece-like codec whose ids are single bytes (byte fallback pieces)
        name = "sentencepiece"

        def decode(self, ids):
            return bytes(int(i) for i in ids)

    decoder = TokenDecoder(Pieces())
    euro = "€".encode()  # 3 bytes
    assert [decoder.push(b) for b in euro] == [b"", b"", euro]
    assert decoder.push(0xE2) == b"" and decoder.flush() == "\ufffd".encode()


def test_cost_per_token_does_not_grow(byte_model, monkeypatch):
    """Generating byte t costs the same attention as byte t - 10 L: at most 1 + S query rows over at
    most 2S + L key rows per pass and layer (write rows included), however long the stream; and the
    state has the same size after 2 and after 20 segments. Counted, not timed."""
    import torch.nn.functional as F

    from om.sampling import generate_ids

    model, codec = byte_model
    L, S = model.config.segment_len, model.config.state_len
    sizes = []
    for n in (2 * L + 3, 20 * L + 3):
        ids = np.array([codec.doc_sep_id] + [65] * n)
        with torch.no_grad():
            _, state = model(torch.from_numpy(ids)[None], None)
        sizes.append(state.num_bytes())
    assert sizes[0] == sizes[1]

    calls = []  # (query rows, key rows) of every attention call, in ARC.extend or the incremental decoder
    attention = F.scaled_dot_product_attention

    def counted(q, k, *args, **kwargs):
        calls.append((q.shape[-2], k.shape[-2]))
        return attention(q, k, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    tokens = generate_ids(model, codec, np.zeros(0, dtype=np.int64), SamplingOptions(temperature=0), end_at_separator=False)
    per_token = []
    for _ in range(20 * L):
        calls.clear()
        next(tokens)  # runs the model on the previous token only
        per_token.append(list(calls))
    per_call = model.config.n_layers * model.config.n_passes
    assert all(len(c) == per_call for c in per_token)
    assert max(q for c in per_token for q, _ in c) <= 1 + S
    assert max(k for c in per_token for _, k in c) <= 2 * S + L
    assert per_token[L : 2 * L] == per_token[19 * L : 20 * L]  # the same pattern 18 segments later


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (0.9, 40, 0.95)])
def test_next_tokens_draws_what_multinomial_draws(temperature, top_k, top_p):
    """The batched draw gives, row for row, the ids torch.multinomial gives with the same generators."""
    from om.sampling import next_tokens

    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = torch.randn(6, 257, generator=torch.Generator().manual_seed(1)) * 3
    logits[:, 256] = float("-inf")
    for round_ in range(20):
        batched = next_tokens(logits, options, [torch.Generator().manual_seed(100 * round_ + r) for r in range(6)])
        expected = []
        for r in range(6):
            scaled = logits[r] / temperature
            if top_k:
                scaled = scaled.masked_fill(scaled < torch.topk(scaled, top_k).values[-1], float("-inf"))
            probs = torch.softmax(scaled, dim=-1)
            if top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                sorted_probs = sorted_probs.masked_fill(torch.cumsum(sorted_probs, -1) - sorted_probs >= top_p, 0.0)
                probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
            expected.append(int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(100 * round_ + r))))
        assert batched == expected
    assert len(set(batched)) > 1


@pytest.mark.parametrize("vocab", [257, 320, 4160])
def test_noise_rows_are_one_draw_per_step(vocab):
    """NoiseRows draws many steps at once: the numbers must be each row's generator drawn one step at
    a time (the property that keeps --num-samples and seeded runs the same bytes), also across a
    block boundary and after rows leave."""
    from om.sampling import NoiseRows

    seeds = [3, 11, 12]
    noise = NoiseRows([torch.Generator().manual_seed(s) for s in seeds], steps=5)
    singles = [torch.Generator().manual_seed(s) for s in seeds]
    live = [0, 1, 2]
    for step in range(13):
        if step == 7:
            live = [0, 2]
            noise.select([0, 2])
        got = noise.next(vocab)
        assert got.shape == (len(live), vocab)
        for row, r in enumerate(live):
            assert torch.equal(got[row], torch.empty(vocab).exponential_(1, generator=singles[r]))


def test_rows_that_end_early_leave_the_batch_and_the_rest_run_on(byte_model):
    """generate_many: once a row has stopped, the surviving rows keep their own inputs, state and
    noise (a mix-up of rows after the batch shrinks changes what they generate). Temperature 0.5:
    at 1 this random model's draws hardly depend on its input, so a mix-up of inputs went unseen."""
    model, codec = byte_model
    kw = dict(max_bytes=40, temperature=0.5, end_at_separator=False)
    alone = [sample(model, codec, b"ab", seed=11 + i, **kw) for i in range(5)]
    stop = alone[0][6:7]  # row 0 stops within its first 7 bytes
    expected = [a[: a.find(stop)] if stop in a else a for a in alone]
    survivors = [e for e in expected if len(e) > len(expected[0])]
    assert len(survivors) >= 2 and len(set(survivors)) == len(survivors)  # the case this test is about
    rows = generate_many(model, codec, b"ab", num_samples=5, seed=11, stop=stop, **kw)
    assert [r.data for r in rows] == expected
