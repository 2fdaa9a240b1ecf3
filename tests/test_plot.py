"""`om plot` and `om eval --plot`: PNGs rendered, read back, and refused cleanly."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

pytest.importorskip("matplotlib")

from om.train import Trainer  # noqa: E402
from om.train.recipe import read_yaml, validate_recipe  # noqa: E402
from tests.test_eval_support import run_cli  # noqa: E402
from tests.test_train_loop import TINY  # noqa: E402
from tests.train_fixtures import dataset, isolated_cache  # noqa: E402,F401 (fixtures)


def read_png(path) -> tuple[int, int, set[bytes]]:
    """(width, height, distinct pixel rows) of an 8-bit RGB/RGBA PNG, decoded with zlib alone."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        chunks.setdefault(kind, []).append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert depth == 8 and color in (2, 6)
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    stride = 1 + width * (3 if color == 2 else 4)
    rows = {raw[i * stride + 1 : (i + 1) * stride] for i in range(height)}
    return width, height, rows


def train_tiny(run, dataset, **train):
    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    raw["train"].update(max_steps=8, log_every=2, eval_every=4, **train)
    raw["out"].update(sample_bytes=0, progress=False)
    return Trainer(validate_recipe(raw, "tiny.yaml"), run).run()


def test_plot_runs_overlaid(tmp_path, dataset):
    train_tiny(tmp_path / "a", dataset)
    train_tiny(tmp_path / "b", dataset, lr=1e-3)
    out = tmp_path / "curves.png"
    result = run_cli(["plot", tmp_path / "a", tmp_path / "b", "-o", out])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    width, height, rows = read_png(out)
    assert width >= 400 and height >= 400
    assert len(rows) > 50  # drawn on, not a blank canvas


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = run_cli(["plot", tmp_path, "-o", tmp_path / "x.png"])
    assert result.exit_code == 2 and "metrics.jsonl" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_eval_by_position_plot(tmp_path, dataset):
    ckpt = train_tiny(tmp_path / "run", dataset).checkpoint
    text = tmp_path / "in.txt"
    text.write_bytes(b"def f(x):\n    return x\n" * 40)
    out = tmp_path / "pos.png"
    result = run_cli(["eval", ckpt, text, "--by-position", "--plot", out, "--json"])
    assert result.exit_code == 0, result.stderr
    assert "by_position" in json.loads(result.stdout)
    width, height, rows = read_png(out)
    assert width >= 400 and len(rows) > 20
    no_positions = run_cli(["eval", ckpt, text, "--plot", out])
    assert no_positions.exit_code == 2 and "--by-position" in no_positions.stderr
