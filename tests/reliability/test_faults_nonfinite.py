"""A training loss (or gradient) that becomes NaN or inf.

`train.on_nonfinite_loss: stop` (the default): the run ends with one line naming the step, exit
code 1, and no checkpoint of that step; the checkpoints on disk are all finite. `skip`: the
optimizer step is not applied, the skip is counted (metrics, trainer.json, the summary), and the run
stops once more than `train.max_skips` steps were skipped.

The divergence is real where it can be (a learning rate of 1e6 blows the weights up within two
steps); a NaN on chosen steps only, to see training go on after a skip, comes from wrapping the
loss function in the test.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import om.train.loop as loop
from om.checkpoint import MODEL_FILE, OPTIMIZER_FILE, list_checkpoints, sha256_file, step_dir_name
from om.errors import OmRunError, OmUserError
from om.train import Trainer
from omcli.app import app
from tests.reliability.fault_tools import prepare_json_dataset, tiny_recipe, train_args

DIVERGE = ("train.lr=1e6", "train.min_lr=0", "train.warmup_steps=0", "train.decay=constant", "train.max_steps=30")
EVERY_STEP = ("train.checkpoint_every=1", "train.keep_last=0", "train.log_every=1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_json_dataset(tmp_path_factory.mktemp("data") / "json-bytes")


def _om(*args: str):
    return CliRunner().invoke(app, list(args))


def _records(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _all_finite(folder: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for f in (MODEL_FILE, OPTIMIZER_FILE) for t in load_file(str(folder / f)).values())


def _trained_4_steps(dataset: Path, run: Path) -> Path:
    result = _om(*train_args(dataset, run, "train.max_steps=4", *EVERY_STEP))
    assert result.exit_code == 0, result.output
    return run / "checkpoints" / step_dir_name(4)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, dataset):
    run = tmp_path / "run"
    ckpt = _trained_4_steps(dataset, run)
    result = _om(*train_args(dataset, run, *DIVERGE, *EVERY_STEP), "--resume", str(ckpt))
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    line = result.stderr.splitlines()[-1]
    m = re.fullmatch(
        r"om train: error: (.+): step (\d+): the (training loss|gradient norm) became (-?inf|nan); training stopped "
        r"\(the last good checkpoint is (.+)\); lower train\.lr and continue with --resume \5, or set "
        r"train\.on_nonfinite_loss: skip",
        line,
    )
    assert m, line
    step, kept = int(m.group(2)), Path(m.group(5))
    # The step named is the one after the last logged step; it was neither logged nor saved.
    assert [r["step"] for r in _records(run, "train")] == list(range(1, step))
    checkpoints = list_checkpoints(run / "checkpoints")
    assert step > 5 and checkpoints[-1] == kept == run / "checkpoints" / step_dir_name(step - 1)
    assert (run / "checkpoints" / "latest").read_text().strip() == kept.name
    assert all(_all_finite(c) for c in checkpoints)  # no checkpoint holds NaN weights


def test_skip_counts_skipped_steps_and_stops_past_max_skips(tmp_path, dataset):
    run = tmp_path / "run"
    ckpt = _trained_4_steps(dataset, run)
    skip = ("train.on_nonfinite_loss=skip", "train.max_skips=3")
    result = _om(*train_args(dataset, run, *DIVERGE, *EVERY_STEP, *skip), "--resume", str(ckpt))
    assert result.exit_code == 1, result.output
    skips = _records(run, "skip")
    first = skips[0]["step"]
    assert [(r["step"], r["skipped"]) for r in skips] == [(first + i, i + 1) for i in range(4)]
    stopped = rf"step {first + 3}: the .* became .*; 4 steps skipped, more than train\.max_skips \(3\); training stopped"
    assert re.search(stopped, result.stderr)
    assert result.stderr.count(" skipped (") == 3 and "Traceback" not in result.output
    # A skipped step changes neither the weights nor the optimizer state.
    ckdir = run / "checkpoints"
    for step in range(first, first + 3):
        for name in (MODEL_FILE, OPTIMIZER_FILE):
            assert sha256_file(ckdir / step_dir_name(step) / name) == sha256_file(ckdir / step_dir_name(first - 1) / name)
    assert json.loads((ckdir / step_dir_name(first + 2) / "trainer.json").read_text())["skipped_steps"] == 3
    assert all(_all_finite(c) for c in list_checkpoints(ckdir))


@pytest.fixture
def nan_at(monkeypatch):
    """Make the training loss NaN at the given (1-based) steps."""
    bad: set[int] = set()
    current = {"step": 0}
    train_step, loss_fn = loop.Trainer._train_step, loop.next_token_loss

    def patched_train_step(self, lr):
        current["step"] = self.p.step + 1
        return train_step(self, lr)

    def patched_loss(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        return loss * math.nan if current["step"] in bad else loss

    monkeypatch.setattr(loop.Trainer, "_train_step", patched_train_step)
    monkeypatch.setattr(loop, "next_token_loss", patched_loss)
    return bad


def test_transient_nan_is_skipped_and_training_goes_on(tmp_path, dataset, nan_at):
    nan_at.update({3, 7})
    whole = Trainer(tiny_recipe(dataset, on_nonfinite_loss="skip", max_skips=2), tmp_path / "whole").run()
    assert whole.step == 10 and whole.skipped == 2
    run = tmp_path / "whole"
    assert [(r["step"], r["skipped"]) for r in _records(run, "skip")] == [(3, 1), (7, 2)]
    assert [r["skipped"] for r in _records(run, "train")] == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert all(math.isfinite(r["loss"]) for r in _records(run, "train"))
    ck = lambda step: run / "checkpoints" / step_dir_name(step) / MODEL_FILE  # noqa: E731
    assert sha256_file(ck(3)) == sha256_file(ck(2)) and sha256_file(ck(4)) != sha256_file(ck(3))

    # Interrupted after the first skip and resumed: the count carries over, the result is the same.
    first = Trainer(tiny_recipe(dataset, on_nonfinite_loss="skip", max_skips=2), tmp_path / "split").run(stop_at_step=5)
    assert first.skipped == 1
    second = Trainer(tiny_recipe(dataset, on_nonfinite_loss="skip", max_skips=2), tmp_path / "split").run()
    assert second.skipped == 2 and second.step == 10
    assert sha256_file(second.checkpoint / MODEL_FILE) == sha256_file(whole.checkpoint / MODEL_FILE)


def test_nan_stops_by_default_without_saving_that_step(tmp_path, dataset, nan_at):
    nan_at.add(3)
    stopped = r"step 3: the training loss became nan; training stopped \(the last good checkpoint is .*step-0000002\)"
    with pytest.raises(OmRunError, match=stopped):
        Trainer(tiny_recipe(dataset), tmp_path / "run").run()
    assert [c.name for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == [step_dir_name(1), step_dir_name(2)]


def test_recipe_keys_are_validated(dataset):
    with pytest.raises(OmUserError, match="train.on_nonfinite_loss"):
        tiny_recipe(dataset, on_nonfinite_loss="ignore")
    with pytest.raises(OmUserError, match="train.max_skips"):
        tiny_recipe(dataset, max_skips=-1)
