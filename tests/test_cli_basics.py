"""The `om` entry point: version, help, and one-line usage errors with exit code 2."""

import subprocess
import sys

from om import __version__


def om(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omcli.app", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help():
    assert om("--version").stdout.strip() == f"om {__version__}"
    help_text = om("--help").stdout
    for command in ("prepare", "train", "eval", "sample", "cache"):
        assert command in help_text


def test_usage_errors_are_one_line_with_exit_code_2():
    for args, expected in [
        (("sample", "ckpt", "--max-bytes", "abc"), "--max-bytes"),
        (("frobnicate",), "frobnicate"),
        (("eval", "ckpt", "--no-such-flag"), "--no-such-flag"),
    ]:
        result = om(*args)
        assert result.returncode == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr
