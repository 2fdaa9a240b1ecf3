"""The run folder (`om.train.run_folder`) and the atomic writes under it (`om.atomic`): modes from the
umask, the resume decision, metrics truncation, pruning, and the leftovers of dead writers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from om.checkpoint import save_checkpoint, step_dir_name, write_latest
from om.context_cache import StreamContext, save_context
from om.data import prepare_dataset
from om.errors import OmUserError
from tests.test_eval_support import bytes_codec, model_for


@contextmanager
def umask(mask: int):
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tree_modes(folder: Path) -> dict[str, int]:
    """The mode of `folder` ('.') and of everything in it."""
    return {".": _mode(folder), **{str(p.relative_to(folder)): _mode(p) for p in sorted(folder.rglob("*"))}}


def _expected(folder: Path, mask: int) -> dict[str, int]:
    return {
        name: (0o777 if name == "." or (folder / name).is_dir() else 0o666) & ~mask
        for name in _tree_modes(folder)
    }


def _tiny_checkpoint(folder: Path, step: int = 1) -> Path:
    codec = bytes_codec()
    model = model_for(codec)
    return save_checkpoint(folder, model, model.config, codec, trainer={"step": step})


# Modes: what any other tool would create, so a teammate can read it under umask 022 and nobody else
# under 077 (checkpoints were 0700/0600 whatever the umask, made with tempfile.mkdtemp and safetensors).
MASKS = pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])


@MASKS
def test_checkpoint_modes_follow_the_umask(tmp_path, mask):
    ckdir = tmp_path / "run" / "checkpoints"
    with umask(mask):
        ckpt = _tiny_checkpoint(ckdir / step_dir_name(1))
        write_latest(ckdir, ckpt)
    assert _mode(ckpt) == 0o777 & ~mask and len(_tree_modes(ckpt)) >= 5
    assert _tree_modes(ckdir) == _expected(ckdir, mask)  # the checkpoint folder, its files and `latest`


@MASKS
def test_dataset_modes_follow_the_umask(tmp_path, mask):
    text = tmp_path / "doc.txt"
    text.write_bytes(b"a small document for the modes test\n" * 40)
    dataset = tmp_path / "data" / "ds"
    with umask(mask):
        prepare_dataset([text], dataset)
    assert _mode(dataset) == 0o777 & ~mask and (dataset / "train.bin").is_file()
    assert _tree_modes(dataset) == _expected(dataset, mask)


@MASKS
def test_context_cache_mode_follows_the_umask(tmp_path, mask):
    codec = bytes_codec()
    with umask(mask):
        cache = save_context(tmp_path / "ctx.safetensors", StreamContext.fresh(codec), "f" * 64, codec, model_for(codec))
    assert _mode(cache) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["ctx.safetensors"]


@MASKS
def test_run_folder_small_files_follow_the_umask(tmp_path, mask):
    from om.train.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    with umask(mask):
        run.write_recipe("model: {}\n", "r.yaml")
        run.start_metrics()
        run.append_metrics({"event": "train", "step": 1})
        run.truncate_metrics(1)
    assert _tree_modes(run.path) == _expected(run.path, mask)
    assert run.recipe.read_text().startswith("# Resolved recipe of this run (from r.yaml)")


def test_truncate_metrics_drops_later_records_and_a_half_line(tmp_path):
    from om.train.run_folder import RunFolder

    run = RunFolder(tmp_path)
    run.start_metrics()
    for step in (1, 2, 3):
        run.append_metrics({"event": "train", "step": step})
    with open(run.metrics, "a") as f:
        f.write('{"event": "train", "st')  # a kill in the middle of a line
    run.truncate_metrics(2)
    assert [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary left


def test_find_resume(tmp_path):
    from om.train.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    assert run.find_resume("auto") is None and run.find_resume("never") is None  # a fresh folder
    first = _tiny_checkpoint(run.checkpoint_path(1))
    second = _tiny_checkpoint(run.checkpoint_path(2), step=2)
    assert run.find_resume("auto") == second and run.notes == []
    assert run.find_resume(str(first)) == first
    with pytest.raises(OmUserError, match=r"run: already holds a run; resume it with --resume auto, or choose another --out"):
        run.find_resume("never")

    os.truncate(second / "model.safetensors", 10)
    assert run.find_resume("auto") == first
    assert len(run.notes) == 1 and run.notes[0].startswith("passed over an incomplete checkpoint: ")
    assert "step-0000002/model.safetensors: checksum mismatch" in run.notes[0]
    os.truncate(first / "model.safetensors", 10)
    with pytest.raises(OmUserError, match=r"checkpoints: no complete checkpoint to resume from \(.*step-0000002"):
        run.find_resume("auto")


def test_prune_renames_away_and_keeps_the_protected(tmp_path):
    from om.train.run_folder import RunFolder

    run = RunFolder(tmp_path)
    paths = [_tiny_checkpoint(run.checkpoint_path(step), step) for step in (1, 2, 3, 4)]
    assert run.prune(2, protect=paths[0]) == [paths[1]]
    assert [p.name for p in run.list_checkpoints()] == [step_dir_name(s) for s in (1, 3, 4)]
    assert run.prune(0) == []
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [step_dir_name(s) for s in (1, 3, 4)]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_the_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    from om.atomic import host_tag
    from om.train.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    dead, alive, host = _dead_pid(), os.getpid(), host_tag()
    stale = [
        run.checkpoints / f".step-0000004.om-checkpoint-{dead}-{host}-0a1b2c3d.tmp",
        run.checkpoints / f".step-0000002.om-checkpoint-{dead}-{host}-old-0a1b2c3d.tmp",
        run.checkpoints / f".latest.om-write-{dead}-{host}-0a1b2c3d.tmp",
        run.path / f".metrics.jsonl.om-write-{dead}-{host}-0a1b2c3d.tmp",
    ]
    kept = [
        run.checkpoints / f".step-0000006.om-checkpoint-{alive}-{host}-0a1b2c3d.tmp",  # a writer still at work
        run.checkpoints / f".step-0000008.om-checkpoint-{dead}-otherhost-0a1b2c3d.tmp",  # its pid means nothing here
        run.path / f".notes.txt.om-write-{dead}-{host}-0a1b2c3d.tmp",  # not a file of the run folder
        run.checkpoints / ".hidden",
    ]
    for path in stale + kept:
        if "step" in path.name:
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"half")
        else:
            path.write_text("half")
    assert sorted(run.remove_stale_temporaries()) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_atomic_writes_leave_the_old_version_on_failure(tmp_path):
    from om.atomic import parse_temp_name, temp_name, write_file, writing_file, writing_folder

    target = tmp_path / "notes.txt"
    write_file(target, "old\n")
    with pytest.raises(RuntimeError), writing_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

    folder = tmp_path / "json-bytes"
    with writing_folder(folder) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), writing_folder(folder) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("the writer failed")
    assert [p.name for p in folder.iterdir()] == ["a"]
    with writing_folder(folder) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in folder.iterdir()] == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["json-bytes", "notes.txt"]

    for target in ("json-bytes", "ctx.v2.safetensors"):
        for old in (False, True):
            parsed = parse_temp_name(temp_name(target, "cache", old=old))
            assert parsed is not None and parsed[:3] == (target, "cache", os.getpid()) and parsed.old == old
    assert parse_temp_name("json-bytes") is None and parse_temp_name(".x.tmp") is None


def test_the_dry_run_makes_the_runs_resume_decision_and_removes_nothing(tmp_path):
    from om.atomic import host_tag
    from om.data.codecs import BytesCodec
    from om.model import OmConfig, OmLLM
    from om.train.plan import plan_run
    from om.train.run_folder import RunFolder
    from tests.reliability.fault_tools import tiny_recipe

    text = tmp_path / "doc.txt"
    text.write_bytes(b"a small document for the dry run, long enough for a few batches\n" * 400)
    prepare_dataset([text], tmp_path / "ds")
    recipe = tiny_recipe(tmp_path / "ds")
    codec = BytesCodec()
    config = OmConfig.model_validate({**recipe.model.model_dump(), "vocab_size": codec.vocab_size})
    resolved = recipe.model_copy(update={"model": config})

    def checkpoint(step: int, **changes) -> Path:
        """A checkpoint of this recipe (with `changes` to its train section) at `step`."""
        trained = resolved.model_copy(update={"train": resolved.train.model_copy(update=changes)})
        trainer = {"step": step, "bytes_seen": 64 * step, "elapsed_s": 1.0, "state_mode": "reset", "recipe": trained.to_dict()}
        return save_checkpoint(run.checkpoint_path(step), OmLLM(config), config, codec, trainer=trainer)

    run = RunFolder(tmp_path / "run")
    first = checkpoint(1)
    second = checkpoint(2)
    os.truncate(second / "model.safetensors", 10)
    leftover = run.checkpoints / f".step-0000003.om-checkpoint-{_dead_pid()}-{host_tag()}-0a1b2c3d.tmp"
    leftover.mkdir()

    plan = plan_run(recipe, run.path, "auto")
    assert plan["resume_from"] == str(first) == str(run.find_resume("auto"))
    assert plan["resume"]["step"] == 1 and plan["resume"]["complete"] is None
    assert plan["resume"]["notes"][0].startswith("passed over an incomplete checkpoint: ")
    with pytest.raises(OmUserError, match="step-0000002/model.safetensors: checksum mismatch"):
        plan_run(recipe, run.path, str(second))  # as the run, which verifies the checkpoint it is told to continue
    with pytest.raises(OmUserError, match="already holds a run"):
        plan_run(recipe, run.path, "never")
    assert leftover.is_dir()  # read-only: the run itself removes it (find_resume(..., clean=True))
    run.find_resume("auto", clean=True)
    assert not leftover.exists()

    # The same checks as the run: another recipe is refused under --resume auto, accepted (as a note)
    # with an explicit --resume PATH; a checkpoint at the stop rule is complete.
    checkpoint(3, lr=0.01)
    with pytest.raises(OmUserError, match=r"run holds a run trained with another recipe \(train\.lr: 0\.01 -> 0\.003\)"):
        plan_run(recipe, run.path, "auto")
    explicit = plan_run(recipe, run.path, str(run.checkpoint_path(3)))["resume"]
    assert explicit["notes"] == ["recipe keys changed since the checkpoint: train.lr: 0.01 -> 0.003"]
    checkpoint(10, max_steps=5)
    plan = plan_run(recipe, run.path, "auto")
    assert plan["resume"] == {"step": 10, "complete": "train.max_steps 10", "notes": [
        "recipe keys changed since the checkpoint: train.max_steps: 5 -> 10"]}


def test_resume_rule_which_keys_may_change(tmp_path):
    """`check_resume` under --resume auto (strict): the continuation keys may change, nothing else."""
    from om.data.codecs import BytesCodec
    from om.model import OmConfig, OmLLM
    from om.train.run_folder import CONTINUATION_KEYS, check_resume
    from tests.reliability.fault_tools import tiny_recipe

    recipe = tiny_recipe(tmp_path / "ds")
    codec = BytesCodec()
    config = OmConfig.model_validate({**recipe.model.model_dump(), "vocab_size": codec.vocab_size})
    recipe = recipe.model_copy(update={"model": config})
    trainer = {"step": 4, "state_mode": "reset", "recipe": recipe.to_dict(), "dataset": None}
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000004", OmLLM(config), config, codec, trainer=trainer)

    def check(**train):
        changed = recipe.model_copy(update={"train": recipe.train.model_copy(update=train)})
        return check_resume(ckpt, config, changed, None, "r.yaml", strict=True, run_dir=tmp_path / "run")[1]

    assert check() == []
    assert "train.max_steps" in CONTINUATION_KEYS and "out." in CONTINUATION_KEYS
    notes = check(max_steps=40, log_every=1, eval_every=2, checkpoint_every=3, keep_last=0, threads=1, device="cpu", eval_tokens=64)
    assert notes[0].startswith("recipe keys changed since the checkpoint: train.max_steps: 10 -> 40, train.device: 'auto' -> 'cpu'")
    for key, value in [("lr", 0.5), ("seed", 7), ("micro_batch_size", 2), ("warmup_steps", 0), ("precision", "bf16")]:
        with pytest.raises(OmUserError) as info:
            check(**{key: value})
        message = str(info.value)
        assert message.startswith(f"r.yaml: {tmp_path / 'run'} holds a run trained with another recipe (train.{key}: ")
        assert f"-> {value!r})" in message and "\n" not in message
        assert message.endswith(f"use --out DIR for a new run, restore the old values to continue this one, or --resume {ckpt} "
                                "to continue it with the new ones")
    with pytest.raises(OmUserError, match=r"\(train\.lr: 0\.003 -> 0\.5; train\.min_lr: 0\.0003 -> 0\.1; "
                       r"train\.decay: 'cosine' -> 'constant'; train\.grad_clip: 1\.0 -> None; and 1 more\); "):
        check(lr=0.5, min_lr=0.1, seed=1, decay="constant", grad_clip=None)
    # Another dataset is refused too under --resume auto, and only noted for an explicit checkpoint.
    ckpt2 = save_checkpoint(tmp_path / "b", OmLLM(config), config, codec, trainer=trainer, dataset={"path": "x", "fingerprint": "a" * 64})
    with pytest.raises(OmUserError, match=r"the dataset differs from the one .* was trained on \(meta.json fingerprint a{12} -> b{12}\)"):
        check_resume(ckpt2, config, recipe, "b" * 64, "r.yaml", strict=True)
    assert check_resume(ckpt2, config, recipe, "b" * 64, "r.yaml")[1] == [f"the dataset differs from the one {ckpt2} was trained on"]
