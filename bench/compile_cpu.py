"""Does `torch.compile` train Om on this CPU, and if not, which part fails? Each case runs in its own
process, so a native crash ("double free or corruption", a segfault) becomes a row, not a lost run.

    python -m bench.compile_cpu [--steps 4] [--cases a,b,...] [--timeout 300] [--no-write]

Cases go from the smallest program to Om training, and vary the one setting that matters most:
the backend (`eager` and `aot_eager` trace but generate no code; `inductor` generates and compiles
C++), whether the backward pass is compiled too, and inductor's thread count. For every case: exit
status (and the last line of stderr on failure), seconds of the first call (compilation) and
bytes/s of the next steps against the eager model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from bench.quality import OM_MODEL
from bench.report import load_text, machine, markdown_table, write_section

CASES = {
    "linear-train-inductor": "a Linear + cross-entropy training step, inductor",
    "om-eval-inductor": "Om forward only (inference mode), inductor",
    "om-train-eager": "Om training, backend eager (Dynamo tracing only)",
    "om-train-aot-eager": "Om training, backend aot_eager (AOTAutograd, no code generated)",
    "om-train-inductor": "Om training, inductor (the default torch.compile)",
    "om-train-inductor-1-thread": "Om training, inductor, torch.set_num_threads(1)",
    "conv-norm-train-inductor": "an Embedding, a Conv1d and a LayerNorm, cross-entropy training step, inductor",
    "om-train-inductor-no-stem": "Om training without the Conv1d stem (stem_kernels []), inductor",
    "om-train-inductor-compile-threads-1": "Om training, inductor, compiled in-process (TORCHINDUCTOR_COMPILE_THREADS=1)",
}
# Environment a case's process starts with: inductor reads TORCHINDUCTOR_COMPILE_THREADS at import.
CASE_ENV = {"om-train-inductor-compile-threads-1": {"TORCHINDUCTOR_COMPILE_THREADS": "1"}}
BATCH, LENGTH = 16, 128


def _om(**overrides):
    from om import OmConfig, OmLLM

    torch.manual_seed(0)
    return OmLLM(OmConfig(**{**OM_MODEL, **overrides}, vocab_size=256))


class _ConvNorm(torch.nn.Module):
    """The smallest piece of Om's input path: embedding -> causal Conv1d (width 4) -> LayerNorm -> logits."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(256, 128)
        self.conv = torch.nn.Conv1d(128, 128, 4)
        self.norm = torch.nn.LayerNorm(128)
        self.head = torch.nn.Linear(128, 256)

    def forward(self, tokens):
        x = self.embed(tokens)
        y = self.conv(torch.nn.functional.pad(x.transpose(1, 2), (3, 0))).transpose(1, 2)
        return self.head(self.norm(x + y))


def run_case(case: str, steps: int, compiled: bool = True) -> dict:
    """Run one case in this process (compiled=False: the same model and step, eager); returns
    {first_call_s, bytes_per_s}."""
    if case.endswith("1-thread"):
        torch.set_num_threads(1)
    data = torch.randint(0, 256, (BATCH, LENGTH + 1))
    if case.startswith(("linear", "conv-norm")):
        model = (torch.nn.Sequential(torch.nn.Embedding(256, 128), torch.nn.Linear(128, 256)) if case.startswith("linear")
                 else _ConvNorm())

        def loss_fn():
            return torch.nn.functional.cross_entropy(model(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
    else:
        model = _om(stem_kernels=[]) if case.endswith("no-stem") else _om()

        def loss_fn():
            return model.loss(data[:, :-1], data[:, 1:])[0]

    backend = "eager" if "-eager" in case and "aot" not in case else "aot_eager" if "aot-eager" in case else "inductor"
    if compiled:
        model.compile(backend=backend)
    train = "-train" in case
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None

    def step():
        if train:
            loss_fn().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(data[:, :-1])

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rate = BATCH * LENGTH * steps / (time.perf_counter() - start)
    return {"first_call_s": first, "bytes_per_s": rate}


def eager_rate(train: bool, steps: int) -> float:
    """Bytes/s of eager Om, training or forward only (after one untimed step)."""
    return run_case("om-train-inductor" if train else "om-eval-inductor", steps, compiled=False)["bytes_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case before it is killed")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.steps)))
        return
    eager = {"train": eager_rate(True, args.steps), "eval": eager_rate(False, args.steps)}
    rows = []
    for case in args.cases.split(","):
        argv = [sys.executable, "-m", "bench.compile_cpu", "--case", case, "--steps", str(args.steps)]
        try:
            env = {**os.environ, **CASE_ENV.get(case, {})}
            child = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout, env=env)
        except subprocess.TimeoutExpired:
            rows.append([case, CASES[case], f"no result in {args.timeout} s (killed)", "", ""])
            print(rows[-1], flush=True)
            continue
        if child.returncode != 0:
            last = (child.stderr.strip().splitlines() or ["no message"])[-1][:140].replace("|", "/")
            rows.append([case, CASES[case], f"exit {child.returncode}: {last}", "", ""])
        else:
            result = json.loads(child.stdout.strip().splitlines()[-1])
            base = eager["train" if "-train" in case else "eval"]
            ratio = "" if case.startswith(("linear", "conv-norm")) else f"{result['bytes_per_s'] / base:.2f}x"
            rows.append([case, CASES[case], "ok", f"{result['first_call_s']:.1f}", f"{result['bytes_per_s']:,.0f} ({ratio or 'n/a'})"])
        print(rows[-1], flush=True)
    table = markdown_table(["case", "what", "result", "first call s", "bytes/s (vs eager Om)"], rows)
    text = (f"Eager Om (the headline model, batch {BATCH} x {LENGTH}): train {eager['train']:,.0f} bytes/s, "
            f"eval {eager['eval']:,.0f} bytes/s.\n\n" + table)
    print(text)
    if not args.no_write:
        write_section("compile-cpu", "## torch.compile on CPU\n\n"
                      f"Machine: {machine()}; load average when written: {load_text()}\n\n"
                      f"Command: `python -m bench.compile_cpu --steps {args.steps}`\n\n" + text)


if __name__ == "__main__":
    main()
