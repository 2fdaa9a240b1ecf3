"""One validation figure: the val bits/byte a run logs equals `om eval CKPT` on the same slice."""

from __future__ import annotations

import json

import pytest

from om.train import Trainer
from om.train.recipe import read_yaml, validate_recipe
from tests.test_eval_support import run_cli
from tests.test_train_loop import TINY
from tests.train_fixtures import dataset, isolated_cache  # noqa: F401 (fixtures)


@pytest.mark.parametrize("slice_settings", [dict(eval_tokens=700, eval_batch=3), dict(eval_bytes=500, eval_batch=1)])
def test_logged_val_equals_om_eval_on_the_same_slice(tmp_path, dataset, slice_settings):
    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    raw["train"].update(max_steps=6, eval_every=3, checkpoint_every=3, keep_last=4, **slice_settings)
    raw["out"].update(sample_bytes=0, progress=False)
    result = Trainer(validate_recipe(raw, "tiny.yaml"), tmp_path / "run").run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in records if r["event"] == "eval"}
    assert sorted(evals) == [3, 6]
    for step, record in evals.items():
        sl = record["val_slice"]
        assert sl["split"] == "val" and sl["streams"] == slice_settings["eval_batch"]
        ckpt = result.checkpoint.parent / f"step-{step:07d}"
        out = run_cli(["eval", ckpt, "--val-tokens", sl["tokens"], "--val-streams", sl["streams"], "--json"])
        assert out.exit_code == 0, out.stderr
        report = json.loads(out.stdout)
        assert abs(report["bits_per_byte"] - record["val_bpb"]) < 1e-4
        assert report["tokens"] == record["val_tokens"] and report["bytes"] == record["val_bytes"]
    # Checkpoints at different steps score differently: the comparison is not between constants.
    assert evals[3]["val_bpb"] != evals[6]["val_bpb"]


def test_val_slice_flags_take_no_input(tmp_path, dataset):
    raw = read_yaml(TINY)
    raw["data"] = {"dataset": str(dataset)}
    raw["train"].update(max_steps=1)
    raw["out"].update(sample_bytes=0, progress=False)
    ckpt = Trainer(validate_recipe(raw, "tiny.yaml"), tmp_path / "run").run().checkpoint
    (tmp_path / "x.txt").write_bytes(b"hello")
    out = run_cli(["eval", ckpt, tmp_path / "x.txt", "--val-tokens", 10])
    assert out.exit_code == 2 and "--val-tokens" in out.stderr and "Traceback" not in out.stderr
