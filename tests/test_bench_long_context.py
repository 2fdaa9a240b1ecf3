"""bench/long_context.py: the distant-context scores and the by-position bands, on tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.long_context import (
    band_of,
    band_range,
    by_position,
    byte_bands,
    char_start,
    distant_context,
    trained_horizon,
    trend,
    validation_documents,
)
from tests.test_eval_support import bytes_codec, model_for, one_thread, save_tiny_checkpoint  # noqa: F401

L = 8  # segment_len of the tiny models


def random_doc(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def tail_nll_in_one_stream(model, codec, doc: bytes, tail: int) -> float:
    """Reference: separator + whole document in one forward call; NLL (nats) of the last `tail` bytes only."""
    seq = torch.tensor([[codec.doc_sep_id, *doc]])
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
        nll = torch.nn.functional.cross_entropy(logits[0].double(), seq[0, 1:], reduction="none")
    return float(nll[-tail:].sum())


def test_all_before_equals_whole_document_stream(one_thread):  # noqa: F811
    codec = bytes_codec()
    model = model_for(codec)
    doc = random_doc(13 * L + 5)  # the tail starts mid-segment
    tail = 3 * L + 3
    r = distant_context(model, codec, doc, tail=tail, near=2 * L)
    assert r["nll"]["far"] == pytest.approx(tail_nll_in_one_stream(model, codec, doc, tail), abs=1e-4)
    assert r["tail_bytes"] == tail and r["prefix_bytes"] == len(doc) - tail and r["near_bytes"] == 2 * L
    # No context: the tail alone as a fresh stream, from the separator.
    assert r["nll"]["none"] == pytest.approx(tail_nll_in_one_stream(model, codec, doc[-tail:], tail), abs=1e-4)
    assert r["far"] == pytest.approx(r["nll"]["far"] / math.log(2) / tail)
    assert r["distant_gain"] == pytest.approx(r["near"] - r["far"])
    assert r["near_gain"] == pytest.approx(r["none"] - r["near"])


def test_near_context_equals_far_without_memory_and_differs_with_it(one_thread):  # noqa: F811
    """With state_len 0 a prediction sees only its own segment and the stem's reach (max kernel - 1
    tokens) before it: a near prefix that keeps the tail's place in its segments (a multiple of
    segment_len) and covers that reach scores the tail exactly as the whole prefix does. With memory
    the state carries the distant text, so the two differ."""
    codec = bytes_codec()
    doc = random_doc(12 * L + 3, seed=1)
    tail, near = 2 * L + 3, 2 * L  # near covers the tail's first segment and the stem's 2 tokens before it
    memoryless = model_for(codec, state_len=0, stem_kernels=[2, 3])
    r = distant_context(memoryless, codec, doc, tail=tail, near=near)
    assert r["nll"]["near"] == pytest.approx(r["nll"]["far"], abs=1e-5)
    assert abs(r["nll"]["none"] - r["nll"]["near"]) > 1e-4  # the near text itself still matters
    with_memory = model_for(codec, state_len=4)
    r = distant_context(with_memory, codec, doc, tail=tail, near=near)
    assert abs(r["nll"]["near"] - r["nll"]["far"]) > 1e-4


def test_by_position_buckets_cover_the_document(one_thread):  # noqa: F811
    codec = bytes_codec()
    model = model_for(codec)
    docs = [random_doc(70 * L + 5, seed=2), random_doc(90 * L, seed=3)]  # past the 64 linear buckets
    per_doc = [by_position(model, codec, d) for d in docs]
    for doc, buckets in zip(docs, per_doc):
        assert sum(b["bytes"] for b in buckets) == len(doc) == sum(b["tokens"] for b in buckets)
        assert buckets[0]["first_segment"] == 0 and buckets[0]["start"] == 0
        for prev, b in zip(buckets, buckets[1:]):
            assert b["first_segment"] == prev["last_segment"] + 1  # no gap
            assert b["start"] == prev["start"] + prev["bytes"]
            assert b["start"] == b["first_segment"] * L  # bytes codec: byte offset = segment * L
        assert buckets[-1]["first_segment"] <= (len(doc) - 1) // L <= buckets[-1]["last_segment"]
        whole = sum(b["nll_nats"] for b in buckets)
        ids = torch.tensor([[codec.doc_sep_id, *doc]])
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])
            ref = float(torch.nn.functional.cross_entropy(logits[0].double(), ids[0, 1:], reduction="sum"))
        assert whole == pytest.approx(ref, abs=1e-4)
    bands = byte_bands(per_doc)
    shortest = min(len(d) for d in docs)
    assert bands[0]["start"] == 0 and bands[-1]["start"] < shortest <= bands[-1]["end"]
    for prev, b in zip(bands, bands[1:]):
        assert b["start"] == prev["end"]
    assert sum(b["bytes"] for b in bands) == sum(b["bytes"] for buckets in per_doc for b in buckets if b["start"] < shortest)


def test_bands_and_trend():
    assert [band_of(x) for x in (0, 255, 256, 511, 512, 1023, 1024)] == [0, 0, 1, 1, 2, 2, 3]
    assert [band_range(k) for k in range(4)] == [(0, 256), (256, 512), (512, 1024), (1024, 2048)]
    bands = [{"start": s, "end": e, "bits_per_byte": v} for (s, e), v in zip(map(band_range, range(5)), [3, 2.5, 2.4, 2.405, 2.3])]
    assert trend(bands, None)["verdict"] == "never rises"
    assert trend(bands, 600)["verdict"] == "never rises" and trend(bands, 600)["from"] == 512
    assert trend(bands, 1100)["verdict"] == "keeps falling"
    bad = trend(bands, None, tolerance=0.001)
    assert bad["verdict"] == "rises" and bad["at"] == 1024 and bad["max_rise"] == pytest.approx(0.005)
    assert trend(bands, 5000)["verdict"] == "too short"


def test_trained_horizon():
    recipe = {"recipe": {"train": {"segments_per_sample": 4}}}
    assert trained_horizon(recipe, 32) == 128
    assert trained_horizon({"recipe": {"train": {"segments_per_sample": 2, "curriculum": [[0, 2], [100, 16], [200, 8]]}}}, 8) == 128
    assert trained_horizon({"recipe": {"train": {"curriculum": [{"step": 0, "segments_per_sample": 3}]}}}, 10) == 30
    assert trained_horizon({"step": 0}, 8) is None


def test_char_start():
    data = "aé東".encode()  # a, é (2 bytes), 東 (3 bytes)
    chars = type("C", (), {"name": "chars"})()
    assert [char_start(data, i, chars) for i in range(len(data) + 1)] == [0, 1, 3, 3, 6, 6, 6]
    assert char_start(data, 2, bytes_codec()) == 2


@pytest.mark.parametrize("codec_name", ["bytes", "chars"])
def test_validation_documents(tmp_path, one_thread, codec_name):  # noqa: F811
    """The long documents of the checkpoint's val split, in order, as their original bytes, for the
    bytes layout (raw bytes + boundaries) and for an id split of another codec (decoded)."""
    from om.checkpoint import load_checkpoint
    from om.data import open_dataset
    from om.data.prepare import prepare_dataset

    src = tmp_path / "src"
    src.mkdir()
    for i, n in enumerate([3000, 500, 4000, 2500, 100, 3500]):
        (src / f"d{i}.txt").write_bytes(("é" if i == 2 else chr(97 + i)).encode() * n)
    prepare_dataset([str(src)], tmp_path / "ds", codec=codec_name, val_fraction=0.9)
    ds = open_dataset(tmp_path / "ds")
    val, codec = np.asarray(ds.split("val")), ds.codec
    pieces = [p[p != codec.doc_sep_id] for p in np.split(val, np.flatnonzero(val == codec.doc_sep_id))]
    pieces = [p for p in pieces if len(p)]
    assert len(pieces) >= 3

    def as_doc(ids):  # bytes for the bytes codec, the ids themselves for another codec
        return ids.astype(np.uint8).tobytes() if codec_name == "bytes" else ids.tolist()

    sizes = [int(codec.byte_count(p)) for p in pieces]
    expected = [(as_doc(p), n) for p, n in zip(pieces, sizes)]
    save_tiny_checkpoint(tmp_path / "ckpt", codec=ds.codec, dataset={"path": str(ds.path), "fingerprint": ds.fingerprint})
    ckpt = load_checkpoint(tmp_path / "ckpt")

    def got(docs):
        return [(d.data if isinstance(d.data, bytes) else d.data.tolist(), d.size) for d in docs]

    docs, seen = validation_documents(ckpt, min_bytes=2500, max_docs=8)
    long_ones = [(d, n) for d, n in expected if n >= 2500]
    assert long_ones and got(docs) == long_ones
    assert seen["documents"] == len(pieces) and seen["longest"] == max(sizes)
    docs, _ = validation_documents(ckpt, min_bytes=2500, max_docs=1)
    assert got(docs) == long_ones[:1]
    docs, _ = validation_documents(ckpt, min_bytes=3000, max_docs=8, step=7)  # separators across chunk edges
    assert got(docs) == [(d, n) for d, n in expected if n >= 3000]
    if codec_name == "chars":  # an id document goes through distant_context and by_position as ids
        doc = docs[0]
        r = distant_context(ckpt.model, ckpt.codec, doc.data, tail=1000, near=200)
        assert r["bytes"] == doc.size and 1000 <= r["tail_bytes"] <= 1003 and 200 <= r["near_bytes"] <= 203
        assert sum(b["bytes"] for b in by_position(ckpt.model, ckpt.codec, doc.data)) == doc.size


def test_cli_without_documents_is_one_line_exit_2(tmp_path, capsys, one_thread):  # noqa: F811
    from bench.long_context import main

    save_tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "ckpt"), "--no-write"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "names no training dataset" in err and "--docs" in err


def test_cli_smoke(tmp_path, capsys, one_thread):  # noqa: F811
    from bench.long_context import main

    save_tiny_checkpoint(tmp_path / "a")
    save_tiny_checkpoint(tmp_path / "b", seed=1, state_len=0)
    doc = tmp_path / "doc.txt"
    doc.write_bytes(random_doc(3 * 1024, seed=4))
    (tmp_path / "short.txt").write_bytes(b"too short")
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--docs", str(doc), str(tmp_path / "short.txt"),
          "--tail-kb", "1", "--near-kb", "1", "--min-kb", "3", "--no-write"])
    out, err = capsys.readouterr()
    assert "| a | 1 | 1,024 |" in out and "| b | 1 | 1,024 |" in out
    assert "| bytes into the document | a | b |" in out and "| 2 KiB - 4 KiB |" in out
    assert "trained horizon unknown" in out and "skipping" in err
