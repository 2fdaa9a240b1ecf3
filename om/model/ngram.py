"""Hashed n-gram embeddings: a learned vector for each n-gram of tokens ending at a position.

The embedding of one token says nothing of its neighbours, and the convolutional stem only mixes
neighbouring embeddings linearly, so "the n-gram ending here is ' the'" must be worked out by the
layers, once per byte. A hashed n-gram embedding (as BLT's byte encoder has) looks it up instead:
for each size n it hashes the last n token ids into one of `buckets` rows of a table of its own and
adds that row to the token's embedding. It costs a few integer operations and one gathered sum per
token, nothing that grows with the model's width squared.

The hash is part of a checkpoint's meaning (the tables are indexed by it), so it is fixed here and
never depends on the platform: over int64, with the ids shifted by one so that "before the stream"
(-1 in the tail) hashes as 0,

    h_1 = id_t + 1,  h_n = (h_{n-1} * MULTIPLIER + id_{t-n+1} + 1) mod MODULUS,
    row of size n = (h_n * MIXER mod MODULUS) mod buckets.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODULUS = 2**31 - 1  # prime
MULTIPLIER = 1_000_003
MIXER = 48_271


def ngram_rows(tokens: Tensor, tail: Tensor, sizes: list[int], buckets: int) -> Tensor:
    """tokens (B, T) int64 after tail (B, max(sizes) - 1) int64 (-1 before the stream) ->
    (B, T, len(sizes)) int64 rows of the stacked tables: size sizes[i] indexes rows i*buckets.. .

    h_n unrolled is sum_j (id_{t-j} + 1) * MULTIPLIER^(n-1-j) mod MODULUS, so all sizes come from
    each window of the last max(sizes) ids times a (max(sizes), len(sizes)) table of those powers,
    summed over the window (exact in int64 while max(sizes) * (vocab + 1) < 2^32, which OmConfig
    checks). A product and a sum, not a matmul: CUDA has no integer matmul (pytorch/pytorch#44428)."""
    K = tail.shape[1] + 1
    windows = (torch.cat((tail, tokens), dim=1) + 1).unfold(1, K, 1)  # (B, T, K), oldest first
    powers, first_rows = _constants(tuple(sizes), K, buckets, tokens.device)
    hashes = (windows.unsqueeze(-1) * powers).sum(-2)  # (B, T, len(sizes))
    return hashes % MODULUS * MIXER % MODULUS % buckets + first_rows


def ngram_rows_by_matmul(window: Tensor, sizes: list[int], buckets: int) -> Tensor:
    """`ngram_rows` for one new token per row, CPU only: window (B, K) int64, each row's last K =
    max(sizes) ids, oldest first (-1 before the stream) -> (B, len(sizes)) rows. One int64 matmul
    (exact on CPU, as `ngram_rows` says; CUDA has none) and in-place arithmetic: 7 ops, not 11."""
    powers, first_rows = _constants(tuple(sizes), window.shape[1], buckets, window.device)
    hashes = torch.mm(window + 1, powers)
    return hashes.remainder_(MODULUS).mul_(MIXER).remainder_(MODULUS).remainder_(buckets).add_(first_rows)


def ngram_rows_stepped(tails: list[list[int]], tokens: list[int], sizes: list[int], buckets: int) -> list[list[int]]:
    """`ngram_rows` for one new token per row in Python integers: at batch 1 the dozen tensor ops
    of `ngram_rows` cost more than the arithmetic. sizes ascending (as `HashedNgramEmbedding` keeps
    them); tails[b]: the last max(sizes) - 1 ids of row b (-1 before the stream), moved on in place
    by tokens[b]; -> rows[b][i], as `ngram_rows` gives."""
    out = []
    for tail, token in zip(tails, tokens):
        tail.append(token)
        h, n, rows = 0, 0, []
        for i, size in enumerate(sizes):  # sizes ascending: h_n grows one older id at a time
            while n < size:
                n += 1
                h = (h * MULTIPLIER + tail[-n] + 1) % MODULUS
            rows.append(h * MIXER % MODULUS % buckets + i * buckets)
        del tail[0]
        out.append(rows)
    return out


@functools.lru_cache(maxsize=64)
def _constants(sizes: tuple[int, ...], K: int, buckets: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(K, len(sizes)) int64 powers, [K-1-j, i] = MULTIPLIER^(sizes[i]-1-j) mod MODULUS for j < sizes[i]
    else 0, and (len(sizes),) the first row of each size's table, i * buckets: built once, not per token."""
    powers = torch.zeros(K, len(sizes), dtype=torch.int64)
    for i, n in enumerate(sizes):
        for j in range(n):
            powers[K - 1 - j, i] = pow(MULTIPLIER, n - 1 - j, MODULUS)
    return powers.to(device), torch.arange(len(sizes), device=device) * buckets


class HashedNgramEmbedding(nn.Module):
    """The summed n-gram vectors of each position: one table of `buckets` rows of width `dim` per size.

    `forward(tokens, tail) -> (x, next_tail)`: tokens (B, T) int64, tail (B, max(sizes) - 1) int64, the
    ids read before them (-1 before the stream starts) -> x (B, T, dim), next_tail (B, max(sizes) - 1).
    Position t depends on ids t - max(sizes) + 1 .. t only.
    """

    def __init__(self, dim: int, sizes: list[int], buckets: int):
        super().__init__()
        self.sizes, self.buckets = sorted(sizes), buckets
        self.tail_len = max(self.sizes) - 1
        self.table = nn.Embedding(len(self.sizes) * buckets, dim)

    def initial_tail(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        return torch.full((batch_size, self.tail_len), -1, dtype=torch.int64, device=device)

    def forward(self, tokens: Tensor, tail: Tensor) -> tuple[Tensor, Tensor]:
        B, T = tokens.shape
        rows = ngram_rows(tokens, tail, self.sizes, self.buckets)
        x = F.embedding_bag(rows.view(B * T, -1), self.table.weight, mode="sum").view(B, T, -1)
        next_tail = torch.cat((tail, tokens), dim=1)[:, T:] if self.tail_len else tail
        return x, next_tail
