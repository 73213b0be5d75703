"""Tests for the Mamba-2 mixer (seqarch.mixers.mamba2): recurrent form, prefill, causality, initialisation,
options, accounting against FlopCounterMode, the preset and the budget solver, the gated RMSNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import seqarch
from seqarch.budget import count_params, match_budget
from seqarch.kernels import use_backend
from seqarch.mixers.mamba2 import Mamba2
from seqarch.models.presets import build_preset
from seqarch.modules import GatedRMSNorm

from helpers import check_step_follows_parameter_updates, relative_rms, run_steps


def make(d_model=16, dtype=torch.float64, seed=0, **options):
    torch.manual_seed(seed)
    options = {"head_dim": 8, "d_state": 8, "chunk_size": 16, **options}
    mixer = Mamba2(d_model, dtype=dtype, **options).eval()
    with torch.no_grad():  # livelier than the init (dt ~ 1e-2 forgets little): decays and skips matter
        mixer.dt_bias.add_(2.0)
        mixer.D.normal_()
    return mixer


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
@pytest.mark.parametrize("length,ngroups", [(1, 1), (37, 2), (70, 4)])
def test_step_equals_forward(dtype, tolerance, length, ngroups):
    mixer = make(dtype=dtype, ngroups=ngroups)
    x = torch.randn(2, length, 16, dtype=dtype)
    with torch.no_grad():
        expected = mixer(x)
        stepped, state = run_steps(mixer, x, mixer.init_state(2))
    assert stepped.dtype == dtype
    assert relative_rms(stepped, expected) < tolerance
    assert state["ssm"].shape == (2, 4, 8, 8) and state["conv"].shape == (2, 3, 32 + 2 * ngroups * 8)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_prefill_from_a_fresh_and_a_non_empty_state(dtype, tolerance):
    mixer = make(dtype=dtype, ngroups=2)
    x = torch.randn(3, 90, 16, dtype=dtype)
    with torch.no_grad():
        expected = mixer(x)
        first, state = mixer.prefill(x[:, :21])  # fresh
        second, state = mixer.prefill(x[:, 21:60], state)  # non-empty: conv history and SSM state
        rest, state = run_steps(mixer, x[:, 60:], state)
        one_token, _ = mixer.prefill(x[:, :1])
    got = torch.cat([first, second, rest], 1)
    assert relative_rms(got, expected) < tolerance
    assert relative_rms(one_token, expected[:, :1]) < tolerance
    # the state after a prefill is the state after stepping the same tokens
    with torch.no_grad():
        _, stepped = run_steps(mixer, x[:, :60], mixer.init_state(3))
        _, prefilled = mixer.prefill(x[:, :60])
    assert relative_rms(prefilled["ssm"], stepped["ssm"]) < tolerance
    assert relative_rms(prefilled["conv"], stepped["conv"]) < tolerance


def test_exactly_causal():
    mixer = make()
    x = torch.randn(2, 50, 16, dtype=torch.float64)
    changed = x.clone()
    changed[:, 23] += torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        before, after = mixer(x), mixer(changed)
    assert torch.equal(before[:, :23], after[:, :23])
    assert not torch.allclose(before[:, 23:], after[:, 23:])


def test_initialisation_and_optimizer_hints():
    mixer = Mamba2(64, dtype=torch.float32)  # defaults: d_state 128, head_dim 64, expand 2
    assert (mixer.n_heads, mixer.d_inner, mixer.d_state) == (2, 128, 128)
    big = Mamba2(1024, d_state=64)
    dt = F.softplus(big.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001 and dt.max() / dt.min() > 5
    minus_a = big.A_log.exp()
    assert minus_a.min() >= 1 and minus_a.max() <= 16 and minus_a.max() - minus_a.min() > 5
    assert torch.equal(big.D, torch.ones(32))
    for name in ("A_log", "D", "dt_bias"):
        assert getattr(mixer, name)._optim == {"weight_decay": 0.0}, name
    assert not hasattr(mixer.in_proj.weight, "_optim")
    width = 2 * 128 + 2 * 128 + 2  # z, x, B, C, dt
    assert mixer.in_proj.weight.shape == (width, 64) and mixer.conv.weight.shape == (128 + 256, 4)
    assert isinstance(mixer.norm, GatedRMSNorm) and mixer.norm.group_size == 128


@pytest.mark.parametrize("options,argument", [
    ({"head_dim": 24}, "head_dim"),  # 24 does not divide d_inner = 32
    ({"d_state": 0}, "d_state"),
    ({"ngroups": 3}, "ngroups"),  # 4 heads
    ({"expand": 0}, "expand"),
    ({"conv_kernel": 0}, "conv_kernel"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"dt_range": (0.1, 0.01)}, "dt_range"),
    ({"A_init_range": (0, 16)}, "A_init_range"),
    ({"dt_init_floor": 0}, "dt_init_floor"),
    ({"bias": 1}, "bias"),
    ({"causal": False}, "causal"),
])
def test_bad_options_name_the_argument(options, argument):
    with pytest.raises(ValueError, match=argument):
        make(**options)


@pytest.mark.parametrize("length,ngroups,bias", [(64, 1, False), (100, 2, True)])
def test_flops_breakdown_matches_flop_counter(length, ngroups, bias):
    mixer = make(d_model=32, dtype=torch.float32, ngroups=ngroups, bias=bias)
    with use_backend("torch"), FlopCounterMode(display=False) as counter:
        mixer(torch.randn(1, length, 32))
    parts = mixer.flops_breakdown(length)
    assert set(parts) == {"matmul", "conv", "fft", "other"} and parts["fft"] == 0
    assert parts["conv"] == 2 * mixer.conv_channels * 4 * length
    assert parts["matmul"] + parts["conv"] == counter.get_total_flops()
    # the scan's state x inner x length products are in the matmul count
    projections = 2 * length * 32 * (mixer.in_proj.out_features + mixer.d_inner)
    assert parts["matmul"] - projections >= 4 * length * mixer.d_inner * mixer.d_state
    assert mixer.flops(length) == sum(parts.values())


def test_state_size_counts_the_state():
    mixer = make(ngroups=2)
    _, state = mixer.prefill(torch.randn(1, 17, 16, dtype=torch.float64))
    held = state["conv"].numel() + state["ssm"].numel()
    assert mixer.state_size(17) == mixer.state_size(5000) == held == (32 + 32) * 3 + 4 * 8 * 8


def test_trains_on_the_twin():
    mixer = make(dtype=torch.float32).train()
    x = torch.randn(2, 40, 16)
    mixer(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())
    assert mixer.A_log.grad.abs().sum() > 0 and mixer.dt_bias.grad.abs().sum() > 0


def test_registered_with_its_preset_and_the_budget_solver():
    assert seqarch.MIXERS["mamba2"] is Mamba2
    config = build_preset("mamba2", d_model=64, n_layers=2, vocab_size=50)
    assert config.mixer == "mamba2" and config.channel_mixer == "none"
    model = seqarch.LanguageModel(config)
    assert model(torch.randint(0, 50, (1, 9))).shape == (1, 9, 50)
    assert count_params(config) == model.num_params()
    # head_dim 64 divides d_inner = 2 d_model only at multiples of 32: the solver skips the others
    small = config.replace(mixer_options={"mamba2": {"d_state": 64, "expand": 2}})
    target = count_params(small.replace(d_model=96))
    match = match_budget(small.replace(d_model=32), params=target, width_multiple=8, max_width=512)
    assert match.config.d_model % 32 == 0 and abs(match.relative_error) < 0.05
    with pytest.raises(ValueError, match="head_dim"):
        match_budget(small.replace(d_model=32, mixer_options={"mamba2": {"head_dim": 64, "expand": 1}}),
                     params=target, width_multiple=8, max_width=56)
    wide_heads = small.replace(mixer_options={"mamba2": {"head_dim": 32, "d_state": 16, "expand": 4}})
    # no channel mixer to tune: the nearest width of the grid, within a looser tolerance
    assert match_budget(wide_heads.replace(d_model=32), params=target, max_width=512,
                        tolerance=0.1).config.d_model % 8 == 0


def test_gated_rmsnorm():
    norm = GatedRMSNorm(6, group_size=3, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x, z = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    gated = (x * F.silu(z)).view(4, 2, 3)
    expected = (gated / gated.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()).view(4, 6) * norm.weight
    assert relative_rms(norm(x, z), expected) < 1e-12
    with pytest.raises(ValueError, match="group_size"):
        GatedRMSNorm(6, group_size=4)


def test_step_decay_follows_parameter_updates_and_gradients():
    """The step derives A = -exp(A_log) once per parameter version: an in-place update is seen by the
    next step, and with autograd on the step's output reaches A_log."""
    mixer = make(ngroups=2)
    check_step_follows_parameter_updates(mixer, torch.randn(2, 5, 16, dtype=torch.float64),
                                         lambda: mixer.A_log.add_(0.5), [mixer.A_log], 1e-8)
