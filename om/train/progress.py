"""Training progress on stderr: a live bar on a terminal, plain lines in a log file.

On a terminal (or Jupyter) a rich bar shows the step, loss, bits per byte, learning rate, bytes/s
and the ETA, updated every step. When stderr is a file or a pipe (nohup, Slurm, `2> log`) a bar
would print nothing until the end, so instead one line is printed with every train record, that is
every `train.log_every` steps:

    step 120/1000 | loss 1.2345 | 1.7810 bits/byte | lr 3.0e-03 | 11,533 bytes/s | 12% | ETA 3m12s

The percentage is the progress of the stop rule (the largest fraction used of max_steps, max_bytes
and max_minutes); the ETA extrapolates the wall-clock of this process (evaluations and checkpoints
included) over it.
"""

from __future__ import annotations

import math
import time


def format_duration(seconds: float) -> str:
    """A short duration: 45s, 3m12s, 2h05m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(record: dict, fraction: float, eta_s: float | None, max_steps: int | None) -> str:
    """The plain progress line of train record `record` (see the module docstring)."""
    step = f"step {record['step']}" + (f"/{max_steps}" if max_steps is not None else "")
    speed = f"{record['bytes_per_s']:,.0f}" if record.get("bytes_per_s") is not None else "-"
    eta = format_duration(eta_s) if eta_s is not None else "-"
    return (
        f"{step} | loss {record['loss']:.4f} | {record['bpb']:.4f} bits/byte | lr {record['lr']:.1e} | "
        f"{speed} bytes/s | {int(100 * fraction)}% | ETA {eta}"
    )


class ProgressDisplay:
    """Progress of one run on `console` (a rich Console on stderr; None: a new one), or nothing
    when not `enabled`. Use as a context manager; `update` after every step (the bar), `record`
    with every train record (the plain lines). `start_fraction`: the stop rule's progress when this
    process started (a resumed run), from which the ETA is measured."""

    def __init__(self, enabled: bool, console=None, max_steps: int | None = None, start_fraction: float = 0.0) -> None:
        self.enabled, self.max_steps = enabled, max_steps
        self.progress = None
        self.plain = False
        self.start_fraction, self.start_time = start_fraction, time.perf_counter()
        if not enabled:
            return
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        if not (self.console.is_terminal or self.console.is_jupyter):
            self.plain = True
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("step {task.fields[step]}"),
            BarColumn(bar_width=12),
            TextColumn("loss {task.fields[loss]} | {task.fields[bpb]} bpb | lr {task.fields[lr]} | {task.fields[speed]} B/s | ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=1000, step=0, loss="-", bpb="-", lr="-", speed="-")

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def eta(self, fraction: float) -> float | None:
        """Seconds left, extrapolating this process's progress; None before there is any."""
        done = fraction - self.start_fraction
        if done <= 0:
            return None
        return (time.perf_counter() - self.start_time) * (1.0 - fraction) / done

    def update(self, p, fraction: float, out: dict, lr: float) -> None:
        """After a step: move the bar (`p`: the run's counters, `out`: the step's totals)."""
        if self.progress is None:
            return
        loss = out["nats"] / max(1, out["tokens"])
        self.progress.update(
            self.task,
            completed=int(1000 * fraction),
            step=p.step,
            loss=f"{loss:.3f}",
            bpb=f"{out['nats'] / math.log(2) / max(1, out['bytes']):.3f}",
            lr=f"{lr:.1e}",
            speed=f"{p.bytes / p.train_s:,.0f}" if p.train_s else "-",
        )

    def record(self, record: dict, fraction: float) -> None:
        """With a train record: print its plain line when stderr is not a terminal."""
        if self.plain:
            line = progress_line(record, fraction, self.eta(fraction), self.max_steps)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
