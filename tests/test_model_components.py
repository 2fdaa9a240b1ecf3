"""Invariants 6 (RoPE and CoPE are not no-ops), 7 (eval determinism), every weight is live, and the parts.

Invariant 4 (offset invariance) is checked by tests/test_arc_reference.py, which compares ARC at
offsets 0, L, 5 and 10_000 with a reference that places rows at absolute stream positions.
"""

import json
import math

import pytest
import torch
from pydantic import ValidationError

from om import ARC, ARCformer, CoPE, OmConfig, OmLLM, RoPEEmbeddings
from om.model.attention import causal_attention, resolve_backend
from om.model.ngram import ngram_rows
from om.model.sizing import parameter_count
from tests.model_helpers import run_chunks, tiny_config, tiny_model


# -- RoPE -----------------------------------------------------------------------------------------
def test_rope_frequencies_follow_base_power_minus_2i_over_d():
    rope = RoPEEmbeddings(16, base=10000.0)
    expected = torch.tensor([10000.0 ** (-2 * i / 16) for i in range(8)], dtype=torch.float64)
    assert torch.allclose(rope.theta, expected)


def test_rope_fastest_pair_turns_one_radian_per_position():
    rope = RoPEEmbeddings(8)
    x = torch.zeros(1, 8)
    x[0, 0] = 1.0  # first pair = (1, 0)
    rotated = rope.apply(x, torch.tensor([1]))
    assert rotated[0, 0].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    assert rotated[0, 1].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert math.atan2(rotated[0, 1].item(), rotated[0, 0].item()) == pytest.approx(1.0, abs=1e-6)


def test_rope_dot_product_depends_only_on_relative_position():
    torch.manual_seed(0)
    rope = RoPEEmbeddings(32)
    q, k = torch.randn(1, 32), torch.randn(1, 32)

    def score(m, n):
        return (rope.apply(q, torch.tensor([m])) * rope.apply(k, torch.tensor([n]))).sum().item()

    assert score(3, 1) == pytest.approx(score(103, 101), abs=1e-4)
    assert score(7, 7) == pytest.approx(score(-50, -50), abs=1e-4)
    assert score(3, 1) == pytest.approx(score(1000, 998), abs=1e-3)
    # ...and it does depend on the relative position (not a no-op).
    assert abs(score(3, 1) - score(3, 2)) > 1e-3
    assert abs(score(3, 1) - (q * k).sum().item()) > 1e-3


def test_rope_partial_rotation_leaves_the_rest_untouched():
    rope = RoPEEmbeddings(16, fraction=0.5)
    x = torch.randn(2, 5, 16)
    y = rope.apply(x, torch.arange(5))
    assert torch.equal(y[..., 8:], x[..., 8:])
    assert not torch.allclose(y[..., :8], x[..., :8])


def test_rope_span_tables_stay_bounded_whatever_the_spans():
    rope = RoPEEmbeddings(8, span=(-4, 12))
    x = torch.randn(2, 3, 5, 8)
    for dtype in (torch.float32, torch.float64):
        for start in range(-30, 200, 7):  # inside and outside the initial span
            for n in (1, 5):
                expected = rope.apply(x[..., :n, :].to(dtype), torch.arange(start, start + n))
                torch.testing.assert_close(rope.apply_span(x[..., :n, :].to(dtype), start), expected)
    assert len(rope._tables) == 2  # one per dtype, widened when needed, never one per span


def test_arc_keeps_one_rope_table_per_pass_over_any_offsets_and_splits():
    model = tiny_model(seed=9, positional="rope+cope")
    tokens = torch.randint(0, 61, (1, 5 * 8 + 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for cuts in ([], [1], [3, 11], list(range(1, 43, 3)), list(range(1, 43))):
            run_chunks(model, tokens, cuts)
        arc = model.layers[0].arc
        x, state = torch.randn(1, 8, 32), torch.randn(1, 4, 32)
        for offset in (0, 5, 10_000, 123_457):
            arc(x, state, offset)
            for cut in range(1, 8):
                a = arc.extend(x[:, :cut], state, offset, cache=None, finish=False)
                arc.extend(x[:, cut:], state, offset + cut, cache=a.cache, finish=True)
    S, L = model.config.state_len, model.config.segment_len
    for layer in model.layers:
        for rope in layer.arc.rope:
            assert len(rope._tables) == 1
            first, cos, _ = next(iter(rope._tables.values()))
            assert first == -S and cos.shape[0] == 2 * S + L  # read -S..-1 to write L..L+S-1


# -- CoPE -----------------------------------------------------------------------------------------
def test_cope_bias_ignores_future_keys():
    torch.manual_seed(0)
    cope = CoPE(head_dim=8, max_positions=16)
    q, k = torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    allowed = torch.ones(6, 6).tril().bool()
    bias = cope(q, q @ k.transpose(-1, -2), allowed)
    k_future = k.clone()
    k_future[..., 4:, :] = torch.randn(2, 8) * 10  # only keys 4, 5 change
    bias_future = cope(q, q @ k_future.transpose(-1, -2), allowed)
    # Queries 0..3 never see keys 4, 5: their biases over visible keys are identical.
    assert torch.equal(bias[..., :4, :4], bias_future[..., :4, :4])
    assert not torch.allclose(bias[..., 5, :5], bias_future[..., 5, :5])


def test_cope_positions_count_keys_from_j_to_i():
    cope = CoPE(head_dim=2, max_positions=10)
    with torch.no_grad():
        cope.pos_emb.copy_(torch.stack([torch.arange(10.0), torch.zeros(10)], dim=1))  # e(p) . (1, 0) = p
    q = torch.tensor([[[[1.0, 0.0]] * 4]])
    logits = torch.full((1, 1, 4, 4), 50.0)  # every visible gate = sigmoid(50) ~ 1
    allowed = torch.ones(4, 4).tril().bool()
    bias = cope(q, logits, allowed)
    # Query 3: key j has i - j + 1 visible keys from j to i.
    assert torch.allclose(bias[0, 0, 3], torch.tensor([4.0, 3.0, 2.0, 1.0]), atol=1e-4)


def test_cope_gates_and_positions_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    B, H, T, d = 2, 2, 96, 16
    cope = CoPE(head_dim=d, max_positions=128, init_std=1.0)
    project = torch.nn.Linear(32, 2 * H * d)
    x = torch.randn(B, T, 32)
    allowed = torch.ones(T, T).tril().bool()

    def bias():
        q, k = project(x).view(B, T, 2, H, d).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-1, -2)) * 0.25
        return q, logits, cope(q, logits, allowed)

    with torch.no_grad():
        _, _, exact = bias()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q16, logits16, mixed = bias()
        same_inputs = cope(q16.float(), logits16.float(), allowed)  # float32 from the same bf16 q and logits
    assert q16.dtype == logits16.dtype == mixed.dtype == torch.bfloat16
    top = exact.abs().max()
    # Summing ~96 gates in bf16 moves positions by whole units (errors ~10% of the largest bias).
    assert (mixed.float() - same_inputs).abs()[..., allowed].max() < 0.02 * top
    assert (mixed.float() - exact).abs()[..., allowed].max() < 0.04 * top


# -- Attention ------------------------------------------------------------------------------------
def test_cached_attention_equals_full_causal_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 5)
    full = causal_attention(q, k, v, scale=0.5)
    part = causal_attention(q[:, :, 4:], k, v, scale=0.5)
    assert torch.allclose(full[:, :, 4:], part, atol=1e-6)


def test_attention_backend_explains_why_xformers_cannot_run():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, uses_cope=False) == "sdpa"
    assert resolve_backend("sdpa", cpu, uses_cope=True) == "sdpa"
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        resolve_backend("xformers", cpu, uses_cope=False)


# -- ARC / ARCformer ------------------------------------------------------------------------------
def test_arc_extend_in_parts_equals_forward():
    torch.manual_seed(1)
    arc = ARC(tiny_config(positional="rope+cope")).eval()
    x, state = torch.randn(2, 8, 32), torch.randn(2, 4, 32)
    y_full, s_full = arc(x, state, offset=16)
    a = arc.extend(x[:, :3], state, 16, cache=None, finish=False)
    b = arc.extend(x[:, 3:4], state, 19, cache=a.cache, finish=False)
    c = arc.extend(x[:, 4:], state, 20, cache=b.cache, finish=True)
    assert c.cache is None and a.next_state is None
    assert torch.allclose(torch.cat([a.y, b.y, c.y], dim=1), y_full, atol=1e-5)
    assert torch.allclose(c.next_state, s_full, atol=1e-5)


def test_arc_write_rows_see_the_whole_segment_but_segment_rows_do_not_see_write_rows():
    torch.manual_seed(2)
    arc = ARC(tiny_config()).eval()
    x, state = torch.randn(1, 8, 32), torch.randn(1, 4, 32)
    with torch.no_grad():
        y, s = arc(x, state)
        x2 = x.clone()
        x2[:, -1] += 1.0  # last segment row
        y2, s2 = arc(x2, state)
        assert torch.equal(y[:, :-1], y2[:, :-1])  # segment rows are causal
        assert not torch.allclose(s, s2)  # every write row sees the last segment row
        for name in ("proj_in.write.weight", "pass_weights.0.write"):  # the write rows' keys and values
            arc.get_parameter(name).normal_()
        y3, s3 = arc(x, state)
    assert torch.equal(y3, y)  # no segment row attends to a write row
    assert not torch.allclose(s3, s)


def test_arc_projections_fuse_heads_and_qkv_and_skip_the_dead_read_queries():
    arc = ARC(tiny_config(n_heads=3))  # dims_key [8, 6], dims_value [8, 4]
    assert arc.proj_in["read"].out_features == 3 * (8 + 8 + 8)  # pass 0: q|k|v of 3 heads in one matrix
    assert arc.pass_weights[0]["segment"].shape == (3, 8, 6 + 6 + 4)  # pass 1: per-head matrices
    assert arc.pass_weights[0]["write"].shape == (3, 8, 6 + 6 + 4)
    # Read rows are discarded after the last pass: there they need keys and values, never a query.
    assert arc.pass_weights[0]["read"].shape == (3, 8, 6 + 4)
    one_pass = ARC(tiny_config(n_heads=3, dims_key=[8], dims_value=[6]))
    assert one_pass.proj_in["read"].out_features == 3 * (8 + 6)
    assert one_pass.proj_in["segment"].out_features == 3 * (8 + 8 + 6)


def test_arcformer_uses_learned_initial_state():
    model = tiny_model(seed=8)
    layer = model.layers[0]
    assert layer.initial_state.shape == (4, 32) and layer.initial_state.requires_grad
    state = model.init_state(2)
    assert all(torch.equal(s[1], layer.initial_state) for s, layer in zip(state.layer_states, model.layers))
    tokens = torch.randint(0, 61, (2, 5))
    with torch.no_grad():
        before, _ = model(tokens)
        layer.initial_state.add_(torch.randn_like(layer.initial_state))
        after, _ = model(tokens)
    assert not torch.allclose(before, after, atol=1e-4)  # the first segment reads it


def test_gated_state_update_is_a_per_channel_mix_of_old_and_new_state():
    torch.manual_seed(0)
    replace = ARCformer(tiny_config())
    gated = ARCformer(tiny_config(state_update="gated"))
    gated.load_state_dict(replace.state_dict(), strict=False)  # same ARC, so the same write rows
    torch.nn.init.normal_(gated.state_gate.weight, std=0.5)
    x, state = torch.randn(2, 8, 32), torch.randn(2, 4, 32)
    _, new = replace(x, state)
    _, mixed = gated(x, state)
    keep = torch.sigmoid(gated.state_gate(new))
    torch.testing.assert_close(mixed, keep * state + (1 - keep) * new)
    lo, hi = torch.minimum(state, new), torch.maximum(state, new)
    assert bool(((mixed >= lo - 1e-6) & (mixed <= hi + 1e-6)).all())  # bounded: never leaves [old, new]
    assert not torch.allclose(mixed, new) and not torch.allclose(mixed, state)
    assert "state_gate.weight" not in replace.state_dict()  # the Om design has no gate


@pytest.mark.parametrize("patch_size", [1, 2])
def test_every_layers_state_gate_starts_by_keeping_most_of_the_old_state(patch_size):
    model = OmLLM(tiny_config(state_update="gated", n_layers=3, patch_size=patch_size))
    for layer in model.layers:
        assert torch.equal(layer.state_gate.bias, torch.ones_like(layer.state_gate.bias))


def test_residual_state_update_adds_the_write_rows_and_stays_bounded():
    torch.manual_seed(0)
    replace = ARCformer(tiny_config())
    residual = ARCformer(tiny_config(state_update="residual"))
    residual.load_state_dict(replace.state_dict())  # no extra weights: the same ARC, the same write rows
    x, state = torch.randn(2, 8, 32), 5.0 * torch.randn(2, 4, 32)
    _, new = replace(x, state)
    _, mixed = residual(x, state)
    total = state + new
    torch.testing.assert_close(mixed, total / total.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    # The old state survives (the identity path) and, whatever the input, every row has unit RMS.
    assert torch.nn.functional.cosine_similarity(mixed, state, dim=-1).min() > 0.5
    for _ in range(50):
        _, mixed = residual(torch.randn(2, 8, 32) * 10, mixed)
    torch.testing.assert_close(mixed.pow(2).mean(-1), torch.ones(2, 4), atol=1e-4, rtol=0)


# -- Dropout and eval mode ------------------------------------------------------------------------
def test_eval_mode_is_deterministic_with_dropout_configured():
    model = tiny_model(seed=7, dropout=0.5)
    tokens = torch.randint(0, 61, (2, 20))
    with torch.no_grad():
        a, _ = model(tokens)
        b, _ = model(tokens)
        model.train()
        c, _ = model(tokens)
        d, _ = model(tokens)
    assert torch.equal(a, b)
    assert not torch.equal(c, d)  # dropout is real in training mode


# -- OmLLM and config -----------------------------------------------------------------------------
def test_logits_cover_exactly_the_vocabulary_and_padding_is_internal():
    model = OmLLM(tiny_config(vocab_size=61))
    assert model.embed.weight.shape[0] == 64
    logits, state = model(torch.randint(0, 61, (2, 5)))
    assert logits.shape == (2, 5, 61) and state.offset == 5


def test_tied_embeddings_share_one_matrix():
    model = OmLLM(tiny_config(tie_embeddings=True))
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    untied = OmLLM(tiny_config(tie_embeddings=False))
    assert untied.head.weight.data_ptr() != untied.embed.weight.data_ptr()
    assert untied.num_parameters() == model.num_parameters() + model.embed.weight.numel()


def _same_weights(model: OmLLM, **overrides) -> OmLLM:
    other = OmLLM(model.config.model_copy(update=overrides)).eval()
    other.load_state_dict(model.state_dict())
    return other


def test_rope_changes_the_logits():
    model = tiny_model(seed=10, positional="rope")
    tokens = torch.randint(0, 61, (2, 3 * 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with_rope, _ = model(tokens)
        without, _ = _same_weights(model, positional="none")(tokens)
    assert (with_rope - without).abs().max() > 1e-2


def test_cope_changes_the_logits():
    model = tiny_model(seed=11, positional="cope")
    tokens = torch.randint(0, 61, (2, 3 * 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with_cope, _ = model(tokens)
        for layer in model.layers:
            for cope in layer.arc.cope:
                cope.pos_emb.zero_()
        without, _ = model(tokens)
    assert (with_cope - without).abs().max() > 1e-3


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"state_len": 0},
        {"dims_key": [8], "dims_value": [8]},
        {"positional": "rope+cope", "state_update": "gated", "tie_embeddings": False,
         "dims_key": [8, 6, 4], "dims_value": [8, 4, 6]},
        {"patch_size": 2, "decoder_layers": 2, "stem_groups": 4},
        {"patch_size": 3, "decoder_context": "per_phase"},
        {"patch_size": 2, "trunk_dim": 48},
        {"patch_size": 2, "decoder_layers": 2, "decoder_mlp_ratio": 0.5},
    ],
)
def test_every_weight_gets_a_gradient(overrides):
    """A weight whose gradient is exactly zero is dead: it costs memory and optimizer state and learns nothing."""
    model = tiny_model(seed=12, **overrides).double().train()
    V, L = model.config.vocab_size, model.config.segment_len
    ids = (torch.randperm(2 * (5 * L + 1), generator=torch.Generator().manual_seed(0)) % V).view(2, -1)  # every id occurs
    loss, _ = model.loss(ids[:, :-1], ids[:, 1:])  # five segments: the state is written and read
    loss.backward()
    for name, param in model.named_parameters():
        if param.numel() == 0:  # the (0, D) initial state of a model without memory
            continue
        grad = param.grad
        assert grad is not None, name
        if name in ("embed.weight", "head.weight"):
            grad = grad[:V]  # padded rows are never read and their logits are cut off
        if name.endswith("pos_emb"):  # CoPE positions beyond what the gates sum to are never reached
            assert grad.abs().sum() > 0, name
            continue
        assert bool((grad != 0).all()), f"{name}: {int((grad == 0).sum())} of {grad.numel()} entries get no gradient"


@pytest.mark.parametrize(
    "overrides",
    [{"dims_key": [8], "dims_value": [8]}, {"dims_key": [8, 6], "dims_value": [8, 4]}, {"state_len": 0}],
)
def test_checkpoints_of_the_old_layout_still_load(overrides):
    """Before the dead weights went, the last pass held read-row queries and a model without memory a state norm."""
    model = tiny_model(seed=13, **overrides)
    c = model.config
    H, dk, last = c.n_heads, c.dims_key[-1], c.n_passes - 1
    old = dict(model.state_dict())
    for i in range(c.n_layers):
        if c.state_len == 0:
            old[f"layers.{i}.norm_state.weight"], old[f"layers.{i}.norm_state.bias"] = torch.ones(c.dim), torch.zeros(c.dim)
        elif last == 0:
            name = f"layers.{i}.arc.proj_in.read.weight"
            kv = old[name].view(H, -1, c.dim)
            old[name] = torch.cat((torch.randn(H, dk, c.dim), kv), dim=1).reshape(-1, c.dim)
        else:
            name = f"layers.{i}.arc.pass_weights.{last - 1}.read"
            old[name] = torch.cat((torch.randn(*old[name].shape[:2], dk), old[name]), dim=2)
    loaded = OmLLM(c).eval()
    loaded.load_state_dict(old)  # strict
    tokens = torch.randint(0, 61, (2, 19))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], model(tokens)[0])


@pytest.mark.parametrize(
    "overrides",
    [
        {"dims_key": [8], "dims_value": [8]},
        {"dims_key": [8], "dims_value": [4], "state_len": 0},
        {"dims_key": [8, 6, 4], "dims_value": [8, 4, 2]},
        {"patch_size": 3, "stem_groups": 4, "decoder_layers": 2},
        {"patch_size": 3, "decoder_context": "per_phase"},
        {"patch_size": 2, "trunk_dim": 48, "decoder_context": "per_phase", "state_update": "gated"},
        {"patch_size": 2, "decoder_layers": 0, "state_len": 0},
        {"patch_size": 4, "decoder_layers": 3, "decoder_mlp_ratio": 0.5},
        {"patch_size": 4, "decoder_layers": 1, "decoder_attention": True},
        {"ngram_sizes": [3, 4, 6], "ngram_buckets": 100},
    ],
)
def test_parameter_count_matches_the_built_model(overrides):
    config = tiny_config(**overrides)
    assert parameter_count(config) == OmLLM(config).num_parameters()


def test_stem_convolutions_keep_the_measured_default_init():
    """The stem keeps PyTorch's Conv1d init (bench/stem_init.py measured init_std-normal worse)."""
    config = tiny_config(dim=128, stem_kernels=[2, 3, 4])
    torch.manual_seed(0)
    model = OmLLM(config)
    for conv, k in zip(model.stem.convs, config.stem_kernels):
        bound = 1.0 / math.sqrt(config.dim * k)
        assert conv.weight.abs().max().item() <= bound and conv.weight.std().item() > 0.5 * bound / math.sqrt(3)
        assert conv.bias.abs().max().item() > 0  # biases are not zeroed


def test_config_round_trips_through_json():
    config = tiny_config(positional="rope+cope", stem_kernels=[], dropout=0.1, attn_scales=[0.3, 0.2])
    text = config.to_json()
    assert json.loads(text)["positional"] == "rope+cope"
    assert OmConfig.from_json(text) == config


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(dims_key=[8], dims_value=[8, 8]), "must match"),
        (dict(positional="alibi"), "positional"),
        (dict(segment_len=0), "segment_len"),
        (dict(dim_model=3), "dim_model"),
        (dict(dims_key=[1, 8], dims_value=[8, 8]), "rotate"),
        (dict(stem_groups=3), "stem_groups"),
        (dict(patch_size=0), "patch_size"),
        (dict(trunk_dim=64), "trunk_dim"),
        (dict(decoder_mlp_ratio=1.0), "decoder_mlp_ratio"),
        (dict(patch_size=2, decoder_mlp_ratio=0), "decoder_mlp_ratio"),
    ],
)
def test_config_rejects_bad_values_naming_them(bad, message):
    with pytest.raises(ValidationError, match=message):
        tiny_config(**bad)


def test_forward_rejects_bad_token_shapes():
    model = OmLLM(tiny_config())
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(5, dtype=torch.long))


def test_rope_tables_built_during_inference_serve_training():
    """RoPE caches its cos/sin table on first use: one built under inference_mode must not break a
    later training step (inference tensors cannot be saved for backward)."""
    model = tiny_model(seed=1, positional="rope")
    tokens = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(tokens)
    model.train()
    loss, _ = model.loss(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert all(p.grad is not None for p in model.layers[0].arc.proj_in.parameters())


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_stem_equals_the_sum_of_its_convolutions(groups):
    """The stem runs as one convolution of the widest width (per-lag products): it must equal
    x + sum_k Conv1d_k over the input with the tail prepended, for dense, grouped and depthwise
    stems, and its gradients must reach every convolution's weights."""
    from om.model.stem import CausalConvStem

    torch.manual_seed(0)
    stem = CausalConvStem(32, [2, 3, 5], groups)
    x, tail = torch.randn(3, 11, 32, requires_grad=True), torch.randn(3, 4, 32)
    y, next_tail = stem(x, tail)
    padded = torch.cat((tail, x), dim=1).transpose(1, 2)
    expected = x + sum(conv(padded[:, :, 5 - k :]).transpose(1, 2) for k, conv in zip(stem.kernels, stem.convs))
    assert (y - expected).abs().max().item() < 1e-5
    assert torch.equal(next_tail, torch.cat((tail, x), dim=1)[:, -4:])
    y.square().sum().backward()
    assert all(conv.weight.grad.abs().sum() > 0 and conv.bias.grad.abs().sum() > 0 for conv in stem.convs)


def test_ngram_rows_depend_on_exactly_the_last_n_ids():
    sizes, tail = [2, 4], torch.full((1, 3), -1)
    a = torch.tensor([[5, 6, 7, 8, 9, 10]])
    b = a.clone()
    b[0, 2] = 99
    changed = (ngram_rows(a, tail, sizes, 1000) != ngram_rows(b, tail, sizes, 1000))[0]  # (T, sizes)
    assert changed[:, 0].tolist() == [False, False, True, True, False, False]  # the 2-grams ending at t = 2, 3
    assert changed[:, 1].tolist() == [False, False, True, True, True, True]  # the 4-grams ending at t = 2..5
    # "Before the stream" (-1) is not byte 0: the first 2-gram differs.
    assert ngram_rows(a, torch.zeros_like(tail), sizes, 1000)[0, 0, 0] != ngram_rows(a, tail, sizes, 1000)[0, 0, 0]


def test_ngram_hash_is_pinned():
    """Checkpoints' n-gram tables are indexed by this hash: changing it silently breaks every one."""
    rows = ngram_rows(torch.tensor([[0, 255, 10, 32]]), torch.full((1, 2), -1), [1, 3], 8192)
    assert rows.tolist() == [[[7311, 14461], [3840, 13668], [6693, 11634], [3695, 14816]]]


def test_ngram_rows_equal_the_recursive_hash_up_to_the_largest_allowed_ids():
    """The product-and-sum form stays exact in int64 wherever OmConfig allows it (max n * (vocab + 1) < 2^32)."""
    from om.model.ngram import MIXER, MODULUS, MULTIPLIER

    sizes, vocab = [1, 7, 16], 2**32 // 16 - 2
    tiny_config(vocab_size=vocab, ngram_sizes=sizes)  # allowed
    with pytest.raises(ValidationError):
        tiny_config(vocab_size=vocab + 1, ngram_sizes=sizes)
    tokens = torch.tensor([[vocab - 1] * 12 + [0, 5, vocab - 2] * 4])
    tail = torch.full((1, 15), -1)
    rows = ngram_rows(tokens, tail, sizes, 1000)
    ids = [-1] * 15 + tokens[0].tolist()
    for t in range(tokens.shape[1]):
        for i, n in enumerate(sizes):
            h = 0
            for k in range(n):  # newest first: h_k = h_{k-1} * MULTIPLIER + id_{t-k+1} + 1 (om/model/ngram.py)
                h = (h * MULTIPLIER + ids[15 + t - k] + 1) % MODULUS
            assert rows[0, t, i].item() == h * MIXER % MODULUS % 1000 + i * 1000, (t, n)



def test_ngram_rows_use_no_integer_matmul():
    """CUDA has no int64 matmul (pytorch/pytorch#44428): an n-gram model would fail there on its
    first batch, and this CPU-only suite would not see it. So the hash must not take one anywhere."""
    from torch.overrides import TorchFunctionMode

    matmuls = {torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.einsum, torch.Tensor.__matmul__,
               torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.bmm}
    seen = []

    class Recording(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in matmuls:
                seen.append(func)
            return func(*args, **(kwargs or {}))

    model = tiny_model(ngram_sizes=[2, 3, 5], ngram_buckets=64)
    with Recording():
        rows = ngram_rows(torch.tensor([[1, 2, 3, 4]]), torch.full((1, 4), -1), [2, 3, 5], 64)
        grams, _ = model.ngram(torch.tensor([[1, 2, 3, 4]]), model.ngram.initial_tail(1))
    assert rows.shape == (1, 4, 3) and grams.shape == (1, 4, model.config.dim)
    assert seen == []

@pytest.mark.parametrize("sizes", [[1], [2, 3, 5], [1, 7, 16]])
def test_decoder_ngram_rows_equal_ngram_rows(sizes):
    """The decoder's rows one token at a time, in Python integers (the tails moving on) and by an int64 matmul
    over each row's window, are `ngram_rows`' rows, up to the largest ids OmConfig allows."""
    from om.model.ngram import ngram_rows_by_matmul, ngram_rows_stepped

    vocab = 2**32 // 16 - 2  # the largest ids OmConfig allows with n = 16
    g = torch.Generator().manual_seed(0)
    tokens = torch.cat((torch.randint(0, 300, (3, 20), generator=g), torch.full((3, 4), vocab - 1)), dim=1)
    tail = torch.randint(-1, 300, (3, max(sizes) - 1), generator=g)
    tail[0] = -1
    expected = ngram_rows(tokens, tail, sizes, 1000)
    stream = torch.cat((tail, tokens), dim=1)
    tails = tail.tolist()
    for t in range(tokens.shape[1]):
        assert ngram_rows_stepped(tails, tokens[:, t].tolist(), sizes, 1000) == expected[:, t].tolist(), t
        assert torch.equal(ngram_rows_by_matmul(stream[:, t : t + max(sizes)], sizes, 1000), expected[:, t]), t
    assert tails == stream[:, tokens.shape[1]:].tolist()

@pytest.mark.parametrize("sizes", [[3, 3], [0, 2]])
def test_ngram_sizes_must_be_distinct_and_positive(sizes):
    with pytest.raises(ValidationError):
        tiny_config(ngram_sizes=sizes)
