"""Causal attention over a segment's rows, continuing any rows already cached.

New rows (n of them) come after `c` earlier rows (cached, or read rows that need no query); row i
of the new rows sees every earlier row and new rows 0..i. PyTorch's `scaled_dot_product_attention`
is the default kernel; CoPE needs the logits themselves, so it takes an explicit (still fused where
possible) path; xformers is optional and CUDA-only.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right

from om.model.positional import CoPE


def causal_allowed(n_new: int, n_total: int, device: torch.device) -> Tensor:
    """(n_new, n_total) bool: new row i (at absolute row n_total - n_new + i) sees rows <= itself."""
    c = n_total - n_new
    rows = torch.arange(n_new, device=device)[:, None] + c
    cols = torch.arange(n_total, device=device)[None, :]
    return cols <= rows


def causal_bias(n_new: int, n_total: int, like: Tensor) -> Tensor:
    """`causal_allowed` as an additive mask (0 where allowed, -inf elsewhere) in like's dtype and
    device: SDPA on CPU converts a boolean mask to this on every call, which this does once."""
    allowed = causal_allowed(n_new, n_total, like.device)
    return torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill_(~allowed, float("-inf"))


@lru_cache(maxsize=None)
def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(requested: str, device: torch.device, uses_cope: bool) -> str:
    """Pick the attention kernel, or say exactly why the requested one cannot run here."""
    if requested == "sdpa":
        return "sdpa"
    if requested == "auto":
        if device.type == "cuda" and not uses_cope and xformers_available():
            return "xformers"
        return "sdpa"
    if requested == "xformers":
        if device.type != "cuda":
            raise RuntimeError(
                f"attention_backend 'xformers' needs a CUDA device, but the model runs on {device.type}; use 'sdpa' or 'auto'"
            )
        if not xformers_available():
            raise RuntimeError("attention_backend 'xformers' needs the xformers package (pip install 'om[xformers]'); use 'sdpa' or 'auto'")
        if uses_cope:
            raise RuntimeError("attention_backend 'xformers' cannot apply CoPE's per-logit bias; use 'sdpa' or 'auto'")
        return "xformers"
    raise ValueError(f"unknown attention_backend {requested!r}; expected auto, sdpa or xformers")


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    dropout_p: float = 0.0,
    cope: CoPE | None = None,
    backend: str = "sdpa",
    cope_query: Tensor | None = None,
) -> Tensor:
    """q (B, H, n, dk) for the new rows; k (B, H, c+n, dk), v (B, H, c+n, dv) for cached + new rows.

    `cope_query` (B, H, n, dk): the query CoPE's bias q . e(p) uses, default q. ARC gives the query
    before RoPE, so that the bias does not depend on where the rows sit in the stream.
    Returns (B, H, n, dv).
    """
    n, total = q.shape[-2], k.shape[-2]
    if cope is not None:
        allowed = causal_allowed(n, total, q.device)
        logits = (q @ k.transpose(-1, -2)) * scale
        logits = logits + cope(q if cope_query is None else cope_query, logits, allowed) * scale
        logits = logits.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).to(v.dtype)
        if dropout_p > 0:
            weights = F.dropout(weights, p=dropout_p)
        return weights @ v
    if backend == "xformers":
        return _xformers_attention(q, k, v, scale, dropout_p)
    if n == total:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    if n == 1:  # one new row sees everything cached: no mask needed
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    # New rows after cached ones (or after keys-only read rows): the causal mask aligned bottom-right,
    # as a CausalBias so that CUDA keeps its fused kernels instead of a materialised mask.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n, total), dropout_p=dropout_p, scale=scale)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float) -> Tensor:
    import xformers.ops as xops  # optional dependency, checked by resolve_backend

    bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout_p, scale=scale
    )
    return out.transpose(1, 2)
