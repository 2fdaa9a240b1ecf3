"""Input documents: resolve paths, folders and stdin into an ordered list, and read them in chunks."""

from __future__ import annotations

import fnmatch
import io
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from om.errors import OmUserError

STDIN = "-"


@dataclass
class Source:
    """One document. In: where to read it. Out (after reading): its size and sha256.

    `name` is what meta.json records (the path as given or as walked, "-" for stdin); `key` is the
    path inside its input folder (the file name for a file given directly), which decides the
    document's split so that the split does not depend on where the corpus lives. `stream` sources
    (stdin, pipes) have no size until read and cannot be read twice.
    """

    name: str
    key: str
    path: str | None  # None: stdin
    size: int | None
    stream: bool = False
    sha256: str | None = None
    spool: Path | None = None  # a stream copied to disk, for codecs that read their input twice


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk(
    root: Path, include: tuple[str, ...], exclude: tuple[str, ...], skip: set[tuple[int, int]]
) -> list[tuple[str, str, os.stat_result]]:
    """Regular files under `root` as (relative posix path, path, stat), sorted; hidden entries skipped.

    Folders in `skip` (by device and inode) are not entered; linked folders are entered once.
    """
    found: list[tuple[tuple[str, ...], str, os.stat_result]] = []
    seen_dirs = set(skip)
    stack: list[tuple[tuple[str, ...], str]] = [((), str(root))]
    while stack:
        parts, folder = stack.pop()
        identity = _identity(folder)
        if identity is None or identity in seen_dirs:
            continue
        seen_dirs.add(identity)
        try:
            entries = list(os.scandir(folder))
        except OSError as err:
            raise OmUserError(f"{folder}: cannot list folder ({err.strerror or err})") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel_parts = (*parts, entry.name)
            rel = "/".join(rel_parts)
            if exclude and _matches(rel, exclude):
                continue
            try:
                if entry.is_dir():
                    stack.append((rel_parts, entry.path))
                elif entry.is_file() and (not include or _matches(rel, include)):
                    found.append((rel_parts, entry.path, entry.stat()))
            except OSError:
                continue  # a dangling link or an entry that vanished: not a document
    found.sort(key=lambda item: item[0])
    return [("/".join(parts), path, st) for parts, path, st in found]


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def expand_inputs(
    inputs: Iterable[str | os.PathLike],
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    out_dir: Path | None = None,
    read_once: bool = True,
) -> list[list[Source]]:
    """The documents of each INPUT argument, in order; raise OmUserError for anything unusable.

    A file stands for itself, "-" for stdin (at most once), a folder for the files under it:
    walked recursively in sorted order, hidden entries skipped, `include`/`exclude` globs applied to
    each path inside the folder (and to its file name). Files named directly are always taken. The
    output folder (`out_dir`) is never read as input. With `read_once`, a file reached twice (named
    twice, or through a link) is taken the first time only.
    """
    include, exclude = tuple(include), tuple(exclude)
    out_real = out_dir.resolve() if out_dir is not None else None
    out_identity = _identity(out_dir) if out_dir is not None else None
    skip = {out_identity} if out_identity is not None else set()
    groups: list[list[Source]] = []
    seen: set[tuple[int, int]] = set()
    inputs = [str(i) for i in inputs]
    if inputs.count(STDIN) > 1:
        raise OmUserError("stdin ('-') is given more than once")

    def add(group: list[Source], name: str, key: str, path: str, st: os.stat_result) -> None:
        if read_once and (st.st_dev, st.st_ino) in seen:
            return
        if not os.access(path, os.R_OK):
            raise OmUserError(f"{name}: cannot read (permission denied)")
        seen.add((st.st_dev, st.st_ino))
        regular = stat.S_ISREG(st.st_mode)
        group.append(Source(name, key, path, st.st_size if regular else None, stream=not regular))

    for arg in inputs:
        group: list[Source] = []
        groups.append(group)
        if arg == STDIN:
            group.append(Source(STDIN, STDIN, None, None, stream=True))
            continue
        path = Path(arg)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise OmUserError(f"{arg}: no such file or folder") from None
        except OSError as err:
            raise OmUserError(f"{arg}: cannot access ({err.strerror or err})") from None
        if stat.S_ISDIR(st.st_mode):
            if not os.access(path, os.R_OK | os.X_OK):
                raise OmUserError(f"{arg}: cannot read folder (permission denied)")
            files = _walk(path, include, exclude, skip)  # never enters the output folder
            if not files:
                globs = [*(f"include {g}" for g in include), *(f"exclude {g}" for g in exclude)]
                used = tuple(k for k, given in (("include", include), ("exclude", exclude)) if given)
                matches = f" matches {' '.join(globs)}" if globs else ""
                raise OmUserError(f"{arg}: no file in this folder{matches}", key=used)
            prefix = "" if arg in (".", "./") else arg.rstrip("/") + "/"
            for rel, file, file_st in files:
                add(group, prefix + rel, rel, file, file_st)
        else:
            if out_real is not None and _is_within(path.resolve(), out_real):
                raise OmUserError(f"{arg}: input is inside the output folder {out_dir}")
            add(group, arg, path.name, arg, st)
    return groups


def resolve_inputs(
    inputs: Iterable[str | os.PathLike],
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    out_dir: Path | None = None,
) -> list[Source]:
    """The documents of `om prepare`: every input's (see `expand_inputs`) in one list, each file
    once; at least one input must be given."""
    inputs = list(inputs)
    if not inputs:
        raise OmUserError("no inputs given (files, folders, or - for stdin)")
    return [source for group in expand_inputs(inputs, include, exclude, out_dir) for source in group]


def _widen_pipe(f) -> None:
    """Best effort: a 1 MiB pipe buffer instead of 64 KiB means far fewer wake-ups on `cat x | om prepare -`."""
    try:
        import fcntl

        fcntl.fcntl(f.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass


def read_chunks(source: Source, chunk_size: int, stdin: BinaryIO | None = None, start: int = 0) -> Iterator[bytes]:
    """The bytes of a source, `chunk_size` at a time (from byte `start` for files)."""
    where = source.spool or source.path
    try:
        if where is None:
            f = stdin if stdin is not None else sys.stdin.buffer
            _widen_pipe(f)
            while chunk := f.read(chunk_size):
                yield chunk
            return
        fd = os.open(where, os.O_RDONLY)  # plain descriptors: thousands of small files add up
        try:
            if start:
                os.lseek(fd, start, os.SEEK_SET)
            # A small file is read in one call without allocating a whole chunk for it.
            first = chunk_size if source.size is None else min(chunk_size, source.size + 1)
            chunk = os.read(fd, first)
            while chunk:
                yield chunk
                chunk = os.read(fd, chunk_size)
        finally:
            os.close(fd)
    except OSError as err:
        raise OmUserError(f"{source.name}: cannot read ({err.strerror or err})") from None


def read_at(source: Source, start: int, length: int) -> bytes:
    """`length` bytes of a file-backed source from `start` (for sampling)."""
    try:
        with open(source.spool or source.path, "rb") as f:  # type: ignore[arg-type]
            f.seek(start)
            return f.read(length)
    except OSError as err:
        raise OmUserError(f"{source.name}: cannot read ({err.strerror or err})") from None
