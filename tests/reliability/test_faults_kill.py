"""SIGKILL of `om train` at chosen and random moments (during a step, in the middle of writing each
file of a checkpoint, before its rename, before `latest`, while pruning, mid-way through a metrics
line): `--resume auto` always continues from the newest complete checkpoint, no partial checkpoint
is ever visible to a reader, and the final weights equal those of an uninterrupted run.

The moments are chosen by a seeded generator (OM_FAULT_SEED, default 0). Each killed child is a
fork running the real CLI; instrumentation installed in the child only pauses it at the chosen
moment (after leaving a half-written file where that is the point) so the kill lands there.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from om.atomic import parse_temp_name
from om.checkpoint import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINER_FILE,
    load_checkpoint,
    sha256_file,
    step_dir_name,
    verify_checkpoint,
)
from tests.reliability import fault_tools
from tests.reliability.fault_tools import fork_om, metrics, pause, prepare_json_dataset, scratch_folder, train_args

EVERY = 2  # train.checkpoint_every
MAX_STEPS = 30
SETS = (
    f"train.max_steps={MAX_STEPS}",
    f"train.checkpoint_every={EVERY}",
    "train.keep_last=2",
    "train.log_every=1",
    "train.warmup_steps=3",
)
# Ten kills: the moments inside a checkpoint write are hit on purpose, two more land at random times.
KINDS = ["step", "write:model", "write:optimizer", "write:trainer", "rename", "latest", "prune", "metrics", "time", "time"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_json_dataset(tmp_path_factory.mktemp("data") / "json-bytes")


def _target(kind: str, resumed_at: int, rng: random.Random) -> int:
    """The step at which to kill, given the step the child resumes from."""
    if kind in ("step", "metrics", "time"):
        return resumed_at + rng.randint(1, EVERY)
    if kind == "prune":  # keep_last=2: the save two checkpoints on deletes the resumed-from one
        return resumed_at + 2 * EVERY if resumed_at else 3 * EVERY
    return resumed_at + EVERY  # the next checkpoint


def _writing(name: str) -> str | None:
    """The folder a temporary name holds a new version of (None: not a temporary, or an old version)."""
    temp = parse_temp_name(name)
    return temp.target if temp is not None and not temp.old else None


def _being_deleted(name: str) -> bool:
    """Whether `name` is a checkpoint folder, or the hidden name one is given before it is deleted."""
    temp = parse_temp_name(name)
    return name.startswith("step-") or (temp is not None and temp.old and temp.target.startswith("step-"))


def _instrument(kind: str, step: int):
    """A setup function for the child: pause at `kind` of step `step` (and be killed there)."""

    def setup() -> None:
        import om.checkpoint as ck
        import om.train.loop as loop
        import om.train.run_folder as run_folder

        tag, name = f"{kind}@{step}", step_dir_name(step)
        current = {"step": 0}
        train_step = loop.Trainer._train_step

        def patched_train_step(self, lr):
            current["step"] = self.p.step + 1  # the number of the step being computed
            if kind == "time" and current["step"] == step:
                fault_tools.notify(tag)  # no pause: the parent kills after a random delay
            return train_step(self, lr)

        loop.Trainer._train_step = patched_train_step
        if kind == "step":
            clip = torch.nn.utils.clip_grad_norm_

            def patched_clip(*args, **kwargs):  # after backward, before the optimizer step
                if current["step"] == step:
                    pause(tag)
                return clip(*args, **kwargs)

            torch.nn.utils.clip_grad_norm_ = patched_clip
        elif kind.startswith("write:"):
            file = {"model": MODEL_FILE, "optimizer": OPTIMIZER_FILE, "trainer": TRAINER_FILE}[kind.split(":")[1]]

            def cut(path) -> None:
                path = Path(path)
                if path.name == file and _writing(path.parent.name) == name:
                    os.truncate(path, path.stat().st_size // 2)  # the kill lands mid-file
                    pause(tag)

            save_weights, save_file, write_json = ck.save_weights, ck.save_file, ck._write_json
            ck.save_weights = lambda model, path: (save_weights(model, path), cut(path))[0]
            ck.save_file = lambda tensors, path, metadata=None: (save_file(tensors, path, metadata=metadata), cut(path))[0]
            ck._write_json = lambda path, data: (write_json(path, data), cut(path))[0]
        elif kind == "rename":
            replace = os.replace

            def patched_replace(src, dst, *args, **kwargs):
                if _writing(Path(src).name) == name:
                    pause(tag)  # every file written and fsynced, the folder not yet renamed
                return replace(src, dst, *args, **kwargs)

            os.replace = patched_replace
        elif kind == "latest":
            write_latest = ck.write_latest

            def patched_latest(folder, checkpoint):
                if Path(checkpoint).name == name:
                    pause(tag)  # the checkpoint is in place, `latest` still names the previous one
                return write_latest(folder, checkpoint)

            ck.write_latest = patched_latest
        elif kind == "prune":
            rmtree = shutil.rmtree

            def patched_rmtree(path, *args, **kwargs):
                p = Path(path)
                # Whatever pruning deletes (here a renamed-away folder; a step folder itself would
                # be cut the same way, and then fail the completeness check below).
                if _being_deleted(p.name) and current["step"] == step:
                    for f in p.iterdir():  # the worst half: every file gone but trainer.json
                        if f.name != TRAINER_FILE:
                            f.unlink()
                    pause(tag)
                return rmtree(path, *args, **kwargs)

            shutil.rmtree = patched_rmtree
        elif kind == "metrics":
            append = run_folder.RunFolder.append_metrics

            def patched_append(self, record):
                if record.get("event") == "train" and record.get("step") == step:
                    line = json.dumps(record) + "\n"
                    with open(self.metrics, "a") as f:
                        f.write(line[: len(line) // 2])
                    pause(tag)
                return append(self, record)

            run_folder.RunFolder.append_metrics = patched_append

    return setup


def _complete_checkpoints(ckdir: Path) -> int:
    """Check that every visible checkpoint folder is complete; return the newest step (0: none)."""
    steps = []
    for p in ckdir.iterdir() if ckdir.is_dir() else []:
        if p.name.startswith("step-"):
            verify_checkpoint(p)  # raises on a partial or damaged folder
            steps.append(int(p.name.removeprefix("step-")))
    if steps:
        load_checkpoint(ckdir.parent)  # what `om eval RUN` reads (via `latest`) is complete too
    return max(steps, default=0)


@pytest.fixture
def scratch(tmp_path):
    with scratch_folder(tmp_path) as folder:
        yield folder


def test_sigkill_ten_times_then_resume_equals_uninterrupted(tmp_path, scratch, dataset):
    rng = random.Random(int(os.environ.get("OM_FAULT_SEED", "0")))
    kinds = KINDS[:]
    rng.shuffle(kinds)
    run, logs = scratch / "run", tmp_path / "logs"
    ckdir = run / "checkpoints"
    resumed_at = 0
    for i, kind in enumerate(kinds):
        step = _target(kind, resumed_at, rng)
        assert step < MAX_STEPS
        child = fork_om(train_args(dataset, run, *SETS), logs, _instrument(kind, step), name=f"kill{i}")
        message = child.wait_message()
        assert message == f"{kind}@{step}", f"kill {i} ({kind}@{step}): the child did not get there\n{child.err()}"
        if kind == "time":
            time.sleep(rng.uniform(0.0, 0.05))  # somewhere in this step, or the checkpoint after it
        child.kill()
        assert child.status == -signal.SIGKILL, f"kill {i} ({kind}@{step}) came too late\n{child.err()}"
        resumed = f"resuming from {ckdir / step_dir_name(resumed_at)} at step {resumed_at}"
        assert (resumed in child.err()) == (resumed_at > 0), child.err()
        resumed_at = _complete_checkpoints(ckdir)

    final = fork_om(train_args(dataset, run, *SETS), logs, name="final")
    assert final.wait() == 0, final.err()
    assert f"resuming from {ckdir / step_dir_name(resumed_at)} at step {resumed_at}" in final.err()
    assert "Traceback" not in final.err()
    whole = fork_om(train_args(dataset, scratch / "whole", *SETS), logs, name="whole")
    assert whole.wait() == 0, whole.err()

    done, reference = Path(final.out().strip()), Path(whole.out().strip())
    assert done.name == reference.name == step_dir_name(MAX_STEPS)
    for file in (MODEL_FILE, OPTIMIZER_FILE):
        got, want = load_file(str(done / file)), load_file(str(reference / file))
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"{file}: {key} differs from the uninterrupted run"
    assert metrics(run) == metrics(scratch / "whole")  # no half line, no record from a lost step
    assert sorted(p.name for p in ckdir.iterdir() if p.name.startswith(".")) == []  # leftovers removed


def test_resume_auto_passes_over_a_damaged_newest_checkpoint(scratch, dataset):
    """What a kill cannot leave but a power loss or a bad disk can: a newest checkpoint whose files
    do not match their checksums. `--resume auto` takes the newest complete one instead, says so,
    and trains the lost steps again to the same weights."""
    from om.errors import OmUserError
    from om.train import Trainer
    from tests.reliability.fault_tools import tiny_recipe

    run = scratch / "run"
    Trainer(tiny_recipe(dataset, max_steps=4, checkpoint_every=2), run).run()
    newest = run / "checkpoints" / step_dir_name(4)
    weights = sha256_file(newest / MODEL_FILE)
    os.truncate(newest / MODEL_FILE, 100)
    result = Trainer(tiny_recipe(dataset, max_steps=4, checkpoint_every=2), run).run()
    assert result.resumed_from == run / "checkpoints" / step_dir_name(2)
    assert any(n.startswith("passed over an incomplete checkpoint") and "step-0000004" in n for n in result.notes)
    assert result.checkpoint == newest
    assert sha256_file(newest / MODEL_FILE) == weights

    for folder in (run / "checkpoints").glob("step-*"):
        os.truncate(folder / MODEL_FILE, 100)
    with pytest.raises(OmUserError, match="no complete checkpoint to resume from"):
        Trainer(tiny_recipe(dataset, max_steps=4, checkpoint_every=2), run).run()
