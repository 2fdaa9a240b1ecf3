"""Fixtures shared by the training tests: an isolated data cache and a small prepared byte dataset.

Import them into a test module (`from tests.train_fixtures import dataset, isolated_cache`); the
cache fixture is autouse, so every test of that module gets its own OM_CACHE_DIR.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from om.data import prepare_dataset

JSON_SRC = Path(sysconfig.get_paths()["stdlib"]) / "json"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The stdlib `json` package prepared with the bytes codec (once per test module)."""
    out = tmp_path_factory.mktemp("data") / "json-bytes"
    prepare_dataset([JSON_SRC], out, codec="bytes", exclude=("__pycache__",))
    return out
