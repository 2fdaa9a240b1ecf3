"""The output folder of `om prepare`: refused or replaced as the user asked, written atomically.

The folder is built in a hidden temporary folder next to it and renamed into place at the end, with
`om.atomic` (temporary names ``.NAME.om-prepare-PID-HOST-*.tmp``, every file fsynced, modes from
the umask).
This module adds the policy of a dataset folder: a non-empty folder is replaced only with --force
(never one holding the current folder), and the temporary folder is removed on any exception, on
Ctrl-C and on SIGTERM/SIGHUP (turned into SystemExit while the folder is open). A run killed with
SIGKILL leaves it behind; the next run writing the same folder removes it once its process is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

from om.atomic import commit_folder, new_temp_folder, remove_stale, seal_folder
from om.errors import OmUserError

TAG = "prepare"
_CATCH = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


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
        remove_stale(parent, self.final.name)
        if threading.current_thread() is threading.main_thread():
            for sig in _CATCH:
                self._handlers[sig] = signal.signal(sig, _raise_exit)
        try:
            self.path = new_temp_folder(self.final, TAG)
        except OSError as err:
            self._restore()
            raise OmUserError(f"{parent}: cannot write here ({err.strerror or err})") from None
        return self

    def commit(self) -> None:
        """Move the finished folder into place (replacing the old one if forced)."""
        assert self.path is not None
        seal_folder(self.path)  # fsync before blocking signals: it can take a while for a big dataset
        blocked = {signal.SIGINT, *_CATCH}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            commit_folder(self.path, self.final, sealed=True)
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
