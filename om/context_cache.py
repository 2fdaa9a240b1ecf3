"""Saved context: where a stream stands after reading a prefix, in a constant-size safetensors file.

A `StreamContext` is the model state after every token of the prefix but the last, plus that last
token (`pending`), which has been read but not yet fed. Keeping one token back is what lets the
next reader get the prediction for what follows the prefix without storing logits: evaluation
feeds `pending` first and scores the input's first token from it; sampling feeds `pending` plus
the prompt and samples from the last position. A fresh stream is the initial state with the
document separator pending, so "start of a document" and "after a saved prefix" are one code path.

File format (`save_context` / `load_context`): a safetensors file whose tensors are
`OmState.to_dict()` plus `pending` (int64, shape (1,)), and whose string metadata holds
`format` = "om-context-cache", `version`, `checkpoint` (sha256 of the checkpoint's
model.safetensors), `offset` (tokens fed), `tokens` (offset + 1, the pending token counted),
`bytes` (input bytes read), `codec`, `vocab_size` and `inputs` (JSON list of names).
`context_bytes` / `load_context_bytes` are the same format in memory (`om cache -o -` writes it
to stdout, `--context-cache -` reads it from stdin).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save, save_file

from om.atomic import failed_write_is_run_error, remove_stale, writing_file
from om.errors import OmUserError
from om.model.state import OmState

FORMAT = "om-context-cache"
VERSION = 1


@dataclass
class StreamContext:
    """A stream read up to some point, ready to continue.

    state: the model state after every token but the last (None: the model's initial state, batch
        1 or any batch); its tensors have batch 1 when loaded from a file.
    pending: the last token of the stream so far, read but not yet fed to the model.
    bytes_read: original input bytes the stream covers (0 for a fresh stream).
    inputs: names of what was read, for the file header.
    """

    state: OmState | None
    pending: int
    bytes_read: int = 0
    inputs: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, codec) -> "StreamContext":
        """The start of a document: nothing read, the document separator pending."""
        return cls(state=None, pending=int(codec.doc_sep_id))

    @property
    def offset(self) -> int:
        """Tokens fed to the model so far (the pending token not counted)."""
        return 0 if self.state is None else self.state.offset

    def state_for(self, model, batch_size: int) -> OmState:
        """The state for `batch_size` streams that all continue this context, on the model's device."""
        if self.state is None:
            return model.init_state(batch_size)
        device = next(model.parameters()).device
        state = self.state.to(device)
        if state.batch_size != batch_size:
            state = state.select([0] * batch_size)
        return state


def _file_contents(context: StreamContext, checkpoint_fingerprint: str, codec, model) -> tuple[dict, dict]:
    """(tensors, metadata) of the file that holds `context`."""
    state = context.state
    if state is None:
        if model is None:
            raise ValueError("save_context needs the model to save a fresh context")
        state = model.init_state(1)
    if state.batch_size != 1:
        raise ValueError(f"a context cache holds one stream, got batch size {state.batch_size}")
    tensors = {name: t.cpu() for name, t in state.to_dict().items()}
    tensors["pending"] = torch.tensor([context.pending], dtype=torch.int64)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "checkpoint": checkpoint_fingerprint,
        "offset": str(state.offset),
        "tokens": str(state.offset + 1),
        "bytes": str(context.bytes_read),
        "codec": str(codec.name),
        "vocab_size": str(codec.vocab_size),
        "inputs": json.dumps(context.inputs),
    }
    return tensors, metadata


def context_bytes(context: StreamContext, checkpoint_fingerprint: str, codec, model=None) -> bytes:
    """The context cache file of `context`, in memory (what `save_context` writes)."""
    tensors, metadata = _file_contents(context, checkpoint_fingerprint, codec, model)
    return save(tensors, metadata=metadata)


def save_context(path: str | Path, context: StreamContext, checkpoint_fingerprint: str, codec, model=None) -> Path:
    """Write `context` to `path` atomically (`om.atomic.writing_file`: a temporary file next to it,
    fsynced, then renamed; its mode follows the umask). Returns the path.

    `model` is needed only when `context.state` is None (it supplies the initial state).
    """
    path = Path(path)
    tensors, metadata = _file_contents(context, checkpoint_fingerprint, codec, model)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OmUserError(f"{path}: folder {parent} does not exist")
    remove_stale(parent, path.name)  # temporaries of a writer that was killed
    # A full disk: one line, nothing left behind.
    with failed_write_is_run_error(lambda reason: f"{path}: cannot write the context cache ({reason}); nothing was written"):
        with writing_file(path, "cache") as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_header(path: str | Path) -> dict[str, str]:
    """The metadata of a context cache file, checked to be one (OmUserError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise OmUserError(f"{path}: context cache not found")
    try:
        with open(path, "rb") as f:
            return _header(f, path)
    except OSError as err:
        raise OmUserError(f"{path}: not a context cache (unreadable safetensors header: {err})") from None


def _header(f, name) -> dict[str, str]:
    """The checked metadata of the context cache being read from binary file `f` (named `name`)."""
    try:
        size = int.from_bytes(f.read(8), "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError("bad header size")
        header = json.loads(f.read(size))
        metadata = header.get("__metadata__") or {}
    except (OSError, ValueError, AttributeError) as err:
        raise OmUserError(f"{name}: not a context cache (unreadable safetensors header: {err})") from None
    if metadata.get("format") != FORMAT:
        raise OmUserError(f"{name}: not a context cache (no '{FORMAT}' format tag; make one with `om cache`)")
    if metadata.get("version") != str(VERSION):
        raise OmUserError(f"{name}: context cache format version {metadata.get('version')!r}, this om reads version {VERSION}")
    return metadata


def load_context(path: str | Path, checkpoint_fingerprint: str, codec) -> StreamContext:
    """Read a context cache, refusing one made by another checkpoint or codec (OmUserError)."""
    path = Path(path)
    meta = read_header(path)
    return _load(path, meta, lambda: load_file(str(path)), checkpoint_fingerprint, codec)


def load_context_bytes(data: bytes, name: str, checkpoint_fingerprint: str, codec) -> StreamContext:
    """`load_context` of a cache file's contents in memory (read from stdin, say); `name` names it in errors."""
    meta = _header(io.BytesIO(data), name)
    return _load(name, meta, lambda: load(data), checkpoint_fingerprint, codec)


def _load(path, meta: dict[str, str], read_tensors, checkpoint_fingerprint: str, codec) -> StreamContext:
    made_by = meta.get("checkpoint", "")
    if made_by != checkpoint_fingerprint:
        raise OmUserError(
            f"{path}: context cache was made by checkpoint {made_by[:16] or '?'}..., "
            f"not by this checkpoint ({checkpoint_fingerprint[:16]}...); rebuild it with `om cache`"
        )
    if meta.get("codec") != codec.name or meta.get("vocab_size") != str(codec.vocab_size):
        raise OmUserError(
            f"{path}: context cache codec {meta.get('codec')} (vocab {meta.get('vocab_size')}) does not match "
            f"the checkpoint's {codec.name} (vocab {codec.vocab_size})"
        )
    try:
        tensors = read_tensors()
        pending = int(tensors.pop("pending").reshape(-1)[0])
        state = OmState.from_dict(tensors)
        inputs = json.loads(meta.get("inputs", "[]"))
        bytes_read = int(meta.get("bytes", "0"))
    except (SafetensorError, OSError, ValueError, KeyError, IndexError, RuntimeError) as err:
        raise OmUserError(f"{path}: corrupt context cache ({' '.join(str(err).split())})") from None
    if state.offset != int(meta.get("offset", -1)):
        raise OmUserError(f"{path}: corrupt context cache (offset {state.offset} != header {meta.get('offset')})")
    return StreamContext(state=state, pending=pending, bytes_read=bytes_read, inputs=inputs)
