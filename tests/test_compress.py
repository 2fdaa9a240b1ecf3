"""`om compress` / `om decompress`: byte-for-byte round trips across processes, stdin/stdout,
refusals (another checkpoint, truncated or corrupted files, not an om file, a chars checkpoint),
and the coded size against the model's own log-likelihood."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from om.compress import MAGIC
from tests.test_eval_support import chars_codec, one_thread, run_cli, save_tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "README.md").read_bytes()[:3000]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("compress") / "ckpt", seed=5)


@pytest.fixture(scope="module")
def ngram_ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("compress-ngram") / "ckpt", seed=7, ngram_sizes=[2, 3, 5],
                                ngram_buckets=64)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("compress-other") / "ckpt", seed=6)


# Several CLI runs in one fresh process (each as `om ARGS`), so compressing and decompressing happen in
# different processes without paying for a process start per file. The exit codes go to stderr's last
# line: stdout is the commands' (`-o -`).
BATCH = """
import json, sys
from omcli.app import main
codes = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["om", *args]
    try:
        main()
    except SystemExit as err:
        codes.append(err.code)
print(json.dumps(codes), file=sys.stderr)
"""


def om_batch(runs: list[list], input: bytes = b"") -> tuple[list[int], bytes, list[str]]:
    """(exit codes, stdout, stderr lines but the last) of `runs` in one new process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", BATCH, json.dumps([[str(a) for a in r] for r in runs])],
                            input=input, capture_output=True, timeout=300, env=env)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 0, result.stderr
    return json.loads(lines[-1]), result.stdout, lines[:-1]


def test_round_trips_across_processes(ckpt, tmp_path):
    """Every kind of input, and stdin to stdout, compressed in one process and decompressed in another."""
    path, _, _ = ckpt
    rng = np.random.default_rng(0)
    binary = np.linspace(-3, 3, 200, dtype=np.float32).tobytes() + bytes(range(256))  # not text: floats, every byte value
    cases = {
        "text": (TEXT, ["--block-size", "512"]),  # 3000 bytes: 5 whole blocks and a short one
        "random": (rng.integers(0, 256, 2500, dtype=np.uint8).tobytes(), ["--block-size", "64", "--wave-rows", "10"]),  # 4 waves
        "empty": (b"", []),
        "binary": (binary, ["--block-size", "400"]),
        "small": (TEXT[:100], []),  # one block shorter than the default size
        "exact": (TEXT[:1024], ["--block-size", "256"]),  # a multiple of the block size
    }
    piped = TEXT[:700]
    compress, decompress = [], []
    for name, (data, flags) in cases.items():
        (tmp_path / name).write_bytes(data)
        compress.append(["compress", path, tmp_path / name, "-o", tmp_path / f"{name}.omz", *flags])
        decompress.append(["decompress", path, tmp_path / f"{name}.omz", "-o", tmp_path / f"{name}.out"])
    codes, packed, notes = om_batch([*compress, ["compress", path, "-", "-o", "-", "--block-size", "300"]], input=piped)
    assert codes == [0] * (len(cases) + 1), notes
    assert packed[:4] == MAGIC
    assert len(notes) == len(cases) + 1 and all(n.startswith("om compress: ") for n in notes), notes
    assert "3,000 -> " in notes[0] and "bits/byte" in notes[0] and "empty input" in notes[2], notes
    assert notes[-1].startswith("om compress: <stdin>: 700 -> ") and "block 300, 1 thread" in notes[-1], notes
    codes, restored, notes = om_batch([*decompress, ["decompress", path, "-", "-o", "-"]], input=packed)
    assert codes == [0] * (len(cases) + 1), notes
    assert restored == piped
    assert notes[-1].startswith(f"om decompress: <stdin>: {len(packed):,} -> 700 bytes"), notes
    for name, (data, _) in cases.items():
        assert (tmp_path / f"{name}.out").read_bytes() == data, name
        assert (tmp_path / f"{name}.omz").read_bytes()[:4] == MAGIC
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_an_ngram_model_round_trips_across_processes(ngram_ckpt, tmp_path):
    """A model with hashed n-gram embeddings: waves of 10 rows (the decoder hashes by tensor ops)
    and a last wave of 3 (by Python integers, om.model.decoding.NGRAM_PYTHON_ROWS), each way in its
    own process."""
    from om.compress import read_header
    from om.model.decoding import NGRAM_PYTHON_ROWS

    path = ngram_ckpt[0]
    assert 3 <= NGRAM_PYTHON_ROWS < 10
    data = TEXT[:1300]  # blocks of 100: a wave of 10 rows, then one of 3
    (tmp_path / "in").write_bytes(data)
    codes, _, notes = om_batch([["compress", path, tmp_path / "in", "-o", tmp_path / "in.omz", "--block-size", "100",
                                 "--wave-rows", "10"]])
    assert codes == [0], notes
    codes, _, notes = om_batch([["decompress", path, tmp_path / "in.omz", "-o", tmp_path / "out"]])
    assert codes == [0], notes
    assert (tmp_path / "out").read_bytes() == data
    assert (read_header((tmp_path / "in.omz").read_bytes())[0].wave_rows, len(data) // 100) == (10, 13)


# Refusals -------------------------------------------------------------------------------------------
def assert_refused(result, command: str, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"om {command}: error:"), result.stderr
    assert result.stdout_bytes == b""
    message = re.sub(r"/\S*pytest-of-[^ :;]*", "PATH", lines[0])  # a test's folder name may hold a needle
    for needle in needles:
        assert needle in message, lines[0]


@pytest.fixture(scope="module")
def packed(ckpt, tmp_path_factory) -> bytes:
    from om.checkpoint import load_checkpoint
    from om.compress import compress_bytes

    return compress_bytes(load_checkpoint(ckpt[0]), TEXT[:600], block_size=256)


def refuse_decompress(ckpt_path, blob: bytes, tmp_path, *needles: str) -> None:
    bad = tmp_path / "bad.omz"
    bad.write_bytes(blob)
    out = tmp_path / "out.bin"
    assert_refused(run_cli(["decompress", ckpt_path, bad, "-o", out]), "decompress", *needles)
    assert not out.exists()
    assert_refused(run_cli(["decompress", ckpt_path, bad, "-o", "-"]), "decompress", *needles)  # nothing on stdout either


def test_refuses_another_checkpoint(ckpt, other_ckpt, packed, tmp_path):
    refuse_decompress(other_ckpt[0], packed, tmp_path, "compressed with another checkpoint")


def test_refuses_truncated(ckpt, packed, tmp_path):
    for cut in (len(packed) - 4, len(packed) - 1, 60, 5):
        refuse_decompress(ckpt[0], packed[:cut], tmp_path, "truncated")
    refuse_decompress(ckpt[0], packed + b"\0\0\0\0", tmp_path, "unexpected bytes")


def test_refuses_a_flipped_byte(ckpt, packed, tmp_path):
    from om.compress import read_header

    header, payload = read_header(packed)
    assert len(payload) > 8
    for at, needle in [(len(packed) - len(payload) // 2, "payload"), (20, "header"), (len(packed) - len(payload) - 5, "header")]:
        flipped = bytearray(packed)
        flipped[at] ^= 0x10
        refuse_decompress(ckpt[0], bytes(flipped), tmp_path, "corrupted", needle)


def test_refuses_what_is_not_an_om_file(ckpt, tmp_path):
    refuse_decompress(ckpt[0], TEXT[:200], tmp_path, "not an om-compressed file")
    refuse_decompress(ckpt[0], b"", tmp_path, "not an om-compressed file")
    refuse_decompress(ckpt[0], b"OMZ\x07" + bytes(60), tmp_path, "format version 7")


def test_refuses_a_chars_checkpoint(tmp_path, ckpt, packed):
    path, _, _ = save_tiny_checkpoint(tmp_path / "chars", codec=chars_codec(), seed=1)
    src = tmp_path / "in.txt"
    src.write_bytes(TEXT[:50])
    assert_refused(run_cli(["compress", path, src, "-o", tmp_path / "x.omz"]), "compress", "chars codec", "bytes-codec")
    assert not (tmp_path / "x.omz").exists()
    refuse_decompress(path, packed, tmp_path, "chars codec")


@pytest.mark.parametrize("value", ["0", "-3", str(10**9)])
def test_refuses_bad_block_size(ckpt, tmp_path, value):
    src = tmp_path / "in.txt"
    src.write_bytes(b"abc")
    assert_refused(run_cli(["compress", ckpt[0], src, "-o", tmp_path / "x", "--block-size", value]), "compress", f"--block-size {value}")
    assert not (tmp_path / "x").exists()


def test_refuses_missing_input(ckpt, tmp_path):
    assert_refused(run_cli(["compress", ckpt[0], tmp_path / "nope", "-o", tmp_path / "x"]), "compress", "PATH: no such file")


# Library --------------------------------------------------------------------------------------------
def block_bits(model, data: bytes, block_size: int) -> float:
    """Reference: the model's NLL in bits of every byte, each block a document from the separator,
    by one full forward pass per block, softmax over the 256 byte ids."""
    total = 0.0
    for start in range(0, len(data), block_size):
        ids = list(data[start : start + block_size])
        seq = torch.tensor([[256, *ids]])
        with torch.no_grad():
            logits, _ = model(seq[:, :-1])
        logp = torch.log_softmax(logits[0, :, :256].double(), dim=-1)
        total -= float(logp[torch.arange(len(ids)), seq[0, 1:]].sum()) / np.log(2)
    return total


@pytest.mark.parametrize("kind", ["text", "random"])
def test_payload_matches_the_model_log_likelihood(ckpt, kind):
    from om.checkpoint import load_checkpoint
    from om.compress import compress_bytes, read_header

    data = TEXT[:1500] if kind == "text" else np.random.default_rng(1).integers(0, 256, 1500, dtype=np.uint8).tobytes()
    c = load_checkpoint(ckpt[0])
    blob = compress_bytes(c, data, block_size=200, wave_rows=3)
    header, payload = read_header(blob)
    expected = block_bits(c.model, data, 200)
    # The range coder costs at most a fraction of a percent over the ideal code, plus its final words.
    assert expected * 0.995 - 64 <= 8 * len(payload) <= expected * 1.01 + 64, (8 * len(payload), expected)
    assert 2 < expected / len(data) < 20  # a random model: bits/byte of the order of 8
    assert len(blob) - len(payload) < 1024  # the header
    assert (header.length, header.block_size, header.wave_rows, header.codec) == (1500, 200, 3, "bytes")
    assert header.sha256 == hashlib.sha256(data).hexdigest() and header.checkpoint == c.fingerprint


@pytest.mark.parametrize("model, block, rows", [
    ("plain", 200, 2),  # 6 blocks, the last of 100 bytes: 3 waves of 2 rows
    ("ngram", 200, 2),  # n-gram rows hashed in Python integers (om.model.decoding.NGRAM_PYTHON_ROWS)
    ("ngram", 100, 10),  # 11 blocks: a wave of 10 rows (hashed by tensor ops), then one of 1
])
def test_each_block_is_coded_as_a_document(ckpt, ngram_ckpt, monkeypatch, model, block, rows):
    """The probabilities handed to the coder, wave by wave, step by step, row by row, are those of each
    block read alone from the separator (pad rows of a shorter block ignored)."""
    import om.compress as oc
    from om.checkpoint import load_checkpoint

    c = load_checkpoint((ckpt if model == "plain" else ngram_ckpt)[0])
    data = TEXT[:1100]
    blocks = -(-len(data) // block)
    seen = []
    probabilities = oc._probabilities
    monkeypatch.setattr(oc, "_probabilities", lambda logits: seen.append(probabilities(logits)) or seen[-1])
    oc.encode_blocks(c.model, 256, data, block, rows)
    got = {}
    steps = iter(seen)
    for wave in range(-(-blocks // rows)):
        for t in range(block):
            probs = next(steps)
            for r in range(len(probs)):
                got[(wave * rows + r, t)] = probs[r]
    assert next(steps, None) is None and len(got) == len(data)
    for b in range(blocks):
        ids = list(data[b * block : (b + 1) * block])
        with torch.no_grad():
            logits, _ = c.model(torch.tensor([[256, *ids[:-1]]]))
        expected = torch.softmax(logits[0, :, :256].double(), dim=-1).numpy()
        actual = np.stack([got[(b, t)] for t in range(len(ids))])
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-7)


def test_decoding_with_other_probabilities_is_an_error_not_wrong_output(ckpt, packed, monkeypatch):
    import om.compress as oc
    from om.checkpoint import load_checkpoint
    from om.errors import OmUserError

    c = load_checkpoint(ckpt[0])
    assert oc.decompress_bytes(c, packed) == TEXT[:600]
    step = oc._step

    def drifting(decoder, tokens):  # what another CPU's rounding would do, much exaggerated
        return step(decoder, tokens) + 0.05 * torch.arange(256, dtype=torch.float32)

    monkeypatch.setattr(oc, "_step", drifting)
    with pytest.raises(OmUserError, match="fails the sha256"):
        oc.decompress_bytes(c, packed)


def test_threads_are_recorded_and_set_again(ckpt, monkeypatch):
    import om.compress as oc
    from om.checkpoint import load_checkpoint

    c = load_checkpoint(ckpt[0])
    blob = oc.compress_bytes(c, TEXT[:12], threads=2)  # short: two threads on a busy machine are slow
    assert oc.read_header(blob)[0].threads == 2
    assert torch.get_num_threads() == 1  # restored
    seen = set()
    step = oc._step

    def recording(decoder, tokens):
        seen.add(torch.get_num_threads())
        return step(decoder, tokens)

    monkeypatch.setattr(oc, "_step", recording)
    assert oc.decompress_bytes(c, blob) == TEXT[:12]
    assert seen == {2} and torch.get_num_threads() == 1


def test_refuses_a_model_off_cpu_fp32(ckpt):
    from om.checkpoint import load_checkpoint
    from om.compress import compress_bytes
    from om.errors import OmUserError

    c = load_checkpoint(ckpt[0])
    c.model.double()
    with pytest.raises(OmUserError, match="float32 on CPU only"):
        compress_bytes(c, b"abc")


def test_help_names_arguments_and_imports_no_torch():
    probe = "import sys; from omcli.app import main; sys.argv = ['om', *sys.argv[1:]]\ntry:\n    main()\nexcept SystemExit:\n    pass\n" \
            "print('HEAVY:' + ','.join(m for m in ('torch', 'numpy', 'constriction') if m in sys.modules), file=sys.stderr)"
    for command, usage in (("compress", "CKPT FILE"), ("decompress", "CKPT FILE")):
        result = subprocess.run([sys.executable, "-c", probe, command, "--help"], capture_output=True, text=True, timeout=120)
        assert f"{command} [OPTIONS] {usage}" in " ".join(result.stdout.split()), result.stdout
        assert "HEAVY:\n" in result.stderr + "\n" and "HEAVY:torch" not in result.stderr, result.stderr
