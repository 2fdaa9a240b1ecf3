"""Lossless compression with a bytes-codec checkpoint: arithmetic (range) coding driven by the
model's next-byte probabilities (`om compress` / `om decompress`, see docs/compress.md).

The data is cut into blocks of `block_size` bytes (the last may be shorter). Each block is its own
stream, started the way `om eval` starts a document: a fresh `model.init_state`, the document
separator fed first, then the block's bytes, each predicted from everything before it in the
block. Blocks are coded side by side, one batch row each, in waves of at most `wave_rows` rows:
every step feeds one byte of every row of the wave and codes the next byte of every row whose block
has not ended. Rows whose block has ended are fed a pad byte (0) and their predictions ignored, so
the batch shape stays fixed within a wave and the compressor and the decompressor run exactly the
same computation. All predictions go to one range coder (constriction's `RangeEncoder` with
`Categorical(perfect=False)`), in order: wave by wave, step by step, row by row.

Decoding works only if the decompressor computes bit-identical probabilities: the same weights,
fp32 on CPU, the same torch thread count (recorded in the header and set again), the same batch
shapes, and in practice the same torch build and CPU instruction set. The decoded data is checked
against the sha256 in the header, so a mismatch is an error, never wrong output.

File layout (all integers little-endian):

    b"OMZ" + version byte (4)
    header length      uint32
    header             UTF-8 JSON (see `compress_bytes`)
    header sha256      32 bytes, of the header JSON
    payload            the range coder's uint32 words (header["payload_words"] of them)
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from om.errors import OmUserError
from om.model.decoding import IncrementalDecoder

VERSION = 4  # 2: the decoder sums in another order (transposed weights, stem by table), so its probabilities differ from 1 by rounding;
# 3: the state rows are projected and turned in other matmuls (ARC.state_rows), which may round differently from 2
# 4: the decoder's MLP scales both matrices by 1/sqrt 2 (one elementwise op less per row), which rounds differently from 3
MAGIC = b"OMZ" + bytes([VERSION])
FORMAT = f"om-compress/{VERSION}"
CODER = "constriction range coder, Categorical(perfect=False), float64 softmax over logits[:256]"
DEFAULT_BLOCK_SIZE = 4096
DEFAULT_WAVE_ROWS = 256
MAX_BLOCK_SIZE = 1 << 20
MAX_WAVE_ROWS = 4096
MAX_HEADER_BYTES = 1 << 16
PAD = 0  # fed to rows whose block has ended
NUM_BYTES = 256
PROGRESS_EVERY = 64  # steps between progress callbacks

Progress = Callable[[int, int], None]


@dataclass
class Header:
    """What a compressed file records about itself (the parsed JSON header)."""

    checkpoint: str  # sha256 of the checkpoint's model.safetensors
    config: str | None  # sha256 of its config.json
    codec: str
    doc_sep_id: int
    length: int  # original bytes
    sha256: str  # of the original data
    block_size: int
    wave_rows: int
    threads: int
    torch: str
    constriction: str
    payload_words: int
    payload_sha256: str
    coder: str = CODER
    format: str = FORMAT

    def to_json(self) -> bytes:
        """The header as compact UTF-8 JSON."""
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":")).encode("utf-8")


# The model step ----------------------------------------------------------------------------------
def _step(decoder: IncrementalDecoder, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, `tokens` (B,) int64 -> logits (B, 256) float32 over the byte ids.
    Every model call of compression goes through here, through the incremental decoder (whose
    arithmetic, like the batch shape, is the same on both sides)."""
    return decoder.step(tokens)[:, :NUM_BYTES]


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    """(B, 256) float64 probabilities from float32 logits, as constriction takes them."""
    probs = torch.softmax(logits.double(), dim=-1).numpy()
    if not np.isfinite(probs).all():
        from om.errors import OmRunError

        raise OmRunError("the model produced non-finite probabilities (NaN or inf logits); nothing was written")
    return probs


# Checks ------------------------------------------------------------------------------------------
def check_sizes(block_size: int, wave_rows: int) -> None:
    """An `OmUserError` unless 1 <= block_size <= MAX_BLOCK_SIZE and 1 <= wave_rows <= MAX_WAVE_ROWS."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise OmUserError(f"block_size {block_size}: must be from 1 to {MAX_BLOCK_SIZE:,} bytes", key="block_size")
    if isinstance(wave_rows, bool) or not isinstance(wave_rows, int) or not 1 <= wave_rows <= MAX_WAVE_ROWS:
        raise OmUserError(f"wave_rows {wave_rows}: must be from 1 to {MAX_WAVE_ROWS:,}", key="wave_rows")


def check_model(model, codec, where: str = "the checkpoint") -> None:
    """An `OmUserError` unless `model` is fp32 on CPU and `codec` is the bytes codec: compression
    needs probabilities that the decompressor reproduces bit for bit."""
    if codec.name != "bytes":
        raise OmUserError(f"{where}: uses the {codec.name} codec; om compress needs a bytes-codec checkpoint")
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise OmUserError(f"{where}: the model is {param.dtype} on {param.device}; om compress runs it in float32 on CPU only")


class _Threads:
    """Within the block, torch uses `n` CPU threads; the previous count is restored after."""

    def __init__(self, n: int) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n != self.before:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)


# Coding ------------------------------------------------------------------------------------------
def _waves(length: int, block_size: int, wave_rows: int):
    """(start byte, rows, lengths of the rows' blocks) of each wave of a `length`-byte input."""
    blocks = -(-length // block_size)
    for first in range(0, blocks, wave_rows):
        rows = min(wave_rows, blocks - first)
        start = first * block_size
        lengths = np.full(rows, block_size, dtype=np.int64)
        lengths[-1] = min(block_size, length - (first + rows - 1) * block_size)
        yield start, rows, lengths


def _code(model, doc_sep_id: int, length: int, block_size: int, wave_rows: int, grid_for, code_step,
          progress: Progress | None, wave_done=None) -> None:
    """Run the model over every wave of a `length`-byte input. For each wave, `grid_for(start, rows,
    lengths)` gives its (rows, L) uint8 grid of bytes (pad 0 after a block's end); at step t,
    `code_step(grid, t, live, probs)` codes byte t of the first `live` rows (the rows whose block is
    longer than t: blocks are in order and only the file's last one is short) from their (live, 256)
    probabilities, the decoder filling grid[:live, t]. The grid's column t is then fed to the model.
    `wave_done(start, grid, lengths)`, if given, is called after each wave."""
    done = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start, rows, lengths in _waves(length, block_size, wave_rows):
                grid = grid_for(start, rows, lengths)
                steps = int(lengths.max())
                decoder = IncrementalDecoder(model, model.init_state(rows))
                tokens = torch.full((rows,), doc_sep_id, dtype=torch.int64)
                for t in range(steps):
                    logits = _step(decoder, tokens)
                    live = int((lengths > t).sum())
                    code_step(grid, t, live, _probabilities(logits[:live]))
                    done += live
                    if t + 1 < steps:
                        tokens = torch.from_numpy(grid[:, t].astype(np.int64))
                    if progress is not None and (t % PROGRESS_EVERY == 0 or t + 1 == steps):
                        progress(done, length)
                if wave_done is not None:
                    wave_done(start, grid, lengths)
    finally:
        model.train(was_training)


def encode_blocks(model, doc_sep_id: int, data: bytes, block_size: int = DEFAULT_BLOCK_SIZE, wave_rows: int = DEFAULT_WAVE_ROWS,
                  progress: Progress | None = None) -> np.ndarray:
    """Range-code `data` with `model`'s next-byte probabilities (see the module docstring); returns
    the compressed uint32 words. Call under the thread count the decoder will use."""
    import constriction

    check_sizes(block_size, wave_rows)
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)

    def grid_for(start: int, rows: int, lengths: np.ndarray) -> np.ndarray:
        steps = int(lengths.max())
        grid = np.full((rows, steps), PAD, dtype=np.uint8)
        full = rows - 1 if lengths[-1] < steps else rows
        grid[:full] = buf[start : start + full * steps].reshape(full, steps)
        if full < rows:
            last = start + full * steps
            grid[-1, : lengths[-1]] = buf[last : last + lengths[-1]]
        return grid

    def code_step(grid: np.ndarray, t: int, live: int, probs: np.ndarray) -> None:
        encoder.encode(grid[:live, t].astype(np.int32), family, probs)

    _code(model, doc_sep_id, len(buf), block_size, wave_rows, grid_for, code_step, progress)
    return np.asarray(encoder.get_compressed(), dtype=np.uint32)


def decode_blocks(model, doc_sep_id: int, words: np.ndarray, length: int, block_size: int = DEFAULT_BLOCK_SIZE,
                  wave_rows: int = DEFAULT_WAVE_ROWS, progress: Progress | None = None) -> bytes:
    """The inverse of `encode_blocks`: `length` bytes decoded from the uint32 `words` with the same
    model, block size, wave rows (and thread count). Corrupt input decodes to garbage, not an error:
    the caller checks a hash."""
    import constriction

    check_sizes(block_size, wave_rows)
    decoder = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
    family = constriction.stream.model.Categorical(perfect=False)
    out = np.zeros(length, dtype=np.uint8)

    def grid_for(start: int, rows: int, lengths: np.ndarray) -> np.ndarray:
        return np.full((rows, int(lengths.max())), PAD, dtype=np.uint8)

    def code_step(grid: np.ndarray, t: int, live: int, probs: np.ndarray) -> None:
        grid[:live, t] = decoder.decode(family, probs)

    def wave_done(start: int, grid: np.ndarray, lengths: np.ndarray) -> None:
        for row, n in enumerate(lengths.tolist()):
            out[start + row * block_size : start + row * block_size + n] = grid[row, :n]

    _code(model, doc_sep_id, length, block_size, wave_rows, grid_for, code_step, progress, wave_done)
    return out.tobytes()


# Files -------------------------------------------------------------------------------------------
def _constriction_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("constriction")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def compress_bytes(ckpt, data: bytes, block_size: int = DEFAULT_BLOCK_SIZE, wave_rows: int = DEFAULT_WAVE_ROWS,
                   threads: int | None = None, progress: Progress | None = None) -> bytes:
    """The om-compressed file of `data` with the checkpoint `ckpt` (an `om.checkpoint.Checkpoint`
    whose model is fp32 on CPU, bytes codec).

    threads: torch CPU threads to compute with (default: the current count); recorded in the
    header, with the checkpoint's fingerprint, the config's sha256, the codec, the original length
    and sha256, block size, wave rows, the torch and constriction versions and the payload's size
    and sha256. Bad sizes or model raise `OmUserError`.
    """
    check_sizes(block_size, wave_rows)
    check_model(ckpt.model, ckpt.codec, str(ckpt.path))
    data = bytes(data)
    threads = torch.get_num_threads() if threads is None else int(threads)
    with _Threads(threads):
        words = encode_blocks(ckpt.model, int(ckpt.codec.doc_sep_id), data, block_size, wave_rows, progress)
    payload = words.astype("<u4").tobytes()
    header = Header(
        checkpoint=ckpt.fingerprint,
        config=_config_sha256(ckpt),
        codec=ckpt.codec.name,
        doc_sep_id=int(ckpt.codec.doc_sep_id),
        length=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        block_size=block_size,
        wave_rows=wave_rows,
        threads=threads,
        torch=torch.__version__,
        constriction=_constriction_version(),
        payload_words=len(words),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    ).to_json()
    return MAGIC + struct.pack("<I", len(header)) + header + hashlib.sha256(header).digest() + payload


def _config_sha256(ckpt) -> str | None:
    """The sha256 of the checkpoint's config.json, as its trainer.json records it (None if it does not)."""
    return (ckpt.trainer.get("files") or {}).get("config.json")


def _field(info: dict, key: str, kind: type, name: str, low: int | None = None, high: int | None = None):
    value = info.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) or (low is not None and not low <= value <= high):
        raise OmUserError(f"{name}: header field {key} is missing or invalid ({value!r})")
    return value


def read_header(blob: bytes, name: str = "<input>") -> tuple[Header, bytes]:
    """(header, payload) of an om-compressed file's bytes `blob`; `name` (the file) goes into the
    errors. An `OmUserError` for a file that is not om-compressed, of another format version,
    truncated, with trailing bytes, or whose header or payload fails its checksum."""
    if blob[:3] != MAGIC[:3]:
        raise OmUserError(f"{name}: not an om-compressed file (it does not start with {MAGIC[:3].decode()})")
    if len(blob) < 8:
        raise OmUserError(f"{name}: truncated om-compressed file ({len(blob)} bytes)")
    if blob[3] != VERSION:
        raise OmUserError(f"{name}: om-compressed format version {blob[3]}; this om reads version {VERSION}")
    (header_len,) = struct.unpack("<I", blob[4:8])
    if header_len > MAX_HEADER_BYTES:
        raise OmUserError(f"{name}: corrupted om-compressed file (header length {header_len:,} bytes)")
    end = 8 + header_len + 32
    if len(blob) < end:
        raise OmUserError(f"{name}: truncated om-compressed file ({len(blob):,} bytes, the header alone needs {end:,})")
    raw = blob[8 : 8 + header_len]
    if hashlib.sha256(raw).digest() != blob[8 + header_len : end]:
        raise OmUserError(f"{name}: corrupted om-compressed file (the header fails its sha256)")
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OmUserError(f"{name}: corrupted om-compressed file (the header is not JSON)") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise OmUserError(f"{name}: header format {info.get('format') if isinstance(info, dict) else info!r}, expected {FORMAT}")
    header = Header(
        checkpoint=_field(info, "checkpoint", str, name),
        config=info.get("config") if isinstance(info.get("config"), str) else None,
        codec=_field(info, "codec", str, name),
        doc_sep_id=_field(info, "doc_sep_id", int, name, 0, 1 << 31),
        length=_field(info, "length", int, name, 0, 1 << 62),
        sha256=_field(info, "sha256", str, name),
        block_size=_field(info, "block_size", int, name, 1, MAX_BLOCK_SIZE),
        wave_rows=_field(info, "wave_rows", int, name, 1, MAX_WAVE_ROWS),
        threads=_field(info, "threads", int, name, 1, 1024),
        torch=_field(info, "torch", str, name),
        constriction=_field(info, "constriction", str, name),
        payload_words=_field(info, "payload_words", int, name, 0, 1 << 62),
        payload_sha256=_field(info, "payload_sha256", str, name),
        coder=_field(info, "coder", str, name),
    )
    expected = end + 4 * header.payload_words
    if len(blob) < expected:
        raise OmUserError(f"{name}: truncated om-compressed file ({len(blob):,} bytes, expected {expected:,})")
    if len(blob) > expected:
        raise OmUserError(f"{name}: {len(blob) - expected:,} unexpected bytes after the end of the om-compressed data")
    payload = blob[end:]
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise OmUserError(f"{name}: corrupted om-compressed file (the payload fails its sha256)")
    return header, payload


def decompress_bytes(ckpt, blob: bytes, name: str = "<input>", progress: Progress | None = None) -> bytes:
    """The original data of the om-compressed file `blob` (named `name` in errors), decoded with
    the checkpoint `ckpt` under the thread count the header records (restored after).

    An `OmUserError` (see `read_header`) for a bad file, one made with another checkpoint, codec or
    coder, and for decoded data that fails the recorded sha256 (different torch build or CPU)."""
    header, payload = read_header(blob, name)
    check_model(ckpt.model, ckpt.codec, str(ckpt.path))
    if header.checkpoint != ckpt.fingerprint:
        raise OmUserError(
            f"{name}: compressed with another checkpoint (weights sha256 {header.checkpoint[:16]}...; "
            f"{ckpt.path} has {ckpt.fingerprint[:16]}...)"
        )
    config = _config_sha256(ckpt)
    if header.config is not None and config is not None and header.config != config:
        raise OmUserError(f"{name}: compressed with the same weights but another config.json than {ckpt.path}'s")
    if header.codec != ckpt.codec.name or header.doc_sep_id != int(ckpt.codec.doc_sep_id) or header.coder != CODER:
        raise OmUserError(f"{name}: made with codec {header.codec} / coder {header.coder!r}, which this om does not decode")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    with _Threads(header.threads):
        data = decode_blocks(ckpt.model, header.doc_sep_id, words, header.length, header.block_size, header.wave_rows, progress)
    if hashlib.sha256(data).hexdigest() != header.sha256:
        here = f"torch {torch.__version__}" + ("" if torch.__version__ == header.torch else f", compressed with torch {header.torch}")
        raise OmUserError(
            f"{name}: the decoded data fails the sha256 recorded at compression ({here}; {header.threads} thread(s)): "
            "this machine computes different probabilities (another torch build or CPU instruction set?); nothing was written"
        )
    return data
