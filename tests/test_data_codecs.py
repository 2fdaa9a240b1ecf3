"""Codecs: round trips, byte counting, streaming encoders, UTF-8 errors, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from om.data import BytesCodec, CharsCodec, SentencePieceCodec, dtype_for, load_codec, make_codec
from om.errors import OmUserError

SETTINGS = settings(max_examples=60, deadline=None)

CORPUS = (
    "def parse(text, *, strict=True):\n"
    "    \"\"\"Parse  text.\"\"\"\n"
    "    for line in text.splitlines():\n"
    "        if not line.strip():\n"
    "            continue\n"
    "        yield line.split('=', 1)  # key = value\n"
    "\n"
    "Übergrößenträger café naïve — “quotes” 日本語のテキスト 😀\n"
) * 20


@pytest.fixture(scope="module")
def spm_codec() -> SentencePieceCodec:
    return make_codec("sentencepiece", data=CORPUS.encode(), vocab_size=400)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def _stream(codec, chunks: list[bytes], errors: str = "strict") -> np.ndarray:
    encoder = codec.encoder(errors)
    parts = [encoder.encode(c) for c in chunks] + [encoder.encode(b"", final=True)]
    return np.concatenate(parts)


# -- bytes -------------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=2000))
def test_bytes_round_trip_and_count(data):
    codec = BytesCodec()
    ids = codec.encode(data)
    assert ids.dtype == np.dtype("<u2") and ids.shape == (len(data),)
    assert codec.decode(ids) == data
    assert codec.byte_count(ids) == len(data)


@SETTINGS
@given(st.binary(max_size=500), st.lists(st.integers(0, 500), max_size=6))
def test_bytes_streaming_equals_whole(data, cuts):
    codec = BytesCodec()
    assert np.array_equal(_stream(codec, _chunks(data, cuts)), codec.encode(data))


def test_bytes_specials_and_vocab():
    codec = BytesCodec()
    assert codec.vocab_size == 257 and codec.special_ids == {"doc_sep": 256} and codec.doc_sep_id == 256
    ids = np.array([104, 105, 256, 33])
    assert codec.decode(ids) == b"hi!"
    assert codec.byte_count(ids) == 3
    assert BytesCodec(320).vocab_size == 320
    with pytest.raises(OmUserError, match="^vocab_size 100 is too small for the bytes codec"):
        BytesCodec(100)
    with pytest.raises(ValueError):
        codec.decode([257])


# -- chars -------------------------------------------------------------------------------------


@SETTINGS
@given(st.text(max_size=300))
def test_chars_round_trip_when_vocab_covers(text):
    data = text.encode("utf-8")
    codec = make_codec("chars", data=data + b"x", vocab_size=10_000)
    ids = codec.encode(data)
    assert codec.decode(ids) == data
    assert codec.byte_count(ids) == len(data)
    assert not np.isin(ids, [codec.special_ids[k] for k in ("unk", "unk2", "unk3", "unk4")]).any()


@SETTINGS
@given(st.text(max_size=300))
def test_chars_unknowns_keep_byte_count_exact(text):
    data = text.encode("utf-8")
    codec = CharsCodec(["a", " "])
    ids = codec.encode(data)
    assert ids.dtype == np.uint8 and len(ids) == len(text)
    assert codec.byte_count(ids) == len(data)
    expected = "".join(c if c in "a " else "\ufffd" for c in text).encode("utf-8")
    assert codec.decode(ids) == expected


@SETTINGS
@given(st.text(max_size=200), st.lists(st.integers(0, 800), max_size=8))
def test_chars_streaming_never_splits_characters(text, cuts):
    data = text.encode("utf-8")
    codec = make_codec("chars", data=data + b"x")
    assert np.array_equal(_stream(codec, _chunks(data, cuts)), codec.encode(data))


def test_chars_vocab_is_most_frequent_first_and_capped():
    codec = make_codec("chars", data="aaaabbbccd€".encode(), vocab_size=8)
    assert codec.chars == ["a", "b", "c"]
    assert codec.vocab_size == 8
    assert codec.special_ids == {"doc_sep": 3, "unk": 4, "unk2": 5, "unk3": 6, "unk4": 7}
    ids = codec.encode("abd€é😀".encode())
    assert ids.tolist() == [0, 1, 4, 6, 5, 7]
    assert codec.decode(ids) == "ab\ufffd\ufffd\ufffd\ufffd".encode()
    assert codec.byte_count(ids) == len("abd€é😀".encode())
    assert codec.decode([0, codec.doc_sep_id, 1]) == b"ab"
    with pytest.raises(OmUserError, match="^vocab_size 5 is too small for the chars codec"):
        make_codec("chars", data=b"abc", vocab_size=5)


def test_chars_dtype_grows_with_vocab():
    assert CharsCodec([chr(0x100 + i) for i in range(251)]).dtype == np.uint8
    assert CharsCodec([chr(0x100 + i) for i in range(252)]).dtype == np.dtype("<u2")
    assert dtype_for(256) == np.uint8 and dtype_for(257) == np.dtype("<u2")
    assert dtype_for(65536) == np.dtype("<u2") and dtype_for(65537) == np.dtype("<u4")


# -- UTF-8 errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chars", "sentencepiece"])
def test_invalid_utf8_names_source_and_offset(name, spm_codec):
    codec = spm_codec if name == "sentencepiece" else make_codec("chars", data=b"abc\n")
    encoder = codec.encoder(source="notes.txt")
    encoder.encode(b"ab\n")
    encoder.encode(b"c\xc3")  # an unfinished character is held back, not an error yet
    with pytest.raises(OmUserError, match=r"^notes\.txt: invalid UTF-8 at byte offset 4 "):
        encoder.encode(b"(\n")
    with pytest.raises(OmUserError, match=r"^input: invalid UTF-8 at byte offset 2 "):
        codec.encode(b"ab\xff")
    with pytest.raises(OmUserError, match="byte offset 3"):
        codec.encoder().encode(b"abc\xe2\x82", final=True)
    replaced = codec.encode(b"a\xffb\n", errors="replace")
    assert codec.decode(replaced) == "a\ufffdb\n".encode()


def test_errors_mode_is_checked():
    with pytest.raises(OmUserError, match="^errors 'ignore' is not one of: strict, replace$"):
        BytesCodec().encoder(errors="ignore")


# -- sentencepiece -----------------------------------------------------------------------------


@SETTINGS
@given(st.text(max_size=300))
def test_sentencepiece_round_trip_and_count(spm_codec, text):
    data = text.encode("utf-8")
    ids = spm_codec.encode(data)
    assert ids.dtype == np.dtype("<u2")
    assert spm_codec.decode(ids) == data
    assert spm_codec.byte_count(ids) == len(data)


@SETTINGS
@given(
    st.lists(st.sampled_from(["\n", " ", "  ", "\t", "\u2581", "def", "x", "日本", "😀", "\r\n", "é"]), max_size=60),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_sentencepiece_whitespace_newlines_and_streaming(spm_codec, words, cuts):
    data = "".join(words).encode("utf-8")
    whole = spm_codec.encode(data)
    assert spm_codec.decode(whole) == data
    assert spm_codec.byte_count(whole) == len(data)
    assert np.array_equal(_stream(spm_codec, _chunks(data, cuts)), whole)


def test_sentencepiece_layout(spm_codec):
    assert spm_codec.vocab_size <= 400
    assert spm_codec.special_ids == {"doc_sep": spm_codec.vocab_size - 1}
    assert spm_codec.marker_id == spm_codec.vocab_size - 2
    ids = spm_codec.encode(b"def parse(text):\n")
    assert len(ids) < len(b"def parse(text):\n")  # it learned something from the corpus
    with_sep = np.concatenate([ids, [spm_codec.doc_sep_id], ids])
    assert spm_codec.decode(with_sep) == b"def parse(text):\n" * 2
    assert spm_codec.byte_count(with_sep) == 2 * len(b"def parse(text):\n")


def test_sentencepiece_bpe_and_vocab_errors():
    codec = make_codec("sentencepiece", data=CORPUS.encode(), vocab_size=400, model_type="bpe")
    assert codec.model_type == "bpe" and codec.decode(codec.encode(b"yield  line\n\n")) == b"yield  line\n\n"
    with pytest.raises(OmUserError, match="^vocab_size 100 is too small for the sentencepiece codec"):
        make_codec("sentencepiece", data=CORPUS.encode(), vocab_size=100)
    with pytest.raises(OmUserError, match=r"^vocab_size 280 is too small .* on this data: .* at least \d+"):
        make_codec("sentencepiece", data=CORPUS.encode(), vocab_size=280)
    with pytest.raises(OmUserError, match="no non-empty line"):
        make_codec("sentencepiece", data=b"\n\n\n")


# -- save / load -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bytes", "chars", "sentencepiece"])
def test_save_and_load(tmp_path, name, spm_codec):
    codec = {"bytes": BytesCodec(), "chars": make_codec("chars", data=CORPUS.encode()), "sentencepiece": spm_codec}[name]
    files = codec.save(tmp_path)
    assert files[0] == "codec.json" and sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    info = json.loads((tmp_path / "codec.json").read_text())
    assert info["name"] == name and info["vocab_size"] == codec.vocab_size and info["special_ids"] == codec.special_ids
    loaded = load_codec(tmp_path)
    assert type(loaded) is type(codec) and loaded.vocab_size == codec.vocab_size
    sample = CORPUS[:500].encode()
    assert np.array_equal(loaded.encode(sample), codec.encode(sample))


def test_load_errors_name_the_file(tmp_path, spm_codec):
    with pytest.raises(OmUserError, match=r"codec\.json: missing"):
        load_codec(tmp_path)
    (tmp_path / "codec.json").write_text("{not json")
    with pytest.raises(OmUserError, match=r"codec\.json: cannot read"):
        load_codec(tmp_path)
    (tmp_path / "codec.json").write_text('{"name": "words"}')
    with pytest.raises(OmUserError, match="unknown codec name 'words'"):
        load_codec(tmp_path)
    make_codec("chars", data=b"abc").save(tmp_path)
    (tmp_path / "chars.json").unlink()
    with pytest.raises(OmUserError, match=r"chars\.json: missing"):
        load_codec(tmp_path)
    (tmp_path / "chars.json").write_text('{"chars": ["a", "b", "c", "d"]}')
    with pytest.raises(OmUserError, match=r"chars\.json: does not match"):
        load_codec(tmp_path)
    spm_codec.save(tmp_path)
    (tmp_path / "sentencepiece.model").write_bytes(b"garbage")
    with pytest.raises(OmUserError, match=r"sentencepiece\.model: not a valid"):
        load_codec(tmp_path)
