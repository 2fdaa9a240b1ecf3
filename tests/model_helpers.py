"""Tiny model configurations shared by the model tests."""

from __future__ import annotations

import torch

from om import OmConfig, OmLLM


def tiny_config(**overrides) -> OmConfig:
    base = dict(
        vocab_size=61,
        dim=32,
        n_layers=2,
        n_heads=2,
        dims_key=[8, 6],
        dims_value=[8, 4],
        segment_len=8,
        state_len=4,
        stem_kernels=[2, 3],
        mlp_ratio=2.0,
    )
    base.update(overrides)
    return OmConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> OmLLM:
    torch.manual_seed(seed)
    model = OmLLM(tiny_config(**overrides))
    # Random init is near-uniform; larger weights make every interaction visible in the logits.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model.eval()


def run_chunks(model: OmLLM, tokens: torch.Tensor, cuts: list[int]):
    """Feed tokens[:, a:b] for consecutive cut points; return (concatenated logits, final state)."""
    state, outputs = None, []
    bounds = [0, *cuts, tokens.shape[1]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            logits, state = model(tokens[:, a:b], state)
            outputs.append(logits)
    return torch.cat(outputs, dim=1), state
