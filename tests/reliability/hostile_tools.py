"""Helpers of the hostile-input and fuzz tests: `om` run in-process, and the error contract.

The contract for bad input: exit code 2, exactly one line on stderr starting with
`om CMD: error: `, no traceback, nothing on stdout, nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from omcli.app import app


def om(*args, input: bytes | None = None):
    """`om ARGS` in-process (CliRunner); returns the result (exit_code, stdout_bytes, stderr)."""
    return CliRunner().invoke(app, [a if isinstance(a, str) else os.fsdecode(a) for a in args], input=input)


def assert_no_traceback(result) -> None:
    """The run ended by the CLI's own means: no exception escaped, nothing looks like a traceback."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"{type(exc).__name__}: {exc}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout_bytes.decode("utf-8", "replace")


def assert_one_line_error(result, command: str, *needles: str) -> str:
    """Exit 2, one line `om COMMAND: error: ...` on stderr containing every needle, no stdout."""
    assert_no_traceback(result)
    assert result.exit_code == 2, (result.exit_code, result.stdout_bytes[:200], result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"om {command}: error: "), result.stderr
    assert result.stdout_bytes == b""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time, to prove nothing changed."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out
