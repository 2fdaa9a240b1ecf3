"""Choosing the torch device a model runs on, from the name a user wrote."""

from __future__ import annotations

import torch

from om.errors import OmUserError


def resolve_device(device: str) -> torch.device:
    """"auto" (cuda if available, else cpu) or a torch device name -> `torch.device`.

    An unusable name is an `OmUserError` about the argument `device` (callers rename it with
    `om.errors.renamed_keys`: `--device` for the CLI, `train.device` for a recipe).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise OmUserError(f"device {device!r} is not a name torch knows (auto, cpu, cuda, cuda:N, mps)", key="device") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OmUserError(f"device {device!r} asks for CUDA but this machine has no CUDA GPU", key="device")
    return resolved
