"""Reading a prepared dataset folder: meta.json, the codec, and each split as a 1-D id sequence."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from om.data.bytesplit import BOUNDARY_DTYPE, BytesSplit, read_boundaries
from om.data.codecs import Codec, load_codec
from om.errors import OmUserError

META_FILE = "meta.json"
# 1: every split is its id array (separators inline). 2: the same, except that bytes-codec splits
# are stored as their raw bytes (uint8) plus the offsets of document boundaries ("layout": "bytes").
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SPLITS = {"train": "train.bin", "val": "val.bin"}
BOUNDARY_FILES = {"train": "train.docs", "val": "val.docs"}
LAYOUTS = ("ids", "bytes")


class Dataset:
    """A folder written by `prepare_dataset`. In: its path. Out: meta, codec, splits.

    `split(name)` is the split's ids, 1-D, of the codec's dtype, separators in place: a read-only
    `numpy.memmap` of the .bin file for layout "ids" (an empty read-only array when the split
    holds no token, since an empty file cannot be mapped), a `BytesSplit` over the raw bytes and
    the document boundaries for layout "bytes" (bytes codec, format 2). Both give `len()`,
    `[a:b]` -> ndarray and `np.asarray`. `num_bytes(name)` is the number of original UTF-8 bytes
    the split covers (for bits per byte); `fingerprint` the sha256 of meta.json, by which a
    checkpoint recognises its dataset. Format versions 1 and 2 are read.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory)
        if not self.path.is_dir():
            what = "not a folder" if self.path.exists() else "no such dataset folder"
            raise OmUserError(f"{self.path}: {what}")
        meta_path = self.path / META_FILE
        try:
            raw = meta_path.read_bytes()
        except FileNotFoundError:
            raise OmUserError(f"{meta_path}: missing (not a dataset prepared by om prepare)") from None
        except OSError as err:
            raise OmUserError(f"{meta_path}: cannot read ({err.strerror or err})") from None
        try:
            self.meta: dict = json.loads(raw)
            version = self.meta["format_version"]
            self._dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
            self.layout = self.meta.get("layout", "ids") if version != 1 else "ids"
            for name in SPLITS:
                self.meta["splits"][name]["tokens"]
        except (ValueError, KeyError, TypeError) as err:
            raise OmUserError(f"{meta_path}: not a valid dataset description ({type(err).__name__}: {err})") from None
        if version not in READABLE_VERSIONS:
            supported = ", ".join(map(str, READABLE_VERSIONS))
            raise OmUserError(f"{meta_path}: format_version {version} is not supported (this om reads {supported})")
        if self.layout not in LAYOUTS:
            raise OmUserError(f"{meta_path}: layout {self.layout!r} is not one of: {', '.join(LAYOUTS)}")
        self.fingerprint = hashlib.sha256(raw).hexdigest()
        self.codec: Codec = load_codec(self.path)
        if self.codec.vocab_size != self.meta.get("vocab_size"):
            raise OmUserError(f"{meta_path}: vocab_size differs from the saved codec's")
        if self.layout == "bytes" and (self.codec.name != "bytes" or self._dtype != np.uint8):
            raise OmUserError(f"{meta_path}: layout 'bytes' needs the bytes codec and dtype uint8")
        self._splits: dict[str, np.ndarray | BytesSplit] = {}

    def _check_name(self, name: str) -> dict:
        if name not in SPLITS:
            raise OmUserError(f"split {name!r} is not one of: {', '.join(SPLITS)}")
        return self.meta["splits"][name]

    def split(self, name: str) -> np.ndarray | BytesSplit:
        info = self._check_name(name)
        if name not in self._splits:
            self._splits[name] = self._open_bytes(name, info) if self.layout == "bytes" else self._open_ids(name, info)
        return self._splits[name]

    def _size(self, path: Path, name: str, what: str) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise OmUserError(f"{path}: missing (the {name} split{what})") from None

    def _open_ids(self, name: str, info: dict) -> np.ndarray:
        path = self.path / info.get("file", SPLITS[name])
        tokens = int(info["tokens"])
        size = self._size(path, name, "")
        if size != tokens * self._dtype.itemsize:
            raise OmUserError(
                f"{path}: holds {size} bytes, meta.json says {tokens} tokens of {self._dtype.name} "
                f"({tokens * self._dtype.itemsize} bytes)"
            )
        if tokens == 0:
            array = np.zeros(0, dtype=self._dtype)
            array.flags.writeable = False
            return array
        return np.memmap(path, dtype=self._dtype, mode="r", shape=(tokens,))

    def _open_bytes(self, name: str, info: dict) -> BytesSplit:
        meta_path = self.path / META_FILE
        try:
            path = self.path / info.get("file", SPLITS[name])
            docs_path = self.path / info.get("boundaries", BOUNDARY_FILES[name])
            tokens, separators, nbytes = int(info["tokens"]), int(info["separators"]), int(info["bytes"])
        except (KeyError, TypeError, ValueError) as err:
            raise OmUserError(f"{meta_path}: the {name} split is not fully described ({type(err).__name__}: {err})") from None
        if tokens != nbytes + separators:
            raise OmUserError(f"{meta_path}: the {name} split's tokens ({tokens}) are not its bytes plus separators")
        size = self._size(path, name, "")
        if size != nbytes:
            raise OmUserError(f"{path}: holds {size} bytes, meta.json says {nbytes} bytes ({tokens} tokens)")
        docs_size = self._size(docs_path, name, "'s document boundaries")
        if docs_size != separators * BOUNDARY_DTYPE.itemsize:
            raise OmUserError(
                f"{docs_path}: holds {docs_size} bytes, meta.json says {separators} document boundaries "
                f"({separators * BOUNDARY_DTYPE.itemsize} bytes)"
            )
        try:
            return BytesSplit(path, read_boundaries(docs_path), nbytes, self.codec.doc_sep_id, self.codec.dtype)
        except ValueError as err:
            raise OmUserError(f"{docs_path}: not valid document boundaries ({err})") from None

    def num_tokens(self, name: str) -> int:
        return int(self._check_name(name)["tokens"])

    def num_bytes(self, name: str) -> int:
        return int(self._check_name(name)["bytes"])

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={self.num_tokens(n)} tokens" for n in SPLITS)
        return f"Dataset({str(self.path)!r}, codec={self.codec.name}, {counts})"


def open_dataset(directory: str | os.PathLike) -> Dataset:
    """Open a dataset folder written by `prepare_dataset` (OmUserError if missing or damaged)."""
    return Dataset(directory)
