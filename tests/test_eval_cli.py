"""`om eval` end to end: file vs stdin, JSON keys, folders, the validation split, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.test_eval_support import TEXT, chars_codec, one_thread, run_cli, save_tiny_checkpoint, stream_nll  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = bytes(np.random.default_rng(1).integers(0, 256, 150, dtype=np.uint8))

KEYS = {
    "headline", "bits_per_byte", "byte_perplexity", "bits_per_token", "token_perplexity", "nll_nats", "bytes",
    "tokens", "documents", "seconds", "bytes_per_second", "peak_rss_mb", "inputs", "checkpoint", "codec",
    "context_cache", "segment_len", "batch_size", "words", "word_perplexity", "threads",
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval") / "ckpt"
    path, model, codec = save_tiny_checkpoint(folder)
    return path, model, codec


def eval_json(args, input=None) -> dict:
    result = run_cli(["eval", *args, "--json"], input=input)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_file_equals_stdin(ckpt, tmp_path):
    path, model, codec = ckpt
    f = tmp_path / "in.bin"
    f.write_bytes(DATA)
    from_file = eval_json([path, f])
    from_stdin = eval_json([path, "-"], input=DATA)
    for key in ("nll_nats", "bits_per_byte", "bytes", "tokens", "documents"):
        assert from_file[key] == from_stdin[key]
    assert from_file["bytes"] == len(DATA)
    assert from_file["nll_nats"] == pytest.approx(stream_nll(model, codec, DATA), rel=1e-5)
    assert from_stdin["inputs"][0]["name"] == "<stdin>"


def test_json_keys(ckpt, tmp_path):
    path, _, _ = ckpt
    f = tmp_path / "in.bin"
    f.write_bytes(DATA)
    report = eval_json([path, f, f, "--by-position", "--batch-size", "2"])
    assert KEYS | {"by_position"} <= set(report)
    assert report["headline"] == "bits_per_byte"
    assert report["codec"] == {"name": "bytes", "vocab_size": 257}
    assert len(report["checkpoint"]["fingerprint"]) == 64
    assert len(report["inputs"]) == 2 and report["bytes"] == 2 * len(DATA)
    assert set(report["by_position"][0]) >= {"segments", "bits_per_byte", "bytes", "tokens"}
    assert set(eval_json([path, f])) == KEYS  # no by_position unless asked


def test_table_and_folder(ckpt, tmp_path):
    path, _, _ = ckpt
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_bytes(DATA[:50])
    (tmp_path / "docs" / "sub" / "b.txt").write_bytes(DATA[50:])
    result = run_cli(["eval", path, tmp_path / "docs", "--by-position"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "bits_per_byte" in out and "a.txt" in out and "b.txt" in out and "by position" in out
    report = eval_json([path, tmp_path / "docs"])
    assert [r["bytes"] for r in report["inputs"]] == [50, len(DATA) - 50]


def test_bytes_flag_sets_headline_for_chars(tmp_path):
    path, _, _ = save_tiny_checkpoint(tmp_path / "chars", codec=chars_codec())
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    assert eval_json([path, f])["headline"] == "bits_per_token"
    report = eval_json([path, f, "--bytes"])
    assert report["headline"] == "bits_per_byte"
    assert report["bytes"] == len(TEXT.encode("utf-8")) and report["tokens"] == len(TEXT)


def test_empty_input_reports_zero(ckpt, tmp_path):
    path, _, _ = ckpt
    f = tmp_path / "empty.txt"
    f.write_bytes(b"")
    report = eval_json([path, f])
    assert report["bytes"] == 0 and report["bits_per_byte"] is None
    assert run_cli(["eval", path, f]).exit_code == 0  # the table copes too


def test_validation_split_default(tmp_path):
    from om.data import prepare_dataset

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.txt").write_bytes(DATA[i * 20 : (i + 1) * 20 + 7])
    prepare_dataset([docs], tmp_path / "ds", codec="bytes", val_fraction=0.4)
    from om.data import open_dataset

    ds = open_dataset(tmp_path / "ds")
    info = {"path": str(tmp_path / "ds"), "fingerprint": ds.fingerprint}
    path, _, _ = save_tiny_checkpoint(tmp_path / "ck", dataset=info)
    report = eval_json([path])
    assert report["bytes"] == ds.num_bytes("val") > 0
    assert report["inputs"][0]["name"].endswith("(val)")
    # Gone, or changed since training: one-line errors.
    (tmp_path / "ds" / "meta.json").write_text((tmp_path / "ds" / "meta.json").read_text() + " ")
    changed = run_cli(["eval", path])
    assert changed.exit_code == 2 and "changed since training" in changed.stderr
    gone_path, _, _ = save_tiny_checkpoint(tmp_path / "ck2", dataset={"path": str(tmp_path / "gone"), "fingerprint": "x"})
    gone = run_cli(["eval", gone_path])
    assert gone.exit_code == 2 and "is gone" in gone.stderr


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("om eval: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_errors(ckpt, tmp_path):
    path, _, _ = ckpt
    f = tmp_path / "in.bin"
    f.write_bytes(DATA)
    assert_one_line_error(run_cli(["eval", tmp_path / "nowhere", f]), "nowhere")
    assert_one_line_error(run_cli(["eval", path, tmp_path / "missing.txt"]), "missing.txt")
    assert_one_line_error(run_cli(["eval", path, f, "--batch-size", "0"]), "--batch-size 0")
    # A value typer itself refuses is a usage error: one line from the real entry point (omcli.app.main).
    bad = subprocess.run([sys.executable, "-m", "omcli.app", "eval", str(path), str(f), "--errors", "ignore"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--errors" in bad.stderr and "ignore" in bad.stderr, bad.stderr
    assert_one_line_error(run_cli(["eval", path, f, "--threads", "0"]), "--threads 0: must be from 1 to")
    assert_one_line_error(run_cli(["eval", path]), "names no training dataset")
    assert_one_line_error(run_cli(["eval", path, f, "--context-cache", f]), "in.bin", "not a context cache")
    assert_one_line_error(run_cli(["eval", path, "-", "-"], input=b"x"), "more than once")


def test_corrupt_checkpoint(tmp_path):
    path, _, _ = save_tiny_checkpoint(tmp_path / "ck")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    f = tmp_path / "in.bin"
    f.write_bytes(DATA)
    assert_one_line_error(run_cli(["eval", path, f]), "model.safetensors")


def test_chars_model_invalid_utf8(tmp_path):
    path, _, _ = save_tiny_checkpoint(tmp_path / "chars", codec=chars_codec())
    f = tmp_path / "bad.txt"
    f.write_bytes(b"ok\xffno")
    assert_one_line_error(run_cli(["eval", path, f]), "bad.txt", "offset 2")
    assert run_cli(["eval", path, f, "--errors", "replace"]).exit_code == 0


def test_threads_flag_sets_torch_threads(ckpt, tmp_path, monkeypatch):
    import torch

    path, _, _ = ckpt
    f = tmp_path / "in.bin"
    f.write_bytes(DATA)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    report = eval_json([path, f, "--threads", "2"])
    assert report["threads"] == 2 and torch.get_num_threads() == 2
    # Without --threads eval keeps torch's default (one thread per core, or OMP_NUM_THREADS): here what the test set.
    torch.set_num_threads(1)
    assert eval_json([path, f])["threads"] == 1
    table = run_cli(["eval", path, f, "--threads", "2"])
    assert table.exit_code == 0 and "2 thread(s)" in table.stdout
    for bad in ("0", "-3", "100000"):
        assert_one_line_error(run_cli(["eval", path, f, "--threads", bad]), f"--threads {bad}: must be from 1 to")
