"""The plain Transformer baseline (bench/plain_transformer.py) with hashed n-gram embeddings."""

import torch

from bench.plain_transformer import PlainTransformer


def _model(**kwargs) -> PlainTransformer:
    torch.manual_seed(0)
    return PlainTransformer(vocab_size=40, dim=16, n_layers=2, n_heads=2, context=8, **kwargs).eval()


def test_with_ngrams_the_logits_at_t_depend_only_on_ids_up_to_t():
    model = _model(ngram_sizes=[2, 4], ngram_buckets=64)
    tokens = torch.randint(0, 40, (1, 8), generator=torch.Generator().manual_seed(1))
    tail = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        base = model(tokens, tail)
        for t in range(8):
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 40
            moved = (model(changed, tail) - base).abs().amax(-1)[0] > 0
            assert moved.tolist() == [i >= t for i in range(8)], t
        assert not torch.equal(model(tokens, torch.full((1, 3), -1)), base)  # the tail is read


def test_stream_nll_hashes_each_window_after_the_ids_before_it():
    """Windows slide with stride context/2: each one's n-grams see the bytes before it, -1 before the stream."""
    model = _model(ngram_sizes=[3, 4], ngram_buckets=64)
    ids = torch.randint(0, 40, (30,), generator=torch.Generator().manual_seed(2))
    calls, forward = [], model.forward

    def recording(tokens, tail=None):
        calls.append((tokens[0].tolist(), tail[0].tolist()))
        return forward(tokens, tail)

    model.forward = recording
    model.stream_nll(ids)
    assert len(calls) > 3
    stream = [-1, -1, -1] + ids.tolist()
    for window, tail in calls:
        start = next(s for s in range(len(ids)) if ids[s : s + len(window)].tolist() == window)
        assert tail == stream[start : start + 3], start



def test_patched_logits_at_t_depend_only_on_ids_up_to_t_and_windows_may_end_mid_patch():
    """Patched (P = 4) over a 16-byte context: a change at byte t moves the logits at t and after, never before,
    for whole windows and for one ending mid-patch (13 bytes); the trunk is read (an early change reaches past
    the convolution's reach of P bytes)."""
    torch.manual_seed(0)
    model = PlainTransformer(vocab_size=40, dim=16, n_layers=2, n_heads=2, context=16, ngram_sizes=[2, 3], ngram_buckets=64,
                             patch_size=4, decoder_layers=2).eval()
    for length in (16, 13):
        tokens = torch.randint(0, 40, (2, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            base = model(tokens)
            assert base.shape == (2, length, 40)
            for t in range(length):
                changed = tokens.clone()
                changed[:, t] = (changed[:, t] + 1) % 40
                moved = (model(changed) - base).abs().amax(-1)[0] > 0
                assert moved.tolist() == [i >= t for i in range(length)], (length, t)


def test_patched_trains_and_scores_a_stream():
    torch.manual_seed(0)
    model = PlainTransformer(vocab_size=40, dim=16, n_layers=1, n_heads=2, context=8, patch_size=4, decoder_layers=1)
    tokens = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(3))
    loss, _ = model.loss(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    nll = model.stream_nll(torch.randint(0, 40, (23,), generator=torch.Generator().manual_seed(4)))
    assert 0 < nll < 22 * 2 * torch.log(torch.tensor(40.0)).item()
