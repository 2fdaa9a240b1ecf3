"""Learning-rate schedule: linear warmup, then cosine decay to min_lr over the training budget."""

from __future__ import annotations

import math


def budget_progress(
    step: int,
    bytes_seen: int,
    elapsed_s: float,
    max_steps: int | None,
    max_bytes: int | None,
    max_minutes: float | None,
    warmup_steps: int = 0,
) -> float:
    """Fraction of the decay phase done, in [0, 1]: the largest over the given stop rules.

    Steps count from the end of warmup; bytes and minutes count from the start. A wall-clock budget
    makes the schedule depend on speed, so only step/byte budgets give reproducible runs.
    """
    fractions = [0.0]
    if max_steps is not None:
        fractions.append((step - warmup_steps) / max(1, max_steps - warmup_steps))
    if max_bytes is not None:
        fractions.append(bytes_seen / max_bytes)
    if max_minutes is not None:
        fractions.append(elapsed_s / (60.0 * max_minutes))
    return min(1.0, max(fractions))


def learning_rate(step: int, progress: float, lr: float, min_lr: float, warmup_steps: int, decay: str = "cosine") -> float:
    """The learning rate of optimizer step `step` (0-based) at budget `progress` in [0, 1]."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant":
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
