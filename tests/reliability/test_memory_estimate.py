"""The memory estimate that refuses absurd models: exact parameter count, activations in the
right ballpark of what autograd really keeps, and the refusal message."""

from __future__ import annotations

import pytest
import torch

from om import OmLLM
from om.errors import OmUserError
from om.model.sizing import check_fits, inference_estimate, parameter_count, training_estimate
from tests.model_helpers import tiny_config

CONFIGS = {
    "tiny": tiny_config(),
    "untied": tiny_config(tie_embeddings=False),
    "no-state": tiny_config(state_len=0),
    "cope": tiny_config(positional="rope+cope"),
    "three-passes-no-stem": tiny_config(stem_kernels=[], dims_key=[8, 6, 4], dims_value=[8, 4, 2]),
    "wider": tiny_config(vocab_size=257, dim=64, n_heads=4, segment_len=32, state_len=8),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_count_is_exact(name):
    config = CONFIGS[name]
    model = OmLLM(config)
    assert parameter_count(config) == model.num_parameters()
    est = training_estimate(config, 2, 2 * config.segment_len)
    assert est.parameters == 4 * sum(p.numel() for p in model.parameters())  # float32 bytes
    assert est.gradients == est.parameters and est.optimizer == 2 * est.parameters  # AdamW: two moments


def _saved_bytes(model: OmLLM, batch: int, tokens: int) -> int:
    """Bytes of the tensors autograd keeps for backward over one training forward."""
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, model.config.vocab_size, (batch, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(x, x)
    return sum(storages.values())


@pytest.mark.parametrize("name", CONFIGS)
def test_activations_are_in_the_right_ballpark(name):
    config = CONFIGS[name]
    torch.manual_seed(0)
    model = OmLLM(config)
    batch, tokens = 3, 4 * config.segment_len
    measured = _saved_bytes(model, batch, tokens)
    estimated = training_estimate(config, batch, tokens).activations
    assert 0.5 <= estimated / measured <= 2.5, (estimated, measured)
    # Twice the batch, twice the activations (the estimate is linear in it).
    assert training_estimate(config, 2 * batch, tokens).activations == 2 * estimated


def test_refusal_names_the_estimate_and_the_free_memory(monkeypatch):
    config = tiny_config(dim=4096, n_layers=64)
    monkeypatch.setattr("om.model.sizing.available_bytes", lambda device="cpu": 2_000_000_000)
    with pytest.raises(OmUserError) as info:
        check_fits(training_estimate(config, 8, 64), "cpu", "r.yaml")
    message = str(info.value)
    assert message.startswith("r.yaml: the model needs about ") and "2.0 GB available" in message
    assert "\n" not in message
    check_fits(inference_estimate(tiny_config()), "cpu")  # a tiny model fits


def test_available_memory_is_read_from_the_machine():
    from om.model.sizing import available_bytes

    free = available_bytes("cpu")
    assert free is None or 0 < free < 1 << 60
