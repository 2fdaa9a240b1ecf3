"""`om train` under torchrun: 2 CPU processes (gloo, loopback) against one process at the same
global batch, checkpoints across process counts, and a failing rank ending the launch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from om.checkpoint import load_checkpoint
from om.errors import OmUserError
from om.train import Trainer
from om.train.distributed import Distributed
from om.train.recipe import read_yaml, validate_recipe
from tests.train_fixtures import dataset, isolated_cache  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny.yaml"
# A hang fails the test instead of blocking the suite. A stuck collective would only give up after
# distributed.timeout_minutes (10), so a launch that ends within this bound did not hang; the bound
# is generous because a loaded 2-core machine takes long to start three Python processes.
LAUNCH_TIMEOUT_S = 300


# The same settings for every run; threads=1 because torchrun gives each rank one thread.
COMMON = dict(log_every=1, eval_every=0, threads=1, keep_last=0)


def _sets(dataset: Path, **train) -> list[str]:
    sets = [f"data.dataset={dataset}", "out.sample_bytes=0"]
    return sets + [f"train.{k}={v}" for k, v in {**COMMON, **train}.items()]


def _recipe(dataset: Path, **train):
    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    raw["train"].update({**COMMON, **train})
    raw["out"].update(sample_bytes=0, progress=False)
    return validate_recipe(raw, "tiny.yaml")


def _torchrun(args: list[str], cwd: Path, script: list[str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m omcli ARGS` (or SCRIPT ARGS), bounded in time."""
    target = script if script is not None else ["-m", "omcli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # Its own session, so that on a timeout the ranks are ended with torchrun, not left behind.
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # torchrun starts each rank in a session of its own, which killpg on torchrun's misses: kill
        # every descendant too, or a hung rank keeps the pipes open and the suite waits forever.
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            err = "(no output: the pipes stayed open)"
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT_S} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (children before grandchildren)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(0), []):
            out.append(child)
            queue.append(child)
    return out


def _train_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == "train"]


def _max_loss_diff(a: list[dict], b: list[dict]) -> float:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["bytes"] for r in a] == [r["bytes"] for r in b]
    return max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "train",
    [
        dict(state="reset", grad_accum=2, max_steps=20, checkpoint_every=10),
        # One segment per sample: the state projections get no gradient, which DDP must be told.
        dict(state="carry", grad_accum=4, max_steps=6, checkpoint_every=3, segments_per_sample=1),
    ],
    ids=["reset-accum2", "carry-accum4-one-segment"],
)
def test_two_processes_match_one_and_resume_in_one(tmp_path, dataset, train):
    steps, half = train["max_steps"], train["checkpoint_every"]
    two = tmp_path / "two"
    sets = sum((["--set", s] for s in _sets(dataset, **train)), [])
    proc = _torchrun(["train", str(TINY), "--out", str(two), "--no-progress"] + sets, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 prints the checkpoint path and writes the run folder (each step logged once).
    assert proc.stdout.split() == [str(two / "checkpoints" / f"step-{steps:07d}")]
    records2 = _train_records(two)
    assert [r["step"] for r in records2] == list(range(1, steps + 1))
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["latest", f"step-{half:07d}", f"step-{steps:07d}"]

    # One process, same recipe (so the same global batch: micro_batch_size x grad_accum).
    one = Trainer(_recipe(dataset, **train), tmp_path / "one").run()
    records1 = _train_records(tmp_path / "one")
    sample = 8 * train.get("segments_per_sample", 2)  # tiny.yaml: segment_len 8, micro_batch_size 4
    assert records2[-1]["bytes"] == records1[-1]["bytes"] == steps * 4 * sample * train["grad_accum"]
    assert _max_loss_diff(records1, records2) <= 1e-5
    assert records1[-1]["loss"] < records1[0]["loss"] - 0.2  # it trained: the comparison is not of constants

    # The 2-process checkpoint at mid-run resumes in one process and continues the same curve.
    mid = two / "checkpoints" / f"step-{half:07d}"
    assert json.loads((mid / "trainer.json").read_text())["world_size"] == 2
    resumed = Trainer(_recipe(dataset, **train), tmp_path / "resumed", resume=str(mid)).run()
    assert resumed.resumed_from == mid and resumed.step == steps
    assert _max_loss_diff(records1[half:], _train_records(tmp_path / "resumed")) <= 1e-5
    final_two = load_checkpoint(two).model.state_dict()
    for name, value in load_checkpoint(one.checkpoint).model.state_dict().items():
        assert (value - final_two[name]).abs().max() <= 1e-4, name


def test_a_failing_rank_ends_the_launch(tmp_path, dataset):
    args = ["train", str(TINY), "--out", str(tmp_path / "run"), "--no-progress"]
    args += sum((["--set", s] for s in _sets(dataset, grad_accum=2, max_steps=50)), [])
    proc = _torchrun(args, tmp_path, script=[str(ROOT / "tests" / "distributed_fault.py")])
    assert proc.returncode != 0
    assert "om train: rank 1 failed: RuntimeError: injected fault before step 3" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_user_error_on_one_rank_names_it(tmp_path, dataset):
    # Rank 0 finds its data, rank 1 does not (torchrun sets RANK; recipes expand ${NAME}).
    (tmp_path / "ds-0").symlink_to(dataset)
    args = ["train", str(TINY), "--out", str(tmp_path / "run"), "--no-progress", "--set", f"data.dataset={tmp_path}/ds-${{RANK}}"]
    args += sum((["--set", s] for s in _sets(dataset, grad_accum=2, max_steps=50)[1:]), [])
    proc = _torchrun(args, tmp_path)
    assert proc.returncode != 0
    expected = f"om train: rank 1 failed: {TINY}: data.dataset: {(tmp_path / 'ds-1').resolve()}: no such folder (run `om prepare` first)"
    assert expected in proc.stderr.splitlines(), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("om train: rank 1 failed")[0]  # a user error: one line


def test_micro_batches_are_split_in_blocks():
    d = Distributed()
    assert d.micro_indices(3) == [0, 1, 2] and not d.active
    d.world = 2
    d.rank = 1
    assert d.micro_indices(4) == [2, 3]
    d.rank = 0
    assert d.micro_indices(2) == [0]
    with pytest.raises(OmUserError, match=r"train.grad_accum: 3 micro batches per step cannot be split over 2 processes"):
        d.micro_indices(3)
