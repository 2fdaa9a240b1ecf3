"""Helpers of the fault tests: a tiny dataset and recipe, and `om` run in a forked child.

A forked child starts in milliseconds (torch is already imported), so a test can kill and restart
`om train` many times within a few seconds. The child runs the real CLI entry point
(`omcli.app.main`) with its stdout/stderr in files; `setup`, run first in the child only, may
install test instrumentation (a pause at a chosen moment, a file size limit) that dies with it.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny.yaml"
JSON_SRC = Path(sysconfig.get_paths()["stdlib"]) / "json"
TIMING = ("bytes_per_s", "elapsed_s")  # metrics fields that differ between identical runs


@contextmanager
def scratch_folder(fallback: Path) -> Iterator[Path]:
    """A folder on a memory filesystem (/dev/shm) where there is one, else `fallback`. Checkpoints
    fsync every file, which costs ~0.1 s a call on a busy disk and nothing in memory; a SIGKILL
    does not lose written pages, so the kill tests lose nothing by it."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield fallback
        return
    folder = Path(tempfile.mkdtemp(prefix="om-faults-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def prepare_json_dataset(out: Path) -> Path:
    """The stdlib json package (~100 KB) as a bytes dataset."""
    from om.data import prepare_dataset

    prepare_dataset([JSON_SRC], out, codec="bytes", exclude=("__pycache__",))
    return out


def tiny_recipe(dataset: Path, **train):
    """The tiny recipe on `dataset` for an in-process `Trainer`: 10 steps, a checkpoint and a train
    record every step, no evaluation before the end; `train` overrides keys of the train section."""
    from om.train.recipe import read_yaml, validate_recipe

    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    raw["train"].update(dict(max_steps=10, eval_every=0, log_every=1, checkpoint_every=1, keep_last=0), **train)
    raw["out"].update(sample_bytes=0, progress=False)
    return validate_recipe(raw, "tiny.yaml")


def train_args(dataset: Path, run: Path, *sets: str) -> list[str]:
    """`om train` arguments for the tiny recipe on `dataset` into `run`, quiet, deterministic."""
    args = ["train", str(TINY), "--out", str(run), "--no-progress", "--set", f"data.dataset={dataset}"]
    for s in ("out.sample_bytes=0", "train.eval_every=0", *sets):
        args += ["--set", s]
    return args


@dataclass
class Child:
    """A forked `om` process: pid, its stdout/stderr files and the read end of its notify pipe."""

    pid: int
    stdout: Path
    stderr: Path
    notify: int
    status: int | None = None

    def wait_message(self, timeout: float = 60.0) -> str:
        """The next line the child wrote to its notify pipe ('' if it exited first)."""
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"child gave no sign in {timeout} s; stderr:\n{self.err()}")
            ready, _, _ = select.select([self.notify], [], [], left)
            if ready:
                chunk = os.read(self.notify, 1)
                if not chunk:
                    return ""
                data += chunk
        return data.decode().strip()

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 120.0) -> int:
        """Wait for the exit; return the exit code, or -N when killed by signal N."""
        if self.status is None:
            deadline = time.monotonic() + timeout
            while True:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    raise AssertionError(f"child ran past {timeout} s; stderr:\n{self.err()}")
                time.sleep(0.01)
            self.status = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            os.close(self.notify)
        return self.status

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")


_notify_fd: int | None = None
_warm = False


def _warm_up() -> None:
    """Import in the parent what every child would otherwise import again (torch.optim pulls in
    torch._dynamo, seconds of CPU), so each fork starts training at once."""
    global _warm
    if not _warm:
        import torch

        import om.train  # noqa: F401
        import omcli.app  # noqa: F401

        torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
        _warm = True


def notify(message: str) -> None:
    """In a child: send one line to the parent."""
    assert _notify_fd is not None
    os.write(_notify_fd, message.encode() + b"\n")


def pause(message: str) -> None:
    """In a child: tell the parent `message`, then wait to be killed."""
    notify(message)
    time.sleep(600)
    os._exit(99)  # never reached when the parent kills as it should


def fork_om(
    args: list[str],
    folder: Path,
    setup: Callable[[], None] | None = None,
    name: str = "om",
    stdin: bytes | None = None,
    stdout_closed: bool = False,
) -> Child:
    """Run `om ARGS` in a forked child; stdout/stderr go to folder/NAME.out and NAME.err.

    stdin: bytes the child reads on stdin (default: /dev/null). stdout_closed: stdout is a pipe
    whose reader is gone before the child starts (`om ... | head -c 0`); NAME.out stays empty.
    As at interpreter exit, stdout and stderr are flushed after `main` returns; an error there
    (say BrokenPipeError) prints a traceback and exits with 70.
    """
    global _notify_fd
    _warm_up()
    folder.mkdir(parents=True, exist_ok=True)
    out, err, inp = folder / f"{name}.out", folder / f"{name}.err", folder / f"{name}.in"
    inp.write_bytes(stdin or b"")
    out.write_bytes(b"")
    read_end, write_end = os.pipe()
    pipe = os.pipe() if stdout_closed else None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_end)
        if pipe is not None:
            os.close(pipe[0])  # no reader left: the child's first write to stdout fails with EPIPE
            os.close(pipe[1])
        return Child(pid, out, err, read_end)
    # The child: never returns into pytest.
    code = 70
    try:
        os.close(read_end)
        _notify_fd = write_end
        for fd, path in ((1, out), (2, err)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        if pipe is not None:
            os.dup2(pipe[1], 1)
            os.close(pipe[0])
            os.close(pipe[1])
        source = os.open(inp, os.O_RDONLY)
        os.dup2(source, 0)
        os.close(source)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.stdin = open(0, "r", closefd=False)
        if setup is not None:
            setup()
        sys.argv = ["om", *args]
        from omcli.app import main

        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - a child must never unwind into the parent's pytest
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the timing fields."""
    import json

    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]
