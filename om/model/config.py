"""`OmConfig`: every hyperparameter of an Om model, validated, and round-tripped through JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Positional = Literal["rope", "cope", "rope+cope", "none"]
AttentionBackend = Literal["auto", "sdpa", "xformers"]


class OmConfig(BaseModel):
    """Hyperparameters of an `OmLLM`.

    Unknown keys are refused, so a typo in a recipe or a config.json is an error, not a silent
    default. `dims_key[p]` / `dims_value[p]` are the per-head query/key and value widths of memory
    pass p; there are `len(dims_key)` passes.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    vocab_size: int = Field(256, ge=1, description="number of token ids the model reads and predicts")
    dim: int = Field(256, ge=1, description="model width D")
    n_layers: int = Field(4, ge=1, description="number of ARCformer layers")
    n_heads: int = Field(4, ge=1, description="attention heads per pass")
    dims_key: list[int] = Field(default_factory=lambda: [64, 32], min_length=1, description="per-head query/key width of each memory pass")
    dims_value: list[int] = Field(default_factory=lambda: [64, 32], min_length=1, description="per-head value width of each memory pass")
    attn_scales: list[float] | None = Field(None, description="softmax scale per pass (default 1/sqrt(dims_key[p]))")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width as a multiple of dim")
    segment_len: int = Field(128, ge=1, description="segment length L (positions per recurrent step)")
    state_len: int = Field(16, ge=0, description="state length S per layer (0 turns the memory off)")
    state_update: Literal["replace", "gated", "residual"] = Field(
        "replace", description="replace: the write rows become the next state (the Om design); gated: a learned "
        "per-channel mix of the old state and the write rows; residual: the write rows are added to the old state "
        "and each row is rescaled to unit RMS, so keeping what is there is the default and the size stays bounded")
    state_positions: Literal["around", "aligned", "unrotated"] = Field(
        "around", description="where RoPE puts the state rows, relative to the segment's first row at 0: around: "
        "read rows at -S..-1 and write rows at L..L+S-1; aligned: write row j at read row j's position -S+j, so "
        "copying a row is a zero-distance match; unrotated: every state row at 0, i.e. RoPE leaves state rows as they are")
    stem_kernels: list[int] = Field(default_factory=lambda: [2, 3, 4], description="causal conv stem kernel widths ([] disables the stem)")
    stem_groups: int = Field(1, ge=1, description="groups of each stem convolution: 1 is dense (D*D*k multiply-adds per "
                             "token), dim is depthwise (D*k); dim must be a multiple of it")
    ngram_sizes: list[int] = Field(default_factory=list, description="hashed n-gram embeddings (om/model/ngram.py): for each "
                                   "size n, a learned vector for the last n tokens, found by hashing their ids into a table of "
                                   "ngram_buckets rows and added to the token's embedding ([] turns them off)")
    ngram_buckets: int = Field(8192, ge=1, description="rows of each hashed n-gram table (ngram_sizes only)")
    ngram_after_stem: bool = Field(False, description="add the n-gram vectors to the stem's output instead of to the "
                                   "embeddings it reads (ngram_sizes only)")
    patch_size: int = Field(1, ge=1, description="tokens per trunk position: with P > 1 the ARC layers run once per "
                            "patch of P tokens and a local decoder predicts each token (see om/model/patching.py); "
                            "segment_len and state_len then count patches")
    decoder_layers: int = Field(1, ge=0, description="residual MLP blocks of the local decoder (patch_size > 1 only)")
    decoder_mlp_ratio: float | None = Field(
        None, gt=0, description="hidden width of the local decoder's MLP blocks as a multiple of dim (default: "
        "mlp_ratio). They run once per token, so they set most of a patched model's cost per byte")
    trunk_dim: int | None = Field(
        None, ge=1, description="width of the ARC layers of a patched model (default: dim). The layers run once per "
        "patch, so a trunk wider than the byte-level parts (embedding, stem, decoder, head) costs 1/P as much per "
        "byte as the same width unpatched; their MLPs are trunk_dim * mlp_ratio wide")
    decoder_context: Literal["shared", "per_phase"] = Field(
        "shared", description="how the local decoder reads the trunk's output (patch_size > 1 only): shared: one "
        "projection for every byte of the patch, plus a learned vector per phase; per_phase: a projection of its own "
        "for each phase (as MEGABYTE splits its global output), P times the weights, computed once per patch")
    decoder_attention: bool = Field(
        False, description="give the local decoder (patch_size > 1 only) one causal attention block, before its MLP blocks, "
        "over the rows that share the trunk context: each byte then sees the bytes since that context by attention, "
        "not only through the stem's window (as MEGABYTE's local model does)")
    positional: Positional = Field("rope", description="rope | cope | rope+cope | none")
    rope_base: float = Field(10000.0, gt=1.0)
    rope_fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of each head's q/k dims that RoPE rotates")
    cope_max_positions: int | None = Field(None, ge=2, description="CoPE position table size (default 2*state_len + segment_len)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on attention weights and residual branches (training only)")
    tie_embeddings: bool = True
    norm_eps: float = Field(1e-5, gt=0.0)
    init_std: float = Field(0.02, gt=0.0)
    vocab_multiple: int = Field(64, ge=1, description="embedding/head rows are padded to a multiple of this")
    attention_backend: AttentionBackend = "auto"

    @model_validator(mode="after")
    def _check_consistency(self) -> "OmConfig":
        if len(self.dims_key) != len(self.dims_value):
            raise ValueError(
                f"dims_key has {len(self.dims_key)} passes but dims_value has {len(self.dims_value)}; they must match"
            )
        if any(d < 1 for d in self.dims_key + self.dims_value):
            raise ValueError("dims_key and dims_value entries must be >= 1")
        if self.attn_scales is not None and len(self.attn_scales) != len(self.dims_key):
            raise ValueError(f"attn_scales needs one entry per pass ({len(self.dims_key)})")
        if "rope" in self.positional:
            for d in self.dims_key:
                if self.rotary_dims(d) < 2:
                    raise ValueError(f"dims_key entry {d} leaves no pair of dims to rotate with rope_fraction={self.rope_fraction}")
        if any(k < 1 for k in self.stem_kernels):
            raise ValueError(f"stem_kernels must be >= 1, got {self.stem_kernels}")
        if any(n < 1 for n in self.ngram_sizes) or len(set(self.ngram_sizes)) != len(self.ngram_sizes):
            raise ValueError(f"ngram_sizes must be distinct sizes >= 1, got {self.ngram_sizes}")
        if self.ngram_sizes and max(self.ngram_sizes) * (self.vocab_size + 1) >= 2**32:
            raise ValueError(f"ngram_sizes up to {max(self.ngram_sizes)} over a vocabulary of {self.vocab_size}: the hash "
                             "needs max(ngram_sizes) * (vocab_size + 1) < 2^32")
        if self.trunk_dim is not None and self.patch_size == 1:
            raise ValueError("trunk_dim needs patch_size > 1 (unpatched, the layers have width dim)")
        if self.decoder_mlp_ratio is not None and self.patch_size == 1:
            raise ValueError("decoder_mlp_ratio needs patch_size > 1 (unpatched, there is no local decoder)")
        if self.decoder_attention and self.patch_size == 1:
            raise ValueError("decoder_attention needs patch_size > 1 (unpatched, there is no local decoder)")
        if self.decoder_attention and self.dim % self.n_heads:
            raise ValueError(f"decoder_attention splits dim {self.dim} into n_heads {self.n_heads} heads: it must divide it")
        if self.dim % self.stem_groups:
            raise ValueError(f"stem_groups {self.stem_groups} does not divide dim {self.dim}")
        return self

    # Derived quantities -------------------------------------------------------------------------
    @property
    def n_passes(self) -> int:
        return len(self.dims_key)

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return ((self.vocab_size + m - 1) // m) * m

    @property
    def mlp_hidden(self) -> int:
        return self._width(self.mlp_ratio)

    @property
    def decoder_hidden(self) -> int:
        """Hidden width of the local decoder's MLP blocks (patched models)."""
        return self._width(self.decoder_mlp_ratio or self.mlp_ratio)

    def _width(self, ratio: float) -> int:
        return max(1, int(round(self.dim * ratio)))

    @property
    def layer_dim(self) -> int:
        """Width of the ARC layers: trunk_dim when set, else dim."""
        return self.trunk_dim or self.dim

    def trunk_config(self) -> "OmConfig":
        """This config as the ARC layers see it: dim = layer_dim (so their MLPs are layer_dim * mlp_ratio wide)."""
        if self.trunk_dim is None:
            return self
        return self.model_copy(update={"dim": self.trunk_dim, "trunk_dim": None})

    @property
    def segment_tokens(self) -> int:
        """Tokens per segment: segment_len trunk positions of patch_size tokens each."""
        return self.segment_len * self.patch_size

    @property
    def stem_tail_len(self) -> int:
        """Inputs of the previous chunk the stem needs to continue a stream: max(k) - 1."""
        return max(self.stem_kernels, default=1) - 1

    @property
    def cope_positions(self) -> int:
        return self.cope_max_positions or (2 * self.state_len + self.segment_len)

    def rotary_dims(self, head_dim: int) -> int:
        """How many of a head's q/k dims RoPE rotates (even, at most head_dim)."""
        return int(head_dim * self.rope_fraction) // 2 * 2

    def pass_scale(self, p: int) -> float:
        if self.attn_scales is not None:
            return float(self.attn_scales[p])
        return 1.0 / math.sqrt(self.dims_key[p])

    # JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> "OmConfig":
        return cls.model_validate_json(text)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "OmConfig":
        return cls.from_json(Path(path).read_text())

    def to_dict(self) -> dict:
        return json.loads(self.to_json())
