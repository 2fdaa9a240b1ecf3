"""Sampling speed: N samples side by side (`om sample --num-samples N`) vs N separate runs, and
batch-1 decoding of patched vs unpatched Om.

    python -m bench.batch_sampling [--bytes 200] [--samples 16] [--threads 2] [--repeats 3] [--no-write]

Models: random init, bytes codec (speed does not depend on the weights): the reference byte
model (dim 256, 4 layers, L 128, S 16) and the Shakespeare headline model (bench/quality.py
OM_MODEL), that model with the recipe's hashed n-gram embeddings, and that model patched (P=4,
depthwise stem: bench/quality.py's om-bytes-patched-4).
Every generation runs to exactly --bytes bytes (temperature 1, seed 0, the separator never
ends it). "separate": --samples calls of `om.sampling.generate`, one after another, in one
process (no start-up cost counted); "batched": one `om.sampling.generate_many` call. The two alternate --repeats times and each keeps its
fastest time: on a shared VM one timing of either moves by 30% from run to run.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.quality import OM_MODEL, RECIPE_NGRAMS
from bench.report import load_text, machine, markdown_table, write_section
from om import OmConfig, OmLLM
from om.data.codecs import BytesCodec
from om.sampling import generate, generate_many

MODELS = {
    "reference": dict(dim=256, n_layers=4, segment_len=128, state_len=16),
    "headline": dict(OM_MODEL),
    # recipes/shakespeare-bytes.yaml's hashed 3- to 5-gram embeddings (8192 rows each).
    "headline + n-grams 3-5": dict(OM_MODEL, **RECIPE_NGRAMS),
    "headline, patched P=4": dict(OM_MODEL, patch_size=4, stem_groups=OM_MODEL["dim"]),
}
PROMPT = b"ROMEO.\nWhat light through yonder window breaks?\n"


def random_model(overrides: dict) -> OmLLM:
    """A random-init bytes model (seed 0) of the given OmConfig overrides, in eval mode."""
    torch.manual_seed(0)
    return OmLLM(OmConfig(**{**overrides, "vocab_size": 257})).eval()


def separate(model, codec, n: int, count: int) -> float:
    """Seconds for `count` generations of n bytes, one after another."""
    start = time.perf_counter()
    for seed in range(count):
        out = b"".join(generate(model, codec, PROMPT, max_bytes=n, seed=seed, end_at_separator=False))
        assert len(out) == n
    return time.perf_counter() - start


def batched(model, codec, n: int, count: int) -> float:
    start = time.perf_counter()
    samples = generate_many(model, codec, PROMPT, count, max_bytes=n, seed=0, end_at_separator=False)
    assert all(len(s.data) == n for s in samples)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=200)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternate separate and batched this many times, keep each one's fastest")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = BytesCodec()
    rows = []
    for name, overrides in MODELS.items():
        model = random_model(overrides)
        one = separate(model, codec, args.bytes, 1)  # also warms up
        alone, together = float("inf"), float("inf")
        for _ in range(args.repeats):
            alone = min(alone, separate(model, codec, args.bytes, args.samples))
            together = min(together, batched(model, codec, args.bytes, args.samples))
        total = args.bytes * args.samples
        rows.append([name, f"{model.num_parameters():,}", f"{args.bytes / one:,.0f}", f"{total / alone:,.0f}",
                     f"{total / together:,.0f}", f"{alone / together:.1f}x"])
        print(rows[-1], flush=True)
    table = markdown_table(["model", "parameters", "batch-1 bytes/s (one run)", f"{args.samples} separate runs, bytes/s",
                            f"--num-samples {args.samples}, bytes/s", "batched vs separate"], rows)
    print(table)
    if not args.no_write:
        write_section("batch-sampling", "## Sampling: --num-samples vs separate runs, patched vs not\n\n"
                      f"Machine: {machine()}, {args.threads} torch threads\n\nCommand: `python -m bench.batch_sampling "
                      f"--bytes {args.bytes} --samples {args.samples} --threads {args.threads} --repeats {args.repeats}`; load average "
                      f"when written: {load_text()}\n\n" + table)


if __name__ == "__main__":
    main()
