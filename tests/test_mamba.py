"""Mamba: step and prefill equal forward, exact causality, initialisation and hints, accounting,
the preset and the budget solver, bad options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import seqarch
from seqarch.budget import count_params, match_budget
from seqarch.kernels.backend import use_backend
from seqarch.mixers.mamba import Mamba
from seqarch.models.presets import build_preset

from helpers import check_step_follows_parameter_updates, mamba_ssm_module, relative_rms, run_steps


def make(d_model=8, dtype=torch.float64, seed=0, **options):
    torch.manual_seed(seed)
    options = {"d_state": 4, **options}
    return Mamba(d_model, dtype=dtype, **options)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_step_equals_forward(dtype, tolerance):
    mixer = make(dtype=dtype)
    x = torch.randn(2, 70, 8, dtype=dtype)  # past one twin chunk of 64 tokens
    with torch.no_grad():
        stepped, _ = run_steps(mixer, x, mixer.init_state(2))
        assert relative_rms(stepped, mixer(x)) < tolerance


def test_prefill_from_a_non_empty_state_then_steps_equal_forward():
    mixer = make()
    x = torch.randn(2, 50, 8, dtype=torch.float64)
    with torch.no_grad():
        y_prompt, state = mixer.prefill(x[:, :13])
        y_more, state = mixer.prefill(x[:, 13:14], state)  # one token: less than the convolution's window
        y_next, state = mixer.prefill(x[:, 14:40], state)
        y_rest, state = run_steps(mixer, x[:, 40:], state)
        assert relative_rms(torch.cat([y_prompt, y_more, y_next, y_rest], 1), mixer(x)) < 1e-10
        _, stepped = run_steps(mixer, x, mixer.init_state(2))
    for key in ("conv", "ssm"):
        assert torch.allclose(state[key], stepped[key], atol=1e-12), key


def test_exact_causality_output_and_gradient():
    mixer = make()
    x = torch.randn(1, 30, 8, dtype=torch.float64, requires_grad=True)
    y = mixer(x)
    (grad,) = torch.autograd.grad(y[0, 11].sum(), x)
    assert torch.all(grad[0, 12:] == 0) and grad[0, 11].abs().sum() > 0
    x2 = x.detach().clone()
    x2[:, 20:] += 1.0
    assert torch.equal(mixer(x2)[:, :20], y[:, :20].detach())


def test_triton_path_in_the_mixer_equals_the_twin():
    mixer = make(dtype=torch.float32, d_model=4)
    x = torch.randn(1, 9, 4)
    with use_backend("triton"):
        y_triton = mixer(x)
    assert relative_rms(y_triton, mixer(x)) < 1e-5


def test_initialisation_follows_the_paper():
    mixer = Mamba(40, d_state=16, dt_min=1e-3, dt_max=1e-1)
    assert mixer.d_inner == 80 and mixer.dt_rank == math.ceil(40 / 16) == 3
    assert torch.allclose(-torch.exp(mixer.A_log), -torch.arange(1, 17.0).repeat(80, 1))
    assert torch.equal(mixer.D, torch.ones(80))
    delta = F.softplus(mixer.dt_bias)
    assert delta.min() >= 1e-3 * (1 - 1e-5) and delta.max() <= 1e-1 * (1 + 1e-5)
    # log-uniform: about as many steps below the geometric mean as above
    assert 0.25 < (delta < 1e-2).float().mean() < 0.75
    assert mixer.conv.kernel_size == 4 and mixer.in_proj.out_features == 160


def test_parameter_hints_and_count():
    mixer = Mamba(32, d_state=16)
    hinted = {name for name, p in mixer.named_parameters() if hasattr(p, "_optim")}
    assert hinted == {"A_log", "D", "dt_bias"}
    assert mixer.A_log._optim == {"weight_decay": 0.0}
    d, di, s, r = 32, 64, 16, 2
    expected = d * 2 * di + di * 4 + di + di * (r + 2 * s) + r * di + di + di * s + di + di * d
    assert sum(p.numel() for p in mixer.parameters()) == expected


@pytest.mark.parametrize("length", [32, 100])
def test_flops_breakdown_matches_flop_counter(length):
    mixer = Mamba(32, d_state=8)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        mixer(torch.randn(1, length, 32))
    parts = mixer.flops_breakdown(length)
    assert set(parts) == {"matmul", "conv", "fft", "other"} and parts["fft"] == 0
    # the counter also sees the twin's readout C_t . h_t (2 per channel, state number and token), which
    # runs as a batched matrix-vector product; the breakdown keeps it in "other" with the rest of the scan
    assert parts["matmul"] + parts["conv"] + 2 * 64 * 8 * length == counter.get_total_flops()
    assert parts["conv"] == 2 * 64 * 4 * length
    # the scan's products: 7 per (channel, state number, token); A = -exp(A_log) once per call, shared
    scan = 7 * 64 * 8
    assert parts["other"] - mixer.flops_breakdown(1)["other"] == (length - 1) * parts["other"] // length
    assert parts["other"] > scan * length
    assert mixer.shared_flops_breakdown(length)["other"] == 2 * 64 * 8
    assert mixer.flops(length) == sum(parts.values())


def test_state_is_fixed_size():
    mixer = Mamba(16, d_state=8, d_conv=4)
    assert mixer.state_size(1) == mixer.state_size(10_000) == 32 * 3 + 32 * 8
    state = mixer.init_state(3)
    assert state["conv"].shape == (3, 3, 32) and state["ssm"].shape == (3, 32, 8)


def test_state_stays_float32_under_bfloat16():
    mixer = make(dtype=torch.bfloat16)
    _, state = mixer.prefill(torch.randn(2, 5, 8, dtype=torch.bfloat16))
    assert state["ssm"].dtype == torch.float32 and state["conv"].dtype == torch.bfloat16


def test_preset_has_no_channel_mixer_and_trains():
    config = build_preset("mamba", vocab_size=50, d_model=16, n_layers=2, mixer_options={"d_state": 4})
    assert config.mixer == "mamba" and config.channel_mixer == "none"
    model = seqarch.LanguageModel(config)
    assert all(block.channel is None for block in model.backbone.blocks)
    tokens = torch.randint(0, 50, (2, 12))
    logits = model(tokens)
    logits.float().logsumexp(-1).mean().backward()
    assert model.backbone.blocks[0].mixer.A_log.grad is not None


@pytest.mark.parametrize("options", [{"expand": 1, "d_state": 8}, {"expand": 3, "d_state": 32, "dt_rank": 4}])
def test_budget_solver_handles_the_options(options):
    reference = seqarch.ModelConfig(vocab_size=256, d_model=128, n_layers=2, mixer="attention")
    target = count_params(reference)
    start = seqarch.ModelConfig(vocab_size=256, d_model=64, n_layers=2, mixer="mamba", channel_mixer="none",
                                mixer_options=options)
    # no channel mixer: no hidden width to fine-tune, so widths go in steps of 2
    match = match_budget(start, params=target, by="width", width_multiple=2)
    assert abs(count_params(match.config) - target) <= 0.02 * target
    assert match.config.mixer_options == options
    deeper = match_budget(start, params=target, by="depth")
    assert deeper.config.n_layers > 2 and abs(deeper.relative_error) < 0.5


@pytest.mark.parametrize("options,argument", [
    ({"d_state": 0}, "d_state"), ({"expand": 0}, "expand"), ({"d_conv": 0}, "d_conv"), ({"dt_rank": 0}, "dt_rank"),
    ({"dt_min": 0.1, "dt_max": 0.01}, "dt_max"), ({"dt_min": 0.0}, "dt_min"),
    ({"dt_init_floor": -1.0}, "dt_init_floor"),
    ({"bias": 1}, "bias"), ({"conv_bias": "yes"}, "conv_bias"), ({"causal": False}, "causal"),
    ({"dtype": torch.int32}, "dtype"),
])
def test_bad_options_name_the_argument(options, argument):
    with pytest.raises(ValueError, match=argument):
        Mamba(8, **options)


def test_bad_state_names_the_argument():
    mixer = make()
    with pytest.raises(ValueError, match="state: expected the dict returned by Mamba.init_state"):
        mixer.step(torch.randn(2, 8, dtype=torch.float64), {"batch_size": 2})


def _reference_mamba():
    """The authors' block and ``selective_scan_ref`` (or a skip), the block's slow path pointed at the
    pure-PyTorch reference."""
    mamba_simple = mamba_ssm_module("modules.mamba_simple")
    selective_scan_ref = mamba_ssm_module("ops.selective_scan_interface").selective_scan_ref
    mamba_simple.selective_scan_fn = selective_scan_ref
    return mamba_simple.Mamba, selective_scan_ref


def test_scan_and_block_equal_the_authors_reference():
    reference_block, selective_scan_ref = _reference_mamba()
    from test_kernel_selective_scan import inputs

    from seqarch.kernels.selective_scan import selective_scan_reference

    args = inputs(2, 3, 45, 4, dtype=torch.float32)  # the reference computes in float32
    y_ref, last_ref = selective_scan_ref(*(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z")),
                                         return_last_state=True)
    y, last = selective_scan_reference(**{**args, "initial_state": None})
    assert relative_rms(y, y_ref) < 1e-5 and relative_rms(last, last_ref) < 1e-5

    torch.manual_seed(0)
    theirs = reference_block(24, d_state=8, use_fast_path=False)
    ours = Mamba(24, d_state=8)
    with torch.no_grad():
        for name in ("in_proj", "x_proj", "out_proj"):
            getattr(ours, name).weight.copy_(getattr(theirs, name).weight)
        ours.conv.weight.copy_(theirs.conv1d.weight[:, 0])
        ours.conv.bias.copy_(theirs.conv1d.bias)
        ours.dt_proj.weight.copy_(theirs.dt_proj.weight)
        ours.dt_bias.copy_(theirs.dt_proj.bias)
        ours.A_log.copy_(theirs.A_log)
        ours.D.copy_(theirs.D)
        x = torch.randn(2, 37, 24)
        assert relative_rms(ours(x), theirs(x)) < 1e-5


def test_step_constants_follow_parameter_updates_and_gradients():
    """The step derives A and D once per parameter version: an in-place update (an optimizer step) is
    seen by the next step, and with autograd on the step's output reaches A_log and D."""
    mixer = make()

    def update():
        mixer.A_log.add_(0.5)
        mixer.D.mul_(-2.0)

    check_step_follows_parameter_updates(mixer, torch.randn(2, 5, 8, dtype=torch.float64), update,
                                         [mixer.A_log, mixer.D], 1e-10)
