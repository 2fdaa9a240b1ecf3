"""Recipes: schema errors (one line, key path, value, "did you mean"), `--set` overrides, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from om.errors import OmUserError
from om.train.recipe import Recipe, expand_path, load_recipe
from omcli.app import app

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

BASE = {
    "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "dims_key": [8], "dims_value": [8], "segment_len": 8, "state_len": 4},
    "data": {"dataset": "somewhere"},
    "train": {"max_steps": 10},
}


def _write(tmp_path: Path, data: dict | str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _error(tmp_path: Path, data: dict | str, overrides: list[str] = ()) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(OmUserError) as info:
        load_recipe(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message.replace(str(path), "R")


def _with(section: str, **values) -> dict:
    data = {k: dict(v) for k, v in BASE.items()}
    data[section].update(values)
    return data


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)


def test_built_in_default_is_the_quickstart_recipe():
    from om.train.quickstart import QUICKSTART_YAML

    assert QUICKSTART_YAML == (ROOT / "recipes" / "quickstart.yaml").read_text()
    built_in = load_recipe(None, ["train.max_minutes=1"])
    assert built_in == load_recipe(ROOT / "recipes" / "quickstart.yaml", ["train.max_minutes=1"])
    assert built_in.out.dir == "runs/quickstart" and built_in.data.sources == ["{stdlib}"]


def test_defaults_and_run_folder_name(tmp_path):
    recipe = load_recipe(_write(tmp_path, BASE, "my-run.yaml"))
    assert recipe.out.dir == "runs/my-run"
    assert recipe.train.state == "reset" and recipe.train.precision == "fp32"
    assert "vocab_size" not in recipe.model.model_fields_set  # taken from the data later


@pytest.mark.parametrize(
    "data, expected",
    [
        (_with("train", lrr=0.1), "R: train.lrr: unknown key; did you mean 'lr'?"),
        (_with("model", dimm=64), "R: model.dimm: unknown key; did you mean 'dim'?"),
        (dict(BASE, trian={}), "R: trian: unknown key; did you mean 'train'?"),
        (_with("train", lr="abc"), "R: train.lr: Input should be a valid number, unable to parse string as a number (got 'abc')"),
        (_with("model", n_layers=0), "R: model.n_layers: Input should be greater than or equal to 1 (got 0)"),
        (_with("train", state="keep"), "R: train.state: Input should be 'reset' or 'carry' (got 'keep')"),
        (_with("train", precision="fp16"), "R: train.precision: Input should be 'fp32' or 'bf16' (got 'fp16')"),
        (_with("model", dims_key=[8, 8]), "R: model: dims_key has 2 passes but dims_value has 1; they must match"),
        (_with("train", max_steps=None), "R: train: give a stop rule: train.max_steps, train.max_bytes or train.max_minutes"),
        (_with("data", sources=["x"]), "R: data: give exactly one of data.dataset"),
        ({k: v for k, v in BASE.items() if k != "train"}, "R: train: required key is missing"),
        ("model: [1, 2\n", "R: line 2, column 1: invalid YAML"),
        ("- just a list\n", "R: a recipe must be a mapping"),
    ],
)
def test_schema_errors_are_one_line_and_name_the_key(tmp_path, data, expected):
    assert _error(tmp_path, data).startswith(expected)


def test_several_problems_are_counted(tmp_path):
    message = _error(tmp_path, _with("train", lr="x", seed="y"))
    assert message.endswith("(and 1 more problem)")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(OmUserError, match="nope.yaml: no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_apply_and_parse_yaml(tmp_path):
    path = _write(tmp_path, BASE)
    recipe = load_recipe(path, ["train.lr=3e-4", "model.dims_key=[16]", "model.dims_value=[16]", "train.state=carry", "out.dir=elsewhere"])
    assert recipe.train.lr == 3e-4 and recipe.model.dims_key == [16] and recipe.train.state == "carry"
    assert recipe.out.dir == "elsewhere"


def test_override_of_data_source_replaces_the_other(tmp_path):
    path = _write(tmp_path, BASE)
    recipe = load_recipe(path, ["data.sources=[a, b]"])
    assert recipe.data.sources == ["a", "b"] and recipe.data.dataset is None
    recipe = load_recipe(path, ["data.sources=[a]", "data.dataset=ds"])
    assert recipe.data.dataset == "ds" and recipe.data.sources is None


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1", "--set train.lrr=1: train.lrr: unknown key; did you mean 'lr'?"),
        ("trian.lr=1", "--set trian.lr=1: trian: unknown key; did you mean 'train'?"),
        ("train.lr.x=1", "--set train.lr.x=1: train.lr has no sub-keys"),
        ("train.lr", "--set train.lr: expected KEY.PATH=VALUE"),
        ("train.lr=abc", "--set train.lr=abc: train.lr: Input should be a valid number"),
        ("train.betas=[1, 2", "--set train.betas=[1, 2: value is not valid YAML"),
    ],
)
def test_override_errors(tmp_path, override, expected):
    assert _error(tmp_path, BASE, [override]).startswith(expected)


def test_path_placeholders(monkeypatch):
    monkeypatch.setenv("OM_TEST_DIR", "/data/x")
    monkeypatch.delenv("OM_TEST_UNSET", raising=False)
    assert expand_path("${OM_TEST_DIR}/y", "k") == "/data/x/y"
    assert expand_path("${OM_TEST_UNSET:-fallback}/y", "k") == "fallback/y"
    assert expand_path("{stdlib}/json", "k").endswith("/json")
    with pytest.raises(OmUserError, match="k: environment variable OM_TEST_UNSET is not set"):
        expand_path("${OM_TEST_UNSET}", "k")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["{tmp}/bad.yaml"], "om train: error: {tmp}/bad.yaml: train.lrr: unknown key; did you mean 'lr'?"),
        (["{tmp}/good.yaml", "--set", "train.seed=x"], "om train: error: --set train.seed=x: train.seed: Input should be a valid integer"),
        (["{tmp}/good.yaml"], "om train: error: {tmp}/good.yaml: data.dataset: {tmp}/missing-ds: no such folder"),
        (["{tmp}/none.yaml"], "om train: error: {tmp}/none.yaml: no such recipe file"),
    ],
)
def test_cli_errors_exit_2_without_traceback(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, _with("train", lrr=1), "bad.yaml")
    _write(tmp_path, _with("data", dataset=str(tmp_path / "missing-ds")), "good.yaml")
    result = CliRunner().invoke(app, ["train", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(expected.replace("{tmp}", str(tmp_path)))


# Values the library judges (codec options, sampling options) are judged at load time and named by
# their recipe key, never by the `om prepare` / `om sample` flag that sets the same library argument.
@pytest.mark.parametrize(
    "data, overrides, expected",
    [
        (_with("data", dataset=None, sources=["x"], vocab_size=100), [],
         "R: data.vocab_size: 100 is too small for the bytes codec: it needs 257 ids"),
        (_with("data", dataset=None, sources=["x"], codec="chars", vocab_size=3), [],
         "R: data.vocab_size: 3 is too small for the chars codec"),
        (_with("data", dataset=None, sources=["x"], codec="sentencepiece", vocab_size=100), [],
         "R: data.vocab_size: 100 is too small for the sentencepiece codec"),
        (_with("data", dataset=None, sources=["x"], codec="words"), [],
         "R: data.codec: 'words' is not one of: bytes, chars, sentencepiece"),
        (dict(BASE, out={"sample_bytes": 10, "sample_temperature": 1000}), [],
         "R: out.sample_temperature: 1000.0: must be a number from 0 (greedy) to 100"),
        (BASE, ["data.sources=[x]", "data.vocab_size=100"],
         "--set data.vocab_size=100: data.vocab_size: 100 is too small for the bytes codec"),
    ],
)
def test_library_checks_name_the_recipe_key(tmp_path, data, overrides, expected):
    message = _error(tmp_path, data, overrides)
    assert message.startswith(expected)
    assert "--vocab-size" not in message and "--codec" not in message and "--temperature" not in message


def test_data_errors_found_while_preparing_name_the_recipe_key(tmp_path, monkeypatch):
    """Errors that only the data reveals (here: no file matches data.include) name the recipe too."""
    from om.train.recipe_data import resolve_dataset

    monkeypatch.setenv("OM_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print()\n")
    recipe = load_recipe(_write(tmp_path, _with("data", dataset=None, sources=[str(tmp_path / "src")], include=["*.txt"])))
    with pytest.raises(OmUserError) as info:
        resolve_dataset(recipe.data, "my.yaml")
    assert str(info.value) == f"my.yaml: {tmp_path / 'src'}: no file in this folder matches data.include *.txt"


def test_cli_names_the_recipe_key_not_the_prepare_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OM_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "corpus.txt").write_text("some text\n" * 20)
    path = _write(tmp_path, _with("data", dataset=None, sources=[str(tmp_path / "corpus.txt")], vocab_size=100), "my.yaml")
    for dry in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["train", str(path), *dry])
        assert result.exit_code == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"om train: error: {path}: data.vocab_size: 100 is too small for the bytes codec: ")
        assert "--vocab-size" not in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


# A preparation option next to a prepared data.dataset would be ignored: it is refused, naming both keys.
@pytest.mark.parametrize(
    "data, overrides, expected",
    [
        (_with("data", codec="chars"), [], "R: data.codec applies only to data.sources, but data.dataset is set"),
        (_with("data", include=["*.py"]), [], "R: data.include applies only to data.sources, but data.dataset is set"),
        (BASE, ["data.codec=chars"], "--set data.codec=chars: data.codec applies only to data.sources, but data.dataset is set"),
        (_with("data", dataset=None, sources=["x"]), ["data.dataset=ds", "data.codec=chars"], "--set data.codec=chars: data.codec"),
        (_with("data", dataset=None, sources=["x"]), ["data.vocab_size=300", "data.dataset=ds"],
         "--set data.vocab_size=300: data.vocab_size"),
    ],
)
def test_preparation_options_next_to_a_dataset_are_refused(tmp_path, data, overrides, expected):
    message = _error(tmp_path, data, overrides)
    assert message.startswith(expected)
    assert "a prepared dataset keeps" in message and "give data.sources instead of data.dataset" in message


def test_setting_the_dataset_drops_the_files_preparation_options(tmp_path):
    """`--set data.dataset=...` on a recipe of data.sources (tiny.yaml + a prepared folder) replaces
    the sources and how they were to be prepared; the resolved recipe is itself a valid recipe."""
    from om.train.recipe import validate_recipe

    path = _write(tmp_path, _with("data", dataset=None, sources=["x"], codec="chars", vocab_size=300, include=["*.txt"]))
    recipe = load_recipe(path, ["data.dataset=ds"])
    assert recipe.data.dataset == "ds" and recipe.data.sources is None and recipe.data.codec == "bytes"
    assert recipe.data.model_fields_set.isdisjoint({"codec", "vocab_size", "include"})
    assert recipe.to_dict()["data"] == {"dataset": "ds", "sources": None}
    assert validate_recipe(recipe.to_dict()) == recipe
    assert load_recipe(path).data.codec == "chars"  # without the override the sources keep their options


def test_log_sinks(tmp_path):
    assert load_recipe(_write(tmp_path, BASE)).out.log_sinks == ["jsonl"]
    chosen = load_recipe(_write(tmp_path, BASE), ["out.log_sinks=[csv, tensorboard]"])
    assert chosen.out.log_sinks == ["csv", "tensorboard"]
    assert _error(tmp_path, BASE, ["out.log_sinks=[jsonl, wandb]"]).startswith(
        "--set out.log_sinks=[jsonl, wandb]: out.log_sinks.1: Input should be 'jsonl', 'csv' or 'tensorboard' (got 'wandb')"
    )
    assert _error(tmp_path, dict(BASE, out={"log_sinks": ["csv", "csv"]})).startswith("R: out: out.log_sinks: 'csv' is listed twice")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--json"], "om train: error: --json works only with --dry-run (it prints the plan)"),
        (["--set", "data.codec=chars"],
         "om train: error: --set data.codec=chars: data.codec applies only to data.sources, but data.dataset is set"),
    ],
)
def test_cli_refuses_options_it_would_ignore(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, BASE, "good.yaml")
    result = CliRunner().invoke(app, ["train", str(path), *args])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(expected)
    assert list(tmp_path.iterdir()) == [path]
