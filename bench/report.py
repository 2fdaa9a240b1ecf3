"""Shared by the bench scripts: machine description and BENCHMARKS.md section updates.

Each script owns one section of BENCHMARKS.md, delimited by HTML comment markers, and rewrites
only that section (atomically: temporary file, then rename), so scripts can run in any order.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Om benchmarks\n\nEvery figure here is written by a script in `bench/`; rerun the command shown to reproduce it.\n"


def load_text() -> str:
    """The 1, 5 and 15 minute load averages, as a BENCHMARKS.md line says them: "1.68, 1.90, 1.85"."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    """One line: CPU model, cores, torch version, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = "CPU"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device {device}, Python {platform.python_version()}, {_dt.date.today().isoformat()}"
    )


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `name` of BENCHMARKS.md with `body` (markdown)."""
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    lock_path = BENCHMARKS.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        fd, tmp = tempfile.mkstemp(dir=BENCHMARKS.parent, prefix=".BENCHMARKS.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, BENCHMARKS)
    lock_path.unlink(missing_ok=True)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
