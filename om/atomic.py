"""Atomic writes of files and folders: a reader sees the old version or the new one, never a half.

The new version is written under a hidden temporary name next to the target (same folder, so the
rename is atomic), every file is fsynced, the temporary is renamed into place and the folder holding
it is fsynced, so the rename survives a power loss. A target being replaced is first renamed away to
a hidden name and deleted after the new version is in place.

Temporary names say what and who made them: ``.NAME.om-TAG-PID-HOST-RANDOM.tmp`` (being written)
and ``.NAME.om-TAG-PID-HOST-old-RANDOM.tmp`` (being replaced or deleted), NAME being the target's
name and TAG the kind of writer (``prepare`` for datasets, ``checkpoint``, ``cache``, ``write`` for
small files). A writer killed outright (SIGKILL, the machine going down) leaves them behind;
`remove_stale` deletes those of writers on this host whose process is gone.

Modes follow the user's umask, as with any other tool: files 0666 & ~umask, folders 0777 & ~umask
(not the 0600/0700 of `tempfile.mkstemp`/`mkdtemp`). Writers that make their files private anyway
(safetensors writes 0600) are corrected: the temporary is created here, so the mode the system gave
it is the umask's, and what was written under it is given that mode before the rename.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

WRITE = "write"  # the default tag
# NAME may hold dots and dashes; TAG, PID, HOST (see `host_tag`) and RANDOM hold neither.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.om-(?P<tag>[a-z]+)-(?P<pid>\d+)-(?P<host>\w+)-(?P<old>old-)?[0-9a-f]+\.tmp$")


class TempName(NamedTuple):
    """The parts of a temporary name: its target's name, the writer's tag, pid and host, and whether
    it holds an old version (being replaced or deleted) rather than a new one."""

    target: str
    tag: str
    pid: int
    host: str
    old: bool


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def host_tag() -> str:
    """This host's name, reduced to a safe file-name part (marks temporary names with their writer)."""
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def temp_name(target: str, tag: str = WRITE, old: bool = False) -> str:
    """A new hidden name, next to `target`, for a new (or, with `old`, an old) version of it written
    by this process; `tag` (lowercase letters) names the kind of writer."""
    return f".{target}.om-{tag}-{os.getpid()}-{host_tag()}-{'old-' if old else ''}{secrets.token_hex(4)}.tmp"


def parse_temp_name(name: str) -> TempName | None:
    """The parts of a `temp_name`, or None for other names."""
    m = _TEMP_NAME.match(name)
    if m is None:
        return None
    return TempName(m["target"], m["tag"], int(m["pid"]), m["host"], m["old"] is not None)


def remove_stale(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Delete the temporaries in `folder` (of `target` only, if given) left by writers on this host
    whose process is gone; return what was removed."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    host = host_tag()
    removed = []
    for entry in entries:
        parsed = parse_temp_name(entry.name)
        if parsed is None or (target is not None and parsed.target != target) or parsed.host != host or pid_alive(parsed.pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# fsync --------------------------------------------------------------------------------------------
def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's contents to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a folder's entries (a rename into it) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def _set_mode(path: str | os.PathLike, mode: int) -> None:
    """Set the permission bits of `path` to `mode`, keeping setuid/setgid/sticky (a setgid parent's)."""
    current = os.stat(path).st_mode & 0o7777
    if current & 0o777 != mode:
        os.chmod(path, (current & ~0o777) | mode)


def seal_folder(folder: str | os.PathLike) -> None:
    """Give everything under the temporary `folder` (made by `new_temp_folder`, so its own mode is
    the umask's) the umask's modes, then fsync every file and every folder, deepest first."""
    folder_mode = os.stat(folder).st_mode & 0o777
    folders = []
    for root, dirs, files in os.walk(folder):
        folders.append(root)
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                _set_mode(os.path.join(root, name), folder_mode)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                _set_mode(path, folder_mode & 0o666)
                fsync_file(path)
    for root in reversed(folders):
        fsync_folder(root)


# Files --------------------------------------------------------------------------------------------
def _new_temp_file(final: Path, tag: str) -> Path:
    while True:
        tmp = final.parent / temp_name(final.name, tag)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def writing_file(final: str | os.PathLike, tag: str = WRITE) -> Iterator[Path]:
    """Yield a new empty temporary file next to `final` to write (by path, e.g. for safetensors).
    On a normal exit it gets the umask's mode, is fsynced and renamed to `final`; on an exception
    it is deleted."""
    final = Path(final)
    tmp = _new_temp_file(final, tag)
    mode = os.stat(tmp).st_mode & 0o777  # what the umask gives a new file
    try:
        yield tmp
        _set_mode(tmp, mode)  # the writer may have replaced the file with a private one
        fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(final.parent)


def write_file(final: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `final` atomically; return the path."""
    with writing_file(final) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(final)


# Folders ------------------------------------------------------------------------------------------
def new_temp_folder(final: str | os.PathLike, tag: str = WRITE) -> Path:
    """A new empty hidden folder next to `final` (its parent is created if needed)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = final.parent / temp_name(final.name, tag)
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def commit_folder(tmp: str | os.PathLike, final: str | os.PathLike, sealed: bool = False) -> Path:
    """`seal_folder` the temporary folder `tmp` (unless the caller did: sealed=True) and rename it
    to `final`, replacing what is there (renamed away first, then deleted). Returns `final`."""
    tmp, final = Path(tmp), Path(final)
    if not sealed:
        seal_folder(tmp)
    if os.path.lexists(final):
        parsed = parse_temp_name(tmp.name)
        old = final.parent / temp_name(final.name, parsed.tag if parsed else WRITE, old=True)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_folder(final.parent)
    return final


@contextmanager
def writing_folder(final: str | os.PathLike, tag: str = WRITE) -> Iterator[Path]:
    """Yield a new temporary folder next to `final` to fill. On a normal exit it replaces `final`
    (`commit_folder`); on an exception it is deleted and `final` is left as it was."""
    tmp = new_temp_folder(final, tag)
    try:
        yield tmp
        commit_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_folder(folder: str | os.PathLike, tag: str = WRITE) -> bool:
    """Delete `folder`, renaming it to a hidden name first, so a kill midway never leaves a
    half-deleted folder under its own name. False if it could not be renamed (nothing deleted)."""
    folder = Path(folder)
    trash = folder.parent / temp_name(folder.name, tag, old=True)
    try:
        os.replace(folder, trash)
    except OSError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def write_failure_reason(err: BaseException) -> str | None:
    """The reason text of a failed write (full disk, I/O error), or None for other exceptions."""
    if isinstance(err, OSError):
        return err.strerror or " ".join(str(err).split())
    from safetensors import SafetensorError

    if isinstance(err, SafetensorError):  # the Rust writer wraps the OS error in its message
        m = re.search(r"I/O error: (.*?) \(os error \d+\)", str(err))
        return m.group(1) if m else None
    return None


@contextmanager
def failed_write_is_run_error(message: Callable[[str], str]) -> Iterator[None]:
    """Within the block, a failed write (full disk, I/O error) becomes one `OmRunError` line,
    `message(reason)`; any other exception passes unchanged."""
    from om.errors import OmRunError

    try:
        yield
    except BaseException as err:
        reason = write_failure_reason(err)
        if reason is not None:
            raise OmRunError(message(reason)) from None
        raise
