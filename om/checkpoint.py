"""Checkpoints: a folder of safetensors + JSON files, written atomically and verified on load.

Layout of one checkpoint folder (e.g. ``run/checkpoints/step-0000100/``):

- ``model.safetensors``: the model weights (tied head weight stored once).
- ``optimizer.safetensors``: the optimizer state, flattened to tensors; param groups as JSON
  metadata (never pickle). Absent when no optimizer was given.
- ``state.safetensors``: optional extra tensors (e.g. the carried stream state of a training run).
- ``config.json``: the `OmConfig`.
- the codec's files (``codec.json`` and whatever the codec needs).
- ``trainer.json``: whatever the caller passes (step, RNG states, ...) plus ``files`` (sha256 of
  every other file in the folder), ``dataset`` (location + fingerprint) and ``format``.
- optional documentation files (``extra_files``, e.g. the ``README.md`` model card of a run's final
  checkpoint): written with the others but left out of ``files``, so they may be edited; nothing
  here reads them, and `verify_checkpoint` checks only the files listed.

A checkpoint is written with `om.atomic.writing_folder`: into a hidden temporary sibling folder
(``.step-N.om-checkpoint-PID-HOST-*.tmp``), every file fsynced, then renamed into place, so a
reader sees either the whole checkpoint or none of it; a checkpoint it replaces is renamed to a
hidden name before it is deleted, so it never looks complete while half deleted. Files and folders
get the modes of the user's umask (0644/0755 under umask 022).

This module also holds the names a *reader* follows in a run folder: ``checkpoints/`` holds
``step-NNNNNNN`` folders (`step_dir_name`, `list_checkpoints`) and the ``latest`` file naming the
newest (`write_latest`; read by `resolve_checkpoint`). They live here, once, because `om eval`,
`om sample` and `om cache` open run folders through `load_checkpoint` and must not depend on the
training package. What a training run does with its folder (when `latest` moves, pruning to
``keep_last``, the newest checksum-verified checkpoint, leftovers of dead writers, resuming,
metrics.jsonl, recipe.yaml) is `om.train.run_folder`'s job.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from om.atomic import failed_write_is_run_error, write_file, writing_folder
from om.errors import OmRunError, OmUserError
from om.model import OmLLM
from om.model.config import OmConfig
from om.model.sizing import check_fits, inference_estimate, parameter_count

FORMAT = "om-checkpoint/1"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.safetensors"
CONFIG_FILE = "config.json"
TRAINER_FILE = "trainer.json"
LATEST_FILE = "latest"
CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step-"
CHECKPOINT_TAG = "checkpoint"  # temporary names: `.step-0000004.om-checkpoint-PID-HOST-*.tmp`


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    path: the checkpoint folder; config: its `OmConfig`; model: an `OmLLM` with the weights loaded,
    in eval mode, on the requested device; codec: the `om.data.Codec` saved with it; trainer: the
    parsed trainer.json; dataset: ``{"path": ..., "fingerprint": ...}`` of the training data, or
    None; fingerprint: sha256 hex of model.safetensors (identifies the weights).
    """

    path: Path
    config: OmConfig
    model: OmLLM
    codec: Any
    trainer: dict
    dataset: dict | None
    fingerprint: str


# Hashing ------------------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def step_dir_name(step: int) -> str:
    """The name of the checkpoint folder of `step` inside ``checkpoints/``."""
    return f"{STEP_PREFIX}{step:07d}"


# Optimizer state <-> tensors ----------------------------------------------------------------------
def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten `optimizer.state_dict()` to (tensors, string metadata) for safetensors."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in sd["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    # One metadata key: safetensors keeps metadata in a hash map, so several keys would be written in
    # a random order and identical states would give different files.
    info = {"format": FORMAT, "optimizer": type(optimizer).__name__, "param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, {"om": json.dumps(info)}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """Rebuild an optimizer state dict from `optimizer_to_tensors` output."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    info = json.loads(metadata["om"])
    for index, slots in info.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(slots)
    groups = info["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def load_optimizer_state(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Load `optimizer.safetensors` of checkpoint folder `path` into `optimizer`."""
    file = Path(path) / OPTIMIZER_FILE
    if not file.is_file():
        raise OmUserError(f"{file}: missing; this checkpoint has no optimizer state to resume from")
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        saved, wanted = json.loads(metadata["om"]).get("optimizer"), type(optimizer).__name__
        if saved is not None and saved != wanted:
            raise OmUserError(f"{file}: optimizer state of {saved}, but this run's train.optimizer needs {wanted}; "
                              "continue the checkpoint with the optimizer it was trained with")
        optimizer.load_state_dict(optimizer_from_tensors(tensors, metadata))
    except (SafetensorError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise OmUserError(f"{file}: not a valid optimizer state ({_one_line(err)})") from None


def load_extra_tensors(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The extra tensors saved with `save_checkpoint(..., tensors=...)`, or None if there are none."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        return None
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise OmUserError(f"{file}: not a valid safetensors file ({_one_line(err)})") from None


# Saving -------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write a model's state dict to safetensors, each shared (tied) tensor once, deterministically."""
    state = _unwrap(model).state_dict()
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    first_by_storage: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in first_by_storage:
            tied[name] = first_by_storage[key]
            continue
        first_by_storage[key] = name
        tensors[name] = t.detach().cpu().contiguous()
    save_file(tensors, str(path), metadata={"om": json.dumps({"format": FORMAT, "tied": tied})})


def load_weights(model: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Load `save_weights` output into `model` (strict: every parameter must be there)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        info = json.loads((f.metadata() or {}).get("om", "{}"))
        state = {name: f.get_tensor(name) for name in f.keys()}
    for name, source in info.get("tied", {}).items():
        state[name] = state[source]
    _unwrap(model).load_state_dict(state, strict=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    config: OmConfig,
    codec: Any,
    trainer: dict,
    optimizer: torch.optim.Optimizer | None = None,
    dataset: dict | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint folder at `directory` atomically and return its path.

    `trainer` is stored in trainer.json with ``files`` (sha256 of every other file), ``dataset``
    and ``format`` added. `tensors` (optional) go to state.safetensors. `extra_files` ({name: text},
    e.g. a README.md) are written too but not checksummed (documentation, free to edit). An existing folder at
    `directory` is replaced. A failed write (a full disk, an I/O error) removes the temporary folder
    and raises `OmRunError`; an existing checkpoint at `directory` is then left as it was.
    """
    final = Path(directory)
    with failed_write_is_run_error(lambda reason: f"{final}: cannot write the checkpoint ({reason}); nothing of it was kept"):
        with writing_folder(final, CHECKPOINT_TAG) as tmp:
            _fill(tmp, model, config, codec, trainer, optimizer, dataset, tensors, extra_files or {})
    return final


def _fill(tmp: Path, model, config, codec, trainer, optimizer, dataset, tensors, extra_files: dict[str, str]) -> None:
    """Write the files of a checkpoint into the empty folder `tmp`, trainer.json last."""
    for name in extra_files:
        if not _inside(name) or "/" in name or name == TRAINER_FILE:
            raise ValueError(f"extra checkpoint file {name!r}: expected a plain file name other than {TRAINER_FILE}")
    save_weights(model, tmp / MODEL_FILE)
    if optimizer is not None:
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE), metadata=opt_meta)
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE_FILE))
    config.save(tmp / CONFIG_FILE)
    if codec is not None:
        codec.save(tmp)
    files = {
        p.relative_to(tmp).as_posix(): sha256_file(p)
        for p in sorted(tmp.rglob("*"))
        if p.is_file() and p.name != TRAINER_FILE
    }
    for name, text in extra_files.items():  # after the checksums: documentation, not checked
        (tmp / name).write_text(text)
    meta = dict(trainer)
    meta["format"] = FORMAT
    meta["dataset"] = dataset
    meta["files"] = files
    # trainer.json is written last: a folder without it is never taken for a checkpoint.
    _write_json(tmp / TRAINER_FILE, meta)


def write_latest(checkpoints_dir: str | Path, checkpoint: str | Path) -> None:
    """Point `checkpoints_dir/latest` at `checkpoint` (a folder inside it), atomically."""
    latest = Path(checkpoints_dir) / LATEST_FILE
    try:
        write_file(latest, Path(checkpoint).name + "\n")
    except OSError as err:
        raise OmRunError(f"{latest}: cannot write ({err.strerror or _one_line(err)})") from None


def _step_of(folder: Path) -> int | None:
    digits = folder.name[len(STEP_PREFIX) :]
    return int(digits) if folder.name.startswith(STEP_PREFIX) and digits.isdigit() else None


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders (with trainer.json) in `checkpoints_dir`, oldest (lowest
    step) first."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _step_of(p) is not None and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=_step_of)


# Finding and loading ------------------------------------------------------------------------------
def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder meant by `path`: a checkpoint folder itself, a run folder (its
    ``checkpoints/latest``, else the newest checkpoint) or a run's ``checkpoints`` folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise OmUserError(f"{p}: no such checkpoint or run folder")
    if not p.is_dir():
        raise OmUserError(f"{p}: not a checkpoint or run folder (expected a folder)")
    if (p / TRAINER_FILE).is_file() or (p / MODEL_FILE).is_file():
        return p
    for folder in (p / CHECKPOINTS_DIR, p):
        if not folder.is_dir():
            continue
        latest = folder / LATEST_FILE
        if latest.is_file():
            name = latest.read_text().strip()
            target = folder / name
            if name.startswith(STEP_PREFIX) and target.is_dir():
                return target
        found = list_checkpoints(folder)
        if found:
            return found[-1]
    raise OmUserError(f"{p}: neither a checkpoint folder (no {TRAINER_FILE}) nor a run folder with checkpoints")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _inside(name: object) -> bool:
    """Whether `name` is a relative path that stays inside the folder it is relative to."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    pure = PurePosixPath(name)
    return not pure.is_absolute() and ".." not in pure.parts


def config_problem(err: ValueError) -> str:
    """The first problem of a config that failed validation, without pydantic's URLs."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return _one_line(err)
    first = errors(include_url=False)[0]
    where = ".".join(str(x) for x in first["loc"])
    return _one_line(f"{where}: {first['msg']}" if where else first["msg"])


def _check_weights_file(config: OmConfig, model_file: Path, config_file: Path) -> None:
    """Refuse, before building the model, weights whose element count is not the config's.

    Reads only the safetensors header, so a config.json claiming a huge model next to small
    weights (or weights of another model) is caught without allocating anything.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(model_file), framework="pt", device="cpu") as f:
            stored = 0
            for name in f.keys():
                stored += math.prod(f.get_slice(name).get_shape())
    except (SafetensorError, OSError, ValueError) as err:
        raise OmUserError(f"{model_file}: not a valid safetensors file ({_one_line(err)})") from None
    expected = parameter_count(config)
    if stored != expected:
        raise OmUserError(
            f"{model_file}: weights do not fit {config_file} (the file holds {stored:,} values, "
            f"the config describes {expected:,} parameters)"
        )


def verify_checkpoint(path: str | Path) -> dict:
    """Check that checkpoint folder `path` is complete and unchanged; return its trainer.json.

    Raises `OmUserError` naming the first missing or corrupt file.
    """
    folder = Path(path)
    trainer_file = folder / TRAINER_FILE
    if not trainer_file.is_file():
        raise OmUserError(f"{trainer_file}: missing; {folder} is not a complete checkpoint")
    try:
        trainer = json.loads(trainer_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OmUserError(f"{trainer_file}: corrupt checkpoint metadata ({_one_line(err)})") from None
    files = trainer.get("files") if isinstance(trainer, dict) else None
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise OmUserError(f"{trainer_file}: corrupt checkpoint metadata (no checksum list with {MODEL_FILE})")
    for name, expected in files.items():
        if not _inside(name):  # a hostile trainer.json must not make us read /dev/zero or a FIFO
            raise OmUserError(f"{trainer_file}: corrupt checkpoint metadata (file name {name!r} is not inside the checkpoint)")
        file = folder / name
        if not file.is_file():
            raise OmUserError(f"{file}: missing; the checkpoint {folder} is partial")
        if sha256_file(file) != expected:
            raise OmUserError(f"{file}: checksum mismatch; the checkpoint {folder} is corrupt")
    return trainer


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load the checkpoint meant by `path` (see `resolve_checkpoint`) after verifying its checksums."""
    from om.data import load_codec  # late import: om.data is optional for pure model code

    folder = resolve_checkpoint(path)
    trainer = verify_checkpoint(folder)
    config_file = folder / CONFIG_FILE
    try:
        config = OmConfig.load(config_file)
    except FileNotFoundError:
        raise OmUserError(f"{config_file}: missing; the checkpoint {folder} is partial") from None
    except ValueError as err:
        raise OmUserError(f"{config_file}: not a valid model config ({config_problem(err)})") from None
    model_file = folder / MODEL_FILE
    _check_weights_file(config, model_file, config_file)
    check_fits(inference_estimate(config), device, str(config_file))
    model = OmLLM(config)
    try:
        load_weights(model, model_file, device)
    except (SafetensorError, RuntimeError, KeyError, json.JSONDecodeError) as err:
        raise OmUserError(f"{model_file}: weights do not fit {config_file} ({_one_line(err)})") from None
    model.to(device).eval()
    codec = load_codec(folder)
    if codec.vocab_size != config.vocab_size:
        raise OmUserError(
            f"{folder / 'codec.json'}: the codec has {codec.vocab_size} ids but {config_file} says vocab_size {config.vocab_size}"
        )
    return Checkpoint(
        path=folder,
        config=config,
        model=model,
        codec=codec,
        trainer=trainer,
        dataset=trainer.get("dataset"),
        fingerprint=trainer["files"][MODEL_FILE],
    )
