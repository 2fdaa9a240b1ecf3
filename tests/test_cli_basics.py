"""The `om` entry point: version, help, and one-line usage errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from om import __version__


def om(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omcli.app", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help():
    assert om("--version").stdout.strip() == f"om {__version__}"
    help_text = om("--help").stdout
    for command in ("prepare", "train", "eval", "sample", "cache"):
        assert command in help_text


def test_usage_errors_are_one_line_with_exit_code_2():
    for args, expected in [
        (("sample", "ckpt", "--max-bytes", "abc"), "--max-bytes"),
        (("frobnicate",), "frobnicate"),
        (("eval", "ckpt", "--no-such-flag"), "--no-such-flag"),
    ]:
        result = om(*args)
        assert result.returncode == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_library_errors_are_renamed_to_what_the_caller_wrote():
    """One mechanism: a library error keyed by its argument is renamed by the caller (om.errors.renamed_keys);
    the CLI renames to the flag of the option with the same name (omcli.common.option_flags)."""
    import pytest

    from om.errors import OmUserError, renamed_keys
    from omcli.common import option_flags
    from omcli.prepare import prepare
    from omcli.sample import sample_command
    from omcli.train import train

    flags = option_flags(prepare)
    assert flags["vocab_size"] == "--vocab-size" and flags["sp_model_type"] == "--sp-model-type" and flags["output"] == "--output"
    assert "inputs" not in flags  # an argument, not an option
    assert option_flags(sample_command)["top_p"] == "--top-p" and option_flags(train)["progress"] == "--progress"

    def raised(names, where=None, message="vocab_size 100 is too small", key="vocab_size") -> OmUserError:
        with pytest.raises(OmUserError) as info:
            with renamed_keys(names, where):
                raise OmUserError(message, key=key)
        return info.value

    assert str(raised({"vocab_size": "--vocab-size"})) == "--vocab-size 100 is too small"
    err = raised({"vocab_size": "data.vocab_size"}, "my.yaml")
    assert str(err) == "my.yaml: data.vocab_size: 100 is too small" and err.keys == ("data.vocab_size",)
    assert str(raised({"stop": "out.stop"}, "r.yaml", "stop: must not be empty", "stop")) == "r.yaml: out.stop: must not be empty"
    assert str(raised({"codec": "--codec"})) == "vocab_size 100 is too small"  # not its key: unchanged
    assert str(raised({"vocab_size": "--vocab-size"}, key=None)) == "vocab_size 100 is too small"  # no key: unchanged
    two = raised({"include": "--include", "exclude": "--exclude"}, None, "d: nothing matches include *.md exclude x_include",
                 ("include", "exclude"))
    assert str(two) == "d: nothing matches --include *.md --exclude x_include"  # whole names only


def test_device_errors_name_the_flag_or_the_recipe_key(tmp_path):
    """`device` is a library argument: the CLI calls it --device, a recipe train.device."""
    from om.device import resolve_device
    from om.errors import OmUserError
    from om.train.plan import plan_run
    from om.train.recipe import read_yaml, validate_recipe

    with pytest.raises(OmUserError) as err:
        resolve_device("nonsense")
    assert err.value.keys == ("device",) and str(err.value).startswith("device 'nonsense'")
    raw = read_yaml(Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml")
    raw["train"]["device"] = "nonsense"
    with pytest.raises(OmUserError) as err:
        plan_run(validate_recipe(raw, "my.yaml"), tmp_path / "run", source="my.yaml")
    assert str(err.value).startswith("my.yaml: train.device: 'nonsense' is not a name torch knows")
    result = om("eval", str(tmp_path / "missing"), "--device", "nonsense")
    assert result.returncode == 2 and "--device 'nonsense' is not a name torch knows" in result.stderr


# Start-up: help and usage errors must not pay for importing torch ---------------------------------
PROBE = """
import runpy, sys
sys.argv = ["om", *sys.argv[1:]]
try:
    runpy.run_module("omcli.app", run_name="__main__")
except SystemExit:
    pass
heavy = [m for m in ("torch", "numpy", "safetensors", "om.model", "om.train", "om.evaluate") if m in sys.modules]
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [("--help",), ("train", "--help"), ("eval", "--help"), ("cache", "--help"), ("sample", "ckpt", "--max-bytes", "abc"),
     ("eval",), ("frobnicate",), ("--version",)],
)
def test_help_and_usage_errors_do_not_import_torch(args):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    marker = [line for line in result.stderr.splitlines() if line.startswith("HEAVY:")]
    assert marker == ["HEAVY:"], result.stderr  # nothing heavy was imported


def test_om_package_exports_lazily():
    probe = (
        "import sys, om; assert 'torch' not in sys.modules; "
        "from om import OmConfig, OmLLM, ARC, next_token_loss; import om.model; "
        "assert OmLLM is om.model.OmLLM and ARC is om.model.ARC and 'torch' in sys.modules; "
        "assert set(om.__all__) == set(om.model.__all__) | {'__version__'} and 'OmState' in dir(om); "
        "from om import *; assert CausalConvStem is om.model.CausalConvStem; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
    import om

    with pytest.raises(AttributeError):
        om.NoSuchThing  # noqa: B018


# Help text ----------------------------------------------------------------------------------------
def usage_line(*args: str) -> str:
    text = om(*args, "--help").stdout
    return " ".join(next(line for line in text.splitlines() if "Usage:" in line).split())


def test_usage_lines_name_arguments_plainly():
    expected = {
        "prepare": "[OPTIONS] INPUT...",
        "eval": "[OPTIONS] CKPT [INPUT...]",
        "sample": "[OPTIONS] CKPT",
        "cache": "[OPTIONS] CKPT INPUT...",
        "train": "[OPTIONS] [RECIPE]",
        "plot": "[OPTIONS] RUN...",
    }
    for command, pieces in expected.items():
        line = usage_line(command)
        assert line.endswith(f" {command} {pieces}"), line
        assert "[[" not in line and "]..." not in line and "{" not in line, line


def _option_rows(command: str) -> dict[str, str]:
    """{flag: the rest of its row} from `om COMMAND --help`, on one wide line each."""
    import os

    text = subprocess.run([sys.executable, "-m", "omcli.app", command, "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "250"}).stdout
    rows = {}
    for line in text.splitlines():
        words = line.strip("│ ").split()
        if words and words[0].startswith("--"):
            rows[words[0]] = " ".join(words[1:])
    return rows


def test_shared_options_read_alike_in_every_command():
    errors = {command: _option_rows(command)["--errors"] for command in ("prepare", "eval", "sample", "cache")}
    assert len(set(errors.values())) == 1, errors
    assert next(iter(errors.values())).startswith("<strict|replace> ")
    threads = {command: _option_rows(command)["--threads"] for command in ("eval", "sample", "cache")}
    assert all(row.startswith("<int> Torch CPU threads") for row in threads.values()), threads
    assert "default: 1;" in threads["sample"] and "default: one per core" in threads["eval"]
