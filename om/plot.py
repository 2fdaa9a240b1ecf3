"""Pictures of training and evaluation: learning curves of runs, bits per byte by position.

matplotlib is an optional extra (`pip install 'om[plot]'`); without it these functions raise an
`OmUserError` naming the install command. Figures are drawn with the Agg backend (no display
needed) and written atomically as PNG.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from om.errors import OmUserError

INSTALL_HINT = "pip install 'om[plot]' (or pip install matplotlib)"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise OmUserError(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_run_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run folder's metrics.jsonl, in order (a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        what = "no such run folder" if not Path(run_dir).exists() else "holds no metrics.jsonl (not a run folder of om train)"
        raise OmUserError(f"{run_dir}: {what}")
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _save(fig, out: str | Path) -> Path:
    from om.atomic import writing_file

    out = Path(out)
    with writing_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Learning curves of one or more runs, overlaid: bits per byte (train line, validation
    markers), learning rate and bytes/s, each against training bytes seen on a log axis.

    run_dirs: run folders written by `om train`; labels: one per run (default: the folder path).
    Returns the PNG's path.
    """
    if not run_dirs:
        raise OmUserError("no RUN folder given")
    runs = [(str(label), read_run_metrics(d)) for label, d in zip(labels or [str(d) for d in run_dirs], run_dirs)]
    for (_, records), d in zip(runs, run_dirs):
        if not any(r.get("event") == "train" and r.get("bytes") for r in records):
            raise OmUserError(f"{d}: metrics.jsonl has no training record yet")
    plt = _pyplot()
    fig, (ax_bpb, ax_lr, ax_speed) = plt.subplots(3, 1, figsize=(8, 9), sharex=True, constrained_layout=True)
    for i, (label, records) in enumerate(runs):
        color = f"C{i % 10}"
        train = [r for r in records if r.get("event") == "train" and r.get("bytes")]
        evals = [r for r in records if r.get("event") == "eval" and r.get("bytes") and r.get("val_bpb") is not None]
        finite = [r for r in train if isinstance(r.get("bpb"), (int, float)) and math.isfinite(r["bpb"])]
        ax_bpb.plot([r["bytes"] for r in finite], [r["bpb"] for r in finite], color=color, lw=1.2, label=f"{label} train")
        if evals:
            ax_bpb.plot([r["bytes"] for r in evals], [r["val_bpb"] for r in evals], "o--", color=color, ms=5,
                        label=f"{label} validation")
        ax_lr.plot([r["bytes"] for r in train], [r.get("lr") or 0.0 for r in train], color=color, label=label)
        speed = [r for r in train if r.get("bytes_per_s")]
        ax_speed.plot([r["bytes"] for r in speed], [r["bytes_per_s"] for r in speed], color=color, label=label)
    ax_bpb.set_ylabel("bits per byte")
    ax_bpb.legend(fontsize="small")
    ax_lr.set_ylabel("learning rate")
    ax_speed.set_ylabel("training bytes/s")
    ax_speed.set_xlabel("training bytes seen")
    for ax in (ax_bpb, ax_lr, ax_speed):
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"om plot: {len(runs)} run(s)")
    try:
        return _save(fig, out)
    finally:
        plt.close(fig)


def plot_by_position(buckets: Sequence[dict], segment_len: int, out: str | Path, title: str = "") -> Path:
    """Bits per byte by position in the stream, from `EvalResult.to_dict()["by_position"]`.

    Each bucket is drawn at the stream position (in tokens) of its first segment, on a log axis.
    Returns the PNG's path.
    """
    points = [(b["first_segment"] * segment_len + segment_len / 2, b["bits_per_byte"])
              for b in buckets if b.get("bits_per_byte") is not None]
    if not points:
        raise OmUserError("nothing to plot: the inputs covered no bytes")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    ax.plot([p for p, _ in points], [v for _, v in points], "o-", ms=3)
    ax.set_xscale("log")
    ax.set_xlabel(f"position in the stream (tokens; segments of {segment_len})")
    ax.set_ylabel("bits per byte")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "om eval --by-position")
    try:
        return _save(fig, out)
    finally:
        plt.close(fig)
