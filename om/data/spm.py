"""The SentencePiece codec: a unigram or BPE model trained on a bounded sample of the training text.

SentencePiece sees text as lines and uses U+2581 ("▁") as its whitespace marker, so both would be
lost in a plain round trip. We keep them exact: the encoder splits the text at "\n" and at literal
"▁" itself, lets SentencePiece encode the pieces in between, and puts the newline piece (a
user-defined symbol) or our own "literal ▁" id in the gaps. Identity normalisation, no dummy prefix,
no whitespace folding and byte fallback make every other string round-trip.

Ids: 0..S-1 are SentencePiece's (0 = <unk>, 1 = "\n", then the 256 byte pieces, then the learned
pieces), S is the literal "▁", S+1 is doc_sep; vocab_size = S + 2.
"""

from __future__ import annotations

import io
import itertools
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from om.data.codecs import CODEC_FILE, Codec, Encoder
from om.data.utf8 import Utf8Decoder
from om.errors import OmUserError

MODEL_FILE = "sentencepiece.model"
MODEL_TYPES = ("unigram", "bpe")
DEFAULT_VOCAB_SIZE = 1024
MARKER = "\u2581"
EXTRA_IDS = 2  # literal "▁" and doc_sep, above SentencePiece's own ids
RESERVED = 256 + 2  # byte pieces, <unk>, "\n": SentencePiece ids that are not learned
MAX_LINE_CHARS = 4096  # longer lines are cut into pieces for training
_FORCE_CUT_CHARS = 1 << 20  # a line longer than this is encoded in parts (bounded memory)
_SPLIT = re.compile("([\n\u2581])")


def text_lines(text: str) -> Iterator[str]:
    """Training sentences from text: its lines, cut to MAX_LINE_CHARS, empty ones skipped."""
    for line in text.replace(MARKER, " ").split("\n"):
        for start in range(0, len(line), MAX_LINE_CHARS):
            yield line[start : start + MAX_LINE_CHARS]


def check_options(vocab_size: int | None, model_type: str = "unigram") -> None:
    """Raise OmUserError for a vocabulary too small for the reserved ids or an unknown model type."""
    if model_type not in MODEL_TYPES:
        raise OmUserError(f"model_type {model_type!r} is not one of: {', '.join(MODEL_TYPES)}", key="model_type")
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    minimum = RESERVED + EXTRA_IDS + 1
    if vocab_size < minimum:
        raise OmUserError(
            f"vocab_size {vocab_size} is too small for the sentencepiece codec: it needs {RESERVED + EXTRA_IDS} "
            "reserved ids (256 byte pieces, <unk>, newline, literal U+2581, doc_sep) plus learned pieces "
            f"(minimum {minimum}, in practice one more per distinct character of the data)",
            key="vocab_size",
        )


class _SentencePieceEncoder(Encoder):
    def __init__(self, codec: "SentencePieceCodec", errors: str, source: str | None) -> None:
        super().__init__(errors, source)
        self._codec = codec
        self._decoder = Utf8Decoder(errors, source)
        self._tail = ""  # text after the last safe cut, not yet encoded

    @property
    def pending_bytes(self) -> int:
        return self._decoder.pending_bytes + len(self._tail.encode("utf-8"))

    def encode(self, chunk: bytes, final: bool = False) -> np.ndarray:
        text = self._tail + self._decoder.decode(chunk, final)
        if final:
            self._tail = ""
            return self._codec._encode_text(text)
        # Text up to the last newline (or literal marker) encodes the same whatever follows it.
        cut = max(text.rfind("\n"), text.rfind(MARKER)) + 1
        if cut == 0 and len(text) > _FORCE_CUT_CHARS:
            cut = text.rfind(" ", 0, len(text) - 1) + 1 or len(text) - 1
        self._tail = text[cut:]
        return self._codec._encode_text(text[:cut])


class SentencePieceCodec(Codec):
    """A SentencePiece model (serialized proto bytes in) as an Om codec. See the module docstring.

    Train one with `SentencePieceCodec.train(lines, vocab_size, model_type)`; `vocab_size` counts
    every id, ours included. Special ids: {"doc_sep"}; <unk> is never produced (byte fallback).
    """

    name = "sentencepiece"

    def __init__(self, model_proto: bytes, model_type: str = "unigram") -> None:
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.model_type = model_type
        sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self._sp = sp
        s = sp.get_piece_size()
        self._newline_id = sp.piece_to_id("\n")
        if self._newline_id == sp.unk_id() or not sp.is_byte(sp.piece_to_id("<0x00>")):
            raise ValueError("not an Om SentencePiece model: needs a '\\n' symbol and byte fallback")
        self.marker_id = s
        self.special_ids = {"doc_sep": s + 1}
        self.vocab_size = s + EXTRA_IDS
        pieces: list[bytes] = []
        for i in range(s):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                pieces.append(bytes([int(piece[1:-1], 16)]))
            elif sp.is_unknown(i) or sp.is_control(i):
                pieces.append(b"")
            else:
                pieces.append(piece.replace(MARKER, " ").encode("utf-8"))
        pieces += [MARKER.encode("utf-8"), b""]
        self._pieces = pieces
        self._byte_lengths = np.array([len(p) for p in pieces], dtype=np.uint8)

    @classmethod
    def train(
        cls,
        lines: Iterable[str],
        vocab_size: int | None = None,
        model_type: str = "unigram",
        num_threads: int | None = None,
    ) -> "SentencePieceCodec":
        """Train on `lines` (strings without newlines; keep the sample bounded: it is held in memory)."""
        import sentencepiece as spm

        vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else int(vocab_size)
        check_options(vocab_size, model_type)
        sentences = [line for line in lines if line]
        if not sentences:
            raise OmUserError("no text to train SentencePiece on: the training data has no non-empty line")
        if hasattr(spm, "set_random_generator_seed"):
            spm.set_random_generator_seed(0)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                model_type=model_type,
                vocab_size=vocab_size - EXTRA_IDS,
                hard_vocab_limit=False,  # small data: fewer pieces rather than an error
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                split_by_whitespace=True,
                allow_whitespace_only_pieces=True,
                byte_fallback=True,
                character_coverage=0.9995,
                user_defined_symbols=["\n"],
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                max_sentence_length=4 * MAX_LINE_CHARS,
                num_threads=num_threads or min(os.cpu_count() or 1, 8),
                minloglevel=3,
            )
        except RuntimeError as err:
            message = str(err)
            found = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
            if found:
                need = int(found.group(2)) + EXTRA_IDS
                raise OmUserError(
                    f"vocab_size {vocab_size} is too small for the sentencepiece codec on this data: "
                    f"its characters and reserved ids need at least {need}",
                    key="vocab_size",
                ) from None
            raise OmUserError(f"SentencePiece training failed: {message.splitlines()[-1] if message else err}") from None
        return cls(model.getvalue(), model_type)

    def encoder(self, errors: str = "strict", source: str | None = None) -> Encoder:
        return _SentencePieceEncoder(self, errors, source)

    def _encode_text(self, text: str) -> np.ndarray:
        if not text:
            return np.zeros(0, dtype=self.dtype)
        if MARKER in text:
            parts = _SPLIT.split(text)
            segments, gaps = parts[0::2], parts[1::2]
            gap_ids = [self._newline_id if g == "\n" else self.marker_id for g in gaps]
        else:
            segments = text.split("\n")
            gap_ids = [self._newline_id] * (len(segments) - 1)
        encoded = self._sp.encode(segments)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=self.dtype, count=int(lengths.sum()))
        if not gap_ids:
            return flat
        return np.insert(flat, np.cumsum(lengths[:-1]), np.asarray(gap_ids, dtype=self.dtype))

    def decode(self, ids) -> bytes:
        pieces = self._pieces
        return b"".join([pieces[i] for i in self._check_ids(ids).tolist()])

    def _options(self) -> dict:
        return {"model_type": self.model_type, "marker_id": self.marker_id, "newline_id": self._newline_id}

    def _save_files(self, directory: Path) -> list[str]:
        (directory / MODEL_FILE).write_bytes(self.model_proto)
        return [MODEL_FILE]

    @classmethod
    def _load(cls, directory: Path, info: dict) -> "SentencePieceCodec":
        path = directory / MODEL_FILE
        try:
            codec = cls(path.read_bytes(), (info.get("options") or {}).get("model_type", "unigram"))
        except FileNotFoundError:
            raise OmUserError(f"{path}: missing (the sentencepiece codec's model)") from None
        except (OSError, RuntimeError, ValueError) as err:
            raise OmUserError(f"{path}: not a valid Om SentencePiece model ({str(err).splitlines()[0]})") from None
        if codec.vocab_size != info.get("vocab_size") or codec.special_ids != info.get("special_ids"):
            raise OmUserError(f"{path}: does not match {directory / CODEC_FILE} (vocab_size or special ids differ)")
        return codec
