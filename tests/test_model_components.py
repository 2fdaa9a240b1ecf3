"""Invariants 4 (offset invariance), 6 (RoPE is not a no-op), 7 (eval determinism), and the parts."""

import json
import math

import pytest
import torch
from pydantic import ValidationError

from om import ARC, ARCformer, CoPE, OmConfig, OmLLM, RoPEEmbeddings
from om.model.attention import causal_attention, resolve_backend
from tests.model_helpers import tiny_config, tiny_model


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
def test_arc_shapes_and_offset_invariance():
    torch.manual_seed(0)
    config = tiny_config(positional="rope")
    arc = ARC(config).eval()
    x, state = torch.randn(2, 8, 32), torch.randn(2, 4, 32)
    y0, s0 = arc(x, state, offset=0)
    assert y0.shape == (2, 8, 32) and s0.shape == (2, 4, 32)
    for offset in (8, 1000, 123456):
        y, s = arc(x, state, offset=offset)
        assert torch.allclose(y, y0, atol=1e-4) and torch.allclose(s, s0, atol=1e-4)


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
    y, s = arc(x, state)
    x2 = x.clone()
    x2[:, -1] += 1.0  # last segment row
    y2, s2 = arc(x2, state)
    assert torch.equal(y[:, :-1], y2[:, :-1])
    assert not torch.allclose(s, s2)  # every write row sees the last segment row


def test_arc_heads_are_batched_not_looped():
    arc = ARC(tiny_config(n_heads=3))
    assert arc.proj_in["read"].out_features == 3 * (8 + 8 + 8)
    assert arc.pass_weights[0]["segment"].shape == (3, 8, 6 + 6 + 4)


def test_arcformer_uses_learned_initial_state():
    layer = ARCformer(tiny_config())
    assert layer.initial_state.shape == (4, 32) and layer.initial_state.requires_grad
    y, s = layer(torch.randn(2, 8, 32), layer.initial_state.expand(2, -1, -1))
    assert y.shape == (2, 8, 32) and s.shape == (2, 4, 32)


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
    ],
)
def test_config_rejects_bad_values_naming_them(bad, message):
    with pytest.raises(ValidationError, match=message):
        tiny_config(**bad)


def test_forward_rejects_bad_token_shapes():
    model = OmLLM(tiny_config())
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(5, dtype=torch.long))
