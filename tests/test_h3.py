"""Tests for H3 (seqarch.mixers.h3): shift SSM on K, diagonal SSM on K*V, the Q gate, multi-head."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import seqarch
from seqarch.mixers.h3 import H3

from helpers import relative_rms, run_steps


def make(d_model=8, dtype=torch.float64, seed=0, **options):
    torch.manual_seed(seed)
    options.setdefault("d_state", 8)
    options.setdefault("shift_state", 4)
    return H3(d_model, dtype=dtype, **options).eval()


def h3_by_hand(mixer, x):
    """H3 written out (the paper's equations), heads by einsum, convolutions as sums over the past."""
    batch, length, d = x.shape
    p, heads = mixer.head_dim, d // mixer.head_dim
    q, k, v = mixer.in_proj(x).split(d, dim=-1)  # (batch, length, d)
    taps = mixer.short_conv.weight  # (d, N): taps[:, -1] weighs the present token
    n = taps.shape[1]
    padded = torch.nn.functional.pad(k, (0, 0, n - 1, 0))
    k = torch.stack([(padded[:, t:t + n] * taps.t()).sum(1) for t in range(length)], 1) + mixer.short_conv.bias
    q, k, v = (z.reshape(batch, length, heads, p) for z in (q, k, v))
    kv = torch.einsum("blhi,blhj->blhij", k, v)
    kernel = mixer.kernel(length)[0]  # (heads, length): one diagonal SSM per head
    conv = torch.stack([torch.einsum("bshij,hs->bhij", kv[:, :t + 1].flip(1), kernel[:, :t + 1])
                        for t in range(length)], 1)
    conv = conv + mixer.skip[:, None, None] * kv
    y = torch.einsum("blhi,blhij->blhj", q, conv).reshape(batch, length, d)
    return mixer.out_proj(y)


@pytest.mark.parametrize("head_dim", [1, 2, 4])
def test_forward_is_h3(head_dim):
    mixer = make(head_dim=head_dim)
    assert mixer.kernel.channels == mixer.skip.numel() == 8 // head_dim
    assert mixer.short_conv.channels == 8  # the shift SSM runs on K alone
    x = torch.randn(2, 24, 8, dtype=torch.float64)
    assert relative_rms(mixer(x), h3_by_hand(mixer, x)) < 1e-10


@pytest.mark.parametrize("head_dim", [1, 4])
def test_step_and_prefill_equal_forward(head_dim):
    mixer = make(head_dim=head_dim)
    x = torch.randn(3, 50, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = mixer(x)
        stepped, state = run_steps(mixer, x, mixer.init_state(3))
        prompt, prefilled = mixer.prefill(x[:, :20])
        more, prefilled = mixer.prefill(x[:, 20:35], prefilled)  # from a non-empty state
        rest, prefilled = run_steps(mixer, x[:, 35:], prefilled)
    assert relative_rms(stepped, expected) < 1e-10
    assert relative_rms(torch.cat([prompt, more, rest], 1), expected) < 1e-10
    assert prefilled["position"] == 50
    # Fixed size: the shift's N - 1 past values of K and the SSM's d_state per (head, i, j).
    held = (state["short_conv"].numel() + state["h"].numel()) // 3  # h: a complex state's two parts
    assert mixer.state_size(1) == mixer.state_size(50) == held == 8 * 3 + 8 * head_dim * 8


def test_bidirectional_reads_the_ssm_both_ways():
    mixer = make(head_dim=2, causal=False)
    assert mixer.kernel.C.shape[0] == 2
    x = torch.randn(1, 30, 8, dtype=torch.float64)
    bumped = x.clone()
    bumped[:, 25] += 1.0
    assert (mixer(bumped)[:, 5] - mixer(x)[:, 5]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="causal"):
        mixer.prefill(x)


@pytest.mark.parametrize("head_dim", [1, 2])
def test_flops_breakdown_matches_flop_counter(head_dim):
    mixer = make(d_model=16, head_dim=head_dim, dtype=torch.float32)
    with FlopCounterMode(display=False) as counter:
        mixer(torch.randn(1, 128, 16))
    parts = mixer.forward_flops_breakdown(128)  # batch 1: per sequence plus the kernels, made once per call
    assert set(parts) == {"matmul", "conv", "fft", "other"}
    assert abs(parts["matmul"] + parts["conv"] - counter.get_total_flops()) <= 0.05 * counter.get_total_flops()
    assert parts["conv"] == 2 * 16 * 4 * 128  # the shift SSM: one N-tap conv on K


def test_registered_with_its_preset():
    from seqarch.models.presets import all_presets

    assert seqarch.MIXERS["h3"] is H3 and H3.has_fixed_size_state and H3.has_bidirectional_form
    assert all_presets()["h3"].fields == {"mixer": "h3", "channel_mixer": "mlp"}
    assert seqarch.build_mixer("h3", 16, d_state=4, head_dim=4)(torch.randn(1, 8, 16)).shape == (1, 8, 16)


BAD_OPTIONS = [
    ("d_state", 7), ("d_state", 0), ("shift_state", 0), ("shift_state", 1.5), ("head_dim", 3), ("head_dim", 0),
    ("init", "legs"), ("dt_min", -1.0), ("dt_max", 1e-4), ("lr_scale", 0.0), ("dropout", 2.0), ("causal", None),
    ("dtype", torch.int8),
]


@pytest.mark.parametrize("argument,value", BAD_OPTIONS)
def test_bad_options_raise(argument, value):
    with pytest.raises(ValueError, match=f"^{argument}: expected"):
        H3(8, **{argument: value})


def test_bad_state_raises():
    mixer = make(head_dim=2)
    with pytest.raises(ValueError, match="state"):
        mixer.step(torch.randn(2, 8, dtype=torch.float64), mixer.init_state(3))
