"""The training loop: exact resume (reset and carry), signals, run-folder outputs, end to end CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from om.checkpoint import load_checkpoint, sha256_file
from om.errors import OmUserError
from om.train import Trainer
from om.train.recipe import read_yaml, validate_recipe
from omcli.app import app
from tests.train_fixtures import JSON_SRC, dataset, isolated_cache  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny.yaml"
TIMING = ("bytes_per_s", "elapsed_s")


def _recipe(dataset: Path, model: dict | None = None, **train):
    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    raw["model"].update(model or {})
    raw["train"].update(train)
    raw["out"].update(sample_bytes=0, progress=False)
    return validate_recipe(raw, "tiny.yaml")


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.mark.parametrize(
    "train",
    [
        dict(state="reset", max_steps=12, log_every=1, eval_every=4),
        dict(state="carry", grad_accum=2, max_steps=12, log_every=5, eval_every=6, checkpoint_every=3),
        dict(state="reset", optimizer="muon", max_steps=12, log_every=3, eval_every=6),
        # n-gram embeddings: the carried state holds the last token ids, which the resumed run must get back
        dict(state="carry", max_steps=12, log_every=4, eval_every=6, model={"ngram_sizes": [2, 4], "ngram_buckets": 32}),
    ],
    ids=["reset", "carry-accum", "muon", "carry-ngram"],
)
def test_resume_is_exact(tmp_path, dataset, train):
    whole = Trainer(_recipe(dataset, **train), tmp_path / "whole").run()
    assert whole.step == 12 and whole.interrupted is None

    first = Trainer(_recipe(dataset, **train), tmp_path / "split").run(stop_at_step=7)
    assert first.step == 7 and first.checkpoint.name == "step-0000007"
    second = Trainer(_recipe(dataset, **train), tmp_path / "split", resume="auto").run()
    assert second.resumed_from == first.checkpoint and second.step == 12

    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "whole")
    assert [m["event"] for m in _metrics(tmp_path / "whole")].count("eval") == 12 // train["eval_every"]
    # The final weights and optimizer state are bit for bit those of the uninterrupted run.
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert sha256_file(second.checkpoint / name) == sha256_file(whole.checkpoint / name)


def test_run_folder_layout(tmp_path, dataset):
    result = Trainer(_recipe(dataset, max_steps=12, checkpoint_every=4, keep_last=2), tmp_path / "run").run()
    run = tmp_path / "run"
    ckdir = run / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == ["latest", "step-0000008", "step-0000012"]
    assert (ckdir / "latest").read_text().strip() == "step-0000012" == result.checkpoint.name
    resolved = read_yaml(run / "recipe.yaml")
    assert resolved["model"]["vocab_size"] == 257 and resolved["train"]["max_steps"] == 12
    validate_recipe(resolved)  # the resolved recipe is itself a valid recipe
    trainer = json.loads((result.checkpoint / "trainer.json").read_text())
    assert trainer["step"] == 12 and trainer["state_mode"] == "reset" and len(trainer["recipe_hash"]) == 64
    assert trainer["dataset"]["fingerprint"] == load_checkpoint(run).dataset["fingerprint"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_records] == list(range(2, 13, 2))
    assert {"step", "bytes", "loss", "bpb", "lr", "bytes_per_s", "elapsed_s"} <= set(train_records[0])
    assert train_records[-1]["bytes"] == 12 * 4 * 16  # bytes codec: one byte per target
    assert records[-1]["event"] == "eval" and 0 < records[-1]["val_bpb"] < 9


def test_resume_refusals(tmp_path, dataset):
    Trainer(_recipe(dataset, max_steps=2), tmp_path / "run").run()
    with pytest.raises(OmUserError, match="already holds a run"):
        Trainer(_recipe(dataset, max_steps=2), tmp_path / "run", resume="never").run()
    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    raw["model"]["dim"] = 48
    with pytest.raises(OmUserError, match=r"model section differs from the checkpoint .*model.dim: 48 in the recipe vs 32"):
        Trainer(validate_recipe(raw), tmp_path / "run").run()
    raw["model"].update(dim=32, vocab_size=300)
    with pytest.raises(OmUserError, match="model.vocab_size: 300 does not match the bytes codec"):
        Trainer(validate_recipe(raw, "r.yaml"), tmp_path / "other").run()
    # Another optimizer: --resume auto refuses the changed key, --resume CKPT the optimizer state.
    with pytest.raises(OmUserError, match=r"train.optimizer: 'adamw' -> 'muon'"):
        Trainer(_recipe(dataset, max_steps=4, optimizer="muon"), tmp_path / "run").run()
    with pytest.raises(OmUserError, match=r"optimizer.safetensors: optimizer state of AdamW, but .* needs MuonAdamW"):
        Trainer(_recipe(dataset, max_steps=4, optimizer="muon"), tmp_path / "muon", resume=str(tmp_path / "run")).run()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_resume_matches(tmp_path, dataset, sig, code):
    run = tmp_path / "run"
    sets = ["train.decay=constant", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0"]
    # The child must use this process's thread count: CPU results differ between thread counts.
    sets.append(f"train.threads={torch.get_num_threads()}")
    args = [sys.executable, "-m", "omcli.app", "train", str(TINY), "--set", f"data.dataset={dataset}", "--set", "train.max_steps=100000"]
    for s in sets:
        args += ["--set", s]
    args += ["--out", str(run), "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "resume with --resume auto" in err
    ckpt = Path(out.strip())
    stopped = json.loads((ckpt / "trainer.json").read_text())["step"]
    assert ckpt.parent == run / "checkpoints" and _metrics(run)[-1]["step"] == stopped

    def recipe():
        r = _recipe(dataset, decay="constant", warmup_steps=0, log_every=1, eval_every=0, checkpoint_every=0, max_steps=stopped + 3)
        return r

    resumed = Trainer(recipe(), run).run()
    assert resumed.resumed_from == ckpt and resumed.step == stopped + 3
    Trainer(recipe(), tmp_path / "whole").run()
    assert _metrics(run) == _metrics(tmp_path / "whole")


def test_end_to_end_prepare_and_train_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = tmp_path / "ds"
    result = CliRunner().invoke(app, ["prepare", str(JSON_SRC), "-o", str(ds), "--exclude", "__pycache__", "--quiet"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["train", str(TINY), "--set", f"data.dataset={ds}", "--out", "run", "--no-progress"])
    assert result.exit_code == 0, result.output
    ckpt = Path(result.stdout.strip())
    assert ckpt == Path("run/checkpoints/step-0000020")
    assert "val bits/byte" in result.stderr and "sample:" in result.stderr
    loaded = load_checkpoint("run")
    assert loaded.path.resolve() == ckpt.resolve() and loaded.trainer["step"] == 20
    # Run again: the run is already complete; nothing is trained and the same checkpoint is printed.
    again = CliRunner().invoke(app, ["train", str(TINY), "--set", f"data.dataset={ds}", "--out", "run", "--no-progress"])
    assert again.exit_code == 0 and again.stdout.strip() == str(ckpt)
    assert "run: already complete at step 20" in again.stderr and "sample:" not in again.stderr


def test_sources_are_prepared_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", str(TINY), "--set", "train.max_steps=2", "--set", "out.sample_bytes=0", "--no-progress"]
    first = CliRunner().invoke(app, args + ["--out", "a"])
    assert first.exit_code == 0, first.output
    cached = list((tmp_path / "cache" / "datasets").iterdir())
    assert len(cached) == 1 and (cached[0] / "meta.json").is_file()
    stamp = (cached[0] / "meta.json").stat().st_mtime_ns
    second = CliRunner().invoke(app, args + ["--out", "b"])
    assert second.exit_code == 0, second.output
    assert (cached[0] / "meta.json").stat().st_mtime_ns == stamp
    ck = load_checkpoint("b")
    assert Path(ck.dataset["path"]) == cached[0]


def test_resume_from_another_checkpoint_into_a_new_folder(tmp_path, dataset):
    first = Trainer(_recipe(dataset, max_steps=4), tmp_path / "a").run()
    second = Trainer(_recipe(dataset, max_steps=6), tmp_path / "b", resume=str(tmp_path / "a")).run()
    assert second.resumed_from == first.checkpoint and second.step == 6
    assert [m["step"] for m in _metrics(tmp_path / "b") if m["event"] == "train"] == [6]
    assert second.val is not None and second.checkpoint == tmp_path / "b" / "checkpoints" / "step-0000006"
    # A finished run resumed again neither trains nor evaluates again.
    before = _metrics(tmp_path / "b")
    again = Trainer(_recipe(dataset, max_steps=6), tmp_path / "b").run()
    assert again.step == 6 and again.val == second.val and again.checkpoint == second.checkpoint
    assert again.already_complete and again.trained_steps == 0
    assert _metrics(tmp_path / "b") == before
