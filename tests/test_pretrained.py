"""`OmLLM.save_pretrained` / `OmLLM.from_pretrained`: the Hugging Face folder layout, Om checkpoint and
run folders, a Hub cache, and one-line refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from om import OmConfig, OmLLM
from om.checkpoint import load_checkpoint
from om.errors import OmUserError
from tests.model_helpers import tiny_model
from tests.test_eval_support import bytes_codec, chars_codec, one_thread, save_tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENS = torch.randint(0, 61, (2, 29), generator=torch.Generator().manual_seed(0))


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens)[0]


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "state_update": "gated", "positional": "rope+cope"}])
def test_round_trip_gives_the_same_logits(tmp_path, overrides):
    model = tiny_model(seed=2, **overrides)
    folder = model.save_pretrained(tmp_path / "out" / "pretrained")  # missing parents are made
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert OmConfig.model_validate(json.loads((folder / "config.json").read_text())) == model.config
    header = (folder / "model.safetensors").read_bytes()[:9]
    assert header[8:9] == b"{"  # a safetensors header, not a pickle
    loaded = OmLLM.from_pretrained(folder)
    assert not loaded.training and loaded.config == model.config
    assert torch.equal(logits(loaded), logits(model))
    if model.config.tie_embeddings:
        assert loaded.head.weight is loaded.embed.weight
    model.save_pretrained(folder)  # saving again over the folder replaces it
    assert torch.equal(logits(OmLLM.from_pretrained(str(folder))), logits(model))


def test_the_codec_goes_with_the_model(tmp_path):
    from om.data import load_codec

    codec = chars_codec()
    model = tiny_model(vocab_size=codec.vocab_size)
    folder = model.save_pretrained(tmp_path / "p", codec=codec)
    assert load_codec(folder).vocab_size == codec.vocab_size
    assert torch.equal(logits(OmLLM.from_pretrained(folder), TOKENS % codec.vocab_size), logits(model, TOKENS % codec.vocab_size))
    with pytest.raises(OmUserError, match="codec: it has 257 ids but the model's vocab_size is"):
        model.save_pretrained(tmp_path / "q", codec=bytes_codec())


def test_loads_a_trained_run_and_its_checkpoint_folders(tmp_path):
    from om.data import prepare_dataset
    from om.train import Trainer
    from om.train.recipe import read_yaml, validate_recipe
    from tests.train_fixtures import JSON_SRC

    data = tmp_path / "data"
    prepare_dataset([JSON_SRC], data, codec="bytes", exclude=("__pycache__",))
    raw = read_yaml(Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml")
    raw["data"] = {"dataset": str(data)}
    raw["train"].update(max_steps=3, eval_every=0, checkpoint_every=0, log_every=1)
    raw["out"].update(sample_bytes=0, progress=False)
    result = Trainer(validate_recipe(raw, "tiny.yaml"), tmp_path / "run").run()
    tokens = TOKENS % 257
    expected = logits(load_checkpoint(result.checkpoint).model, tokens)
    for where in (tmp_path / "run", result.checkpoint, tmp_path / "run" / "checkpoints"):
        model = OmLLM.from_pretrained(where)
        assert type(model) is OmLLM and not model.training
        assert torch.equal(logits(model, tokens), expected)
    # a checkpoint converts to the pretrained layout and back
    again = OmLLM.from_pretrained(OmLLM.from_pretrained(tmp_path / "run").save_pretrained(tmp_path / "hf"))
    assert torch.equal(logits(again, tokens), expected)


def test_checkpoint_verification_is_kept(tmp_path):
    folder, _, _ = save_tiny_checkpoint(tmp_path / "ckpt")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(OmUserError, match="checksum mismatch"):
        OmLLM.from_pretrained(folder)


def test_a_subclass_gets_its_own_class(tmp_path):
    class Mine(OmLLM):
        pass

    folder, model, _ = save_tiny_checkpoint(tmp_path / "ckpt")
    for source in (folder, model.save_pretrained(tmp_path / "p")):
        mine = Mine.from_pretrained(source)
        assert type(mine) is Mine
        assert torch.equal(logits(mine, TOKENS), logits(model, TOKENS))


def test_a_hub_repo_id_loads_from_the_hub_cache(tmp_path):
    pytest.importorskip("huggingface_hub")
    model = tiny_model(seed=4)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-om"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model.save_pretrained(repo / "snapshots" / commit)
    loaded = OmLLM.from_pretrained("someone/tiny-om", cache_dir=tmp_path / "cache", local_files_only=True)
    assert torch.equal(logits(loaded), logits(model))
    with pytest.raises(OmUserError, match=r"^someone/other: no such local folder, and not available from the Hugging Face Hub") as err:
        OmLLM.from_pretrained("someone/other", cache_dir=tmp_path / "cache", local_files_only=True)
    assert "\n" not in str(err.value)


def test_refusals_are_one_line_user_errors(tmp_path, monkeypatch):
    model = tiny_model()
    good = model.save_pretrained(tmp_path / "good")

    def refused(source, pattern):
        with pytest.raises(OmUserError, match=pattern) as err:
            OmLLM.from_pretrained(source)
        assert "\n" not in str(err.value)

    refused(tmp_path / "missing" / "deep" / "folder", "no such folder")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    refused("someone/missing-model", "no such local folder; to fetch it as a Hugging Face Hub repo id install huggingface_hub")
    monkeypatch.undo()

    (tmp_path / "file").write_text("x")
    refused(tmp_path / "file", "not a checkpoint or run folder")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", r"neither a pretrained folder \(config.json \+ model.safetensors\) nor an Om checkpoint")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(model.config.to_json())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    refused(pickled, r"pytorch_model.bin: pickled weights are never loaded")
    (pickled / "config.json").unlink()
    refused(pickled, r"pytorch_model.bin: pickled weights are never loaded")

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text(model.config.to_json())
    torch.save(model.state_dict(), fake / "model.safetensors")  # a pickle under the safetensors name
    refused(fake, "model.safetensors: not a valid safetensors file")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    (bad / "config.json").write_text('{"dim": 32, "n_heads": 3, "typo": 1}')
    refused(bad, "config.json: not a valid model config")
    (bad / "config.json").write_text("{not json")
    refused(bad, "config.json: not a valid model config")
    (bad / "config.json").write_text(model.config.model_copy(update={"dim": 64}).to_json())
    refused(bad, "model.safetensors: weights do not fit .*config.json")

    with pytest.raises(OmUserError, match="exists and is not a folder"):
        model.save_pretrained(tmp_path / "file")
    ckpt, _, _ = save_tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(OmUserError, match="is an Om checkpoint folder"):
        model.save_pretrained(ckpt)
