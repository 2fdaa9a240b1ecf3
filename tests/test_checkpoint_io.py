"""Checkpoints: round trip, atomic writes, corruption and partial-folder detection, run-folder lookup."""

from __future__ import annotations

import json

import pytest
import torch

from om import OmConfig, OmLLM
from om.checkpoint import (
    load_checkpoint,
    load_extra_tensors,
    load_optimizer_state,
    resolve_checkpoint,
    save_checkpoint,
    step_dir_name,
    write_latest,
)
from om.data import BytesCodec
from om.errors import OmRunError, OmUserError
from om.train.run_folder import RunFolder


def _tiny(tie: bool = True):
    torch.manual_seed(0)
    config = OmConfig(
        vocab_size=257, dim=32, n_layers=1, n_heads=2, dims_key=[8], dims_value=[8], segment_len=8, state_len=4, tie_embeddings=tie
    )
    model = OmLLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (2, 16))
    model.loss(x, x)[0].backward()
    opt.step()
    return config, model, opt


def _save(folder, tie: bool = True, **kwargs):
    config, model, opt = _tiny(tie)
    dataset = {"path": "/d", "fingerprint": "f" * 64}
    path = save_checkpoint(folder, model, config, BytesCodec(), {"step": 7}, optimizer=opt, dataset=dataset, **kwargs)
    return path, model, opt


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip(tmp_path, tie):
    path, model, opt = _save(tmp_path / "run" / "checkpoints" / step_dir_name(7), tie, tensors={"carry.0.x": torch.arange(3.0)})
    ckpt = load_checkpoint(path)
    assert ckpt.path == path and ckpt.trainer["step"] == 7 and ckpt.config == model.config
    assert ckpt.dataset == {"path": "/d", "fingerprint": "f" * 64}
    assert ckpt.codec.name == "bytes" and ckpt.codec.vocab_size == 257
    assert not ckpt.model.training
    assert (ckpt.model.head.weight is ckpt.model.embed.weight) == tie
    for (name, a), b in zip(model.state_dict().items(), ckpt.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert ckpt.fingerprint == ckpt.trainer["files"]["model.safetensors"]
    assert torch.equal(load_extra_tensors(path)["carry.0.x"], torch.arange(3.0))
    # Optimizer state comes back bit for bit.
    opt2 = torch.optim.AdamW(ckpt.model.parameters(), lr=5.0)
    load_optimizer_state(path, opt2)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, slots in a["state"].items():
        for key, value in slots.items():
            assert torch.equal(value, b["state"][i][key])


def test_no_pickle_anywhere(tmp_path):
    path, _, _ = _save(tmp_path / "ck")
    for f in path.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f.name  # pickle protocol header
        assert f.suffix in (".safetensors", ".json")


def test_resolve_run_folder_latest_and_newest(tmp_path):
    run = tmp_path / "run"
    first, _, _ = _save(run / "checkpoints" / step_dir_name(1))
    second, _, _ = _save(run / "checkpoints" / step_dir_name(2))
    assert resolve_checkpoint(run) == second  # no pointer: the newest
    write_latest(run / "checkpoints", first)
    assert resolve_checkpoint(run) == first
    assert resolve_checkpoint(run / "checkpoints") == first
    assert resolve_checkpoint(second) == second
    with pytest.raises(OmUserError, match="nothing: no such checkpoint or run folder"):
        resolve_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OmUserError, match="empty: neither a checkpoint folder"):
        resolve_checkpoint(tmp_path / "empty")


def test_prune_keeps_last_k(tmp_path):
    ckdir = tmp_path / "checkpoints"
    for step in range(1, 5):
        _save(ckdir / step_dir_name(step))
    RunFolder(tmp_path).prune(2)
    assert sorted(p.name for p in ckdir.iterdir()) == [step_dir_name(3), step_dir_name(4)]


def test_write_is_atomic_on_failure(tmp_path):
    class BrokenCodec(BytesCodec):
        def save(self, directory):
            (directory / "codec.json").write_text("{")
            raise OSError("disk full")

    config, model, opt = _tiny()
    target = tmp_path / "checkpoints" / step_dir_name(3)
    # A failed write is reported as a failed run (exit code 1 in the CLI), naming the folder.
    with pytest.raises(OmRunError, match=r"step-0000003: cannot write the checkpoint \(disk full\)"):
        save_checkpoint(target, model, config, BrokenCodec(), {"step": 3}, optimizer=opt)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no half-written folder, no temp left


def test_overwrite_replaces_whole_folder(tmp_path):
    path, _, _ = _save(tmp_path / "ck", tensors={"a": torch.zeros(1)})
    _save(tmp_path / "ck")
    assert not (path / "state.safetensors").exists()
    load_checkpoint(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("flip:model.safetensors", "model.safetensors: checksum mismatch; the checkpoint {ck} is corrupt"),
        ("flip:optimizer.safetensors", "optimizer.safetensors: checksum mismatch"),
        ("flip:config.json", "config.json: checksum mismatch"),
        ("truncate:model.safetensors", "model.safetensors: checksum mismatch"),
        ("delete:model.safetensors", "model.safetensors: missing; the checkpoint {ck} is partial"),
        ("delete:codec.json", "codec.json: missing; the checkpoint {ck} is partial"),
        ("delete:trainer.json", "trainer.json: missing; {ck} is not a complete checkpoint"),
        ("garble:trainer.json", "trainer.json: corrupt checkpoint metadata"),
    ],
)
def test_corrupt_or_partial_checkpoint_is_refused(tmp_path, damage, expected):
    path, _, _ = _save(tmp_path / "ck")
    action, name = damage.split(":")
    file = path / name
    if action == "flip":
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0x01
        file.write_bytes(bytes(data))
    elif action == "truncate":
        file.write_bytes(file.read_bytes()[:-10])
    elif action == "delete":
        file.unlink()
    else:
        file.write_text("{not json")
    with pytest.raises(OmUserError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(file))
    assert expected.replace("{ck}", str(path)) in str(info.value)


def test_trainer_json_lists_every_file(tmp_path):
    path, _, _ = _save(tmp_path / "ck", tensors={"a": torch.zeros(1)})
    files = json.loads((path / "trainer.json").read_text())["files"]
    assert sorted(files) == sorted(p.name for p in path.iterdir() if p.name != "trainer.json")
