"""Tests for the Monarch Mixer sequence mixer (seqarch.mixers.m2) and its implicit filter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from seqarch.mixers.hyena import Hyena
from seqarch.mixers.long_conv import LongConv
from seqarch.mixers.m2 import M2
from seqarch.modules.fft_conv import fft_conv_flops, filter_fft_flops
from seqarch.modules.implicit_filter import ImplicitFilter, ImplicitKernel

from helpers import relative_rms, run_steps


def make(d_model=8, dtype=torch.float64, seed=0, **options):
    torch.manual_seed(seed)
    options.setdefault("max_length", 64)
    return M2(d_model, dtype=dtype, **options).eval()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
@pytest.mark.parametrize("length", [1, 37, 256])
def test_step_equals_forward(dtype, tolerance, length):
    mixer = make(dtype=dtype, max_length=256)
    x = torch.randn(2, length, 8, dtype=dtype)
    with torch.no_grad():
        expected = mixer(x)
        stepped, state = run_steps(mixer, x, mixer.init_state(2))
    assert stepped.dtype == dtype
    assert relative_rms(stepped, expected) < tolerance
    assert state["position"] == length


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_prefill_then_step_equals_forward(dtype, tolerance):
    mixer = make(dtype=dtype, max_length=128, short_kernel=4)
    x = torch.randn(3, 100, 8, dtype=dtype)
    with torch.no_grad():
        expected = mixer(x)
        prompt, state = mixer.prefill(x[:, :60])
        rest, state = run_steps(mixer, x[:, 60:], state)
        # A second prefill from a non-empty state loops step.
        _, chunked = mixer.prefill(x[:, :30])
        chunk, chunked = mixer.prefill(x[:, 30:60], chunked)
    assert relative_rms(prompt, expected[:, :60]) < tolerance
    assert relative_rms(rest, expected[:, 60:]) < tolerance
    assert relative_rms(chunk, expected[:, 30:60]) < tolerance
    assert state["position"] == 100 and chunked["position"] == 60


def test_prefill_into_a_given_empty_state():
    mixer = make(max_length=64)
    x = torch.randn(2, 20, 8, dtype=torch.float64)
    with torch.no_grad():
        y, state = mixer.prefill(x[:, :10], mixer.init_state(2, max_length=20))
        rest, state = run_steps(mixer, x[:, 10:], state)
        expected = mixer(x)
    assert relative_rms(torch.cat([y, rest], 1), expected) < 1e-8
    with pytest.raises(ValueError, match="max_length"):
        mixer.step(x[:, 0], state)  # the 21st token of a state made for 20


def test_state_size_counts_the_state():
    mixer = make(d_model=8, short_kernel=3)
    _, state = mixer.prefill(torch.randn(1, 17, 8, dtype=torch.float64))
    held = state["short_conv"].numel() + state["v"].numel()
    assert mixer.state_size(17) == held == 3 * 8 * 2 + 17 * 8
    assert state["taps"].shape == (8, 64)  # cached parameters, not counted


def test_causal():
    mixer = make()
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    t = 23
    bumped = x.clone()
    bumped[:, t] += 1.0
    y, y_bumped = mixer(x), mixer(bumped)
    torch.testing.assert_close(y_bumped[:, :t], y[:, :t], rtol=0, atol=1e-12)
    assert (y_bumped[:, t] - y[:, t]).abs().max() > 1e-6


def test_bidirectional_sees_the_future_and_has_no_step():
    mixer = make(causal=False)
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    bumped = x.clone()
    bumped[:, 30] += 1.0
    y, y_bumped = mixer(x), mixer(bumped)
    assert (y_bumped[:, 10] - y[:, 10]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="causal"):
        mixer.step(x[:, 0], {"batch_size": 2})
    with pytest.raises(ValueError):
        mixer.init_state(2)
    with pytest.raises(ValueError, match="causal"):
        mixer.prefill(x)


def test_filter_of_length_is_prefix_of_max_length():
    torch.manual_seed(0)
    filt = ImplicitFilter(6, 100, order=16, dtype=torch.float64)
    full = filt(100)
    for length in (1, 7, 64, 100):
        torch.testing.assert_close(filt(length), full[:, :length], rtol=1e-12, atol=1e-14)
    assert full.shape == (6, 100)
    with pytest.raises(ValueError, match="length"):
        filt(101)
    mixer = make(max_length=64)
    torch.testing.assert_close(mixer.kernel(10), mixer.kernel(64)[..., :10], rtol=1e-12, atol=1e-14)
    assert mixer.kernel(10).shape == (1, 8, 10)


def test_filter_decays():
    filt = ImplicitFilter(4, 256, dtype=torch.float64)
    window = torch.exp(-filt.decay_rates("cpu", torch.float64) * 0.3)
    assert window[-1].item() == pytest.approx(1e-2)  # fastest channel: 1e-2 at 0.3 max_length


def test_length_past_max_length_raises():
    mixer = make(max_length=16)
    with pytest.raises(ValueError, match="x: .*max_length=16"):
        mixer(torch.randn(1, 17, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_length"):
        mixer.init_state(1, max_length=17)
    state = mixer.init_state(1)
    _, state = run_steps(mixer, torch.randn(1, 16, 8, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="max_length=16"):
        mixer.step(torch.randn(1, 8, dtype=torch.float64), state)


@pytest.mark.parametrize("causal", [True, False])
def test_every_parameter_gets_a_gradient(causal):
    mixer = make(causal=causal, dtype=torch.float32)
    mixer(torch.randn(2, 24, 8)).square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_optimizer_hints_on_filter_parameters():
    mixer = make(causal=False, lr_scale=0.3)
    assert len(mixer.kernel.filters) == 2  # M2-BERT: separate forward and backward filters
    filter_params = {id(p) for p in mixer.kernel.parameters()}
    assert filter_params
    for p in mixer.parameters():
        if id(p) in filter_params:
            assert p._optim == {"lr_scale": 0.3, "weight_decay": 0.0}
        else:
            assert not hasattr(p, "_optim")


@pytest.mark.parametrize("causal", [True, False])
def test_bfloat16_forward(causal):
    mixer = make(causal=causal, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in mixer.parameters())
    y = mixer(torch.randn(2, 32, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (2, 32, 8) and torch.isfinite(y).all()


BAD_OPTIONS = [
    ("max_length", 0), ("short_kernel", 0), ("short_kernel", 2.5), ("filter_order", -1),
    ("filter_emb_dim", 4), ("filter_emb_dim", 1), ("filter_decay", (1.5, 0.3)),
    ("filter_decay", 0.3), ("dropout", 1.0), ("dropout", -0.1), ("lr_scale", 0.0), ("lr_scale", "1e-3"),
    ("causal", "yes"), ("dtype", torch.int64),
]


@pytest.mark.parametrize("argument,value", BAD_OPTIONS)
def test_bad_options_raise(argument, value):
    with pytest.raises(ValueError, match=f"^{argument}: expected"):
        M2(8, **{argument: value})


def test_bad_inputs_raise():
    mixer = make()
    with pytest.raises(ValueError, match="d_model"):
        mixer(torch.randn(2, 5, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="state"):
        mixer.step(torch.randn(3, 8, dtype=torch.float64), mixer.init_state(2))
    with pytest.raises(ValueError, match="d_model"):
        M2(0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [64, 200])
def test_flops_breakdown_matches_flop_counter(causal, length):
    mixer = make(d_model=32, causal=causal, max_length=256, dtype=torch.float32)
    with FlopCounterMode(display=False) as counter:
        mixer(torch.randn(1, length, 32))
    parts = mixer.forward_flops_breakdown(length)  # batch 1: per sequence plus the shared filters
    assert set(parts) == {"matmul", "conv", "fft", "other"}
    counted = counter.get_total_flops()
    assert abs(parts["matmul"] + parts["conv"] - counted) <= 0.05 * counted
    assert parts["conv"] == 2 * 3 * 32 * 3 * length
    n = length if causal else 2 * length
    # per sequence the input's FFT and the inverse; once per call the filter's FFT
    assert mixer.flops_breakdown(length)["fft"] == fft_conv_flops(n, 32, causal=causal)["fft"]
    assert parts["fft"] == fft_conv_flops(n, 32, causal=causal)["fft"] + filter_fft_flops(n, 32, causal=causal)
    assert mixer.flops(length) == sum(mixer.flops_breakdown(length).values())


def test_registered():
    import seqarch

    assert seqarch.MIXERS["m2"] is M2
    mixer = seqarch.build_mixer("m2", 16, max_length=32)
    assert mixer(torch.randn(1, 8, 16)).shape == (1, 8, 16)


def test_m2_is_the_order_2_hyena_with_m2_settings():
    """One piece of code: M2 is Hyena's order-2 case, its filters with 5 positional features."""
    assert issubclass(M2, Hyena) and set(M2.presets) == {"m2"} and set(Hyena.presets) == {"hyena"}
    m2 = make(d_model=8)
    torch.manual_seed(0)
    hyena = Hyena(8, order=2, max_length=64, filter_emb_dim=5, dtype=torch.float64).eval()
    assert m2.order == 2 and m2.kernel.filters[0].emb_dim == 5 and Hyena(8).kernel.filters[0].emb_dim == 3
    x = torch.randn(1, 20, 8, dtype=torch.float64)
    torch.testing.assert_close(m2(x), hyena(x), rtol=0, atol=0)  # same seed, same parameters, same output


class HyenaOrder3(LongConv):
    """Hyena of order 3 as a configuration of the shell: two gated long convolutions."""

    kernel_class = ImplicitKernel

    def __init__(self, d_model, *, causal=True, max_length=64, dtype=None, device=None, layer_idx=None):
        super().__init__(d_model, {"max_length": max_length, "order": 16}, causal=causal, order=3,
                         dtype=dtype, device=device, layer_idx=layer_idx)


def test_hyena_order_3_from_the_shell_steps_like_forward():
    torch.manual_seed(0)
    mixer = HyenaOrder3(8, dtype=torch.float64).eval()
    assert mixer.kernel(10).shape == (1, 16, 10) and mixer.skip.shape == (16,)
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = mixer(x)
        stepped, state = run_steps(mixer, x, mixer.init_state(2))
        prompt, prefilled = mixer.prefill(x[:, :25])
        rest, _ = run_steps(mixer, x[:, 25:], prefilled)
    assert relative_rms(stepped, expected) < 1e-8
    assert relative_rms(torch.cat([prompt, rest], 1), expected) < 1e-8
    held_per_sequence = (state["short_conv"].numel() + state["v"].numel()) // 2
    assert mixer.state_size(40) == held_per_sequence == 4 * 8 * 2 + 2 * 8 * 40
    bidirectional = HyenaOrder3(8, causal=False, dtype=torch.float64)
    bumped = x.clone()
    bumped[:, 30] += 1.0
    assert (bidirectional(bumped)[:, 10] - bidirectional(x)[:, 10]).abs().max() > 1e-6


def test_gates_around_a_recurrent_kernel():
    from seqarch.modules.diagonal_ssm import DiagonalSSMKernel

    class GatedDiagonal(LongConv):
        kernel_class = DiagonalSSMKernel

    assert GatedDiagonal.has_fixed_size_state and not M2.has_fixed_size_state
    # Gates around a recurrent kernel (H3's shape): a fixed-size state that steps like forward.
    torch.manual_seed(0)
    mixer = GatedDiagonal(8, {"d_state": 4}, order=2, dtype=torch.float64)
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = mixer(x)
        stepped, _ = run_steps(mixer, x, mixer.init_state(2))
        prompt, state = mixer.prefill(x[:, :10])
        more, state = mixer.prefill(x[:, 10:20], state)  # a non-empty state: the step loop
        rest, _ = run_steps(mixer, x[:, 20:], state)
    assert relative_rms(stepped, expected) < 1e-8
    assert relative_rms(torch.cat([prompt, more, rest], 1), expected) < 1e-8
    assert mixer.state_size(1) == mixer.state_size(1000) == 3 * 8 * 2 + 8 * 4
