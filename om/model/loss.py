"""The one next-token loss: cross-entropy of logits against target ids, computed in float32."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def next_token_loss(logits: Tensor, targets: Tensor, reduction: Literal["mean", "sum", "none"] = "mean") -> Tensor:
    """Cross-entropy in nats of `logits` (..., V) against `targets` (...) int64.

    Logits are upcast to float32 first, so bf16 autocast and fp32 give the same definition.
    reduction "mean" / "sum" -> scalar; "none" -> the per-token losses, shaped like `targets`.
    Training (compiled or not), `OmLLM.loss` and every evaluator call this.
    """
    nll = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction=reduction)
    return nll.view(targets.shape) if reduction == "none" else nll
