"""Errors caused by what a user gave us (a path, a key, a value) or by the environment (a full
disk, a diverged run), as opposed to bugs."""


class OmUserError(Exception):
    """A problem with the user's input. The CLI prints its message on one line and exits with 2.

    The message must name the offending file, key or value.
    """


class OmRunError(Exception):
    """A run that cannot go on through no fault of its arguments: a full disk, a training loss that
    became NaN. The CLI prints its message on one line and exits with 1 (bad input exits with 2).

    The message must say what failed, where, and what was kept.
    """


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
