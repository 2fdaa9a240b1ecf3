"""Errors caused by what a user gave us (a path, a key, a value), as opposed to bugs."""


class OmUserError(Exception):
    """A problem with the user's input. The CLI prints its message on one line and exits with 2.

    The message must name the offending file, key or value.
    """
