"""Long horizons in carry mode: training bytes/s and peak memory by truncated-backprop window
(`train.segments_per_sample`, or the last entry of `train.curriculum`), with
`train.activation_checkpointing` off and on.

    python -m bench.long_horizon_cost [--steps N] [--segments 4,16,64,128] [--threads T] [--device cpu] [--no-write]

The model is that of recipes/shakespeare-bytes.yaml (dim 128, 2 layers, 4 heads, dims_key [32],
segment_len 32, state_len 8, bytes codec), micro batch 16, in carry mode. Not a whole `om train`
run: each configuration builds the model directly and repeats the trainer's step (forward from
the carried state, next-token loss, backward, gradient clip 1.0, AdamW with the recipe's settings,
the new state carried detached), on synthetic random bytes (speed and memory do not depend on the
content). One untimed warm-up step, then --steps timed ones.

Every configuration runs in its own subprocess, so its memory is its own: "peak RSS" is that
process's `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end, "baseline RSS" the same figure
right after the model and optimizer were created (the interpreter, torch, the weights): the
difference is what training added, activations above all. On CUDA the peak of
`torch.cuda.max_memory_allocated` is reported too.

Prints a markdown table and writes it to BENCHMARKS.md (section "long-horizon-cost"). Other
processes on the machine distort the speeds; take them on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from bench.report import machine, markdown_table, write_section

MODEL = dict(dim=128, n_layers=2, n_heads=4, dims_key=[32], dims_value=[32], mlp_ratio=4.0, segment_len=32, state_len=8,
             stem_kernels=[2, 3, 4], positional="rope")
MICRO_BATCH = 16
OPTIMIZER = dict(lr=4e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)  # AdamW: this bench times the model, not the optimizer
SEGMENTS = "4,16,64,128"


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure(segments: int, checkpointing: bool, steps: int, device: str) -> dict:
    """One configuration, in this process: bytes/s over `steps` timed steps and memory figures."""
    import torch

    from om.data import BytesCodec
    from om.model import OmLLM
    from om.model.config import OmConfig
    from om.model.loss import next_token_loss
    from om.train.optim import make_optimizer

    torch.manual_seed(0)
    codec = BytesCodec()
    config = OmConfig(vocab_size=codec.vocab_size, **MODEL)
    model = OmLLM(config).to(device).train()
    model.activation_checkpointing = checkpointing
    opt = make_optimizer(model, OPTIMIZER["lr"], OPTIMIZER["weight_decay"], OPTIMIZER["betas"], OPTIMIZER["eps"])
    baseline = _rss_bytes()
    T = segments * config.segment_len
    gen = torch.Generator().manual_seed(1)
    state = None

    def step() -> None:
        nonlocal state
        window = torch.randint(0, 256, (MICRO_BATCH, T + 1), generator=gen).to(device)
        logits, new_state = model(window[:, :-1], state)
        loss = next_token_loss(logits, window[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state = new_state.detach()  # carry mode: truncated backprop over one sample

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {
        "segments": segments,
        "checkpointing": checkpointing,
        "seq_len": T,
        "bytes_per_s": MICRO_BATCH * T * steps / seconds,
        "baseline_rss": baseline,
        "peak_rss": _rss_bytes(),
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration (after one warm-up step)")
    parser.add_argument("--segments", default=SEGMENTS, help="segments_per_sample values (comma-separated)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each subprocess (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--one", nargs=2, metavar=("SEGMENTS", "CHECKPOINTING"), help=argparse.SUPPRESS)  # a subprocess
    args = parser.parse_args()

    if args.one:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(int(args.one[0]), args.one[1] == "on", args.steps, args.device)))
        return

    segments = [int(s) for s in args.segments.split(",") if s]
    load_before = os.getloadavg()[0]
    results = []
    for n in segments:
        for ck in ("off", "on"):
            cmd = [sys.executable, "-m", "bench.long_horizon_cost", "--one", str(n), ck]
            cmd += ["--steps", str(args.steps), "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(r)
            line = f"segments {n}, checkpointing {ck}: {r['bytes_per_s']:,.0f} bytes/s, peak RSS {_mb(r['peak_rss'])} MB"
            print(line, file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]

    off = {r["segments"]: r for r in results if not r["checkpointing"]}
    cuda = args.device.startswith("cuda")
    headers = ["segments_per_sample", "tokens/sample", "activation_checkpointing", "bytes/s", "vs off",
               "baseline RSS (MB)", "peak RSS (MB)", "peak - baseline (MB)"] + (["CUDA peak (MB)"] if cuda else [])
    rows = []
    for r in results:
        row = [r["segments"], r["seq_len"], "on" if r["checkpointing"] else "off", f"{r['bytes_per_s']:,.0f}",
               f"{r['bytes_per_s'] / off[r['segments']]['bytes_per_s']:.2f}", _mb(r["baseline_rss"]), _mb(r["peak_rss"]),
               _mb(r["peak_rss"] - r["baseline_rss"])]
        rows.append(row + ([_mb(r["cuda_peak"])] if cuda else []))
    command = "python -m bench.long_horizon_cost" + (f" --steps {args.steps}" if args.steps != 20 else "")
    command += f" --segments {args.segments}" if args.segments != SEGMENTS else ""
    command += f" --threads {args.threads}" if args.threads else ""
    command += f" --device {args.device}" if args.device != "cpu" else ""
    body = "\n".join([
        f"## Long horizons in carry mode: cost by truncated-backprop window (`{command}`)",
        "",
        f"Machine: {machine()}. Load average before / after: {load_before:.1f} / {load_after:.1f} "
        "(other processes distort the speeds: take these figures on an idle machine).",
        f"Model of recipes/shakespeare-bytes.yaml ({MODEL}, bytes codec), micro batch {MICRO_BATCH}, carry mode. "
        "Measured with the model directly, not a whole `om train` run: the trainer's step (forward from the carried state, "
        "loss, backward, clip 1.0, AdamW) on random bytes, "
        f"{args.steps} timed steps after one warm-up step, each configuration in its own process "
        f"(torch threads: {results[0]['threads']}). Peak RSS is the process's `ru_maxrss`; baseline RSS the same right after "
        "the model and optimizer were created, so peak - baseline is what training added (mostly activations).",
        "",
        markdown_table(headers, rows),
    ])
    print(body)
    if not args.no_write:
        write_section("long-horizon-cost", body)


if __name__ == "__main__":
    main()
