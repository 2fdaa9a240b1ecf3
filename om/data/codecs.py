"""Codecs: how text becomes token ids and back. The interface, the bytes and chars codecs, loading.

Every codec maps bytes to a 1-D array of ids in `[0, vocab_size)` and back. Data ids come first;
special ids (at least `doc_sep`) sit above them. `byte_count(ids)` says how many original UTF-8
bytes a run of ids stands for, so bits per byte can be compared across codecs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from om.data.bytesplit import BytesSplit
from om.data.utf8 import Utf8Decoder, check_errors
from om.errors import OmUserError, renamed_keys

CODEC_FILE = "codec.json"
CODEC_FORMAT_VERSION = 1
CODEC_NAMES = ("bytes", "chars", "sentencepiece")
MAX_CODE_POINT = 0x110000
_BLOCK = 1 << 24  # ids per block in byte_count


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned integer dtype that holds ids `0..vocab_size-1`."""
    if vocab_size <= 1 << 8:
        return np.dtype("u1")
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    return np.dtype("<u4")


class Encoder:
    """Streams bytes into ids: `encode(chunk, final=False) -> ndarray` of the codec's dtype.

    Chunks may split a UTF-8 character (or, for SentencePiece, a line) anywhere; the encoder keeps
    the unfinished tail for the next call and `final=True` flushes it. `offset` is the number of
    bytes fed so far that are fully encoded; `pending_bytes` how many are held back.
    """

    def __init__(self, errors: str = "strict", source: str | None = None) -> None:
        self.errors = check_errors(errors)
        self.source = source

    @property
    def pending_bytes(self) -> int:
        return 0

    def encode(self, chunk: bytes, final: bool = False) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class Codec:
    """Base class. Bytes in (`encode`, `encoder`), ids out; ids in (`decode`), bytes out.

    Attributes: `name`, `vocab_size` (all ids, specials included), `special_ids` (name -> id, at
    least "doc_sep"). Special ids decode to nothing, except the chars codec's unknown ids, which
    decode to U+FFFD. Subclasses fill `_byte_lengths` (original UTF-8 bytes per id) and implement
    `encoder`, `decode`, `_options` and `_save_files`.
    """

    name: str = ""
    vocab_size: int = 0
    special_ids: dict[str, int] = {}
    _byte_lengths: np.ndarray

    @property
    def doc_sep_id(self) -> int:
        return self.special_ids["doc_sep"]

    @property
    def dtype(self) -> np.dtype:
        """The dtype of encoded arrays and of the dataset's .bin files."""
        return dtype_for(self.vocab_size)

    def encoder(self, errors: str = "strict", source: str | None = None) -> Encoder:  # pragma: no cover
        raise NotImplementedError

    def encode(self, data: bytes, errors: str = "strict") -> np.ndarray:
        """Ids of one complete text (no document separators added)."""
        return self.encoder(errors).encode(bytes(data), final=True)

    def decode(self, ids) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def byte_count(self, ids) -> int:
        """How many original UTF-8 bytes the ids cover (special ids count 0)."""
        ids = self._in_range(np.asarray(ids).reshape(-1))
        total = 0
        for start in range(0, ids.size, _BLOCK):  # blocks: a huge memmap needs no same-sized temporary
            total += int(self._byte_lengths[ids[start : start + _BLOCK]].sum(dtype=np.int64))
        return total

    def _in_range(self, ids: np.ndarray) -> np.ndarray:
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"ids outside [0, {self.vocab_size}) for the {self.name} codec")
        return ids

    def _check_ids(self, ids) -> np.ndarray:
        return self._in_range(np.asarray(ids, dtype=np.int64).reshape(-1))

    def _options(self) -> dict:
        return {}

    def _save_files(self, directory: Path) -> list[str]:
        return []

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Write codec.json and the codec's own files into `directory`; return the names written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = self._save_files(directory)
        info = {
            "format_version": CODEC_FORMAT_VERSION,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "special_ids": dict(self.special_ids),
            "options": self._options(),
            "files": files,
        }
        (directory / CODEC_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return [CODEC_FILE, *files]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_ids={self.special_ids})"


class _BytesEncoder(Encoder):
    def __init__(self, dtype: np.dtype, errors: str, source: str | None) -> None:
        super().__init__(errors, source)
        self._dtype = dtype

    def encode(self, chunk: bytes, final: bool = False) -> np.ndarray:
        return np.frombuffer(chunk, dtype=np.uint8).astype(self._dtype)


class BytesCodec(Codec):
    """Raw bytes: id b for byte b (0..255), then `doc_sep` = 256. Nothing is ever unknown.

    `vocab_size` defaults to 257; a larger value reserves unused ids above doc_sep (for instance to
    round an embedding table up). Any bytes, binary included, round-trip exactly.
    """

    name = "bytes"

    def __init__(self, vocab_size: int | None = None) -> None:
        minimum = 257
        if vocab_size is None:
            vocab_size = minimum
        if vocab_size < minimum:
            raise OmUserError(
                f"vocab_size {vocab_size} is too small for the bytes codec: it needs {minimum} ids "
                "(256 byte values and the doc_sep special id)",
                key="vocab_size",
            )
        self.vocab_size = int(vocab_size)
        self.special_ids = {"doc_sep": 256}
        self._byte_lengths = np.zeros(self.vocab_size, dtype=np.uint8)
        self._byte_lengths[:256] = 1

    def encoder(self, errors: str = "strict", source: str | None = None) -> Encoder:
        return _BytesEncoder(self.dtype, errors, source)

    def decode(self, ids) -> bytes:
        ids = self._check_ids(ids)
        return ids[ids < 256].astype(np.uint8).tobytes()

    def byte_count(self, ids) -> int:
        if isinstance(ids, BytesSplit):  # counted from its boundaries, without reading it
            return ids.byte_count()
        ids = self._in_range(np.asarray(ids).reshape(-1))
        return sum(int(np.count_nonzero(ids[s : s + _BLOCK] < 256)) for s in range(0, ids.size, _BLOCK))


class CharCounter:
    """Counts Unicode code points over any amount of text with a fixed 9 MB table."""

    def __init__(self) -> None:
        self.counts = np.zeros(MAX_CODE_POINT, dtype=np.int64)

    def update(self, text: str) -> None:
        if text:
            cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
            counts = np.bincount(cps)  # only up to the largest code point seen: cheap for small texts
            self.counts[: counts.size] += counts


def _utf8_lengths(cps: np.ndarray) -> np.ndarray:
    return 1 + (cps >= 0x80).astype(np.uint8) + (cps >= 0x800) + (cps >= 0x10000)


class _CharsEncoder(Encoder):
    def __init__(self, table: np.ndarray, errors: str, source: str | None) -> None:
        super().__init__(errors, source)
        self._table = table
        self._decoder = Utf8Decoder(errors, source)

    @property
    def pending_bytes(self) -> int:
        return self._decoder.pending_bytes

    def encode(self, chunk: bytes, final: bool = False) -> np.ndarray:
        text = self._decoder.decode(chunk, final)
        return self._table[np.frombuffer(text.encode("utf-32-le"), dtype="<u4")]


class CharsCodec(Codec):
    """Unicode code points. In: the list of known characters (most frequent first); out: ids.

    Character i of `chars` has id i. Above them: `doc_sep`, then four unknown ids, one per UTF-8
    length of the character they replace ("unk" for 1 byte, "unk2", "unk3", "unk4"), so
    `byte_count` stays exact for text outside the vocabulary. Unknown ids decode to U+FFFD.
    Build one from data with `CharsCodec.from_counts` or `make_codec("chars", data=...)`.
    """

    name = "chars"
    SPECIALS = ("doc_sep", "unk", "unk2", "unk3", "unk4")
    DEFAULT_VOCAB_SIZE = 4096

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = list(chars)
        if any(len(c) != 1 for c in self.chars) or len(set(self.chars)) != len(self.chars):
            raise ValueError("chars must be distinct single characters")
        k = len(self.chars)
        self.special_ids = {name: k + i for i, name in enumerate(self.SPECIALS)}
        self.vocab_size = k + len(self.SPECIALS)
        cps = np.array([ord(c) for c in self.chars], dtype=np.int64)
        # Code point -> id, with the unknown id chosen by the UTF-8 length of the code point.
        table = np.empty(MAX_CODE_POINT, dtype=self.dtype)
        table[:0x80] = k + 1
        table[0x80:0x800] = k + 2
        table[0x800:0x10000] = k + 3
        table[0x10000:] = k + 4
        table[cps] = np.arange(k, dtype=self.dtype)
        self._table = table
        # Id -> code point for decoding (unknowns become U+FFFD; doc_sep is dropped).
        self._code_points = np.concatenate([cps, [0, 0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD]]).astype("<u4")
        self._byte_lengths = np.concatenate([_utf8_lengths(cps), [0, 1, 2, 3, 4]]).astype(np.uint8)

    @classmethod
    def minimum_vocab_size(cls) -> int:
        return len(cls.SPECIALS) + 1

    @classmethod
    def from_counts(cls, counts: np.ndarray, vocab_size: int | None = None) -> "CharsCodec":
        """The `vocab_size - 5` most frequent code points of `counts` (ties: lower code point first)."""
        vocab_size = cls.DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
        cls.check_vocab_size(vocab_size)
        seen = np.flatnonzero(counts)
        order = np.lexsort((seen, -counts[seen]))
        keep = seen[order[: vocab_size - len(cls.SPECIALS)]]
        return cls(chr(int(c)) for c in keep)

    @classmethod
    def check_vocab_size(cls, vocab_size: int) -> None:
        minimum = cls.minimum_vocab_size()
        if vocab_size < minimum:
            raise OmUserError(
                f"vocab_size {vocab_size} is too small for the chars codec: it needs {len(cls.SPECIALS)} "
                f"special ids ({', '.join(cls.SPECIALS)}) plus at least one character (minimum {minimum})",
                key="vocab_size",
            )

    def encoder(self, errors: str = "strict", source: str | None = None) -> Encoder:
        return _CharsEncoder(self._table, errors, source)

    def decode(self, ids) -> bytes:
        ids = self._check_ids(ids)
        ids = ids[ids != self.doc_sep_id]
        return self._code_points[ids].tobytes().decode("utf-32-le").encode("utf-8")

    def _options(self) -> dict:
        return {"unknown": "one id per UTF-8 length: unk, unk2, unk3, unk4"}

    def _save_files(self, directory: Path) -> list[str]:
        (directory / "chars.json").write_text(json.dumps({"chars": self.chars}, indent=0) + "\n")
        return ["chars.json"]

    @classmethod
    def _load(cls, directory: Path, info: dict) -> "CharsCodec":
        path = directory / "chars.json"
        try:
            chars = json.loads(path.read_text())["chars"]
            codec = cls(chars)
        except FileNotFoundError:
            raise OmUserError(f"{path}: missing (the chars codec's character table)") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise OmUserError(f"{path}: not a valid character table ({err})") from None
        if codec.vocab_size != info.get("vocab_size") or codec.special_ids != info.get("special_ids"):
            raise OmUserError(f"{path}: does not match {directory / CODEC_FILE} (vocab_size or special ids differ)")
        return codec


def load_codec(directory: str | os.PathLike) -> Codec:
    """Read the codec saved by `Codec.save` in `directory` (a dataset or checkpoint folder)."""
    directory = Path(directory)
    path = directory / CODEC_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise OmUserError(f"{path}: missing (no codec saved in {directory})") from None
    except (OSError, ValueError) as err:
        raise OmUserError(f"{path}: cannot read codec description ({err})") from None
    name = info.get("name") if isinstance(info, dict) else None
    if name == "bytes":
        with renamed_keys({"vocab_size": "vocab_size"}, where=str(path)):  # the key of this file
            codec: Codec = BytesCodec(info.get("vocab_size"))
        if codec.special_ids != info.get("special_ids"):
            raise OmUserError(f"{path}: special_ids do not match the bytes codec")
        return codec
    if name == "chars":
        return CharsCodec._load(directory, info)
    if name == "sentencepiece":
        from om.data.spm import SentencePieceCodec

        return SentencePieceCodec._load(directory, info)
    raise OmUserError(f"{path}: unknown codec name {name!r} (expected one of: {', '.join(CODEC_NAMES)})")


def check_codec_name(name: str) -> str:
    """`name` if it is a codec name, else an `OmUserError` about the `codec` argument."""
    if name not in CODEC_NAMES:
        raise OmUserError(f"codec {name!r} is not one of: {', '.join(CODEC_NAMES)}", key="codec")
    return name


def check_codec_options(codec: str, vocab_size=None, model_type: str = "unigram") -> int | None:
    """Check a codec name, its `vocab_size` (None: the codec's default) and, for sentencepiece, its
    `model_type` before any data is read; return vocab_size as an int (or None).

    Raises `OmUserError` keyed by the argument at fault (codec, vocab_size or model_type).
    """
    check_codec_name(codec)
    if vocab_size is not None:
        try:
            valid = not isinstance(vocab_size, bool) and int(vocab_size) == vocab_size
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise OmUserError(f"vocab_size {vocab_size!r} is not an integer", key="vocab_size")
        vocab_size = int(vocab_size)
    if codec == "bytes":
        BytesCodec(vocab_size)
    elif codec == "chars":
        CharsCodec.check_vocab_size(CharsCodec.DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size)
    else:
        from om.data.spm import check_options

        check_options(vocab_size, model_type)
    return vocab_size


def make_codec(
    name: str,
    data: bytes | Iterable[bytes] | None = None,
    vocab_size: int | None = None,
    errors: str = "strict",
    **options,
) -> Codec:
    """A codec by name. chars and sentencepiece learn their vocabulary from `data` (bytes or chunks).

    Options for sentencepiece: `model_type` ("unigram" or "bpe").
    """
    vocab_size = check_codec_options(name, vocab_size, options.get("model_type", "unigram"))
    if name == "bytes":
        return BytesCodec(vocab_size)
    if data is None:
        raise ValueError(f"the {name} codec needs training data")
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    if name == "chars":
        counter, decoder = CharCounter(), Utf8Decoder(errors)
        for chunk in chunks:
            counter.update(decoder.decode(bytes(chunk)))
        counter.update(decoder.decode(b"", final=True))
        return CharsCodec.from_counts(counter.counts, vocab_size)
    from om.data.spm import SentencePieceCodec, text_lines

    decoder = Utf8Decoder(errors)
    text = "".join(decoder.decode(bytes(c)) for c in chunks) + decoder.decode(b"", final=True)
    return SentencePieceCodec.train(text_lines(text), vocab_size, **options)
