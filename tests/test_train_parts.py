"""Training pieces: optimizer parameter groups, the LR schedule, deterministic batches, eval slices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from om import OmConfig, OmLLM
from om.data import BytesCodec
from om.evaluate import TokenReader, validation_slice
from om.train.batches import BatchSampler
from om.train.optim import MuonAdamW, orthogonalized, param_groups
from om.train.schedule import budget_progress, learning_rate
from om.train.validation import tokens_for_bytes


def test_weight_decay_skips_norms_biases_and_initial_states():
    model = OmLLM(OmConfig(vocab_size=257, dim=32, n_layers=2, n_heads=2, dims_key=[8, 4], dims_value=[8, 4], segment_len=8, state_len=4))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight under its first name
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert all(("norm" in n or n.endswith(".bias") or n.endswith("initial_state")) for n in skipped)
    assert not any("norm" in n or n.endswith(".bias") or n.endswith("initial_state") for n in decayed)
    assert "embed.weight" in decayed and "layers.0.arc.proj_out.weight" in decayed
    assert any("pass_weights" in n for n in decayed)  # the per-head matrices of later passes
    # Every parameter exactly once (the tied head weight is the embedding).
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_muon_takes_the_hidden_matrices_only():
    config = dict(vocab_size=257, dim=32, n_layers=2, n_heads=2, dims_key=[8, 4], dims_value=[8, 4], segment_len=8, state_len=4)
    for tied in (True, False):
        model = OmLLM(OmConfig(**config, tie_embeddings=tied))
        names = {id(p): n for n, p in model.named_parameters()}
        matrices, kernels, decay, no_decay = param_groups(model, 0.1, muon=True)
        assert matrices["muon"] and kernels["muon"] and kernels["flatten"] and decay["weight_decay"] == 0.1
        on_muon = {names[id(p)] for p in matrices["params"]}
        assert "layers.0.arc.proj_out.weight" in on_muon and "layers.1.mlp_in.weight" in on_muon
        assert any("pass_weights" in n for n in on_muon)  # stacks of per-head matrices
        assert not any(n.startswith(("embed", "head", "stem")) or "norm" in n or "initial_state" in n for n in on_muon)
        assert {names[id(p)] for p in kernels["params"]} == {f"stem.convs.{i}.weight" for i in range(3)}
        assert {names[id(p)] for p in decay["params"]} == {"embed.weight"} | ({"head.weight"} if not tied else set())
        total = sum(len(g["params"]) for g in (matrices, kernels, decay, no_decay))
        assert total == len(list(model.parameters()))  # every parameter exactly once


def test_muon_leaves_grouped_kernels_to_adamw():
    # A depthwise stem's kernels are one filter per channel: not a matrix to orthogonalise.
    model = OmLLM(OmConfig(vocab_size=257, dim=32, n_layers=1, n_heads=2, dims_key=[8], dims_value=[8], segment_len=8,
                           state_len=4, stem_groups=32))
    names = {id(p): n for n, p in model.named_parameters()}
    matrices, kernels, decay, _ = param_groups(model, 0.1, muon=True)
    assert kernels["params"] == []
    assert {names[id(p)] for p in decay["params"]} == {"embed.weight"} | {f"stem.convs.{i}.weight" for i in range(3)}
    assert not any(names[id(p)].startswith("stem") for p in matrices["params"])


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (3, 16, 8), (16, 48), (2, 48, 16)])
def test_orthogonalized_flattens_singular_values_and_keeps_singular_vectors(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    o = orthogonalized(g)
    assert o.shape == g.shape
    values = torch.linalg.svdvals(o)
    assert values.min() > 0.6 and values.max() < 1.25  # from a spread of about 10x in g's
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    rotated = u.mT @ o @ vh.mT  # diagonal when o has g's singular vectors
    off_diagonal = rotated - torch.diag_embed(torch.diagonal(rotated, dim1=-2, dim2=-1))
    assert off_diagonal.abs().max() < 1e-6


def test_newton_schulz_through_the_gram_matrix_gives_the_same_iterates():
    from om.train.optim import _newton_schulz, _newton_schulz_by_gram

    for shape in ((16, 48), (3, 8, 40), (12, 12)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        x = x / torch.linalg.matrix_norm(x, keepdim=True)
        torch.testing.assert_close(_newton_schulz_by_gram(x, 5), _newton_schulz(x, 5), rtol=1e-9, atol=1e-12)


def test_muon_adamw_is_torch_adamw_on_its_adamw_groups():
    torch.manual_seed(0)
    config = OmConfig(vocab_size=257, dim=16, n_layers=1, n_heads=2, dims_key=[4], dims_value=[4], segment_len=4, state_len=2)
    ours, theirs = OmLLM(config), OmLLM(config)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = MuonAdamW(param_groups(ours, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt_theirs = torch.optim.AdamW(param_groups(theirs, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randint(0, 257, (2, 9))
    for step in range(4):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            for group in opt.param_groups:
                group["lr"] = 1e-2 / (step + 1)
            model(x)[0].square().mean().backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_muon_moves_a_matrix_by_its_orthogonalised_gradient():
    weight = torch.nn.Parameter(torch.randn(8, 12))
    before = weight.detach().clone()
    opt = MuonAdamW([{"params": [weight], "weight_decay": 0.5, "muon": True}], lr=0.1)
    weight.grad = torch.randn(8, 12)
    opt.step()
    # First step: the momentum is the gradient times a constant, which orthogonalising removes.
    expected = before * (1 - 0.1 * 0.5) - 0.1 * 0.2 * 12**0.5 * orthogonalized(weight.grad)
    torch.testing.assert_close(weight.detach(), expected)
    kernel = torch.nn.Parameter(torch.randn(8, 4, 3))  # flattened: one (8, 12) matrix
    opt = MuonAdamW([{"params": [kernel], "weight_decay": 0.0, "muon": True, "flatten": True}], lr=0.1)
    kernel.grad = weight.grad.view(8, 4, 3)
    start = kernel.detach().clone()
    opt.step()
    torch.testing.assert_close(kernel.detach() - start, (expected - before * (1 - 0.1 * 0.5)).view(8, 4, 3))
    rms = (weight.detach() - before * (1 - 0.05)).square().mean().sqrt()
    assert 0.1 * 0.2 * 0.6 < rms < 0.1 * 0.2 * 1.25  # about an AdamW step's RMS (0.2 lr)


def test_schedule_warmup_then_cosine_to_min_lr():
    lr = lambda step, progress: learning_rate(step, progress, 1e-3, 1e-4, 10)  # noqa: E731
    assert lr(0, 0.0) == pytest.approx(1e-4) and lr(9, 0.0) == pytest.approx(1e-3)
    assert lr(10, 0.0) == pytest.approx(1e-3)
    assert lr(50, 0.5) == pytest.approx(5.5e-4)
    assert lr(99, 1.0) == pytest.approx(1e-4) and lr(200, 3.0) == pytest.approx(1e-4)
    assert learning_rate(50, 0.7, 1e-3, 1e-4, 10, "constant") == 1e-3
    # The first stop rule to be reached drives the decay.
    assert budget_progress(60, 0, 0.0, 110, None, None, warmup_steps=10) == pytest.approx(0.5)
    assert budget_progress(10, 900, 0.0, 1000, 1000, None) == pytest.approx(0.9)
    assert budget_progress(10, 0, 90.0, None, None, 2.0) == pytest.approx(0.75)
    assert budget_progress(10**6, 0, 0.0, 100, None, None) == 1.0


def test_reset_batches_depend_only_on_seed_and_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = BatchSampler(tokens, 16, 4, 2, seed=3, mode="reset")
    b = BatchSampler(tokens, 16, 4, 2, seed=3, mode="reset")
    first = a.batch(5, 1)
    a.batch(6, 0)
    again = b.batch(5, 1)
    assert torch.equal(first.inputs, again.inputs) and first.inputs.dtype == torch.int64
    assert torch.equal(first.targets[:, :-1], first.inputs[:, 1:])  # contiguous windows, shifted targets
    assert (np.diff(first.inputs.numpy(), axis=1) == 1).all()
    assert not torch.equal(first.inputs, a.batch(5, 0).inputs)
    assert not torch.equal(first.inputs, BatchSampler(tokens, 16, 4, 2, seed=4, mode="reset").batch(5, 1).inputs)


def test_carry_streams_continue_and_restart_at_the_wrap():
    tokens = np.arange(1_000, dtype=np.uint16)
    s = BatchSampler(tokens, 16, 3, 2, seed=0, mode="carry")
    first = s.batch(0, 1)
    assert first.reset.all()
    starts = [s.positions(step, 1)[0] for step in range(80)]
    resets = [s.positions(step, 1)[1] for step in range(80)]
    for step in range(1, 80):
        moved = starts[step] - starts[step - 1]
        assert ((moved == 16) | resets[step]).all()  # each row reads on where it stopped, unless it wrapped
        assert (starts[step] + 17 <= len(tokens)).all()
    assert any(r.any() for r in resets[1:])
    # Rows of both micro batches are distinct streams.
    assert len(set(s.positions(0, 0)[0]) | set(s.positions(0, 1)[0])) == 6


def test_too_little_data_is_a_user_error():
    from om.errors import OmUserError

    with pytest.raises(OmUserError, match="fewer than one sample of 17"):
        BatchSampler(np.arange(10, dtype=np.uint16), 16, 2, 1, 0, "reset")


def test_validation_slice_and_bytes_slices(tmp_path):
    tokens = np.arange(101, dtype=np.uint16)
    pieces = validation_slice(tokens, "val", 42, 4)
    assert [p.name for p in pieces] == ["val[0:10]", "val[10:20]", "val[20:30]", "val[30:42]"]
    assert np.array_equal(np.concatenate([p.ids for p in pieces]), tokens[:42])  # contiguous, no overlap
    assert [p.name for p in validation_slice(tokens, "val")] == ["val"]  # the whole split, one stream
    # A memmap split is cut into memmaps of the right file regions (a sliced memmap keeps its parent's offset).
    path = tmp_path / "val.bin"
    tokens.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=(101,))

    codec = BytesCodec()
    got = [np.concatenate(list(TokenReader(p, codec, chunk_bytes=3))) for p in validation_slice(mm, "val", 42, 4)]
    assert np.array_equal(np.concatenate(got), tokens[:42])
    codec = BytesCodec()
    ids = np.array([65, 256, 66, 67, 256, 68], dtype=np.uint16)  # separators cover no bytes
    assert tokens_for_bytes(codec, ids, 2) == 3
    assert tokens_for_bytes(codec, ids, 4) == 6 and tokens_for_bytes(codec, ids, 100) == 6
    assert math.isclose(tokens_for_bytes(codec, np.arange(256, dtype=np.uint16), 10), 10)
