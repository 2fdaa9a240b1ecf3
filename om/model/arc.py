"""ARC (Attentive Recurrent Cell) and ARCformer (ARC + MLP + norms + learned initial state)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from om.model.attention import causal_attention, causal_bias, resolve_backend
from om.model.config import OmConfig
from om.model.positional import CoPE, RoPEEmbeddings

ROLES = ("read", "segment", "write")

# `ARC.segment_projection` folds RoPE into per-position weights up to this size (bytes; the
# headline model's take 4 MiB), beyond which the segment rows turn elementwise.
FOLDED_ROPE_BYTES = 32 * 2**20
# `ARC.segments_batched` runs its sequential loop on one thread when B * S * D is at most this.
SEQUENTIAL_ONE_THREAD_SIZE = 64 * 1024
# `ARCformer.segments` runs the MLP over this many rows at a time (measured: 1024 rows of the
# headline model took 20% less time than 8192 at once, whose activations spill out of cache).
MLP_BLOCK_ROWS = 1024

# Per-pass keys and values of the rows of the current, unfinished segment: one (k, v) per pass,
# k (B, H, c, dims_key[p]) after RoPE, v (B, H, c, dims_value[p]). None at a segment boundary.
SegmentCache = tuple[tuple[Tensor, Tensor], ...]


@dataclass
class ARCOutput:
    """What `ARC.extend` returns.

    y: (B, n, D) outputs of the segment rows given; cache: the per-pass keys/values to continue
    this segment (None once it is finished); next_state: (B, S, D) once the segment is finished,
    else None.
    """

    y: Tensor
    cache: SegmentCache | None
    next_state: Tensor | None


class ARC(nn.Module):
    """Attentive Recurrent Cell: multi-pass causal attention over [read state; segment; write state].

    `forward(x, state, offset) -> (y, next_state)` for one whole segment: x (B, L, D) at stream
    positions offset..offset+L-1, state (B, S, D) -> y (B, L, D), next_state (B, S, D). (OmLLM
    always passes L = segment_len; ARC itself accepts any L >= 1 as a complete segment.)

    Read, segment and write rows have their own Q/K/V projections per head and per pass. Pass 0
    projects width-D rows; pass p > 0 projects each head's pass p-1 output (width dims_value[p-1])
    with small per-head matrices. All passes use one causal mask over the 2S + L rows, so a segment
    row sees the whole read copy of the state and the segment's past, and a write row sees the read
    copy, the whole segment and earlier write rows. Segment rows of the last pass go through
    `proj_out`, write rows through `proj_state`; read rows are discarded, so in the last pass they
    only give keys and values (the read role projects k|v there, no q). CoPE's bias q . e(p) takes
    the query before RoPE, so with either encoding the outputs depend on position differences only.

    `extend(...)` is the same computation split at any point inside a segment, carrying the
    per-pass key/value cache; `forward` is `extend` on a whole segment with no cache.
    """

    def __init__(self, config: OmConfig):
        super().__init__()
        c = config
        self.config = c
        self.n_heads, self.state_len, self.segment_len = c.n_heads, c.state_len, c.segment_len
        self.dims_key, self.dims_value = list(c.dims_key), list(c.dims_value)
        self.scales = [c.pass_scale(p) for p in range(c.n_passes)]
        self.dropout = c.dropout
        self.state_positions = c.state_positions
        roles = ROLES if c.state_len > 0 else ("segment",)
        H = c.n_heads
        # Pass 0: one fused q|k|v projection from D per role.
        self.proj_in = nn.ModuleDict({r: nn.Linear(c.dim, H * self.qkv_width(r, 0), bias=False) for r in roles})
        # Passes 1..P-1: per-head fused q|k|v matrices (H, dims_value[p-1], 2*dk + dv) per role.
        self.pass_weights = nn.ModuleList()
        for p in range(1, c.n_passes):
            d_in, std = self.dims_value[p - 1], 1.0 / math.sqrt(self.dims_value[p - 1])
            self.pass_weights.append(
                nn.ParameterDict({r: nn.Parameter(torch.randn(H, d_in, self.qkv_width(r, p)) * std) for r in roles})
            )
        d_out = H * self.dims_value[-1]
        self.proj_out = nn.Linear(d_out, c.dim, bias=False)
        self.proj_state = nn.Linear(d_out, c.dim, bias=False) if c.state_len > 0 else None
        self.rope: list[RoPEEmbeddings] = []
        if "rope" in c.positional:
            # One cos/sin table per pass covers every span extend uses: read -S..-1 to write L..L+S-1.
            span = (-c.state_len, c.segment_len + c.state_len)
            self.rope = [RoPEEmbeddings(dk, c.rope_base, c.rope_fraction, span) for dk in self.dims_key]
        self.cope = nn.ModuleList()
        if "cope" in c.positional:
            self.cope = nn.ModuleList(CoPE(dk, c.cope_positions, c.init_std) for dk in self.dims_key)

    def _rotate_pieces(self, p: int, t: Tensor, pieces: list[tuple[str, Tensor]], seen: int) -> Tensor:
        """RoPE for rows (B, H, rows, d) laid out as `pieces`, when state rows do not sit "around" the segment."""
        out, at = [], 0
        for role, rows in pieces:
            out.append(self._turn(p, t[:, :, at : at + rows.shape[1]], role, seen))
            at += rows.shape[1]
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]

    def _turn(self, p: int, t: Tensor, role: str, seen: int = 0) -> Tensor:
        """RoPE in pass p for rows t (B', H, rows, dk) of one role, at their positions counted from
        the segment start: segment rows from `seen` on; read rows at -S..-1; write rows at L..L+S-1
        ("around") or -S..-1 ("aligned"); state rows left as they are with "unrotated" (position 0)."""
        if not len(self.rope):
            return t
        if role == "segment":
            return self.rope[p].apply_span(t, seen)
        if self.state_positions == "unrotated":
            return t
        if role == "write" and self.state_positions == "around":
            return self.rope[p].apply_span(t, self.segment_len)
        return self.rope[p].apply_span(t, -self.state_len)

    def has_query(self, role: str, p: int) -> bool:
        """Read rows are discarded after the last pass, so they need no query there (and have no weights for one)."""
        return role != "read" or p < len(self.dims_key) - 1

    def qkv_width(self, role: str, p: int) -> int:
        """Per-head width of the fused projection of `role` in pass p: q|k|v, or k|v without a query."""
        return (2 if self.has_query(role, p) else 1) * self.dims_key[p] + self.dims_value[p]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the last pass lost its read-row queries hold q|k|v there: drop q.
        last, H = len(self.dims_key) - 1, self.n_heads
        dk, dv = self.dims_key[last], self.dims_value[last]
        name = prefix + ("proj_in.read.weight" if last == 0 else f"pass_weights.{last - 1}.read")
        old = state_dict.get(name)
        if old is not None and last == 0 and old.dim() == 2 and old.shape[0] == H * (2 * dk + dv):
            state_dict[name] = old.view(H, 2 * dk + dv, -1)[:, dk:].reshape(H * (dk + dv), -1)
        elif old is not None and last > 0 and old.dim() == 3 and old.shape[2] == 2 * dk + dv:
            state_dict[name] = old[:, :, dk:]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        out = self.extend(x, state, offset, cache=None, finish=True)
        return out.y, out.next_state

    def extend(self, x: Tensor, state: Tensor, offset: int, cache: SegmentCache | None, finish: bool) -> ARCOutput:
        """Process segment rows x (B, n, D) starting at stream position `offset`.

        `cache` holds the rows of this segment seen so far (None: x starts a new segment, and the
        read rows are added first). With `finish`, the write rows are appended and the next state
        returned; the caller guarantees the segment then holds exactly `segment_len` rows.
        """
        B, n, _ = x.shape
        S = self.state_len
        seen = 0 if cache is None else cache[0][0].shape[2] - S
        # Rows sit at stream positions: read rows just before the segment, write rows just after
        # (with state_positions "around"; see `_rotate_pieces` for the others).
        # RoPE depends only on position differences, and all rows of one call belong to one
        # segment, so positions are counted from the segment start (offset - seen): the same
        # attention as absolute positions, exact at any offset, and always one contiguous span
        # (read -S..-1, segment seen..seen+n-1, write L..L+S-1), sliced from one cos/sin table per pass.
        pieces: list[tuple[str, Tensor]] = []  # (role, rows)
        if cache is None and S > 0:
            pieces.append(("read", state))
        pieces.append(("segment", x))
        if finish and S > 0:
            pieces.append(("write", state))
        first_position = -S if cache is None and S > 0 else seen
        backend = resolve_backend(self.config.attention_backend, x.device, len(self.cope) > 0)
        dropout_p = self.dropout if self.training else 0.0

        new_cache = []
        z: list[Tensor] = []  # per piece: (B, H, rows, width) input of the current pass
        for p in range(len(self.dims_key)):
            dk, dv = self.dims_key[p], self.dims_value[p]
            if p == 0:
                projected = [self.proj_in[role](rows).view(B, rows.shape[1], self.n_heads, -1).transpose(1, 2)
                             for role, rows in pieces]
            else:
                projected = [zi @ self.pass_weights[p - 1][role].to(zi.dtype) for (role, _), zi in zip(pieces, z)]
            # Read rows (always the first piece) have keys and values but no query in the last pass.
            keys_only = 1 if pieces[0][0] == "read" and not self.has_query("read", p) else 0
            q, k, v = torch.cat(projected[keys_only:], dim=2).split((dk, dk, dv), dim=-1)
            if keys_only:
                k_read, v_read = projected[0].split((dk, dv), dim=-1)
                k, v = torch.cat((k_read, k), dim=2), torch.cat((v_read, v), dim=2)
            cope_query = q  # CoPE's q . e(p) takes the query before RoPE, whose turn would make it see the offset
            if len(self.rope) and self.state_positions == "around":
                q = self.rope[p].apply_span(q, first_position + (S if keys_only else 0))
                k = self.rope[p].apply_span(k, first_position)
            elif len(self.rope):
                q = self._rotate_pieces(p, q, pieces[keys_only:], seen)
                k = self._rotate_pieces(p, k, pieces, seen)
            if cache is not None:
                k = torch.cat((cache[p][0], k), dim=2)
                v = torch.cat((cache[p][1], v), dim=2)
            attended = causal_attention(
                q, k, v, self.scales[p], dropout_p, self.cope[p] if len(self.cope) else None, backend, cope_query
            )
            if not finish:
                new_cache.append((k, v))
            z = list(attended.split([rows.shape[1] for _, rows in pieces[keys_only:]], dim=2))

        by_role = {role: zi for (role, _), zi in zip(pieces[keys_only:], z)}
        y = self.proj_out(by_role["segment"].transpose(1, 2).reshape(B, n, -1))
        next_state = None
        if finish:
            if S > 0:
                next_state = self.proj_state(by_role["write"].transpose(1, 2).reshape(B, S, -1))
            else:
                next_state = state
        return ARCOutput(y, None if finish else tuple(new_cache), next_state)

    # Whole segments, layer-major (inference of long streams) ------------------------------------
    def batchable(self) -> bool:
        """Whether `segments_batched` applies: one pass and no CoPE, so that only the write rows
        need the state sequentially and every segment row can be attended in one batched call."""
        return len(self.dims_key) == 1 and not len(self.cope) and self.state_len > 0

    def state_projection(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """What `state_rows` needs, built once per use. The read role's k|v and the write role's q|k|v
        weights, regrouped so that one matmul gives the rows RoPE turns and another the values:
        turned (D, 3 * H * dk), columns [q_write | k_read | k_write] each (H, dk); values
        (D, 2 * H * dv), columns [v_read | v_write] each (H, dv); and each state row's RoPE turns
        (3S, dk, dk), [s * 3 + role] for those three roles of row s (None without RoPE or with
        "unrotated" state rows)."""
        H, S, dk = self.n_heads, self.state_len, self.dims_key[0]
        read, write = (self.proj_in[role].weight.detach().t().reshape(-1, H, self.qkv_width(role, 0)) for role in ("read", "write"))
        turned = torch.stack((write[..., :dk], read[..., :dk], write[..., dk : 2 * dk]), dim=1).flatten(1).contiguous()
        values = torch.stack((read[..., dk:], write[..., 2 * dk :]), dim=1).flatten(1).contiguous()
        if not len(self.rope) or self.state_positions == "unrotated":
            return turned, values, None
        read_at = torch.arange(-S, 0)
        write_at = read_at + S + self.segment_len if self.state_positions == "around" else read_at
        turns = self.rope[0].matrices(torch.stack((write_at, read_at, write_at), dim=1).flatten())
        return turned, values, turns.to(device=turned.device, dtype=turned.dtype)

    def _state_qkv(self, read: Tensor, turned: Tensor, values: Tensor, turns: Tensor | None) -> tuple[Tensor, Tensor]:
        """read (B*S, D), the normalised state's rows, and `state_projection()` -> the write rows'
        queries and the read and write rows' keys, (B, S, 3, H, dk) (roles as in `turned`, turned by
        RoPE), and the read and write rows' values, (B, S, 2, H, dv). Three matmuls in all: this runs
        once per segment and layer, sequentially, so its op count sets its speed."""
        S, H, dk, dv = self.state_len, self.n_heads, self.dims_key[0], self.dims_value[0]
        B = read.shape[0] // S
        qk = torch.mm(read, turned)
        if turns is None:
            qk = qk.view(B, S, 3, H, dk)
        else:  # row s, role r turned by turns[3s + r]: (3S, B*H, dk) @ (3S, dk, dk), a view in and out when B == 1
            qk = torch.bmm(qk.view(B, 3 * S, H, dk).transpose(0, 1).reshape(3 * S, B * H, dk), turns)
            qk = qk.view(S, 3, B, H, dk).permute(2, 0, 1, 3, 4)
        return qk, torch.mm(read, values).view(B, S, 2, H, dv)

    def state_rows(self, read: Tensor, turned: Tensor, values: Tensor, turns: Tensor | None) -> tuple[Tensor, ...]:
        """A one-pass ARC's state rows: read (B, S, D), the normalised state, and `state_projection()`
        -> (k_read, v_read, q_write, k_write, v_write), each (B, H, S, d) (views), keys and queries turned."""
        qk, v = self._state_qkv(read.reshape(-1, read.shape[-1]), turned, values, turns)
        qk, v = qk.transpose(1, 3), v.transpose(1, 3)  # (B, H, roles, S, d)
        return qk[:, :, 1], v[:, :, 0], qk[:, :, 0], qk[:, :, 2], v[:, :, 1]

    def segment_projection(self) -> tuple[Tensor, Tensor] | None:
        """For `segments_batched`: the segment rows' q|k weights with each position's RoPE turn folded
        in, (L, D, H * 2dk) ([h][q | k] columns), and their v weights (D, H * dv); None without RoPE
        or when the folded weights would take over `FOLDED_ROPE_BYTES` (then RoPE runs elementwise)."""
        if not len(self.rope):
            return None
        weight = self.proj_in["segment"].weight.detach()
        H, L, D = self.n_heads, self.segment_len, weight.shape[1]
        dk = self.dims_key[0]
        if L * D * H * 2 * dk * weight.element_size() > FOLDED_ROPE_BYTES:
            return None
        w = weight.t().reshape(D, H, -1)
        turns = self.rope[0].matrices(torch.arange(L)).to(weight)  # (L, dk, dk)
        q, k = (torch.einsum("dhe,lef->ldhf", w[..., at : at + dk], turns) for at in (0, dk))
        return torch.cat((q, k), dim=-1).flatten(2).contiguous(), w[..., 2 * dk :].flatten(1).contiguous()

    def segments_batched(self, x: Tensor, read: Tensor, update: Callable[[Tensor], Tensor]) -> Tensor:
        """n whole segments x (B, n*L, D), normalised, from a segment boundary; `batchable()` only.

        read (B, S, D): the (normalised) state the first segment reads. `update(written)` takes what
        a segment's write rows wrote (B, S, D, after `proj_state`), advances the caller's state and
        returns the next segment's read state: this loop over the state rows is the only sequential
        part. -> the segment rows' outputs after `proj_out`, (B, n*L, D).
        """
        B, T, D = x.shape
        L, S, H = self.segment_len, self.state_len, self.n_heads
        n, dk, dv = T // L, self.dims_key[0], self.dims_value[0]
        R = L + 2 * S  # rows a write row attends: [segment rows; read rows; write rows]
        # Segment rows of every segment at once: q, k (B*n, H, L, dk) turned, v (B*n, H, L, dv).
        folded = self.segment_projection()
        if folded is None:
            seg = self.proj_in["segment"](x).view(B * n, L, H, -1).transpose(1, 2)
            q_seg, k_seg, v_seg = seg.split((dk, dk, dv), dim=-1)
            q_seg, k_seg = self._turn(0, q_seg, "segment"), self._turn(0, k_seg, "segment")
        else:  # position l's rows of every segment through its own turned weights: one bmm, no RoPE pass
            qk_weights, v_weights = folded
            qk = torch.bmm(x.view(B * n, L, D).transpose(0, 1), qk_weights).view(L, B * n, H, 2 * dk).permute(1, 2, 0, 3)
            q_seg, k_seg = qk[..., :dk], qk[..., dk:]
            v_seg = torch.matmul(x, v_weights).view(B * n, L, H, dv).transpose(1, 2)
        # Per segment, the keys and values of its [segment rows; read rows; write rows], (B, n, H, L+2S, d):
        # the segment rows' filled in here, the state rows' in place (read and write rows side by side,
        # one copy each for keys and values) as the loop reaches each segment. Attention does not
        # depend on the order of the keys, only on the mask.
        keys, values = x.new_empty(B, n, H, R, dk), x.new_empty(B, n, H, R, dv)
        keys[:, :, :, :L] = k_seg.view(B, n, H, L, dk)
        values[:, :, :, :L] = v_seg.view(B, n, H, L, dv)
        state_keys = keys[:, :, :, L:].unflatten(3, (2, S))  # (B, n, H, 2, S, dk): [read; write]
        state_values = values[:, :, :, L:].unflatten(3, (2, S))
        projection = self.state_projection()
        to_state = self.proj_state.weight.detach().t()  # (H*dv, D)
        write_mask = causal_bias(S, R, x)  # write row i sees the segment, the read rows and write rows <= i
        read = read.reshape(B * S, D)
        # The loop is a chain of small ops whose cost is mostly per-op overhead, which a second
        # thread only adds to (measured: ~100 us per segment on one thread, ~140 us on two).
        threads = torch.get_num_threads()
        if B * S * D <= SEQUENTIAL_ONE_THREAD_SIZE:
            torch.set_num_threads(1)
        try:
            for j in range(n):
                qk, v = self._state_qkv(read, *projection)
                state_keys[:, j].copy_(qk[:, :, 1:].permute(0, 3, 2, 1, 4))
                state_values[:, j].copy_(v.permute(0, 3, 2, 1, 4))
                q = qk[:, :, 0].transpose(1, 2).reshape(B * H, S, dk)
                logits = torch.baddbmm(write_mask, q, keys[:, j].reshape(B * H, R, dk).transpose(1, 2), alpha=self.scales[0])
                written = torch.bmm(torch.softmax(logits, dim=-1), values[:, j].reshape(B * H, R, dv))
                written = torch.mm(written.view(B, H, S, dv).transpose(1, 2).reshape(B * S, H * dv), to_state)
                read = update(written.view(B, S, D)).reshape(B * S, D)
        finally:
            torch.set_num_threads(threads)
        # Segment row i sees the segment's rows 0..i and its read rows: the first L + S keys.
        seg_mask = F.pad(causal_bias(L, L, x), (0, S))
        # baddbmm/softmax/bmm rather than SDPA: on these many small (L x L+S) problems the CPU SDPA
        # kernel took 1.5x as long (8.0 against 5.3 ms for 256 segments of the headline model).
        keys, values = keys[:, :, :, : L + S].flatten(0, 2), values[:, :, :, : L + S].flatten(0, 2)
        logits = torch.baddbmm(seg_mask, q_seg.flatten(0, 1), keys.transpose(1, 2), alpha=self.scales[0])
        out = torch.bmm(torch.softmax(logits, dim=-1), values).view(B * n, H, L, dv)
        return self.proj_out(out.transpose(1, 2).reshape(B, T, -1))


class ARCformer(nn.Module):
    """One Om layer: pre-norm ARC and MLP with residuals, plus a learned initial state (S, D).

    `forward(x, state, offset) -> (y, next_state)`: x (B, L, D) one whole segment, state (B, S, D)
    -> y (B, L, D), next_state (B, S, D). `extend` continues a partial segment (see `ARC.extend`).

    Pre-norm (rather than the original post-norm) keeps the residual stream unnormalised, which
    trains stably without warm-up tricks; the state is normalised where it is read, so the raw
    state stays a bounded attention output and never accumulates across segments.
    """

    def __init__(self, config: OmConfig):
        super().__init__()
        c = config
        self.norm_attn = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.norm_state = nn.LayerNorm(c.dim, eps=c.norm_eps) if c.state_len > 0 else None
        self.norm_mlp = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.arc = ARC(c)
        self.mlp_in = nn.Linear(c.dim, c.mlp_hidden, bias=False)
        self.mlp_out = nn.Linear(c.mlp_hidden, c.dim, bias=False)
        self.dropout = nn.Dropout(c.dropout)
        self.initial_state = nn.Parameter(torch.randn(c.state_len, c.dim) * c.init_std)
        self.residual_state = c.state_update == "residual" and c.state_len > 0
        self.state_gate = None
        if c.state_update == "gated" and c.state_len > 0:
            self.state_gate = nn.Linear(c.dim, c.dim)  # OmLLM starts its bias at +1: keep ~73% of the old state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before a model without memory lost its unused state norm still hold it.
        if self.norm_state is None:
            for name in ("weight", "bias"):
                state_dict.pop(f"{prefix}norm_state.{name}", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, state: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        out = self.extend(x, state, offset, cache=None, finish=True)
        return out.y, out.next_state

    def _read(self, state: Tensor) -> Tensor:
        """What the ARC reads of the state (B, S, D): normalised, when there is a state."""
        norm = self.norm_state
        if norm is None:
            return state
        # F.layer_norm rather than the module's call: this runs once per segment and layer in the
        # sequential loops of inference, where the module call's overhead is a visible share.
        return F.layer_norm(state, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def _mlp(self, h: Tensor) -> Tensor:
        """The MLP branch (no residual, no dropout): rows (..., D) -> (..., D)."""
        return self.mlp_out(F.gelu(self.mlp_in(self.norm_mlp(h))))

    def extend(self, x: Tensor, state: Tensor, offset: int, cache: SegmentCache | None, finish: bool) -> ARCOutput:
        read = self._read(state)
        out = self.arc.extend(self.norm_attn(x), read, offset, cache, finish)
        h = x + self.dropout(out.y)
        y = h + self.dropout(self._mlp(h))
        next_state = self._next_state(state, out.next_state) if finish else None
        return ARCOutput(y, out.cache, next_state)

    def _next_state(self, state: Tensor, written: Tensor) -> Tensor:
        """The state after a segment, from the state it read (B, S, D) and what its write rows wrote (B, S, D)."""
        if self.arc.state_len == 0:
            return state
        if self.state_gate is not None:
            # A convex mix of old and new state: bounded like "replace", but information can stay
            # for many segments without being re-copied by attention at every step.
            keep = torch.sigmoid(self.state_gate(written))
            return keep * state + (1.0 - keep) * written
        if self.residual_state:
            # Keeping the old state is the identity path; rescaling each row to unit RMS keeps the
            # state bounded over any number of segments and gives new writes a constant weight.
            return F.rms_norm(state + written, (state.shape[-1],))
        return written

    def segments(self, x: Tensor, state: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        """n whole segments x (B, n*L, D) from a segment boundary at `offset`, layer-major:
        -> (y (B, n*L, D), the state after the last), the same as n `forward` calls (to float rounding).

        The norms, the MLP and (for a one-pass ARC without CoPE) the segment rows' projections and
        attention run once over all n segments; only the state's own rows go segment by segment.
        Inference only (no dropout).
        """
        L = self.arc.segment_len
        n = x.shape[1] // L
        normed = self.norm_attn(x)
        states = [state]
        if self.arc.batchable():
            def update(written: Tensor) -> Tensor:
                states[-1] = self._next_state(states[-1], written)
                return self._read(states[-1])

            attended = self.arc.segments_batched(normed, self._read(state), update)
        else:
            pieces = []
            for j in range(n):
                out = self.arc.extend(normed[:, j * L : (j + 1) * L], self._read(states[-1]), offset + j * L, cache=None, finish=True)
                pieces.append(out.y)
                states.append(self._next_state(states[-1], out.next_state))
            attended = torch.cat(pieces, dim=1)
        h = (x + attended).flatten(0, 1)
        y = torch.empty_like(h)
        for at in range(0, h.shape[0], MLP_BLOCK_ROWS):  # in row blocks: their (rows, hidden) activations stay in cache
            rows = h[at : at + MLP_BLOCK_ROWS]
            y[at : at + MLP_BLOCK_ROWS] = rows + self._mlp(rows)
        return y.view_as(x), states[-1]
