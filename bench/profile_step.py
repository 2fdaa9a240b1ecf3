"""Where does a training step's time go? A torch.profiler breakdown of Om vs the plain Transformer.

    python -m bench.profile_step [--steps 5] [--no-write]

Both models are the quality table's (bench/quality.py: OM_MODEL and the plain Transformer of the
same width and depth), trained on the same random batch (micro batch x segments_per_sample x
segment_len bytes) with AdamW. Operators are grouped by what they do, by self CPU time summed
over forward, backward and the optimizer step; the rest of the wall time is Python and dispatch.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench.plain_transformer import PlainTransformer
from bench.quality import OM_MODEL, TRAIN
from bench.report import machine, markdown_table, write_section
from om import OmConfig, OmLLM

# Substrings of aten operator names (forward and backward variants); the first group that matches wins.
GROUPS = [
    ("activations, loss", ("gelu", "cross_entropy", "log_softmax", "nll_loss", "sigmoid")),
    ("attention (SDPA, softmax)", ("attention", "softmax", "baddbmm")),
    ("optimizer, gradient clipping", ("_foreach", "adam", "addcdiv", "lerp", "vector_norm", "clip")),
    ("matmuls (projections, MLP, head)", ("mm", "matmul", "linear")),
    ("stem convolutions", ("conv",)),
    ("norms", ("layer_norm",)),
    ("copies and reshapes", ("cat", "split", "copy", "clone", "contiguous", "transpose", "view", "reshape", "permute",
                             "narrow", "slice", "select", "expand", "as_strided", "squeeze", "stack", "index",
                             "unbind", "aten::t")),
    ("elementwise and reductions", ("add", "mul", "sub", "div", "neg", "where", "fill", "zero", "rsqrt", "pow", "sum",
                                    "mean", "ones", "empty", "full", "arange", "cos", "sin", "embedding")),
]


def group_of(name: str) -> str:
    lowered = name.lower()
    for label, keys in GROUPS:
        if any(k in lowered for k in keys):
            return label
    return "other"


def profile_model(model: torch.nn.Module, data: torch.Tensor, steps: int) -> tuple[dict[str, float], float]:
    """(self CPU seconds per group per step, wall seconds per step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss, _ = model.loss(data[:, :-1], data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - start) / steps
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        groups[group_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    return dict(groups), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    context = OM_MODEL["segment_len"] * TRAIN["segments_per_sample"]
    data = torch.randint(0, 256, (TRAIN["micro_batch_size"], context + 1))
    models = {
        "Om": OmLLM(OmConfig(**OM_MODEL, vocab_size=257)),
        "plain Transformer": PlainTransformer(257, OM_MODEL["dim"], OM_MODEL["n_layers"], OM_MODEL["n_heads"], context,
                                              OM_MODEL["mlp_ratio"]),
    }
    results = {name: profile_model(model.train(), data, args.steps) for name, model in models.items()}
    labels = [label for label, _ in GROUPS] + ["other"]
    rows = []
    for label in labels:
        cells = [f"{results[n][0].get(label, 0.0) * 1e3:.1f} ms ({results[n][0].get(label, 0.0) / results[n][1]:.0%})"
                 for n in models]
        rows.append([label, *cells])
    rows.append(["Python, dispatch, profiler (wall - operators)",
                 *[f"{(results[n][1] - sum(results[n][0].values())) * 1e3:.1f} ms" for n in models]])
    rows.append(["wall time per step", *[f"{results[n][1] * 1e3:.1f} ms" for n in models]])
    table = markdown_table(["component (self CPU time per step)", *models], rows)
    print(table)
    if not args.no_write:
        write_section("profile", (
            "## Where the time goes (training step profile)\n\n"
            f"Machine: {machine()}\n\nCommand: `python -m bench.profile_step --steps {args.steps}`\n\n"
            f"Models: the quality table's Om (`{OM_MODEL}`) and plain Transformer (same width, depth, heads, context "
            f"{context}); batch {TRAIN['micro_batch_size']} x {context} bytes, forward + backward + clip + AdamW. "
            "Self CPU time of each operator group (summed over threads, so groups can add up to more than the wall "
            "time on 2 threads); the share is of the wall time per step.\n\n" + table))


if __name__ == "__main__":
    main()
