"""A full disk while `om train` writes a checkpoint, `om prepare` a dataset or `om cache` a context
cache: one line on stderr, exit code 1, the previous checkpoint (or dataset) intact, no partial
output, and the run resumes once there is room again.

Two ways to fill the disk: a small tmpfs filled up to a few KB (a real ENOSPC; needs the right to
mount, skipped without it) and a file size limit (RLIMIT_FSIZE: the write fails with EFBIG; runs
anywhere).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from om.checkpoint import MODEL_FILE, sha256_file, step_dir_name, verify_checkpoint
from tests.reliability.fault_tools import JSON_SRC, fork_om, prepare_json_dataset, train_args


class Disk:
    """A folder whose free space (tmpfs) or largest file (rlimit) can be cut down to `room` bytes."""

    def __init__(self, root: Path, mechanism: str) -> None:
        self.root, self.mechanism = root, mechanism
        self.limit: int | None = None
        self.filler = root / "filler"
        self.reason = "No space left on device" if mechanism == "tmpfs" else "File too large"

    def fill(self, room: int) -> None:
        if self.mechanism == "rlimit":
            self.limit = room  # applied in the child by `setup`
            return
        st = os.statvfs(self.root)
        left = st.f_bavail * st.f_frsize - room
        with open(self.filler, "wb") as f:
            while left > 0:
                left -= f.write(b"\0" * min(left, 1 << 20))

    def release(self) -> None:
        self.limit = None
        self.filler.unlink(missing_ok=True)

    def setup(self) -> None:
        """Runs in the child before `om` starts."""
        if self.limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write raises instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.RLIM_INFINITY))

    def leftovers(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob(".*"))


@pytest.fixture(params=["rlimit", "tmpfs"])
def disk(request, tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "rlimit":
        yield Disk(root, "rlimit")
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the rlimit case still runs")
    try:
        yield Disk(root, "tmpfs")
    finally:
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_json_dataset(tmp_path_factory.mktemp("data") / "json-bytes")


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"om {command}: error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    return errors[0]


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(disk, dataset, tmp_path):
    run, logs = disk.root / "run", tmp_path / "logs"
    first = fork_om(train_args(dataset, run, "train.max_steps=2"), logs, name="first")
    assert first.wait() == 0, first.err()
    previous = run / "checkpoints" / step_dir_name(2)
    before = _snapshot(previous)

    # Room for the log lines but not for a checkpoint (a third of one is its model file).
    disk.fill(room=(previous / MODEL_FILE).stat().st_size // 2)
    full = fork_om(train_args(dataset, run, "train.max_steps=4"), logs, disk.setup, name="full")
    assert full.wait() == 1, full.err()
    line = _error_line(full.err(), "train")
    target = run / "checkpoints" / step_dir_name(4)
    assert line == (
        f"om train: error: {target}: cannot write the checkpoint ({disk.reason}); nothing of it was kept; "
        f"the previous checkpoint {previous} is intact"
    )
    assert full.out() == ""  # no checkpoint path for scripts to pick up
    assert _snapshot(previous) == before
    verify_checkpoint(previous)
    assert (run / "checkpoints" / "latest").read_text().strip() == previous.name
    assert not target.exists() and disk.leftovers() == []

    disk.release()
    again = fork_om(train_args(dataset, run, "train.max_steps=4"), logs, name="again")
    assert again.wait() == 0, again.err()
    assert f"resuming from {previous} at step 2" in again.err()
    assert again.out().strip() == str(target)


def test_full_disk_during_prepare_leaves_no_partial_output(disk, tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"a small document\n" * 60)
    kept, logs = disk.root / "kept", tmp_path / "logs"
    ok = fork_om(["prepare", str(small), "-o", str(kept), "--quiet"], logs, name="ok")
    assert ok.wait() == 0, ok.err()
    before = _snapshot(kept)

    disk.fill(room=16 << 10)  # the json package encodes to ~200 KB
    new = disk.root / "new"
    for name, out, extra in (("new", new, []), ("force", kept, ["--force"])):
        child = fork_om(["prepare", str(JSON_SRC), "-o", str(out), "--quiet", *extra], logs, disk.setup, name=name)
        assert child.wait() == 1, child.err()
        assert _error_line(child.err(), "prepare") == (
            f"om prepare: error: {out}: cannot write the dataset ({disk.reason}); the output folder was left as it was"
        )
        assert child.out() == ""
    assert not new.exists()
    assert _snapshot(kept) == before  # --force over an existing dataset: the old one is untouched
    assert disk.leftovers() == []  # no temporary folder left behind


def test_full_disk_writing_a_context_cache(disk, tmp_path):
    from tests.test_eval_support import save_tiny_checkpoint

    ckpt, _, _ = save_tiny_checkpoint(tmp_path / "ckpt")
    text = tmp_path / "context.txt"
    text.write_bytes(b"a long context, kept for later\n" * 8)
    out = disk.root / "ctx.safetensors"
    disk.fill(room=512)
    child = fork_om(["cache", str(ckpt), str(text), "-o", str(out)], tmp_path / "logs", disk.setup)
    assert child.wait() == 1, child.err()
    assert _error_line(child.err(), "cache") == (
        f"om cache: error: {out}: cannot write the context cache ({disk.reason}); nothing was written"
    )
    assert not out.exists() and disk.leftovers() == []
