"""Hostile inputs to `om prepare`: empty files, files that change or vanish while read, folders
that cannot be read, symlink loops and file names that are not UTF-8."""

from __future__ import annotations

import json
import os
import sys

import pytest

import om.data.prepare as prepare_module
from om.data import open_dataset
from tests.reliability.hostile_tools import assert_no_traceback, assert_one_line_error, om

TEXT = b"A document that is read exactly once.\n" * 300


def prepared(out):
    """The prepared folder holds exactly what the run read; no temporary folder is left."""
    ds = open_dataset(out)
    data = ds.codec.decode(ds.split("train")) + ds.codec.decode(ds.split("val"))
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    return ds, data


def nothing_written(out) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if ".om-prepare-" in p.name] == []


# Empty input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["bytes", "chars", "sentencepiece"])
def test_empty_files(tmp_path, codec):
    (tmp_path / "empty").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "empty" / name).write_bytes(b"")
    out = tmp_path / "ds"
    result = om("prepare", str(tmp_path / "empty"), "-o", str(out), "--codec", codec, "-q")
    assert_one_line_error(result, "prepare", "no input bytes: every input is empty")
    nothing_written(out)
    result = om("prepare", "-", "-o", str(out), "--codec", codec, "-q", input=b"")
    assert_one_line_error(result, "prepare", "no input bytes")
    nothing_written(out)


def test_empty_folder(tmp_path):
    (tmp_path / "nothing").mkdir()
    assert_one_line_error(om("prepare", str(tmp_path / "nothing"), "-o", str(tmp_path / "ds")), "prepare", "no file in this folder")
    nothing_written(tmp_path / "ds")


# Files that change or vanish while being read ---------------------------------------------------------
def _instrument(monkeypatch, after_chunks: int, action):
    """Run `action(path)` on a file source after it has yielded `after_chunks` chunks (0: before
    it is opened), so the race is the same on every run; chunks are 4 KiB."""
    real = prepare_module.read_chunks
    monkeypatch.setitem(prepare_module.CHUNK_SIZES, "bytes", 4096)
    monkeypatch.setitem(prepare_module.CHUNK_SIZES, "chars", 4096)

    def read_chunks(source, chunk_size, stdin=None, start=0):
        if source.path is None:
            yield from real(source, chunk_size, stdin, start)
            return
        if after_chunks == 0:
            action(source.path)
        for i, chunk in enumerate(real(source, chunk_size, stdin, start), 1):
            yield chunk
            if i == after_chunks:
                action(source.path)

    monkeypatch.setattr(prepare_module, "read_chunks", read_chunks)


@pytest.mark.parametrize("after_chunks", [0, 1])
@pytest.mark.parametrize("codec", ["bytes", "chars"])
def test_file_that_shrinks_while_read(tmp_path, monkeypatch, after_chunks, codec):
    src = tmp_path / "shrinking.txt"
    src.write_bytes(TEXT)
    _instrument(monkeypatch, after_chunks, lambda path: os.truncate(path, 5000))
    out = tmp_path / "ds"
    result = om("prepare", str(src), "-o", str(out), "--codec", codec, "-q")
    assert_one_line_error(result, "prepare", "shrinking.txt: the file shrank while being read", f"{len(TEXT):,} bytes when listed")
    nothing_written(out)


def test_file_that_grows_while_read_is_not_read_forever(tmp_path, monkeypatch):
    src = tmp_path / "growing.log"
    src.write_bytes(TEXT)

    def grow(path):
        with open(path, "ab") as f:
            f.write(b"more\n" * 10_000)

    _instrument(monkeypatch, 1, grow)
    out = tmp_path / "ds"
    assert_one_line_error(om("prepare", str(src), "-o", str(out), "-q"), "prepare", "growing.log: the file grew while being read")
    nothing_written(out)


def test_file_that_vanishes_before_it_is_read(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_bytes(TEXT)
    (tmp_path / "corpus" / "b.txt").write_bytes(TEXT)
    _instrument(monkeypatch, 0, lambda path: os.unlink(path) if path.endswith("b.txt") else None)
    out = tmp_path / "ds"
    result = om("prepare", str(tmp_path / "corpus"), "-o", str(out), "-q")
    assert_one_line_error(result, "prepare", "b.txt: cannot read (No such file or directory)")
    nothing_written(out)


def test_file_removed_while_open_is_read_whole(tmp_path, monkeypatch):
    """Removing an open file does not take its bytes away (POSIX): the run completes with them."""
    src = tmp_path / "removed.txt"
    src.write_bytes(TEXT)
    _instrument(monkeypatch, 1, os.unlink)
    out = tmp_path / "ds"
    result = om("prepare", str(src), "-o", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    assert prepared(out)[1] == TEXT and not src.exists()


# Permissions ------------------------------------------------------------------------------------------
def _deny(monkeypatch, locked):
    """Make `locked` unreadable: chmod 000, or (as root, who ignores permissions) the error the
    kernel gives other users, raised where the folder is listed or the file opened."""
    if os.geteuid() != 0:
        os.chmod(locked, 0)
        return lambda: os.chmod(locked, 0o755)
    real_scandir, real_open, real_access = os.scandir, os.open, os.access
    locked_s = str(locked)

    def scandir(path="."):
        if os.fspath(path) == locked_s:
            raise PermissionError(13, "Permission denied", locked_s)
        return real_scandir(path)

    def os_open(path, flags, *args, **kwargs):
        if os.fspath(path) == locked_s:
            raise PermissionError(13, "Permission denied", locked_s)
        return real_open(path, flags, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return False if os.fspath(path) == locked_s else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "access", access)
    return lambda: None


def test_folder_without_read_permission(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    (corpus / "locked").mkdir(parents=True)
    (corpus / "ok.txt").write_bytes(TEXT)
    (corpus / "locked" / "secret.txt").write_bytes(TEXT)
    restore = _deny(monkeypatch, corpus / "locked")
    out = tmp_path / "ds"
    try:
        result = om("prepare", str(corpus), "-o", str(out), "-q")
        assert_one_line_error(result, "prepare", "locked: cannot list folder (Permission denied)")
        nothing_written(out)
        result = om("prepare", str(corpus / "locked"), "-o", str(out), "-q")
        assert_one_line_error(result, "prepare", "locked: cannot read folder (permission denied)")
        nothing_written(out)
    finally:
        restore()


def test_file_without_read_permission(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    locked = tmp_path / "corpus" / "locked.txt"
    locked.write_bytes(TEXT)
    restore = _deny(monkeypatch, locked)
    out = tmp_path / "ds"
    try:
        result = om("prepare", str(tmp_path / "corpus"), "-o", str(out), "-q")
        assert_one_line_error(result, "prepare", "locked.txt: cannot read (permission denied)")
        nothing_written(out)
    finally:
        restore()


# Symlink loops ------------------------------------------------------------------------------------------
def test_symlink_loops(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "real.txt").write_bytes(TEXT)
    os.symlink("b", corpus / "a")  # a -> b -> a
    os.symlink("a", corpus / "b")
    os.symlink("..", corpus / "up")  # a folder loop: corpus/up/corpus/up/...
    os.symlink(".", corpus / "self")
    out = tmp_path / "ds"
    result = om("prepare", str(corpus), "-o", str(out), "-q")
    assert_no_traceback(result)
    assert result.exit_code == 0, result.stderr
    ds, data = prepared(out)
    assert data == TEXT  # every loop skipped or entered once: the one real file, read once
    assert [s["path"] for s in ds.meta["sources"]] == [f"{corpus}/real.txt"]
    for loop in ("a", "b"):
        result = om("prepare", str(corpus / loop), "-o", str(tmp_path / "ds2"), "-q")
        assert_one_line_error(result, "prepare", f"{loop}: cannot access (Too many levels of symbolic links)")
        nothing_written(tmp_path / "ds2")


# File names that are not UTF-8 ------------------------------------------------------------------------
def test_file_names_that_are_not_utf8(tmp_path, monkeypatch):
    corpus = os.path.join(os.fsencode(tmp_path), b"corpus")
    os.mkdir(corpus)
    with open(os.path.join(corpus, b"caf\xe9-latin1.txt"), "wb") as f:
        f.write(TEXT)
    with open(os.path.join(corpus, b"plain.txt"), "wb") as f:
        f.write(TEXT)
    out = os.path.join(os.fsencode(tmp_path), b"out-\xff")
    # CliRunner does not set sys.argv; meta.json's command_line comes from it.
    monkeypatch.setattr(sys, "argv", ["om", "prepare", os.fsdecode(corpus), "-o", os.fsdecode(out), "-q"])
    result = om("prepare", corpus, "-o", out, "-q")
    assert_no_traceback(result)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().endswith("out-\\xff")  # printable, not a crash on a non-UTF-8 stdout
    meta = json.loads(open(os.path.join(out, b"meta.json"), "rb").read().decode("utf-8"))  # valid UTF-8 JSON
    assert [s["path"].rsplit("/", 1)[-1] for s in meta["sources"]] == ["caf\\xe9-latin1.txt", "plain.txt"]
    assert meta["command_line"].endswith("/out-\\xff' -q")
    missing = os.path.join(corpus, b"gone-\xfe.txt")
    result = om("prepare", missing, "-o", os.path.join(os.fsencode(tmp_path), b"ds"), "-q")
    assert_one_line_error(result, "prepare", "gone-\\xfe.txt: no such file or folder")
    result = om("prepare", corpus, "-o", out, "-q")  # exists: the error names it readably
    assert_one_line_error(result, "prepare", "out-\\xff: folder exists and is not empty")
