"""ARC against a dense reference written from the README's description, not from arc.py.

The reference builds all 2S + L rows [read state; segment; write state] at ABSOLUTE stream
positions (read offset-S..offset-1, segment offset..offset+L-1, write offset+L..offset+L+S-1; with
`state_positions` "aligned" write row j at read row j's position, with "unrotated" every state row
at offset),
projects each row with its own role's weights (read from the module's parameters), rotates q/k
with its own RoPE, adds an explicitly computed CoPE bias (from the query before RoPE), masks with a boolean mask built by hand
from the README's three rules, and chains the passes (pass p > 0 projects each head's pass p-1
output). Everything runs in float64, so the tolerances are tight: a wrong position, role or bias
shows up as a difference many orders of magnitude above them.
"""

from __future__ import annotations

import math

import pytest
import torch

from om import ARC
from tests.model_helpers import tiny_config

L, S, D, H = 8, 4, 32, 2
TOLERANCE = dict(rtol=1e-9, atol=1e-10)

# The README's mask for S = 2, L = 3 (row attends to column where x).
README_MASK = """
x . . . . . .
x x . . . . .
x x x . . . .
x x x x . . .
x x x x x . .
x x x x x x .
x x x x x x x
"""


def hand_mask(S: int, L: int) -> torch.Tensor:
    """(2S+L, 2S+L) bool from the README's rules: read rows see earlier read rows; segment rows see
    the whole read copy and the segment's past; write rows see the read copy, the whole segment and
    earlier write rows."""
    read, segment, write = range(0, S), range(S, S + L), range(S + L, 2 * S + L)
    allowed = torch.zeros(2 * S + L, 2 * S + L, dtype=torch.bool)
    for i in read:
        for j in read:
            allowed[i, j] = j <= i
    for i in segment:
        for j in read:
            allowed[i, j] = True
        for j in segment:
            allowed[i, j] = j <= i
    for i in write:
        for j in list(read) + list(segment):
            allowed[i, j] = True
        for j in write:
            allowed[i, j] = j <= i
    return allowed


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float, fraction: float) -> torch.Tensor:
    """RoPE written out pair by pair: x (B, H, N, d), positions (N,) absolute -> rotated copy."""
    rotated = int(x.shape[-1] * fraction) // 2 * 2
    out = x.clone()
    for i in range(rotated // 2):
        angle = positions.to(torch.float64) * base ** (-2 * i / rotated)
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i], out[..., 2 * i + 1] = a * cos - b * sin, a * sin + b * cos
    return out


def cope_bias(q: torch.Tensor, logits: torch.Tensor, allowed: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """CoPE by its definition: p_ij = sum of sigmoid(logit_ik) over visible keys k = j..i, clamped to
    the table, e(p) interpolated linearly between the nearest rows, bias_ij = q_i . e(p_ij)."""
    n = logits.shape[-1]
    top = table.shape[0] - 1
    bias = torch.zeros_like(logits)
    for i in range(n):
        for j in range(n):
            if not allowed[i, j]:
                continue
            pos = sum(torch.sigmoid(logits[:, :, i, k]) for k in range(j, n) if allowed[i, k]).clamp(max=top)
            lo = pos.floor()
            frac = (pos - lo)[..., None]
            hi = (lo + 1).clamp(max=top)
            e = (1 - frac) * table[lo.long()] + frac * table[hi.long()]  # (B, H, d)
            bias[:, :, i, j] = (q[:, :, i] * e).sum(-1)
    return bias


def role_weights(arc: ARC, role: str, p: int):
    """(wq or None, wk, wv) of `role` in pass p, each (H, d_in, width), read from the module's parameters."""
    dk, dv, heads = arc.config.dims_key[p], arc.config.dims_value[p], arc.config.n_heads
    if p == 0:
        w = arc.proj_in[role].weight  # (H * width, D), per head q|k|v
        w = w.view(heads, -1, w.shape[1]).transpose(1, 2)
    else:
        w = arc.pass_weights[p - 1][role]  # (H, dims_value[p-1], width)
    if w.shape[-1] == dk + dv:  # no query: only the last pass's read rows, whose outputs are discarded
        assert role == "read" and p == arc.config.n_passes - 1
        return None, w[..., :dk], w[..., dk:]
    return w[..., :dk], w[..., dk : 2 * dk], w[..., 2 * dk :]


def reference_arc(arc: ARC, x: torch.Tensor, state: torch.Tensor, offset: int):
    """One ARC call, densely: x (B, L, D) at stream positions offset.., state (B, S, D) -> (y, next_state)."""
    c = arc.config
    B, n_seg, _ = x.shape
    s, heads = c.state_len, c.n_heads
    roles = ["read"] * s + ["segment"] * n_seg + ["write"] * s
    rows = torch.cat([state, x, state], dim=1) if s else x
    read_at = torch.arange(offset - s, offset)
    write_at = {"around": torch.arange(offset + n_seg, offset + n_seg + s), "aligned": read_at,
                "unrotated": torch.full((s,), offset)}[c.state_positions]
    if c.state_positions == "unrotated":
        read_at = torch.full((s,), offset)  # at the segment's first position: no turn relative to it
    positions = torch.cat([read_at, torch.arange(offset, offset + n_seg), write_at])
    allowed = hand_mask(s, n_seg)
    z = rows[:, None].expand(B, heads, -1, -1)  # pass 0 reads the rows themselves, pass p > 0 each head's output
    for p in range(c.n_passes):
        dk, dv = c.dims_key[p], c.dims_value[p]
        scale = c.attn_scales[p] if c.attn_scales is not None else dk ** -0.5
        q = torch.zeros(B, heads, len(roles), dk, dtype=x.dtype)
        k = torch.zeros(B, heads, len(roles), dk, dtype=x.dtype)
        v = torch.zeros(B, heads, len(roles), dv, dtype=x.dtype)
        for i, role in enumerate(roles):
            wq, wk, wv = role_weights(arc, role, p)
            row = z[:, :, i]  # (B, H, d_in)
            if wq is not None:
                q[:, :, i] = torch.einsum("bhi,hio->bho", row, wq)
            k[:, :, i] = torch.einsum("bhi,hio->bho", row, wk)
            v[:, :, i] = torch.einsum("bhi,hio->bho", row, wv)
        q_plain = q  # CoPE's q . e(p) uses the query before RoPE: otherwise the bias would depend on the offset
        if "rope" in c.positional:
            q, k = rotate(q, positions, c.rope_base, c.rope_fraction), rotate(k, positions, c.rope_base, c.rope_fraction)
        logits = (q @ k.transpose(-1, -2)) * scale
        if "cope" in c.positional:
            logits = logits + cope_bias(q_plain, logits, allowed, arc.cope[p].pos_emb) * scale
        weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        z = weights @ v  # (B, H, rows, dv)
    concat = z.transpose(1, 2).reshape(B, len(roles), -1)  # (B, rows, H * dv): heads side by side
    y = concat[:, s : s + n_seg] @ arc.proj_out.weight.t()
    next_state = concat[:, s + n_seg :] @ arc.proj_state.weight.t() if s else state
    return y, next_state


VARIANTS = {
    "one-pass": dict(dims_key=[8], dims_value=[8]),
    "two-passes": dict(dims_key=[8, 6], dims_value=[8, 4]),
    "three-passes-partial-rope": dict(dims_key=[8, 6, 4], dims_value=[8, 4, 6], rope_fraction=0.5, attn_scales=[0.4, 0.3, 0.6]),
    "no-state": dict(dims_key=[8, 6], dims_value=[8, 4], state_len=0),
    "aligned-state": dict(dims_key=[8, 6], dims_value=[8, 4], state_positions="aligned"),
    "unrotated-state": dict(dims_key=[8], dims_value=[8], state_positions="unrotated"),
}
POSITIONALS = ["rope", "cope", "rope+cope", "none"]


def make_arc(positional: str, variant: str, seed: int = 0) -> ARC:
    torch.manual_seed(seed)
    shape = {"segment_len": L, "state_len": S, "dim": D, "n_heads": H}
    arc = ARC(tiny_config(**{"positional": positional, **shape, **VARIANTS[variant]}))
    arc = arc.double().eval()
    with torch.no_grad():
        for name, param in arc.named_parameters():
            # Sharper attention and a CoPE table that matters: every part of the logits is visible.
            param.mul_(40.0 if "pos_emb" in name else 2.0)
    return arc


def inputs(arc: ARC, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, L, D, generator=g, dtype=torch.float64)
    state = torch.randn(2, arc.config.state_len, D, generator=g, dtype=torch.float64)
    return x, state


def test_hand_mask_is_the_readme_table():
    table = torch.tensor([[c == "x" for c in line.split()] for line in README_MASK.strip().splitlines()])
    assert torch.equal(hand_mask(2, 3), table)
    assert torch.equal(hand_mask(S, L), torch.ones(2 * S + L, 2 * S + L).tril().bool())


def test_reference_rope_matches_the_definition():
    # theta_0 = 1 rad per position, and only the first `fraction` of the dims turn.
    x = torch.zeros(1, 1, 1, 8, dtype=torch.float64)
    x[..., 0], x[..., 4] = 1.0, 1.0
    out = rotate(x, torch.tensor([3]), 10000.0, 0.5)
    assert torch.allclose(out[0, 0, 0, :2], torch.tensor([math.cos(3.0), math.sin(3.0)], dtype=torch.float64))
    assert torch.allclose(out[0, 0, 0, 2:4], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(out[..., 4:], x[..., 4:])


@pytest.mark.parametrize("offset", [0, L, 5, 10_000])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("positional", POSITIONALS)
def test_forward_matches_dense_reference(positional, variant, offset):
    arc = make_arc(positional, variant)
    x, state = inputs(arc)
    with torch.no_grad():
        y, next_state = arc(x, state, offset=offset)
        y_ref, next_ref = reference_arc(arc, x, state, offset)
    torch.testing.assert_close(y, y_ref, **TOLERANCE)
    torch.testing.assert_close(next_state, next_ref, **TOLERANCE)


@pytest.mark.parametrize("cuts", [[5], [3, 4], [1, 7]])
@pytest.mark.parametrize("offset", [0, 2 * L, 10_000])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("positional", POSITIONALS)
def test_extend_in_parts_matches_dense_reference(positional, variant, offset, cuts):
    arc = make_arc(positional, variant, seed=2)
    x, state = inputs(arc, seed=3)
    bounds = [0, *cuts, L]
    cache, ys = None, []
    with torch.no_grad():
        for a, b in zip(bounds[:-1], bounds[1:]):
            out = arc.extend(x[:, a:b], state, offset + a, cache=cache, finish=b == L)
            cache = out.cache
            ys.append(out.y)
            assert (out.next_state is None) == (b < L) and (out.cache is None) == (b == L)
        y_ref, next_ref = reference_arc(arc, x, state, offset)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_ref, **TOLERANCE)
    torch.testing.assert_close(out.next_state, next_ref, **TOLERANCE)


def test_reference_is_sensitive_to_what_it_checks():
    # The comparisons above are meaningful only if positions, roles and the CoPE table move the outputs.
    arc = make_arc("rope+cope", "two-passes")
    x, state = inputs(arc)
    with torch.no_grad():
        y, s = reference_arc(arc, x, state, 0)
        shifted = reference_arc(arc, x, state, 10_000)
        assert torch.allclose(y, shifted[0], atol=1e-9) and torch.allclose(s, shifted[1], atol=1e-9)  # relative only
        arc.cope[0].pos_emb.zero_()
        y_no_cope, _ = reference_arc(arc, x, state, 0)
        arc.proj_in["write"].weight.copy_(arc.proj_in["read"].weight)
        _, s_tied = reference_arc(arc, x, state, 0)
    assert (y - y_no_cope).abs().max() > 1e-3
    assert (s - s_tied).abs().max() > 1e-3
