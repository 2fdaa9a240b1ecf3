"""`IncrementalDecoder`: one new token per row per step, through preallocated buffers.

`OmLLM.forward` on a (B, 1) input is exact but general: it re-concatenates each pass's key/value
cache, rebuilds RoPE rows and re-normalises the state for every token, about a thousand small ops
per token for the reference model, so op overhead rather than arithmetic sets decoding speed.
This decoder computes the same function with far fewer ops:

- each pass's keys and values live in a (B, H, S + L, d) buffer written in place, one row per token;
- a segment row's query and key turn (RoPE) by one matmul with a precomputed matrix per position;
- the stem is a lookup of one precomputed row per token and lag (`_stem_by_table`), or for large
  vocabularies one matmul over its window of the last max(k) inputs (weights gathered by lag);
- hashed n-gram rows are computed in Python integers at small batch (`ngram_rows_stepped`); with a
  stem table, the summed n-gram vector goes through the stem by one matmul added to the token's rows;
  added after the stem, on CPU, their table rows are summed in numpy with no torch op (above that
  batch, hashed by one int64 matmul and summed by `embedding_bag`);
- a patched model's context projections are computed once per patch, not once per token;
- the matrices a row goes through are copied once, transposed to (in, out) and contiguous: at batch
  1 `torch.mm` on that layout took about half the time of `F.linear` on the module's (out, in)
  weight, and GELU is computed from `erf` (F.gelu took 7 us on 512 numbers, erf 1 us), its factor
  scales folded into the two matrices (`_MLPWeights`) and the residual add into the second's `addmm`;
- with one pass and no CoPE, the state's read rows (keys and values) and write rows (q, k, v) are
  projected once per segment, when the segment starts, and the write rows attend once it ends
  (as `ARC.segments_batched` does), so every row of a segment takes the same short path.

With several passes a segment's first and last rows, and with CoPE (whose bias needs the logits)
every row, go through `ARCformer.extend` itself. Results equal `OmLLM.forward` to float rounding
(matmuls sum in another order than the elementwise RoPE, the convolutions and `F.linear`);
`tests/test_decoding.py` checks them against it.
"""

from __future__ import annotations

import numpy
import torch
import torch.nn.functional as F
from torch import Tensor

from om.model.attention import causal_bias
from om.model.ngram import ngram_rows, ngram_rows_by_matmul, ngram_rows_stepped
from om.model.state import OmState

# The stem runs by table lookup (`IncrementalDecoder._stem_by_table`) when its table, vocabulary x
# max(k) x D numbers, takes at most this much memory (bytes: 320 x 4 x 128 floats = 0.66 MB).
STEM_TABLE_BYTES = 64 * 2**20
# Up to this many rows the n-gram rows are hashed in Python integers, one row at a time; above it by
# `ngram_rows`' tensor ops (about 40 us at any small batch, where Python takes about 3 us per row).
NGRAM_PYTHON_ROWS = 8


class IncrementalDecoder:
    """Continues `state` (an `OmState` of batch B for `model`) one token per row at a time.

    `step(tokens)`: tokens (B,) int64 -> logits (B, vocab_size), what `model(tokens[:, None],
    state)` gives for the same stream (to float rounding), and the decoder advances by one token.
    `state()` -> an `OmState` at the current position (a copy: continuing it with `model` gives
    the same results as continuing this decoder). `select(rows)` keeps only the given rows.
    `banned` (vocab_size,) bool: ids whose logits `step` sets to -inf (sampling's disallowed ids).
    The model must not change while a decoder uses it; run under `torch.inference_mode()`.
    """

    def __init__(self, model, state: OmState, banned: Tensor | None = None):
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
        self.stem_weight, self.stem_bias = _stem_matrix(model.stem)
        self.stem_table = None
        self.ngram = model.ngram
        # where an n-gram model adds its vectors: to the embeddings the stem reads, or to its output
        self.ngram_before_stem = self.ngram is not None and not c.ngram_after_stem
        self.ngram_after_stem = self.ngram is not None and c.ngram_after_stem
        self.ngram_table = None if self.ngram is None else self.ngram.table.weight.detach()
        # numpy views for `_add_ngram_vectors` (CPU, float32/64: numpy has no bfloat16)
        self.ngram_numpy = self.ngram_acc = None
        if self.ngram_after_stem and self.ngram_table.device.type == "cpu" and self.ngram_table.dtype in (torch.float32, torch.float64):
            self.ngram_numpy = self.ngram_table.numpy()
            self.ngram_acc = numpy.empty(self.ngram_numpy.shape[1], dtype=self.ngram_numpy.dtype)
        self._set_token_tail(state.token_tail)
        table_bytes = ref.numel() * max(model.stem.kernels, default=1) * ref.element_size()
        if self.stem_weight is not None and table_bytes <= STEM_TABLE_BYTES:
            self._stem_by_table(model.embed.weight)
        self.rotations = _rotations(first, ref) if first.rope else None
        self.patch_tail, self.context = state.patch_tail, state.context
        if model.patch is not None:
            self._read_context(state.context)
        self.weights = [_LayerWeights(layer) for layer in model.layers]
        # One-pass ARC without CoPE: a segment's first and last rows are middle rows plus the state's
        # read and write rows, projected together once per segment (else they go through `extend`).
        self.state_rows = None
        if not self.general and len(self.dims_key) == 1:
            self.state_rows = [layer.arc.state_projection() for layer in model.layers] if self.state_len else []
            self.write_mask = causal_bias(self.state_len, 2 * self.state_len + self.segment_len, ref)
            if self.state_len and self.rows:  # mid-segment: the read rows are in the cache already
                self._project_state_rows()
        self.blocks = [] if model.patch is None else [_MLPWeights(b.norm, b.mlp_in, b.mlp_out) for b in model.patch.blocks]
        self.local = None if model.patch is None or model.patch.attention is None else _LocalAttentionRows(model.patch.attention, B, ref)
        if self.local is not None:  # the current group's rows read before this state, from its patch tail
            prior = (self.offset + 1) % c.patch_size
            for phase in range(prior):
                self.local.add(self.patch_tail[:, c.patch_size - 1 - prior + phase] + self.conditions[:, phase], phase)
        self.final_norm = (model.norm.weight, model.norm.bias, model.norm.eps)
        self.head = _transposed(model.head.weight[: c.vocab_size])  # (D, vocab_size)
        self.head_bias = None if banned is None else ref.new_zeros(c.vocab_size).masked_fill(banned.to(ref.device), float("-inf"))
        self._views()

    def _views(self) -> None:
        """Per layer and pass, the buffer views a middle row uses: row n to write, rows 0..n to attend."""
        self.key_rows = [[[k.select(2, n) for n in range(k.shape[2])] for k in ks] for ks in self.keys]
        self.value_rows = [[[v.select(2, n) for n in range(v.shape[2])] for v in vs] for vs in self.values]
        self.key_spans = [[[k.narrow(2, 0, n + 1) for n in range(k.shape[2])] for k in ks] for ks in self.keys]
        self.value_spans = [[[v.narrow(2, 0, n + 1) for n in range(v.shape[2])] for v in vs] for vs in self.values]

    def _stem_by_table(self, embed: Tensor) -> None:
        """The stem as lookups: token id t contributes row j of stem_table[t] (K, D) to the stem
        output j tokens later (row 0 also holds its embedding and the biases), so one step adds K
        rows instead of a (K * D, D) matmul. `stem_ahead` (B, K - 1, D): what the tokens already
        read add to the next K - 1 outputs; `recent`: the last K - 1 steps' token ids (with n-grams,
        their `_ngram_rows`), for `state()`. A token's n-gram vector g (D,) adds g @ ngram_by_lag
        (D, K * D), the same K rows for it (a table row per n-gram row took 70 ms to build per decoder)."""
        K, D = self.stem_tail.shape[1] + 1, embed.shape[1]
        by_lag = self.stem_weight.view(K, D, D).flip(0)  # [j]: the weight of the input j tokens back
        table = torch.einsum("vd,jde->vje", embed, by_lag)
        table[:, 0] += embed + self.stem_bias
        self.stem_table = table.reshape(embed.shape[0], K * D)
        if self.ngram_before_stem:
            by_lag = by_lag.clone()
            by_lag[0] += torch.eye(D, dtype=by_lag.dtype, device=by_lag.device)  # the stem's residual
            self.ngram_by_lag = by_lag.permute(1, 0, 2).reshape(D, K * D)
        tail = self.stem_tail.to(embed.dtype)
        ahead = [tail[:, j:].flatten(1) @ self.stem_weight[: (K - 1 - j) * D] for j in range(K - 1)]
        self.stem_ahead = torch.stack(ahead, dim=1) if ahead else tail
        self.recent: list[Tensor] = []

    def _stem_step(self, tokens: Tensor) -> Tensor:
        """Stem output (B, D) for one new token per row, by table (see `_stem_by_table`)."""
        rows = tokens
        summed = F.embedding(tokens, self.stem_table)
        if self.ngram_before_stem:
            rows = self._ngram_rows(tokens)
            summed = torch.addmm(summed, self._ngram_vectors(rows), self.ngram_by_lag)
        summed = summed.view(self.batch_size, -1, self.stem_ahead.shape[-1])
        K = summed.shape[1]
        summed[:, : K - 1] += self.stem_ahead
        self.stem_ahead = summed[:, 1:]
        if K > 1:
            # `tokens` may be the caller's buffer, refilled next step; `_ngram_rows` returns a new tensor.
            self.recent = (self.recent + [rows if rows is not tokens else tokens.clone()])[-(K - 1) :]
        return summed[:, 0]

    def _current_stem_tail(self) -> Tensor:
        """(B, max(k) - 1, D): the stem tail at the current position (the table path keeps ids, not embeddings)."""
        if self.stem_table is None or not self.recent:
            return self.stem_tail
        rows = torch.stack(self.recent, dim=1)  # (B, r) token ids or (B, r, 1 + len(sizes)) ids and n-gram rows
        embed = self.model.embed.weight
        if rows.dim() == 2:  # ids alone: the stem reads embeddings only
            read = F.embedding(rows, embed)
        else:
            read = F.embedding(rows[..., 0], embed) + self._ngram_vectors(rows)
        return torch.cat((self.stem_tail, read), dim=1)[:, read.shape[1] :]

    def _set_token_tail(self, tail: Tensor | None) -> None:
        """Keep an n-gram model's token tail (B, max(n) - 1): as Python lists at small batch, else as is."""
        self.token_tail, self.tail_ids = tail, None
        if tail is not None and self.batch_size <= NGRAM_PYTHON_ROWS:
            self.token_tail, self.tail_ids = None, tail.tolist()

    def _current_token_tail(self) -> Tensor | None:
        if self.tail_ids is None:
            return self.token_tail
        tail = torch.tensor(self.tail_ids, dtype=torch.int64, device=self.model.embed.weight.device)
        return tail.view(len(self.tail_ids), self.ngram.tail_len)

    def _ngram_vectors(self, rows: Tensor) -> Tensor:
        """(..., 1 + len(sizes)) ids and n-gram rows (`_ngram_rows`) -> (..., D) summed n-gram vectors
        (`F.embedding` and a sum: at batch 1 half the time of `F.embedding_bag`)."""
        return F.embedding(rows[..., 1:], self.ngram_table).sum(-2)

    def _add_ngram_vectors(self, x: Tensor, tokens: Tensor) -> Tensor:
        """x (B, D) plus each token's summed n-gram vector. On CPU, at batch <= NGRAM_PYTHON_ROWS, the
        rows are hashed in Python integers and summed in numpy into x in place: in the decoding loop
        at batch 1 this took 22-26 us a byte of the headline model against 38-41 for the torch route
        (a tensor of rows, a gather, a sum and an add). At larger batch they are hashed by an int64
        matmul (`ngram_rows_by_matmul`) and summed by `embedding_bag`, into x in place: at batch 16
        a decoder step took 47-117 us less than by the general route, a `generate_many` step 22 us
        less (a vectorised numpy hash and gather measured no faster than the tensor ops in the
        loop). Sums run in the forward pass's order (`embedding_bag`)."""
        if self.ngram_numpy is None or x.requires_grad:
            return x + self._ngram_vectors(self._ngram_rows(tokens))
        if self.tail_ids is None:
            window = torch.cat((self.token_tail, tokens.unsqueeze(1)), dim=1)  # (B, max(sizes)), oldest first
            self.token_tail = window[:, 1:]
            rows = ngram_rows_by_matmul(window, self.ngram.sizes, self.ngram.buckets)
            return x.add_(F.embedding_bag(rows, self.ngram_table, mode="sum"))
        rows = ngram_rows_stepped(self.tail_ids, tokens.tolist(), self.ngram.sizes, self.ngram.buckets)
        table, acc, out = self.ngram_numpy, self.ngram_acc, x.numpy()
        for b, (first, *rest) in enumerate(rows):
            numpy.copyto(acc, table[first])
            for row in rest:
                numpy.add(acc, table[row], out=acc)
            numpy.add(out[b], acc, out=out[b])
        return x

    def _ngram_rows(self, tokens: Tensor) -> Tensor:
        """(B, 1 + len(sizes)) int64: each token's id, then its rows in the stacked n-gram tables;
        the token tail moves on by the tokens."""
        sizes, buckets = self.ngram.sizes, self.ngram.buckets
        if self.tail_ids is not None:
            ids = tokens.tolist()
            rows = ngram_rows_stepped(self.tail_ids, ids, sizes, buckets)
            return torch.tensor([[i, *row] for i, row in zip(ids, rows)], device=tokens.device)
        grams = ngram_rows(tokens.unsqueeze(1), self.token_tail, sizes, buckets)[:, 0]
        self.token_tail = torch.cat((self.token_tail, tokens.unsqueeze(1)), dim=1)[:, 1:]
        return torch.cat((tokens.unsqueeze(1), grams), dim=1)

    # ---------------------------------------------------------------------------------------------
    def step(self, tokens: Tensor) -> Tensor:
        model, c = self.model, self.config
        if self.stem_table is not None:
            x = self._stem_step(tokens)
        else:
            x = F.embedding(tokens, model.embed.weight)  # (B, D)
            if self.ngram_before_stem:
                x = x + self._ngram_vectors(self._ngram_rows(tokens))
            if self.stem_weight is not None:
                window = torch.cat((self.stem_tail, x.unsqueeze(1)), dim=1)  # (B, max(k), D), oldest first
                x = torch.addmm(self.stem_bias, window.flatten(1), self.stem_weight).add_(x)
                self.stem_tail = window[:, 1:]
        if self.ngram_after_stem:
            x = self._add_ngram_vectors(x, tokens)
        if model.patch is None:
            h = self._trunk_step(x, self.offset)
        else:
            h = self._decode_in_patch(x)
        self.offset += 1
        h = F.layer_norm(h, (c.dim,), *self.final_norm)
        return torch.mm(h, self.head) if self.head_bias is None else torch.addmm(self.head_bias, h, self.head)

    def _decode_in_patch(self, x: Tensor) -> Tensor:
        """A patched model's token x (B, D): the trunk runs when it completes a patch; -> (B, D) decoder output."""
        patch, P = self.model.patch, self.config.patch_size
        window = torch.cat((self.patch_tail, x.unsqueeze(1)), dim=1)  # (B, P, D): the current patch once complete
        self.patch_tail = window[:, 1:]
        if (self.offset + 1) % P == 0:
            o = self._trunk_step(F.linear(window.flatten(1), patch.encoder.weight), self.offset // P)
            self._read_context(patch.context(o))
        phase = (self.offset + 1) % P
        h = x + self.conditions[:, phase]
        if self.local is not None:
            h = self.local.add(h, phase)
        for block in self.blocks:
            h = block.residual(h)
        return h

    def _read_context(self, context: Tensor) -> None:
        """A patched model's new context (B, W): kept for `state()`, and its (B, P, D) conditions, one per phase."""
        self.context = context
        self.conditions = self.model.patch.conditions(context.unsqueeze(1))[:, 0]

    def _trunk_step(self, x: Tensor, position: int) -> Tensor:
        """One trunk row x (B, D) at trunk position `position` through every layer -> (B, D)."""
        into, last = position % self.segment_len, self.segment_len - 1
        if self.general or (self.state_rows is None and into in (0, last)):
            return self._general_step(x, position, into)
        if into == 0 and self.state_len:
            self._read_state_rows()
        for i, weights in enumerate(self.weights):
            x = self._layer_step(i, weights, x, into)
        self.rows += 1
        if into == last:
            self._write_state_rows()
        return x

    def _project_state_rows(self) -> None:
        """Per layer, the read rows' k|v and the write rows' q|k|v of the state it reads now (`ARC.state_rows`)."""
        self.state_qkv = [layer.arc.state_rows(layer._read(state), *projection)
                          for layer, projection, state in zip(self.model.layers, self.state_rows, self.layer_states)]

    def _read_state_rows(self) -> None:
        """At a segment's first row: the read rows' keys and values into buffer rows 0..S-1."""
        self._project_state_rows()
        for keys, values, (k_read, v_read, *_) in zip(self.keys, self.values, self.state_qkv):
            keys[0][:, :, : self.state_len].copy_(k_read)
            values[0][:, :, : self.state_len].copy_(v_read)
        self.rows = self.state_len

    def _write_state_rows(self) -> None:
        """After a segment's last row: each layer's write rows attend to [read rows; segment; write rows]
        (causal among the write rows), and the layer's state moves on."""
        B, S, filled = self.batch_size, self.state_len, self.rows
        for i, layer in enumerate(self.model.layers):
            if S:
                _, _, q_w, k_w, v_w = self.state_qkv[i]
                keys = torch.cat((self.keys[i][0][:, :, :filled], k_w), dim=2)
                values = torch.cat((self.values[i][0][:, :, :filled], v_w), dim=2)
                written = F.scaled_dot_product_attention(q_w, keys, values, attn_mask=self.write_mask,
                                                         scale=self.weights[i].scales[0])
                written = layer.arc.proj_state(written.transpose(1, 2).reshape(B, S, -1))
                self.layer_states[i] = layer._next_state(self.layer_states[i], written)
        self.rows = 0

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
            if p == 0:
                qkv = torch.mm(h, w.proj_in).view(B, H, 1, -1)
            else:  # heads as the batch of one bmm: `z @ weights` would copy the (H, d, d') weights B times
                qkv = torch.bmm(z.view(B, H, -1).transpose(0, 1), w.passes[p - 1]).transpose(0, 1).contiguous().view(B, H, 1, -1)
            if self.rotations is None:
                qk = qkv[..., : 2 * dk].view(B, H, 2, dk)  # this row's query and key
            else:  # both turned by one (2dk, 2dk) matrix, read in place (BLAS takes the row stride)
                qk = torch.mm(qkv.view(B * H, -1)[:, : 2 * dk], self.rotations[p][into]).view(B, H, 2, dk)
            self.key_rows[i][p][n].copy_(qk.select(2, 1))
            self.value_rows[i][p][n].copy_(qkv.select(2, 0)[..., 2 * dk :])
            z = F.scaled_dot_product_attention(qk[:, :, :1], self.key_spans[i][p][n], self.value_spans[i][p][n],
                                               scale=w.scales[p])
        return w.mlp.residual(torch.addmm(x, z.view(B, -1), w.proj_out))

    # ---------------------------------------------------------------------------------------------
    def state(self) -> OmState:
        caches = [None] * len(self.keys)
        if self.rows:
            caches = [tuple((k[:, :, : self.rows].clone(), v[:, :, : self.rows].clone()) for k, v in zip(ks, vs))
                      for ks, vs in zip(self.keys, self.values)]
        return OmState(list(self.layer_states), caches, self._current_stem_tail().clone(), self.offset,
                       None if self.patch_tail is None else self.patch_tail.clone(), self.context,
                       None if self.ngram is None else self._current_token_tail().clone())

    def select(self, rows: Tensor | list[int]) -> None:
        index = torch.as_tensor(rows, dtype=torch.long, device=self.stem_tail.device)
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        self.batch_size = len(index)
        self.keys = [[pick(k) for k in ks] for ks in self.keys]
        self.values = [[pick(v) for v in vs] for vs in self.values]
        self._views()
        self.layer_states = [pick(s) for s in self.layer_states]
        if getattr(self, "state_qkv", None):
            self.state_qkv = [tuple(map(pick, rows)) for rows in self.state_qkv]
        self.stem_tail = pick(self._current_stem_tail())
        if self.ngram is not None:
            self._set_token_tail(pick(self._current_token_tail()))
        if self.stem_table is not None:
            self.stem_ahead, self.recent = pick(self.stem_ahead), []
        if self.patch_tail is not None:
            self.patch_tail, self.context, self.conditions = map(pick, (self.patch_tail, self.context, self.conditions))
        if self.local is not None:
            self.local.select(index)


def _transposed(weight: Tensor) -> Tensor:
    """A Linear's (out, in) weight as a contiguous (in, out) copy, for `torch.mm(rows, weight)`."""
    return weight.detach().t().contiguous()


_SQRT_HALF = 0.7071067811865476


class _MLPWeights:
    """A pre-norm residual MLP's tensors: `residual(x)`, rows x (B, D) -> x + W_out gelu(W_in norm(x)), (B, D).

    gelu(u) = u/2 (1 + erf(u/sqrt 2)). With both matrices scaled by 1/sqrt 2, the hidden rows are
    a = u/sqrt 2 and a (1 + erf(a)) = sqrt 2 gelu(u), so one erf, one add and one multiply (in
    place) make the activation and the second matrix's scale undoes the sqrt 2.
    """

    def __init__(self, norm, mlp_in, mlp_out):
        self.norm = (norm.weight, norm.bias, norm.eps)
        self.w_in = _transposed(mlp_in.weight) * _SQRT_HALF  # (D, hidden)
        self.w_out = _transposed(mlp_out.weight) * _SQRT_HALF  # (hidden, D)

    def residual(self, x: Tensor) -> Tensor:
        a = torch.mm(F.layer_norm(x, (x.shape[-1],), *self.norm), self.w_in)
        return torch.addmm(x, torch.erf(a).add_(1).mul_(a), self.w_out)


class _LocalAttentionRows:
    """A patched decoder's `LocalAttention`, one row per step: `add(h, phase)` takes the row h (B, D)
    at its phase in the current group (0 starts a new group), keeps its key and value and returns
    h plus its attention over the group's rows so far, (B, D)."""

    def __init__(self, attention, batch_size: int, ref: Tensor):
        self.heads, P, D = attention.n_heads, attention.patch_size, ref.shape[1]
        self.norm = (attention.norm.weight, attention.norm.bias, attention.norm.eps)
        self.qkv, self.out = _transposed(attention.qkv.weight), _transposed(attention.out.weight)  # (D, 3D), (D, D)
        self.keys = ref.new_empty(batch_size, self.heads, P, D // self.heads)
        self.values = torch.empty_like(self.keys)

    def add(self, h: Tensor, phase: int) -> Tensor:
        B, D = h.shape
        qkv = torch.mm(F.layer_norm(h, (D,), *self.norm), self.qkv).view(B, 3, self.heads, 1, -1)
        self.keys[:, :, phase : phase + 1].copy_(qkv[:, 1])
        self.values[:, :, phase : phase + 1].copy_(qkv[:, 2])
        z = F.scaled_dot_product_attention(qkv[:, 0], self.keys[:, :, : phase + 1], self.values[:, :, : phase + 1])
        return torch.addmm(h, z.view(B, D), self.out)

    def select(self, index: Tensor) -> None:
        self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)


class _LayerWeights:
    """One ARCformer's tensors that a middle row uses, looked up once (module attribute access is slow)."""

    def __init__(self, layer):
        arc = layer.arc
        self.norm_attn = (layer.norm_attn.weight, layer.norm_attn.bias, layer.norm_attn.eps)
        self.proj_in = _transposed(arc.proj_in["segment"].weight)  # (D, H * (2dk + dv))
        self.passes = [weights["segment"] for weights in arc.pass_weights]
        self.proj_out, self.scales = _transposed(arc.proj_out.weight), arc.scales
        self.mlp = _MLPWeights(layer.norm_mlp, layer.mlp_in, layer.mlp_out)


def _stem_matrix(stem) -> tuple[Tensor | None, Tensor | None]:
    """The stem as one (max(k) * D, D) matrix over the window of the last max(k) inputs (oldest
    first), and its bias (D,); (None, None) without a stem."""
    if not stem.kernels:
        return None, None
    weight, bias = stem.lag_weights()  # [j]: the input j positions back
    return weight.detach().flip(0).reshape(-1, weight.shape[-1]).contiguous(), bias.detach()


def _rotations(arc, ref: Tensor) -> list[Tensor]:
    """Per pass, (L, 2dk, 2dk): the RoPE turn of a segment row at each position in its segment, as a
    matrix acting on row vectors [q | k] @ R (the same turn for both)."""
    tables = []
    for rope, dk in zip(arc.rope, arc.dims_key):
        R = rope.matrices(torch.arange(arc.segment_len))
        both = torch.zeros(arc.segment_len, 2 * dk, 2 * dk, dtype=torch.float64)
        both[:, :dk, :dk], both[:, dk:, dk:] = R, R
        tables.append(both.to(device=ref.device, dtype=ref.dtype))
    return tables
