"""One long stream through `om.evaluate.evaluate`: layer-major inference vs segment by segment.

    python -m bench.eval_speed [--mib 16] [--baseline-mib 2] [--threads 2] [--no-write]

Input: one file of --mib MiB of the Python standard library's sources (bench.eval_sample_speed's
corpus, cached under .bench-cache/eval-sample/), scored as a single stream (batch 1), as `om eval
FILE` does. Models: random init, bytes codec (speed does not depend on the weights): the headline
Shakespeare model (bench/quality.py OM_MODEL, one memory pass), that model with the recipe's n-gram
embeddings, and the 5.7M reference model (two passes, so only its norms and MLPs run for all
segments at once). Each model runs twice in one
process, one after the other: `layer_major` off (every segment through every layer in turn, as
before) and on (the default). The two bits/byte must agree to float rounding.

`--baseline-mib M` (< --mib) runs both on the first M MiB of the file (the same bytes), then
layer-major alone on the whole file: segment by segment costs the same per byte all along a
stream, and at 16 MiB it alone would take most of an hour. The speed-up is whole-file
layer-major against the segment-by-segment rate.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.eval_sample_speed import corpus
from bench.quality import OM_MODEL, RECIPE_NGRAMS
from bench.report import load_text, machine, markdown_table, write_section
from om import OmConfig, OmLLM
from om.data.codecs import BytesCodec
from om.evaluate import evaluate

MODELS = {
    "headline (Shakespeare, 1 pass)": dict(OM_MODEL),
    # with recipes/shakespeare-bytes.yaml's hashed 3- to 5-gram embeddings (8192 rows each)
    "headline + n-grams 3-5": dict(OM_MODEL, **RECIPE_NGRAMS),
    "reference (5.7M, 2 passes)": dict(dim=256, n_layers=4, segment_len=128, state_len=16),
}


def run(model: OmLLM, path, layer_major: bool) -> tuple[float, float]:
    """(bytes/s, bits/byte) of one evaluation of `path` as one stream."""
    model.layer_major = layer_major
    start = time.perf_counter()
    result = evaluate(model, BytesCodec(), [str(path)], batch_size=1)
    seconds = time.perf_counter() - start
    return result.inputs[0].bytes / seconds, result.inputs[0].bits_per_byte


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--baseline-mib", type=int, help="compare both ways on this prefix only (default: the whole file)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = corpus(args.mib)
    base_mib = min(args.baseline_mib or args.mib, args.mib)
    base_path = corpus(base_mib)  # the file's first base_mib MiB
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = OmLLM(OmConfig(**{**MODELS[name], "vocab_size": 257})).eval()
        old, old_bpb = run(model, base_path, layer_major=False)
        new, new_bpb = run(model, base_path, layer_major=True)
        whole, whole_bpb = run(model, path, layer_major=True) if base_mib < args.mib else (new, new_bpb)
        rows.append([name, f"{old:,.0f}", f"{new:,.0f}", f"{whole:,.0f}", f"{whole / old:.2f}x",
                     f"{old_bpb:.6f}", f"{new_bpb:.6f}", f"{whole_bpb:.6f}"])
        print(rows[-1], flush=True)
    table = markdown_table(["model", f"segment by segment, {base_mib} MiB, bytes/s", f"layer-major, {base_mib} MiB, bytes/s",
                            f"layer-major, {args.mib} MiB, bytes/s", "speed-up",
                            f"bits/byte ({base_mib} MiB, segment by segment)", f"bits/byte ({base_mib} MiB, layer-major)",
                            f"bits/byte ({args.mib} MiB, layer-major)"], rows)
    print(table)
    if not args.no_write:
        write_section("eval-speed", "## Evaluating one long stream: layer-major vs segment by segment\n\n"
                      f"Machine: {machine()}; load average when written: {load_text()}; nothing else ran.\n\n"
                      f"Command: `python -m bench.eval_speed --mib {args.mib} --baseline-mib {base_mib} --threads {args.threads}`: "
                      f"one {args.mib} MiB file of stdlib Python source as one stream (batch 1), random-init bytes models; "
                      f"segment by segment and layer-major compared on its first {base_mib} MiB, layer-major also on all of it. "
                      "Speed-up: the whole file layer-major against segment by segment.\n\n" + table)


if __name__ == "__main__":
    main()
