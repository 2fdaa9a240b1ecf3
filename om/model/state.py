"""`OmState`: everything needed to continue a stream, in bounded size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from om.model.arc import SegmentCache


@dataclass
class OmState:
    """The state of an `OmLLM` after reading a prefix of a stream.

    layer_states: one (B, S, D) tensor per layer, the state the layer reads in its current segment.
    caches: one per layer, the per-pass keys/values of the unfinished segment's rows (None at a
        segment boundary); at most S + L rows each.
    stem_tail: (B, max(k)-1, D) the last embedded inputs, so the conv stem continues exactly.
    offset: tokens consumed so far (the stream position of the next token).
    patch_tail, context: only with `patch_size` P > 1 (else None): (B, P-1, D) the stem features of
        the last P-1 tokens (the first offset % P of the current patch are read from its end), and
        (B, D) the decoder's context, the normalised trunk output after the last complete patch.
    token_tail: only with `ngram_sizes` (else None): (B, max(n)-1) int64, the last token ids read
        (-1 before the stream), so the hashed n-gram embedding continues exactly.

    Its size never depends on `offset`.
    """

    layer_states: list[Tensor]
    caches: list[SegmentCache | None]
    stem_tail: Tensor
    offset: int = 0
    patch_tail: Tensor | None = None
    context: Tensor | None = None
    token_tail: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.stem_tail.shape[0]

    def tensors(self) -> list[Tensor]:
        out = list(self.layer_states) + [self.stem_tail]
        out += [t for t in (self.patch_tail, self.context, self.token_tail) if t is not None]
        for cache in self.caches:
            for k, v in cache or ():
                out += [k, v]
        return out

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def _map(self, fn) -> "OmState":
        return OmState(
            layer_states=[fn(s) for s in self.layer_states],
            caches=[None if c is None else tuple((fn(k), fn(v)) for k, v in c) for c in self.caches],
            stem_tail=fn(self.stem_tail),
            offset=self.offset,
            patch_tail=None if self.patch_tail is None else fn(self.patch_tail),
            context=None if self.context is None else fn(self.context),
            token_tail=None if self.token_tail is None else fn(self.token_tail),
        )

    def detach(self) -> "OmState":
        return self._map(lambda t: t.detach())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "OmState":
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def select(self, rows: Tensor | list[int]) -> "OmState":
        """Keep only the given batch rows."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.stem_tail.device)
        return self._map(lambda t: t.index_select(0, index))

    def restart_rows(self, rows, fresh: "OmState") -> "OmState":
        """Rows where `rows` (B,) bool is True take `fresh` (an `init_state`), the others continue
        this state, which must sit at a segment boundary (no cache). The offset is re-based to 0:
        RoPE is relative, so only where segments start matters, and every step sees the same positions."""
        mask = torch.as_tensor(rows, device=fresh.stem_tail.device)

        def pick(new: Tensor, old: Tensor) -> Tensor:
            return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)

        return OmState(
            layer_states=[pick(a, b) for a, b in zip(fresh.layer_states, self.layer_states)],
            caches=[None] * len(fresh.caches),
            stem_tail=pick(fresh.stem_tail, self.stem_tail),
            offset=0,
            patch_tail=None if fresh.patch_tail is None else pick(fresh.patch_tail, self.patch_tail),
            context=None if fresh.context is None else pick(fresh.context, self.context),
            token_tail=None if fresh.token_tail is None else pick(fresh.token_tail, self.token_tail),
        )

    def to_dict(self) -> dict[str, Tensor]:
        """A flat dict of contiguous tensors (for safetensors)."""
        d: dict[str, Tensor] = {
            "offset": torch.tensor([self.offset], dtype=torch.int64),
            "stem_tail": self.stem_tail,
        }
        for name in ("patch_tail", "context", "token_tail"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        for i, s in enumerate(self.layer_states):
            d[f"layers.{i}.state"] = s
            for p, (k, v) in enumerate(self.caches[i] or ()):
                d[f"layers.{i}.cache.{p}.k"] = k
                d[f"layers.{i}.cache.{p}.v"] = v
        return {name: t.detach().contiguous() for name, t in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> "OmState":
        try:
            offset = int(d["offset"].reshape(-1)[0])
            n_layers = 1 + max(int(name.split(".")[1]) for name in d if name.startswith("layers."))
            layer_states, caches = [], []
            for i in range(n_layers):
                layer_states.append(d[f"layers.{i}.state"])
                cache, p = [], 0
                while f"layers.{i}.cache.{p}.k" in d:
                    cache.append((d[f"layers.{i}.cache.{p}.k"], d[f"layers.{i}.cache.{p}.v"]))
                    p += 1
                caches.append(tuple(cache) if cache else None)
            return cls(layer_states, caches, d["stem_tail"], offset, d.get("patch_tail"), d.get("context"), d.get("token_tail"))
        except (KeyError, ValueError, IndexError) as err:
            raise ValueError(f"not a valid Om state dict: {err}") from None
