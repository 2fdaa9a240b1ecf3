"""Hostile and malformed recipes: one-line error, exit code 2, no run folder; and `--dry-run`."""

from __future__ import annotations

import json

import pytest
import yaml

from om import OmLLM
from om.data import prepare_dataset
from tests.reliability.hostile_tools import assert_no_traceback, assert_one_line_error, om

MODEL = {"dim": 32, "n_layers": 1, "n_heads": 2, "dims_key": [8], "dims_value": [8], "segment_len": 8, "state_len": 4, "mlp_ratio": 2.0}
TRAIN = {"micro_batch_size": 2, "max_steps": 2, "warmup_steps": 1, "eval_tokens": 64, "eval_batch": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("recipes")
    text = folder / "text.txt"
    text.write_bytes(b"Recipes from strangers are read, never trusted.\n" * 200)
    prepare_dataset([text], folder / "ds")
    return str(folder / "ds")


@pytest.fixture
def place(tmp_path, dataset, monkeypatch):
    """A function writing a recipe (dict or raw text/bytes) into tmp_path, where run folders land too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OM_CACHE_DIR", str(tmp_path / "cache"))

    def write(content, name: str = "r.yaml"):
        path = tmp_path / name
        if isinstance(content, dict):
            content = yaml.safe_dump(content)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    write.dataset = dataset
    return write


def good(ds: str, **sections) -> dict:
    recipe = {"model": dict(MODEL), "data": {"dataset": ds}, "train": dict(TRAIN), "out": {"dir": "run", "progress": False}}
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    return recipe


def refused(place, content, *needles, extra=()):
    """`om train RECIPE` and `om train RECIPE --dry-run` both refuse with one line; no run folder."""
    path = place(content)
    for dry in ((), ("--dry-run",)):
        result = om("train", str(path), "--out", "run", "--no-progress", *extra, *dry)
        assert_one_line_error(result, "train", *needles)
        assert not (path.parent / "run").exists()
        assert not (path.parent / "cache").exists()


# Not YAML ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, needle",
    [
        (bytes(range(256)) * 4, "not a text file"),
        ("model:\n\tdim: 3\n", "invalid YAML"),
        ("model: [1, 2\n", "invalid YAML"),
        ("a: b: c\n", "invalid YAML"),
        ("[" * 1500 + "]" * 1500, "nested too deeply"),
        ("model: &m {dims_key: [*m]}\n", "refers to the structure that contains it"),
    ],
    ids=["binary", "tab", "unclosed", "colon", "deep", "self-alias"],
)
def test_not_yaml(place, content, needle):
    refused(place, content, needle)


def test_alias_bomb_is_refused_quickly(place):
    """'Billion laughs': nine levels of nine aliases would be 9^9 values if expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("model: {dims_key: *a8}")
    refused(place, "\n".join(lines) + "\n", "more than 100,000 values once YAML aliases are expanded")


def test_yaml_tags_never_run_code(place, tmp_path):
    marker = tmp_path / "PWNED"
    content = f"!!python/object/apply:os.system ['touch {marker}']\n"
    refused(place, content, "invalid YAML", "could not determine a constructor")
    refused(place, f"model: !!python/object/new:os.system ['touch {marker}']\n", "invalid YAML")
    assert not marker.exists()


def test_endless_or_huge_file_is_not_read_whole(place, tmp_path):
    result = om("train", "/dev/zero", "--dry-run")
    assert_one_line_error(result, "train", "/dev/zero: larger than 1,048,576 bytes; not a recipe")
    big = place("# padding\n" * 200_000)
    assert_one_line_error(om("train", str(big), "--dry-run"), "train", "not a recipe")


# Wrong shape, unknown keys, wrong types -------------------------------------------------------------
@pytest.mark.parametrize(
    "content, needle",
    [
        ("- a list\n- of things\n", "a recipe must be a mapping"),
        ("just a string\n", "a recipe must be a mapping"),
        ("42\n", "a recipe must be a mapping"),
        ("", "required key is missing"),
        ({"model": 5, "data": {"dataset": "x"}, "train": {"max_steps": 1}}, "model: Input should be a valid dictionary"),
        ({"model": [], "data": {"dataset": "x"}, "train": {"max_steps": 1}}, "model: Input should be a valid dictionary"),
        ({"data": "x", "train": {"max_steps": 1}}, "data: Input should be a valid dictionary"),
    ],
    ids=["list", "string", "number", "empty", "model-scalar", "model-list", "data-string"],
)
def test_wrong_shape(place, content, needle):
    refused(place, content, needle)


@pytest.mark.parametrize(
    "section, values, needle",
    [
        ("train", {"lrr": 0.1}, "train.lrr: unknown key; did you mean 'lr'?"),
        ("model", {"heads": 2}, "model.heads: unknown key"),
        ("out", {"folder": "x"}, "out.folder: unknown key"),
    ],
)
def test_unknown_keys(place, section, values, needle):
    refused(place, good(place.dataset, **{section: values}), needle)


def test_unknown_top_level_key(place):
    refused(place, {**good(place.dataset), "trian": {}}, "trian: unknown key; did you mean 'train'?")


@pytest.mark.parametrize(
    "section, values, needle",
    [
        ("train", {"lr": "fast"}, "train.lr: Input should be a valid number"),
        ("train", {"lr": float("nan")}, "train.lr: Input should be greater than 0"),
        ("model", {"dim": {"a": 1}}, "model.dim: Input should be a valid integer"),
        ("model", {"dim": 32.5}, "model.dim: Input should be a valid integer"),
        ("model", {"dims_key": "eight"}, "model.dims_key: Input should be a valid list"),
        ("model", {"positional": "sinusoidal"}, "model.positional: Input should be"),
        ("train", {"betas": [0.9]}, "train.betas"),
        ("train", {"max_steps": True, "micro_batch_size": "two"}, "train.micro_batch_size"),
    ],
    ids=["lr-string", "lr-nan", "dim-dict", "dim-float", "dims-string", "positional", "betas", "batch-string"],
)
def test_wrong_types(place, section, values, needle):
    refused(place, good(place.dataset, **{section: values}), needle)


@pytest.mark.parametrize(
    "section, values, needle",
    [
        ("model", {"dim": -5}, "model.dim: Input should be greater than or equal to 1 (got -5)"),
        ("model", {"n_layers": 0}, "model.n_layers: Input should be greater than or equal to 1"),
        ("model", {"segment_len": -8}, "model.segment_len"),
        ("model", {"state_len": -1}, "model.state_len"),
        ("model", {"dims_key": [-8], "dims_value": [8]}, "dims_key and dims_value entries must be >= 1"),
        ("train", {"micro_batch_size": -3}, "train.micro_batch_size: Input should be greater than or equal to 1"),
        ("train", {"max_steps": -1}, "train.max_steps"),
    ],
)
def test_negative_sizes(place, section, values, needle):
    refused(place, good(place.dataset, **{section: values}), needle)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.dim=-1", "--set model.dim=-1: model.dim"),
        ("train.lr=[1, 2", "value is not valid YAML"),
        ("model.dims_key=" + "[" * 1500 + "]" * 1500, "nested too deeply"),
        ("model.dimm=3", "did you mean 'dim'?"),
    ],
    ids=["negative", "bad-yaml", "deep", "unknown"],
)
def test_bad_overrides(place, override, needle):
    refused(place, good(place.dataset), needle, extra=("--set", override))


def test_dim_not_divisible_by_heads_is_valid_in_om(place):
    """Om heads have explicit per-head widths (dims_key/dims_value), not dim / n_heads: dim 30 with
    4 heads is a valid model, so the dry run accepts it and the model it describes runs."""
    recipe = good(place.dataset, model={"dim": 30, "n_heads": 4, "dims_key": [6], "dims_value": [6]})
    result = om("train", str(place(recipe)), "--dry-run", "--json")
    assert_no_traceback(result)
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["model"]["dim"] == 30 and plan["model"]["n_heads"] == 4
    from om import OmConfig

    model = OmLLM(OmConfig(**plan["model"]))
    assert model.num_parameters() == plan["parameters"]
    import torch

    logits, _ = model(torch.randint(0, 256, (1, 20)))
    assert logits.shape == (1, 20, plan["model"]["vocab_size"])


# Absurd sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "section, values",
    [
        ("model", {"dim": 1_000_000, "n_layers": 1000}),
        ("model", {"dim": 10**26}),
        ("model", {"segment_len": 10**9}),
        ("train", {"micro_batch_size": 10**12}),
    ],
    ids=["wide-deep", "huge-int", "long-segment", "huge-batch"],
)
def test_absurd_sizes_are_refused_before_allocating(place, section, values):
    """Refused with the estimate and the memory available (both in the one line), in well under a
    second of work: nothing is allocated, the run folder is not created."""
    import time

    start = time.perf_counter()
    refused(place, good(place.dataset, **{section: values}), "the model needs about", "available", "parameters")
    assert time.perf_counter() - start < 20  # allocating petabytes would fail or hang, not return


# --dry-run ------------------------------------------------------------------------------------------
def test_dry_run_prints_the_plan_and_writes_nothing(place, tmp_path):
    path = place(good(place.dataset))
    result = om("train", str(path), "--dry-run")
    assert_no_traceback(result)
    assert result.exit_code == 0, result.stderr
    for label in ("run folder", "device", "data", "model", "parameters", "memory"):
        assert label in result.stdout
    assert not (tmp_path / "run").exists()
    plan = json.loads(om("train", str(path), "--dry-run", "--json").stdout)
    from om import OmConfig

    assert plan["parameters"] == OmLLM(OmConfig(**plan["model"])).num_parameters()
    assert plan["data"]["dataset"] == place.dataset and plan["data"]["train_tokens"] > 0
    assert plan["memory"]["total"] == sum(plan["memory"][k] for k in ("parameters", "gradients", "optimizer", "activations"))
    assert plan["resume_from"] is None and not (tmp_path / "run").exists()


def test_dry_run_with_sources_does_not_prepare(place, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"to be prepared later\n" * 100)
    recipe = good(place.dataset, data={"sources": [str(corpus)], "codec": "chars"})
    del recipe["data"]["dataset"]
    result = om("train", str(place(recipe)), "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["data"]["prepare"] == [str(corpus)] and plan["data"]["vocab_size"] == 4096
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    recipe["data"]["sources"] = [str(tmp_path / "gone.txt")]
    refused(place, recipe, "data.sources[0]", "no such file or folder")


def test_dry_run_checks_what_the_run_checks(place):
    """Problems found only once the data is open are found by the dry run too."""
    refused(place, good(place.dataset, model={"vocab_size": 300}), "model.vocab_size: 300 does not match")
    refused(place, good(place.dataset, train={"segments_per_sample": 2000}), "the train split has")
    refused(place, good(place.dataset, data={"dataset": "/nowhere/ds"}), "/nowhere/ds: no such folder")


def test_library_values_name_the_recipe_key(place, tmp_path):
    """A value only the library judges is refused by run and dry run alike, named by its recipe key."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"some text\n" * 100)
    recipe = good(place.dataset, data={"sources": [str(corpus)], "vocab_size": 100})
    del recipe["data"]["dataset"]
    refused(place, recipe, "r.yaml: data.vocab_size: 100 is too small for the bytes codec")
    result = om("train", str(place(recipe)), "--dry-run")
    assert "--vocab-size" not in result.stderr
    recipe["data"].update(vocab_size=None, codec="words")
    refused(place, recipe, "r.yaml: data.codec: 'words' is not one of")
