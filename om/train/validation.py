"""Validation bits per byte: a bounded slice of the val split streamed through the model."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from om.train.batches import eval_windows


def byte_count(codec, targets: torch.Tensor) -> int:
    """Original bytes the target ids stand for (special ids count 0)."""
    return int(codec.byte_count(targets.reshape(-1).cpu().numpy()))


def tokens_for_bytes(codec, tokens: np.ndarray, n_bytes: int) -> int:
    """The fewest leading tokens of `tokens` that cover at least `n_bytes` original bytes (all of
    them if they cover fewer), so codecs can be evaluated on the same text."""
    lo, hi = 1, len(tokens)
    if hi == 0 or codec.byte_count(tokens[:hi]) <= n_bytes:
        return hi
    while lo < hi:  # byte_count of a prefix grows with its length: binary search
        mid = (lo + hi) // 2
        if codec.byte_count(tokens[:mid]) >= n_bytes:
            hi = mid
        else:
            lo = mid + 1
    return lo


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model, codec, val_tokens: np.ndarray, max_tokens: int, rows: int, device: torch.device, precision: str = "fp32") -> dict:
    """Stream the first `max_tokens` val tokens (as `rows` contiguous streams, each read from its
    start with the state carried across chunks) and return val loss (nats/token) and bits/byte."""
    was_training = model.training
    model.eval()
    windows = eval_windows(val_tokens, max_tokens, rows)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    L = model.config.segment_len
    chunk = L * max(1, 1024 // L)
    nats, state = 0.0, None
    for a in range(0, inputs.shape[1], chunk):
        x = inputs[:, a : a + chunk].to(device)
        y = targets[:, a : a + chunk].to(device)
        with autocast(device, precision):
            logits, state = model(x, state)
        nats += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
    model.train(was_training)
    n_tokens = targets.numel()
    n_bytes = byte_count(codec, targets)
    return {
        "val_loss": nats / n_tokens,
        "val_bpb": nats / math.log(2) / max(1, n_bytes),
        "val_tokens": n_tokens,
        "val_bytes": n_bytes,
    }
