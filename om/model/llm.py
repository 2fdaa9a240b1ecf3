"""`OmLLM`: embedding -> causal conv stem -> ARCformer layers -> norm -> head, streamed by segment
(with `patch_size` > 1 the layers run on patches, between a patch encoder and a local decoder)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from om.model.arc import ARCformer
from om.model.config import OmConfig
from om.model.loss import next_token_loss
from om.model.ngram import HashedNgramEmbedding
from om.model.patching import PatchCodec
from om.model.pretrained import PretrainedMixin
from om.model.state import OmState
from om.model.stem import CausalConvStem

# Rows (batch x positions) that one layer-major group of whole segments runs at once at inference.
LAYER_MAJOR_ROWS = 8192


class OmLLM(PretrainedMixin, nn.Module):
    """An Om language model over token ids (bytes, characters or SentencePiece pieces).

    `forward(tokens, state=None) -> (logits, state)`: tokens (B, T) int64, any T >= 1, continuing
    `state` (a fresh `init_state` when None) -> logits (B, T, vocab_size) and the state after the
    last token. Splitting a stream into chunks and feeding them one after another gives the same
    logits as one call (up to float rounding): the input is cut at segment boundaries, and a
    partial segment is continued from the per-pass key/value cache in the state. Feeding one token
    at a time therefore costs attention over at most S + L rows per pass per layer.

    With `patch_size` P > 1 the layers run once per P tokens (`om.model.patching`): segments and
    states count patches, a partial patch waits in the state (`patch_tail`), and each token's
    logits come from a local decoder reading the trunk's output for the patches already complete.

    `activation_checkpointing` (an attribute, off by default): while gradients are being recorded,
    keep only each segment's inputs and recompute its layers in the backward pass, so that training
    memory for activations grows with one segment rather than with the whole sample (about a third
    more compute). The results and gradients are the same.

    `layer_major` (an attribute, on by default): at inference, several whole segments fed in one
    call run layer by layer (`ARCformer.segments`), the work that does not read the state done for
    all of them at once; off, they run segment by segment. The results are the same to float rounding.
    """

    activation_checkpointing: bool = False
    layer_major: bool = True

    def __init__(self, config: OmConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.padded_vocab_size, c.dim)
        self.ngram = HashedNgramEmbedding(c.dim, c.ngram_sizes, c.ngram_buckets) if c.ngram_sizes else None
        self.stem = CausalConvStem(c.dim, c.stem_kernels, c.stem_groups)
        self.patch = PatchCodec(c) if c.patch_size > 1 else None
        self.layers = nn.ModuleList(ARCformer(c.trunk_config()) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.head = nn.Linear(c.dim, c.padded_vocab_size, bias=False)
        self.apply(self._init_weights)
        if c.tie_embeddings:
            self.head.weight = self.embed.weight
        # Residual output projections scaled down with depth (GPT-2).
        for layer in self.layers:
            for proj in (layer.arc.proj_out, layer.mlp_out):
                nn.init.normal_(proj.weight, std=c.init_std / math.sqrt(2 * c.n_layers))
            if layer.state_gate is not None:
                nn.init.constant_(layer.state_gate.bias, 1.0)  # start by keeping ~73% of the old state
        decoder_blocks = c.decoder_layers + c.decoder_attention
        for block in self.patch.blocks if self.patch is not None else ():
            nn.init.normal_(block.mlp_out.weight, std=c.init_std / math.sqrt(2 * max(1, decoder_blocks)))
        if self.patch is not None and self.patch.attention is not None:
            nn.init.normal_(self.patch.attention.out.weight, std=c.init_std / math.sqrt(2 * decoder_blocks))

    def _init_weights(self, module: nn.Module) -> None:
        # The stem's convolutions keep PyTorch's default init (uniform, bound 1/sqrt(D*k), with
        # biases), on purpose: it dominates the std-0.02 embedding at the start, yet initialising
        # them like the rest measured 0.076 bits/byte worse on the 5-minute quickstart
        # (`python -m bench.stem_init`, BENCHMARKS.md "stem-init").
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
        return n

    def init_state(self, batch_size: int) -> OmState:
        """The state at the start of a stream: each layer's learned initial state, an empty stem tail."""
        c, weight = self.config, self.embed.weight
        patched = self.patch is not None
        return OmState(
            layer_states=[layer.initial_state.unsqueeze(0).expand(batch_size, -1, -1) for layer in self.layers],
            caches=[None] * c.n_layers,
            stem_tail=weight.new_zeros(batch_size, self.stem.tail_len, c.dim),
            offset=0,
            patch_tail=weight.new_zeros(batch_size, c.patch_size - 1, c.dim) if patched else None,
            context=self.patch.start.unsqueeze(0).expand(batch_size, -1) if patched else None,
            token_tail=self.ngram.initial_tail(batch_size, weight.device) if self.ngram is not None else None,
        )

    def forward(self, tokens: Tensor, state: OmState | None = None) -> tuple[Tensor, OmState]:
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have shape (B, T) with T >= 1, got {tuple(tokens.shape)}")
        B, T = tokens.shape
        if state is None:
            state = self.init_state(B)
        elif state.batch_size != B:
            raise ValueError(f"state has batch size {state.batch_size} but tokens have {B}")
        x, token_tail, grams = self.embed(tokens), None, None
        if self.ngram is not None:
            grams, token_tail = self.ngram(tokens, state.token_tail)
            if not self.config.ngram_after_stem:
                x = x + grams
        x, stem_tail = self.stem(x, state.stem_tail)
        if grams is not None and self.config.ngram_after_stem:
            x = x + grams
        layer_states, caches = list(state.layer_states), list(state.caches)
        if self.patch is None:
            h = self._trunk(x, layer_states, caches, state.offset)
            patch_tail = context = None
        else:
            h, patch_tail, context = self._patched(x, state, layer_states, caches)
        # Only the real vocabulary's rows of the (padded) head: no logits computed to be cut off and copied.
        logits = F.linear(self.norm(h), self.head.weight[: self.config.vocab_size])
        return logits, OmState(layer_states, caches, stem_tail, state.offset + T, patch_tail, context, token_tail)

    def _patched(self, x: Tensor, state: OmState, layer_states: list, caches: list) -> tuple[Tensor, Tensor, Tensor]:
        """Stem features x (B, T, D) of a patched model -> decoder features (B, T, D), the next patch
        tail and context; the trunk runs on the patches completed here (updating layer_states and caches)."""
        P, T = self.config.patch_size, x.shape[1]
        done = state.offset % P  # tokens of the current patch already read (their features are in the tail)
        pending = torch.cat((state.patch_tail[:, P - 1 - done :], x), dim=1) if done else x
        n = pending.shape[1] // P
        contexts = state.context.unsqueeze(1)
        if n:
            o = self._trunk(self.patch.encode(pending[:, : n * P]), layer_states, caches, state.offset // P)
            contexts = torch.cat((contexts, self.patch.context(o)), dim=1)
        # The prediction at stream position a reads the trunk after the patches complete at a, (a+1) // P
        # of them, conditioned for the phase (a+1) % P.
        ahead = torch.arange(T, device=x.device) + state.offset + 1
        conditions = self.patch.conditions(contexts).flatten(1, 2)  # (B, contexts * P, D)
        condition = conditions.index_select(1, (ahead // P - state.offset // P) * P + ahead % P)
        patch_tail = torch.cat((state.patch_tail, x), dim=1)[:, -(P - 1) :]
        prior = (state.offset + 1) % P if self.patch.attention is not None else 0
        if prior:  # the current group's earlier rows, read before this call: keys and values for its attention
            x = torch.cat((state.patch_tail[:, P - 1 - prior :], x), dim=1)
            condition = torch.cat((conditions[:, :prior], condition), dim=1)
        h = self.patch.decode(x, condition, prior)
        return h, patch_tail, contexts[:, -1]

    def _trunk(self, x: Tensor, layer_states: list[Tensor], caches: list, offset: int) -> Tensor:
        """Trunk rows x (B, n, D) at trunk position `offset` through every layer, segment by segment:
        -> (B, n, D); layer_states and caches (lists, one entry per layer) are updated in place."""
        L, n = self.config.segment_len, x.shape[1]
        start, outputs = 0, []
        inference = self.layer_major and not (self.training or torch.is_grad_enabled())
        while start < n:
            into_segment = offset % L
            whole = (n - start) // L * L if into_segment == 0 and inference else 0
            if whole >= 2 * L:  # several whole segments, in groups that bound the activations' memory
                count = min(whole, max(2, LAYER_MAJOR_ROWS // (L * x.shape[0])) * L)
            else:
                count = min(n - start, L - into_segment)
            finish = into_segment + count == L
            h = x[:, start : start + count]
            if whole >= 2 * L:
                # Inference over several whole segments: layer by layer, all segments at once where the
                # state does not enter (ARCformer.segments).
                for i, layer in enumerate(self.layers):
                    h, layer_states[i] = layer.segments(h, layer_states[i], offset)
            elif self.activation_checkpointing and finish and into_segment == 0 and torch.is_grad_enabled():
                h, layer_states[:] = self._checkpointed_segment(h, layer_states, offset)
            else:
                for i, layer in enumerate(self.layers):
                    out = layer.extend(h, layer_states[i], offset, caches[i], finish)
                    h, caches[i] = out.y, out.cache
                    if finish:
                        layer_states[i] = out.next_state
            outputs.append(h)
            start, offset = start + count, offset + count
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]

    def _checkpointed_segment(self, h: Tensor, layer_states: list[Tensor], offset: int) -> tuple[Tensor, list[Tensor]]:
        """One whole segment through every layer, recomputed in backward: (h, states) -> (h, next states)."""

        def run(h: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
            next_states = []
            for layer, state in zip(self.layers, states):
                h, next_state = layer(h, state, offset)
                next_states.append(next_state)
            return (h, *next_states)

        h, *next_states = checkpoint(run, h, *layer_states, use_reentrant=False)
        return h, next_states

    def loss(self, tokens: Tensor, targets: Tensor, state: OmState | None = None) -> tuple[Tensor, OmState]:
        """Mean next-token cross-entropy in nats: tokens, targets (B, T) -> (scalar, state)."""
        logits, state = self(tokens, state)
        return next_token_loss(logits, targets), state
