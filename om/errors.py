"""Errors caused by what a user gave us (a path, a key, a value) or by the environment (a full
disk, a diverged run), as opposed to bugs.

A library function names its own arguments in its errors (`vocab_size 100 is too small ...`) and
says which one on the exception (`OmUserError(message, key="vocab_size")`). A caller whose user
knows the setting by another name renames it with `renamed_keys`: the CLI to its flags
(`--vocab-size 100 is too small ...`), the recipe loader to recipe keys and the file
(`my.yaml: data.vocab_size: 100 is too small ...`).
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterable, Iterator, Mapping


class OmUserError(Exception):
    """A problem with the user's input. The CLI prints its message on one line and exits with 2.

    The message must name the offending file, key or value. `key`: the argument (or arguments, a
    tuple) the message is about, named in the message as the library calls it; see `renamed_keys`.
    """

    def __init__(self, message: str = "", key: str | Iterable[str] | None = None) -> None:
        super().__init__(message)
        self.keys: tuple[str, ...] = (key,) if isinstance(key, str) else tuple(key or ())


class OmRunError(Exception):
    """A run that cannot go on through no fault of its arguments: a full disk, a training loss that
    became NaN. The CLI prints its message on one line and exits with 1 (bad input exits with 2).

    The message must say what failed, where, and what was kept.
    """


def _name_pattern(key: str) -> re.Pattern:
    # The key as a whole name: not part of a longer one such as `data.vocab_size` or `--vocab-size`.
    return re.compile(rf"(?<![\w.-]){re.escape(key)}(?![\w-])")


def rename_keys(err: OmUserError, names: Mapping[str, str], where: str | Callable[[str], str] | None = None) -> OmUserError:
    """Rewrite `err` in place so that it names each of its keys found in `names` as `names[key]`,
    and return it. With `where` (a recipe file, or a function of the new name giving one), the
    message reads `WHERE: NAME: problem` when it starts with the key, else `WHERE: message`."""
    found = [key for key in err.keys if key in names]
    if not found:
        return err
    message = str(err.args[0]) if err.args else ""
    leading = next((key for key in found if _name_pattern(key).match(message)), None)
    for key in found:
        message = _name_pattern(key).sub(lambda _, new=names[key]: new, message)
    if where is not None:
        first = names[leading] if leading is not None else names[found[0]]
        prefix = where(first) if callable(where) else where
        if leading is not None:
            rest = message[len(names[leading]):]
            message = f"{names[leading]}:{rest[1:] if rest.startswith(':') else rest}"
        message = f"{prefix}: {message}"
    err.args = (message, *err.args[1:])
    err.keys = tuple(names.get(key, key) for key in err.keys)
    return err


@contextlib.contextmanager
def renamed_keys(names: Mapping[str, str], where: str | Callable[[str], str] | None = None) -> Iterator[None]:
    """Within the block, an `OmUserError` about a library argument in `names` is raised again naming
    it the way the caller's user wrote it (see `rename_keys`). For example, with
    `{"vocab_size": "--vocab-size"}`, `vocab_size 100 is too small` becomes `--vocab-size 100 is too
    small`; with `{"vocab_size": "data.vocab_size"}` and where="my.yaml", `my.yaml: data.vocab_size:
    100 is too small`. The renamed error carries the new names as its keys."""
    try:
        yield
    except OmUserError as err:
        rename_keys(err, names, where)
        raise


def printable(text: str) -> str:
    """`text` as valid Unicode: bytes of a file name that are not UTF-8 (which Python keeps as lone
    surrogates) become \\xNN escapes, so a name can go into JSON and onto any terminal."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
