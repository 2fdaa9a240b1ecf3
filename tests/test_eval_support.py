"""Shared helpers for the eval / sample / cache tests (no tests here).

Tiny random models (dim 32, 2 layers, segment_len 8, state_len 4) and real codecs; checkpoints are
written with `save_checkpoint` (no training). Torch runs on one thread in these tests: on a shared
two-core machine, two threads that wait on each other make tiny models slower by orders of
magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.model_helpers import tiny_model

TEXT = (
    "Om reads bytes. Every layer keeps a state of S vectors; a segment attends over the state and "
    "itself, then writes the next state. Tiny models, tiny tests: naïve café, 東京, emoji 🙂.\n"
)


@pytest.fixture(autouse=False)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bytes_codec():
    from om.data.codecs import BytesCodec

    return BytesCodec()


def chars_codec(text: str = TEXT):
    from om.data.codecs import make_codec

    return make_codec("chars", data=text.encode("utf-8"), vocab_size=64)


def model_for(codec, seed: int = 0, **overrides):
    # Untied by default: a random model with tied embeddings mostly predicts its current input token
    # again (h is about the input's embedding), so from the separator it would sample the separator
    # and end every generation at once.
    overrides.setdefault("tie_embeddings", False)
    return tiny_model(seed=seed, vocab_size=codec.vocab_size, **overrides)


def save_tiny_checkpoint(folder, codec=None, seed: int = 0, dataset=None, **overrides):
    """A random tiny model saved as a checkpoint at `folder`; returns (folder, model, codec)."""
    from om.checkpoint import save_checkpoint

    codec = codec or bytes_codec()
    model = model_for(codec, seed, **overrides)
    path = save_checkpoint(folder, model, model.config, codec, trainer={"step": 0}, dataset=dataset)
    return path, model, codec


def stream_nll(model, codec, data: bytes, start: int | None = None) -> float:
    """Reference: NLL (nats) of every token of `data` after the separator, in one forward call."""
    ids = codec.encode(data).astype(np.int64)
    seq = torch.tensor([[codec.doc_sep_id if start is None else start, *ids.tolist()]])
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
        return float(torch.nn.functional.cross_entropy(logits[0].double(), seq[0, 1:], reduction="sum"))


def argmax_rollout(model, codec, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy ids by full forward passes over the growing sequence (no state reuse).

    Like `om sample`, special ids other than the separator are never chosen, and the separator ends.
    """
    seq = [codec.doc_sep_id, *prompt_ids]
    banned = [i for i in codec.special_ids.values() if i != codec.doc_sep_id]
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            last = logits[0, -1].clone()
            last[banned] = float("-inf")
            token = int(torch.argmax(last))
            if token == codec.doc_sep_id:
                break
            out.append(token)
            seq.append(token)
    return out


def run_cli(args: list[str], input: bytes | None = None):
    """Invoke `om ARGS` in-process; returns the typer Result (stdout_bytes, stderr, exit_code)."""
    from typer.testing import CliRunner

    from omcli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)
