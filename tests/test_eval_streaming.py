"""Streaming evaluation (library): exactness, batching, positions, byte accounting."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from om.errors import OmUserError
from om.evaluate import bucket_of, bucket_range, evaluate, ids_source
from tests.test_eval_support import TEXT, bytes_codec, chars_codec, model_for, one_thread, stream_nll  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

RNG = np.random.default_rng(0)
DATA = bytes(RNG.integers(0, 256, 203, dtype=np.uint8))


@pytest.fixture(scope="module")
def byte_model():
    codec = bytes_codec()
    return model_for(codec), codec


def test_chunked_equals_one_call(byte_model):
    model, codec = byte_model
    expected = stream_nll(model, codec, DATA)
    for window, chunk in [(8, 7), (5, 1), (64, 1 << 20)]:
        r = evaluate(model, codec, [DATA], window=window, chunk_bytes=chunk).inputs[0]
        assert r.tokens == r.bytes == len(DATA)
        assert r.nll_nats == pytest.approx(expected, rel=1e-5)
        assert r.bits_per_byte == pytest.approx(expected / math.log(2) / len(DATA), rel=1e-5)


def test_file_object_and_path_and_bytes_agree(byte_model, tmp_path):
    model, codec = byte_model
    path = tmp_path / "d.bin"
    path.write_bytes(DATA)
    a = evaluate(model, codec, [path], window=16).inputs[0]
    b = evaluate(model, codec, [io.BytesIO(DATA)], window=16).inputs[0]
    c = evaluate(model, codec, [DATA], window=16).inputs[0]
    assert a.nll_nats == b.nll_nats == c.nll_nats
    assert a.name == str(path)


def test_side_by_side_equals_alone(byte_model):
    model, codec = byte_model
    inputs = [DATA, DATA[:37], b"", DATA[50:61], b"x"]
    alone = [evaluate(model, codec, [d], window=16).inputs[0] for d in inputs]
    for batch in (2, 5):
        together = evaluate(model, codec, inputs, batch_size=batch, window=16)
        assert [r.bytes for r in together.inputs] == [len(d) for d in inputs]
        for a, t in zip(alone, together.inputs):
            assert t.tokens == a.tokens
            assert t.nll_nats == pytest.approx(a.nll_nats, rel=1e-5, abs=1e-9)
        assert together.total.nll_nats == pytest.approx(sum(a.nll_nats for a in alone), rel=1e-5)


def test_empty_input_reports_zero_bytes(byte_model):
    model, codec = byte_model
    result = evaluate(model, codec, [b""])
    d = result.to_dict()
    assert d["bytes"] == d["tokens"] == d["documents"] == 0
    assert d["bits_per_byte"] is None and d["byte_perplexity"] is None
    assert evaluate(model, codec, []).to_dict()["bytes"] == 0


def test_by_position_buckets_add_up(byte_model):
    model, codec = byte_model
    L = model.config.segment_len
    result = evaluate(model, codec, [DATA, DATA[:30]], window=24, by_position=True)
    buckets = result.by_position
    assert sum(b.tokens for b in buckets) == result.total.tokens
    assert sum(b.bytes for b in buckets) == result.total.bytes
    assert sum(b.nll_nats for b in buckets) == pytest.approx(result.total.nll_nats, rel=1e-9)
    # Positions 0..L-1 (the separator and the first L-1 bytes) predict from segment 0: both inputs.
    assert buckets[0].tokens == 2 * L
    assert [b.first_segment for b in buckets] == list(range(len(buckets)))


def test_bucket_scheme():
    assert [bucket_of(s) for s in (0, 1, 63, 64, 127, 128, 255, 256)] == [0, 1, 63, 64, 64, 65, 65, 66]
    assert bucket_range(5) == (5, 5)
    assert bucket_range(64) == (64, 127)
    assert bucket_range(66) == (256, 511)


def test_long_stream_by_position_bucket_edges(byte_model):
    model, codec = byte_model
    # 70 segments of 8: the last bucket is 64-127, holding segments 64..69.
    data = bytes(RNG.integers(0, 256, 70 * 8, dtype=np.uint8))  # 560 predictions, from positions 0..559
    result = evaluate(model, codec, [data], window=64, by_position=True)
    assert result.by_position[-1].label == "64-127"
    assert result.by_position[-1].tokens == 6 * 8


def test_chars_codec_counts_utf8_bytes_and_rejects_bad_utf8():
    codec = chars_codec()
    model = model_for(codec)
    data = TEXT.encode("utf-8")
    r = evaluate(model, codec, [data], window=16, chunk_bytes=5).inputs[0]  # chunks split characters
    assert r.bytes == len(data)
    assert r.tokens == len(TEXT)
    assert r.nll_nats == pytest.approx(stream_nll(model, codec, data), rel=1e-5)
    with pytest.raises(OmUserError, match=r"bad\.txt.*offset 3"):
        evaluate(model, codec, [codec_source(b"abc\xff")])
    replaced = evaluate(model, codec, [b"abc\xff"], errors="replace").inputs[0]
    assert replaced.bytes == 4 and replaced.tokens == 4


def codec_source(data: bytes):
    from om.evaluate import InputSource

    return InputSource("bad.txt", len(data), open_bytes=lambda: io.BytesIO(data))


def test_ids_source_like_a_validation_split(byte_model):
    model, codec = byte_model
    sep = codec.doc_sep_id
    a, b = DATA[:40], DATA[40:90]
    ids = np.array([sep, *a, sep, *b], dtype=np.uint16)  # a split starting with the separator
    r = evaluate(model, codec, [ids_source("val", ids)], window=16, chunk_bytes=13).inputs[0]
    assert r.bytes == len(a) + len(b)
    assert r.documents == 2
    assert r.tokens == len(ids) - 1  # the leading separator is the start token, not scored
    seq = torch.from_numpy(ids.astype(np.int64))[None]
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
        direct = float(torch.nn.functional.cross_entropy(logits[0].double(), seq[0, 1:], reduction="sum"))
    assert r.nll_nats == pytest.approx(direct, rel=1e-5)


def test_result_dict_keys(byte_model):
    model, codec = byte_model
    d = evaluate(model, codec, [DATA], by_position=True).to_dict()
    for key in ("bits_per_byte", "byte_perplexity", "bits_per_token", "token_perplexity", "nll_nats", "bytes",
                "tokens", "documents", "seconds", "bytes_per_second", "peak_rss_mb", "inputs", "by_position"):
        assert key in d
    assert d["byte_perplexity"] == pytest.approx(2 ** d["bits_per_byte"])
    assert d["peak_rss_mb"] > 0


def test_bad_batch_size(byte_model):
    model, codec = byte_model
    with pytest.raises(OmUserError, match="^batch_size 0: must be from 1"):
        evaluate(model, codec, [DATA], batch_size=0)


def test_missing_input_is_a_user_error(byte_model, tmp_path):
    model, codec = byte_model
    with pytest.raises(OmUserError, match="nope.txt: no such file"):
        evaluate(model, codec, [tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(OmUserError, match="empty: no file in this folder"):
        evaluate(model, codec, [tmp_path / "empty"])


def test_sentencepiece_counts_bytes_read_and_samples_utf8():
    from om.data import make_codec
    from om.sampling import generate

    codec = make_codec("sentencepiece", data=(TEXT * 30).encode("utf-8"), vocab_size=300)
    model = model_for(codec)
    data = TEXT.encode("utf-8")
    r = evaluate(model, codec, [data], window=16, chunk_bytes=7).inputs[0]
    assert r.bytes == len(data) and r.tokens < len(data)
    assert r.nll_nats == pytest.approx(stream_nll(model, codec, data), rel=1e-5)
    out = b"".join(generate(model, codec, "caf".encode(), max_bytes=120, seed=1))
    assert len(out) <= 120
    out.decode("utf-8")  # byte pieces never leave a broken character


def test_memmap_split_is_read_in_chunks(byte_model, tmp_path):
    model, codec = byte_model
    ids = np.array([*DATA[:60], codec.doc_sep_id, *DATA[60:]], dtype=np.uint16)
    ids.tofile(tmp_path / "val.bin")
    mm = np.memmap(tmp_path / "val.bin", dtype=np.uint16, mode="r", shape=(len(ids),))
    a = evaluate(model, codec, [ids_source("mm", mm)], chunk_bytes=17, window=16).inputs[0]
    b = evaluate(model, codec, [ids_source("arr", ids)], window=64).inputs[0]
    assert (a.tokens, a.bytes, a.documents) == (b.tokens, b.bytes, b.documents) == (len(ids), len(DATA), 2)
    assert a.nll_nats == pytest.approx(b.nll_nats, rel=1e-6)
