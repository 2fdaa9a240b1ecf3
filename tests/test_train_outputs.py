"""What a run leaves for people and tools: progress lines in a log file, the log sinks (metrics.jsonl,
CSV, TensorBoard) kept consistent across a resume, and the model card of the final checkpoint."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from om.checkpoint import load_checkpoint
from om.data import open_dataset
from om.model.sizing import parameter_count
from om.train import Trainer
from om.train.progress import ProgressDisplay, format_duration
from omcli.app import app
from tests.test_train_loop import TIMING, TINY, _metrics, _recipe
from tests.train_fixtures import dataset, isolated_cache  # noqa: F401 (fixtures)

LINE = re.compile(
    r"^step (\d+)/12 \| loss (\d+\.\d{4}) \| (\d+\.\d{4}) bits/byte \| lr (\S+) \| ([\d,]+|-) bytes/s \| (\d+)% \| ETA (\S+)$"
)


# Progress --------------------------------------------------------------------------------------------
def test_progress_lines_when_stderr_is_a_file(tmp_path, dataset):
    """Under nohup or Slurm (stderr a file), one plain line per train.log_every steps, as they happen."""
    log = tmp_path / "train.log"
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE")}
    args = [sys.executable, "-m", "omcli.app", "train", str(TINY), "--out", str(tmp_path / "run")]
    for s in (f"data.dataset={dataset}", "train.max_steps=12", "train.log_every=3", "train.eval_every=6", "out.sample_bytes=0"):
        args += ["--set", s]
    with open(log, "w") as err:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=err, text=True, cwd=tmp_path, env=env, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text
    lines = text.splitlines()
    progress = [LINE.match(line) for line in lines if line.startswith("step ") and " | " in line]
    assert all(progress), lines
    assert [int(m.group(1)) for m in progress] == [3, 6, 9, 12]
    records = [m for m in _metrics(tmp_path / "run") if m["event"] == "train"]
    for m, record in zip(progress, records):  # the figures of the metrics.jsonl record of that step
        assert float(m.group(2)) == pytest.approx(record["loss"], abs=1e-4)
        assert float(m.group(3)) == pytest.approx(record["bpb"], abs=1e-4)
        assert int(m.group(6)) == 100 * int(m.group(1)) // 12
    assert progress[-1].group(7) == "0s"
    evals = [line for line in lines if re.match(r"^step (6|12): val bits/byte \d+\.\d{4} ", line)]
    assert len(evals) == 2
    # Each eval line comes right after the progress line of its step.
    assert lines.index(evals[0]) == lines.index(progress[1].group(0)) + 1
    assert "\r" not in text and "\x1b" not in text  # no bar, no terminal codes


def test_progress_bar_on_a_terminal_and_nothing_when_off():
    from rich.console import Console

    terminal = ProgressDisplay(True, Console(file=io.StringIO(), force_terminal=True))
    assert terminal.progress is not None and not terminal.plain
    piped = ProgressDisplay(True, Console(file=io.StringIO(), force_terminal=False))
    assert piped.progress is None and piped.plain
    off = ProgressDisplay(False, Console(file=io.StringIO(), force_terminal=False))
    assert off.progress is None and not off.plain
    assert [format_duration(s) for s in (4.4, 192, 7500)] == ["4s", "3m12s", "2h05m"]


# Log sinks -------------------------------------------------------------------------------------------
def _interrupted_and_resumed(dataset, run: Path, sinks: list[str]):
    """Train 10 steps (checkpoints at 4 and 8), lose the final checkpoint, resume from step 8: the
    sinks then hold records of steps 9 and 10 from the first run, which the resume must replace."""
    train = dict(max_steps=10, log_every=1, eval_every=2, checkpoint_every=4, keep_last=0)
    recipe = _recipe(dataset, **train)
    recipe.out.log_sinks = sinks
    Trainer(recipe, run).run()
    shutil.rmtree(run / "checkpoints" / "step-0000010")
    recipe = _recipe(dataset, **train)
    recipe.out.log_sinks = sinks
    result = Trainer(recipe, run).run()
    assert result.resumed_from.name == "step-0000008" and result.step == 10
    return result


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _as_csv(record: dict) -> dict:
    """A metrics.jsonl record as its CSV row would read it back (text, nested keys flattened)."""
    out = {}
    for key, value in record.items():
        if key == "event":
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": str(v) for k, v in value.items()})
        else:
            out[key] = "" if value is None else repr(value) if isinstance(value, float) else str(value)
    return out


def test_csv_rows_equal_the_jsonl_records_across_a_resume(tmp_path, dataset):
    run = tmp_path / "run"
    _interrupted_and_resumed(dataset, run, ["jsonl", "csv"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for event, steps in (("train", list(range(1, 11))), ("eval", [2, 4, 6, 8, 10])):
        rows = _csv(run / f"{event}.csv")
        assert [int(r["step"]) for r in rows] == steps  # the lost steps 9, 10 once, from the resumed run
        assert rows == [_as_csv(r) for r in records if r["event"] == event]
        assert [float(r["loss" if event == "train" else "val_bpb"]) for r in rows] == [
            r["loss" if event == "train" else "val_bpb"] for r in records if r["event"] == event
        ]
    assert not (run / "skip.csv").exists() and not (run / "tensorboard").exists()
    # The resumed run logged what the uninterrupted one does.
    whole = Trainer(_recipe(dataset, max_steps=10, log_every=1, eval_every=2, checkpoint_every=4, keep_last=0), tmp_path / "whole").run()
    assert _metrics(run) == _metrics(whole.run_dir)


def test_csv_only_and_a_fresh_start_replaces_old_rows(tmp_path, dataset):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "train.csv").write_text("step,loss\n99,1.0\n")  # a run that never reached a checkpoint
    recipe = _recipe(dataset, max_steps=4, eval_every=0)
    recipe.out.log_sinks = ["csv"]
    Trainer(recipe, run).run()
    assert not (run / "metrics.jsonl").exists()
    assert [r["step"] for r in _csv(run / "train.csv")] == ["2", "4"]


def test_tensorboard_scalars_across_a_resume(tmp_path, dataset):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    _interrupted_and_resumed(dataset, run, ["jsonl", "tensorboard"])
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag, event, field in (("train/loss", "train", "loss"), ("train/bpb", "train", "bpb"), ("train/lr", "train", "lr"),
                              ("eval/val_bpb", "eval", "val_bpb"), ("eval/val_loss", "eval", "val_loss")):
        scalars = events.Scalars(tag)
        expected = [r for r in records if r["event"] == event]
        assert [s.step for s in scalars] == [r["step"] for r in expected], tag  # steps 9 and 10 once: purged, then rewritten
        assert [s.value for s in scalars] == pytest.approx([r[field] for r in expected], rel=1e-6), tag


def test_tensorboard_not_installed_is_a_one_line_error(tmp_path, monkeypatch, dataset):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "tensorboard" else real(name, *a, **k))
    monkeypatch.chdir(tmp_path)
    for dry in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["train", str(TINY), "--out", "run", "--set", "out.log_sinks=[jsonl, tensorboard]", *dry])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(
            f"om train: error: {TINY}: out.log_sinks: tensorboard needs the tensorboard package, which is not installed; "
            "install it with `pip install tensorboard`"
        )
        assert list(tmp_path.iterdir()) == []  # no run folder, no data prepared


# The model card ----------------------------------------------------------------------------------------
def _card_value(card: str, name: str) -> str:
    m = re.search(rf"^\| {re.escape(name)} \| (.*) \|$", card, re.M)
    assert m, name
    return m.group(1)


def _number(text: str) -> float:
    return float(re.match(r"[\d,.]+", text).group(0).replace(",", ""))


def test_the_final_checkpoint_has_a_model_card(tmp_path, monkeypatch, dataset):
    monkeypatch.chdir(tmp_path)
    # checkpoint_every divides max_steps: the last periodic save is the final one, with the final eval and the card.
    result = Trainer(_recipe(dataset, max_steps=6, checkpoint_every=3, keep_last=0, eval_every=0), Path("run")).run()
    ckpt = result.checkpoint
    assert ckpt == Path("run/checkpoints/step-0000006")
    assert not (ckpt.parent / "step-0000003" / "README.md").exists()  # not a final checkpoint
    card = (ckpt / "README.md").read_text()
    trainer = json.loads((ckpt / "trainer.json").read_text())
    assert "README.md" not in trainer["files"]
    last = trainer["last_eval"]
    assert last["step"] == 6

    loaded = load_checkpoint(ckpt)
    ds = open_dataset(dataset)
    assert _number(_card_value(card, "parameters")) == parameter_count(loaded.config)
    assert _card_value(card, "codec") == "bytes (257 ids)"
    assert _card_value(card, "steps") == "6 (stopped by train.max_steps 6)"
    assert _number(_card_value(card, "bytes seen")) == trainer["bytes_seen"] == 6 * 4 * 16
    assert _card_value(card, "dataset fingerprint").startswith(f"`{ds.fingerprint}`") and ds.fingerprint == loaded.dataset["fingerprint"]
    size = _card_value(card, "dataset size")
    assert [int(n.replace(",", "")) for n in re.findall(r"[\d,]+(?= tokens)", size)] == [ds.num_tokens("train"), ds.num_tokens("val")]
    assert _number(_card_value(card, "val bits/byte")) == pytest.approx(last["val_bpb"], abs=1e-6)
    sl = last["val_slice"]
    assert _card_value(card, "val slice") == f"the first {sl['tokens']} tokens of the val split as {sl['streams']} streams"
    recipe = yaml.safe_load(re.search(r"```yaml\n(.*?)```", card, re.S).group(1))
    assert recipe == trainer["recipe"]
    for use in (f"om eval {ckpt} FILE", f"om eval {ckpt} --val-tokens {sl['tokens']} --val-streams {sl['streams']}",
                f"om sample {ckpt} --prompt 'def '", f'load_checkpoint("{ckpt}")'):
        assert use in card

    # om eval and om sample read the checkpoint as before, and repeat the card's figure.
    (ckpt / "README.md").write_text(card + "\nNotes added by hand.\n")  # free to edit
    repeat = ["--val-tokens", str(sl["tokens"]), "--val-streams", str(sl["streams"])]
    evaluated = CliRunner().invoke(app, ["eval", str(ckpt), *repeat, "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["bits_per_byte"] == pytest.approx(last["val_bpb"], abs=1e-6)
    sampled = CliRunner().invoke(app, ["sample", str(ckpt), "--prompt", "def ", "--max-bytes", "8", "--seed", "0"])
    assert sampled.exit_code == 0, sampled.output
    assert {k: v for k, v in _metrics(Path("run"))[-1].items() if k not in TIMING}["event"] == "eval"
