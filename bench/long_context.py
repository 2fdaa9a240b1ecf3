"""Long context: does a checkpoint's memory help over long documents?

Run from the repository root:

    python -m bench.long_context CKPT [CKPT ...] [--docs FILE ...] [--labels A B ...]
        [--tail-kb 32] [--near-kb 2] [--min-kb 64] [--max-docs 8] [--no-write]

Sizes are in KiB (1 KiB = 1024 bytes). For each checkpoint (a checkpoint folder or a run folder):

1. Distant-context gain. For each document of at least --min-kb KiB, its tail is its last
   --tail-kb KiB. The tail's bits/byte is scored (a) from a fresh stream (no context), (b)
   continuing from only the --near-kb KiB just before the tail, (c) continuing from everything
   before the tail. (b) and (c) are exactly `om cache CKPT PREFIX -o C` then `om eval CKPT TAIL
   --context-cache C`: `om.evaluate.read_context` reads the prefix as a fresh stream (separator,
   then the prefix, its last token kept pending) and `om.evaluate.evaluate` continues it, so the
   tail's first token is predicted from the prefix's last one, with no separator in between: (c)
   equals scoring the whole document as one stream and keeping only the tail's predictions. Gains:
   a - b (what the nearby text gives) and b - c (what the distant text gives, through the carried
   state: positive means reading more helped). Totals are byte-weighted over the documents.
2. Bits/byte by position: each whole document scored as its own stream from its start
   (`evaluate(..., by_position=True)`); the evaluator's segment buckets are put into byte-offset
   bands ([0, 256), [256, 512), ... doubling; a bucket counts in the band where its first byte
   lies) and summed over the documents, up to the shortest document's length (so every band has
   every document). Check: past the trained horizon (recipe `segments_per_sample * segment_len`,
   or the largest `curriculum` entry), does bits/byte keep falling, or at least never rise (by
   more than --tolerance)?

Documents: the --docs files (each one document), else each checkpoint's own validation split (the
documents of the dataset it was trained on, unseen in training), in order: those of at least
--min-kb KiB, at most --max-docs. Documents are bytes whatever the codec (a split encoded with
another codec is decoded back to bytes); for a codec other than bytes the tail and near cuts move
forward to the next UTF-8 character start. Bits are per original byte.

Prints markdown tables; unless --no-write, writes them to BENCHMARKS.md (section "long-context").
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

KIB = 1024
FIRST_BAND = 256  # bytes: the first by-position band is [0, FIRST_BAND), then bands double
LN2 = math.log(2.0)


def _fail(message: str) -> None:
    """The command's one-line error: on stderr, exit status 2."""
    print(f"long_context: {message}", file=sys.stderr)
    raise SystemExit(2)


# Documents --------------------------------------------------------------------------------------
@dataclass
class Document:
    """One document: its bytes, or (a validation document of a codec other than bytes) its token
    ids, scored as they are, since decoding them may not give the original bytes back (a chars
    codec maps characters it never saw to one unknown id). size: its original bytes."""

    name: str
    data: bytes | np.ndarray
    size: int


def char_start(data: bytes, at: int, codec) -> int:
    """`at` for the bytes codec; else the first offset >= `at` that starts a UTF-8 character (a cut
    inside a character would make both pieces invalid UTF-8 for a chars or SentencePiece codec)."""
    at = max(0, min(at, len(data)))
    if getattr(codec, "name", "bytes") == "bytes":
        return at
    for _ in range(3):
        if at < len(data) and (data[at] & 0xC0) == 0x80:
            at += 1
    return at


def file_documents(paths: Sequence[str]) -> list[Document]:
    """Each file (or each file of a folder, recursively, sorted) as one document."""
    from om.data.sources import expand_inputs

    docs = []
    for group in expand_inputs(list(paths), read_once=False):
        for source in group:
            if source.path is None:
                _fail("--docs takes files or folders, not - (stdin)")
            data = Path(source.path).read_bytes()
            docs.append(Document(source.name, data, len(data)))
    return docs


def validation_documents(checkpoint, min_bytes: int, max_docs: int, step: int = 1 << 20) -> tuple[list[Document], dict]:
    """The documents of the checkpoint's validation split of at least `min_bytes` bytes, in order,
    at most `max_docs` (bytes for the bytes codec, else token ids: see `Document`); and what was
    seen ({"name", "documents", "longest"}, documents and longest counted over the part scanned). An `OmUserError` (from
    `om.evaluate.validation_inputs`) when the checkpoint names no dataset, or it is gone or changed.
    """
    from om.data.bytesplit import BytesSplit
    from om.evaluate import validation_inputs

    source = validation_inputs(checkpoint)[0]
    split, codec = source.ids, checkpoint.codec
    sep = int(codec.doc_sep_id)
    chunks = split.chunks(step) if isinstance(split, BytesSplit) else (np.asarray(split[a : a + step]) for a in range(0, len(split), step))
    spans: list[tuple[int, int]] = []
    seen = {"name": source.name, "documents": 0, "longest": 0}
    start, nbytes, pos = 0, 0, 0

    def close(stop: int) -> None:
        if stop > start:
            seen["documents"] += 1
            seen["longest"] = max(seen["longest"], nbytes)
            if nbytes >= min_bytes:
                spans.append((start, stop))

    for chunk in chunks:
        at = 0
        for cut in np.flatnonzero(chunk == sep).tolist():
            nbytes += int(codec.byte_count(chunk[at:cut]))
            close(pos + cut)
            start, nbytes, at = pos + cut + 1, 0, cut + 1
            if len(spans) >= max_docs:
                break
        if len(spans) >= max_docs:
            break
        nbytes += int(codec.byte_count(chunk[at:]))
        pos += len(chunk)
    else:
        close(pos)
    docs = []
    for a, b in spans[:max_docs]:
        ids = np.asarray(split[a:b])
        data = ids.astype(np.uint8).tobytes() if codec.name == "bytes" else ids
        docs.append(Document(f"{source.name}[{a}:{b}]", data, int(codec.byte_count(ids))))
    return docs, seen


# Trained horizon --------------------------------------------------------------------------------
def _segments(entry) -> int | None:
    if isinstance(entry, bool):
        return None
    if isinstance(entry, (int, float)):
        return int(entry)
    if isinstance(entry, dict):
        for key in ("segments_per_sample", "segments"):
            if key in entry:
                return _segments(entry[key])
        return None
    if isinstance(entry, (list, tuple)) and entry:
        return _segments(entry[-1])
    return None


def trained_horizon(trainer: dict, segment_len: int) -> int | None:
    """Tokens one training sample backpropagated through: segments_per_sample * segment_len from
    the recipe saved in trainer.json, or the largest entry of `train.curriculum` when there is one
    (entries: segment counts, {"segments_per_sample": n, ...} or [..., n]); None if not recorded."""
    train = ((trainer or {}).get("recipe") or {}).get("train") or {}
    curriculum = train.get("curriculum")
    if curriculum:
        entries = curriculum.values() if isinstance(curriculum, dict) else curriculum
        counts = [n for n in (_segments(e) for e in entries) if n]
        if counts:
            return max(counts) * segment_len
    n = _segments(train.get("segments_per_sample"))
    return n * segment_len if n else None


# Distant-context gain ---------------------------------------------------------------------------
def _ids_back(codec, ids: np.ndarray, stop: int, nbytes: int) -> int:
    """The largest t <= stop with ids[t:stop] covering at least `nbytes` original bytes (0 if even
    ids[:stop] covers fewer): binary search, since the count grows as t falls."""
    if nbytes <= 0:
        return stop
    lo, hi = 0, stop
    if codec.byte_count(ids[:stop]) < nbytes:
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if codec.byte_count(ids[mid:stop]) >= nbytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def split_document(codec, doc, tail: int, near: int) -> tuple[int, int]:
    """(cut, near_cut): doc[cut:] is the tail (its last `tail` bytes), doc[near_cut:cut] the `near`
    bytes before it (all of doc[:cut] if shorter). Offsets are bytes for a bytes document (moved to
    character starts for codecs other than bytes, see `char_start`), token indices for an id one
    (the fewest tokens that cover the bytes asked for)."""
    if isinstance(doc, (bytes, bytearray)):
        cut = char_start(doc, len(doc) - tail, codec)
        return cut, (char_start(doc, cut - near, codec) if near < cut else 0)
    cut = _ids_back(codec, doc, len(doc), tail)
    return cut, _ids_back(codec, doc, cut, near)


def _piece(doc, a: int, b: int, name: str):
    """doc[a:b] as what `evaluate` and `read_context` take: bytes, or an ids `InputSource`."""
    if isinstance(doc, (bytes, bytearray)):
        return bytes(doc[a:b])
    from om.evaluate import ids_source

    return ids_source(name, np.asarray(doc[a:b]))


def _score(model, codec, tail, context=None, window=None, errors="strict") -> tuple[float, int]:
    from om.evaluate import evaluate

    r = evaluate(model, codec, [tail], batch_size=1, window=window, context=context, errors=errors).total
    return r.nll_nats, r.bytes


def distant_context(model, codec, doc, tail: int, near: int, window: int | None = None, errors: str = "strict") -> dict:
    """Bits/byte of the last `tail` bytes of `doc` with no context, after the `near` bytes before
    it, and after everything before it: `read_context` of the prefix (what `om cache` saves), then
    `evaluate` continuing from it (what `om eval --context-cache` does).

    doc: bytes, or the token ids of one document (no separators). Returns {"bytes" (of doc),
    "tail_bytes", "prefix_bytes", "near_bytes", "nll": {"none", "near", "far"} (nats over the
    tail), "none", "near", "far" (bits/byte), "near_gain" (none - near), "distant_gain" (near - far)}.
    """
    from om.evaluate import read_context

    cut, near_cut = split_document(codec, doc, tail, near)
    n = len(doc)
    tail_piece = _piece(doc, cut, n, "tail")
    nll = {}
    nll["none"], tail_bytes = _score(model, codec, tail_piece, None, window, errors)
    counted = {}
    for key, start in (("near", near_cut), ("far", 0)):
        ctx = read_context(model, codec, [_piece(doc, start, cut, key)], window=window, errors=errors)
        counted[key] = ctx.bytes_read
        nll[key], _ = _score(model, codec, _piece(doc, cut, n, "tail"), ctx, window, errors)
    out = {"bytes": counted["far"] + tail_bytes, "tail_bytes": tail_bytes, "prefix_bytes": counted["far"],
           "near_bytes": counted["near"], "nll": nll}
    return _with_rates(out)


def _with_rates(d: dict) -> dict:
    n = d["tail_bytes"]
    for key in ("none", "near", "far"):
        d[key] = d["nll"][key] / LN2 / n if n else float("nan")
    d["near_gain"] = d["none"] - d["near"]
    d["distant_gain"] = d["near"] - d["far"]
    return d


def total_context(results: Sequence[dict]) -> dict:
    """`distant_context` results summed over documents (bits/byte weighted by tail bytes)."""
    out = {
        "bytes": sum(r["bytes"] for r in results),
        "tail_bytes": sum(r["tail_bytes"] for r in results),
        "prefix_bytes": sum(r["prefix_bytes"] for r in results),
        "near_bytes": sum(r["near_bytes"] for r in results),
        "nll": {k: sum(r["nll"][k] for r in results) for k in ("none", "near", "far")},
    }
    return _with_rates(out)


# By position ------------------------------------------------------------------------------------
def by_position(model, codec, doc, window: int | None = None, errors: str = "strict") -> list[dict]:
    """The evaluator's by-position buckets of `doc` (bytes, or token ids) scored as one stream from its start, each with
    the byte offset of its first predicted byte: [{"first_segment", "last_segment", "start" (byte
    offset in doc), "bytes", "tokens", "nll_nats"}], in order; the bytes add up to len(doc)."""
    from om.evaluate import evaluate

    result = evaluate(model, codec, [_piece(doc, 0, len(doc), "doc")], batch_size=1, window=window, by_position=True, errors=errors)
    out, start = [], 0
    for b in result.by_position:
        out.append({"first_segment": b.first_segment, "last_segment": b.last_segment, "start": start,
                    "bytes": b.bytes, "tokens": b.tokens, "nll_nats": b.nll_nats})
        start += b.bytes
    return out


def band_of(offset: int, first: int = FIRST_BAND) -> int:
    """Band index of a byte offset: 0 for [0, first), k for [first * 2**(k-1), first * 2**k)."""
    return 0 if offset < first else (offset // first).bit_length()


def band_range(band: int, first: int = FIRST_BAND) -> tuple[int, int]:
    """[start, end) byte offsets of a band."""
    return (0, first) if band == 0 else (first << (band - 1), first << band)


def byte_bands(docs_buckets: Sequence[list[dict]], limit: int | None = None, first: int = FIRST_BAND) -> list[dict]:
    """`by_position` buckets of several documents summed into byte-offset bands (a bucket counts in
    the band of its first byte); only bands starting below `limit` (default: the shortest
    document's length, so that every band has every document). [{"start", "end", "bytes",
    "nll_nats", "bits_per_byte"}] in order."""
    if limit is None:
        limit = min((sum(b["bytes"] for b in buckets) for buckets in docs_buckets), default=0)
    acc: dict[int, list[float]] = {}
    for buckets in docs_buckets:
        for b in buckets:
            if b["bytes"] and b["start"] < limit:
                a = acc.setdefault(band_of(b["start"], first), [0, 0.0])
                a[0] += b["bytes"]
                a[1] += b["nll_nats"]
    bands = []
    for k in sorted(acc):
        start, end = band_range(k, first)
        nbytes, nll = acc[k]
        bands.append({"start": start, "end": end, "bytes": int(nbytes), "nll_nats": nll, "bits_per_byte": nll / LN2 / nbytes})
    return bands


def trend(bands: Sequence[dict], horizon: int | None, tolerance: float = 0.01) -> dict:
    """Past the horizon (bytes; from the band holding it on; all bands when None): does bits/byte
    keep falling band after band, or at least never rise by more than `tolerance`?

    Returns {"from" (byte offset of the first band checked), "bands" (how many), "max_rise" (the
    largest band-to-band increase, bits/byte; None with fewer than 2 bands), "at" (start of the
    band where it rose most), "verdict": "keeps falling" | "never rises" | "rises" | "too short"}.
    """
    past = [b for b in bands if horizon is None or b["end"] > horizon]
    out = {"from": past[0]["start"] if past else None, "bands": len(past), "max_rise": None, "at": None}
    if len(past) < 2:
        return {**out, "verdict": "too short"}
    rises = [(past[i]["bits_per_byte"] - past[i - 1]["bits_per_byte"], past[i]["start"]) for i in range(1, len(past))]
    rise, at = max(rises)
    verdict = "keeps falling" if rise < 0 else "never rises" if rise <= tolerance else "rises"
    return {**out, "max_rise": rise, "at": at, "verdict": verdict}


# One checkpoint ---------------------------------------------------------------------------------
def run_checkpoint(ckpt, docs: Sequence[Document], tail: int, near: int, window: int | None = None, errors: str = "strict",
                   log=None) -> dict:
    """Both measurements of one loaded checkpoint over `docs`."""
    t0 = time.perf_counter()
    per_doc, buckets = [], []
    for doc in docs:
        r = distant_context(ckpt.model, ckpt.codec, doc.data, tail, near, window, errors)
        per_doc.append({"name": doc.name, **r})
        buckets.append(by_position(ckpt.model, ckpt.codec, doc.data, window, errors))
        if log:
            log(f"  {doc.name}: {doc.size:,} bytes, tail none/near/all {r['none']:.4f}/{r['near']:.4f}/{r['far']:.4f} bits/byte")
    bands = byte_bands(buckets)
    config = ckpt.config
    horizon = trained_horizon(ckpt.trainer, config.segment_tokens)
    tokens = sum(b["tokens"] for doc in buckets for b in doc)
    nbytes = sum(b["bytes"] for doc in buckets for b in doc)
    bytes_per_token = nbytes / tokens if tokens else 1.0
    horizon_bytes = None if horizon is None else int(round(horizon * (1.0 if ckpt.codec.name == "bytes" else bytes_per_token)))
    return {
        "path": str(ckpt.path),
        "codec": ckpt.codec.name,
        "segment_len": config.segment_len,
        "state_len": config.state_len,
        "horizon_tokens": horizon,
        "horizon_bytes": horizon_bytes,
        "documents": per_doc,
        "total": total_context(per_doc),
        "buckets": buckets,
        "bands": bands,
        "seconds": time.perf_counter() - t0,
    }


# Report -----------------------------------------------------------------------------------------
def _f(x, digits: int = 4, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _size(n: int) -> str:
    if n >= KIB and n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n / KIB:.1f} KiB" if n >= KIB else f"{n} B"


def context_table(labels: Sequence[str], runs: Sequence[dict], near: int) -> str:
    from bench.report import markdown_table

    rows = []
    for label, run in zip(labels, runs):
        t = run["total"]
        rows.append([label, len(run["documents"]), f"{t['tail_bytes']:,}", _f(t["none"]), _f(t["near"]), _f(t["far"]),
                     _f(t["near_gain"], sign=True), _f(t["distant_gain"], sign=True)])
    head = ["checkpoint", "docs", "tail bytes", "(a) no context", f"(b) near {_size(near)}", "(c) all before",
            "a - b (near gain)", "b - c (distant gain)"]
    return markdown_table(head, rows)


def document_table(labels: Sequence[str], runs: Sequence[dict]) -> str:
    from bench.report import markdown_table

    rows = []
    for label, run in zip(labels, runs):
        for d in run["documents"]:
            rows.append([label, d["name"], f"{d['bytes']:,}", f"{d['prefix_bytes']:,}", _f(d["none"]), _f(d["near"]),
                         _f(d["far"]), _f(d["near_gain"], sign=True), _f(d["distant_gain"], sign=True)])
    head = ["checkpoint", "document", "bytes", "before tail", "(a) none", "(b) near", "(c) all", "a - b", "b - c"]
    return markdown_table(head, rows)


def position_table(labels: Sequence[str], runs: Sequence[dict]) -> str:
    from bench.report import markdown_table

    starts = sorted({(b["start"], b["end"]) for run in runs for b in run["bands"]})
    rows = []
    for start, end in starts:
        row = [f"{_size(start)} - {_size(end)}"]
        for run in runs:
            hit = [b for b in run["bands"] if b["start"] == start]
            cell = _f(hit[0]["bits_per_byte"]) if hit else "-"
            h = run["horizon_bytes"]
            if hit and h is not None and start <= h < end:
                cell += " (horizon)"
            row.append(cell)
        rows.append(row)
    return markdown_table(["bytes into the document"] + list(labels), rows)


def trend_lines(labels: Sequence[str], runs: Sequence[dict], tolerance: float) -> list[str]:
    lines = []
    for label, run in zip(labels, runs):
        h, hb = run["horizon_tokens"], run["horizon_bytes"]
        t = trend(run["bands"], hb, tolerance)
        if h is None:
            where = "trained horizon unknown (no recipe in trainer.json): checked over all bands"
        else:
            approx = "" if run["codec"] == "bytes" else " about"
            where = f"trained horizon {h:,} tokens ({approx} {hb:,} bytes)".replace("( ", "(")
        if t["verdict"] == "too short":
            verdict = "too few bands past it to tell"
        else:
            verdict = (f"{t['verdict']} over the {t['bands']} bands from {_size(t['from'])} "
                       f"(largest band-to-band change {_f(t['max_rise'], sign=True)} bits/byte, at {_size(t['at'])})")
        lines.append(f"- {label}: {where}; past it bits/byte {verdict}.")
    return lines


def body_text(labels, runs, docs_by_run, args, command: str, load: tuple[float, float], machine: str) -> str:
    tail, near = args.tail_kb * KIB, args.near_kb * KIB
    lines = [
        "## Long context: distant-context gain and bits/byte by position (`python -m bench.long_context`)",
        "",
        f"Machine: {machine}. Load average before / after: {load[0]:.1f} / {load[1]:.1f}.",
        "",
        f"Command: `{command}`",
        "",
        "Checkpoints: " + "; ".join(
            f"{label} = `{run['path']}` ({run['codec']} codec, segment_len {run['segment_len']}, state_len {run['state_len']}, "
            f"{run['seconds']:.1f} s)" for label, run in zip(labels, runs)),
        "",
    ]
    seen = []
    for label, docs in zip(labels, docs_by_run):
        names = [(d.name, d.size) for d in docs]
        if any(names == other for _, other in seen):
            continue
        seen.append((label, names))
    for label, names in seen:
        who = "" if len(seen) == 1 else f" ({label})"
        lines.append(f"Documents{who}: " + ", ".join(f"`{n}` ({s:,} bytes)" for n, s in names) + ".")
    lines += [
        "",
        f"### Distant-context gain: bits/byte of each document's last {_size(tail)}",
        "",
        f"(a) a fresh stream; (b) continuing from the {_size(near)} before the tail; (c) continuing from everything before "
        "it (`om cache` of the prefix, then `om eval --context-cache`). Positive b - c: the distant text helped.",
        "",
        context_table(labels, runs, near),
        "",
        document_table(labels, runs),
        "",
        "### Bits/byte by position (each document one stream from its start)",
        "",
        "Bands of byte offsets; a segment bucket of the evaluator counts in the band of its first byte; "
        "bands up to the shortest document's length, so each holds every document.",
        "",
        position_table(labels, runs),
        "",
        *trend_lines(labels, runs, args.tolerance),
    ]
    return "\n".join(lines) + "\n"


def _labels(paths: Sequence[str], given: Sequence[str] | None) -> list[str]:
    if given:
        if len(given) != len(paths):
            _fail(f"{len(given)} --labels for {len(paths)} checkpoints")
        return list(given)
    names = [Path(p).resolve().name or p for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Sizes are in KiB (1024 bytes).")
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint folders or run folders")
    parser.add_argument("--docs", nargs="+", metavar="FILE",
                        help="documents (files or folders); default: each checkpoint's validation split")
    parser.add_argument("--labels", nargs="+", help="column names, one per checkpoint (default: the folder names)")
    parser.add_argument("--tail-kb", type=int, default=32, help="scored tail of each document (default 32)")
    parser.add_argument("--near-kb", type=int, default=2, help="near context just before the tail (default 2)")
    parser.add_argument("--min-kb", type=int, default=64, help="documents shorter than this are skipped (default 64)")
    parser.add_argument("--max-docs", type=int, default=8, help="at most this many documents (default 8)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="bits/byte a band may rise and still count as not rising")
    parser.add_argument("--device", default="auto", help="torch device (default auto)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    tail, near, min_bytes = args.tail_kb * KIB, args.near_kb * KIB, args.min_kb * KIB
    if args.tail_kb < 1 or args.near_kb < 0 or args.max_docs < 1:
        _fail("--tail-kb and --max-docs must be at least 1, --near-kb at least 0")
    if min_bytes < tail + near + KIB:
        _fail(f"--min-kb {args.min_kb} leaves no distant context: it must exceed --tail-kb + --near-kb "
              f"({args.tail_kb} + {args.near_kb}) by at least 1")

    import torch

    from bench.report import machine, write_section
    from om.checkpoint import load_checkpoint
    from om.device import resolve_device
    from om.errors import OmUserError

    if args.threads:
        torch.set_num_threads(args.threads)
    labels = _labels(args.checkpoints, args.labels)
    files = None
    if args.docs:
        try:
            files = file_documents(args.docs)
        except OmUserError as err:
            _fail(str(err))
        short = [d for d in files if d.size < min_bytes]
        files = [d for d in files if d.size >= min_bytes][: args.max_docs]
        for d in short:
            print(f"long_context: skipping {d.name} ({d.size:,} bytes < --min-kb {args.min_kb})", file=sys.stderr)
        if not files:
            _fail(f"none of the --docs is at least {args.min_kb} KiB long")
    load_before = os.getloadavg()[0]
    runs, docs_by_run = [], []
    for path, label in zip(args.checkpoints, labels):
        try:
            ckpt = load_checkpoint(path, device=resolve_device(args.device))
        except OmUserError as err:
            _fail(str(err))
        docs = files
        if docs is None:
            try:
                docs, seen = validation_documents(ckpt, min_bytes, args.max_docs)
            except OmUserError as err:
                reason = str(err).replace("give INPUT files, folders or - (stdin) instead", "give --docs FILE ...")
                _fail(f"no documents to read: {reason}" + ("" if "--docs" in reason else "; give --docs FILE ..."))
            if not docs:
                _fail(f"{path}: no document of its validation split {seen['name']} is at least {args.min_kb} KiB "
                      f"({seen['documents']} documents, the longest {seen['longest']:,} bytes); give --docs FILE ... "
                      "or a smaller --min-kb")
        print(f"{label}: {ckpt.path}, {len(docs)} documents", file=sys.stderr, flush=True)
        try:
            runs.append(run_checkpoint(ckpt, docs, tail, near, log=lambda s: print(s, file=sys.stderr, flush=True)))
        except OmUserError as err:
            _fail(str(err))
        docs_by_run.append(docs)
        del ckpt
    load_after = os.getloadavg()[0]
    command = "python -m bench.long_context " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    body = body_text(labels, runs, docs_by_run, args, command, (load_before, load_after), machine())
    print(body)
    if not args.no_write:
        write_section("long-context", body)


if __name__ == "__main__":
    main()
