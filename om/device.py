"""Choosing the torch device a model runs on, from the name a user wrote."""

from __future__ import annotations

import torch

from om.errors import OmUserError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """"auto" (cuda if available, else cpu) or a torch device name -> `torch.device`.

    An unusable name is an `OmUserError` that starts with `key`, the name the caller knows the
    setting by (a recipe key such as `train.device`, a flag such as `--device`).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OmUserError(f"{key}: {name!r} is not a torch device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OmUserError(f"{key}: {name!r} asked for CUDA but no CUDA device is available")
    return device
