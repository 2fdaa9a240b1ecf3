"""Position encodings for ARC's attention: rotary (RoPE) and contextual (CoPE)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RoPEEmbeddings:
    """Rotary position embeddings (Su et al. 2021).

    Pair i of the rotated dims turns by angle position * theta_i with theta_i = base^(-2i/dim),
    so theta_0 = 1 rad per position. With `fraction` < 1 only the first `fraction * dim` dims
    (rounded down to an even number) rotate; the rest pass through.

    `apply(x, positions)`: x (..., T, dim), positions (T,) integers (may be negative) ->
    same shape and dtype as x. It has no parameters, so it is a plain object, not an nn.Module
    (whose own `apply` it would shadow).
    """

    def __init__(self, dim: int, base: float = 10000.0, fraction: float = 1.0, span: tuple[int, int] = (0, 0)):
        rot = int(dim * fraction) // 2 * 2
        if rot < 2:
            raise ValueError(f"RoPE needs at least 2 rotated dims, got dim={dim}, fraction={fraction}")
        self.dim, self.rotary_dim, self.base = dim, rot, base
        self.theta = base ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
        # Positions [lo, hi) covered by the cos/sin tables of `apply_span`: one table per device and dtype.
        self._lo, self._hi = span
        self._tables: dict[tuple, tuple[int, Tensor, Tensor]] = {}  # (device, dtype) -> (lo, cos, sin)

    def angles(self, positions: Tensor) -> Tensor:
        """(T,) positions -> (T, rotary_dim/2) rotation angles, in float64 so large offsets stay exact."""
        return positions.to(torch.float64)[:, None] * self.theta.to(positions.device)[None, :]

    def matrices(self, positions: Tensor) -> Tensor:
        """(T,) positions -> (T, dim, dim) float64: each position's turn as a matrix acting on row
        vectors (`x @ R` equals `apply` on that row), identity on the dims left alone."""
        angles = self.angles(positions)
        cos, sin = angles.cos(), angles.sin()
        R = torch.eye(self.dim, dtype=torch.float64).repeat(len(positions), 1, 1)
        pairs = torch.arange(self.rotary_dim // 2)
        even, odd = 2 * pairs, 2 * pairs + 1
        R[:, even, even], R[:, odd, even] = cos, -sin
        R[:, even, odd], R[:, odd, odd] = sin, cos
        return R

    def apply(self, x: Tensor, positions: Tensor) -> Tensor:
        return self._rotate(x, *self._pairwise(self.angles(positions.to(x.device)), x.dtype))

    @staticmethod
    def _pairwise(angles: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(T, rotary_dim/2) angles -> (T, rotary_dim) cos and signed sin, one per rotated dim:
        pair (x1, x2) turns into (x1 cos - x2 sin, x2 cos + x1 sin) = x * cos + swapped(x) * sin."""
        cos, sin = angles.cos(), angles.sin()
        return cos.repeat_interleave(2, dim=-1).to(dtype), torch.stack((-sin, sin), dim=-1).flatten(-2).to(dtype)

    def apply_span(self, x: Tensor, start: int) -> Tensor:
        """`apply` for the contiguous positions start..start+T-1, sliced from one cached cos/sin table.

        The table covers the positions `span` given at construction (ARC gives -S..L+S-1, which
        holds every span it asks for) and is rebuilt wider if a span outside it is asked for, so
        there is at most one table per device and dtype, however many spans a caller uses.
        """
        end = start + x.shape[-2]
        key = (x.device, x.dtype)
        table = self._tables.get(key)
        if table is None or start < table[0] or end > table[0] + table[1].shape[0]:
            self._lo, self._hi = min(self._lo, start), max(self._hi, end)
            with torch.inference_mode(False):  # a table built during inference must serve training later too
                ang = self.angles(torch.arange(self._lo, self._hi, device=x.device))
                table = self._tables[key] = (self._lo, *self._pairwise(ang, x.dtype))
        lo, cos, sin = table
        return self._rotate(x, cos[start - lo : end - lo], sin[start - lo : end - lo])

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # Contiguous elementwise passes (rather than products of the strided halves x[0::2], x[1::2]);
        # the same numbers bit for bit, as a + (-b) is a - b and addition commutes.
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        swapped = rot.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x2, x1) in each pair
        out = rot * cos + swapped * sin
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out

    __call__ = apply


class CoPE(nn.Module):
    """Contextual position encoding (Golovneva et al. 2024), strictly causal.

    For query i and key j <= i, gate g_ij = sigmoid(logit_ij) is computed from logits that were
    masked first (future keys get gate exactly 0), and the position p_ij = sum_{k=j..i} g_ik counts
    only keys from j to i. p is clamped to `max_positions - 1` and its embedding is interpolated
    between the two nearest integer positions; the result q_i . e(p_ij) is an additive logit bias.

    `forward(q, logits, allowed)`: q (B, H, Tq, d), logits (B, H, Tq, Tk) scaled attention logits,
    allowed (Tq, Tk) bool (True where key j is visible to query i) -> bias (B, H, Tq, Tk) in q's
    dtype. Gates, positions and the interpolation are computed in float32 (or wider) whatever the
    input dtype, so bf16 autocast does not round positions.
    """

    def __init__(self, head_dim: int, max_positions: int, init_std: float = 0.02):
        super().__init__()
        self.max_positions = max_positions
        self.pos_emb = nn.Parameter(torch.randn(max_positions, head_dim) * init_std)

    def forward(self, q: Tensor, logits: Tensor, allowed: Tensor) -> Tensor:
        # Gates and positions in float32 at least: in bf16 (autocast) a sum of many gates is rounded
        # to 3 significant digits, which moves positions by whole units.
        wide = torch.promote_types(logits.dtype, torch.float32)
        gates = torch.sigmoid(logits.to(wide).masked_fill(~allowed, float("-inf")))
        # Reverse cumulative sum over keys: p_ij = sum_{k >= j} g_ik, and g_ik = 0 for k > i.
        pos = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.max_positions - 1)
        lo = pos.floor()
        frac = pos - lo
        lo = lo.long()
        hi = (lo + 1).clamp(max=self.max_positions - 1)
        per_position = (q @ self.pos_emb.to(q.dtype).t()).to(wide)  # (B, H, Tq, max_positions)
        bias_lo = per_position.gather(-1, lo)
        bias_hi = per_position.gather(-1, hi)
        return (bias_lo + frac * (bias_hi - bias_lo)).to(q.dtype)  # back to the dtype of the logits it joins
