"""`prepare_dataset`: documents in; train.bin, val.bin, meta.json and the codec's files out.

The bytes codec writes each split as its raw bytes (uint8) plus train.docs/val.docs, the offsets
of the document boundaries (layout "bytes", see `om.data.bytesplit`); the other codecs write ids
with doc_sep inline (layout "ids").

Memory stays bounded: inputs are read in chunks, hashed and encoded in the same pass and appended
to the .bin files. The chars codec reads the training text twice (count, then encode); SentencePiece
trains on a bounded sample. Codecs that read twice copy stdin/pipes to a spool file first.
Everything is written into a temporary folder that replaces DIR only at the very end.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import numpy as np

from om.data.bytesplit import BOUNDARY_DTYPE
from om.data.codecs import BytesCodec, CharCounter, CharsCodec, Codec, check_codec_options
from om.data.dataset import BOUNDARY_FILES, FORMAT_VERSION, META_FILE, SPLITS
from om.data.outdir import AtomicFolder
from om.data.progress import ProgressEvent, RichProgress
from om.data.sources import Source, read_at, read_chunks, resolve_inputs
from om.data.split import SplitPlan, check_val_fraction, plan_split, tail_cut
from om.data.utf8 import Utf8Decoder, check_errors
from om.errors import OmRunError, OmUserError, printable, renamed_keys

DEFAULT_VAL_FRACTION = 0.1
CHUNK_SIZES = {"bytes": 8 << 20, "chars": 2 << 20, "sentencepiece": 1 << 20}
SAMPLE_BYTES = 1 << 20  # SentencePiece trains on at most this much text (training time grows fast)...
SAMPLE_WINDOW = 32 << 10  # ...taken as windows this long, spread evenly over the training split
# Errors that can only come from writing the output (a full disk, a quota, a file size limit).
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class _SplitWriter:
    """Appends ids to one .bin file, joining documents with doc_sep, and counts what it wrote."""

    def __init__(self, path: Path, codec: Codec) -> None:
        self.path = path
        self.tokens = self.bytes = self.docs = self.seps = 0
        self._sep = np.array([codec.doc_sep_id], dtype=codec.dtype)
        self._file = open(path, "wb", buffering=1 << 20)

    def start_document(self) -> None:
        if self.docs:
            self.write(self._sep, 0)
            self.seps += 1
        self.docs += 1

    def write(self, ids: np.ndarray, nbytes: int) -> None:
        if ids.size:
            self._file.write(memoryview(np.ascontiguousarray(ids)).cast("B"))
            self.tokens += int(ids.size)
        self.bytes += nbytes

    def close(self) -> None:
        self._file.close()

    def info(self) -> dict:
        return {"file": self.path.name, "tokens": self.tokens, "bytes": self.bytes, "documents": self.docs}


class _BytesSplitWriter(_SplitWriter):
    """Appends raw bytes to one .bin file (uint8) and, for every document but the first, the byte
    offset where it starts to the .docs file: the separators are implied, not stored."""

    def __init__(self, path: Path, docs_path: Path) -> None:
        self.path, self.docs_path = path, docs_path
        self.tokens = self.bytes = self.docs = self.seps = 0
        self._file = open(path, "wb", buffering=1 << 20)
        self._docs = open(docs_path, "wb", buffering=1 << 16)

    def start_document(self) -> None:
        if self.docs:
            self._docs.write(self.bytes.to_bytes(BOUNDARY_DTYPE.itemsize, "little", signed=True))
            self.seps += 1
            self.tokens += 1
        self.docs += 1

    def write_bytes(self, data: bytes) -> None:
        self._file.write(data)
        self.tokens += len(data)
        self.bytes += len(data)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._docs.close()

    def info(self) -> dict:
        return {**super().info(), "boundaries": self.docs_path.name, "separators": self.seps}


class _Run:
    """One prepare run: the state shared by its passes."""

    def __init__(self, sources, folder: Path, codec_name, errors, report, stdin, chunk_size) -> None:
        self.sources: list[Source] = sources
        self.folder = folder
        self.codec_name = codec_name
        self.errors = errors
        self.report: Callable[[str, int, int | None], None] = report
        self.stdin = stdin
        self.chunk = chunk_size or CHUNK_SIZES[codec_name]

    # -- pass 0: streams to disk, for codecs that read their input twice ---------------------------
    def spool_streams(self) -> None:
        for i, src in enumerate(self.sources):
            if not src.stream:
                continue
            path = self.folder / f".spool-{i}"
            done = 0
            with open(path, "wb") as f:
                for chunk in read_chunks(src, self.chunk, self.stdin):
                    f.write(chunk)
                    done += len(chunk)
                    self.report("spool", done, None)
            src.spool, src.size = path, done
            self.report("spool", done, done)

    def check_not_empty(self, total: int) -> None:
        if total == 0:
            names = ", ".join(s.name for s in self.sources[:3]) + (", ..." if len(self.sources) > 3 else "")
            raise OmUserError(f"no input bytes: every input is empty ({names})")

    def train_segments(self, plan: SplitPlan) -> list[tuple[int, int]]:
        """(source index, bytes to read from its start) for the training text; sizes must be known."""
        if plan.method == "documents":
            return [(i, s.size) for i, s in enumerate(self.sources) if s.size and i not in plan.val]
        total = sum(s.size or 0 for s in self.sources)
        left = tail_cut(total, plan.val_fraction) if plan.method == "tail" else total
        segments = []
        for i, s in enumerate(self.sources):
            if left <= 0:
                break
            if s.size:
                segments.append((i, min(s.size, left)))
                left -= s.size
        return segments

    # -- pass 1: the codec ---------------------------------------------------------------------
    def count_chars(self, plan: SplitPlan, vocab_size: int | None) -> CharsCodec:
        counter = CharCounter()
        segments = self.train_segments(plan)
        total, done = sum(n for _, n in segments), 0
        for i, length in segments:
            src = self.sources[i]
            decoder, left = Utf8Decoder(self.errors, src.name), length
            for chunk in read_chunks(src, self.chunk, self.stdin):
                if len(chunk) > left:
                    chunk = chunk[:left]
                counter.update(decoder.decode(chunk))
                left -= len(chunk)
                done += len(chunk)
                self.report("count", done, total)
                if left <= 0:
                    break
            if length == src.size:
                counter.update(decoder.decode(b"", final=True))
        return CharsCodec.from_counts(counter.counts, vocab_size)

    def sample_lines(self, plan: SplitPlan, budget: int) -> list[str]:
        from om.data.spm import text_lines

        segments = self.train_segments(plan)
        total = sum(n for _, n in segments)
        lines: list[str] = []
        if total <= budget:
            done = 0
            for i, length in segments:
                src = self.sources[i]
                data = read_at(src, 0, length)
                lines.extend(text_lines(Utf8Decoder(self.errors, src.name).decode(data, final=length == src.size)))
                done += length
                self.report("sample", done, total)
            return lines
        starts = np.cumsum([0] + [n for _, n in segments])
        windows = max(1, budget // SAMPLE_WINDOW)
        for w in range(windows):
            pos = w * total // windows
            k = bisect.bisect_right(starts, pos) - 1
            i, length = segments[k]
            offset = pos - int(starts[k])
            data = read_at(self.sources[i], offset, min(SAMPLE_WINDOW, length - offset))
            text = data.decode("utf-8", "replace")
            # Keep whole lines only, unless the window touches the document's start or end.
            if offset > 0:
                text = text[text.find("\n") + 1 :] if "\n" in text else ""
            if offset + len(data) < length:
                text = text[: text.rfind("\n") + 1]
            lines.extend(text_lines(text))
            self.report("sample", (w + 1) * total // windows, total)
        return lines

    # -- pass 2: encode ------------------------------------------------------------------------
    def encode(self, codec: Codec, plan: SplitPlan) -> tuple[dict[str, _SplitWriter], list[tuple[int, int]], int]:
        """Encode every source into its split's writer; return writers, checkpoints, total bytes.

        Checkpoints (tokens written, stream bytes they cover) let the tail split find its cut
        without reading the whole stream again.
        """
        raw = codec.name == "bytes"  # the bytes are the ids: written as they are, no encoding
        writers = {
            name: _BytesSplitWriter(self.folder / file, self.folder / BOUNDARY_FILES[name]) if raw
            else _SplitWriter(self.folder / file, codec)
            for name, file in SPLITS.items()
        }
        known = all(s.size is not None for s in self.sources)
        total = sum(s.size or 0 for s in self.sources) if known else None
        checkpoints = [(0, 0)]
        track = plan.method == "tail" and not raw  # the bytes layout cuts at the byte itself
        consumed = 0
        try:
            for i, src in enumerate(self.sources):
                writer = writers[plan.split_of(i) if plan.method == "documents" else "train"]
                encoder = codec.encoder(self.errors, source=src.name)
                digest, size = hashlib.sha256(), 0
                # A regular file must still hold the bytes it held when listed (pseudo-files such as
                # /proc/* list 0 bytes and are read as they come).
                listed = src.size if not src.stream and src.size else None
                for chunk in read_chunks(src, self.chunk, self.stdin):
                    if size == 0:
                        writer.start_document()
                    digest.update(chunk)
                    size += len(chunk)
                    if listed is not None and size > listed:
                        _changed(src, listed, size)
                    consumed += len(chunk)
                    if raw:
                        writer.write_bytes(chunk)
                    else:
                        ids = encoder.encode(chunk)
                        writer.write(ids, codec.byte_count(ids))
                        if track:
                            checkpoints.append((writer.tokens, consumed - encoder.pending_bytes))
                    self.report("encode", consumed, total)
                if size and not raw:
                    ids = encoder.encode(b"", final=True)
                    writer.write(ids, codec.byte_count(ids))
                    if track:
                        checkpoints.append((writer.tokens, consumed))
                if listed is not None and size != listed:
                    _changed(src, listed, size)
                src.size, src.sha256 = size, digest.hexdigest()
        finally:
            for writer in writers.values():
                writer.close()
        if total is None:  # a stream's size is known only now: complete the bar
            self.report("encode", consumed, consumed)
        return writers, checkpoints, consumed

    def cut_tail(self, codec: Codec, writers: dict[str, _SplitWriter], checkpoints, total: int, val_fraction: float) -> int:
        """Move the last `val_fraction` of the stream from train.bin to val.bin; return the cut byte.

        Plain reads, not a memmap: mapped pages would count as resident memory on a huge input.
        """
        if isinstance(writers["train"], _BytesSplitWriter):
            return self._cut_tail_bytes(writers, total, val_fraction)
        train, val = writers["train"], writers["val"]
        cut_byte = tail_cut(total, val_fraction)
        n, dtype, block = train.tokens, codec.dtype, 1 << 20

        def read(f, start: int, count: int) -> np.ndarray:
            f.seek(start * dtype.itemsize)
            return np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)

        with open(train.path, "rb") as f:
            # The last checkpoint at or before the cut, then token by token from there.
            k = bisect.bisect_right([b for _, b in checkpoints], cut_byte) - 1
            cut, covered = checkpoints[k]
            while covered < cut_byte and cut < n:
                lengths = codec._byte_lengths[read(f, cut, block)].astype(np.int64)
                running = covered + np.cumsum(lengths)
                j = int(np.searchsorted(running, cut_byte, side="left"))
                if j < lengths.size:
                    cut, covered = cut + j + 1, int(running[j])
                    break
                cut, covered = cut + lengths.size, int(running[-1])
            # A doc_sep at the cut belongs to neither side.
            sep = codec.doc_sep_id
            train_end, val_start = cut, cut
            if train_end > 0 and read(f, train_end - 1, 1)[0] == sep:
                train_end -= 1
            if val_start < n and read(f, val_start, 1)[0] == sep:
                val_start += 1
            seps_after = val_bytes = 0
            with open(val.path, "wb", buffering=1 << 20) as out:
                for start in range(train_end, n, block):
                    part = read(f, start, min(block, n - start))
                    seps_after += int(np.count_nonzero(part == sep))
                    keep = part[max(0, val_start - start) :]
                    val_bytes += codec.byte_count(keep)
                    out.write(memoryview(keep).cast("B"))
        os.truncate(train.path, train_end * dtype.itemsize)
        val_seps = seps_after - (val_start - train_end)
        val.tokens, val.bytes = n - val_start, val_bytes
        val.seps, val.docs = (val_seps, val_seps + 1) if val.tokens else (0, 0)
        train.tokens, train.bytes = train_end, train.bytes - val_bytes
        train.seps -= seps_after
        train.docs = train.seps + 1 if train.tokens else 0
        return cut_byte

    def _cut_tail_bytes(self, writers: dict[str, _SplitWriter], total: int, val_fraction: float) -> int:
        """`cut_tail` for the bytes layout: bytes from the cut on move to val.bin, boundaries after
        it to val.docs (shifted); a boundary at the cut itself belongs to neither side, as a doc_sep
        at the cut does in the ids layout."""
        train, val = writers["train"], writers["val"]
        assert isinstance(train, _BytesSplitWriter) and isinstance(val, _BytesSplitWriter)
        cut = tail_cut(total, val_fraction)
        block = 8 << 20
        with open(train.path, "rb") as f, open(val.path, "wb") as out:
            f.seek(cut)
            while data := f.read(block):
                out.write(data)
        os.truncate(train.path, cut)
        item = BOUNDARY_DTYPE.itemsize
        kept = moved = 0
        with open(train.docs_path, "rb") as f, open(val.docs_path, "wb") as out:
            while data := f.read(block):  # offsets are sorted: train keeps a prefix of them
                offsets = np.frombuffer(data, dtype=BOUNDARY_DTYPE)
                kept += int(np.count_nonzero(offsets < cut))
                after = offsets[offsets > cut] - cut
                out.write(after.astype(BOUNDARY_DTYPE).tobytes())
                moved += int(after.size)
        os.truncate(train.docs_path, kept * item)
        val.bytes, val.seps = total - cut, moved
        val.tokens = val.bytes + val.seps
        val.docs = val.seps + 1 if val.tokens else 0
        train.bytes, train.seps = cut, kept
        train.tokens = train.bytes + train.seps
        train.docs = train.seps + 1 if train.tokens else 0
        return cut


def _changed(src: Source, listed: int, read: int) -> None:
    how = "grew" if read > listed else "shrank"
    raise OmUserError(
        f"{src.name}: the file {how} while being read ({listed:,} bytes when listed, "
        f"{'more than ' if read > listed else ''}{read:,} read); nothing was written, run again"
    )


def _source_splits(sources: list[Source], plan: SplitPlan, cut_byte: int | None) -> list[str]:
    if plan.method == "documents":
        return [plan.split_of(i) if s.size else "none" for i, s in enumerate(sources)]
    splits, start = [], 0
    for s in sources:
        end = start + (s.size or 0)
        if not s.size:
            splits.append("none")
        elif cut_byte is None or end <= cut_byte:
            splits.append("train")
        elif start >= cut_byte:
            splits.append("val")
        else:
            splits.append("train+val")
        start = end
    return splits


def _reporter(progress) -> tuple[Callable[[str, int, int | None], None], object]:
    """A report(stage, done, total) function and, for progress=True, the rich bar to start/stop."""
    if progress is True:
        bar = RichProgress()
        return (lambda stage, done, total: bar(ProgressEvent(stage, done, total))), bar
    if callable(progress):
        return (lambda stage, done, total: progress(ProgressEvent(stage, done, total))), None
    return (lambda stage, done, total: None), None


def prepare_dataset(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    codec: str = "bytes",
    vocab_size: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    force: bool = False,
    errors: str = "strict",
    progress: bool | Callable[[ProgressEvent], None] | None = None,
    command_line: str | None = None,
    *,
    sp_model_type: str = "unigram",
    sample_bytes: int = SAMPLE_BYTES,
    chunk_size: int | None = None,
    stdin: BinaryIO | None = None,
) -> dict:
    """Turn documents into a dataset folder; return its meta (also written as meta.json).

    inputs: files, folders (walked) and "-" (stdin, or the `stdin` stream given). codec: "bytes",
    "chars" or "sentencepiece"; vocab_size counts every id, specials included (defaults: 257, 4096,
    1024). val_fraction in [0, 1) (default 0.1). errors: "strict" (invalid UTF-8 is an error for
    chars/sentencepiece) or "replace" (U+FFFD). progress: None/False (silent), True (a rich bar on
    stderr) or a callable receiving ProgressEvent. Raises OmUserError for anything the user can fix.
    """
    with renamed_keys({"model_type": "sp_model_type"}):  # this function's name for it
        vocab_size = check_codec_options(codec, vocab_size, sp_model_type)
    check_errors(errors)
    val_fraction = check_val_fraction(val_fraction)
    out = Path(out_dir)
    sources = resolve_inputs(inputs, include, exclude, out)
    report, bar = _reporter(progress)
    try:
        with AtomicFolder(out, force) as folder:
            assert folder.path is not None
            if bar is not None:
                bar.__enter__()
            try:
                meta = _prepare(folder.path, sources, codec, vocab_size, val_fraction, errors, report, stdin,
                                chunk_size, sp_model_type, sample_bytes, command_line)
            finally:
                if bar is not None:
                    bar.__exit__(None, None, None)
            folder.commit()
    except OSError as err:
        if err.errno not in WRITE_FAILURES:
            raise
        # AtomicFolder has removed the temporary folder by now: there is no partial output.
        raise OmRunError(f"{out}: cannot write the dataset ({err.strerror}); the output folder was left as it was") from None
    return meta


def _prepare(tmp, sources, codec_name, vocab_size, val_fraction, errors, report, stdin, chunk_size,
             sp_model_type, sample_bytes, command_line) -> dict:
    run = _Run(sources, tmp, codec_name, errors, report, stdin, chunk_size)
    if codec_name != "bytes":
        run.spool_streams()
    if all(s.size is not None for s in sources):
        run.check_not_empty(sum(s.size for s in sources))
    plan = plan_split(sources, val_fraction)

    if codec_name == "bytes":
        codec: Codec = BytesCodec(vocab_size)
    elif codec_name == "chars":
        codec = run.count_chars(plan, vocab_size)
    else:
        from om.data.spm import SentencePieceCodec

        lines = run.sample_lines(plan, sample_bytes)
        sampled = sum(len(line.encode("utf-8")) for line in lines)
        report("train", 0, None)
        codec = SentencePieceCodec.train(lines, vocab_size, sp_model_type)
        report("train", sampled, sampled)
        del lines

    writers, checkpoints, total = run.encode(codec, plan)
    run.check_not_empty(total)
    cut_byte = None
    if plan.method == "tail":
        report("split", 0, None)
        cut_byte = run.cut_tail(codec, writers, checkpoints, total, val_fraction)
        report("split", writers["val"].bytes, writers["val"].bytes)
    for s in sources:
        if s.spool is not None:
            s.spool.unlink()
    codec_files = codec.save(tmp)

    split_info: dict = {"method": plan.method, "val_fraction": val_fraction}
    if plan.method == "tail":
        split_info["cut_byte"] = cut_byte
    elif plan.method == "documents":
        split_info["val_documents"] = len(plan.val)
    meta = {
        "format": "om-dataset",
        "format_version": FORMAT_VERSION,
        "codec": codec.name,
        "codec_files": codec_files,
        "vocab_size": codec.vocab_size,
        "special_ids": dict(codec.special_ids),
        # layout "bytes": the .bin files hold the raw bytes (uint8) and the .docs files the document
        # boundaries; layout "ids": the .bin files hold the ids, doc_sep included, of `dtype`.
        "layout": "bytes" if codec.name == "bytes" else "ids",
        "dtype": "uint8" if codec.name == "bytes" else codec.dtype.name,
        "byte_order": "little",
        "errors": errors,
        "splits": {name: w.info() for name, w in writers.items()},
        "split": split_info,
        "input_bytes": total,
        "sources": [
            {"path": printable(s.name), "bytes": s.size, "sha256": s.sha256, "split": split}
            for s, split in zip(sources, _source_splits(sources, plan, cut_byte))
        ],
        "command_line": printable(command_line) if command_line is not None else None,
    }
    if codec.name == "sentencepiece":
        meta["sentencepiece"] = {"model_type": sp_model_type, "sample_bytes": sample_bytes}
    (tmp / META_FILE).write_text(_meta_json(meta), encoding="utf-8")
    return meta


def _meta_json(meta: dict) -> str:
    """meta as indented JSON with one line per source (fast for many thousands of sources)."""
    head = json.dumps({k: v for k, v in meta.items() if k != "sources"}, indent=2, ensure_ascii=False)
    sources = ",\n".join("    " + json.dumps(s, ensure_ascii=False) for s in meta["sources"])
    return head[: -len("\n}")] + ',\n  "sources": [\n' + sources + "\n  ]\n}\n"
