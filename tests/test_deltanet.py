"""DeltaNet and Gated DeltaNet: the chunked WY twin against the float64 recurrence, the layers' options,
and (where flash-linear-attention is installed) fla's naive delta-rule references as an oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seqarch
from seqarch.kernels.delta_rule import delta_rule, delta_rule_recurrence
from seqarch.models.presets import all_presets

from conftest import D_MODEL, small_mixer
from helpers import needs_fla


def inputs(batch=2, heads=3, length=37, d_k=6, d_v=5, gated=False, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, d_k, generator=generator, dtype=dtype)
    k = F.normalize(torch.randn(batch, heads, length, d_k, generator=generator, dtype=dtype), dim=-1)
    v = torch.randn(batch, heads, length, d_v, generator=generator, dtype=dtype)
    beta = torch.rand(batch, heads, length, generator=generator, dtype=dtype)
    g = -torch.rand(batch, heads, length, generator=generator, dtype=dtype) if gated else None
    state = torch.randn(batch, heads, d_k, d_v, generator=generator, dtype=dtype)
    return q, k, v, beta, g, state


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("length", [1, 16, 37])
def test_wy_twin_equals_the_recurrence_float64(gated, length):
    q, k, v, beta, g, s0 = inputs(length=length, gated=gated)
    out, state = delta_rule(q, k, v, beta, g, s0, chunk_size=16)
    expected, expected_state = delta_rule_recurrence(q, k, v, beta, g, s0)
    assert (out - expected).abs().max() < 1e-12
    assert (state - expected_state).abs().max() < 1e-12


def test_delta_rule_replaces_the_value_stored_for_a_key():
    """beta = 1 with the same key twice: the state then maps that key to the second value alone."""
    k = F.normalize(torch.randn(1, 1, 1, 4, dtype=torch.float64), dim=-1).expand(1, 1, 2, 4)
    v = torch.randn(1, 1, 2, 3, dtype=torch.float64)
    out, state = delta_rule(k, k, v, torch.ones(1, 1, 2, dtype=torch.float64))
    assert torch.allclose(out[0, 0, 1], v[0, 0, 1]) and torch.allclose(k[0, 0, 0] @ state[0, 0], v[0, 0, 1])


def test_zero_length_and_gradients_through_the_twin():
    q, k, v, beta, g, s0 = inputs(length=0, gated=True)
    out, state = delta_rule(q, k, v, beta, g, s0)
    assert out.shape == (2, 3, 0, 5) and torch.equal(state, s0)
    leaves = [t.clone().requires_grad_() for t in inputs(length=20, gated=True)]
    out, state = delta_rule(*leaves, chunk_size=16)
    (out.square().sum() + state.square().sum()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.parametrize("argument, change", [
    ("k", lambda a: {**a, "k": a["k"][..., :2]}),
    ("beta", lambda a: {**a, "beta": a["beta"][..., :2]}),
    ("log_decay", lambda a: {**a, "log_decay": a["beta"].unsqueeze(-1)}),
    ("initial_state", lambda a: {**a, "initial_state": a["initial_state"][0]}),
    ("chunk_size", lambda a: {**a, "chunk_size": 8}),
    ("beta", lambda a: {**a, "beta": a["beta"].float()}),
])
def test_bad_arguments_name_themselves(argument, change):
    q, k, v, beta, g, s0 = inputs(length=5, gated=True)
    arguments = {"q": q, "k": k, "v": v, "beta": beta, "log_decay": g, "initial_state": s0}
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        delta_rule(**change(arguments))


@pytest.mark.parametrize("name, options, argument", [
    ("deltanet", {"n_heads": 3}, "n_heads"),
    ("deltanet", {"short_kernel": 0}, "short_kernel"),
    ("deltanet", {"expand_v": 0.3}, "expand_v"),
    ("gated_deltanet", {"gated": "yes"}, "gated"),
    ("gated_deltanet", {"output_gate": 1}, "output_gate"),
    ("gated_deltanet", {"unknown": 1}, "unknown"),
])
def test_bad_options_name_the_argument(name, options, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        seqarch.build_mixer(name, D_MODEL, **options)


def test_gated_deltanet_is_the_papers_layer():
    gated, plain = small_mixer("gated_deltanet"), small_mixer("deltanet")
    assert gated.gated and gated.output_gate and gated.state_value_dim == 2 * gated.state_key_dim
    assert not plain.gated and not plain.output_gate and plain.state_value_dim == plain.state_key_dim
    assert gated.state_size(1) == 2 * 8 * 16 + 3 * (2 * D_MODEL + 2 * D_MODEL)  # matrices + conv history
    presets = all_presets()
    for name in ("deltanet", "gated_deltanet"):
        assert presets[name].fields == {"mixer": name, "channel_mixer": "glu"}




@needs_fla
def test_deltanet_core_matches_fla_delta_rule_recurrence():
    from fla.ops.delta_rule.naive import delta_rule_recurrence as fla_recurrence

    q, k, v, beta, _, s0 = inputs(length=45, d_k=8, dtype=torch.float32)
    theirs, their_state = fla_recurrence(q, k, v, beta, initial_state=s0)
    ours, state = delta_rule(q * 8 ** -0.5, k, v, beta, None, s0, chunk_size=16)
    assert (ours - theirs).abs().max() < 1e-4 and (state - their_state).abs().max() < 1e-4


@needs_fla
def test_gated_deltanet_core_matches_fla_naive_recurrent_gated_delta_rule():
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    q, k, v, beta, g, s0 = inputs(length=45, d_k=8, gated=True, dtype=torch.float32)
    theirs, their_state = naive_recurrent_gated_delta_rule(*(t.transpose(1, 2) for t in (q, k, v, beta, g)),
                                                           initial_state=s0, output_final_state=True)
    ours, state = delta_rule(q * 8 ** -0.5, k, v, beta, g, s0, chunk_size=16)
    assert (ours - theirs.transpose(1, 2)).abs().max() < 1e-4 and (state - their_state).abs().max() < 1e-4
