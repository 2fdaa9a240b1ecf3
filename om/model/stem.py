"""Causal convolutional stem: parallel 1-D convolutions over the embedded stream."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CausalConvStem(nn.Module):
    """Adds causal n-gram features to token embeddings: y = x + sum_k conv_k(x).

    Output position t depends on inputs t-k+1..t only. To continue a stream exactly, the last
    max(k) - 1 inputs of the previous chunk (the `tail`, zeros at the start of a stream) are
    prepended. `groups` as in `nn.Conv1d`: 1 is dense, `dim` depthwise.

    `forward(x, tail) -> (y, next_tail)`: x (B, T, D), tail (B, max(k)-1, D) -> y (B, T, D),
    next_tail (B, max(k)-1, D).
    """

    def __init__(self, dim: int, kernels: list[int], groups: int = 1):
        super().__init__()
        self.kernels = list(kernels)
        self.tail_len = max(self.kernels, default=1) - 1
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, k, groups=groups, bias=True) for k in self.kernels)

    def forward(self, x: Tensor, tail: Tensor) -> tuple[Tensor, Tensor]:
        if not self.kernels:
            return x, tail
        padded = torch.cat((tail.to(x.dtype), x), dim=1)  # (B, tail + T, D)
        channels_first = padded.transpose(1, 2)
        y = x
        for k, conv in zip(self.kernels, self.convs):
            start = self.tail_len - (k - 1)
            y = y + conv(channels_first[:, :, start:]).transpose(1, 2)
        next_tail = padded[:, padded.shape[1] - self.tail_len :] if self.tail_len else tail
        return y, next_tail
