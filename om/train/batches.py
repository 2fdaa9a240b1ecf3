"""Deterministic training batches: contiguous windows of the train split chosen from (seed, step).

A resumed run asks for the same (step, micro) and gets the same tokens, so it sees exactly the
batches the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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


class LengthSchedule:
    """Tokens per sample by step: `entries` are (first step, tokens) pairs, the first at step 0 and
    the steps increasing (`train.curriculum` times segment_len); an int is one length for every step.

    `at(step)` is the sample length of `step`; `before(step)` the tokens one row has read before
    `step` (the sum of `at(s)` for s < step), in closed form, so a stream's position at any step is
    known without replaying the earlier ones.
    """

    def __init__(self, entries: "int | Sequence[tuple[int, int]]"):
        if isinstance(entries, (int, np.integer)):
            entries = [(0, int(entries))]
        self.entries = [(int(s), int(n)) for s, n in entries]
        if not self.entries or self.entries[0][0] != 0:
            raise ValueError("a length schedule starts at step 0")
        if any(b[0] <= a[0] for a, b in zip(self.entries, self.entries[1:])) or any(n < 1 for _, n in self.entries):
            raise ValueError(f"a length schedule needs increasing steps and positive lengths, got {self.entries}")

    @property
    def longest(self) -> int:
        return max(n for _, n in self.entries)

    @property
    def shortest(self) -> int:
        return min(n for _, n in self.entries)

    def at(self, step: int) -> int:
        length = self.entries[0][1]
        for first, n in self.entries:
            if first > step:
                break
            length = n
        return length

    def before(self, step: int) -> int:
        total = 0
        for i, (first, n) in enumerate(self.entries):
            if first >= step:
                break
            end = self.entries[i + 1][0] if i + 1 < len(self.entries) else step
            total += n * (min(step, end) - first)
        return total


class BatchSampler:
    """Windows of `seq_len + 1` tokens from a 1-D token sequence: a numpy array or memmap, or a
    `BytesSplit` (anything with `len()` whose `[a:b]` is an ndarray). `seq_len` is one length, or
    a schedule of lengths by step (a `LengthSchedule` or its (first step, tokens) pairs: samples of
    `train.curriculum`).

    mode "reset": every (step, micro) draws `batch_size` random window starts from
    PCG64([seed, step, micro]) (any start a window of that step's length fits). mode "carry":
    there are `batch_size * grad_accum` streams; stream r starts at an evenly spaced position and
    advances by the step's sample length every step (so it is at its start plus the tokens of all
    earlier steps), wrapping around the first `span` = tokens - longest sample positions of the
    split (its state restarts at a wrap).
    """

    def __init__(self, tokens: np.ndarray, seq_len, batch_size: int, grad_accum: int, seed: int, mode: str):
        self.schedule = seq_len if isinstance(seq_len, LengthSchedule) else LengthSchedule(seq_len)
        self.tokens, self.batch_size = tokens, batch_size
        self.seq_len = self.schedule.longest  # the longest sample
        self.grad_accum, self.seed, self.mode = grad_accum, seed, mode
        n = len(tokens)
        # Number of valid window starts: a window needs seq_len + 1 tokens.
        self.span = n - self.seq_len
        if self.span < 1:
            longest = " of the longest" if len(self.schedule.entries) > 1 else ""
            raise OmUserError(
                f"the train split has {n} tokens, fewer than one sample{longest} of {self.seq_len + 1} "
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
            span = len(self.tokens) - self.schedule.at(step)
            return rng.integers(0, span, size=B, dtype=np.int64), np.ones(B, dtype=bool)
        base = self.stream_starts[micro * B : (micro + 1) * B]
        now = base + self.schedule.before(step)
        if step == 0:
            return now % self.span, np.ones(B, dtype=bool)
        previous = now - self.schedule.at(step - 1)  # where the row's previous window started
        return now % self.span, (now // self.span) != (previous // self.span)

    def batch(self, step: int, micro: int) -> Batch:
        starts, reset = self.positions(step, micro)
        T = self.schedule.at(step)
        rows = np.stack([np.asarray(self.tokens[s : s + T + 1]) for s in starts]).astype(np.int64)
        window = torch.from_numpy(rows)
        return Batch(window[:, :-1], window[:, 1:], starts, reset)


def byte_count(codec, targets: torch.Tensor) -> int:
    """Original bytes a batch's target ids stand for (special ids count 0)."""
    return int(codec.byte_count(targets.reshape(-1).cpu().numpy()))
