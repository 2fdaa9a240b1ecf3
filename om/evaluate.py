"""Streaming evaluation: bits per byte over inputs of any length, in bounded memory.

Each input is one stream. Its bytes are read in chunks (`chunk_bytes`), encoded incrementally by
the codec, and fed to the model in windows of `window` tokens, with the model state carried from
one window to the next, so the result equals one forward pass over the whole input (exact
streaming) while memory stays bounded by the chunk and window sizes.

What is scored: the negative log-likelihood of every token given everything before it in the
stream. The first token has no past, so the stream starts from the document separator (as every
training document does): the separator is fed first and the first real token is predicted from
it. Every token of the input is therefore scored, and `bits_per_byte` = total NLL in bits / the
number of original UTF-8 bytes read (the lm-evaluation-harness definition; for a dataset split,
which holds ids, the bytes are the codec's `byte_count` of them, and separators inside the split
are scored as tokens but cover no bytes). Starting from a `StreamContext` (a saved `om cache`
file) continues that stream instead: its last token is fed first and the input's first token is
predicted from it, with no separator in between.

Several inputs run side by side in the batch dimension, in groups of `batch_size`. All rows of a
state share one offset, so a group advances in lockstep: each step feeds as many tokens as every
row still has (at most `window`), and a row whose input has ended is dropped with
`OmState.select`. Per-input totals therefore equal evaluating each input alone.

By position: the NLL and bytes of each prediction are attributed to the segment index of the
token the prediction is made from (stream position // tokens per segment, counted from the start of the
stream, including any cached context). Segments 0..63 get a bucket each; beyond that, buckets
double in width (64-127, 128-255, ...), so the table stays short for inputs of any length.
"""

from __future__ import annotations

import codecs as _codecs
import contextlib
import io
import math
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
import torch

from om.context_cache import StreamContext
from om.data.sources import expand_inputs
from om.data.utf8 import check_errors
from om.errors import OmUserError, printable
from om.model.loss import next_token_loss

CHUNK_BYTES = 1 << 20
LOGITS_BUDGET = 64 << 20  # bytes of float32 logits per window, all rows together
MAX_WINDOW = 8192
LINEAR_BUCKETS = 64
LN2 = math.log(2.0)


# Inputs ------------------------------------------------------------------------------------------
@dataclass
class InputSource:
    """One stream to evaluate or read: raw bytes (`open_bytes`) or already-encoded ids (`ids`).

    name: how reports name it (a path, "<stdin>", "val"). size: bytes (or tokens, for ids) when
    known, used only to group inputs of similar length.
    """

    name: str
    size: int | None = None
    open_bytes: Callable[[], BinaryIO] | None = None
    ids: np.ndarray | None = None


def stdin_source(stream: BinaryIO | None = None) -> InputSource:
    """Standard input (binary), read once."""
    stream = stream if stream is not None else sys.stdin.buffer
    return InputSource("<stdin>", None, open_bytes=lambda: contextlib.nullcontext(stream))


def ids_source(name: str, ids: np.ndarray) -> InputSource:
    """Already-encoded token ids (e.g. a dataset split memmap), read in slices."""
    return InputSource(name, int(len(ids)), ids=ids)


def _file_source(source, stdin: BinaryIO | None = None) -> InputSource:
    """An `om.data.sources.Source` (a file, a pipe, or stdin) as an `InputSource`."""
    if source.path is None:
        return stdin_source(stdin)
    return InputSource(source.name, source.size, open_bytes=lambda: open(source.path, "rb"))


def _is_path(item) -> bool:
    return not isinstance(item, (InputSource, bytes, bytearray, memoryview)) and not hasattr(item, "read")


def eval_sources(items: Sequence, stdin: BinaryIO | None = None) -> list[InputSource]:
    """What `evaluate` and `read_context` take, as sources, in order: `InputSource`s as they are,
    bytes and binary file objects wrapped, and paths, folders and "-" (stdin) expanded by
    `om.data.sources.expand_inputs` (a folder: its files, recursively, sorted, hidden entries
    skipped; a file given twice is read twice). A missing path, an empty folder or "-" given twice
    is an `OmUserError`.
    """
    expanded = iter(expand_inputs([item for item in items if _is_path(item)], read_once=False))
    sources: list[InputSource] = []
    for item in items:
        if isinstance(item, InputSource):
            sources.append(item)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
            sources.append(InputSource(f"<bytes {len(data)}>", len(data), open_bytes=lambda d=data: io.BytesIO(d)))
        elif hasattr(item, "read"):
            name = getattr(item, "name", "<stream>")
            sources.append(InputSource(name, None, open_bytes=lambda s=item: contextlib.nullcontext(s)))
        else:
            sources.extend(_file_source(source, stdin) for source in next(expanded))
    return sources


def _id_chunks(ids: np.ndarray, step: int) -> Iterator[np.ndarray]:
    """Slices of an id array (copies, in its dtype). A memmap (or a `BytesSplit`) is read with plain file reads instead,
    since touching its pages would count the whole split in this process's resident memory."""
    from om.data.bytesplit import BytesSplit

    if isinstance(ids, BytesSplit):
        yield from ids.chunks(step)
        return
    filename = getattr(ids, "filename", None)
    if isinstance(ids, np.memmap) and filename and ids.ndim == 1:
        with open(filename, "rb") as f:
            f.seek(int(ids.offset))
            for start in range(0, len(ids), step):
                count = min(step, len(ids) - start)
                yield np.fromfile(f, dtype=ids.dtype, count=count)
        return
    for start in range(0, len(ids), step):
        yield np.array(ids[start : start + step])


_WHITESPACE = re.compile(r"\s+")


class WordCounter:
    r"""Counts words as lm-evaluation-harness does for `word_perplexity`, fed text in pieces.

    lm-eval counts `len(re.split(r"\s+", doc))` words per document: one more than the number of
    runs of (Unicode) whitespace. Here: `add(data)` feeds UTF-8 bytes (any split, even inside a
    character or a whitespace run; invalid bytes count as non-space characters), `end_document()`
    closes the current document, `words` is the count so far. A document with no characters
    counts 0 words (lm-eval would count 1 for an empty string; om reports no words for no text).
    """

    def __init__(self):
        self.finished = 0  # words of closed documents
        self._decoder = _codecs.getincrementaldecoder("utf-8")("replace")
        self._runs = 0
        self._any = False  # the open document has characters
        self._space = False  # its last character is whitespace

    def add(self, data: bytes, final: bool = False) -> None:
        self._text(self._decoder.decode(bytes(data), final))

    def _text(self, text: str) -> None:
        if not text:
            return
        runs = len(_WHITESPACE.findall(text))
        if self._space and text[0].isspace():
            runs -= 1  # the run started in an earlier piece
        self._runs += runs
        self._any = True
        self._space = text[-1].isspace()

    def end_document(self) -> None:
        self._text(self._decoder.decode(b"", True))
        self.finished += self._open_words()
        self._decoder.reset()
        self._runs, self._any, self._space = 0, False, False

    def _open_words(self) -> int:
        return self._runs + 1 if self._any else 0

    @property
    def words(self) -> int:
        return self.finished + self._open_words()


def _decodes(codec) -> bool:
    """Whether the codec turns ids back into bytes (every Om codec does; a foreign one may not)."""
    return callable(getattr(codec, "decode", None))


class TokenReader:
    """Reads one `InputSource` as chunks of token ids, counting bytes, documents and words.

    Chunks keep the codec's compact dtype (uint8/16/32); callers widen only what they feed.

    `bytes`: original bytes covered so far (bytes read from a byte source; `codec.byte_count` of
    an ids source). `documents`: runs of non-separator tokens seen so far. `words`: words of the
    text so far as lm-evaluation-harness counts them (see `WordCounter`; a byte source is one
    document, an ids source is cut into documents at its separators and decoded by the codec);
    None for an ids source whose codec cannot decode ids to bytes.
    """

    def __init__(self, source: InputSource, codec, chunk_bytes: int = CHUNK_BYTES, errors: str = "strict"):
        self.source, self.codec, self.chunk_bytes = source, codec, max(1, int(chunk_bytes))
        self.errors = errors
        self.bytes = 0
        self.documents = 0
        self._in_document = False
        self._sep = int(codec.doc_sep_id)
        self._words = WordCounter() if source.ids is None or _decodes(codec) else None

    @property
    def words(self) -> int | None:
        return None if self._words is None else self._words.words

    def _count(self, ids: np.ndarray) -> np.ndarray:
        if len(ids):
            in_doc = ids != self._sep
            starts = in_doc[1:] & ~in_doc[:-1]
            self.documents += int(starts.sum()) + int(bool(in_doc[0]) and not self._in_document)
            self._in_document = bool(in_doc[-1])
        return ids

    def _count_id_words(self, ids: np.ndarray) -> None:
        if self._words is None:
            return
        try:
            start = 0
            for cut in np.flatnonzero(ids == self._sep).tolist():
                if cut > start:
                    self._words.add(self.codec.decode(ids[start:cut]))
                self._words.end_document()
                start = cut + 1
            if start < len(ids):
                self._words.add(self.codec.decode(ids[start:]))
        except NotImplementedError:
            self._words = None

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.source.ids is not None:
            for chunk in _id_chunks(self.source.ids, self.chunk_bytes):
                self.bytes += int(self.codec.byte_count(chunk))
                self._count_id_words(chunk)
                yield self._count(chunk)
            if self._words is not None:
                self._words.end_document()
            return
        encoder = self.codec.encoder(errors=self.errors, source=self.source.name)
        with self.source.open_bytes() as f:
            while True:
                data = f.read(self.chunk_bytes)
                if not data:
                    break
                self.bytes += len(data)
                self._words.add(data)
                ids = np.asarray(encoder.encode(data, final=False))
                if len(ids):
                    yield self._count(ids)
        self._words.end_document()
        ids = np.asarray(encoder.encode(b"", final=True))
        if len(ids):
            yield self._count(ids)


# Results -----------------------------------------------------------------------------------------
def _bits(nll: float, count: int) -> float | None:
    return nll / LN2 / count if count else None


def _pow2(bits: float | None) -> float | None:
    return None if bits is None else 2.0 ** min(bits, 1000.0)


@dataclass
class StreamResult:
    """Totals for one input (or all inputs together): NLL in nats, bytes, tokens, documents, and
    words (lm-evaluation-harness's count, see `WordCounter`; None when they could not be counted).
    """

    name: str
    bytes: int = 0
    tokens: int = 0
    documents: int = 0
    nll_nats: float = 0.0
    words: int | None = 0

    @property
    def bits_per_byte(self) -> float | None:
        return _bits(self.nll_nats, self.bytes)

    @property
    def bits_per_token(self) -> float | None:
        return _bits(self.nll_nats, self.tokens)

    @property
    def word_perplexity(self) -> float | None:
        """e ** (NLL in nats / words), lm-evaluation-harness's `word_perplexity`; None without words."""
        if not self.words:
            return None
        return math.exp(min(self.nll_nats / self.words, 700.0))

    def to_dict(self) -> dict:
        bpb, bpt = self.bits_per_byte, self.bits_per_token
        return {
            "name": printable(self.name),
            "bits_per_byte": bpb,
            "byte_perplexity": _pow2(bpb),
            "bits_per_token": bpt,
            "token_perplexity": _pow2(bpt),
            "nll_nats": self.nll_nats,
            "bytes": self.bytes,
            "tokens": self.tokens,
            "documents": self.documents,
            "words": self.words,
            "word_perplexity": self.word_perplexity,
        }


def bucket_of(segment: int) -> int:
    """Bucket index of a segment index: one bucket per segment below 64, then doubling widths."""
    if segment < LINEAR_BUCKETS:
        return segment
    return LINEAR_BUCKETS + segment.bit_length() - LINEAR_BUCKETS.bit_length()


def bucket_range(bucket: int) -> tuple[int, int]:
    """First and last segment index of a bucket."""
    if bucket < LINEAR_BUCKETS:
        return bucket, bucket
    first = LINEAR_BUCKETS << (bucket - LINEAR_BUCKETS)
    return first, 2 * first - 1


@dataclass
class PositionBucket:
    """NLL, tokens and bytes of the predictions made from segments first_segment..last_segment."""

    first_segment: int
    last_segment: int
    tokens: int = 0
    bytes: int = 0
    nll_nats: float = 0.0

    @property
    def label(self) -> str:
        if self.first_segment == self.last_segment:
            return str(self.first_segment)
        return f"{self.first_segment}-{self.last_segment}"

    def to_dict(self) -> dict:
        bpb = _bits(self.nll_nats, self.bytes)
        return {
            "segments": self.label,
            "first_segment": self.first_segment,
            "last_segment": self.last_segment,
            "bits_per_byte": bpb,
            "bits_per_token": _bits(self.nll_nats, self.tokens),
            "nll_nats": self.nll_nats,
            "bytes": self.bytes,
            "tokens": self.tokens,
        }


@dataclass
class EvalResult:
    """What `evaluate` returns: per-input rows (in input order), totals, and timing.

    by_position: buckets in segment order (None unless asked for); segment_len: tokens per segment (the model's L, times patch_size).
    """

    inputs: list[StreamResult]
    segment_len: int
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    by_position: list[PositionBucket] | None = None

    @property
    def total(self) -> StreamResult:
        t = StreamResult("total")
        for r in self.inputs:
            t.bytes += r.bytes
            t.tokens += r.tokens
            t.documents += r.documents
            t.nll_nats += r.nll_nats
            t.words = None if t.words is None or r.words is None else t.words + r.words
        return t

    @property
    def bytes_per_second(self) -> float | None:
        return self.total.bytes / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict:
        d = self.total.to_dict()
        d.pop("name")
        d.update(seconds=self.seconds, bytes_per_second=self.bytes_per_second, peak_rss_mb=self.peak_rss_mb)
        d["inputs"] = [r.to_dict() for r in self.inputs]
        if self.by_position is not None:
            d["by_position"] = [b.to_dict() for b in self.by_position]
        return d


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (10^6 bytes, as every size om reports)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024) / 1e6


# Checks and defaults -----------------------------------------------------------------------------
MAX_BATCH_SIZE = 4096


def check_batch_size(batch_size: int) -> int:
    """`batch_size` if it is from 1 to MAX_BATCH_SIZE, else an `OmUserError` about `batch_size`."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise OmUserError(f"batch_size {batch_size}: must be from 1 to {MAX_BATCH_SIZE}", key="batch_size")
    return batch_size


def validation_slice(split: np.ndarray, name: str, tokens: int | None = None, streams: int = 1) -> list[InputSource]:
    """The first `tokens` ids of a split (all of it when None) cut into `streams` contiguous pieces.

    Piece r covers ids [r*n, (r+1)*n) with n = tokens // streams (the last piece runs to `tokens`)
    and is scored as its own stream, starting from the document separator like every input. This
    is the one definition of "the validation slice": training's logged val figure and
    `om eval CKPT --val-tokens N --val-streams R` both score exactly these sources. `split` is
    what `Dataset.split` gives: an id array or memmap, or a `BytesSplit` (its pieces are views).
    """
    total = len(split) if tokens is None else min(int(tokens), len(split))
    if total < 1:
        raise OmUserError(f"{name}: the split holds no tokens to evaluate")
    streams = max(1, min(int(streams), total))
    n = total // streams
    bounds = [(r * n, (r + 1) * n if r < streams - 1 else total) for r in range(streams)]
    if streams == 1 and total == len(split):
        return [ids_source(name, split)]
    return [ids_source(f"{name}[{a}:{b}]", _id_slice(split, a, b)) for a, b in bounds]


def _id_slice(ids: np.ndarray, start: int, stop: int) -> np.ndarray:
    """ids[start:stop]; a memmap stays a memmap of its own file region, because a sliced memmap
    keeps its parent's `offset` and `_id_chunks` reads the file from that offset. A `BytesSplit`
    gives a view of itself (nothing is read until `_id_chunks`)."""
    from om.data.bytesplit import BytesSplit

    if isinstance(ids, BytesSplit):
        return ids.view(start, stop)
    filename = getattr(ids, "filename", None)
    if isinstance(ids, np.memmap) and filename and ids.ndim == 1 and stop > start:
        offset = int(ids.offset) + start * ids.dtype.itemsize
        return np.memmap(filename, dtype=ids.dtype, mode="r", offset=offset, shape=(stop - start,))
    return ids[start:stop]


def validation_inputs(checkpoint, tokens: int | None = None, streams: int = 1) -> list[InputSource]:
    """The validation split of the dataset a checkpoint was trained on (see `validation_slice`).

    Refuses (OmUserError) when the checkpoint names no dataset, the dataset is gone, it changed
    since training (fingerprint), or it was encoded with another codec.
    """
    info = checkpoint.dataset
    hint = "give INPUT files, folders or - (stdin) instead"
    if not info or not info.get("path"):
        raise OmUserError(f"{checkpoint.path}: the checkpoint names no training dataset; {hint}")
    path = Path(info["path"])
    if not path.exists():
        raise OmUserError(f"{path}: the dataset this checkpoint was trained on is gone; {hint}")
    from om.data import open_dataset

    dataset = open_dataset(path)
    expected = info.get("fingerprint")
    if expected and dataset.fingerprint != expected:
        raise OmUserError(
            f"{path}: the dataset changed since training (fingerprint {str(dataset.fingerprint)[:16]}..., "
            f"checkpoint expects {str(expected)[:16]}...); {hint}"
        )
    codec = checkpoint.codec
    if dataset.codec.name != codec.name or dataset.codec.vocab_size != codec.vocab_size:
        raise OmUserError(
            f"{path}: the dataset is encoded with the {dataset.codec.name} codec (vocab {dataset.codec.vocab_size}), "
            f"the checkpoint uses {codec.name} (vocab {codec.vocab_size})"
        )
    return validation_slice(dataset.split("val"), f"{path} (val)", tokens, streams)


# Evaluation --------------------------------------------------------------------------------------
def default_window(config, batch_size: int) -> int:
    """Tokens per forward call: a multiple of a segment's tokens keeping the float32 logits near 64 MiB."""
    L = config.segment_tokens
    fit = LOGITS_BUDGET // max(1, batch_size * config.vocab_size * 4)
    return max(L, min(MAX_WINDOW, fit) // L * L)


@contextlib.contextmanager
def eval_mode(model):
    """Eval mode and inference mode for the duration; the model's training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


class _Positions:
    def __init__(self, segment_len: int, codec):
        self.L, self.codec = segment_len, codec
        self.buckets: dict[int, PositionBucket] = {}

    def add(self, start: int, nll: np.ndarray, targets: np.ndarray) -> None:
        """nll, targets: (B, n) for predictions made from stream positions start..start+n-1."""
        n, col = nll.shape[1], 0
        while col < n:
            b = bucket_of((start + col) // self.L)
            last_pos = (bucket_range(b)[1] + 1) * self.L  # first position past this bucket
            end = min(n, last_pos - start)
            acc = self.buckets.get(b)
            if acc is None:
                acc = self.buckets[b] = PositionBucket(*bucket_range(b))
            acc.nll_nats += float(nll[:, col:end].sum(dtype=np.float64))
            acc.tokens += nll.shape[0] * (end - col)
            acc.bytes += sum(int(self.codec.byte_count(row[col:end])) for row in targets)
            col = end

    def result(self) -> list[PositionBucket]:
        return [self.buckets[b] for b in sorted(self.buckets)]


ProgressCallback = Callable[[int, "int | None"], None]


class _Progress:
    """Counts the bytes behind the tokens scored so far for a `progress(bytes_done, bytes_total)`
    callback, called after every forward call (so a slow model still reports often); the total is
    the sum of the inputs' sizes, None when one is unknown (stdin) or counts ids (a split)."""

    def __init__(self, callback: ProgressCallback | None, codec, sources: Sequence[InputSource]):
        self.callback, self.codec = callback, codec
        known = all(s.size is not None and s.ids is None for s in sources)
        self.total = sum(s.size for s in sources) if known else None
        self.done = self.settled = 0

    def scored(self, targets: np.ndarray) -> None:
        """After a forward call whose predicted tokens are `targets` (any shape)."""
        if self.callback is not None:
            self.done += int(self.codec.byte_count(targets.reshape(-1)))
            self.callback(self.done, self.total)

    def finished(self, nbytes: int) -> None:
        """Inputs covering `nbytes` bytes are done: from here the count is exact again."""
        self.settled += nbytes
        self.done = self.settled
        if self.callback is not None:
            self.callback(self.done, self.total)


def _run_group(model, codec, sources, context, results, chunk_bytes, window, positions, errors, progress=None) -> None:
    device = next(model.parameters()).device
    sep = int(codec.doc_sep_id)
    readers = [TokenReader(s, codec, chunk_bytes, errors) for s in sources]
    streams = [iter(r) for r in readers]
    # Buffers hold ids in the codec's compact dtype; only each window is widened to int64.
    compact = np.dtype(getattr(codec, "dtype", np.int64))
    buffers = [np.array([context.pending], dtype=compact) for _ in sources]
    first = [context.pending == sep] * len(sources)
    exhausted = [False] * len(sources)
    active = list(range(len(sources)))
    state = context.state_for(model, len(sources))
    while True:
        for r in active:
            while not exhausted[r] and len(buffers[r]) < window + 1:
                chunk = next(streams[r], None)
                if chunk is None:
                    exhausted[r] = True
                    break
                if first[r] and sources[r].ids is not None and len(chunk) and chunk[0] == sep:
                    chunk = chunk[1:]  # a split that starts with the separator: it is our start token
                first[r] = False
                buffers[r] = buffers[r].copy()  # keep only the unfed tail; frees the chunk it was cut from
                buffers[r] = np.concatenate((buffers[r], chunk.astype(compact, copy=False)))
        keep = [i for i, r in enumerate(active) if len(buffers[r]) > 1]
        if len(keep) < len(active):
            active = [active[i] for i in keep]
            if not active:
                break
            state = state.select(keep)
        n = min(window, min(len(buffers[r]) - 1 for r in active))
        inputs = np.stack([buffers[r][:n] for r in active]).astype(np.int64)
        targets = np.stack([buffers[r][1 : n + 1] for r in active]).astype(np.int64)
        start = state.offset
        logits, state = model(torch.from_numpy(inputs).to(device), state)
        nll = next_token_loss(logits, torch.from_numpy(targets).to(device), reduction="none")
        nll_np = nll.double().cpu().numpy()
        for i, r in enumerate(active):
            results[r].nll_nats += float(nll_np[i].sum())
            results[r].tokens += n
            buffers[r] = buffers[r][n:]
        if positions is not None:
            positions.add(start, nll_np, targets)
        if progress is not None:
            progress.scored(targets)
    for r, reader in enumerate(readers):
        results[r].bytes = reader.bytes
        results[r].documents = reader.documents
        results[r].words = reader.words
    if progress is not None:
        progress.finished(sum(reader.bytes for reader in readers))


def evaluate(
    model,
    codec,
    inputs: Sequence,
    batch_size: int = 8,
    chunk_bytes: int = CHUNK_BYTES,
    window: int | None = None,
    context: StreamContext | None = None,
    by_position: bool = False,
    errors: str = "strict",
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Score each input as one stream; see the module docstring for what is scored and how.

    model: an `OmLLM`; codec: an `om.data.Codec`; inputs: anything `eval_sources` takes;
    batch_size: streams run side by side; chunk_bytes: bytes read (or ids sliced) at a time;
    window: tokens per forward call (default `default_window`); context: start every input from
    this saved stream instead of the document separator; by_position: fill `by_position`;
    errors: "strict" (invalid UTF-8 for a chars/SentencePiece model is an `OmUserError` naming the
    input and offset) or "replace" (U+FFFD); progress: called as `progress(bytes_done, bytes_total)`
    after every forward call (bytes_total None when an input's size is unknown, as for stdin or a
    dataset split; bytes_done is exact at the end of each group of inputs).
    """
    check_batch_size(batch_size)
    check_errors(errors)
    sources = eval_sources(inputs)
    context = context or StreamContext.fresh(codec)
    window = window or default_window(model.config, min(batch_size, max(1, len(sources))))
    results = [StreamResult(s.name) for s in sources]
    positions = _Positions(model.config.segment_tokens, codec) if by_position else None
    # Group inputs of similar (known) size so that rows of a group end at about the same time.
    order = sorted(range(len(sources)), key=lambda i: -(sources[i].size if sources[i].size is not None else -1))
    counter = _Progress(progress, codec, sources) if progress is not None else None
    t0 = time.perf_counter()
    with eval_mode(model):
        for g in range(0, len(order), batch_size):
            group = order[g : g + batch_size]
            sub = [results[i] for i in group]
            _run_group(model, codec, [sources[i] for i in group], context, sub, chunk_bytes, window, positions, errors, counter)
    seconds = time.perf_counter() - t0
    return EvalResult(
        inputs=results,
        segment_len=model.config.segment_tokens,
        seconds=seconds,
        peak_rss_mb=peak_rss_mb(),
        by_position=positions.result() if positions is not None else None,
    )


# Reading a context -------------------------------------------------------------------------------
def feed(model, state, ids: np.ndarray, window: int):
    """Run `ids` (1-D) through the model for batch 1 in windows; returns the new state."""
    device = next(model.parameters()).device
    for start in range(0, len(ids), window):
        chunk = torch.from_numpy(np.ascontiguousarray(ids[start : start + window], dtype=np.int64))
        _, state = model(chunk.to(device)[None], state)
    return state


def read_context(
    model,
    codec,
    inputs: Sequence,
    context: StreamContext | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    window: int | None = None,
    errors: str = "strict",
    progress: ProgressCallback | None = None,
) -> StreamContext:
    """Read the inputs once, as one stream, and return where it stands (for `om cache`).

    The inputs are joined like training documents: separator, first input, separator, second
    input, ... (starting from `context` instead of a fresh separator if given). The stream is kept
    open: whatever reads the returned context next continues right after the last input.
    `progress`: as for `evaluate`, called after every window fed.
    """
    sources = eval_sources(inputs)
    ctx = context or StreamContext.fresh(codec)
    window = window or default_window(model.config, 1)
    sep = np.array([codec.doc_sep_id], dtype=np.int64)
    counter = _Progress(progress, codec, sources)
    with eval_mode(model):
        state, pending, total = ctx.state_for(model, 1), np.array([ctx.pending], dtype=np.int64), ctx.bytes_read

        def push(ids: np.ndarray):
            nonlocal state, pending
            ids = np.concatenate((pending, ids))
            state = feed(model, state, ids[:-1], window)
            pending = ids[-1:]

        for i, source in enumerate(sources):
            if i > 0:
                push(sep)
            reader = TokenReader(source, codec, chunk_bytes, errors)
            for chunk in reader:
                for at in range(0, len(chunk), window):  # a window at a time, to report progress after each
                    push(chunk[at : at + window])
                    counter.scored(chunk[at : at + window])
            counter.finished(reader.bytes)
            total += reader.bytes
    return StreamContext(
        state=state, pending=int(pending[0]), bytes_read=total, inputs=list(ctx.inputs) + [s.name for s in sources]
    )
