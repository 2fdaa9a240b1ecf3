"""Classic compressors as a bits-per-byte baseline: 8 x compressed size / original size.

    python -m bench.compressors FILE...
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

COMPRESSORS = {
    "gzip -9": ["gzip", "-9", "-c"],
    "bzip2 -9": ["bzip2", "-9", "-c"],
    "xz -9e": ["xz", "-9e", "-c"],
    "zstd --ultra -22": ["zstd", "--ultra", "-22", "-c", "-q"],
}


def bits_per_byte(path: Path) -> dict[str, float | None]:
    """Each compressor's bits per byte on `path`; None where the tool is not installed."""
    size = path.stat().st_size
    out: dict[str, float | None] = {}
    for name, argv in COMPRESSORS.items():
        if shutil.which(argv[0]) is None:
            out[name] = None
            continue
        with open(path, "rb") as f:
            compressed = subprocess.run(argv, stdin=f, capture_output=True, check=True).stdout
        out[name] = 8 * len(compressed) / size
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for name, bpb in bits_per_byte(Path(arg)).items():
            print(f"{arg}\t{name}\t{'n/a' if bpb is None else f'{bpb:.3f}'}")
