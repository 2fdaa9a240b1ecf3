"""Causal convolutional stem: parallel 1-D convolutions over the embedded stream."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalConvStem(nn.Module):
    """Adds causal n-gram features to token embeddings: y = x + sum_k conv_k(x).

    Output position t depends on inputs t-k+1..t only. To continue a stream exactly, the last
    max(k) - 1 inputs of the previous chunk (the `tail`, zeros at the start of a stream) are
    prepended. `groups` as in `nn.Conv1d`: 1 is dense, `dim` depthwise.

    `forward(x, tail) -> (y, next_tail)`: x (B, T, D), tail (B, max(k)-1, D) -> y (B, T, D),
    next_tail (B, max(k)-1, D).

    The convolutions hold the weights, but the stem runs as one convolution of width max(k) (a sum of
    causal convolutions is one, its weights summed by lag): per lag one (D, D) matmul, or for a
    depthwise stem one elementwise product, over the input shifted by that lag. Kernels [2, 3, 4]
    thus cost 4 products per position rather than 9, and no Conv1d runs (its CPU kernel needs
    contiguous channels-first copies of the input, and torch.compile's CPU backend crashed on it).
    """

    def __init__(self, dim: int, kernels: list[int], groups: int = 1):
        super().__init__()
        self.kernels = list(kernels)
        self.tail_len = max(self.kernels, default=1) - 1
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, k, groups=groups, bias=True) for k in self.kernels)

    def lag_weights(self) -> tuple[Tensor, Tensor]:
        """The stem as one convolution: (max(k), D_in, D_out) weights, [j] acting on the input j
        positions back (as `x @ W[j]`; block-diagonal for grouped convolutions), and the summed biases (D,)."""
        K, weight, bias = max(self.kernels), 0, 0
        for k, conv in zip(self.kernels, self.convs):
            w = conv.weight  # (D_out, D_in / groups, k), tap i reading the input k-1-i back
            if conv.groups > 1:  # block-diagonal (D_out, D_in, k)
                per = w.shape[0] // conv.groups
                dense = w.new_zeros(w.shape[0], w.shape[0], k)
                for g in range(conv.groups):
                    dense[g * per : (g + 1) * per, g * per : (g + 1) * per] = w[g * per : (g + 1) * per]
                w = dense
            by_lag = w.flip(-1).permute(2, 1, 0)  # (k, D_in, D_out)
            weight = weight + F.pad(by_lag, (0, 0, 0, 0, 0, K - k))
            bias = bias + conv.bias
        return weight, bias

    def forward(self, x: Tensor, tail: Tensor) -> tuple[Tensor, Tensor]:
        if not self.kernels:
            return x, tail
        padded = torch.cat((tail.to(x.dtype), x), dim=1)  # (B, tail + T, D)
        K, T = self.tail_len + 1, x.shape[1]
        depthwise = all(conv.groups == conv.weight.shape[0] > 1 for conv in self.convs)
        y = x
        if depthwise:
            taps = sum(F.pad(conv.weight[:, 0].flip(-1), (0, K - k)) for k, conv in zip(self.kernels, self.convs))  # (D, K)
            for j in range(K):
                y = y + padded[:, K - 1 - j : K - 1 - j + T] * taps[:, j]
            y = y + sum(conv.bias for conv in self.convs)
        else:
            weight, bias = self.lag_weights()
            y = (x + bias).flatten(0, 1)
            for j in range(K):  # accumulated in place: addmm would copy y into a new tensor every lag
                y.addmm_(padded[:, K - 1 - j : K - 1 - j + T].reshape(-1, x.shape[-1]), weight[j])
            y = y.view_as(x)
        next_tail = padded[:, padded.shape[1] - self.tail_len :] if self.tail_len else tail
        return y, next_tail
