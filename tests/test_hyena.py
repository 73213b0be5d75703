"""Tests for the Hyena operator of order N (seqarch.mixers.hyena) and its distillation to a modal SSM."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import seqarch
from seqarch.mixers.hyena import DistillationReport, Hyena, ModalHyena, distill_hyena
from seqarch.modules.modal_filter import fit_modal, initial_modes, modal_filter

from helpers import relative_rms, run_steps


def make(d_model=8, order=2, dtype=torch.float64, seed=0, **options):
    torch.manual_seed(seed)
    options.setdefault("max_length", 64)
    options.setdefault("filter_order", 16)
    return Hyena(d_model, order=order, dtype=dtype, **options).eval()


@pytest.mark.parametrize("order", [2, 3, 4])
def test_order_n_step_and_prefill_equal_forward(order):
    mixer = make(order=order)
    assert mixer.kernel.channels == (order - 1) * 8 and mixer.in_proj.out_features == (order + 1) * 8
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = mixer(x)
        stepped, state = run_steps(mixer, x, mixer.init_state(2))
        prompt, prefilled = mixer.prefill(x[:, :15])
        more, prefilled = mixer.prefill(x[:, 15:25], prefilled)  # from a non-empty state
        rest, _ = run_steps(mixer, x[:, 25:], prefilled)
    assert relative_rms(stepped, expected) < 1e-10
    assert relative_rms(torch.cat([prompt, more, rest], 1), expected) < 1e-10
    assert mixer.state_size(40) == (order + 1) * 8 * 2 + (order - 1) * 8 * 40 == (
        state["short_conv"][0].numel() + state["v"][0].numel())


def test_order_3_is_the_recurrence_written_out():
    """Order 3 by hand: v <- k_1 * (x_2 v) + D_1 x_2 v; v <- k_2 * (x_1 v) + D_2 x_1 v; y = out(x_0 v)."""
    mixer = make(order=3)
    x = torch.randn(1, 20, 8, dtype=torch.float64)
    u = mixer.short_conv(mixer.in_proj(x).transpose(1, 2))
    x0, x1, x2, v = u.split(8, dim=1)
    k = mixer.kernel(20)[0]
    for gate, k_i, d_i in ((x2, k[:8], mixer.skip[:8]), (x1, k[8:], mixer.skip[8:])):
        w = gate * v
        v = torch.stack([(w[..., :t + 1].flip(-1) * k_i[:, :t + 1]).sum(-1) for t in range(20)], -1) + d_i[:, None] * w
    expected = mixer.out_proj((x0 * v).transpose(1, 2))
    assert relative_rms(mixer(x), expected) < 1e-10


def test_bidirectional_sees_the_future_and_trains_two_filters():
    mixer = make(order=3, causal=False)
    assert len(mixer.kernel.filters) == 2
    x = torch.randn(1, 30, 8, dtype=torch.float64)
    bumped = x.clone()
    bumped[:, 25] += 1.0
    assert (mixer(bumped)[:, 5] - mixer(x)[:, 5]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="causal"):
        mixer.init_state(1)


@pytest.mark.parametrize("order", [2, 3])
def test_flops_breakdown_matches_flop_counter(order):
    mixer = make(d_model=16, order=order, dtype=torch.float32)
    with FlopCounterMode(display=False) as counter:
        mixer(torch.randn(1, 64, 16))
    parts = mixer.forward_flops_breakdown(64)  # batch 1: per sequence plus the filters, made once per call
    assert set(parts) == {"matmul", "conv", "fft", "other"}
    assert abs(parts["matmul"] + parts["conv"] - counter.get_total_flops()) <= 0.05 * counter.get_total_flops()
    assert parts["conv"] == 2 * (order + 1) * 16 * 3 * 64


def test_registered_with_its_preset():
    from seqarch.models.presets import all_presets

    assert seqarch.MIXERS["hyena"] is Hyena and seqarch.MIXERS["hyena_modal"] is ModalHyena
    preset = all_presets()["hyena"]
    assert preset.fields == {"mixer": "hyena", "channel_mixer": "glu"}
    assert seqarch.build_mixer("hyena", 16, order=3, max_length=32)(torch.randn(1, 8, 16)).shape == (1, 8, 16)


BAD_OPTIONS = [
    ("order", 1), ("order", 2.0), ("max_length", 0), ("short_kernel", 0), ("filter_order", 0),
    ("filter_emb_dim", 2), ("filter_inner", -1), ("filter_decay", (2.0, 1.0)), ("dropout", 1.5),
    ("lr_scale", -1.0), ("causal", 1), ("dtype", torch.int32),
]


@pytest.mark.parametrize("argument,value", BAD_OPTIONS)
def test_bad_options_raise(argument, value):
    with pytest.raises(ValueError, match=f"^{argument}: expected"):
        Hyena(8, **{argument: value})


@pytest.mark.parametrize("argument,value", [("order", 1), ("d_state", 3), ("init", "exp"), ("dt_min", 0.0),
                                            ("max_length", 0), ("short_kernel", -2)])
def test_modal_hyena_bad_options_raise(argument, value):
    with pytest.raises(ValueError, match=f"^{argument}: expected"):
        ModalHyena(8, **{argument: value})


# -- distillation ------------------------------------------------------------------------
@pytest.mark.parametrize("modes", [3, 4])
def test_modal_fit_recovers_a_modal_filter(modes):
    """A filter that is exactly 3 modes (two oscillating, one real) is fitted to rounding error."""
    log_z = torch.tensor([[-0.05 + 0.3j, -0.2 + 1.0j, -0.01 + 0.0j]], dtype=torch.complex128).expand(2, 3)
    residues = torch.tensor([[1.0 + 0.5j, -0.3j, 0.2], [0.1, 1.0, -1.0 + 1j]], dtype=torch.complex128)
    h = modal_filter(log_z, residues, 100)
    fit = fit_modal(h, modes, steps=5)
    assert fit.error < 1e-6 and fit.log_z.shape == fit.residues.shape == (2, modes)
    assert (fit.log_z.real < 0).all()
    assert relative_rms(modal_filter(fit.log_z, fit.residues, 100), h) < 1e-6
    assert initial_modes(3, 5, 64).shape == (3, 5)


def test_more_modes_fit_better_and_refinement_never_hurts():
    h = make(d_model=8).kernel(64)[0].detach()
    errors = [fit_modal(h, modes, steps=0).error for modes in (1, 2, 4)]
    assert errors[2] < errors[1] < errors[0] < 1
    torch.manual_seed(0)
    noise = torch.randn(4, 48, dtype=torch.float64)  # far from low rank: the refinement has work to do
    unrefined, refined = fit_modal(noise, 4, steps=0), fit_modal(noise, 4, steps=30, lr=1e-2)
    assert refined.error <= unrefined.error


@pytest.mark.parametrize("order", [2, 3])
def test_distilled_step_matches_the_exact_step_within_the_reported_error(order):
    mixer = make(d_model=8, order=order, max_length=96)
    x = torch.randn(2, 96, 8, dtype=torch.float64)
    # Few modes, so the error is well above rounding and the bound below has teeth.
    distilled, report = distill_hyena(mixer, d_state=4, steps=5, x=x)
    assert isinstance(report, DistillationReport) and (report.d_state, report.length) == (4, 96)
    assert 1e-7 < report.filter_error < 0.02 and 1e-8 < report.output_error < 0.02
    assert type(distilled).has_fixed_size_state and distilled.max_length == 96
    with torch.no_grad():
        exact, _ = run_steps(mixer, x, mixer.init_state(2))
        fast, state = run_steps(distilled, x, distilled.init_state(2))
        fresh = torch.randn(2, 96, 8, dtype=torch.float64)
        exact_fresh, fast_fresh = mixer(fresh), distilled(fresh)
    error = float((fast - exact).norm() / exact.norm())
    assert error <= report.output_error * (1 + 1e-6) + 1e-12  # the step reproduces the reported error
    assert error >= 0.5 * report.output_error  # ... and it is the distilled layer that is stepping
    assert float((fast_fresh - exact_fresh).norm() / exact_fresh.norm()) <= 3 * report.output_error
    # O(1): the state is the short conv's history and d_state numbers per channel, at any position.
    assert distilled.state_size(1) == distilled.state_size(96) == (order + 1) * 8 * 2 + (order - 1) * 8 * 4
    assert state["h"].shape == (2, (order - 1) * 8, 2, 2)  # 2 complex modes a channel, as real and imaginary parts


def test_distillation_keeps_the_rest_of_the_layer():
    mixer = make(d_model=8)
    distilled, _ = distill_hyena(mixer, d_state=8, steps=0)
    for part in ("in_proj", "short_conv", "out_proj"):
        for (name, a), b in zip(getattr(mixer, part).named_parameters(), getattr(distilled, part).parameters()):
            assert torch.equal(a, b), f"{part}.{name}"
    assert torch.equal(mixer.skip, distilled.skip)
    torch.testing.assert_close(distilled.kernel(64, torch.float64)[0], mixer.kernel(64)[0], rtol=0, atol=1e-3)


def test_distill_rejects_bad_arguments():
    with pytest.raises(ValueError, match="^mixer: expected a causal Hyena"):
        distill_hyena(make(causal=False))
    with pytest.raises(ValueError, match="^mixer: expected a Hyena"):
        distill_hyena(seqarch.build_mixer("s4d", 8))
    with pytest.raises(ValueError, match="^d_state: expected an even"):
        distill_hyena(make(), d_state=5)
    with pytest.raises(ValueError, match="^x: expected last dimension"):
        distill_hyena(make(), x=torch.randn(1, 10, 3, dtype=torch.float64), steps=0)
    with pytest.raises(ValueError, match="^steps: expected"):
        fit_modal(torch.randn(2, 10), 2, steps=-1)
    with pytest.raises(ValueError, match="^h: expected"):
        fit_modal(torch.randn(10), 2)
    with pytest.raises(ValueError, match="^log_z: expected negative real parts"):
        ModalHyena(8, d_state=2).set_modes(torch.full((8, 1), 0.1 + 0j), torch.ones(8, 1, dtype=torch.complex64))


def test_modal_hyena_of_order_3_steps_and_prefills_like_forward():
    """Two modal convolutions in a row: the step goes by linearity, a prefill from a non-empty
    state adds the state's readout to each convolution before the next gate."""
    torch.manual_seed(0)
    mixer = ModalHyena(8, order=3, d_state=4, short_kernel=4, dtype=torch.float64).eval()
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = mixer(x)
        stepped, _ = run_steps(mixer, x, mixer.init_state(2))
        prompt, state = mixer.prefill(x[:, :2])  # shorter than the short conv's history
        more, state = mixer.prefill(x[:, 2:30], state)
        rest, state = run_steps(mixer, x[:, 30:], state)
    assert relative_rms(stepped, expected) < 1e-10
    assert relative_rms(torch.cat([prompt, more, rest], 1), expected) < 1e-10
    assert mixer.state_size(1) == mixer.state_size(40) == 4 * 8 * 3 + 2 * 8 * 4
