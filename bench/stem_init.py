"""Stem init: the quickstart recipe trained twice, with the stem's convolutions initialised like
the rest of the model (normal(0, init_std), zero bias) and with PyTorch's default Conv1d init
(uniform weights and biases of bound 1/sqrt(dim * k): what OmLLM keeps, because of this bench).

    python -m bench.stem_init [--minutes 5] [--no-write]

Both runs use recipes/quickstart.yaml unchanged but for the wall-clock budget and the run folder,
one after the other in this process, on the same prepared data and seed, so they differ only in
the stem's initial weights. Val bits/byte is the recipe's end-of-run evaluation (the first
eval_bytes of the held-out split). Writes the "stem-init" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from pathlib import Path

from bench.corpora import CACHE
from bench.report import machine, markdown_table, write_section

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "quickstart.yaml"
WORK = CACHE / "stem_init"


@contextlib.contextmanager
def stem_init(kind: str):
    """While active, every OmLLM built gets its stem's convolutions initialised as `kind`:
    "default" (PyTorch's Conv1d init) or "normal" (normal(0, init_std) weights, zero bias)."""
    import torch

    from om.model.llm import OmLLM

    original = OmLLM.__init__

    def init(self, config):
        original(self, config)
        for conv in self.stem.convs:
            if kind == "default":
                conv.reset_parameters()
            else:
                torch.nn.init.normal_(conv.weight, std=config.init_std)
                torch.nn.init.zeros_(conv.bias)

    OmLLM.__init__ = init
    try:
        yield
    finally:
        OmLLM.__init__ = original


def train(name: str, minutes: float, kind: str) -> dict:
    from om.train import Trainer, load_recipe

    recipe = load_recipe(RECIPE, [f"train.max_minutes={minutes}"])
    run_dir = WORK / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun replaces the old run
    recipe.out.dir = str(run_dir)
    with stem_init(kind):
        trainer = Trainer(recipe, run_dir, resume="never", source=str(RECIPE), progress=False)
        result = trainer.run()
        stem = trainer.model.stem.convs[0]
    print(f"{name}: step {result.step}, val bits/byte {result.val['val_bpb']:.4f}, first stem conv after training: "
          f"weight std {stem.weight.std().item():.4f}, |bias| max {stem.bias.abs().max().item():.4f}", flush=True)
    return {"bits_per_byte": result.val["val_bpb"], "steps": result.step, "bytes_per_s": result.bytes_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget of each run")
    parser.add_argument("--no-write", action="store_true", help="print the figures, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    new = train("init-like-the-rest", args.minutes, "normal")
    old = train("pytorch-default", args.minutes, "default")
    load_after = os.getloadavg()[0]

    rows = [
        ["normal(0, init_std), zero bias (tried)", f"{new['bits_per_byte']:.4f}", new["steps"], f"{new['bytes_per_s']:,.0f}"],
        ["PyTorch default (kept)", f"{old['bits_per_byte']:.4f}", old["steps"], f"{old['bytes_per_s']:,.0f}"],
    ]
    table = markdown_table(["stem conv init", "val bits/byte", "steps", "training bytes/s"], rows)
    difference = new["bits_per_byte"] - old["bits_per_byte"]
    verdict = "better" if difference < 0 else "worse"
    summary = f"Difference (normal - default): {difference:+.4f} bits/byte ({verdict} with the normal init)."
    print(table)
    print(summary)
    if not args.no_write:
        write_section("stem-init", (
            "## Stem initialisation (quickstart recipe)\n\n"
            f"Machine: {machine()}. Load average before / after the runs: {load_before:.1f} / {load_after:.1f}.\n\n"
            f"Command: `python -m bench.stem_init --minutes {args.minutes:g}`\n\n"
            f"`recipes/quickstart.yaml` trained twice for {args.minutes:g} minutes each, one run after the other, same data "
            "and seed; only the stem's Conv1d initial weights differ. Val bits/byte: the recipe's end-of-run evaluation "
            "(eval_bytes of the held-out split). With equal wall-clock, a difference in steps is machine noise, not the init.\n\n"
            + table + "\n\n" + summary))


if __name__ == "__main__":
    main()
