"""A plain pre-norm byte Transformer with a fixed context: the baseline Om is measured against.

Same building blocks as an Om layer without the state and multi-pass memory: token + learned
position embeddings, N x (LayerNorm -> causal multi-head attention -> residual, LayerNorm -> GELU
MLP -> residual), LayerNorm, tied head. It sees at most `context` bytes: evaluation slides a
window over the stream with stride context/2, so every scored byte has at least context/2 of
history (the first window scores all of its bytes).

With `ngram_sizes`, each byte's embedding also gains Om's hashed n-gram embeddings
(`om.model.ngram`), so that Om with them is compared with a baseline that has them too; a training
window's first bytes hash with "before the stream" as their older ids, as a window scored in
`stream_nll` does not (it passes the bytes before it).

With `patch_size` P > 1 it is patched the way patched Om is (`om.model.patching`, Om's own patch
encoder and local decoder): a dense causal convolution of width P over the bytes, each P bytes one
trunk position (the blocks run over context / P patches, each with a learned position), and the
prediction at byte t from the local decoder reading the trunk's output after the last patch
complete at t plus the convolution's feature of t. A window's patches start at its first byte.

`PlainTransformer(vocab_size, dim, n_layers, n_heads, context, mlp_ratio, ngram_sizes, ngram_buckets,
patch_size, decoder_layers, dropout)`: forward(tokens (B, T <= context), tail (B, max(ngram_sizes) - 1)
or None) -> logits (B, T, vocab_size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from om.model.config import OmConfig
from om.model.ngram import HashedNgramEmbedding
from om.model.patching import PatchCodec
from om.model.stem import CausalConvStem


class Block(nn.Module):
    """Pre-norm attention + MLP: x (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        hidden = int(round(dim * mlp_ratio))
        self.mlp_in, self.mlp_out = nn.Linear(dim, hidden, bias=False), nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp_out(F.gelu(self.mlp_in(self.norm2(x))))


class PlainTransformer(nn.Module):
    """tokens (B, T) int64 with T <= context, and with n-grams the ids before them (B, max(n) - 1)
    (-1 before the stream; None: all -1) -> logits (B, T, vocab_size)."""

    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_heads: int, context: int, mlp_ratio: float = 4.0,
                 ngram_sizes: list[int] = (), ngram_buckets: int = 8192, patch_size: int = 1, decoder_layers: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if context % patch_size:
            raise ValueError(f"context {context} is not a multiple of patch_size {patch_size}")
        self.vocab_size, self.context, self.patch_size = vocab_size, context, patch_size
        padded = (vocab_size + 63) // 64 * 64
        self.embed = nn.Embedding(padded, dim)
        self.ngram = HashedNgramEmbedding(dim, list(ngram_sizes), ngram_buckets) if ngram_sizes else None
        self.positions = nn.Embedding(context // patch_size, dim)
        self.stem = self.patch = None
        if patch_size > 1:
            self.stem = CausalConvStem(dim, [patch_size])
            self.patch = PatchCodec(OmConfig(dim=dim, n_heads=n_heads, patch_size=patch_size, stem_kernels=[patch_size],
                                             decoder_layers=decoder_layers, mlp_ratio=mlp_ratio, dropout=dropout,
                                             vocab_size=vocab_size))
        self.blocks = nn.ModuleList(Block(dim, n_heads, mlp_ratio) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, padded, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.blocks:
            for proj in (block.proj, block.mlp_out):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n_layers))
        self.head.weight = self.embed.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: Tensor, tail: Tensor | None = None) -> Tensor:
        B, T = tokens.shape
        x = self.embed(tokens)
        if self.ngram is not None:
            x = x + self.ngram(tokens, self.ngram.initial_tail(B, tokens.device) if tail is None else tail)[0]
        if self.patch is None:
            x = x + self.positions(torch.arange(T, device=tokens.device))
            for block in self.blocks:
                x = block(x)
        else:
            x = self._patched(x)
        return self.head(self.norm(x))[..., : self.vocab_size]

    def _patched(self, x: Tensor) -> Tensor:
        """Embeddings x (B, T, D) -> the local decoder's features (B, T, D); see the module docstring."""
        B, T, D = x.shape
        P = self.patch_size
        x, _ = self.stem(x, x.new_zeros(B, P - 1, D))
        n = T // P  # complete patches (the last window of a stream may end mid-patch)
        o = self.patch.encode(x[:, : n * P]) + self.positions(torch.arange(n, device=x.device))
        for block in self.blocks:
            o = block(o)
        contexts = torch.cat((self.patch.start.expand(B, 1, -1), self.patch.context(o)), dim=1)  # (B, n + 1, D)
        # the prediction at byte t reads context (t + 1) // P for phase (t + 1) % P: flat index t + 1
        return self.patch.decode(x, self.patch.conditions(contexts).flatten(1, 2)[:, 1 : T + 1])

    def loss(self, tokens: Tensor, targets: Tensor, state=None):
        """Same signature as `OmLLM.loss`, so one training loop serves both."""
        logits = self(tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()), None

    @torch.inference_mode()
    def stream_nll(self, ids: Tensor) -> float:
        """Total NLL in nats of ids[1:] given the past, sliding a window with stride context/2."""
        n, stride, total = ids.numel(), max(1, self.context // 2), 0.0
        scored_to = 1  # next target index to score
        start = 0
        while scored_to < n:
            end = min(start + self.context + 1, n)
            window = ids[start:end].unsqueeze(0)
            tail = None
            if self.ngram is not None:  # the ids before the window, -1 before the stream
                before = ids[max(0, start - self.ngram.tail_len) : start]
                tail = torch.cat((torch.full((self.ngram.tail_len - before.numel(),), -1), before)).unsqueeze(0)
            logp = torch.log_softmax(self(window[:, :-1], tail).float(), dim=-1)
            targets = window[:, 1:]
            nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[0]
            first_new = scored_to - (start + 1)
            total += float(nll[first_new:].sum())
            scored_to = end
            if end == n:
                break
            start += stride
        return total
