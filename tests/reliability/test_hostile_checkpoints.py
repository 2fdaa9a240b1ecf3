"""Hostile checkpoints: damaged or forged files are refused with one line and exit code 2, nothing
is written, and nothing handed to us is ever unpickled or allowed to allocate absurd memory.

"Resealed" damage also rewrites the checksums in trainer.json, as someone handing us a forged
checkpoint would: the checksum check passes and the file formats themselves must hold.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time

import pytest
import torch

from om.checkpoint import sha256_file
from tests.reliability.hostile_tools import assert_no_traceback, assert_one_line_error, om, snapshot
from tests.test_eval_support import save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
from tests.test_eval_support import one_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path, _, _ = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "base", seed=1)
    return path


@pytest.fixture
def ck(base, tmp_path):
    """A fresh copy of the tiny checkpoint to damage."""
    return shutil.copytree(base, tmp_path / "ck")


def reseal(folder) -> None:
    trainer = json.loads((folder / "trainer.json").read_text())
    trainer["files"] = {name: sha256_file(folder / name) for name in trainer["files"]}
    (folder / "trainer.json").write_text(json.dumps(trainer))


def refused_by_all(folder, *needles, tmp_path=None) -> None:
    """`om eval`, `om sample` and `om cache` refuse it with one line; no file appears or changes."""
    root = folder.parent
    before = snapshot(root)
    for command, args in (("eval", ["-"]), ("sample", ["--max-bytes", "4"]), ("cache", ["-", "-o", str(root / "x.ctx")])):
        result = om(command, str(folder), *args, input=b"some input")
        assert_one_line_error(result, command, *needles)
    assert snapshot(root) == before


class Evil:
    """Unpickling this creates the marker file: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# Truncated and bit-flipped safetensors -------------------------------------------------------------
@pytest.mark.parametrize("sealed", [False, True], ids=["checksums-intact", "resealed"])
@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -1])
def test_truncated_weights(ck, keep, sealed):
    file = ck / "model.safetensors"
    data = file.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) - 1)
    file.write_bytes(data[:cut])
    if sealed:
        reseal(ck)
        refused_by_all(ck, "model.safetensors: not a valid safetensors file")
    else:
        refused_by_all(ck, "model.safetensors: checksum mismatch")


@pytest.mark.parametrize("position", [0, 1, 3, 7, 8, 9, 30, 200])
def test_bit_flips_in_the_header(ck, position):
    """Flipping a bit of the length prefix or the JSON header: refused, whatever the bit."""
    file = ck / "model.safetensors"
    data = bytearray(file.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    assert position < 8 + header_len
    data[position] ^= 0x20
    file.write_bytes(bytes(data))
    plain = om("eval", str(ck), "-", input=b"x")
    assert_one_line_error(plain, "eval", "model.safetensors: checksum mismatch")
    reseal(ck)
    result = om("eval", str(ck), "-", input=b"abc")
    assert_no_traceback(result)
    # A flip inside a tensor name or offset breaks the file; one inside a number's digits may
    # still describe a valid file of other values, which is then loaded as such (exit 0).
    assert result.exit_code in (0, 2), result.stderr
    if result.exit_code == 2:
        assert_one_line_error(result, "eval", "model.safetensors")
    if position < 8:
        assert result.exit_code == 2


def test_bit_flips_in_the_tensor_data_change_only_the_values(ck):
    file = ck / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01
    file.write_bytes(bytes(data))
    refused_by_all(ck, "checksum mismatch")
    reseal(ck)
    result = om("eval", str(ck), "-", "--json", input=b"abc")
    assert result.exit_code == 0 and json.loads(result.stdout)["bytes"] == 3


# Config that does not match the weights ------------------------------------------------------------
@pytest.mark.parametrize(
    "change, needle",
    [
        ({"dim": 64}, "weights do not fit"),
        ({"n_layers": 3}, "weights do not fit"),
        ({"dims_key": [8, 6, 4], "dims_value": [8, 4, 4]}, "weights do not fit"),
        ({"dim": 1_000_000, "n_layers": 100_000}, "the file holds"),
        ({"tie_embeddings": True}, "weights do not fit"),  # the fixture model is untied
        ({"dims_key": [6, 8]}, "weights do not fit"),
        ({"dim": -1}, "config.json: not a valid model config (dim: Input should be greater than or equal to 1)"),
        ({"surprise": 1}, "config.json: not a valid model config (surprise: Extra inputs are not permitted)"),
    ],
    ids=["dim", "layers", "passes", "absurd", "tied", "same-count-other-shapes", "negative", "unknown-key"],
)
def test_config_that_does_not_match_the_weights(ck, change, needle):
    config = json.loads((ck / "config.json").read_text())
    config.update(change)
    (ck / "config.json").write_text(json.dumps(config))
    reseal(ck)
    start = time.perf_counter()
    refused_by_all(ck, needle)
    assert time.perf_counter() - start < 60  # the absurd config is refused from the header, not built


def test_config_that_is_not_an_object(ck):
    (ck / "config.json").write_text("[1, 2]")
    reseal(ck)
    refused_by_all(ck, "config.json: not a valid model config")


def test_codec_that_does_not_match_the_config(ck):
    codec = json.loads((ck / "codec.json").read_text())
    codec["vocab_size"] = 300
    (ck / "codec.json").write_text(json.dumps(codec))
    reseal(ck)
    refused_by_all(ck, "codec.json: the codec has 300 ids", "vocab_size 257")


def test_a_model_too_large_for_free_memory_is_refused_before_building(ck, monkeypatch):
    """A consistent checkpoint whose model would not fit: refused with the estimate (here the free
    memory is made small; a real one this large would need a file this large)."""
    monkeypatch.setattr("om.model.sizing.available_bytes", lambda device="cpu": 10_000)
    built = []
    monkeypatch.setattr("om.checkpoint.OmLLM", lambda config: built.append(config))
    line = assert_one_line_error(om("eval", str(ck), "-", input=b"x"), "eval", "config.json: the model needs about")
    assert "10.0 KB available" in line and built == []


# Checkpoint metadata that points elsewhere -----------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../etc/passwd", "/dev/zero", "", "a/../../x"])
def test_trainer_json_cannot_point_outside(ck, name):
    trainer = json.loads((ck / "trainer.json").read_text())
    trainer["files"][name] = "0" * 64
    (ck / "trainer.json").write_text(json.dumps(trainer))
    refused_by_all(ck, "trainer.json: corrupt checkpoint metadata", "is not inside the checkpoint")


@pytest.mark.parametrize("content", ["[1, 2]", "{\"files\": 5}", "\x00\xff", "{\"files\": {\"model.safetensors\": 7}}"])
def test_garbled_trainer_json(ck, content):
    (ck / "trainer.json").write_text(content, encoding="latin-1")
    result = om("eval", str(ck), "-", input=b"x")
    assert_one_line_error(result, "eval", "ck/")


# Pickles named like checkpoints --------------------------------------------------------------------
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("sealed", [False, True], ids=["checksums-intact", "resealed"])
def test_pickle_named_model_safetensors_is_never_unpickled(ck, tmp_path, how, sealed):
    marker = tmp_path / "UNPICKLED"
    file = ck / "model.safetensors"
    if how == "pickle":
        file.write_bytes(pickle.dumps(Evil(marker)))
        pickle.loads(file.read_bytes())
    else:
        torch.save({"weights": Evil(marker)}, tmp_path / "proof.pt")
        torch.load(tmp_path / "proof.pt", weights_only=False)
        shutil.copyfile(tmp_path / "proof.pt", file)
    assert marker.exists()  # the proof works: unpickling this file makes the marker
    marker.unlink()
    if sealed:
        reseal(ck)
    refused_by_all(ck, "model.safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.pt", "pytorch_model.bin", "checkpoint.pth", "model.ckpt"])
def test_pickle_with_another_checkpoint_name_is_never_unpickled(tmp_path, name):
    marker = tmp_path / "UNPICKLED"
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / name).write_bytes(pickle.dumps(Evil(marker)))
    for target in (folder, folder / name):  # the folder, and the file itself given as CKPT
        for command, args in (("eval", ["-"]), ("sample", []), ("cache", ["-", "-o", str(tmp_path / "c")])):
            assert_one_line_error(om(command, str(target), *args, input=b"x"), command, str(target))
    assert not marker.exists() and not (tmp_path / "c").exists()


def test_pickle_as_context_cache_is_never_unpickled(base, tmp_path):
    marker = tmp_path / "UNPICKLED"
    forged = tmp_path / "forged.ctx"
    forged.write_bytes(pickle.dumps(Evil(marker)))
    for command, args in (("eval", ["-"]), ("sample", ["--max-bytes", "3"])):
        result = om(command, str(base), "--context-cache", str(forged), *args, input=b"x")
        assert_one_line_error(result, command, "forged.ctx")
    assert not marker.exists()


def test_pickle_as_optimizer_state_is_never_unpickled(ck, tmp_path):
    """`om train --resume CKPT` reads optimizer.safetensors: a pickle there is refused too."""
    from om.checkpoint import load_optimizer_state
    from om.errors import OmUserError

    marker = tmp_path / "UNPICKLED"
    (ck / "optimizer.safetensors").write_bytes(pickle.dumps(Evil(marker)))
    model = torch.nn.Linear(2, 2)
    with pytest.raises(OmUserError, match="optimizer.safetensors: not a valid optimizer state"):
        load_optimizer_state(ck, torch.optim.AdamW(model.parameters()))
    assert not marker.exists()


def test_no_loader_calls_torch_load(monkeypatch, ck):
    """Belt and braces: torch.load and pickle.load(s) are never reached while loading."""
    calls = []
    for target in ("torch.load", "pickle.load", "pickle.loads"):
        monkeypatch.setattr(target, lambda *a, _t=target, **k: calls.append(_t))
    result = om("eval", str(ck), "-", "--json", input=b"hello")
    assert result.exit_code == 0, result.stderr
    assert calls == []
    assert os.path.isdir(ck)
