"""`om train`: YAML recipes, a resumable training loop, checkpoints.

- `recipe`: the schema (`Recipe`), `load_recipe(path, overrides)`, one-line errors.
- `dataset`: resolve the `data` section (prepare sources into a cache once).
- `batches`: deterministic windows of the train split from (seed, step).
- `schedule`, `optim`: warmup + cosine LR, AdamW parameter groups.
- `evaluate`: validation bits per byte on a bounded slice.
- `loop`: `Trainer(recipe, run_dir, resume).run() -> TrainResult`.
- `signals`: SIGINT/SIGTERM -> checkpoint and a clean exit.
- `distributed`: runs of several processes under torchrun (DDP): batch shards, collectives.
- `sample`: the short sample shown after training (via `om.sampling`).
- `quickstart`: the built-in default recipe (a copy of recipes/quickstart.yaml).
"""

from om.train.loop import Trainer, TrainResult
from om.train.recipe import Recipe, load_recipe

__all__ = ["Recipe", "TrainResult", "Trainer", "load_recipe"]
