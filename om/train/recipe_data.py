"""Resolve a recipe's `data` section to an opened dataset, preparing sources into a cache once."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from om.errors import OmUserError
from om.train.recipe import STDLIB_EXCLUDES, DataSection, expand_path, recipe_keys


def cache_root() -> Path:
    """$OM_CACHE_DIR, else ~/.cache/om."""
    env = os.environ.get("OM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "om"


def _prepare_options(data: DataSection, source: str) -> dict:
    sources, exclude = [], list(data.exclude)
    for i, text in enumerate(data.sources or []):
        uses_stdlib = "{stdlib}" in text
        path = Path(expand_path(text, f"{source}: data.sources[{i}]")).resolve()
        if not path.exists():
            raise OmUserError(f"{source}: data.sources[{i}]: {path}: no such file or folder")
        sources.append(str(path))
        if uses_stdlib and data.stdlib_excludes:
            exclude += [p for p in STDLIB_EXCLUDES if p not in exclude]
    return {
        "sources": sources,
        "codec": data.codec,
        "vocab_size": data.vocab_size,
        "include": list(data.include),
        "exclude": exclude,
        "val_fraction": data.val_fraction,
        "errors": data.errors,
    }


def dataset_location(data: DataSection, source: str = "recipe") -> Path:
    """The prepared folder `data.dataset` names (placeholders expanded), which must exist."""
    path = Path(expand_path(data.dataset, f"{source}: data.dataset")).resolve()
    if not path.exists():
        raise OmUserError(f"{source}: data.dataset: {path}: no such folder (run `om prepare` first)")
    return path


def prepared_location(data: DataSection, source: str = "recipe") -> tuple[Path, dict]:
    """Where `data.sources` are prepared in the cache, and the resolved options that key it.

    Checks that every source exists; writes nothing."""
    options = _prepare_options(data, source)
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "datasets" / f"{data.codec}-{key}", options


def resolve_dataset(data: DataSection, source: str = "recipe", progress: Callable | bool | None = None):
    """Open the dataset a `data` section names; prepare it into the cache first if needed.

    Returns `(dataset, info)` where info says where it came from (the resolved options, whether
    the cache was reused).
    """
    from om.data import open_dataset, prepare_dataset

    if data.dataset is not None:
        path = dataset_location(data, source)
        return open_dataset(path), {"dataset": str(path), "prepared": False}

    out, options = prepared_location(data, source)
    if (out / "meta.json").is_file():
        try:
            return open_dataset(out), {"dataset": str(out), "prepared": False, **options}
        except OmUserError:
            pass  # a broken cache entry is rebuilt below
    # prepare_dataset builds the folder under a temporary name and renames it at the end.
    kwargs = dict(
        codec=options["codec"],
        vocab_size=options["vocab_size"],
        include=tuple(options["include"]),
        exclude=tuple(options["exclude"]),
        force=True,
        errors=options["errors"],
        progress=progress,
        command_line=f"om train {source} (data.sources)",
    )
    if options["val_fraction"] is not None:
        kwargs["val_fraction"] = options["val_fraction"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with recipe_keys(source):  # errors found only on the data (a vocabulary too small for it, bad UTF-8)
        prepare_dataset(options["sources"], out, **kwargs)
    return open_dataset(out), {"dataset": str(out), "prepared": True, **options}
