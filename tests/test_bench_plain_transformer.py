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

