"""`om train RECIPE`: train a model from a YAML recipe (see docs/train.md)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import List, Optional

import typer

from omcli.common import stderr, user_errors


@user_errors("train")
def train(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML file (see recipes/ and docs/train.md); default: the built-in quickstart recipe."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe key, e.g. --set train.lr=3e-4 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: the recipe's out.dir)."),
    resume: str = typer.Option("auto", "--resume", help="auto: continue the run folder's latest checkpoint if any; never; or a checkpoint/run PATH."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Show the progress bar (default: the recipe's out.progress)."),
) -> None:
    """Train from a recipe; the final checkpoint path is printed on stdout."""
    from om.train import Trainer, load_recipe
    from om.train.sample import sample_text

    r = load_recipe(recipe, set_ or [])
    run_dir = out if out is not None else Path(r.out.dir)
    if out is not None:
        r.out.dir = str(out)
    source = str(recipe) if recipe is not None else "quickstart.yaml (built in)"
    trainer = Trainer(r, run_dir, resume=resume, source=source, progress=progress, console=stderr)
    result = trainer.run()
    if result.checkpoint is not None:
        print(result.checkpoint, flush=True)
    if result.interrupted is not None:
        name = signal.Signals(result.interrupted).name
        stderr.print(f"stopped by {name} at step {result.step}; checkpoint saved; resume with --resume auto", markup=False, soft_wrap=True)
        raise typer.Exit(code=result.exit_code)
    summary = f"done: step {result.step}, {result.bytes_per_s:,.0f} bytes/s"
    if result.val:
        summary += f", val bits/byte {result.val['val_bpb']:.4f}"
    stderr.print(summary, markup=False, highlight=False, soft_wrap=True)
    if r.out.sample_bytes:
        try:
            text = sample_text(trainer.model, trainer.codec, r.out.sample_prompt, r.out.sample_bytes, r.out.sample_temperature, r.train.seed)
        except KeyboardInterrupt:
            raise typer.Exit(code=130) from None
        stderr.print("sample:\n" + r.out.sample_prompt + text, markup=False, highlight=False, soft_wrap=True)
