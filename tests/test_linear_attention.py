"""Linear attention, RetNet and GLA: the chunked twin against the float64 recurrence, the feature maps,
the options, and (where flash-linear-attention is installed) fla's naive references as an oracle."""

from __future__ import annotations

import math

import pytest
import torch

import seqarch
from seqarch.kernels.chunked_linear_attention import (
    FACTOR_LIMIT,
    chunked_linear_attention,
    chunked_linear_attention_reference,
    factorable,
    linear_attention_recurrence,
)
from seqarch.models.presets import all_presets
from seqarch.modules.feature_maps import feature_dim, feature_map

from conftest import D_MODEL, small_mixer
from helpers import needs_fla, relative_rms


def inputs(batch=2, heads=3, length=37, d_k=5, d_v=7, decay=None, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, heads, length, d_k, generator=generator, dtype=dtype) for _ in range(2))
    v = torch.randn(batch, heads, length, d_v, generator=generator, dtype=dtype)
    shape = {None: None, "head": (batch, heads, length), "channel": (batch, heads, length, d_k)}[decay]
    log_decay = None if shape is None else -3 * torch.rand(shape, generator=generator, dtype=dtype)
    state = torch.randn(batch, heads, d_k, d_v, generator=generator, dtype=dtype)
    return q, k, v, log_decay, state


@pytest.mark.parametrize("decay", [None, "head", "channel"])
@pytest.mark.parametrize("length", [1, 16, 37])
def test_chunked_twin_equals_the_recurrence_float64(decay, length):
    q, k, v, g, s0 = inputs(length=length, decay=decay)
    out, state = chunked_linear_attention(q, k, v, g, s0, chunk_size=16)
    expected, expected_state = linear_attention_recurrence(q, k, v, g, s0)
    assert (out - expected).abs().max() < 1e-12
    assert (state - expected_state).abs().max() < 1e-12


def test_strong_decay_does_not_overflow_in_float32():
    q, k, v, _, s0 = inputs(length=64, decay=None, dtype=torch.float32)
    g = torch.full(q.shape, -30.0)  # exp(30 * 64) would overflow a factorised form
    out, state = chunked_linear_attention(q, k, v, g, s0)
    expected, _ = linear_attention_recurrence(*(t.double() for t in (q, k, v, g, s0)))
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    assert (out.double() - expected).abs().max() < 1e-4


@pytest.mark.parametrize("decay", ["head", "channel"])
@pytest.mark.parametrize("per_step", [0.5, 1.0])  # chunk 64: in-chunk decays up to 32 (factored), 64 (exact)
def test_both_in_chunk_forms_match_the_recurrence_in_float32(decay, per_step):
    q, k, v, _, s0 = inputs(length=100, decay=None, dtype=torch.float32)
    shape = q.shape[:3] if decay == "head" else q.shape
    g = -per_step * torch.rand(shape, generator=torch.Generator().manual_seed(3)) * 2
    cum = g[:, :, :64].cumsum(2)
    assert factorable(cum if decay == "channel" else cum.unsqueeze(-1)) == (per_step == 0.5)
    out, state = chunked_linear_attention(q, k, v, g, s0, chunk_size=64)
    expected, expected_state = linear_attention_recurrence(*(t.double() for t in (q, k, v, g, s0)))
    assert relative_rms(out.double(), expected) < 1e-5 and relative_rms(state.double(), expected_state) < 1e-5


@pytest.mark.parametrize("decay", ["head", "channel"])
def test_the_factored_and_exact_forms_agree_with_gradients(decay, monkeypatch):
    def forward_backward():
        leaves = [t.detach().clone().requires_grad_() for t in inputs(length=45, decay=decay)]
        out, state = chunked_linear_attention(*leaves, chunk_size=16)
        (out.sin().sum() + state.cos().sum()).backward()
        return [out, state, *(t.grad for t in leaves)]

    factored = forward_backward()
    monkeypatch.setitem(FACTOR_LIMIT, torch.float64, -1.0)  # no decay is mild enough: the exact form
    exact = forward_backward()
    for a, b in zip(factored, exact):
        assert (a - b).abs().max() < 1e-10


def test_zero_length_returns_empty_output_and_the_initial_state():
    q, k, v, g, s0 = inputs(length=0, decay="channel")
    out, state = chunked_linear_attention(q, k, v, g, s0)
    assert out.shape == (2, 3, 0, 7) and torch.equal(state, s0)


@pytest.mark.parametrize("argument, call", [
    ("q", lambda q, k, v, g, s: chunked_linear_attention(q[0], k, v)),
    ("k", lambda q, k, v, g, s: chunked_linear_attention(q, k[..., :2], v)),
    ("v", lambda q, k, v, g, s: chunked_linear_attention(q, k, v[:, :1])),
    ("log_decay", lambda q, k, v, g, s: chunked_linear_attention(q, k, v, g[..., :1])),
    ("initial_state", lambda q, k, v, g, s: chunked_linear_attention(q, k, v, g, s[..., :1])),
    ("chunk_size", lambda q, k, v, g, s: chunked_linear_attention(q, k, v, g, s, chunk_size=24)),
    ("k", lambda q, k, v, g, s: chunked_linear_attention(q, k.float(), v)),
])
def test_bad_arguments_name_themselves(argument, call):
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        call(*inputs(decay="channel", length=5))


def test_taylor_map_is_the_second_order_expansion_of_exp():
    q, k = torch.randn(2, 16, dtype=torch.float64).unbind(0)
    s = float(q @ k) / math.sqrt(16)
    assert feature_dim("taylor", 16) == 273
    assert float(feature_map("taylor", q) @ feature_map("taylor", k)) == pytest.approx(1 + s + s * s / 2, rel=1e-12)
    assert (feature_map("elu", q) > 0).all() and torch.equal(feature_map("identity", q), q)


@pytest.mark.parametrize("feature", ["identity", "elu", "taylor"])
def test_linear_attention_equals_its_definition(feature):
    """The mixer's output is ``phi(q) S / phi(q) z`` computed directly from the L x L scores."""
    mixer = small_mixer("linear_attention", dtype=torch.float64, feature_map=feature, key_dim=4,
                        normalize=feature != "identity")
    x = torch.randn(2, 21, D_MODEL, dtype=torch.float64)
    q, k, v = mixer.qkv(x).split([8, 8, 16], dim=-1)
    heads = [t.view(2, 21, 2, -1).transpose(1, 2) for t in (q, k, v)]
    q, k = feature_map(feature, heads[0]), feature_map(feature, heads[1])
    scores = (q @ k.transpose(-1, -2)).tril()
    o = scores @ heads[2]
    if mixer.normalize:
        o = o / (scores.sum(-1, keepdim=True) + mixer.eps)
    expected = mixer.out(o.transpose(1, 2).reshape(2, 21, D_MODEL))
    assert (mixer(x) - expected).abs().max() < 1e-10


@pytest.mark.parametrize("name, options, argument", [
    ("linear_attention", {"feature_map": "relu"}, "feature_map"),
    ("linear_attention", {"feature_map": "identity"}, "normalize"),
    ("linear_attention", {"n_heads": 3}, "n_heads"),
    ("linear_attention", {"key_dim": 0}, "key_dim"),
    ("retnet", {"value_expand": 0}, "value_expand"),
    ("retnet", {"n_heads": 16}, "rotary"),
    ("gla", {"expand_k": 0.3}, "expand_k"),
    ("gla", {"gate_rank": -1}, "gate_rank"),
    ("gla", {"gate_normalizer": 0}, "gate_normalizer"),
])
def test_bad_options_name_the_argument(name, options, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        seqarch.build_mixer(name, D_MODEL, **options)


def test_retnet_decays_are_the_papers_and_the_state_is_a_matrix_per_head():
    mixer = small_mixer("retnet", n_heads=4)
    gamma = mixer.log_gamma.exp()
    assert torch.allclose(gamma, 1 - 2.0 ** (-5.0 - torch.arange(4, dtype=torch.float64)))
    assert mixer.state_size(10) == 4 * 4 * 8  # d_k = 4, d_v = 2 d_k
    assert mixer.init_state(3)["S"].shape == (3, 4, 4, 8)


def test_presets_pair_the_mixers_with_swiglu():
    presets = all_presets()
    for name in ("retnet", "gla"):
        assert presets[name].fields["mixer"] == name and presets[name].fields["channel_mixer"] == "glu"


def test_chunk_size_does_not_change_the_result():
    q, k, v, g, s0 = inputs(length=70, decay="channel")
    a = chunked_linear_attention_reference(q, k, v, g, s0, chunk_size=16)
    b = chunked_linear_attention_reference(q, k, v, g, s0, chunk_size=64)
    assert (a[0] - b[0]).abs().max() < 1e-12 and (a[1] - b[1]).abs().max() < 1e-12


# -- flash-linear-attention's naive references as an oracle (optional: runs where fla is installed) -----


@needs_fla
def test_gla_core_matches_fla_naive_recurrent_gla():
    from fla.ops.gla.naive import naive_recurrent_gla

    q, k, v, g, s0 = inputs(length=45, d_k=8, decay="channel", dtype=torch.float32)
    theirs, their_state = naive_recurrent_gla(*(t.transpose(1, 2) for t in (q, k, v, g)), initial_state=s0,
                                              output_final_state=True)
    ours, state = chunked_linear_attention(q * 8 ** -0.5, k, v, g, s0, chunk_size=16)
    assert (ours - theirs.transpose(1, 2)).abs().max() < 1e-4
    assert (state - their_state).abs().max() < 1e-4


@needs_fla
def test_retnet_core_matches_fla_naive_retention():
    from fla.ops.retention.naive import naive_retention

    q, k, v, _, _ = inputs(length=45, heads=4, d_k=8, dtype=torch.float32)
    log_gamma = torch.log1p(-(2.0 ** (-5.0 - torch.arange(4.0))))
    ours, _ = chunked_linear_attention(q * 8 ** -0.5, k, v, log_gamma[None, :, None].expand(2, 4, 45))
    assert (ours - naive_retention(q, k, v)).abs().max() < 1e-4
