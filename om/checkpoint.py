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

A checkpoint is written into a temporary sibling folder and renamed into place, so a reader sees
either the whole checkpoint or none of it. The run folder's ``checkpoints/latest`` file names the
newest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from om.config import OmConfig
from om.errors import OmUserError
from om.model import OmLLM

FORMAT = "om-checkpoint/1"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.safetensors"
CONFIG_FILE = "config.json"
TRAINER_FILE = "trainer.json"
LATEST_FILE = "latest"
CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step-"


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def step_dir_name(step: int) -> str:
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
) -> Path:
    """Write a checkpoint folder at `directory` atomically and return its path.

    `trainer` is stored in trainer.json with ``files`` (sha256 of every other file), ``dataset``
    and ``format`` added. `tensors` (optional) go to state.safetensors. An existing folder at
    `directory` is replaced.
    """
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
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
        meta = dict(trainer)
        meta["format"] = FORMAT
        meta["dataset"] = dataset
        meta["files"] = files
        _write_json(tmp / TRAINER_FILE, meta)
        _fsync_dir_files(tmp)
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_latest(checkpoints_dir: str | Path, checkpoint: str | Path) -> None:
    """Point `checkpoints_dir/latest` at `checkpoint` (a folder inside it), atomically."""
    checkpoints_dir = Path(checkpoints_dir)
    tmp = checkpoints_dir / f".{LATEST_FILE}.tmp-{os.getpid()}"
    tmp.write_text(Path(checkpoint).name + "\n")
    os.replace(tmp, checkpoints_dir / LATEST_FILE)


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders (with trainer.json) in `checkpoints_dir`, oldest first."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def prune_checkpoints(checkpoints_dir: str | Path, keep_last: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints (never `protect`); keep_last <= 0 keeps all."""
    if keep_last <= 0:
        return
    found = list_checkpoints(checkpoints_dir)
    for old in found[:-keep_last]:
        if protect is None or old.resolve() != Path(protect).resolve():
            shutil.rmtree(old, ignore_errors=True)


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
            target = folder / latest.read_text().strip()
            if target.is_dir():
                return target
        found = list_checkpoints(folder)
        if found:
            return found[-1]
    raise OmUserError(f"{p}: neither a checkpoint folder (no {TRAINER_FILE}) nor a run folder with checkpoints")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


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
        raise OmUserError(f"{config_file}: not a valid model config ({_one_line(err)})") from None
    model = OmLLM(config)
    model_file = folder / MODEL_FILE
    try:
        load_weights(model, model_file, device)
    except (SafetensorError, RuntimeError, KeyError, json.JSONDecodeError) as err:
        raise OmUserError(f"{model_file}: weights do not fit {config_file} ({_one_line(err)})") from None
    model.to(device).eval()
    codec = load_codec(folder)
    return Checkpoint(
        path=folder,
        config=config,
        model=model,
        codec=codec,
        trainer=trainer,
        dataset=trainer.get("dataset"),
        fingerprint=trainer["files"][MODEL_FILE],
    )
