"""The resume rule of `om train --resume auto`: a run folder is continued only with the recipe it was
trained with (stop rules, logging, eval and checkpoint cadence, the machine aside); another recipe is
refused naming the keys, and a finished run says it is complete instead of standing in for a new one.
The dry run makes the same decision."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from om.checkpoint import sha256_file
from om.train import Trainer
from omcli.app import app
from tests.test_train_loop import TINY, _metrics, _recipe
from tests.train_fixtures import dataset, isolated_cache  # noqa: F401 (fixtures)


def _train(dataset: Path, *args: str):
    """`om train tiny.yaml` on `dataset` into ./run, quiet and short."""
    sets = ["data.dataset=" + str(dataset), "out.sample_bytes=0", "train.max_steps=4", "train.eval_every=0"]
    argv = ["train", str(TINY), "--out", "run", "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    return CliRunner().invoke(app, argv + list(args))


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_recipe_is_refused_naming_the_keys(tmp_path, monkeypatch, dataset):
    monkeypatch.chdir(tmp_path)
    first = _train(dataset)
    assert first.exit_code == 0, first.output
    ckpt = first.stdout.strip()
    assert ckpt == "run/checkpoints/step-0000004"
    before = _snapshot(tmp_path / "run")
    for dry in ([], ["--dry-run"]):
        result = _train(dataset, "--set", "train.lr=1e-2", "--set", "train.seed=3", *dry)
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr == (
            f"om train: error: {TINY}: run holds a run trained with another recipe (train.lr: 0.003 -> 0.01; train.seed: 0 -> 3); "
            "--resume auto continues a run only with the recipe it was trained with: use --out DIR for a new run, restore the old "
            f"values to continue this one, or --resume {ckpt} to continue it with the new ones\n"
        )
        assert _snapshot(tmp_path / "run") == before  # nothing trained, nothing written
    # The first fix the message names: a new run folder trains a new model.
    fresh = _train(dataset, "--set", "train.lr=1e-2", "--out", "other")
    assert fresh.exit_code == 0, fresh.output
    assert fresh.stdout.strip() == "other/checkpoints/step-0000004"
    assert sha256_file(Path(fresh.stdout.strip()) / "model.safetensors") != sha256_file(Path(ckpt) / "model.safetensors")


def test_a_finished_run_says_it_is_complete(tmp_path, monkeypatch, dataset):
    monkeypatch.chdir(tmp_path)
    first = _train(dataset)
    assert first.exit_code == 0, first.output
    before = _snapshot(tmp_path / "run" / "checkpoints")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    # The same recipe, with keys that may change between a run and its continuation changed too.
    again = _train(dataset, "--set", "train.log_every=1", "--set", "train.threads=1", "--set", "out.log_sinks=[jsonl, csv]")
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout  # the checkpoint path, as a script expects
    assert (
        "run: already complete at step 4 (train.max_steps 4 reached by run/checkpoints/step-0000004); nothing was trained; "
        "raise the stop rule to train further (e.g. --set train.max_steps=8), or use --out DIR for a new run"
    ) in again.stderr
    assert "done:" not in again.stderr and "Traceback" not in again.stderr
    assert _snapshot(tmp_path / "run" / "checkpoints") == before
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    dry = _train(dataset, "--dry-run")
    assert dry.exit_code == 0, dry.output
    complete = "run (resumes from run/checkpoints/step-0000004 at step 4; already complete: train.max_steps 4 reached, nothing to train)"
    assert complete in dry.stdout
    plan = json.loads(_train(dataset, "--dry-run", "--json").stdout)
    assert plan["resume_from"] == "run/checkpoints/step-0000004" and plan["resume"]["complete"] == "train.max_steps 4"


def test_a_raised_stop_rule_continues_training(tmp_path, dataset):
    done = Trainer(_recipe(dataset, max_steps=4, eval_every=0), tmp_path / "run").run()
    assert done.trained_steps == 4 and done.complete == "train.max_steps 4" and not done.already_complete
    same = Trainer(_recipe(dataset, max_steps=4, eval_every=0), tmp_path / "run").run()
    assert same.already_complete and same.trained_steps == 0 and same.checkpoint == done.checkpoint
    more = Trainer(_recipe(dataset, max_steps=6, eval_every=0), tmp_path / "run").run()
    assert more.resumed_from == done.checkpoint and more.step == 6 and more.trained_steps == 2 and not more.already_complete
    assert more.notes == ["recipe keys changed since the checkpoint: train.max_steps: 4 -> 6"]
    assert [m["step"] for m in _metrics(tmp_path / "run") if m["event"] == "train"] == [2, 4, 6]


def test_an_interrupted_run_continues_with_changed_cadence(tmp_path, dataset):
    train = dict(max_steps=8, log_every=1, eval_every=0)
    whole = Trainer(_recipe(dataset, **train), tmp_path / "whole").run()
    Trainer(_recipe(dataset, **train), tmp_path / "split").run(stop_at_step=3)
    resumed = Trainer(_recipe(dataset, **train, checkpoint_every=2, keep_last=0, threads=1), tmp_path / "split").run()
    assert resumed.resumed_from.name == "step-0000003" and resumed.step == 8
    assert sha256_file(resumed.checkpoint / "model.safetensors") == sha256_file(whole.checkpoint / "model.safetensors")


def test_an_explicit_checkpoint_continues_with_any_change(tmp_path, monkeypatch, dataset):
    """The third fix of the refusal: `--resume CKPT` continues that checkpoint with the new values."""
    monkeypatch.chdir(tmp_path)
    assert _train(dataset).exit_code == 0
    result = _train(dataset, "--set", "train.lr=1e-2", "--set", "train.max_steps=6", "--resume", "run/checkpoints/step-0000004")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "run/checkpoints/step-0000006"
    assert "note: recipe keys changed since the checkpoint: train.max_steps: 4 -> 6, train.lr: 0.003 -> 0.01" in result.stderr
