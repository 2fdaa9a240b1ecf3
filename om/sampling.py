"""Incremental generation: one token at a time through the model state and per-pass key/value cache.

The prompt is fed once (in windows), then each generated token is fed alone, continuing the
state through an `IncrementalDecoder` (preallocated key/value buffers), so the cost per generated
token is attention over at most S + L rows per pass per layer, whatever came before.

Conventions:
- The stream starts from the document separator (or from a saved `StreamContext`), then the
  prompt; an empty prompt is allowed.
- Generating the document separator ends the generation (the document is over); other special ids
  are never generated.
- `max_bytes` caps the output; a token whose bytes would pass the cap ends the generation and is
  not printed, so chars/SentencePiece output is never cut inside a character.
- `stop`: generation ends as soon as the output contains this byte string; the stop string itself
  is not emitted, everything before it is. Bytes that might begin the stop string are held back
  until that is decided.
- temperature 0 is greedy (argmax, first index on ties), and so is any temperature below 1e-4. Otherwise logits / temperature, then
  top-k (0 = off), then top-p (nucleus: the smallest set of most likely tokens whose probability
  reaches p; 1 = off), then a draw from a `torch.Generator` seeded with `seed` (same seed, same
  output; None draws a seed from the OS).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from om.context_cache import StreamContext
from om.data.utf8 import complete_prefix
from om.errors import OmUserError
from om.evaluate import default_window, feed
from om.model.decoding import IncrementalDecoder

MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1_000_000
MAX_BYTES = 1_000_000_000
MAX_SEED = 2**63 - 1
GREEDY_BELOW = 1e-4
MAX_SAMPLES = 4096  # generate_many's num_samples
BYTE_STRINGS = [bytes((b,)) for b in range(256)]


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling options; `validate()` raises `OmUserError` naming the option and value (keyed by it)."""

    max_bytes: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: bytes | None = None

    def validate(self) -> "SamplingOptions":
        t = self.temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= MAX_TEMPERATURE:
            raise OmUserError(f"temperature {t}: must be a number from 0 (greedy) to {MAX_TEMPERATURE:g}", key="temperature")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise OmUserError(f"top_k {self.top_k}: must be from 0 (off) to {MAX_TOP_K}", key="top_k")
        p = self.top_p
        if not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1:
            raise OmUserError(f"top_p {p}: must be in (0, 1] (1 = off)", key="top_p")
        if not 0 <= self.max_bytes <= MAX_BYTES:
            raise OmUserError(f"max_bytes {self.max_bytes}: must be from 0 to {MAX_BYTES}", key="max_bytes")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise OmUserError(f"seed {self.seed}: must be from 0 to 2^63-1", key="seed")
        if self.stop is not None and len(self.stop) == 0:
            raise OmUserError("stop: must not be empty", key="stop")
        return self


def next_token(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None) -> int:
    """Pick one id from float32 logits (V,) (disallowed ids already at -inf)."""
    return next_tokens(logits[None], options, [generator])[0]


def next_tokens(logits: torch.Tensor, options: SamplingOptions, generators: list) -> list[int]:
    """Pick one id per row from float32 logits (R, V) (disallowed ids at -inf), row r drawing from
    generators[r]: the ids `torch.multinomial` would draw row by row, in a few ops for all rows."""
    return draw(logits, options, NoiseRows(generators, steps=1).next)


def draw(logits: torch.Tensor, options: SamplingOptions, noise) -> list[int]:
    """`next_tokens` with its Exp(1) noise from `noise(V)` -> (R, V), called only if the draw is random."""
    return draw_ids(logits, options, noise).tolist()


def draw_ids(logits: torch.Tensor, options: SamplingOptions, noise) -> torch.Tensor:
    """`draw`'s ids as a (R,) int64 tensor (which a decoder can take as its next input)."""
    if options.temperature < GREEDY_BELOW:  # dividing by a tiny temperature would overflow to inf
        return torch.argmax(logits, dim=-1)
    if options.temperature != 1.0:
        logits = logits / options.temperature
    if 0 < options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= options.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    # torch.multinomial(p, 1) is argmax(p / E) with E ~ Exp(1) drawn from its generator, so drawing
    # each row's E from that row's generator gives the same ids without its per-call checks.
    return torch.argmax(probs.div_(noise(probs.shape[-1])), dim=-1)


class NoiseRows:
    """Each row's Exp(1) noise for `draw`, from its own generator, drawn `steps` draws ahead.

    A CPU generator's (steps, V) draw is the same numbers as `steps` draws of (V,) one after
    another (tests/test_sample_generation.py checks it), so the ids are those of one draw per step,
    for one draw call per row every `steps` steps instead of every step.
    `next(vocab)` -> (R, vocab); `select(rows)` keeps the given rows (their unused noise with them).
    """

    def __init__(self, generators: list, steps: int = 64):
        self.generators, self.steps = list(generators), steps
        self.block: torch.Tensor | None = None
        self.rows: tuple[torch.Tensor, ...] = ()  # the block's steps, (R, V) views
        self.used = steps

    def next(self, vocab: int) -> torch.Tensor:
        if self.used == self.steps:
            # `exponential_` on a CPU float tensor is -log1p(-u) of a float64 uniform u from the
            # generator, rounded to float32, one sample at a time (about 21 ns each here); drawing u
            # with `uniform_` and transforming it in one vectorised pass gives the same numbers
            # (tests/test_sample_generation.py checks it) in about a third of the time.
            uniform = torch.empty(len(self.generators), self.steps, vocab, dtype=torch.float64)
            for row, g in zip(uniform, self.generators):
                row.uniform_(generator=g)
            self.block, self.used = torch.log1p(uniform.neg_()).neg_().float(), 0
            self.rows = self.block.unbind(1)
        self.used += 1
        return self.rows[self.used - 1]

    def select(self, rows: list[int]) -> None:
        self.generators = [self.generators[r] for r in rows]
        if self.block is not None:
            self.block = self.block[rows]
            self.rows = self.block.unbind(1)


class TokenDecoder:
    """Turns generated ids into bytes one at a time, in constant work per token.

    Every Om codec decodes an id to a fixed byte string (SentencePiece pieces included, spaces
    restored), so each id is decoded on its own. For chars and SentencePiece models the output is
    UTF-8: an unfinished sequence (from SentencePiece byte pieces) is held back until complete,
    and invalid bytes become U+FFFD.
    """

    def __init__(self, codec):
        self.codec = codec
        self.utf8 = codec.name != "bytes"
        self.held = b""

    def push(self, token: int) -> bytes:
        if not self.utf8 and 0 <= token < 256:
            return BYTE_STRINGS[token]  # the bytes codec decodes id b to the byte b
        out = bytes(self.codec.decode(np.array([token], dtype=np.int64)))
        if not self.utf8:
            return out
        out = self.held + out
        cut = complete_prefix(out)
        out, self.held = out[:cut], out[cut:]
        return _valid_utf8(out)

    def flush(self) -> bytes:
        """What is held back at the end (an unfinished sequence becomes U+FFFD)."""
        out, self.held = self.held, b""
        return _valid_utf8(out)


def _valid_utf8(data: bytes) -> bytes:
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")


def special_ids(codec) -> list[int]:
    """The codec's special ids as a list (`Codec.special_ids` maps names to ids)."""
    ids = codec.special_ids
    return [int(i) for i in (ids.values() if isinstance(ids, dict) else ids)]


def _longest_prefix_suffix(data: bytes, stop: bytes) -> int:
    """Length of the longest suffix of `data` that is a proper prefix of `stop`."""
    for k in range(min(len(data), len(stop) - 1), 0, -1):
        if data.endswith(stop[:k]):
            return k
    return 0


def encode_prompt(codec, prompt: bytes, errors: str = "strict") -> np.ndarray:
    """Encode prompt bytes (strict: invalid UTF-8 for a chars model is an `OmUserError`)."""
    if not prompt:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(codec.encoder(errors=errors, source="prompt").encode(prompt, final=True), dtype=np.int64)


def random_seed() -> int:
    """A seed from the OS, 0..2^63-1."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def _banned(codec, vocab: int, end_at_separator: bool) -> torch.Tensor:
    """(V,) bool: the ids never generated (special ids other than the separator, unless that is
    banned too; for bytes, the reserved ids above it that stand for no byte)."""
    sep = int(codec.doc_sep_id)
    banned = [i for i in special_ids(codec) if (i != sep or not end_at_separator) and i < vocab]
    if codec.name == "bytes":
        banned += [i for i in range(256, vocab) if i != sep]
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[banned] = True
    return mask


def _after_prompt(model, codec, prompt_ids: np.ndarray, context: StreamContext | None):
    """Feed the context's pending token and the prompt for one stream: (logits (1, 1, V) of the
    last one, state)."""
    context = context or StreamContext.fresh(codec)
    device = next(model.parameters()).device
    state = context.state_for(model, 1)
    ids = np.concatenate((np.array([context.pending], dtype=np.int64), prompt_ids.astype(np.int64)))
    state = feed(model, state, ids[:-1], default_window(model.config, 1))
    return model(torch.tensor([[int(ids[-1])]], device=device), state)


def generate_ids(
    model,
    codec,
    prompt_ids: np.ndarray,
    options: SamplingOptions,
    context: StreamContext | None = None,
    end_at_separator: bool = True,
) -> Iterator[int]:
    """Yield generated token ids (no cap on count: the caller stops), ending at a separator.

    With `end_at_separator=False` the separator is never generated (benchmarks use that to get a
    generation of a fixed length). The model runs only when the next id is requested.
    """
    seed = options.seed if options.seed is not None else random_seed()
    noise = NoiseRows([torch.Generator().manual_seed(seed)])
    banned_mask = _banned(codec, model.config.vocab_size, end_at_separator)
    sep, device = int(codec.doc_sep_id), next(model.parameters()).device
    was_training = model.training
    model.eval()
    # Inference mode is entered once per token, never held across a yield (the caller's code runs
    # there); the draw runs inside it too, where its ops skip autograd's dispatch.
    try:
        with torch.inference_mode():
            logits, state = _after_prompt(model, codec, prompt_ids, context)
            decoder = IncrementalDecoder(model, state, banned=banned_mask)  # its logits come masked
            last = logits[:, -1].masked_fill(banned_mask.to(logits.device), float("-inf"))
            fed = torch.zeros(1, dtype=torch.long, device=device)
            token = draw(last.float().cpu(), options, noise.next)[0]
        while token != sep:
            yield token
            with torch.inference_mode():
                fed.fill_(token)
                token = draw(decoder.step(fed).float().cpu(), options, noise.next)[0]
    finally:
        model.train(was_training)


def generate(
    model,
    codec,
    prompt: bytes = b"",
    max_bytes: int = 256,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: bytes | str | None = None,
    context: StreamContext | None = None,
    errors: str = "strict",
    end_at_separator: bool = True,
) -> Iterator[bytes]:
    """Generate a continuation of `prompt` and yield its bytes as they are produced.

    model: an `OmLLM`; codec: its `om.data.Codec`; context: continue a saved stream (`om cache`)
    instead of starting a document. Yields non-empty byte strings whose concatenation is at most
    `max_bytes` long. Options are validated and the prompt encoded (`errors`: "strict" or
    "replace" for invalid UTF-8) before anything is yielded, both raising `OmUserError`.
    end_at_separator=False: never generate the separator (always run to max_bytes or stop).
    """
    options = _checked_options(max_bytes, temperature, top_k, top_p, seed, stop)
    prompt_ids = encode_prompt(codec, bytes(prompt), errors)
    return _emit(codec, generate_ids(model, codec, prompt_ids, options, context, end_at_separator), options)


def _checked_options(max_bytes, temperature, top_k, top_p, seed, stop: bytes | str | None) -> SamplingOptions:
    """`SamplingOptions` validated (`OmUserError` naming the option), a str stop encoded as UTF-8."""
    if isinstance(stop, str):
        stop = stop.encode("utf-8")
    return SamplingOptions(max_bytes, temperature, top_k, top_p, seed, stop).validate()


def _emit(codec, ids: Iterator[int], options: SamplingOptions) -> Iterator[bytes]:
    """Bytes of the generated ids, applying max_bytes and the stop string (see module docstring)."""
    max_bytes, stop = options.max_bytes, options.stop
    if max_bytes == 0:
        return
    decoder = TokenDecoder(codec)
    produced, held = 0, b""
    for token in ids:
        piece = decoder.push(token)
        if produced + len(piece) > max_bytes:
            break
        produced += len(piece)
        if stop is None:
            if piece:
                yield piece
        else:
            held += piece
            hit = held.find(stop)
            if hit >= 0:
                if hit:
                    yield held[:hit]
                return
            keep = _longest_prefix_suffix(held, stop)
            if len(held) > keep:
                yield held[: len(held) - keep]
                held = held[len(held) - keep :]
        if produced == max_bytes:
            break
    else:
        tail = decoder.flush()
        if tail and produced + len(tail) <= max_bytes:
            held += tail
            if stop is not None and stop in held:
                held = held[: held.find(stop)]
    if held:
        yield held


@dataclass
class Sample:
    """One of `generate_many`'s continuations: its index (0-based), seed and bytes."""

    index: int
    seed: int
    data: bytes


def generate_many(
    model,
    codec,
    prompt: bytes = b"",
    num_samples: int = 1,
    max_bytes: int = 256,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: bytes | str | None = None,
    context: StreamContext | None = None,
    errors: str = "strict",
    end_at_separator: bool = True,
) -> list[Sample]:
    """`num_samples` continuations of one prompt, generated side by side as one batch.

    The prompt is read once; its state is copied to every row. Sample i draws from its own
    generator seeded with `seed + i` (seed None: one from the OS), so it is what `generate` gives
    with that seed alone (up to float rounding between batch shapes, which can only matter where
    two tokens are almost exactly as likely). A row leaves the batch when it has ended (separator,
    max_bytes or the stop string), so the others run on without it. end_at_separator=False: never
    generate the separator, as for `generate`.
    """
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise OmUserError(f"num_samples {num_samples}: must be from 1 to {MAX_SAMPLES}", key="num_samples")
    options = _checked_options(max_bytes, temperature, top_k, top_p, seed, stop)
    prompt_ids = encode_prompt(codec, bytes(prompt), errors)
    base = options.seed if options.seed is not None else random_seed()
    seeds = [(base + i) % (MAX_SEED + 1) for i in range(num_samples)]
    rows = [_Row(codec, options) for _ in seeds]
    noise = NoiseRows([torch.Generator().manual_seed(s) for s in seeds])
    banned_mask = _banned(codec, model.config.vocab_size, end_at_separator)
    sep, device = int(codec.doc_sep_id), next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits, state = _after_prompt(model, codec, prompt_ids, context)
            live = list(range(num_samples)) if max_bytes > 0 else []
            decoder = IncrementalDecoder(model, state.select([0] * len(live)), banned=banned_mask)
            last = logits[:, -1].masked_fill(banned_mask.to(logits.device), float("-inf")).expand(len(live), -1)
            while live:
                ids = draw_ids(last.float().cpu(), options, noise.next)
                going = [r for r, (i, t) in enumerate(zip(live, ids.tolist())) if t != sep and rows[i].take(t)]
                if not going:
                    break
                if len(going) < len(live):
                    decoder.select(going)
                    noise.select(going)
                    live, ids = [live[r] for r in going], ids[going]
                last = decoder.step(ids.to(device))
    finally:
        model.train(was_training)
    return [Sample(i, seeds[i], b"".join(_emit(codec, iter(row.ids), options))) for i, row in enumerate(rows)]


class _Row:
    """One sample's generated ids, and whether its output is decided (so it needs no more)."""

    def __init__(self, codec, options: SamplingOptions):
        self.options = options
        self.ids: list[int] = []
        self.decoder, self.tail, self.produced = TokenDecoder(codec), b"", 0

    def take(self, token: int) -> bool:
        """Record a (non-separator) token; False once the output can no longer change: max_bytes
        reached or passed, or the stop string seen (what `_emit` makes of the ids is then fixed)."""
        self.ids.append(token)
        piece = self.decoder.push(token)
        self.produced += len(piece)
        stop = self.options.stop
        if stop is None:
            return self.produced < self.options.max_bytes
        self.tail = (self.tail + piece)[-(len(stop) + len(piece)) :]  # enough to see a stop string ending here
        return self.produced < self.options.max_bytes and stop not in self.tail
