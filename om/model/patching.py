"""Patching: the trunk runs once per patch of `patch_size` tokens, a small local decoder per token.

With `OmConfig.patch_size` P > 1, `OmLLM` reads tokens (bytes) through the embedding and the
causal stem as usual, then:

    stem features of tokens jP..jP+P-1 --encode--> patch j --ARC layers (over patches)--> o_j
    the prediction made at token t (of the token after it) --decode--> from
        the stem feature of t (it sees the bytes of the current patch so far, up to max(k) back),
        the trunk's output after the last patch completed at or before t (or a learned start
        context before the first one), projected for the phase (t + 1) mod P (bytes since that
        patch): one projection plus a vector per phase, or one projection per phase.

So the logits at t depend on tokens <= t only, and the trunk advances once every P tokens.

With `decoder_attention`, the decoder's first block is causal attention among the rows that read
the same context: the P predictions made at tokens kP-1 .. kP+P-2 (phases 0..P-1), so each sees the
bytes read since its context by attention, as MEGABYTE's local model does. A stream position's
earlier rows of that group are recomputed from the stem features kept in the state's patch tail
(`prior` rows), so streaming needs no more state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from om.model.config import OmConfig


class PatchCodec(nn.Module):
    """The patch encoder and the per-token decoder around a patched trunk.

    D is the byte-level width `dim`, W the trunk's `layer_dim` (`trunk_dim`, default D).
    `encode(x)`: x (B, n*P, D) stem features of n complete patches -> (B, n, W) trunk inputs.
    `context(o)`: trunk outputs (B, n, W) -> the contexts the decoder reads (B, n, W), normalised.
    `start` (W,): the context before the first patch of a stream is complete.
    `conditions(contexts)`: contexts (B, n, W) -> (B, n, P, D), what the decoder adds to a token's
    stem feature at each phase 0..P-1 after each context (computed once per patch, not per token).
    `decode(x, condition, prior)`: x (B, R, D) stem features, condition (B, R, D) per token (picked
    from `conditions` by context and phase) -> (B, R - prior, D) features for the final norm and head.
    With `decoder_attention` the rows start at a group's first row (phase 0) and the first `prior`
    of them only serve as keys and values (earlier rows of the current group); else prior is 0.
    """

    def __init__(self, config: OmConfig):
        super().__init__()
        c = config
        self.patch_size = P = c.patch_size
        W = c.layer_dim
        self.encoder = nn.Linear(P * c.dim, W, bias=False)
        self.start = nn.Parameter(torch.randn(W) * c.init_std)
        self.context_norm = nn.LayerNorm(W, eps=c.norm_eps)
        per_phase = c.decoder_context == "per_phase"
        self.context_proj = nn.Linear(W, c.dim * (P if per_phase else 1), bias=False)
        self.phase = nn.Embedding(P, c.dim)
        self.attention = LocalAttention(c) if c.decoder_attention else None
        self.blocks = nn.ModuleList(_MLPBlock(c) for _ in range(c.decoder_layers))

    def encode(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        return self.encoder(x.reshape(B, T // self.patch_size, self.patch_size * D))

    def context(self, o: Tensor) -> Tensor:
        return self.context_norm(o)

    def conditions(self, contexts: Tensor) -> Tensor:
        B, n, _ = contexts.shape
        return self.context_proj(contexts).view(B, n, -1, self.phase.weight.shape[1]) + self.phase.weight  # (1 or P) + (P, D) -> P

    def decode(self, x: Tensor, condition: Tensor, prior: int = 0) -> Tensor:
        h = x + condition
        if self.attention is not None:
            h = self.attention(h)[:, prior:]
        for block in self.blocks:
            h = block(h)
        return h


class _MLPBlock(nn.Module):
    """Pre-norm residual MLP on each token alone: (B, T, D) -> (B, T, D); `dropout` on its branch while training."""

    def __init__(self, c: OmConfig):
        super().__init__()
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.mlp_in = nn.Linear(c.dim, c.decoder_hidden, bias=False)
        self.mlp_out = nn.Linear(c.decoder_hidden, c.dim, bias=False)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.dropout(self.mlp_out(F.gelu(self.mlp_in(self.norm(h)))))


class LocalAttention(nn.Module):
    """Pre-norm residual causal attention within groups of P consecutive rows: h (B, R, D), its row 0
    a group's first -> (B, R, D). Row i of a group attends to rows 0..i of that group (no positions
    needed: the decoder's conditions already carry each row's phase). Heads: n_heads of dim / n_heads."""

    def __init__(self, c: OmConfig):
        super().__init__()
        self.patch_size, self.n_heads = c.patch_size, c.n_heads
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.qkv = nn.Linear(c.dim, 3 * c.dim, bias=False)
        self.out = nn.Linear(c.dim, c.dim, bias=False)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, h: Tensor) -> Tensor:
        B, R, D = h.shape
        P, H = self.patch_size, self.n_heads
        pad = -R % P  # rows after the last real one: attended by no real row
        qkv = self.qkv(F.pad(self.norm(h), (0, 0, 0, pad)))  # (B, G*P, 3D)
        q, k, v = qkv.view(B * (R + pad) // P, P, 3, H, D // H).permute(2, 0, 3, 1, 4)  # each (B*G, H, P, D/H)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        z = z.transpose(1, 2).reshape(B, R + pad, D)[:, :R]
        return h + self.dropout(self.out(z))
