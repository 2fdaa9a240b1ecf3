"""A short search for the Om byte recipe that does best on Shakespeare in a fixed wall-clock budget.

    python -m bench.recipe_search [--minutes 2.5] [--only base,lr4e-3,...] [--no-write]

Each candidate changes a few settings of the first Shakespeare recipe (BASE_MODEL / BASE_TRAIN), trains for the same
short budget on the same train.txt and is scored by `om eval --bytes` on the same val.txt. Short
budgets favour small fast models, so the winner is a guide for the longer headline run, not proof.
Results accumulate in .bench-cache/quality/search.json, so candidates can be run a few at a time.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.corpora import shakespeare_split
from bench.quality import TRAIN, WORK, eval_om, last_train_row, param_count, prepared, train_om
from bench.report import machine, markdown_table, write_section

# The starting point of the search: the first Shakespeare recipe. The winner became bench.quality's OM_MODEL.
BASE_MODEL = dict(dim=128, n_layers=2, n_heads=4, dims_key=[32, 16], dims_value=[32, 16], mlp_ratio=4.0,
                  segment_len=64, state_len=8, stem_kernels=[2, 3, 4], positional="rope", dropout=0.0)
BASE_TRAIN = {**TRAIN, "segments_per_sample": 2, "lr": 2e-3, "min_lr": 2e-4}

# name -> (model overrides, training overrides)
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "lr4e-3": ({}, {"lr": 4e-3, "min_lr": 4e-4}),
    "one-pass": ({"dims_key": [32], "dims_value": [32]}, {}),
    "seg128x1": ({"segment_len": 128}, {"segments_per_sample": 1}),
    "seg128x2": ({"segment_len": 128}, {}),
    "seg32x4": ({"segment_len": 32}, {"segments_per_sample": 4}),
    "dim192": ({"dim": 192, "dims_key": [48, 24], "dims_value": [48, 24]}, {}),
    "3-layers": ({"n_layers": 3}, {}),
    "batch8": ({}, {"micro_batch_size": 8}),
    "carry": ({}, {"state": "carry"}),
    "one-pass+lr4e-3": ({"dims_key": [32], "dims_value": [32]}, {"lr": 4e-3, "min_lr": 4e-4}),
    "one-pass+lr4e-3+seg32x4": ({"dims_key": [32], "dims_value": [32], "segment_len": 32},
                                {"lr": 4e-3, "min_lr": 4e-4, "segments_per_sample": 4}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--only", default="", help="comma-separated candidates (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    split = shakespeare_split()
    if split is None:
        print("bench.recipe_search: the Shakespeare corpus is unavailable; skipping", file=sys.stderr)
        return
    train_txt, val_txt = split
    WORK.mkdir(parents=True, exist_ok=True)
    dataset = prepared("bytes", None, train_txt)
    results_file = WORK / "search.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    wanted = [c for c in filter(None, args.only.split(","))] or list(CANDIDATES)
    for name in wanted:
        model_over, train_over = CANDIDATES[name]
        model, train = {**BASE_MODEL, **model_over}, {**BASE_TRAIN, **train_over, "threads": args.threads}
        run_dir = train_om(f"search-{name}", dataset, model, args.minutes, train)
        last = last_train_row(run_dir)
        results[name] = {"bits_per_byte": eval_om(run_dir, val_txt)["bits_per_byte"], "minutes": args.minutes,
                         "threads": args.threads,
                         "parameters": param_count(model, json.loads((dataset / "meta.json").read_text())["vocab_size"]),
                         "steps": last.get("step"), "train_bytes": last.get("bytes"),
                         "changes": {**model_over, **train_over}}
        results_file.write_text(json.dumps(results, indent=2))
        print(f"{name}: {results[name]['bits_per_byte']:.3f} bits/byte", file=sys.stderr, flush=True)

    table = markdown_table(
        ["candidate", "changes from the base", "minutes", "torch threads", "val bits/byte", "parameters", "steps", "training bytes"],
        [[n, f"`{r['changes']}`" if r["changes"] else "", f"{r['minutes']:g}", r.get("threads") or "default", f"{r['bits_per_byte']:.3f}",
          f"{r['parameters']:,}", r["steps"], f"{r['train_bytes']:,}" if r.get("train_bytes") else ""]
         for n, r in sorted(results.items(), key=lambda kv: kv[1]["bits_per_byte"])],
    )
    print(table)
    if not args.no_write:
        write_section("recipe-search", (
            "## Recipe search (Om bytes, short budget)\n\n"
            f"Machine: {machine()}\n\n"
            f"Command: `python -m bench.recipe_search --minutes {args.minutes:g}"
            + (f" --threads {args.threads}" if args.threads else "") + "`\n\n"
            f"Base: model `{BASE_MODEL}`, training `{BASE_TRAIN}`. Each candidate trains on the same Shakespeare train.txt "
            "for the same wall-clock and is scored on the same val.txt (last 10%). Short budgets favour small, fast "
            "models; the winner seeds the headline run above.\n\n" + table))


if __name__ == "__main__":
    main()
