"""prepare_dataset and the dataset reader: outputs, splits, streaming, inputs, errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import time

import numpy as np
import pytest

import om.data.sources as sources_module
from om.data import open_dataset, prepare_dataset
from om.data.bytesplit import BytesSplit
from om.errors import OmUserError

TEXT = "line one\n  indented  two\ttab\nünïcödé ☃ 日本 😀\n\n"


def _tree(root, files: dict[str, bytes]):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _corpus(root, n=20):
    """n documents of different sizes in nested folders, plus things the walk must skip."""
    files = {f"d{i % 3}/doc{i:02d}.txt": (f"document {i}\n" + TEXT * (1 + i % 5)).encode() for i in range(n)}
    files[".hidden.txt"] = b"hidden"
    files[".git/config"] = b"hidden folder"
    return _tree(root, files)


def _documents(ds, name):
    """The split's documents, decoded, in order."""
    ids = np.asarray(ds.split(name))
    cuts = np.flatnonzero(ids == ds.codec.doc_sep_id)
    return [ds.codec.decode(part) for part in np.split(ids, cuts) if part.size or len(cuts) == 0]


@pytest.mark.parametrize("codec", ["bytes", "chars", "sentencepiece"])
def test_prepare_writes_a_complete_dataset(tmp_path, codec):
    corpus = _corpus(tmp_path / "corpus")
    out = tmp_path / "ds"
    meta = prepare_dataset([corpus], out, codec=codec, vocab_size=600 if codec == "sentencepiece" else None)
    ds = open_dataset(out)
    assert ds.meta == meta == json.loads((out / "meta.json").read_text())
    assert ds.fingerprint == hashlib.sha256((out / "meta.json").read_bytes()).hexdigest()
    boundaries = ["train.docs", "val.docs"] if codec == "bytes" else []
    assert sorted(p.name for p in out.iterdir()) == sorted(["train.bin", "val.bin", "meta.json", *boundaries, *meta["codec_files"]])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert meta["format_version"] == 2 and meta["codec"] == codec and ds.codec.name == codec
    assert meta["vocab_size"] == ds.codec.vocab_size and meta["special_ids"] == ds.codec.special_ids
    assert meta["layout"] == ("bytes" if codec == "bytes" else "ids")
    assert meta["dtype"] == ("uint8" if codec == "bytes" else ds.codec.dtype.name)
    # Sources: sorted walk, hidden entries skipped, sizes and hashes of the files.
    files = sorted(p for p in corpus.rglob("*.txt") if not p.name.startswith("."))
    assert [s["path"] for s in meta["sources"]] == [str(p) for p in files]
    for s, p in zip(meta["sources"], files):
        assert s["bytes"] == p.stat().st_size and s["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    # Whole documents, the same ones for every codec, about 10% of the bytes.
    assert meta["split"]["method"] == "documents"
    val_docs = [p for s, p in zip(meta["sources"], files) if s["split"] == "val"]
    val_bytes = sum(p.stat().st_size for p in val_docs)
    assert 0.05 <= val_bytes / meta["input_bytes"] <= 0.15
    for name in ("train", "val"):
        array = ds.split(name)
        assert isinstance(array, BytesSplit if codec == "bytes" else np.memmap)
        assert array.dtype == ds.codec.dtype and array.ndim == 1
        assert len(array) == ds.num_tokens(name) == meta["splits"][name]["tokens"]
        if codec == "bytes":  # one byte per byte, 8 per document boundary
            info = meta["splits"][name]
            assert (out / f"{name}.bin").stat().st_size == ds.num_bytes(name) == len(array) - info["separators"]
            assert (out / f"{name}.docs").stat().st_size == 8 * info["separators"] == 8 * (info["documents"] - 1)
        else:
            assert (out / f"{name}.bin").stat().st_size == len(array) * array.dtype.itemsize
        assert ds.num_bytes(name) == ds.codec.byte_count(array)
        expected = [p.read_bytes() for s, p in zip(meta["sources"], files) if s["split"] == name]
        assert _documents(ds, name) == expected
        assert meta["splits"][name]["documents"] == len(expected)
    assert ds.num_bytes("train") + ds.num_bytes("val") == meta["input_bytes"] == sum(p.stat().st_size for p in files)


def test_split_is_deterministic_and_independent_of_location(tmp_path):
    a = _corpus(tmp_path / "a")
    b = _corpus(tmp_path / "elsewhere" / "b")
    m1 = prepare_dataset([a], tmp_path / "o1")
    m2 = prepare_dataset([a], tmp_path / "o2")
    m3 = prepare_dataset([b], tmp_path / "o3", codec="chars")
    assert (tmp_path / "o1/meta.json").read_bytes() == (tmp_path / "o2/meta.json").read_bytes()
    assert (tmp_path / "o1/val.bin").read_bytes() == (tmp_path / "o2/val.bin").read_bytes()
    assert open_dataset(tmp_path / "o1").fingerprint == open_dataset(tmp_path / "o2").fingerprint
    assert [s["split"] for s in m1["sources"]] == [s["split"] for s in m3["sources"]]
    assert m1["splits"]["val"]["bytes"] == m3["splits"]["val"]["bytes"]
    assert m2["split"] == {"method": "documents", "val_fraction": 0.1, "val_documents": m1["split"]["val_documents"]}


@pytest.mark.parametrize("codec", ["bytes", "chars", "sentencepiece"])
def test_single_document_splits_the_tail(tmp_path, codec):
    data = "".join(f"{i:05d} {TEXT}" for i in range(300)).encode()
    (tmp_path / "one.txt").write_bytes(data)
    meta = prepare_dataset([tmp_path / "one.txt"], tmp_path / "ds", codec=codec, val_fraction=0.25)
    ds = open_dataset(tmp_path / "ds")
    assert meta["split"]["method"] == "tail"
    cut = meta["split"]["cut_byte"]
    assert cut == len(data) - round(0.25 * len(data))
    train, val = ds.codec.decode(ds.split("train")), ds.codec.decode(ds.split("val"))
    assert train + val == data
    assert abs(len(train) - cut) <= 16  # cut at the token boundary nearest the byte
    assert ds.num_bytes("train") == len(train) and ds.num_bytes("val") == len(val)
    assert meta["sources"][0]["split"] == "train+val"
    assert meta["splits"]["train"]["documents"] == meta["splits"]["val"]["documents"] == 1


@pytest.mark.parametrize("codec", ["bytes", "chars"])
def test_stdin_and_files_stream_split(tmp_path, codec):
    (tmp_path / "a.txt").write_bytes(b"A" * 1000)
    stdin_data = ("é" * 500).encode()
    meta = prepare_dataset(["-", tmp_path / "a.txt"], tmp_path / "ds", codec=codec, stdin=io.BytesIO(stdin_data))
    ds = open_dataset(tmp_path / "ds")
    assert meta["split"]["method"] == "tail"  # stdin among the inputs: sizes are not known up front
    assert meta["sources"][0] == {
        "path": "-", "bytes": 1000, "sha256": hashlib.sha256(stdin_data).hexdigest(), "split": "train",
    }
    assert meta["sources"][1]["split"] == "train+val"
    everything = np.concatenate([ds.split("train"), ds.split("val")])
    assert ds.codec.decode(everything) == stdin_data + b"A" * 1000
    assert (everything == ds.codec.doc_sep_id).sum() == 1
    assert ds.num_bytes("val") == 200 and ds.codec.decode(ds.split("val")) == b"A" * 200


def test_small_folder_falls_back_to_tail_and_zero_fraction(tmp_path):
    _tree(tmp_path / "c", {"a.txt": b"x" * 100, "b.txt": b"y" * 100})
    meta = prepare_dataset([tmp_path / "c"], tmp_path / "ds", val_fraction=0.1)
    assert meta["split"]["method"] == "tail" and meta["splits"]["val"]["bytes"] == 20
    meta = prepare_dataset([tmp_path / "c"], tmp_path / "ds0", val_fraction=0)
    ds = open_dataset(tmp_path / "ds0")
    assert meta["split"]["method"] == "none"
    assert ds.num_tokens("val") == 0 and len(ds.split("val")) == 0 and ds.split("val")[:].tolist() == []
    assert (tmp_path / "ds0/val.bin").stat().st_size == (tmp_path / "ds0/val.docs").stat().st_size == 0
    assert ds.codec.decode(ds.split("train")) == b"x" * 100 + b"y" * 100


def test_include_exclude_and_output_inside_input(tmp_path):
    corpus = _tree(tmp_path / "c", {"a.py": b"a", "b.txt": b"b", "sub/c.py": b"c", "tests/d.py": b"d", "e.md": b"e"})
    meta = prepare_dataset([corpus], tmp_path / "o1", include=["*.py"], exclude=["tests"])
    assert [s["path"] for s in meta["sources"]] == [str(corpus / "a.py"), str(corpus / "sub/c.py")]
    meta = prepare_dataset([corpus, corpus / "e.md"], corpus / "ds", exclude=["*.py", "sub/*"])
    assert [s["path"] for s in meta["sources"]] == [str(corpus / p) for p in ("b.txt", "e.md")]  # e.md once
    meta = prepare_dataset([corpus], corpus / "ds", force=True)  # the old dataset inside is not an input
    assert all("/ds/" not in s["path"] for s in meta["sources"]) and len(meta["sources"]) == 5


def test_chars_vocabulary_comes_from_the_training_split(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a" * 90 + "é".encode() * 5)
    meta = prepare_dataset([tmp_path / "a.txt"], tmp_path / "ds", codec="chars", val_fraction=0.1)
    ds = open_dataset(tmp_path / "ds")
    assert ds.codec.chars == ["a"] and meta["split"]["cut_byte"] == 90
    assert ds.split("val").tolist() == [ds.codec.special_ids["unk2"]] * 5
    assert ds.num_bytes("val") == 10 and ds.codec.decode(ds.split("val")) == "\ufffd".encode() * 5


def test_walk_survives_link_loops_and_reads_each_file_once(tmp_path):
    corpus = _tree(tmp_path / "c", {"a.txt": b"a", "sub/b.txt": b"b"})
    (corpus / "sub" / "loop").symlink_to(corpus)
    (corpus / "same.txt").symlink_to(corpus / "a.txt")
    meta = prepare_dataset([corpus], tmp_path / "ds", val_fraction=0)
    assert [s["path"] for s in meta["sources"]] == [str(corpus / "a.txt"), str(corpus / "sub/b.txt")]


def test_binary_input_is_fine_for_bytes(tmp_path):
    data = bytes(range(256)) * 10
    (tmp_path / "blob.bin").write_bytes(data)
    prepare_dataset([tmp_path / "blob.bin"], tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    assert ds.codec.decode(ds.split("train")) + ds.codec.decode(ds.split("val")) == data


def test_invalid_utf8_strict_and_replace(tmp_path):
    (tmp_path / "good.txt").write_bytes(b"fine text\n" * 10)
    (tmp_path / "bad.txt").write_bytes(b"ok\n" * 7 + b"\xff\xfe rest")
    inputs = [tmp_path / "good.txt", tmp_path / "bad.txt"]
    for codec in ("chars", "sentencepiece"):
        with pytest.raises(OmUserError, match=rf"^{tmp_path}/bad\.txt: invalid UTF-8 at byte offset 21 "):
            prepare_dataset(inputs, tmp_path / "ds", codec=codec, vocab_size=300 if codec == "sentencepiece" else None)
        assert not (tmp_path / "ds").exists()
    meta = prepare_dataset(inputs, tmp_path / "ds", codec="chars", errors="replace", val_fraction=0)
    ds = open_dataset(tmp_path / "ds")
    text = ds.codec.decode(np.concatenate([ds.split("train"), ds.split("val")]))
    assert text == b"fine text\n" * 10 + b"ok\n" * 7 + "\ufffd\ufffd rest".encode()
    assert meta["errors"] == "replace" and meta["input_bytes"] == 100 + 21 + 7


def test_force_and_existing_output(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello world")
    out = tmp_path / "ds"
    out.mkdir()
    prepare_dataset([tmp_path / "a.txt"], out)  # an empty folder is fine
    with pytest.raises(OmUserError, match=rf"^{out}: folder exists and is not empty \(--force replaces it\)"):
        prepare_dataset([tmp_path / "a.txt"], out)
    (tmp_path / "b.txt").write_bytes(b"another text")
    meta = prepare_dataset([tmp_path / "b.txt"], out, force=True)
    assert meta["sources"][0]["path"] == str(tmp_path / "b.txt") and open_dataset(out).meta == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "ds"]
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OmUserError, match="exists and is not a folder"):
        prepare_dataset([tmp_path / "a.txt"], tmp_path / "file", force=True)
    with pytest.raises(OmUserError, match="is inside the output folder"):
        prepare_dataset([out / "meta.json"], out, force=True)


def test_signal_handlers_are_restored(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello")
    before = signal.getsignal(signal.SIGTERM)
    prepare_dataset([tmp_path / "a.txt"], tmp_path / "ds")
    assert signal.getsignal(signal.SIGTERM) is before


class _InterruptedStdin:
    """A stdin that gives one chunk, then is interrupted (Ctrl-C or SIGTERM) while waiting for more."""

    def __init__(self, how):
        self.how, self.calls = how, 0

    def read(self, n):
        self.calls += 1
        if self.calls == 1:
            return b"x" * 1000
        if self.how == "SIGINT":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return b""


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("codec", ["bytes", "chars"])
def test_interrupt_leaves_nothing(tmp_path, how, codec):
    expected = KeyboardInterrupt if how == "SIGINT" else SystemExit
    with pytest.raises(expected) as caught:
        prepare_dataset(["-"], tmp_path / "ds", codec=codec, stdin=_InterruptedStdin(how), chunk_size=1000)
    if how == "SIGTERM":
        assert caught.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_progress_callback(tmp_path):
    _corpus(tmp_path / "c")
    events = []
    meta = prepare_dataset([tmp_path / "c"], tmp_path / "ds", codec="chars", progress=events.append, chunk_size=256)
    stages = [e.stage for e in events]
    assert stages.index("count") < stages.index("encode")
    encode = [e for e in events if e.stage == "encode"]
    assert encode[-1].done == encode[-1].total == meta["input_bytes"] and len(encode) > 5
    assert all(a.done <= b.done for a, b in zip(encode, encode[1:]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 1.0}, r"^val_fraction 1\.0 is not in \[0, 1\)"),
        ({"val_fraction": -0.1}, r"^val_fraction -0\.1 is not in \[0, 1\)"),
        ({"val_fraction": float("nan")}, r"^val_fraction nan is not in \[0, 1\)"),
        ({"val_fraction": "lots"}, r"^val_fraction 'lots' is not a number"),
        ({"codec": "words"}, r"^codec 'words' is not one of"),
        ({"errors": "ignore"}, r"^errors 'ignore' is not one of"),
        ({"vocab_size": 200}, r"^vocab_size 200 is too small for the bytes codec"),
        ({"codec": "chars", "vocab_size": 5}, r"^vocab_size 5 is too small for the chars codec"),
        ({"codec": "sentencepiece", "vocab_size": 200}, r"^vocab_size 200 is too small for the sentencepiece codec"),
        ({"codec": "sentencepiece", "sp_model_type": "word"}, r"^sp_model_type 'word' is not one of"),
        ({"vocab_size": "many"}, r"^vocab_size 'many' is not an integer"),
        ({"vocab_size": 300.5}, r"^vocab_size 300\.5 is not an integer"),
    ],
)
def test_bad_options(tmp_path, kwargs, message):
    """A library call's error names the argument as the caller wrote it, and carries it as its key."""
    (tmp_path / "a.txt").write_bytes(b"some text")
    with pytest.raises(OmUserError, match=message) as info:
        prepare_dataset([tmp_path / "a.txt"], tmp_path / "ds", **kwargs)
    assert info.value.keys == (message[1:].split(" ")[0],) and "--" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_bad_inputs(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "empty2.txt").write_bytes(b"")
    (tmp_path / "only_hidden").mkdir()
    (tmp_path / "only_hidden/.x").write_bytes(b"x")
    _tree(tmp_path / "py", {"a.py": b"print()"})
    cases = [
        ([tmp_path / "missing.txt"], {}, rf"^{tmp_path}/missing\.txt: no such file or folder$"),
        ([tmp_path / "empty.txt", tmp_path / "empty2.txt"], {}, r"^no input bytes: every input is empty \("),
        (["-"], {"stdin": io.BytesIO(b"")}, r"^no input bytes: every input is empty \(-\)$"),
        (["-"], {"stdin": io.BytesIO(b""), "codec": "chars"}, r"^no input bytes"),
        ([tmp_path / "only_hidden"], {}, rf"^{tmp_path}/only_hidden: no file in this folder$"),
        ([tmp_path / "py"], {"include": ["*.txt"]}, r"py: no file in this folder matches include \*\.txt$"),
        (["-", "-"], {}, r"stdin \('-'\) is given more than once"),
        ([], {}, r"^no inputs given"),
    ]
    for inputs, kwargs, message in cases:
        with pytest.raises(OmUserError, match=message):
            prepare_dataset(inputs, out, **kwargs)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # Unreadable: permission bits (meaningless as root) and a failing read.
    (tmp_path / "secret.txt").write_bytes(b"secret")
    monkeypatch.setattr(sources_module.os, "access", lambda path, mode: not str(path).endswith("secret.txt"))
    with pytest.raises(OmUserError, match=rf"^{tmp_path}/secret\.txt: cannot read \(permission denied\)$"):
        prepare_dataset([tmp_path / "py", tmp_path / "secret.txt"], out)
    monkeypatch.undo()

    real_open = os.open

    def failing_open(path, *args, **kwargs):
        if str(path).endswith("secret.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(sources_module.os, "open", failing_open)
    with pytest.raises(OmUserError, match=rf"^{tmp_path}/secret\.txt: cannot read \(Permission denied\)$"):
        prepare_dataset([tmp_path / "py", tmp_path / "secret.txt"], out)
    monkeypatch.undo()
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_by_permissions(tmp_path):
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (tmp_path / "secret.txt").chmod(0)
    with pytest.raises(OmUserError, match="secret.txt: cannot read"):
        prepare_dataset([tmp_path / "secret.txt"], tmp_path / "ds")


def test_open_dataset_errors(tmp_path):
    with pytest.raises(OmUserError, match=rf"^{tmp_path}/nope: no such dataset folder$"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "a.txt").write_bytes(b"hello world, hello")
    prepare_dataset([tmp_path / "a.txt"], tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    with pytest.raises(OmUserError, match="split 'test' is not one of"):
        ds.split("test")
    (tmp_path / "ds/val.bin").write_bytes(b"\x00")
    with pytest.raises(OmUserError, match=r"val\.bin: holds 1 bytes, meta\.json says 2 bytes \(2 tokens\)"):
        open_dataset(tmp_path / "ds").split("val")
    (tmp_path / "ds/train.docs").write_bytes(b"\x00" * 8)
    with pytest.raises(OmUserError, match=r"train\.docs: holds 8 bytes, meta\.json says 0 document boundaries"):
        open_dataset(tmp_path / "ds").split("train")
    (tmp_path / "ds/train.docs").unlink()
    with pytest.raises(OmUserError, match=r"train\.docs: missing \(the train split's document boundaries\)"):
        open_dataset(tmp_path / "ds").split("train")
    (tmp_path / "ds/train.bin").unlink()
    with pytest.raises(OmUserError, match=r"train\.bin: missing"):
        open_dataset(tmp_path / "ds").split("train")
    (tmp_path / "ds/codec.json").unlink()
    with pytest.raises(OmUserError, match=r"codec\.json: missing"):
        open_dataset(tmp_path / "ds")
    (tmp_path / "ds/meta.json").write_text("{")
    with pytest.raises(OmUserError, match=r"meta\.json: not a valid dataset description"):
        open_dataset(tmp_path / "ds")
    (tmp_path / "ds/meta.json").unlink()
    with pytest.raises(OmUserError, match=r"meta\.json: missing"):
        open_dataset(tmp_path / "ds")
