"""Does the memory remember? A synthetic key-recall probe for Om models.

Each episode is filler text (lower-case words), then a marker `@` and a random key of 6 capital
letters, then D bytes of filler, then the marker again, after which the key must be reproduced.
Exact recall = the model's greedy continuation after the second marker equals the key. (Argmax
at every key position under teacher forcing is the same thing as a greedy rollout: the rollout
fails exactly at the first position whose argmax is wrong.)

    python -m bench.recall_probe run [--minutes 4]     # train with and without memory, test, report
    python -m bench.recall_probe train --out DIR [--state-len 8] [--minutes 4]
    python -m bench.recall_probe test CKPT [--distances 1,2,4,8,16,32] [--episodes 64]

`test` works on any checkpoint whose codec maps the probe's characters to one id each (bytes or
chars codecs); distances are counted in segments of that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KEY_LEN = 6
MARKER = ord("@")
LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
CAPITALS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
PROBE_MODEL = dict(vocab_size=256, dim=128, n_layers=2, n_heads=4, dims_key=[32, 32], dims_value=[32, 32],
                   segment_len=32, state_len=8, stem_kernels=[2, 3, 4], mlp_ratio=4.0)


def filler(rng: np.random.Generator, n: int) -> np.ndarray:
    """n bytes of random lower-case words separated by spaces."""
    out = rng.choice(LETTERS, size=n)
    out[rng.random(n) < 0.18] = ord(" ")
    return out


def episode(rng: np.random.Generator, distance: int, prefix_max: int) -> tuple[np.ndarray, int]:
    """(bytes, index of the first key byte after the second marker)."""
    key = rng.choice(CAPITALS, size=KEY_LEN)
    prefix = filler(rng, int(rng.integers(0, prefix_max + 1)))
    parts = [prefix, [MARKER], key, filler(rng, distance), [MARKER], key]
    data = np.concatenate([np.asarray(p, dtype=np.uint8) for p in parts])
    return data, len(data) - KEY_LEN


def batch(rng: np.random.Generator, size: int, distances: list[int], prefix_max: int):
    """Right-aligned batch: every episode ends at the same position, so the answers line up.

    Returns tokens (B, T) int64 and the column of the first answer byte.
    """
    episodes = [episode(rng, int(rng.choice(distances)), prefix_max) for _ in range(size)]
    T = max(len(e) for e, _ in episodes)
    tokens = np.empty((size, T), dtype=np.int64)
    for row, (data, _) in enumerate(episodes):
        pad = filler(rng, T - len(data))  # left padding is more filler, never a marker
        tokens[row] = np.concatenate([pad, data])
    return torch.from_numpy(tokens), T - KEY_LEN


def answer_logits(model, tokens: torch.Tensor, answer_start: int) -> torch.Tensor:
    """Logits predicting the KEY_LEN answer bytes: (B, KEY_LEN, V)."""
    logits, _ = model(tokens[:, :-1])
    return logits[:, answer_start - 1 : answer_start - 1 + KEY_LEN]


def encode_for(codec, tokens: torch.Tensor) -> torch.Tensor:
    """Map probe bytes to the checkpoint's ids (one id per byte, or a clear error)."""
    if codec is None or codec.name == "bytes":
        return tokens
    table = torch.full((256,), -1, dtype=torch.long)
    for b in set(LETTERS.tolist() + CAPITALS.tolist() + [MARKER, ord(" ")]):
        ids = codec.encode(bytes([b]))
        if len(ids) != 1 or int(ids[0]) in codec.special_ids.values():
            sys.exit(f"recall_probe: the checkpoint's {codec.name} codec has no single id for {chr(b)!r}; use a bytes or chars model")
        table[b] = int(ids[0])
    return table[tokens]


@torch.no_grad()
def recall_by_distance(model, codec, distances_in_segments: list[int], episodes: int, seed: int = 1234) -> dict[int, float]:
    """Exact-recall accuracy for each distance D (in segments of the model)."""
    model.eval()
    L = model.config.segment_len
    results = {}
    for d in distances_in_segments:
        rng = np.random.Generator(np.random.PCG64([seed, d]))
        correct, done = 0, 0
        while done < episodes:
            size = min(32, episodes - done)
            tokens, start = batch(rng, size, [d * L], prefix_max=L)
            ids = encode_for(codec, tokens)
            predicted = answer_logits(model, ids, start).argmax(-1)
            correct += int((predicted == ids[:, start : start + KEY_LEN]).all(dim=1).sum())
            done += size
        results[d] = correct / episodes
    return results


def train_probe_model(out: Path, state_len: int, minutes: float, seed: int = 0, max_distance_segments: int = 4) -> dict:
    """Train a small byte Om on probe episodes (loss on the answer bytes only) and save a checkpoint."""
    from om import OmConfig, OmLLM
    from om.checkpoint import save_checkpoint
    from om.data import BytesCodec
    from om.train.optim import make_optimizer
    from om.train.schedule import learning_rate

    torch.manual_seed(seed)
    config = OmConfig(**{**PROBE_MODEL, "state_len": state_len})
    model = OmLLM(config)
    optimizer = make_optimizer(model, lr=2e-3, weight_decay=0.05, betas=(0.9, 0.95), eps=1e-8)
    L = config.segment_len
    rng = np.random.Generator(np.random.PCG64([seed]))
    start_time, step, losses = time.perf_counter(), 0, []
    while (elapsed := time.perf_counter() - start_time) < minutes * 60:
        progress = elapsed / (minutes * 60)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, progress, 2e-3, 2e-4, warmup_steps=50)
        # Curriculum: copying within a segment is learned first, then the distance grows to the maximum
        # over the first 60% of the budget.
        reach = int(L / 4 + (max_distance_segments * L - L / 4) * min(1.0, progress / 0.6))
        tokens, answer = batch(rng, 32, list(range(0, reach + 1)), prefix_max=L // 2)
        logits = answer_logits(model, tokens, answer)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, answer : answer + KEY_LEN].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"  state_len={state_len} step {step} answer loss {np.mean(losses[-50:]):.3f} ({elapsed:.0f}s)", file=sys.stderr)
    model.eval()
    info = {"probe": True, "step": step, "minutes": minutes, "final_answer_loss": float(np.mean(losses[-50:]))}
    save_checkpoint(out, model, config, BytesCodec(), trainer=info)
    return info


def load(path: str):
    from om.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return ckpt.model, ckpt.codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a probe model")
    p_train.add_argument("--out", required=True)
    p_train.add_argument("--state-len", type=int, default=PROBE_MODEL["state_len"])
    p_train.add_argument("--minutes", type=float, default=4.0)
    p_test = sub.add_parser("test", help="recall accuracy of a checkpoint by distance")
    p_test.add_argument("checkpoint")
    p_test.add_argument("--distances", default="1,2,4,8,16,32")
    p_test.add_argument("--episodes", type=int, default=64)
    p_run = sub.add_parser("run", help="train with and without memory, test both, write BENCHMARKS.md")
    p_run.add_argument("--minutes", type=float, default=4.0)
    p_run.add_argument("--episodes", type=int, default=64)
    p_run.add_argument("--workdir", default=".bench-cache/recall")
    p_run.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    if args.command == "train":
        print(json.dumps(train_probe_model(Path(args.out), args.state_len, args.minutes)))
    elif args.command == "test":
        model, codec = load(args.checkpoint)
        distances = [int(d) for d in args.distances.split(",")]
        print(json.dumps({"checkpoint": args.checkpoint, "recall": recall_by_distance(model, codec, distances, args.episodes)}))
    else:
        run(args)


def run(args) -> None:
    from bench.report import machine, markdown_table, write_section

    distances = [1, 2, 4, 8, 16, 32]
    rows, infos = {}, {}
    for label, state_len in (("Om, memory on (state_len 8)", PROBE_MODEL["state_len"]), ("Om, memory off (state_len 0)", 0)):
        out = Path(args.workdir) / f"state{state_len}"
        infos[label] = train_probe_model(out, state_len, args.minutes)
        model, codec = load(str(out))
        rows[label] = recall_by_distance(model, codec, distances, args.episodes)
        print(label, rows[label], file=sys.stderr)
    table = markdown_table(
        ["model", "train steps", *[f"D={d} seg" for d in distances]],
        [[label, infos[label]["step"], *[f"{acc:.0%}" for acc in rows[label].values()]] for label in rows],
    )
    print(table)
    if not args.no_write:
        L = PROBE_MODEL["segment_len"]
        body = (
            "## 3. Does the memory remember? Key-recall probe\n\n"
            f"Machine: {machine()}\n\n"
            f"Command: `python -m bench.recall_probe run --minutes {args.minutes:g} --episodes {args.episodes}`\n\n"
            f"Model: `{PROBE_MODEL}` (memory off: the same with state_len 0). Trained {args.minutes:g} minutes each on episodes with "
            f"D uniform in 0..4 segments ({4 * L} bytes; a curriculum grows the maximum from L/4 over the first 60% of the time), loss on the 6 key bytes only; tested on {args.episodes} fresh episodes per D. "
            f"Exact recall of a 6-letter key (chance: 26^-6).\n\n" + table
        )
        write_section("recall", body)


if __name__ == "__main__":
    main()
