"""`save_pretrained` / `from_pretrained`: an `OmLLM` in the Hugging Face folder layout.

A pretrained folder holds ``config.json`` (the `OmConfig` JSON) and ``model.safetensors`` (the
weights as Om checkpoints store them: each tied tensor once, safetensors only, never pickle), plus
the codec's files (``codec.json`` ...) when `save_pretrained` is given one, so `om.data.load_codec`
reads the folder too.

Why not `huggingface_hub.ModelHubMixin`: it would make huggingface_hub a hard dependency of the
model class, its `from_pretrained` cannot take an Om checkpoint or run folder (with their checksum
verification), and its errors are not Om's one-line `OmUserError`s. Here huggingface_hub is needed
only to fetch a Hub repo id, and is imported only then.

This module imports nothing outside `om.model` when it is imported; the errors, the atomic writes,
the weights file and the checkpoint loader are imported inside the methods that use them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from om.model.config import OmConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_FILE = "trainer.json"  # marks an Om checkpoint folder (om.checkpoint)
PICKLED_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "model.bin", "model.ckpt")
HUB_FILES = ["*.json", "*.safetensors", "*.model"]  # never a pickle, even if the repo has one
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _config_problem(err: ValueError) -> str:
    from om.checkpoint import config_problem  # outside om/model: imported only when a config fails

    return config_problem(err)


class PretrainedMixin:
    """Adds `save_pretrained(path)` and `OmLLM.from_pretrained(name_or_path)` to `OmLLM`.

    save_pretrained(path, codec=None) -> Path: writes ``path/config.json`` and
    ``path/model.safetensors`` (and the codec's files if given); creates the folder.
    from_pretrained(name_or_path, device="cpu") -> model in eval mode on `device`, from
    (a) a folder written by `save_pretrained`, (b) an Om checkpoint or run folder (loaded and
    verified by `om.checkpoint.load_checkpoint`), or (c) a Hugging Face Hub repo id, fetched with
    `huggingface_hub.snapshot_download` (only *.json, *.safetensors and *.model files) when that
    package is installed. Anything unusable is a one-line `OmUserError` naming the file.
    """

    def save_pretrained(self, path: str | Path, codec=None) -> Path:
        from om.atomic import failed_write_is_run_error, write_file, writing_file
        from om.checkpoint import save_weights
        from om.errors import OmUserError

        folder = Path(path).expanduser()
        if folder.exists() and not folder.is_dir():
            raise OmUserError(f"{folder}: exists and is not a folder; save_pretrained writes a folder")
        if (folder / TRAINER_FILE).is_file():
            raise OmUserError(f"{folder}: is an Om checkpoint folder (it has {TRAINER_FILE}); save_pretrained into a new folder")
        config: OmConfig = self.config
        if codec is not None and codec.vocab_size != config.vocab_size:
            raise OmUserError(f"codec: it has {codec.vocab_size} ids but the model's vocab_size is {config.vocab_size}", key="codec")
        with failed_write_is_run_error(lambda reason: f"{folder}: cannot write the pretrained model ({reason})"):
            folder.mkdir(parents=True, exist_ok=True)
            with writing_file(folder / WEIGHTS_FILE) as tmp:
                save_weights(self, tmp)
            write_file(folder / CONFIG_FILE, config.to_json() + "\n")
            if codec is not None:
                codec.save(folder)
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu", revision: str | None = None, **hub_kwargs):
        """See the class docstring. `revision` and `hub_kwargs` (cache_dir, token, local_files_only, ...)
        go to `huggingface_hub.snapshot_download` and are used only for a Hub repo id."""
        path = Path(name_or_path).expanduser()
        if not path.exists():
            path = _download(str(name_or_path), revision, hub_kwargs)
        if path.is_dir() and (path / CONFIG_FILE).is_file() and not (path / TRAINER_FILE).is_file():
            return cls._load_pretrained_folder(path, device)
        _refuse_unknown_folder(path)
        from om.checkpoint import load_checkpoint

        model = load_checkpoint(path, device=device).model
        if type(model) is not cls:  # a subclass of OmLLM asked for it: same weights, its own class
            same = cls(model.config)
            same.load_state_dict(model.state_dict())
            model = same.to(device).eval()
        return model

    @classmethod
    def _load_pretrained_folder(cls, folder: Path, device):
        from safetensors import SafetensorError

        from om.checkpoint import load_weights
        from om.errors import OmUserError
        from om.model.sizing import check_fits, inference_estimate

        config_file, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not weights.is_file():
            pickled = [name for name in PICKLED_WEIGHTS if (folder / name).is_file()]
            if pickled:
                raise OmUserError(f"{folder / pickled[0]}: pickled weights are never loaded; only {WEIGHTS_FILE} (safetensors) is read")
            raise OmUserError(f"{weights}: missing; {folder} is not a complete pretrained folder")
        try:
            config = OmConfig.load(config_file)
        except ValueError as err:
            raise OmUserError(f"{config_file}: not a valid model config ({_config_problem(err)})") from None
        _check_weights_size(config, weights, config_file)
        check_fits(inference_estimate(config), device, str(config_file))
        model = cls(config)
        try:
            load_weights(model, weights, device)
        except (SafetensorError, RuntimeError, KeyError, ValueError) as err:
            raise OmUserError(f"{weights}: weights do not fit {config_file} ({_one_line(err)})") from None
        return model.to(device).eval()


def _check_weights_size(config: OmConfig, weights: Path, config_file: Path) -> None:
    """Refuse, from the safetensors header alone, weights whose element count is not the config's
    (so a config claiming a huge model next to small weights allocates nothing)."""
    from safetensors import SafetensorError, safe_open

    from om.errors import OmUserError
    from om.model.sizing import parameter_count

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            stored = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise OmUserError(f"{weights}: not a valid safetensors file ({_one_line(err)})") from None
    expected = parameter_count(config)
    if stored != expected:
        raise OmUserError(
            f"{weights}: weights do not fit {config_file} (the file holds {stored:,} values, the config describes {expected:,} parameters)"
        )


def _refuse_unknown_folder(path: Path) -> None:
    """A clear refusal for a folder that is neither layout (load_checkpoint words it for checkpoints only)."""
    from om.errors import OmUserError

    if not path.is_dir() or (path / TRAINER_FILE).is_file() or (path / WEIGHTS_FILE).is_file() or (path / "checkpoints").is_dir():
        return  # load_checkpoint explains what is wrong with it
    if any(p.is_dir() and p.name.startswith("step-") for p in path.iterdir()) or (path / "latest").is_file():
        return  # a run's checkpoints folder
    pickled = [name for name in PICKLED_WEIGHTS if (path / name).is_file()]
    if pickled:
        raise OmUserError(f"{path / pickled[0]}: pickled weights are never loaded; only {WEIGHTS_FILE} (safetensors) is read")
    raise OmUserError(
        f"{path}: neither a pretrained folder ({CONFIG_FILE} + {WEIGHTS_FILE}) nor an Om checkpoint or run folder"
    )


def _download(name: str, revision: str | None, hub_kwargs: dict) -> Path:
    """The local snapshot of Hub repo `name`, or an `OmUserError` saying why there is none."""
    from om.errors import OmUserError

    if not _REPO_ID.match(name):
        raise OmUserError(f"{name}: no such folder (nor a Hugging Face Hub repo id)")
    try:
        import huggingface_hub
    except ImportError:
        raise OmUserError(
            f"{name}: no such local folder; to fetch it as a Hugging Face Hub repo id install huggingface_hub "
            "(pip install huggingface_hub)"
        ) from None
    errors = getattr(huggingface_hub, "errors", None)
    hub_errors = tuple(e for e in (getattr(errors, "EntryNotFoundError", None),) if isinstance(e, type))
    try:
        folder = huggingface_hub.snapshot_download(name, revision=revision, allow_patterns=HUB_FILES, **hub_kwargs)
    except (OSError, ValueError, *hub_errors) as err:
        raise OmUserError(f"{name}: no such local folder, and not available from the Hugging Face Hub ({_one_line(err)})") from None
    return Path(folder)
