"""Batch-1 decoding speed: the incremental decoder vs the forward pass, against the weight-read floor.

    python -m bench.decode [--bytes 2000] [--repeats 3] [--no-write]

For each model (random init, bytes codec: speed does not depend on the weights) and each thread
count (1 and 2), in one process, one after another:
- "forward": `model(token[:, None], state)` per byte, what `om sample` ran before the decoder;
- "decoder": `IncrementalDecoder.step(token)` per byte, what `om sample` runs now;
- "om sample": `om.sampling.generate` end to end (temperature 1, top-k off), decoder plus drawing;
- "floor": one matrix-vector product with every weight matrix of the model (convolutions and the
  per-head pass matrices reshaped to 2-D), i.e. reading each weight once per byte. A patched model
  reads its trunk only once per patch, so for it the floor is not a bound.
Each timed loop runs --bytes steps after a warm-up; positions run through several segments. The
four measurements alternate --repeats times and each keeps its fastest: on a shared VM one timing
moves by up to 30% from run to run, enough to move a ratio across a target.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from bench.batch_sampling import random_model
from bench.quality import OM_MODEL, RECIPE_NGRAMS
from bench.report import machine, markdown_table, write_section
from om import OmLLM
from om.data.codecs import BytesCodec
from om.model.decoding import IncrementalDecoder
from om.sampling import generate

MODELS = {
    "reference (5.7M)": dict(dim=256, n_layers=4, segment_len=128, state_len=16),
    "headline (Shakespeare)": dict(OM_MODEL),
    # recipes/shakespeare-bytes.yaml's hashed 3- to 5-gram embeddings, their vectors added after the stem;
    # and added before it, where the decoder adds their vector through the stem by one matmul.
    "headline + n-grams 3-5": dict(OM_MODEL, **RECIPE_NGRAMS),
    "headline + n-grams 3-5 before the stem": {**OM_MODEL, **RECIPE_NGRAMS, "ngram_after_stem": False},
    "headline, patched P=4": dict(OM_MODEL, patch_size=4, stem_groups=OM_MODEL["dim"]),
}


def _rate(step, n: int) -> float:
    """Steps per second of `step()` over n calls, after n // 10 warm-up calls."""
    for _ in range(max(1, n // 10)):
        step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - start)


def forward_rate(model: OmLLM, n: int) -> float:
    box = [model(torch.zeros(1, 7, dtype=torch.long))[1]]
    token = torch.full((1, 1), 65)

    def step():
        box[0] = model(token, box[0])[1]

    return _rate(step, n)


def decoder_rate(model: OmLLM, n: int) -> float:
    decoder = IncrementalDecoder(model, model(torch.zeros(1, 7, dtype=torch.long))[1])
    token = torch.full((1,), 65)
    return _rate(lambda: decoder.step(token), n)


def sample_rate(model: OmLLM, n: int) -> float:
    codec = BytesCodec()
    b"".join(generate(model, codec, b"warm", max_bytes=50, seed=0, end_at_separator=False))
    start = time.perf_counter()
    out = b"".join(generate(model, codec, b"ROMEO.\n", max_bytes=n, seed=0, end_at_separator=False))
    assert len(out) == n
    return n / (time.perf_counter() - start)


def weight_matrices(model: OmLLM) -> list[torch.Tensor]:
    """Every weight of the model as 2-D matrices (out, in): Linear and conv weights, per-head pass
    matrices one per head, the embedding (tied with the head) once. Not hashed n-gram tables: a step
    reads one row of each, not the table."""
    out = []
    for name, p in model.named_parameters():
        if name.startswith("ngram."):
            continue
        if p.dim() == 2 and "initial_state" not in name and "pos_emb" not in name:
            out.append(p.detach())
        elif p.dim() == 3 and "pass_weights" in name:  # (H, d_in, width)
            out += [w.t().contiguous() for w in p.detach()]
        elif p.dim() == 3:  # conv (D_out, D_in / groups, k)
            out.append(p.detach().reshape(p.shape[0], -1))
    return out


def floor_rate(model: OmLLM, n: int) -> float:
    matrices = weight_matrices(model)
    vectors = [torch.randn(1, w.shape[1]) for w in matrices]

    def step():
        for w, x in zip(matrices, vectors):
            F.linear(x, w)

    return _rate(step, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="alternate the measurements this many times, keep each one's fastest")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    with torch.inference_mode():
        for name, overrides in MODELS.items():
            model = random_model(overrides)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                old = new = sampled = floor = 0.0
                for _ in range(args.repeats):
                    old = max(old, forward_rate(model, max(200, args.bytes // 4)))
                    new = max(new, decoder_rate(model, args.bytes))
                    sampled = max(sampled, sample_rate(model, args.bytes))
                    floor = max(floor, floor_rate(model, args.bytes))
                rows.append([name, f"{model.num_parameters():,}", threads, f"{old:,.0f}", f"{new:,.0f}", f"{sampled:,.0f}",
                             f"{sampled / old:.2f}x", f"{floor:,.0f}", f"{sampled / floor:.0%}"])
                print(rows[-1], flush=True)
    table = markdown_table(["model", "parameters", "threads", "forward, bytes/s", "decoder, bytes/s", "om sample, bytes/s",
                            "om sample vs forward", "weight-read floor, bytes/s", "om sample / floor"], rows)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(table)
    if not args.no_write:
        write_section("decode", "## Decoding at batch 1: incremental decoder vs forward pass, against the weight-read floor\n\n"
                      f"Machine: {machine()}; load average before the table was written: {load}; nothing else ran.\n\n"
                      f"Command: `python -m bench.decode --bytes {args.bytes} --repeats {args.repeats}`\n\n" + table + "\n\n"
                      "forward: `model(token, state)` per byte (what `om sample` ran before); decoder: "
                      "`IncrementalDecoder.step`; om sample: `om.sampling.generate` end to end (the decoder plus drawing "
                      "each byte); floor: one matrix-vector product per weight matrix, i.e. every weight read once per byte "
                      "(for the patched model, whose trunk runs once per 4 bytes, this is not a bound). Each figure is the "
                      f"fastest of {args.repeats} alternating runs.")


if __name__ == "__main__":
    main()
