"""Long horizons: `train.curriculum` (sample length by step) and `train.activation_checkpointing`,
in carry mode above all: exact resume across a curriculum change, the same numbers with and
without checkpointing, contiguous streams whatever the lengths, one-line recipe errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from om.errors import OmUserError
from om.train import Trainer
from om.train.batches import BatchSampler, LengthSchedule
from om.train.recipe import read_yaml, validate_recipe
from omcli.app import app
from tests.test_train_loop import TINY, _metrics
from tests.train_fixtures import dataset, isolated_cache  # noqa: F401 (fixtures)

# tiny.yaml: segment_len 8, micro_batch_size 4. One segment per sample, then three from step 5.
CURRICULUM = [[0, 1], [5, 3]]


def _recipe(dataset: Path, **train):
    """tiny.yaml on `dataset`, quiet; its segments_per_sample left out when a curriculum is given."""
    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    if "curriculum" in train:
        raw["train"].pop("segments_per_sample")
    raw["train"].update(train)
    raw["out"].update(sample_bytes=0, progress=False)
    return validate_recipe(raw, "tiny.yaml")


def _tensors(checkpoint: Path) -> tuple[dict, dict]:
    return load_file(checkpoint / "model.safetensors"), load_file(checkpoint / "state.safetensors")


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_across_a_curriculum_change_is_exact(tmp_path, dataset):
    train = dict(state="carry", grad_accum=2, curriculum=CURRICULUM, activation_checkpointing=True, max_steps=8, log_every=1, eval_every=0)
    whole = Trainer(_recipe(dataset, **train), tmp_path / "whole").run()
    first = Trainer(_recipe(dataset, **train), tmp_path / "split").run(stop_at_step=3)  # before the change at step 5
    assert first.checkpoint.name == "step-0000003"
    second = Trainer(_recipe(dataset, **train), tmp_path / "split").run()
    assert second.resumed_from == first.checkpoint and second.step == 8

    weights, carried = _tensors(second.checkpoint)
    whole_weights, whole_carried = _tensors(whole.checkpoint)
    assert _equal(weights, whole_weights) and _equal(carried, whole_carried)
    assert any(k.startswith("carry.1.") for k in carried)  # both micro batches' state
    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "whole")
    # The samples followed the curriculum: 5 steps of 8 tokens, then 3 of 24, for 4 x 2 rows.
    tokens = [m["tokens"] for m in _metrics(tmp_path / "whole") if m["event"] == "train"]
    assert np.diff([0, *tokens]).tolist() == [4 * 2 * 8] * 5 + [4 * 2 * 24] * 3
    # The curriculum is part of the run: another one is refused by --resume auto.
    with pytest.raises(OmUserError, match=r"another recipe \(train.curriculum: \[\[0, 1\], \[5, 3\]\] -> \[\[0, 1\], \[6, 3\]\]\)"):
        Trainer(_recipe(dataset, **{**train, "curriculum": [[0, 1], [6, 3]]}), tmp_path / "split").run()


@pytest.mark.parametrize("state", ["carry", "reset"])
def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, dataset, monkeypatch, state):
    import om.model.llm

    calls = []
    original = om.model.llm.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(om.model.llm, "checkpoint", counted)
    train = dict(state=state, curriculum=[[0, 2], [2, 3]], max_steps=4, log_every=1, eval_every=0)
    off = Trainer(_recipe(dataset, **train), tmp_path / "off").run()
    assert not calls
    on_trainer = Trainer(_recipe(dataset, **train, activation_checkpointing=True), tmp_path / "on")
    on = on_trainer.run()
    assert calls and on_trainer.model.activation_checkpointing  # it really recomputed segments
    assert _metrics(tmp_path / "on") == _metrics(tmp_path / "off")  # the same losses, gradient norms, ...
    assert _equal(load_file(on.checkpoint / "model.safetensors"), load_file(off.checkpoint / "model.safetensors"))
    # It may change when a run is continued (--resume auto does not refuse it).
    more = Trainer(_recipe(dataset, **{**train, "max_steps": 5}), tmp_path / "on").run()
    assert more.resumed_from == on.checkpoint and more.step == 5
    assert more.notes == [
        "recipe keys changed since the checkpoint: train.max_steps: 4 -> 5, train.activation_checkpointing: True -> False"
    ]


def test_carry_streams_are_contiguous_under_a_curriculum():
    tokens = np.arange(3_000, dtype=np.int64)  # every token is its own position
    lengths = LengthSchedule([(0, 16), (3, 48), (7, 8), (10, 32)])
    assert [lengths.before(s) for s in range(14)] == [sum(lengths.at(k) for k in range(s)) for s in range(14)]
    sampler = BatchSampler(tokens, lengths, 3, 2, seed=0, mode="carry")
    assert sampler.span == len(tokens) - 48  # every window of the longest samples fits
    wraps = 0
    for micro in range(2):
        previous = sampler.batch(0, micro)
        assert previous.reset.all()
        for step in range(1, 150):
            batch = sampler.batch(step, micro)
            T = lengths.at(step)
            assert batch.inputs.shape == (3, T)
            assert np.array_equal(batch.inputs[:, 0].numpy(), batch.starts)  # the window starts where it says
            assert (batch.starts + T + 1 <= len(tokens)).all()
            ended = previous.starts + lengths.at(step - 1)  # where each row's previous window ended
            continued = batch.starts == ended
            assert (continued | batch.reset).all() and not (continued & batch.reset).any()
            wraps += int(batch.reset.sum())
            previous = batch
    assert wraps > 0
    # One length is the schedule of one entry; stream positions are those of a run without curriculum.
    plain, single = BatchSampler(tokens, 16, 3, 2, 0, "carry"), BatchSampler(tokens, [(0, 16)], 3, 2, 0, "carry")
    for step in (0, 1, 57, 400):
        assert np.array_equal(plain.positions(step, 1)[0], (plain.stream_starts[3:] + 16 * step) % plain.span)
        assert all(np.array_equal(a, b) for a, b in zip(plain.positions(step, 1), single.positions(step, 1)))
    # Reset mode: each step's windows have that step's length.
    reset = BatchSampler(tokens, lengths, 2, 1, 0, "reset")
    assert [reset.batch(s, 0).inputs.shape[1] for s in (0, 3, 7, 10)] == [16, 48, 8, 32]


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["train.curriculum=[[1, 2], [5, 4]]", "train.segments_per_sample=4"],
         "--set train.curriculum=[[1, 2], [5, 4]]: train.curriculum: the first entry must start at step 0 (got [1, 2])"),
        (["train.curriculum=[[0, 2], [5, 4], [5, 8]]", "train.segments_per_sample=8"],
         "--set train.curriculum=[[0, 2], [5, 4], [5, 8]]: train.curriculum: steps must be strictly increasing (5 then 5)"),
        (["train.curriculum=[[0, 2], [5, 0], [9, 4]]", "train.segments_per_sample=4"],
         "--set train.curriculum=[[0, 2], [5, 0], [9, 4]]: train.curriculum: segments_per_sample must be at least 1 (got 0 at step 5)"),
        (["train.curriculum=[]"],
         "--set train.curriculum=[]: train.curriculum: is empty; give [[0, segments], [step, segments], ...] or leave it out"),
        (["train.curriculum=[[0, 2], [5, 4]]"],  # tiny.yaml sets segments_per_sample: 2
         "--set train.curriculum=[[0, 2], [5, 4]]: train: train.segments_per_sample (2) differs from the last train.curriculum "
         "entry (4 segments); leave train.segments_per_sample out (the curriculum sets it) or set it to 4"),
    ],
    ids=["first-step", "increasing", "segments", "empty", "segments_per_sample"],
)
def test_bad_curricula_are_one_line_errors(tmp_path, monkeypatch, dataset, sets, expected):
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(TINY), "--set", f"data.dataset={dataset}", "--out", "run", "--no-progress"]
    for dry in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, argv + [x for s in sets for x in ("--set", s)] + dry)
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr == f"om train: error: {expected}\n"
    assert not (tmp_path / "run").exists()


def test_dry_run_shows_the_curriculum(tmp_path, monkeypatch, dataset):
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(TINY), "--set", f"data.dataset={dataset}", "--dry-run", "--set", "train.curriculum=[[0, 1], [5, 3]]",
            "--set", "train.segments_per_sample=3", "--set", "train.activation_checkpointing=true"]
    text = CliRunner().invoke(app, argv)
    assert text.exit_code == 0, text.output
    assert "curriculum   from step 0: 1 segments (32 tokens/step), from step 5: 3 segments (96 tokens/step)" in text.stdout
    assert "tokens/step  32\n" in text.stdout and "activation checkpointing" in text.stdout
    plan = json.loads(CliRunner().invoke(app, argv + ["--json"]).stdout)
    assert [e["seq_len"] for e in plan["schedule"]] == [8, 24] and plan["activation_checkpointing"] is True
    from om.model.config import OmConfig
    from om.model.sizing import training_estimate

    longest = training_estimate(OmConfig.model_validate(plan["model"]), 4, 24, activation_checkpointing=True)
    assert plan["memory"]["activations"] == longest.activations  # the estimate of the longest samples
    assert plan["recipe"]["train"]["curriculum"] == [[0, 1], [5, 3]]


def test_compile_on_cpu_gets_a_note(tmp_path, dataset, monkeypatch):
    import om.train.loop

    monkeypatch.setattr(om.train.loop.torch, "compile", lambda model: model)  # what is noted, not compiled

    def notes(name: str, **train) -> list[str]:
        return Trainer(_recipe(dataset, max_steps=1, eval_every=0, **train), tmp_path / name).run().notes

    assert any(note.startswith("train.compile on CPU:") and "eager" in note for note in notes("on", compile=True))
    assert not any("train.compile" in note for note in notes("off"))
