"""Reading a prepared dataset folder: meta.json, the codec, and each split as a memmap."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from om.data.codecs import Codec, load_codec
from om.errors import OmUserError

META_FILE = "meta.json"
FORMAT_VERSION = 1
SPLITS = {"train": "train.bin", "val": "val.bin"}


class Dataset:
    """A folder written by `prepare_dataset`. In: its path. Out: meta, codec, splits.

    `split(name)` is the split's ids as a read-only 1-D `numpy.memmap` (an empty read-only array
    when the split holds no token, since an empty file cannot be mapped). `num_bytes(name)` is the
    number of original UTF-8 bytes the split covers (for bits per byte); `fingerprint` the sha256 of
    meta.json, by which a checkpoint recognises its dataset.
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
            for name in SPLITS:
                self.meta["splits"][name]["tokens"]
        except (ValueError, KeyError, TypeError) as err:
            raise OmUserError(f"{meta_path}: not a valid dataset description ({type(err).__name__}: {err})") from None
        if version != FORMAT_VERSION:
            raise OmUserError(f"{meta_path}: format_version {version} is not supported (expected {FORMAT_VERSION})")
        self.fingerprint = hashlib.sha256(raw).hexdigest()
        self.codec: Codec = load_codec(self.path)
        if self.codec.vocab_size != self.meta.get("vocab_size"):
            raise OmUserError(f"{meta_path}: vocab_size differs from the saved codec's")
        self._splits: dict[str, np.ndarray] = {}

    def _check_name(self, name: str) -> dict:
        if name not in SPLITS:
            raise OmUserError(f"split {name!r} is not one of: {', '.join(SPLITS)}")
        return self.meta["splits"][name]

    def split(self, name: str) -> np.ndarray:
        info = self._check_name(name)
        if name in self._splits:
            return self._splits[name]
        path = self.path / info.get("file", SPLITS[name])
        tokens = int(info["tokens"])
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise OmUserError(f"{path}: missing (the {name} split)") from None
        if size != tokens * self._dtype.itemsize:
            raise OmUserError(
                f"{path}: holds {size} bytes, meta.json says {tokens} tokens of {self._dtype.name} "
                f"({tokens * self._dtype.itemsize} bytes)"
            )
        if tokens == 0:
            array = np.zeros(0, dtype=self._dtype)
            array.flags.writeable = False
        else:
            array = np.memmap(path, dtype=self._dtype, mode="r", shape=(tokens,))
        self._splits[name] = array
        return array

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
