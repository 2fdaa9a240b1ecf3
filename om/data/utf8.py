"""Incremental UTF-8 decoding that never splits a character and names the offset of bad bytes."""

from __future__ import annotations

import codecs

from om.errors import OmUserError

ERRORS = ("strict", "replace")


def check_errors(errors: str) -> str:
    """`errors` if it is "strict" or "replace", else an `OmUserError` about the `errors` argument."""
    if errors not in ERRORS:
        raise OmUserError(f"errors {errors!r} is not one of: {', '.join(ERRORS)}", key="errors")
    return errors


def complete_prefix(buf) -> int:
    """Length of the longest prefix of `buf` that does not end inside a multi-byte character.

    Only the last 3 bytes can belong to an unfinished character; invalid bytes are left for the
    decoder to report (0xF8..0xFF lead nothing, so they are never held back).
    """
    n = len(buf)
    for i in range(n - 1, max(n - 4, -1), -1):
        b = buf[i]
        if b < 0x80 or b >= 0xF8:
            return n
        if b >= 0xC0:  # lead byte: is its sequence complete?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return i if n - i < need else n
    return n


class Utf8Decoder:
    """Bytes in, str out, chunk by chunk.

    `decode(chunk)` returns the text of every complete character seen so far and keeps an unfinished
    one (at most 3 bytes) for the next call; `decode(chunk, final=True)` flushes it. With
    errors="strict" invalid UTF-8 raises OmUserError naming `source` and the byte offset counted from
    the first byte ever fed; with errors="replace" each bad sequence becomes U+FFFD.
    """

    def __init__(self, errors: str = "strict", source: str | None = None) -> None:
        self.errors = check_errors(errors)
        self.source = source
        self._pending = b""
        self.offset = 0  # source offset of the first pending byte (= bytes already decoded)

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def decode(self, chunk: bytes, final: bool = False) -> str:
        buf = self._pending + chunk if self._pending else chunk
        view = memoryview(buf)
        cut = len(buf) if final else complete_prefix(view)
        try:
            text, used = codecs.utf_8_decode(view[:cut], self.errors, True)
        except UnicodeDecodeError as err:
            where = self.source if self.source is not None else "input"
            raise OmUserError(
                f"{where}: invalid UTF-8 at byte offset {self.offset + err.start} (errors replace substitutes U+FFFD)",
                key="errors",
            ) from None
        self._pending = bytes(view[cut:])
        self.offset += cut
        return text
