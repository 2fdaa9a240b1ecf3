"""Fuzzing: random bytes as files, prompts and stdin to `om eval` / `om sample` with tiny
checkpoints, and random mutations of a valid recipe to `om train --dry-run`. Whatever comes in,
the command ends with exit code 0 or 2, never a traceback, and an error is exactly one line.

Examples run in-process (CliRunner) and are few (hypothesis, no deadline), so the file stays
well under a minute on two cores.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from om.data import prepare_dataset
from tests.reliability.hostile_tools import assert_no_traceback, om
from tests.test_eval_support import chars_codec, one_thread, save_tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

payloads = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"", b"\x00" * 300, b"\xff\xfe" * 100, "é".encode() * 50, b"\n" * 100, "\U0001F642".encode()[:3]]),
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    bytes_ck, _, _ = save_tiny_checkpoint(root / "bytes", seed=4)
    chars_ck, _, _ = save_tiny_checkpoint(root / "chars", codec=chars_codec(), seed=4)
    return {"bytes": bytes_ck, "chars": chars_ck}


def check(result, command: str) -> None:
    """The CLI contract whatever the input: 0 or 2, no traceback, an error is one line."""
    assert_no_traceback(result)
    assert result.exit_code in (0, 2), (result.exit_code, result.stderr)
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"om {command}: error: "), result.stderr


@FUZZ
@given(
    data=payloads,
    codec=st.sampled_from(["bytes", "chars"]),
    how=st.sampled_from(["file", "stdin"]),
    errors=st.sampled_from(["strict", "replace"]),
)
def test_eval_random_inputs(checkpoints, data, codec, how, errors):
    with tempfile.TemporaryDirectory() as tmp:
        args = ["-"]
        if how == "file":
            Path(tmp, "input").write_bytes(data)
            args = [os.path.join(tmp, "input")]
        result = om("eval", str(checkpoints[codec]), *args, "--json", "--errors", errors, input=data if how == "stdin" else None)
        check(result, "eval")
        if result.exit_code == 0:
            report = json.loads(result.stdout)
            assert report["bytes"] == len(data)
            assert report["bits_per_byte"] is None if not data else math.isfinite(report["bits_per_byte"])
        else:
            assert codec == "chars" and errors == "strict" and "invalid UTF-8" in result.stderr
        assert os.listdir(tmp) == (["input"] if how == "file" else [])


@settings(FUZZ, max_examples=20)
@given(
    data=payloads,
    codec=st.sampled_from(["bytes", "chars"]),
    how=st.sampled_from(["file", "stdin", "arg"]),
    max_bytes=st.integers(0, 16),
    temperature=st.sampled_from(["0", "0.7", "1", "100"]),
    stop=st.one_of(st.none(), st.text(min_size=1, max_size=3).filter(lambda t: "\x00" not in t)),
)
def test_sample_random_prompts(checkpoints, data, codec, how, max_bytes, temperature, stop):
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--max-bytes", str(max_bytes), "--temperature", temperature, "--seed", "0"]
        if stop is not None:
            args += ["--stop", stop]
        stdin = None
        if how == "file":
            Path(tmp, "prompt").write_bytes(data)
            args += ["--prompt-file", os.path.join(tmp, "prompt")]
        elif how == "arg":
            args += ["--prompt", os.fsdecode(data.replace(b"\x00", b""))]  # argv cannot hold NUL
        else:
            stdin = data
        result = om("sample", str(checkpoints[codec]), *args, input=stdin)
        check(result, "sample")
        if result.exit_code == 0:
            out = result.stdout_bytes
            assert len(out) <= max_bytes
            if codec == "chars":
                out.decode("utf-8")
            if stop is not None:
                assert stop.encode() not in out
        else:
            assert codec == "chars" and "invalid UTF-8" in result.stderr


# Recipes -------------------------------------------------------------------------------------------
VALID = {
    "model": {
        "dim": 16, "n_layers": 1, "n_heads": 2, "dims_key": [4], "dims_value": [4], "segment_len": 8, "state_len": 2, "stem_kernels": [2],
    },
    "data": {"dataset": "DATASET"},
    "train": {"micro_batch_size": 2, "max_steps": 3, "warmup_steps": 1, "lr": 0.001},
    "out": {"dir": "run", "progress": False},
}
KEYS = [(s, k) for s, values in VALID.items() for k in values] + [
    ("model", "positional"), ("model", "mlp_ratio"), ("model", "tie_embeddings"), ("model", "attn_scales"),
    ("model", "cope_max_positions"), ("model", "vocab_size"), ("train", "state"), ("train", "grad_accum"),
    ("train", "segments_per_sample"), ("train", "betas"), ("train", "precision"), ("train", "device"),
    ("train", "max_minutes"), ("train", "eval_bytes"), ("data", "sources"), ("data", "codec"),
    ("out", "sample_bytes"), ("model", "not_a_key"), ("nonsense", "x"),
]
values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-10, 40), st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
        st.sampled_from(["rope+cope", "cope", "none", "carry", "bf16", "cpu", "cuda:7", "chars", "{stdlib}", "${NOPE}"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), values),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("section"), st.sampled_from(["model", "data", "train", "out"]), values),
)


@pytest.fixture(scope="module")
def recipe_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-data")
    (folder / "t.txt").write_bytes(b"fuzzing recipes, one mutation at a time\n" * 60)
    prepare_dataset([folder / "t.txt"], folder / "ds")
    return str(folder / "ds")


def mutate(recipe: dict, change) -> None:
    kind, where, value = change
    if kind == "section":
        recipe[where] = value
        return
    section, key = where
    if not isinstance(recipe.get(section), dict):
        recipe[section] = {}
    if kind == "delete":
        recipe[section].pop(key, None)
    else:
        recipe[section][key] = value


@FUZZ
@given(changes=st.lists(mutation, min_size=1, max_size=3))
def test_dry_run_random_recipe_mutations(recipe_dataset, changes):
    recipe = json.loads(json.dumps(VALID).replace("DATASET", recipe_dataset))
    for change in changes:
        mutate(recipe, change)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "r.yaml")
        path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
        result = om("train", str(path), "--out", os.path.join(tmp, "run"), "--dry-run", "--json")
        check(result, "train")
        if result.exit_code == 0:
            plan = json.loads(result.stdout)
            assert plan["parameters"] > 0 and plan["memory"]["total"] > 0
        assert os.listdir(tmp) == ["r.yaml"]  # no run folder, whatever happened


@settings(FUZZ, max_examples=20)
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=300).map(str.encode)))
def test_dry_run_random_bytes_as_recipe(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "r.yaml")
        path.write_bytes(data)
        result = om("train", str(path), "--out", os.path.join(tmp, "run"), "--dry-run")
        check(result, "train")
        assert result.exit_code == 2  # random bytes never make a complete recipe
        assert os.listdir(tmp) == ["r.yaml"]
