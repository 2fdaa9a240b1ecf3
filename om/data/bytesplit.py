"""A bytes-codec split stored compactly: the raw bytes (one byte each) plus where documents begin.

On disk: `NAME.bin` holds the split's bytes as they were read (uint8, no separators) and
`NAME.docs` the byte offsets in `NAME.bin` before which a `doc_sep` id goes (int64, little-endian,
non-decreasing; one entry per separator). Read through `BytesSplit`, the split is exactly the id
array of a format-1 dataset (bytes as ids 0..255, `doc_sep` in place between documents), without
ever holding more of it in memory than what is asked for.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Iterator

import numpy as np

BOUNDARY_DTYPE = np.dtype("<i8")
_FEW_SEPARATORS = 64  # up to this many separators per read, copying the runs between them is fastest


def write_boundaries(f, offsets) -> None:
    """Append byte offsets (ints) to an open binary boundary file."""
    f.write(np.asarray(offsets, dtype=BOUNDARY_DTYPE).tobytes())


def read_boundaries(path: str | os.PathLike) -> np.ndarray:
    """The offsets of a boundary file as an int64 array (native byte order)."""
    return np.fromfile(path, dtype=BOUNDARY_DTYPE).astype(np.int64)


class BytesSplit:
    """The ids of a bytes-codec split, read from raw bytes plus document boundaries.

    In: `path` (the uint8 .bin file, `num_bytes` long), `boundaries` (int64, the byte offsets
    before which a separator goes, non-decreasing, within [0, num_bytes]), `sep_id` (doc_sep,
    256) and `dtype` (the codec's id dtype, uint16). Out: a 1-D sequence of `len(self)` =
    num_bytes + len(boundaries) ids, behaving like the dense id array with separators in place:

    - `self[a:b]` -> ndarray (b - a,) of `dtype` (a copy); `self[i]` -> one id; negative indices
      and steps work as for numpy. Random windows read the bytes through a memmap.
    - `np.asarray(self)` -> the whole dense array (reads everything: for small splits and tests).
    - `chunks(step)` -> consecutive ndarrays of at most `step` ids covering the split, read with
      plain file reads, so a pass over a huge split keeps resident memory bounded.
    - `view(a, b)` -> a `BytesSplit` over ids [a, b) of this one (nothing is read).
    - `byte_count(a, b)` -> original bytes among ids [a, b) (= ids that are not separators).
    - `dtype`, `shape`, `ndim`, `size`, `sep_id`, `path`, `separators` (count in this view).
    """

    ndim = 1

    def __init__(
        self,
        path: str | os.PathLike,
        boundaries: np.ndarray,
        num_bytes: int,
        sep_id: int = 256,
        dtype: np.dtype | str = "<u2",
    ) -> None:
        self.path = Path(path)
        self.sep_id = int(sep_id)
        self.dtype = np.dtype(dtype)
        self._num_bytes = int(num_bytes)
        docs = np.asarray(boundaries, dtype=np.int64).reshape(-1)
        if docs.size and (docs[0] < 0 or docs[-1] > self._num_bytes or np.any(np.diff(docs) < 0)):
            raise ValueError("boundaries must be non-decreasing byte offsets within the split")
        # Dense position of separator k: its byte offset plus the k separators before it.
        self._sep = docs + np.arange(docs.size, dtype=np.int64)
        self._bytes: np.ndarray | None = None  # the memmap, opened on first random read
        self._start, self._stop = 0, self._num_bytes + int(docs.size)

    # -- the array interface consumers use ------------------------------------------------------
    @property
    def shape(self) -> tuple[int]:
        return (self._stop - self._start,)

    @property
    def size(self) -> int:
        return self._stop - self._start

    def __len__(self) -> int:
        return self._stop - self._start

    @property
    def separators(self) -> int:
        """Separator ids in this view."""
        i, j = self._sep.searchsorted([self._start, self._stop])
        return int(j - i)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._read(self._start + start, self._start + max(start, stop))
            picked = np.arange(start, stop, step, dtype=np.int64)
            if not picked.size:
                return np.zeros(0, dtype=self.dtype)
            lo = int(picked.min())
            return self._read(self._start + lo, self._start + int(picked.max()) + 1)[picked - lo]
        try:
            index = operator.index(key)
        except TypeError:
            raise TypeError(f"BytesSplit indices must be integers or slices, not {type(key).__name__}") from None
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of bounds for a split of {n} ids")
        index %= n
        return self._read(self._start + index, self._start + index + 1)[0]

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a BytesSplit is assembled from its file: it cannot be viewed as an array without a copy")
        array = self._read(self._start, self._stop)
        return array if dtype is None else array.astype(dtype, copy=False)

    def __iter__(self) -> Iterator:
        for chunk in self.chunks(1 << 20):
            yield from chunk

    def __repr__(self) -> str:
        return f"BytesSplit({str(self.path)!r}, ids [{self._start}:{self._stop}], {self.separators} separators)"

    # -- more than an array --------------------------------------------------------------------
    def view(self, start: int, stop: int) -> "BytesSplit":
        """Ids [start, stop) of this split (clipped as slices are) as a BytesSplit; reads nothing."""
        start, stop, _ = slice(start, stop).indices(len(self))
        part = object.__new__(BytesSplit)
        part.__dict__.update(self.__dict__)
        part._start, part._stop = self._start + start, self._start + max(start, stop)
        return part

    def byte_count(self, start: int = 0, stop: int | None = None) -> int:
        """Original bytes among ids [start, stop) of this view (every id but doc_sep is one byte)."""
        start, stop, _ = slice(start, stop).indices(len(self))
        a, b = self._start + start, self._start + max(start, stop)
        i, j = self._sep.searchsorted([a, b])
        return (b - a) - int(j - i)

    def chunks(self, step: int) -> Iterator[np.ndarray]:
        """Consecutive pieces of at most `step` ids (copies of `dtype`), read with plain file reads:
        mapped pages would count the whole split in this process's resident memory."""
        step = max(1, int(step))
        if self._start >= self._stop:
            return
        with open(self.path, "rb") as f:
            lo = self._byte_offset(self._start)
            f.seek(lo)
            for a in range(self._start, self._stop, step):
                b = min(a + step, self._stop)
                i, j = self._sep.searchsorted([a, b])
                hi = b - int(j)
                data = f.read(hi - lo)
                if len(data) != hi - lo:
                    raise OSError(f"{self.path}: ends early (the file changed while being read)")
                yield self._assemble(a, b, np.frombuffer(data, dtype=np.uint8), int(i), int(j))
                lo = hi

    # -- reading -------------------------------------------------------------------------------
    def _byte_offset(self, position: int) -> int:
        """Bytes before dense position `position` (of the whole split)."""
        return position - int(self._sep.searchsorted(position))

    def _read(self, a: int, b: int) -> np.ndarray:
        """Dense ids [a, b) of the whole split, through the memmap."""
        if b <= a:
            return np.zeros(0, dtype=self.dtype)
        i, j = (int(k) for k in self._sep.searchsorted([a, b]))
        lo, hi = a - i, b - j
        if self._bytes is None and hi > lo:
            # A plain ndarray view of the map: slicing it skips np.memmap's per-slice bookkeeping.
            self._bytes = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self._num_bytes,)).view(np.ndarray)
        raw = self._bytes[lo:hi] if hi > lo else np.zeros(0, dtype=np.uint8)
        return self._assemble(a, b, raw, i, j)

    def _assemble(self, a: int, b: int, raw: np.ndarray, i: int, j: int) -> np.ndarray:
        """Dense ids [a, b) from the bytes they hold (`raw`) and separators i..j-1, those in [a, b)."""
        if i == j:
            return raw.astype(self.dtype)
        out = np.empty(b - a, dtype=self.dtype)
        rel = self._sep[i:j] - a
        if rel.size <= _FEW_SEPARATORS:
            prev = 0
            for k, p in enumerate(rel.tolist()):
                out[prev:p] = raw[prev - k : p - k]
                prev = p + 1
            out[prev:] = raw[prev - rel.size :]
        else:
            keep = np.ones(b - a, dtype=bool)
            keep[rel] = False
            out[keep] = raw
        out[rel] = self.sep_id
        return out
