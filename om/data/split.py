"""The train/validation split: whole documents when possible, else the tail of the stream.

Whole documents: documents are ordered by the sha256 of their key (path inside the input folder)
and taken into validation, skipping any that would overshoot, until they hold `val_fraction` of the
bytes. That needs every size up front (no stdin or pipe among the inputs), at least two non-empty
documents, and a selection within 50% of the target with something left for training; otherwise
the last `val_fraction` of the byte stream (cut at a token boundary) is the validation split. The
choice depends only on keys, sizes and the fraction, never on the codec, so every codec validates
on the same bytes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from om.data.sources import Source
from om.errors import OmUserError

TOLERANCE = 0.5


def check_val_fraction(val_fraction) -> float:
    """`val_fraction` as a float in [0, 1), else an `OmUserError` about the `val_fraction` argument."""
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        raise OmUserError(f"val_fraction {val_fraction!r} is not a number", key="val_fraction") from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise OmUserError(f"val_fraction {val_fraction} is not in [0, 1)", key="val_fraction")
    return value


@dataclass
class SplitPlan:
    """method: "documents" (`val` holds source indices), "tail" (cut the stream) or "none"."""

    method: str
    val_fraction: float
    val: set[int] = field(default_factory=set)

    def split_of(self, index: int) -> str:
        return "val" if index in self.val else "train"


def plan_split(sources: list[Source], val_fraction: float) -> SplitPlan:
    if val_fraction == 0.0:
        return SplitPlan("none", val_fraction)
    if any(s.stream for s in sources):
        return SplitPlan("tail", val_fraction)
    sizes = [s.size or 0 for s in sources]
    total = sum(sizes)
    if sum(1 for n in sizes if n) < 2:
        return SplitPlan("tail", val_fraction)
    target = val_fraction * total
    order = sorted(
        (i for i, n in enumerate(sizes) if n),
        key=lambda i: (hashlib.sha256(sources[i].key.encode("utf-8", "surrogateescape")).digest(), i),
    )
    val: set[int] = set()
    taken = 0
    for i in order:
        if taken >= target:
            break
        if taken + sizes[i] <= target * (1 + TOLERANCE):
            val.add(i)
            taken += sizes[i]
    if taken < target * (1 - TOLERANCE) or taken >= total:
        return SplitPlan("tail", val_fraction)
    return SplitPlan("documents", val_fraction, val)


def tail_cut(total_bytes: int, val_fraction: float) -> int:
    """Stream byte offset where validation starts: the last `val_fraction` of the bytes.

    With a positive fraction and at least 2 bytes, both sides get at least one byte.
    """
    cut = total_bytes - round(val_fraction * total_bytes)
    if val_fraction > 0 and total_bytes >= 2:
        cut = min(max(cut, 1), total_bytes - 1)
    return cut
