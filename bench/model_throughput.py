"""Parameter count and fp32 forward+backward throughput of the reference Om byte model.

Reference model: bytes (vocab 256), 4 layers, dim 256, 4 heads, dims_key/value [64, 32],
segment_len 128, state_len 16, stem [2, 3, 4]. Batch 8 x 512 bytes (4 segments backpropagated).

    python -m bench.model_throughput [--steps N] [--batch B] [--segments K]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.report import machine, markdown_table, write_section
from om import OmConfig, OmLLM

REFERENCE = dict(vocab_size=256, dim=256, n_layers=4, n_heads=4, segment_len=128, state_len=16)


def time_steps(fn, steps: int, warmup: int) -> float:
    """Mean seconds per call of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = OmConfig(**REFERENCE)
    model = OmLLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    T = args.segments * config.segment_len
    data = torch.randint(0, 256, (args.batch, T + 1))
    tokens_per_step = args.batch * T

    def train_step():
        loss, _ = model.loss(data[:, :-1], data[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward_only():
        with torch.inference_mode():
            model(data[:, :-1])

    train_s = time_steps(train_step, args.steps, args.warmup)
    model.eval()
    eval_s = time_steps(forward_only, args.steps, args.warmup)

    # Incremental decoding: time per byte early in a stream vs after many segments.
    with torch.inference_mode():
        state = model.init_state(1)
        token = torch.tensor([[65]])
        per_byte = []
        for _ in range(4 * config.segment_len):
            start = time.perf_counter()
            _, state = model(token, state)
            per_byte.append(time.perf_counter() - start)
    early = sum(per_byte[: config.segment_len]) / config.segment_len
    late = sum(per_byte[-config.segment_len :]) / config.segment_len

    params = model.num_parameters()
    rows = [
        ["parameters", f"{params:,}"],
        ["train fwd+bwd+AdamW, fp32", f"{tokens_per_step / train_s:,.0f} bytes/s ({train_s * 1000:.0f} ms/step, batch {args.batch} x {T})"],
        ["forward only (inference_mode), fp32", f"{tokens_per_step / eval_s:,.0f} bytes/s"],
        ["one byte at a time, bytes 0-127 vs 384-511", f"{1 / early:,.0f} vs {1 / late:,.0f} bytes/s (ratio {early / late:.2f})"],
    ]
    table = markdown_table(["figure", "value"], rows)
    print(table)
    if not args.no_write:
        body = (
            "## Model core: reference byte model throughput\n\n"
            f"Machine: {machine()}\n\n"
            "Command: `python -m bench.model_throughput`\n\n"
            f"Model: `{REFERENCE}` (stem [2, 3, 4], dims_key/value [64, 32], pre-norm, tied embeddings).\n\n"
            + table
        )
        write_section("model-throughput", body)


if __name__ == "__main__":
    main()
