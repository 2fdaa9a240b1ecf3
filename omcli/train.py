"""`om train RECIPE`: train a model from a YAML recipe (see docs/train.md)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from omcli.common import stderr, user_errors
from omcli.ranks import rank_failures


def _print_plan(plan: dict, as_json: bool) -> None:
    import json

    from om.model.sizing import format_bytes

    if as_json:
        print(json.dumps(plan, indent=2))
        return
    m, d, mem = plan["model"], plan["data"], plan["memory"]
    if plan["resume_from"]:
        resume = plan["resume"]
        run = f"{plan['run_dir']} (resumes from {plan['resume_from']} at step {resume['step']}"
        if resume["complete"]:
            run += f"; already complete: {resume['complete']} reached, nothing to train"
        run += ")"
    else:
        run = f"{plan['run_dir']} ({'exists; a fresh run' if plan['run_dir_exists'] else 'new'})"
    counts = f"{d['train_tokens']:,} train and {d['val_tokens']:,} val tokens" if d["train_tokens"] is not None else "not prepared yet"
    data = f"{d['dataset']} ({d['codec']} codec, vocab {d['vocab_size']}, {counts})"
    if d["prepare"]:
        data = f"prepares {len(d['prepare'])} source(s) into " + data
    stop = ", ".join(f"{k} {v}" for k, v in plan["stop"].items() if v is not None)
    free = format_bytes(mem["available"]) if mem["available"] is not None else "unknown"
    parts = ", ".join(f"{k} {format_bytes(mem[k])}" for k in ("parameters", "gradients", "optimizer", "activations"))
    rows = [
        ("run folder", run),
        ("device", plan["device"]),
        ("data", data),
        ("model", f"dim {m['dim']}, {m['n_layers']} layers, {m['n_heads']} heads, dims_key {m['dims_key']}, "
                  f"dims_value {m['dims_value']}, segment_len {m['segment_len']}, state_len {m['state_len']}"
                  + (f", patch_size {m['patch_size']} (segments of {m['segment_len'] * m['patch_size']} tokens)"
                     if m.get("patch_size", 1) > 1 else "")),
        ("parameters", f"{plan['parameters']:,}"),
        ("tokens/step", f"{plan['tokens_per_step']:,}"),
    ]
    schedule = plan.get("schedule") or []
    if len(schedule) > 1:  # train.curriculum
        rows.append(("curriculum", ", ".join(
            f"from step {e['step']}: {e['segments_per_sample']} segments ({e['tokens_per_step']:,} tokens/step)" for e in schedule
        )))
    if plan.get("activation_checkpointing"):
        rows.append(("backward", "activation checkpointing (each segment's layers are recomputed)"))
    rows += [
        ("stop", stop),
        ("memory", f"about {format_bytes(mem['total'])} ({parts}); {free} available"),
    ]
    rows += [("note", note) for note in plan["resume"]["notes"]]
    for name, value in rows:
        print(f"{name:<12} {value}")


@user_errors("train")
@rank_failures("train")
def train(
    recipe: Optional[Path] = typer.Argument(
        None, help="Recipe YAML file (see recipes/ and docs/train.md); default: the built-in quickstart recipe."
    ),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe key, e.g. --set train.lr=3e-4 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: the recipe's out.dir)."),
    resume: str = typer.Option(
        "auto",
        "--resume",
        help="auto: continue the run folder's checkpoint if it was trained with this recipe (stop rules, logging and "
        "the like may differ), refuse another recipe; never: a fresh run; or a checkpoint/run PATH to continue with any changes.",
    ),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Show progress on stderr (default: the recipe's out.progress)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate and resolve everything, print the plan on stdout, train nothing, write nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the plan as one JSON object."),
) -> None:
    """Train from a recipe; the final checkpoint path is printed on stdout."""
    from om.errors import OmUserError
    from om.train import Trainer, load_recipe

    if as_json and not dry_run:
        raise OmUserError("--json works only with --dry-run (it prints the plan); a run prints its checkpoint path on stdout")
    r = load_recipe(recipe, set_ or [])
    run_dir = out if out is not None else Path(r.out.dir)
    if out is not None:
        r.out.dir = str(out)
    source = str(recipe) if recipe is not None else "quickstart.yaml (built in)"
    if dry_run:
        from om.train.plan import plan_run

        _print_plan(plan_run(r, run_dir, resume=resume, source=source), as_json)
        return
    trainer = Trainer(r, run_dir, resume=resume, source=source, progress=progress, console=stderr)
    result = trainer.run()
    code = _report(trainer, result, r)
    if trainer.dist.active:
        # Trainer.run has left the process group; end this rank now, while the trainer is still
        # referenced: freeing its DistributedDataParallel objects on the way out was seen to block
        # forever in gloo's teardown once the other rank had exited (tests/test_distributed.py).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        raise typer.Exit(code=code)


def _report(trainer, result, r) -> int:
    """What `om train` prints after a run (rank 0 only under torchrun) -> the exit code."""
    from om.train.sample import sample_text

    main = trainer.dist.is_main  # under torchrun only rank 0 prints; the others just exit
    if result.checkpoint is not None and main:
        print(result.checkpoint, flush=True)
    if result.interrupted is not None:
        if main:
            name = signal.Signals(result.interrupted).name
            stderr.print(f"stopped by {name} at step {result.step}; checkpoint saved; resume with --resume auto", markup=False,
                         soft_wrap=True)
        return result.exit_code
    if not main or result.already_complete:  # the trainer said why nothing was trained
        return 0
    summary = f"done: step {result.step}, {result.bytes_per_s:,.0f} bytes/s"
    if result.val:
        summary += f", val bits/byte {result.val['val_bpb']:.4f}"
    if result.skipped:
        summary += f", {result.skipped} step{'s' if result.skipped > 1 else ''} skipped (non-finite loss)"
    stderr.print(summary, markup=False, highlight=False, soft_wrap=True)
    if r.out.sample_bytes:
        try:
            o = r.out
            text = sample_text(trainer.model, trainer.codec, o.sample_prompt, o.sample_bytes, o.sample_temperature, r.train.seed)
        except KeyboardInterrupt:
            return 130
        stderr.print("sample:\n" + r.out.sample_prompt + text, markup=False, highlight=False, soft_wrap=True)
    return 0
