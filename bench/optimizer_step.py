"""Optimizer step time: AdamW vs Muon (`train.optimizer`) on the quality table's models, beside
one training step of each, so the share Muon adds to a step is in one run.

    python -m bench.optimizer_step [--threads 2] [--repeats 20] [--no-write]

Models: the Shakespeare headline model (bench/quality.py OM_MODEL, 16 x 128 bytes a step as in
its table) and the patched quickstart recipe (recipes/quickstart-patched.yaml, 16 x 256 bytes);
random gradients for the optimizer steps (their cost does not depend on the values). Each figure
is the fastest of --repeats, measured alternately.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.quality import OM_MODEL, TRAIN
from bench.report import load_text, machine, markdown_table, write_section
from om import OmConfig, OmLLM
from om.model.loss import next_token_loss
from om.train.optim import make_optimizer
from om.train.recipe import read_yaml

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_PATCHED = ROOT / "recipes" / "quickstart-patched.yaml"


def models() -> dict[str, tuple[dict, int]]:
    """name -> (OmConfig overrides, bytes per sample)."""
    patched = read_yaml(QUICKSTART_PATCHED)
    model = patched["model"]
    patched_len = patched["train"]["segments_per_sample"] * model["segment_len"] * model["patch_size"]
    return {
        "headline (Shakespeare)": (dict(OM_MODEL), TRAIN["segments_per_sample"] * OM_MODEL["segment_len"]),
        "quickstart-patched": (model, patched_len),
    }


def fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (overrides, length) in models().items():
        torch.manual_seed(0)
        model = OmLLM(OmConfig(**{**overrides, "vocab_size": 257})).train()
        x = torch.randint(0, 257, (TRAIN["micro_batch_size"], length + 1))

        def train_step(model=model, x=x):
            next_token_loss(model(x[:, :-1])[0], x[:, 1:]).backward()

        optimizers = {kind: make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, kind) for kind in ("adamw", "muon")}
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        times = {"forward + backward": float("inf"), "adamw": float("inf"), "muon": float("inf")}
        for _ in range(3):  # alternate: a timing on a shared VM moves by 30% from run to run
            times["forward + backward"] = min(times["forward + backward"], fastest(train_step, max(1, args.repeats // 4)))
            for kind, opt in optimizers.items():
                times[kind] = min(times[kind], fastest(opt.step, args.repeats))
        step, adamw, muon = (times[k] * 1e3 for k in ("forward + backward", "adamw", "muon"))
        rows.append([name, f"{model.num_parameters():,}", f"{TRAIN['micro_batch_size']} x {length}", f"{step:.0f}",
                     f"{adamw:.1f}", f"{muon:.1f}", f"{(step + muon) / (step + adamw):.2f}x"])
        print(rows[-1], flush=True)
    table = markdown_table(["model", "parameters", "batch (bytes)", "forward + backward, ms", "AdamW step, ms",
                            "Muon step, ms", "training step, Muon vs AdamW"], rows)
    print(table)
    if not args.no_write:
        write_section("optimizer-step", "## Optimizer step: AdamW vs Muon\n\n"
                      f"Machine: {machine()}, {args.threads} torch threads; load average when written: {load_text()}\n\n"
                      f"Command: `python -m bench.optimizer_step --threads {args.threads} --repeats {args.repeats}`\n\n" + table)


if __name__ == "__main__":
    main()
