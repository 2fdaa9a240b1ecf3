"""bench.gpu_quality builds valid recipes from the repository's Shakespeare recipes (it only ever runs on a lent GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.gpu_quality import ROWS, recipe_for, xformers_check
from om.train.recipe import Recipe


@pytest.mark.parametrize("row", list(ROWS))
def test_recipes_are_the_rows_recipes_with_this_runs_settings(row, tmp_path):
    recipe = recipe_for(row, tmp_path / "dataset", tmp_path / "run", 3.0, "bf16", "cuda", micro_batch_size=64)
    parsed = Recipe.model_validate(recipe)  # the schema `om train` applies
    assert parsed.data.dataset == str(tmp_path / "dataset") and parsed.data.sources is None
    t = parsed.train
    assert (t.max_minutes, t.precision, t.device, t.micro_batch_size, t.eval_every, t.checkpoint_every) == (3.0, "bf16", "cuda", 64, 0, 0)
    assert parsed.out.dir == str(tmp_path / "run") and parsed.out.sample_bytes == 0
    expected_patch = 8 if "patched" in row else 1
    assert parsed.model.patch_size == expected_patch  # the row's own model, untouched
    assert Path(ROWS[row]).name.startswith("shakespeare-bytes")


def test_xformers_check_says_why_it_did_not_run_without_cuda():
    assert xformers_check("cpu") == "xformers: not run (needs a CUDA device)"
