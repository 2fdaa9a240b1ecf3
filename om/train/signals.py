"""SIGINT/SIGTERM during training: remember the signal, let the current step finish, then stop."""

from __future__ import annotations

import signal
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set `.received` (the signal number) instead of
    killing the process; a second SIGINT raises KeyboardInterrupt at once (unless
    `abort_on_repeat=False`). Handlers are restored on exit. Outside the main thread it does
    nothing (signals can only be handled there)."""

    def __init__(self, abort_on_repeat: bool = True) -> None:
        self.received: int | None = None
        self.abort_on_repeat = abort_on_repeat
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.abort_on_repeat and self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.received, 128 + int(self.received or 0))

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
