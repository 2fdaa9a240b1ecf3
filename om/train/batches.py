"""Deterministic training batches: contiguous windows of the train split chosen from (seed, step).

A resumed run asks for the same (step, micro) and gets the same tokens, so it sees exactly the
batches the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from om.errors import OmUserError


@dataclass
class Batch:
    """inputs, targets: (B, T) int64; starts: (B,) window starts in the split; reset: (B,) bool,
    rows whose carried state must restart from the initial state (carry mode; all True in reset mode)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    starts: np.ndarray
    reset: np.ndarray


class BatchSampler:
    """Windows of `seq_len + 1` tokens from a 1-D token sequence: a numpy array or memmap, or a
    `BytesSplit` (anything with `len()` whose `[a:b]` is an ndarray).

    mode "reset": every (step, micro) draws `batch_size` random window starts from
    PCG64([seed, step, micro]). mode "carry": there are `batch_size * grad_accum` streams; stream r
    starts at an evenly spaced position and advances by `seq_len` every step, wrapping around the
    split (its state restarts at a wrap).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, grad_accum: int, seed: int, mode: str):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.grad_accum, self.seed, self.mode = grad_accum, seed, mode
        n = len(tokens)
        # Number of valid window starts: a window needs seq_len + 1 tokens.
        self.span = n - seq_len
        if self.span < 1:
            raise OmUserError(
                f"the train split has {n} tokens, fewer than one sample of {seq_len + 1} "
                "(segments_per_sample * segment_len + 1); use more data or shorter samples"
            )
        streams = batch_size * grad_accum
        shift = int(np.random.Generator(np.random.PCG64([seed, 2**32 - 1])).integers(0, self.span))
        self.stream_starts = (np.arange(streams, dtype=np.int64) * (self.span // streams) + shift) % self.span

    def positions(self, step: int, micro: int) -> tuple[np.ndarray, np.ndarray]:
        """(window starts, reset flags) of the rows of micro batch `micro` at `step`."""
        B = self.batch_size
        if self.mode == "reset":
            rng = np.random.Generator(np.random.PCG64([self.seed, step, micro]))
            return rng.integers(0, self.span, size=B, dtype=np.int64), np.ones(B, dtype=bool)
        base = self.stream_starts[micro * B : (micro + 1) * B]
        now = base + step * self.seq_len
        reset = np.ones(B, dtype=bool) if step == 0 else (now // self.span) != ((now - self.seq_len) // self.span)
        return now % self.span, reset

    def batch(self, step: int, micro: int) -> Batch:
        starts, reset = self.positions(step, micro)
        T = self.seq_len
        rows = np.stack([np.asarray(self.tokens[s : s + T + 1]) for s in starts]).astype(np.int64)
        window = torch.from_numpy(rows)
        return Batch(window[:, :-1], window[:, 1:], starts, reset)


def byte_count(codec, targets: torch.Tensor) -> int:
    """Original bytes a batch's target ids stand for (special ids count 0)."""
    return int(codec.byte_count(targets.reshape(-1).cpu().numpy()))
