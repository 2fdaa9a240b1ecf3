"""Speed, as ratios measured in one run: Om vs a plain Transformer, FLOP utilisation, precisions.

    python -m bench.speed [--size reference|headline] [--steps 6] [--no-compile] [--no-write]

1. Training bytes/s and FLOPs per byte of Om byte models vs the plain pre-norm Transformer of
   `bench/plain_transformer.py`, on the same batch. `--size reference` (the default): the reference
   model (4 layers, dim 256, L 128, S 16), batch 8 x 512 bytes, the plain Transformer at matched
   parameters (width searched so the counts agree within 5%). `--size headline`: the Shakespeare
   quality table's model (bench/quality.py OM_MODEL), batch 16 x 256 bytes, the plain Transformer
   of the same width and depth. Each size also gets Om with a depthwise stem, Om with one width-4
   convolution as its stem (the same functions as widths 2, 3 and 4 summed), and patched Om
   (patch_size 4 and 8 with a depthwise stem; P=4 with bench/quality.py's best patched settings).
2. Model FLOP utilisation: matmul FLOPs of a training step (counted by torch's FlopCounterMode:
   mm, bmm, convolutions, attention) per second, over the machine's dense fp32 matmul peak
   (torch.matmul on large squares, best of several sizes, same run).
3. fp32 vs bf16 autocast vs torch.compile, for training and for evaluation (forward only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.model_throughput import REFERENCE, time_steps
from bench.plain_transformer import PlainTransformer
from bench.quality import RECIPE_NGRAMS
from bench.report import load_text, machine, markdown_table, write_section
from om import OmConfig, OmLLM

BATCH, SEGMENTS = 8, 4


def size_models(size: str) -> tuple[dict, int, int]:
    """(Om config, batch rows, bytes per row) of a `--size`."""
    if size == "headline":
        from bench.quality import OM_MODEL

        return dict(OM_MODEL, vocab_size=256), 16, 256
    return dict(REFERENCE), BATCH, SEGMENTS * REFERENCE["segment_len"]


def om_variants(base: dict) -> dict[str, dict]:
    """The Om rows of table 1: the model as it is, with a depthwise or a single width-4 stem, and patched (P 4 and 8)."""
    depthwise = {"stem_groups": base["dim"]}
    return {
        "Om": base,
        "Om, depthwise stem": {**base, **depthwise},
        "Om patched P=4, depthwise stem": {**base, **depthwise, "patch_size": 4},
        "Om patched P=8, depthwise stem, stem [2, 4, 8]": {**base, **depthwise, "patch_size": 8,
                                                        "segment_len": max(1, base["segment_len"] // 2),
                                                        "stem_kernels": [2, 4, 8]},
        # bench/quality.py's best patched model (om-bytes-patched-4-dense-stem-shared; dropout costs no FLOPs).
        "Om patched P=4, dense stem [4], 3 decoder blocks": {**base, "patch_size": 4, "stem_kernels": [4], "decoder_layers": 3},
        "Om patched P=4, dense stem [4], 3 decoder blocks, trunk_dim 2x": {**base, "patch_size": 4, "stem_kernels": [4],
                                                                           "decoder_layers": 3, "trunk_dim": 2 * base["dim"]},
        "Om patched P=8, dense stem [8], 3 decoder blocks": {**base, "patch_size": 8, "stem_kernels": [8], "decoder_layers": 3,
                                                             "segment_len": max(1, base["segment_len"] // 2)},
        # bench/quality.py's lean decoders (om-bytes-patched-8-lean-2x2, -lean): the decoder's MLP blocks narrowed.
        "Om patched P=8, dense stem [8], 2 decoder blocks of 2 x dim": {**base, "patch_size": 8, "stem_kernels": [8],
                                                                        "decoder_layers": 2, "decoder_mlp_ratio": 2.0,
                                                                        "segment_len": max(1, base["segment_len"] // 2)},
        "Om patched P=8, dense stem [8], 3 decoder blocks of 1 x dim": {**base, "patch_size": 8, "stem_kernels": [8],
                                                                        "decoder_layers": 3, "decoder_mlp_ratio": 1.0,
                                                                        "segment_len": max(1, base["segment_len"] // 2)},
        "Om, stem [4]": {**base, "stem_kernels": [4]},
        # The recipes as they train: recipes/shakespeare-bytes.yaml (3- to 5-gram embeddings after the stem) and
        # recipes/shakespeare-bytes-patched.yaml (before it, 8192 rows each).
        "Om + n-grams 3-5 (shakespeare-bytes.yaml)": {**base, **RECIPE_NGRAMS},
        "Om patched P=8, dense stem [8], 3 decoder blocks + n-grams 3-5 (shakespeare-bytes-patched.yaml)": {
            **base, "patch_size": 8, "stem_kernels": [8], "decoder_layers": 3, "segment_len": max(1, base["segment_len"] // 2),
            **RECIPE_NGRAMS, "ngram_after_stem": False},
    }


def matmul_peak_gflops() -> float:
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        reps = max(2, int(4e9 / n**3))
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def step_fn(model, data, train: bool, precision: str, optimizer=None):
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step():
        with autocast:
            loss, _ = model.loss(data[:, :-1], data[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def eval_step():
        with torch.inference_mode(), autocast:
            model(data[:, :-1])

    return train_step if train else eval_step


def count_flops(fn) -> int:
    """FLOPs of one call of fn. The counter is a dispatch mode, under which SDPA's CausalBias (a
    tensor subclass) cannot be created, so attention gets the same causal mask as a bool tensor."""
    from unittest import mock

    import om.model.attention as attention

    def as_tensor(n: int, total: int) -> torch.Tensor:
        return attention.causal_allowed(n, total, torch.device("cpu"))

    with mock.patch.object(attention, "causal_lower_right", as_tensor), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matched_plain(om_params: int, context: int, n_layers: int) -> PlainTransformer:
    """Same depth, heads of 64, width chosen so the parameter count is closest to `om_params`."""
    best = None
    for dim in range(128, 1025, 32):
        model = PlainTransformer(256, dim, n_layers, max(1, dim // 64), context)
        gap = abs(model.num_parameters() - om_params) / om_params
        if best is None or gap < best[0]:
            best = (gap, dim)
    return PlainTransformer(256, best[1], n_layers, max(1, best[1] // 64), context)


def measure_variant(label: str, key: str, steps: int, data: torch.Tensor) -> tuple[float, float]:
    """(bytes/s, seconds of the first call) of the reference Om model for one precision/compile variant."""
    train = key == "train"
    torch.manual_seed(0)
    model = OmLLM(OmConfig(**REFERENCE)).train(train)
    if label.endswith("torch.compile"):
        model.compile()  # in place: model(...) and model.loss(...) run the compiled forward
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    fn = step_fn(model, data, train, "bf16" if label.startswith("bf16") else "fp32", opt)
    first_start = time.perf_counter()
    fn()
    first = time.perf_counter() - first_start
    return data[:, :-1].numel() / time_steps(fn, steps, warmup=1), first


def measure_in_subprocess(label: str, key: str, steps: int) -> tuple[float | str, float]:
    """measure_variant in a child process; a crash comes back as a short description instead of a rate."""
    argv = [sys.executable, "-m", "bench.speed", "--variant", label, "--mode", key, "--steps", str(steps)]
    child = subprocess.run(argv, capture_output=True, text=True)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no message"])[-1][:120]
        return f"failed (exit {child.returncode}: {last})", 0.0
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return result["rate"], result["first_call_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["reference", "headline"], default="reference")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: measure one variant, print JSON
    parser.add_argument("--mode", choices=["train", "eval"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        torch.manual_seed(0)
        data = torch.randint(0, 256, (BATCH, SEGMENTS * REFERENCE["segment_len"] + 1))
        rate, first = measure_variant(args.variant, args.mode, args.steps, data)
        print(json.dumps({"rate": rate, "first_call_s": first}))
        return

    base, rows, context = size_models(args.size)
    torch.manual_seed(0)
    models = {name: OmLLM(OmConfig(**config)) for name, config in om_variants(base).items()}
    if args.size == "headline":
        plain = PlainTransformer(256, base["dim"], base["n_layers"], base["n_heads"], context, base["mlp_ratio"])
    else:
        plain = matched_plain(models["Om"].num_parameters(), context, base["n_layers"])
    models["plain Transformer"] = plain
    if args.size == "headline":  # patched as the patched recipe patches Om (bench.quality's plain-muon-ngram-patched-8)
        models["plain Transformer patched P=8, dense stem [8], 3 decoder blocks"] = PlainTransformer(
            256, base["dim"], base["n_layers"], base["n_heads"], context, base["mlp_ratio"], patch_size=8, decoder_layers=3)
    data = torch.randint(0, 256, (rows, context + 1))
    bytes_per_step = rows * context
    peak = matmul_peak_gflops()
    print(f"matmul peak {peak:.1f} GFLOP/s", flush=True)

    # 1 + 2: Om (as it is, depthwise stem, patched) vs plain, fp32 training, with FLOP utilisation.
    speed_rows, speeds = [], {}
    for name, model in models.items():
        torch.manual_seed(0)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        fn = step_fn(model, data, True, "fp32", opt)
        flops = count_flops(fn)
        seconds = time_steps(fn, args.steps, warmup=2)
        speeds[name] = bytes_per_step / seconds
        achieved = flops / seconds / 1e9
        speed_rows.append([name, f"{model.num_parameters():,}", f"{flops / bytes_per_step / 1e6:.2f}",
                           f"{speeds[name]:,.0f}", f"{speeds[name] / speeds['Om'] if 'Om' in speeds else 1:.2f}x",
                           f"{achieved:.1f}", f"{achieved / peak:.0%}"])
        print(speed_rows[-1], flush=True)
    ratio = speeds["Om"] / speeds["plain Transformer"]
    if args.size == "headline":  # table 3 is the reference model's
        text = (f"Om / plain training speed ratio: {ratio:.2f}; dense fp32 matmul peak: {peak:.1f} GFLOP/s.\n\n"
                + markdown_table([f"model (fp32, batch {rows} x {context})", "parameters", "MFLOP/byte (fwd+bwd)",
                                  "train bytes/s", "vs Om", "GFLOP/s", "MFU"], speed_rows))
        print(text)
        if not args.no_write:
            write_section("speed-headline", "## 2b. Speed at the headline size (Shakespeare model)\n\n"
                          f"Machine: {machine()}; load average when written: {load_text()}\n\n"
                          f"Command: `python -m bench.speed --size headline --steps {args.steps}`"
                          f"\n\nOm model: `{base}`; the patched and depthwise rows change only what their names say "
                          "(P=8 halves segment_len, so a segment keeps 128+ bytes). Plain Transformer: same width, "
                          f"depth and heads, context {context}.\n\n" + text)
        return

    # 3: precisions and compile, Om only. Each compiled measurement runs in its own process: a
    # crash inside the compiler (native aborts have happened on CPU) becomes a row, not a lost run.
    variants = ["fp32", "bf16 autocast"] + ([] if args.no_compile else ["fp32 + torch.compile"])
    precision_rows, base, first_call = [], {}, {}
    for label in variants:
        row = [label]
        for key in ("train", "eval"):
            if label.endswith("torch.compile"):
                rate, first = measure_in_subprocess(label, key, args.steps)
            else:
                rate, first = measure_variant(label, key, args.steps, data)
            if isinstance(rate, str):
                row += [rate, ""]
                continue
            first_call[label, key] = first
            base.setdefault(key, rate)
            row += [f"{rate:,.0f}", f"{rate / base[key]:.2f}x"]
        precision_rows.append(row)
        print(row, flush=True)

    columns = ["model (fp32, batch 8 x 512)", "parameters", "MFLOP/byte (fwd+bwd)", "train bytes/s", "vs Om", "GFLOP/s", "MFU"]
    table1 = markdown_table(columns, speed_rows)
    table2 = markdown_table(["Om reference model", "train bytes/s", "vs fp32", "eval bytes/s", "vs fp32"], precision_rows)
    compile_note = ""
    compiled = {key: s for (label, key), s in first_call.items() if label.endswith("torch.compile")}
    if compiled:
        compile_note = "\n\ntorch.compile's first call (compilation included) took " + " and ".join(
            f"{s:.0f} s ({key})" for key, s in compiled.items()) + "."
    text = (
        f"Om / plain training speed ratio: {ratio:.2f}; dense fp32 matmul peak: {peak:.1f} GFLOP/s.\n\n"
        + table1 + "\n\n" + table2 + compile_note
    )
    print(text)
    if not args.no_write:
        body = (
            "## 2. Speed\n\n"
            f"Machine: {machine()}\n\n"
            f"Command: `python -m bench.speed --steps {args.steps}`\n\n"
            f"Om reference model: `{REFERENCE}`. Plain Transformer: `bench/plain_transformer.py`, same depth, "
            f"width {plain.embed.weight.shape[1]} (matched parameters), context {context}.\n\n" + text
        )
        write_section("speed", body)


if __name__ == "__main__":
    main()
