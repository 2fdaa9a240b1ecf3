"""`IncrementalDecoder`: one new token per row per step, through preallocated buffers.

`OmLLM.forward` on a (B, 1) input is exact but general: it re-concatenates each pass's key/value
cache, rebuilds RoPE rows and re-normalises the state for every token, about a thousand small ops
per token for the reference model, so op overhead rather than arithmetic sets decoding speed.
This decoder computes the same function with far fewer ops:

- each pass's keys and values live in a (B, H, S + L, d) buffer written in place, one row per token;
- a segment row's RoPE turn is one matmul with a precomputed rotation matrix per position;
- the stem is one matmul over its window of the last max(k) inputs (the convolutions' weights
  gathered by lag);
- a patched model's context projections are computed once per patch, not once per token.

The first and the last row of each segment (where the read rows are added, and where the write
rows make the next state) go through `ARCformer.extend` itself, as do all rows of a CoPE model
(whose bias needs the logits), so the state update has exactly one implementation. Results equal
`OmLLM.forward` to float rounding (a matmul sums in another order than the elementwise RoPE and
the convolutions); `tests/test_decoding.py` checks them against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from om.model.state import OmState


class IncrementalDecoder:
    """Continues `state` (an `OmState` of batch B for `model`) one token per row at a time.

    `step(tokens)`: tokens (B,) int64 -> logits (B, vocab_size), what `model(tokens[:, None],
    state)` gives for the same stream (to float rounding), and the decoder advances by one token.
    `state()` -> an `OmState` at the current position (a copy: continuing it with `model` gives
    the same results as continuing this decoder). `select(rows)` keeps only the given rows.
    The model must not change while a decoder uses it; run under `torch.inference_mode()`.
    """

    def __init__(self, model, state: OmState):
        self.model, self.config = model, model.config
        c = self.config
        self.batch_size = B = state.batch_size
        self.offset = state.offset
        first = model.layers[0].arc
        self.heads, self.state_len, self.segment_len = first.n_heads, first.state_len, first.segment_len
        self.dims_key, self.dims_value = first.dims_key, first.dims_value
        self.general = len(first.cope) > 0  # CoPE: every row through ARCformer.extend
        ref = model.embed.weight
        capacity = self.state_len + self.segment_len
        # keys[i][p], values[i][p]: layer i, pass p, (B, H, S + L, d); `rows` of them are filled (0 at a boundary).
        self.keys = [[ref.new_empty(B, self.heads, capacity, dk) for dk in self.dims_key] for _ in model.layers]
        self.values = [[ref.new_empty(B, self.heads, capacity, dv) for dv in self.dims_value] for _ in model.layers]
        self.rows = 0
        self.layer_states = list(state.layer_states)
        cache = state.caches[0]
        if cache is not None:
            self.rows = cache[0][0].shape[2]
            for i, layer_cache in enumerate(state.caches):
                for p, (k, v) in enumerate(layer_cache):
                    self.keys[i][p][:, :, : self.rows].copy_(k)
                    self.values[i][p][:, :, : self.rows].copy_(v)
        self.stem_tail = state.stem_tail
        self.stem_weight, self.stem_bias = _stem_matrix(model.stem, c.dim, ref)
        self.rotations = _rotations(first, ref) if first.rope else None
        self.patch_tail, self.context = state.patch_tail, state.context
        if model.patch is not None:
            self._read_context(state.context)
        self.weights = [_LayerWeights(layer) for layer in model.layers]
        self._views()

    def _views(self) -> None:
        """Per layer and pass, the buffer views a middle row uses: row n to write, rows 0..n to attend."""
        self.key_rows = [[[k.select(2, n) for n in range(k.shape[2])] for k in ks] for ks in self.keys]
        self.value_rows = [[[v.select(2, n) for n in range(v.shape[2])] for v in vs] for vs in self.values]
        self.key_spans = [[[k.narrow(2, 0, n + 1) for n in range(k.shape[2])] for k in ks] for ks in self.keys]
        self.value_spans = [[[v.narrow(2, 0, n + 1) for n in range(v.shape[2])] for v in vs] for vs in self.values]

    # ---------------------------------------------------------------------------------------------
    def step(self, tokens: Tensor) -> Tensor:
        model, c = self.model, self.config
        x = F.embedding(tokens, model.embed.weight)  # (B, D)
        if self.stem_weight is not None:
            window = torch.cat((self.stem_tail, x.unsqueeze(1)), dim=1)  # (B, max(k), D), oldest first
            x = torch.addmm(self.stem_bias, window.flatten(1), self.stem_weight, beta=1, alpha=1).add_(x)
            self.stem_tail = window[:, 1:]
        if model.patch is None:
            h = self._trunk_step(x, self.offset)
        else:
            h = self._decode_in_patch(x)
        self.offset += 1
        logits = F.linear(F.layer_norm(h, (c.dim,), model.norm.weight, model.norm.bias, model.norm.eps), model.head.weight)
        return logits[:, : c.vocab_size]

    def _decode_in_patch(self, x: Tensor) -> Tensor:
        """A patched model's token x (B, D): the trunk runs when it completes a patch; -> (B, D) decoder output."""
        patch, P = self.model.patch, self.config.patch_size
        window = torch.cat((self.patch_tail, x.unsqueeze(1)), dim=1)  # (B, P, D): the current patch once complete
        self.patch_tail = window[:, 1:]
        if (self.offset + 1) % P == 0:
            o = self._trunk_step(F.linear(window.flatten(1), patch.encoder.weight), self.offset // P)
            self._read_context(patch.context(o))
        h = x + self.conditions[:, (self.offset + 1) % P]
        for block in patch.blocks:
            h = block(h)
        return h

    def _read_context(self, context: Tensor) -> None:
        """A patched model's new context (B, W): kept for `state()`, and its (B, P, D) conditions, one per phase."""
        self.context = context
        self.conditions = self.model.patch.conditions(context.unsqueeze(1))[:, 0]

    def _trunk_step(self, x: Tensor, position: int) -> Tensor:
        """One trunk row x (B, D) at trunk position `position` through every layer -> (B, D)."""
        into = position % self.segment_len
        if self.general or into == 0 or into == self.segment_len - 1:
            return self._general_step(x, position, into)
        for i, weights in enumerate(self.weights):
            x = self._layer_step(i, weights, x, into)
        self.rows += 1
        return x

    def _general_step(self, x: Tensor, position: int, into: int) -> Tensor:
        """`ARCformer.extend` on the row, its cache read from and written back to the buffers."""
        finish = into == self.segment_len - 1
        h = x.unsqueeze(1)
        for i, layer in enumerate(self.model.layers):
            cache = None
            if self.rows:
                cache = tuple((k[:, :, : self.rows], v[:, :, : self.rows]) for k, v in zip(self.keys[i], self.values[i]))
            out = layer.extend(h, self.layer_states[i], position, cache, finish)
            h = out.y
            if finish:
                self.layer_states[i] = out.next_state
            else:
                added = out.cache[0][0].shape[2] - self.rows
                for p, (k, v) in enumerate(out.cache):
                    self.keys[i][p][:, :, self.rows :].narrow(2, 0, added).copy_(k[:, :, self.rows :])
                    self.values[i][p][:, :, self.rows :].narrow(2, 0, added).copy_(v[:, :, self.rows :])
        self.rows = 0 if finish else out.cache[0][0].shape[2]
        return h.squeeze(1)

    def _layer_step(self, i: int, w: "_LayerWeights", x: Tensor, into: int) -> Tensor:
        """A middle row of a segment (neither its first nor its last) through layer i: (B, D) -> (B, D)."""
        B, H, n, D = self.batch_size, self.heads, self.rows, x.shape[-1]
        h = F.layer_norm(x, (D,), *w.norm_attn)
        z = None
        for p, dk in enumerate(self.dims_key):
            qkv = F.linear(h, w.proj_in).view(B, H, 1, -1) if p == 0 else z @ w.passes[p - 1]
            qk = qkv[..., : 2 * dk].view(B, H, 2, dk)  # this row's query and key
            if self.rotations is not None:
                qk = qk @ self.rotations[p][into]
            self.key_rows[i][p][n].copy_(qk.select(2, 1))
            self.value_rows[i][p][n].copy_(qkv.select(2, 0)[..., 2 * dk :])
            z = F.scaled_dot_product_attention(qk[:, :, :1], self.key_spans[i][p][n], self.value_spans[i][p][n],
                                               scale=w.scales[p])
        x = x + F.linear(z.view(B, -1), w.proj_out)
        m = F.layer_norm(x, (D,), *w.norm_mlp)
        return x + F.linear(F.gelu(F.linear(m, w.mlp_in)), w.mlp_out)

    # ---------------------------------------------------------------------------------------------
    def state(self) -> OmState:
        caches = [None] * len(self.keys)
        if self.rows:
            caches = [tuple((k[:, :, : self.rows].clone(), v[:, :, : self.rows].clone()) for k, v in zip(ks, vs))
                      for ks, vs in zip(self.keys, self.values)]
        return OmState(list(self.layer_states), caches, self.stem_tail.clone(), self.offset,
                       None if self.patch_tail is None else self.patch_tail.clone(), self.context)

    def select(self, rows: Tensor | list[int]) -> None:
        index = torch.as_tensor(rows, dtype=torch.long, device=self.stem_tail.device)
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        self.batch_size = len(index)
        self.keys = [[pick(k) for k in ks] for ks in self.keys]
        self.values = [[pick(v) for v in vs] for vs in self.values]
        self._views()
        self.layer_states = [pick(s) for s in self.layer_states]
        self.stem_tail = pick(self.stem_tail)
        if self.patch_tail is not None:
            self.patch_tail, self.context, self.conditions = map(pick, (self.patch_tail, self.context, self.conditions))


class _LayerWeights:
    """One ARCformer's tensors that a middle row uses, looked up once (module attribute access is slow)."""

    def __init__(self, layer):
        arc = layer.arc
        self.norm_attn = (layer.norm_attn.weight, layer.norm_attn.bias, layer.norm_attn.eps)
        self.norm_mlp = (layer.norm_mlp.weight, layer.norm_mlp.bias, layer.norm_mlp.eps)
        self.proj_in = arc.proj_in["segment"].weight
        self.passes = [weights["segment"] for weights in arc.pass_weights]
        self.proj_out, self.scales = arc.proj_out.weight, arc.scales
        self.mlp_in, self.mlp_out = layer.mlp_in.weight, layer.mlp_out.weight


def _stem_matrix(stem, dim: int, ref: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The stem's convolutions as one (max(k) * D, D) matrix over the window of the last max(k)
    inputs (oldest first), and the sum of their biases (D,); (None, None) without a stem."""
    if not stem.kernels:
        return None, None
    K = max(stem.kernels)
    weight = ref.new_zeros(K, dim, dim)  # [window row, input channel, output channel]
    bias = ref.new_zeros(dim)
    for k, conv in zip(stem.kernels, stem.convs):
        w = conv.weight.detach()  # (D_out, D_in / groups, k)
        groups = conv.groups
        per = dim // groups
        for j in range(k):
            block = torch.zeros(dim, dim, dtype=w.dtype, device=w.device)  # (D_out, D_in)
            for g in range(groups):
                block[g * per : (g + 1) * per, g * per : (g + 1) * per] = w[g * per : (g + 1) * per, :, j]
            weight[K - k + j] += block.t()
        bias += conv.bias.detach()
    return weight.reshape(K * dim, dim), bias


def _rotations(arc, ref: Tensor) -> list[Tensor]:
    """Per pass, (L, dk, dk): the RoPE turn of a segment row at each position in its segment, as a
    matrix acting on row vectors (x @ R), identity on the dims RoPE leaves alone."""
    tables = []
    for rope, dk in zip(arc.rope, arc.dims_key):
        angles = rope.angles(torch.arange(arc.segment_len))  # (L, rotary_dim / 2), float64
        cos, sin = angles.cos(), angles.sin()
        R = torch.eye(dk, dtype=torch.float64).repeat(arc.segment_len, 1, 1)
        pairs = torch.arange(rope.rotary_dim // 2)
        even, odd = 2 * pairs, 2 * pairs + 1
        R[:, even, even], R[:, odd, even] = cos, -sin
        R[:, even, odd], R[:, odd, odd] = sin, cos
        tables.append(R.to(device=ref.device, dtype=ref.dtype))
    return tables
