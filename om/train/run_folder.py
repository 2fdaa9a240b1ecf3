"""A training run folder: everything `om train` (and `om train --dry-run`) reads and writes in it.

```
runs/NAME/
  recipe.yaml      the resolved recipe                      write_recipe
  metrics.jsonl    one JSON record per line                 start_metrics, append_metrics, truncate_metrics
  checkpoints/     step-NNNNNNN folders and `latest`        save_checkpoint, prune, newest_complete
```

The format of one checkpoint folder, and the names a reader follows to find one in a run folder
(step-NNNNNNN, `latest`), belong to `om.checkpoint`: `om eval`, `om sample` and `om cache` open run
folders through it without the training package. This module is the training side's policy over
the folder: a checkpoint is saved and then `latest` moved to it, old ones are pruned to
``keep_last`` (each renamed away before it is deleted), the temporaries of dead writers are removed,
the checkpoint to resume from is chosen and checked against the run (`RunFolder.decide_resume`: one
decision for the run and its dry run). Small files are written with `om.atomic`, so their modes
follow the umask and a kill never leaves half of one.

The resume rule. `--resume auto` continues the run folder's checkpoint only when the recipe is the
one it was trained with, except for `CONTINUATION_KEYS` (stop rules, logging, evaluation and
checkpoint cadence, the machine it runs on): anything else is refused, naming the keys, so a
finished run never silently stands in for a new one. `--resume PATH` is an explicit request to
continue that checkpoint: other changes are allowed and listed as notes. The model section and
`train.state` must match in both cases.
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import om.checkpoint as checkpoint
from om.atomic import remove_folder, remove_stale, write_file
from om.errors import OmUserError
from om.model.config import OmConfig

if TYPE_CHECKING:
    from om.train.recipe import Recipe

METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.yaml"
CSV_FILES = ("train.csv", "eval.csv", "skip.csv")  # out.log_sinks: csv, one file per record event
TENSORBOARD_DIR = "tensorboard"  # out.log_sinks: tensorboard

# Recipe keys that may differ between a run and its continuation under `--resume auto`: they decide
# when the run stops, what it logs and evaluates, how often it saves, and where and how fast it runs
# (activation checkpointing recomputes the same numbers), not what it learns from which batches
# (so `train.curriculum`, which sets the sample length of every step, is not among them). A key
# path ending in "." stands for its whole section.
CONTINUATION_KEYS = (
    "train.max_steps", "train.max_bytes", "train.max_minutes",
    "train.log_every", "train.eval_every", "train.eval_tokens", "train.eval_bytes", "train.eval_batch",
    "train.checkpoint_every", "train.keep_last",
    "train.device", "train.threads", "train.compile", "train.activation_checkpointing",
    "train.on_nonfinite_loss", "train.max_skips",
    "out.", "distributed.",
)


@dataclass
class ResumeDecision:
    """What a run does with its run folder (`RunFolder.decide_resume`).

    checkpoint: the checkpoint it continues (None: a fresh start); trainer: that checkpoint's
    trainer.json; complete: the stop rule the checkpoint has already reached (e.g. "train.max_steps
    20"), so there is nothing left to train, else None; notes: what the user should be told (newer
    checkpoints passed over, recipe keys that changed).
    """

    checkpoint: Path | None = None
    trainer: dict | None = None
    complete: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        """The step the run continues from (0 for a fresh start)."""
        return int(self.trainer.get("step", 0)) if self.trainer else 0


class RunFolder:
    """The run folder at `path` (it need not exist yet).

    `checkpoints`, `metrics` and `recipe` are the paths of its parts. `notes` holds what the last
    `find_resume` has to tell the user (newer checkpoints it passed over, and why).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / checkpoint.CHECKPOINTS_DIR
        self.metrics = self.path / METRICS_FILE
        self.recipe = self.path / RECIPE_FILE
        self.notes: list[str] = []

    # Checkpoints --------------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        """Where the checkpoint of `step` goes."""
        return self.checkpoints / checkpoint.step_dir_name(step)

    def list_checkpoints(self) -> list[Path]:
        """Complete-looking checkpoint folders, lowest step first (see `om.checkpoint.list_checkpoints`)."""
        return checkpoint.list_checkpoints(self.checkpoints)

    def newest_complete(self) -> tuple[Path | None, list[str]]:
        """The checkpoint with the highest step whose files all match their checksums (None if there
        is none), and the reason each newer folder was passed over."""
        passed_over: list[str] = []
        for folder in reversed(self.list_checkpoints()):
            try:
                checkpoint.verify_checkpoint(folder)
            except OmUserError as err:
                passed_over.append(str(err))
                continue
            return folder, passed_over
        return None, passed_over

    def save_checkpoint(self, step: int, model, config: OmConfig, codec: Any, trainer: dict, **kwargs) -> Path:
        """Write the checkpoint of `step` (`om.checkpoint.save_checkpoint`; kwargs: optimizer,
        dataset, tensors), then point `latest` at it. Returns its path; raises `OmRunError` when
        the disk refuses either."""
        path = checkpoint.save_checkpoint(self.checkpoint_path(step), model, config, codec, trainer, **kwargs)
        checkpoint.write_latest(self.checkpoints, path)
        return path

    def prune(self, keep_last: int, protect: Path | None = None) -> list[Path]:
        """Delete all but the newest `keep_last` checkpoints (never `protect`); keep_last <= 0 keeps
        all. Each is renamed to a hidden name first, so a kill during the deletion leaves no
        half-deleted folder that looks like a checkpoint. Returns the deleted ones."""
        if keep_last <= 0:
            return []
        removed = []
        for old in self.list_checkpoints()[:-keep_last]:
            if (protect is None or old.resolve() != Path(protect).resolve()) and remove_folder(old, checkpoint.CHECKPOINT_TAG):
                removed.append(old)
        return removed

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the hidden leftovers (a half-written checkpoint, a half-deleted old one, a `latest`,
        recipe.yaml or metrics.jsonl being written) of writers on this host whose process is gone,
        e.g. killed with SIGKILL. Returns what was removed."""
        removed = remove_stale(self.checkpoints)
        for name in (RECIPE_FILE, METRICS_FILE, *CSV_FILES):
            removed += remove_stale(self.path, name)
        return removed

    # Resuming -----------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run has already been started here (checkpoints, or metrics in any sink)."""
        metrics = [self.metrics, *(self.path / name for name in CSV_FILES)]
        return bool(self.list_checkpoints()) or any(p.is_file() for p in metrics) or (self.path / TENSORBOARD_DIR).is_dir()

    def find_resume(self, resume: str, clean: bool = False) -> Path | None:
        """The checkpoint a run with `--resume` `resume` ("auto", "never" or a path) continues from,
        None for a fresh start; `OmUserError` when the run must not start. `clean`: first remove
        the temporaries of dead writers (only the process that writes the folder should)."""
        self.notes = []
        if resume == "never":
            if self.holds_run():
                raise OmUserError(f"{self.path}: already holds a run; resume it with --resume auto, or choose another --out")
            return None
        if clean:  # leftovers of a writer killed mid-checkpoint (SIGKILL, power loss)
            self.remove_stale_temporaries()
        if resume == "auto":
            # The newest checkpoint whose checksums all match: a damaged newer one is passed over.
            found, passed_over = self.newest_complete()
            self.notes = [f"passed over an incomplete checkpoint: {why}" for why in passed_over]
            if found is None and passed_over:
                raise OmUserError(
                    f"{self.checkpoints}: no complete checkpoint to resume from ({passed_over[0]}); use another --out"
                )
            return found
        return checkpoint.resolve_checkpoint(resume)

    def decide_resume(
        self,
        resume: str,
        config: OmConfig,
        recipe: Recipe,
        dataset_fingerprint: str | None,
        source: str,
        clean: bool = False,
    ) -> ResumeDecision:
        """The whole resume decision of a run of `recipe` (model `config`, the vocabulary resolved)
        into this folder: the checkpoint `find_resume` picks, checked by `check_resume` (strictly
        under `--resume auto`), and whether it has already reached the recipe's stop rule.
        `OmUserError` when the run must not start. `dataset_fingerprint` None: not known yet (the
        dry run of data.sources not prepared), so not compared."""
        found = self.find_resume(resume, clean=clean)
        decision = ResumeDecision(notes=list(self.notes))
        if found is None:
            return decision
        trainer, notes = check_resume(found, config, recipe, dataset_fingerprint, source, strict=resume == "auto", run_dir=self.path)
        decision.checkpoint, decision.trainer = found, trainer
        decision.notes += notes
        decision.complete = stop_reached(
            int(trainer.get("step", 0)), int(trainer.get("bytes_seen", 0)), float(trainer.get("elapsed_s", 0.0)), recipe.train
        )
        return decision

    # Small files --------------------------------------------------------------------------------
    def write_recipe(self, recipe_yaml: str, source: str) -> None:
        """Write recipe.yaml (the resolved recipe of this run, from `source`), atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        header = f"# Resolved recipe of this run (from {source}); train it again with `om train` on this file.\n"
        write_file(self.recipe, header + recipe_yaml)

    def start_metrics(self) -> None:
        """An empty metrics.jsonl, for a fresh run."""
        write_file(self.metrics, "")

    def append_metrics(self, record: dict) -> None:
        """Append one record to metrics.jsonl (a line; a kill mid-line is cut off on resume)."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop the records written after `step` (by a run that went on past its last checkpoint)
        and any half-written line, atomically."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        write_file(self.metrics, "".join(line + "\n" for line in kept))


def stop_reached(step: int, nbytes: int, elapsed_s: float, train) -> str | None:
    """The first stop rule of recipe section `train` that a run at `step`, `nbytes` bytes seen and
    `elapsed_s` seconds has reached, as "train.max_steps 20"; None while it has more to do."""
    if train.max_steps is not None and step >= train.max_steps:
        return f"train.max_steps {train.max_steps}"
    if train.max_bytes is not None and nbytes >= train.max_bytes:
        return f"train.max_bytes {train.max_bytes}"
    if train.max_minutes is not None and elapsed_s >= 60.0 * train.max_minutes:
        return f"train.max_minutes {train.max_minutes:g}"
    return None


def check_resume(
    folder: Path,
    config: OmConfig,
    recipe: Recipe,
    dataset_fingerprint: str | None,
    source: str,
    strict: bool = False,
    run_dir: Path | None = None,
) -> tuple[dict, list[str]]:
    """Verify checkpoint `folder` and check that a run of `recipe` with model `config` can continue
    it. Returns its trainer.json and notes for the user (changed recipe keys, another dataset).

    `OmUserError` for a different model section or state mode; with `strict` (`--resume auto` in
    run folder `run_dir`) also for any recipe key outside `CONTINUATION_KEYS` that changed, and for
    another dataset (a different fingerprint)."""
    trainer = checkpoint.verify_checkpoint(folder)
    saved = OmConfig.load(folder / checkpoint.CONFIG_FILE)
    if saved != config:
        raise OmUserError(
            f"{source}: the model section differs from the checkpoint {folder} ({_config_diff(config, saved)}); "
            "use --out for a new run"
        )
    if trainer.get("state_mode") != recipe.train.state:
        raise OmUserError(
            f"{source}: train.state: {recipe.train.state!r} but {folder} was trained with {trainer.get('state_mode')!r}"
        )
    where = run_dir if run_dir is not None else folder
    notes = []
    old = trainer.get("recipe")
    if isinstance(old, dict):
        changed = recipe_changes(_normalized(old), recipe.to_dict())
        fixed = [c for c in changed if not _may_change(c[0])]
        if strict and fixed:
            shown = "; ".join(f"{key}: {_show(a)} -> {_show(b)}" for key, a, b in fixed[:4])
            more = f"; and {len(fixed) - 4} more" if len(fixed) > 4 else ""
            raise OmUserError(
                f"{source}: {where} holds a run trained with another recipe ({shown}{more}); --resume auto continues a run only with "
                f"the recipe it was trained with: use --out DIR for a new run, restore the old values to continue this one, "
                f"or --resume {folder} to continue it with the new ones"
            )
        if changed:
            notes.append(
                "recipe keys changed since the checkpoint: " + ", ".join(f"{key}: {_show(a)} -> {_show(b)}" for key, a, b in changed[:6])
            )
    fp = (trainer.get("dataset") or {}).get("fingerprint")
    if fp and dataset_fingerprint and fp != dataset_fingerprint:
        if strict:
            raise OmUserError(
                f"{source}: the dataset differs from the one {where} was trained on (meta.json fingerprint {fp[:12]} -> "
                f"{dataset_fingerprint[:12]}); use --out DIR for a new run, or --resume {folder} to continue it on this data"
            )
        notes.append(f"the dataset differs from the one {folder} was trained on")
    return trainer, notes


def recipe_changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, old value, new value) of every leaf that differs between two recipe dicts."""
    out = []
    for k in [*new, *(k for k in old if k not in new)]:  # in the schema's order
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in CONTINUATION_KEYS)


def _normalized(old: dict) -> dict:
    """A recipe dict saved by an earlier run, with the defaults of keys added since filled in (as
    is, if it no longer validates)."""
    from om.train.recipe import Recipe

    try:
        return Recipe.model_validate(old).to_dict()
    except ValueError:
        return old


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def _show(value: Any) -> str:
    return _REPR.repr(value)


def _config_diff(a: OmConfig, b: OmConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    keys = [k for k in da if da.get(k) != db.get(k)]
    return ", ".join(f"model.{k}: {da[k]!r} in the recipe vs {db.get(k)!r}" for k in keys[:3])
