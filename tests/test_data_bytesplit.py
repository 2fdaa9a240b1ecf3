"""The compact bytes layout (format 2): raw bytes plus document boundaries, read as the ids of format 1.

Every consumer of a bytes split (training batches, `om eval` on the val split, validation slices,
byte counts) must see exactly what it saw when the split was a uint16 array with doc_sep inline;
the reference here is that dense array, built in the test or written as a format-1 folder.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from om.data import BytesCodec, open_dataset, prepare_dataset
from om.data.bytesplit import BytesSplit
from om.evaluate import TokenReader, _id_chunks, validation_slice
from om.train import Trainer
from om.train.batches import BatchSampler
from om.train.validation import tokens_for_bytes
from tests.test_eval_support import run_cli
from tests.test_train_loop import TIMING, _metrics, _recipe
from tests.train_fixtures import JSON_SRC, isolated_cache  # noqa: F401 (fixture)

SEP = 256


def _dense(docs: list[bytes]) -> np.ndarray:
    """The format-1 ids of documents: their bytes as uint16, joined by doc_sep."""
    parts: list[np.ndarray] = []
    for i, doc in enumerate(docs):
        if i:
            parts.append(np.array([SEP], dtype=np.uint16))
        parts.append(np.frombuffer(doc, dtype=np.uint8).astype(np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def _split_of(tmp_path, dense: np.ndarray, name="s") -> BytesSplit:
    """A BytesSplit written from any dense id array (separators anywhere, adjacent ones included)."""
    seps = np.flatnonzero(dense == SEP)
    offsets = seps - np.arange(seps.size)
    path = tmp_path / f"{name}.bin"
    dense[dense != SEP].astype(np.uint8).tofile(path)
    return BytesSplit(path, offsets, int((dense != SEP).sum()))


def _edges(dense: np.ndarray) -> list[int]:
    seps = np.flatnonzero(dense == SEP).tolist()
    return sorted({0, len(dense), *seps, *[s + 1 for s in seps], *[s - 1 for s in seps if s]})


def _check_slices(split: BytesSplit, dense: np.ndarray, rng: np.random.Generator, n: int = 300) -> None:
    assert len(split) == len(dense) and split.shape == dense.shape and split.ndim == 1 and split.dtype == np.uint16
    edges = _edges(dense)
    pairs = [(a, b) for a in edges for b in edges] if len(edges) < 30 else []
    pairs += [tuple(sorted(rng.integers(0, len(dense) + 1, size=2).tolist())) for _ in range(n)]
    pairs += [(0, 0), (0, len(dense)), (len(dense), len(dense)), (3, 1), (-5, None), (None, -3), (-10**9, 10**9)]
    for a, b in pairs:
        got, want = split[a:b], dense[a:b]
        assert isinstance(got, np.ndarray) and got.dtype == np.uint16 and np.array_equal(got, want), (a, b)
        assert split.view(a, b).byte_count() == int((want < SEP).sum()) == BytesCodec().byte_count(split.view(a, b))
        assert np.array_equal(np.asarray(split.view(a, b)), want) and np.array_equal(split.view(a, b)[1:-1], want[1:-1])
    for step in (2, 3, -1, -4):
        assert np.array_equal(split[1:-1:step], dense[1:-1:step]) and np.array_equal(split[::step], dense[::step])
    for i in [0, len(dense) - 1, -1, -len(dense), *edges[:20]]:
        if -len(dense) <= i < len(dense):
            assert split[i] == dense[i]
    with pytest.raises(IndexError):
        split[len(dense)]
    assert np.array_equal(np.asarray(split), dense) and np.array_equal(np.asarray(split, dtype=np.int64), dense)
    assert list(split) == dense.tolist()


def _check_chunks(split: BytesSplit, dense: np.ndarray, rng: np.random.Generator) -> None:
    for step in (1, 2, 7, 64, 1000, 10**6):
        chunks = list(split.chunks(step))
        assert all(len(c) <= step for c in chunks) and all(c.dtype == np.uint16 for c in chunks)
        assert np.array_equal(np.concatenate(chunks) if chunks else np.zeros(0, np.uint16), dense)
        a, b = sorted(rng.integers(0, len(dense) + 1, size=2).tolist())
        pieces = list(_id_chunks(split.view(a, b), step))
        assert np.array_equal(np.concatenate(pieces) if pieces else dense[:0], dense[a:b])


@settings(max_examples=80, deadline=None)
@given(docs=st.lists(st.binary(min_size=0, max_size=40), min_size=0, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_slices_equal_the_dense_array(tmp_path_factory, docs, seed):
    """Any separators (at the ends, adjacent: empty documents) and every kind of slice and read."""
    dense = _dense(docs)
    split = _split_of(tmp_path_factory.mktemp("split"), dense)
    rng = np.random.default_rng(seed)
    _check_slices(split, dense, rng, n=40)
    _check_chunks(split, dense, rng)


def test_slices_of_a_prepared_split_equal_the_old_ids(tmp_path):
    """A prepared corpus, many documents (some one byte long, some binary), against the format-1 ids."""
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = {}
    for i in range(200):
        size = int(rng.choice([1, 2, 5, 100, 3000]))
        docs[f"f{i:03d}.txt"] = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
    for name, data in docs.items():
        (corpus / name).write_bytes(data)
    meta = prepare_dataset([corpus], tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    assert meta["split"]["method"] == "documents"
    for name in ("train", "val"):
        order = [s["path"] for s in meta["sources"] if s["split"] == name]
        dense = _dense([docs[p.rsplit("/", 1)[1]] for p in order])
        split = ds.split(name)
        assert isinstance(split, BytesSplit) and ds.num_tokens(name) == len(dense)
        assert ds.num_bytes(name) == ds.codec.byte_count(split) == ds.codec.byte_count(dense)
        _check_slices(split, dense, rng)
        _check_chunks(split, dense, rng)
        for n in (0, 1, 50, 777, ds.num_bytes(name) - 1, ds.num_bytes(name), ds.num_bytes(name) + 5):
            assert tokens_for_bytes(ds.codec, split, n) == tokens_for_bytes(ds.codec, dense, n)


@pytest.mark.parametrize("how", ["stdin+file", "one file", "two small files"])
def test_tail_split_equals_the_old_cut(tmp_path, how):
    """The stream split cuts the bytes where the ids layout cut the ids; a doc_sep at the cut is dropped."""
    import io

    a, b, c = b"A" * 1000, bytes(range(256)) * 3, b"tail\n" * 40
    (tmp_path / "b").write_bytes(b)
    (tmp_path / "c").write_bytes(c)
    if how == "stdin+file":
        inputs, docs, kwargs = ["-", tmp_path / "b", tmp_path / "c"], [a, b, c], {"stdin": io.BytesIO(a)}
    elif how == "one file":
        inputs, docs, kwargs = [tmp_path / "b"], [b], {}
    else:
        inputs, docs, kwargs = [tmp_path / "b", tmp_path / "c"], [b, c], {}
    tails = 0
    for fraction in (0.05, 0.1, 0.25, len(c) / sum(map(len, docs)), 0.5, 0.9):
        out = tmp_path / f"ds-{fraction}"
        meta = prepare_dataset(inputs, out, val_fraction=fraction, force=True, **kwargs)
        if "stdin" in kwargs:
            kwargs["stdin"].seek(0)
        if meta["split"]["method"] != "tail":  # two files may split as whole documents
            continue
        tails += 1
        cut = meta["split"]["cut_byte"]
        whole = b"".join(docs)
        # The old ids: the dense array cut after `cut` bytes, a separator at the cut on neither side.
        dense = _dense(docs)
        position = int(np.flatnonzero(dense < SEP)[cut - 1]) + 1 if cut else 0
        train, val = dense[:position], dense[position:]
        if len(train) and train[-1] == SEP:
            train = train[:-1]
        if len(val) and val[0] == SEP:
            val = val[1:]
        ds = open_dataset(out)
        assert np.array_equal(np.asarray(ds.split("train")), train) and np.array_equal(np.asarray(ds.split("val")), val)
        assert ds.codec.decode(ds.split("train")) + ds.codec.decode(ds.split("val")) == whole
        for name, ids in (("train", train), ("val", val)):
            info = meta["splits"][name]
            assert info["tokens"] == len(ids) and info["bytes"] == int((ids < SEP).sum())
            assert info["separators"] == int((ids == SEP).sum()) and info["documents"] == (info["separators"] + 1 if len(ids) else 0)
    assert tails >= 2


def test_a_bytes_dataset_takes_no_more_disk_than_its_corpus(tmp_path):
    """train.bin + val.bin hold the corpus byte for byte; the boundaries cost 8 bytes per document."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(1)
    total = 0
    for i in range(300):
        data = rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8).tobytes()
        (corpus / f"doc{i:03d}").write_bytes(data)
        total += len(data)
    meta = prepare_dataset([corpus], tmp_path / "ds")
    out = tmp_path / "ds"
    bins = sum((out / f).stat().st_size for f in ("train.bin", "val.bin"))
    docs = sum((out / f).stat().st_size for f in ("train.docs", "val.docs"))
    assert bins == total == meta["input_bytes"]
    assert docs == 8 * (300 - 2) and docs <= 8 * len(meta["sources"])
    assert meta["layout"] == "bytes" and meta["dtype"] == "uint8" and meta["format_version"] == 2


def _as_version_1(new, old):
    """The folder format 1 wrote for the same data: uint16 ids with doc_sep inline, no boundary files."""
    shutil.copytree(new, old)
    ds = open_dataset(new)
    meta = json.loads((new / "meta.json").read_text())
    meta.update(format_version=1, dtype="uint16")
    del meta["layout"]
    for name in ("train", "val"):
        np.asarray(ds.split(name)).astype("<u2").tofile(old / f"{name}.bin")
        (old / f"{name}.docs").unlink()
        del meta["splits"][name]["boundaries"], meta["splits"][name]["separators"]
    (old / "meta.json").write_text(json.dumps(meta, indent=2))
    return old


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    """The json package as a format-2 bytes dataset and the same data as a format-1 folder."""
    root = tmp_path_factory.mktemp("formats")
    prepare_dataset([JSON_SRC], root / "v2", exclude=("__pycache__",))
    return root / "v2", _as_version_1(root / "v2", root / "v1")


def test_a_version_1_folder_still_opens(both_formats):
    new, old = both_formats
    ds1, ds2 = open_dataset(old), open_dataset(new)
    assert ds1.meta["format_version"] == 1 and ds2.meta["format_version"] == 2
    for name in ("train", "val"):
        s1, s2 = ds1.split(name), ds2.split(name)
        assert isinstance(s1, np.memmap) and s1.dtype == np.uint16 and isinstance(s2, BytesSplit)
        assert np.array_equal(s1, np.asarray(s2)) and ds1.num_tokens(name) == ds2.num_tokens(name)
        assert ds1.num_bytes(name) == ds2.num_bytes(name) == ds1.codec.byte_count(s1) == ds2.codec.byte_count(s2)
    # The old folder takes twice the disk (plus the separators) of the new one.
    size = {d: sum((d / f).stat().st_size for f in ("train.bin", "val.bin")) for d in (old, new)}
    assert size[old] == 2 * ds1.num_tokens("train") + 2 * ds1.num_tokens("val") > 2 * size[new] - 1


def test_batches_and_validation_inputs_are_the_same_in_both_formats(both_formats):
    new, old = both_formats
    ds1, ds2 = open_dataset(old), open_dataset(new)
    for mode in ("reset", "carry"):
        s1 = BatchSampler(ds1.split("train"), 64, 4, 2, seed=3, mode=mode)
        s2 = BatchSampler(ds2.split("train"), 64, 4, 2, seed=3, mode=mode)
        assert s1.span == s2.span
        for step in range(40):
            for micro in range(2):
                b1, b2 = s1.batch(step, micro), s2.batch(step, micro)
                assert b1.inputs.equal(b2.inputs) and b1.targets.equal(b2.targets)
                assert np.array_equal(b1.starts, b2.starts) and np.array_equal(b1.reset, b2.reset)
    v1, v2 = ds1.split("val"), ds2.split("val")
    for n in (1, 500, 4096, 10**9):
        assert tokens_for_bytes(ds1.codec, v1, n) == tokens_for_bytes(ds2.codec, v2, n)
    for tokens, streams in ((None, 1), (None, 3), (2048, 4), (777, 1)):
        a, b = validation_slice(v1, "val", tokens, streams), validation_slice(v2, "val", tokens, streams)
        assert [s.name for s in a] == [s.name for s in b] and [s.size for s in a] == [s.size for s in b]
        for x, y in zip(a, b):
            r1, r2 = TokenReader(x, ds1.codec, chunk_bytes=1000), TokenReader(y, ds2.codec, chunk_bytes=1000)
            c1, c2 = list(r1), list(r2)
            assert [len(c) for c in c1] == [len(c) for c in c2]
            assert all(np.array_equal(p, q) and p.dtype == q.dtype for p, q in zip(c1, c2))
            assert (r1.bytes, r1.documents, r1.words) == (r2.bytes, r2.documents, r2.words)


def test_training_and_om_eval_give_the_same_figures_in_both_formats(tmp_path, both_formats):
    new, old = both_formats
    settings_ = dict(max_steps=6, log_every=1, eval_every=3, checkpoint_every=6, eval_bytes=3000, eval_batch=2)
    runs = {}
    for label, folder in (("v1", old), ("v2", new)):
        result = Trainer(_recipe(folder, **settings_), tmp_path / label).run()
        runs[label] = (result.checkpoint, _metrics(tmp_path / label))
    assert runs["v1"][1] == runs["v2"][1] and any(m["event"] == "eval" for m in runs["v2"][1])
    reports = {}
    for label, (ckpt, _) in runs.items():
        out = run_cli(["eval", ckpt, "--json", "--batch-size", 2])
        assert out.exit_code == 0, out.stderr
        report = json.loads(out.stdout)
        for key in ("seconds", "bytes_per_second", "peak_rss_mb", "checkpoint", *TIMING):
            report.pop(key, None)
        for row in report["inputs"]:
            row["name"] = row["name"].replace(str(old), "DATA").replace(str(new), "DATA")
        reports[label] = report
    assert reports["v1"] == reports["v2"] and reports["v2"]["bytes"] == open_dataset(new).num_bytes("val")


def test_evaluation_reads_a_bytes_split_with_plain_file_reads(both_formats):
    """`om eval`'s sources are views of the split, read by `_id_chunks` without mapping the file
    (mapped pages would count the whole split in resident memory)."""
    new, _ = both_formats
    ds = open_dataset(new)
    val = ds.split("val")
    sources = validation_slice(val, "val", None, 3)
    assert all(isinstance(s.ids, BytesSplit) for s in sources)
    readers = [TokenReader(s, ds.codec, chunk_bytes=4096) for s in sources]
    assert sum(sum(len(c) for c in r) for r in readers) == len(val) == ds.num_tokens("val")
    assert sum(r.bytes for r in readers) == ds.num_bytes("val")
    assert val._bytes is None and all(s.ids._bytes is None for s in sources)
    assert tokens_for_bytes(ds.codec, val, 1000) >= 1000 and val._bytes is None  # counted from the boundaries
