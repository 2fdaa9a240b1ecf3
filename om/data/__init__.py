"""Data: codecs (bytes, chars, SentencePiece), `prepare_dataset` (`om prepare`) and the dataset reader."""

from om.data.codecs import (
    CODEC_NAMES,
    BytesCodec,
    CharsCodec,
    Codec,
    Encoder,
    dtype_for,
    load_codec,
    make_codec,
)
from om.data.dataset import Dataset, open_dataset
from om.data.prepare import DEFAULT_VAL_FRACTION, prepare_dataset
from om.data.progress import ProgressEvent, RichProgress
from om.data.spm import SentencePieceCodec

__all__ = [
    "CODEC_NAMES",
    "BytesCodec",
    "CharsCodec",
    "Codec",
    "DEFAULT_VAL_FRACTION",
    "Dataset",
    "Encoder",
    "ProgressEvent",
    "RichProgress",
    "SentencePieceCodec",
    "dtype_for",
    "load_codec",
    "make_codec",
    "open_dataset",
    "prepare_dataset",
]
