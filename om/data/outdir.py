"""Write a folder atomically: build it in a hidden temporary folder next to it, rename at the end.

The temporary folder is `.NAME.om-prepare-PID-HOST-XXXX.tmp` in the same parent (same filesystem, so
the rename is atomic). It is removed on any exception, on Ctrl-C and on SIGTERM/SIGHUP (turned into
SystemExit while the folder is open). A run killed with SIGKILL leaves it behind; the next run
writing next to it removes temporary folders whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import secrets
import threading
from pathlib import Path

from om.errors import OmUserError

_CATCH = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


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


def _remove_stale(parent: Path, name: str) -> None:
    """Remove temporary folders left next to `name` by runs on this host whose process is gone."""
    prefix = f".{name}.om-prepare-"
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        pid, _, rest = entry.name[len(prefix) :].partition("-")
        if pid.isdigit() and rest.startswith(host_tag() + "-") and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _make_temp(parent: Path, name: str, tag: str = "") -> Path:
    """A new hidden folder next to the target (mode from the umask, unlike tempfile.mkdtemp)."""
    while True:
        path = parent / f".{name}.om-prepare-{os.getpid()}-{host_tag()}-{tag}{secrets.token_hex(4)}.tmp"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


class AtomicFolder:
    """Context manager. In: the final folder path and whether to replace a non-empty one.

    `path` is the temporary folder to fill; `commit()` moves it into place. Leaving the `with`
    block without `commit()` (an exception, a signal) deletes it.
    """

    def __init__(self, final: str | os.PathLike, force: bool = False, inputs: list[Path] = ()) -> None:
        self.final = Path(final)
        self.force = force
        if self.final.is_symlink():
            raise OmUserError(f"{self.final}: is a symbolic link (give the folder it points to)")
        if self.final.exists():
            if not self.final.is_dir():
                raise OmUserError(f"{self.final}: exists and is not a folder")
            if any(self.final.iterdir()):
                if not force:
                    raise OmUserError(f"{self.final}: folder exists and is not empty (--force replaces it)")
                real = self.final.resolve()
                if Path.cwd().resolve() == real or real in Path.cwd().resolve().parents:
                    raise OmUserError(f"{self.final}: refusing to replace a folder that contains the current folder")
        self.path: Path | None = None
        self._handlers: dict = {}

    def __enter__(self) -> "AtomicFolder":
        parent = self.final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OmUserError(f"{parent}: cannot create folder ({err.strerror or err})") from None
        _remove_stale(parent, self.final.name)
        if threading.current_thread() is threading.main_thread():
            for sig in _CATCH:
                self._handlers[sig] = signal.signal(sig, _raise_exit)
        try:
            self.path = _make_temp(parent, self.final.name)
        except OSError as err:
            self._restore()
            raise OmUserError(f"{parent}: cannot write here ({err.strerror or err})") from None
        return self

    def commit(self) -> None:
        """Move the finished folder into place (replacing the old one if forced)."""
        assert self.path is not None
        blocked = {signal.SIGINT, *_CATCH}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            if self.final.is_dir() and any(self.final.iterdir()):
                trash = _make_temp(self.final.parent, self.final.name, "old-")
                os.replace(self.final, trash / "old")
                os.replace(self.path, self.final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(self.path, self.final)  # replaces an empty folder atomically
            self.path = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _restore(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers = {}

    def __exit__(self, *exc) -> None:
        try:
            if self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)
                self.path = None
        finally:
            self._restore()
