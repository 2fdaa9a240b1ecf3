"""Validation during training: a fixed slice of the val split scored by `om eval`'s own evaluator.

The slice is the first `train.eval_tokens` ids of the val split (or those covering
`train.eval_bytes` bytes), read as `train.eval_batch` contiguous streams side by side
(`om.evaluate.validation_slice`). Scoring goes through `om.evaluate.evaluate`, in float32 whatever
the training precision, so a checkpoint's logged val bits/byte is exactly what
`om eval CKPT --val-tokens N --val-streams R` prints for it.
"""

from __future__ import annotations

import numpy as np

from om.evaluate import evaluate, validation_slice


def tokens_for_bytes(codec, tokens: np.ndarray, n_bytes: int) -> int:
    """The fewest leading tokens of `tokens` that cover at least `n_bytes` original bytes (all of
    them if they cover fewer), so codecs can be evaluated on the same text."""
    from om.data.bytesplit import BytesSplit

    def prefix(n: int):  # a BytesSplit view is counted from its boundaries; a slice would be read
        return tokens.view(0, n) if isinstance(tokens, BytesSplit) else tokens[:n]

    lo, hi = 1, len(tokens)
    if hi == 0 or codec.byte_count(prefix(hi)) <= n_bytes:
        return hi
    while lo < hi:  # byte_count of a prefix grows with its length: binary search
        mid = (lo + hi) // 2
        if codec.byte_count(prefix(mid)) >= n_bytes:
            hi = mid
        else:
            lo = mid + 1
    return lo


def slice_tokens(train_section, codec, val_split: np.ndarray) -> int:
    """How many leading val ids the recipe's `train` section asks to evaluate."""
    t = train_section
    n = t.eval_tokens if t.eval_bytes is None else tokens_for_bytes(codec, val_split, t.eval_bytes)
    return min(int(n), len(val_split))


def validate(model, codec, val_split: np.ndarray, tokens: int, streams: int) -> dict:
    """Score the validation slice; returns the metrics record's val fields.

    val_loss: nats per token; val_bpb: bits per original byte; val_tokens, val_bytes: what was
    scored; val_slice: which slice ({"split", "tokens", "streams"}), so `om eval` can repeat it.
    """
    sources = validation_slice(val_split, "val", tokens, streams)
    total = evaluate(model, codec, sources, batch_size=len(sources)).total
    return {
        "val_loss": total.nll_nats / max(1, total.tokens),
        "val_bpb": total.bits_per_byte if total.bits_per_byte is not None else float("nan"),
        "val_tokens": total.tokens,
        "val_bytes": total.bytes,
        "val_slice": {"split": "val", "tokens": int(tokens), "streams": len(sources)},
    }
