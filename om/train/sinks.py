"""Where a run's metrics records go (`out.log_sinks`): metrics.jsonl, CSV files, TensorBoard.

Every sink receives the same records (`{"event": "train" | "eval" | "skip", "step", ...}`, see
docs/train.md) and keeps itself consistent with the checkpoint a run resumes from: records past the
resumed step, written by a run that went on past its last checkpoint, are dropped.

- `jsonl`: `metrics.jsonl`, one JSON object per line (`RunFolder.append_metrics`).
- `csv`: one file per event, `train.csv`, `eval.csv` (and `skip.csv` when a step was skipped), a
  header row and one row per record; a nested value such as `val_slice` becomes columns
  `val_slice.tokens`, ...; floats are written exactly (Python's repr), None as an empty field.
- `tensorboard`: event files in `tensorboard/` (`torch.utils.tensorboard.SummaryWriter`; needs the
  `tensorboard` package), scalars `train/loss`, `train/bpb`, `eval/val_bpb`, ... by step. A resumed
  run opens its writer with `purge_step` = the resumed step + 1, so TensorBoard discards what the
  interrupted run logged after its checkpoint; a fresh run removes earlier event files.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from pathlib import Path

from om.atomic import write_file
from om.errors import OmUserError
from om.train.run_folder import CSV_FILES, TENSORBOARD_DIR, RunFolder

# The columns of each CSV file, in order: the fields of the records of that event.
CSV_COLUMNS = {
    "train": ["step", "tokens", "bytes", "loss", "bpb", "lr", "grad_norm", "skipped", "bytes_per_s", "elapsed_s"],
    "eval": [
        "step", "bytes", "val_loss", "val_bpb", "val_tokens", "val_bytes",
        "val_slice.split", "val_slice.tokens", "val_slice.streams", "elapsed_s",
    ],
    "skip": ["step", "reason", "skipped"],
}

# The scalars written to TensorBoard for each event (the other fields are not numbers to plot).
TENSORBOARD_SCALARS = {
    "train": ["loss", "bpb", "lr", "grad_norm", "bytes_per_s", "bytes", "tokens", "skipped"],
    "eval": ["val_loss", "val_bpb"],
    "skip": ["skipped"],
}

TENSORBOARD_INSTALL = "pip install tensorboard"


def check_sinks(names: list[str], source: str) -> None:
    """Refuse sinks that cannot work here (tensorboard without its package), before anything is
    written; `source` names the recipe in the one-line error."""
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise OmUserError(
            f"{source}: out.log_sinks: tensorboard needs the tensorboard package, which is not installed; "
            f"install it with `{TENSORBOARD_INSTALL}` (or `pip install 'om[tensorboard]'`), or leave tensorboard out"
        )


class JsonlSink:
    """metrics.jsonl of the run folder."""

    def __init__(self, folder: RunFolder, resumed_step: int | None) -> None:
        self.folder = folder
        if resumed_step is None:
            folder.start_metrics()
        else:
            folder.truncate_metrics(resumed_step)

    def write(self, record: dict) -> None:
        """Append one record."""
        self.folder.append_metrics(record)

    def flush(self) -> None:
        """Nothing to do: every record is appended at once."""

    def close(self) -> None:
        """Nothing to do."""


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    return str(value)


class CsvSink:
    """train.csv, eval.csv (and skip.csv) in the run folder, one row per record."""

    def __init__(self, folder: RunFolder, resumed_step: int | None) -> None:
        self.path = folder.path
        for name in CSV_FILES:
            file = self.path / name
            if resumed_step is None:
                file.unlink(missing_ok=True)
            elif file.is_file():
                self._truncate(file, resumed_step)

    def file(self, event: str) -> Path:
        """The CSV file of records of `event`."""
        return self.path / f"{event}.csv"

    @staticmethod
    def _truncate(file: Path, step: int) -> None:
        """Keep the header and the rows up to `step`; drop later rows and a half-written last one."""
        with open(file, newline="") as f:
            text = f.read()
        rows = list(csv.reader(io.StringIO(text[: text.rfind("\n") + 1])))  # a line cut by a kill has no newline
        if not rows:
            file.unlink()  # not even a whole header: the next record starts the file again
            return
        header, kept = rows[0], [rows[0]]
        for row in rows[1:]:
            try:
                if len(row) == len(header) and int(row[header.index("step")]) <= step:
                    kept.append(row)
            except ValueError:
                continue
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(kept)
        write_file(file, text.getvalue())

    def write(self, record: dict) -> None:
        """Append `record` as a row of its event's file (the header first, into a new file)."""
        event = record.get("event")
        columns = CSV_COLUMNS.get(event)
        if columns is None:
            return
        flat = _flat(record)
        file = self.file(event)
        new = not file.is_file()
        with open(file, "a", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new:
                writer.writerow(columns)
            writer.writerow([_cell(flat.get(c)) for c in columns])

    def flush(self) -> None:
        """Nothing to do: every row is appended at once."""

    def close(self) -> None:
        """Nothing to do."""


class TensorBoardSink:
    """TensorBoard event files in the run folder's tensorboard/."""

    def __init__(self, folder: RunFolder, resumed_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = folder.path / TENSORBOARD_DIR
        if resumed_step is None and log_dir.is_dir():
            for old in log_dir.glob("events.out.tfevents.*"):  # an earlier start of this folder
                old.unlink(missing_ok=True)
        # purge_step: TensorBoard drops the events at this step and later from the earlier files.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=None if resumed_step is None else resumed_step + 1)

    def write(self, record: dict) -> None:
        """Add the record's scalars under `EVENT/NAME` at its step."""
        event = record.get("event")
        for name in TENSORBOARD_SCALARS.get(event, ()):
            value = record.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{event}/{name}", value, global_step=record["step"])

    def flush(self) -> None:
        """Write pending events to disk (called with every checkpoint)."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


SINKS = {"jsonl": JsonlSink, "csv": CsvSink, "tensorboard": TensorBoardSink}


class Sinks:
    """The sinks a recipe selects, opened on run folder `folder`: `resumed_step` None for a fresh
    run (each starts empty), else the step of the checkpoint resumed from (later records dropped)."""

    def __init__(self, names: list[str], folder: RunFolder, resumed_step: int | None) -> None:
        self.sinks = []
        try:
            for name in names:
                self.sinks.append(SINKS[name](folder, resumed_step))
        except BaseException:
            self.close()
            raise

    def write(self, record: dict) -> None:
        """Give `record` to every sink."""
        for sink in self.sinks:
            sink.write(record)

    def flush(self) -> None:
        """Flush every sink."""
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        """Close every sink (idempotent)."""
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
