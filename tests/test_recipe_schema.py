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
