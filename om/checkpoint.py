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

A checkpoint is written into a hidden temporary sibling folder (``.tmp-step-N-PID-HOST-*``), every
file fsynced, then renamed into place, so a reader sees either the whole checkpoint or none of it;
an old checkpoint is renamed to a hidden name before it is deleted, so it never looks complete
while half deleted. Leftovers of a killed writer are removed by `remove_stale_temporaries`. The run
folder's ``checkpoints/latest`` file names the newest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from om.model.config import OmConfig
from om.data.outdir import host_tag, pid_alive
from om.errors import OmRunError, OmUserError
from om.model.sizing import check_fits, inference_estimate, parameter_count
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
TMP_PREFIX = ".tmp-"  # a checkpoint being written
OLD_PREFIX = ".old-"  # a checkpoint being replaced or deleted
# `.tmp-step-0000004-PID-HOST-xxxx`, `.old-step-0000004-PID-HOST-xxxx`, `.latest.tmp-PID-HOST`
_TEMP_NAME = re.compile(r"^(?:\.(?:tmp|old)-" + STEP_PREFIX + r"\d+|\." + LATEST_FILE + r"\.tmp)-(\d+)-(\w+?)(?:-[^-]*)?$")


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


def _owner() -> str:
    """`PID-HOST` of this process: marks its temporary names, so leftovers of a dead writer can be found."""
    return f"{os.getpid()}-{host_tag()}"


def write_failure_reason(err: BaseException) -> str | None:
    """The reason text of a failed write (full disk, I/O error), or None for other exceptions."""
    if isinstance(err, OSError):
        return err.strerror or _one_line(err)
    if isinstance(err, SafetensorError):  # the Rust writer wraps the OS error in its message
        m = re.search(r"I/O error: (.*?) \(os error \d+\)", str(err))
        return m.group(1) if m else None
    return None


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
    `directory` is replaced. A failed write (a full disk, an I/O error) removes the temporary folder
    and raises `OmRunError`; an existing checkpoint at `directory` is then left as it was.
    """
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-{_owner()}-", dir=final.parent))
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
        # trainer.json is written last: a folder without it is never taken for a checkpoint.
        _write_json(tmp / TRAINER_FILE, meta)
        _fsync_dir_files(tmp)
        _fsync_dir(tmp)
        if final.exists():
            old = final.parent / f"{OLD_PREFIX}{final.name}-{_owner()}-{secrets.token_hex(4)}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_failure_reason(err)
        if reason is not None:
            raise OmRunError(f"{final}: cannot write the checkpoint ({reason}); nothing of it was kept") from None
        raise
    return final


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename into it) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def write_latest(checkpoints_dir: str | Path, checkpoint: str | Path) -> None:
    """Point `checkpoints_dir/latest` at `checkpoint` (a folder inside it), atomically."""
    checkpoints_dir = Path(checkpoints_dir)
    tmp = checkpoints_dir / f".{LATEST_FILE}.tmp-{_owner()}"
    try:
        with open(tmp, "w") as f:
            f.write(Path(checkpoint).name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, checkpoints_dir / LATEST_FILE)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OmRunError(f"{checkpoints_dir / LATEST_FILE}: cannot write ({err.strerror or _one_line(err)})") from None


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


def newest_complete_checkpoint(checkpoints_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The checkpoint with the highest step in `checkpoints_dir` whose files all match their
    checksums (None if there is none), and the reason each newer folder was passed over."""
    passed_over: list[str] = []
    for folder in reversed(list_checkpoints(checkpoints_dir)):
        try:
            verify_checkpoint(folder)
        except OmUserError as err:
            passed_over.append(str(err))
            continue
        return folder, passed_over
    return None, passed_over


def remove_stale_temporaries(checkpoints_dir: str | Path) -> list[Path]:
    """Delete the hidden leftovers (a half-written checkpoint, a half-deleted old one, a `latest`
    being written) of writers on this host whose process is gone, e.g. killed with SIGKILL.
    Returns what was removed."""
    folder = Path(checkpoints_dir)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    host = host_tag()
    removed = []
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or m.group(2) != host or pid_alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def prune_checkpoints(checkpoints_dir: str | Path, keep_last: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints (never `protect`); keep_last <= 0 keeps all.

    Each is first renamed to a hidden name, so a kill during the deletion leaves no half-deleted
    folder that looks like a checkpoint."""
    if keep_last <= 0:
        return
    found = list_checkpoints(checkpoints_dir)
    for old in found[:-keep_last]:
        if protect is None or old.resolve() != Path(protect).resolve():
            trash = old.parent / f"{OLD_PREFIX}{old.name}-{_owner()}-{secrets.token_hex(4)}"
            try:
                os.replace(old, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)


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


def _config_problem(err: ValueError) -> str:
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
        raise OmUserError(f"{config_file}: not a valid model config ({_config_problem(err)})") from None
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
