"""Building blocks: short convolution, Vandermonde products, rotary embedding, norms, MLPs."""

from __future__ import annotations

import math

import pytest
import torch

from seqarch.modules.mlp import MLP, build_channel_mixer
from seqarch.modules.norm import RMSNorm, build_norm
from seqarch.modules.rotary import RotaryEmbedding
from seqarch.modules.short_conv import ShortConv
from seqarch.modules.vandermonde import decayed_sum, vandermonde_real


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 8])
def test_short_conv_step_equals_forward_and_direct(kernel_size):
    torch.manual_seed(0)
    conv = ShortConv(4, kernel_size, dtype=torch.float64)
    x = torch.randn(2, 4, 11, dtype=torch.float64)
    y = conv(x)
    direct = torch.zeros_like(x) + conv.bias[:, None]
    for t in range(11):
        for j in range(kernel_size):
            src = t - (kernel_size - 1) + j
            if src >= 0:
                direct[..., t] += conv.weight[:, j] * x[..., src]
    assert torch.allclose(y, direct, atol=1e-12)
    history = conv.init_state(2)
    for t in range(11):
        y_t, history = conv.step(x[..., t], history)
        assert torch.allclose(y_t, y[..., t], atol=1e-12)
    assert torch.equal(history, conv.prefill_state(x))


@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 100])
def test_vandermonde_real_equals_direct_powers(length):
    log_z = torch.complex(-torch.rand(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    coef = torch.randn(2, 3, 4, dtype=torch.complex128)
    z = torch.exp(log_z)
    direct = torch.stack([2 * (coef * z**l).sum(-1).real for l in range(length)], -1)
    assert torch.allclose(vandermonde_real(coef, log_z, length), direct, atol=1e-12)


def test_decayed_sum_equals_recurrence():
    log_z = torch.complex(-torch.rand(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    weight = torch.randn(3, 4, dtype=torch.complex128)
    x = torch.randn(2, 3, 23, dtype=torch.float64)
    h = torch.zeros(2, 3, 4, dtype=torch.complex128)
    for t in range(23):
        h = torch.exp(log_z) * h + weight * x[..., t, None]
    assert torch.allclose(decayed_sum(x, log_z, weight), h, atol=1e-12)


def test_rotary_scores_depend_on_relative_position_only():
    rotary = RotaryEmbedding(8)
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(i, j):
        return float((rotary(q, torch.tensor([i])) * rotary(k, torch.tensor([j]))).sum())

    assert math.isclose(score(5, 2), score(13, 10), rel_tol=1e-12)
    assert not math.isclose(score(5, 2), score(5, 3), rel_tol=1e-6)
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(7)


def test_rotary_at_a_device_position_equals_the_table_rotation_and_takes_one_token_only():
    rotary = RotaryEmbedding(8)
    x = torch.randn(2, 1, 3, 8, dtype=torch.float64)  # (batch, one token, heads, head_dim)
    for position in (0, 7, 3000):  # past the first table's 2048 rows too
        expected = rotary.rotate(x, position, dim=-3)
        torch.testing.assert_close(rotary.rotate(x, torch.tensor([position]), dim=-3), expected, rtol=1e-13, atol=0)
        torch.testing.assert_close(rotary.rotate(x[:, 0], torch.tensor([position]), dim=None), expected[:, 0],
                                   rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="start: a device position rotates one token"):
        rotary.rotate(torch.randn(2, 4, 3, 8), torch.tensor([1]), dim=-3)


def test_norms():
    x = torch.randn(3, 5, 16) * 10
    y = RMSNorm(16)(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)
    assert isinstance(build_norm("layernorm", 16), torch.nn.LayerNorm)
    with pytest.raises(ValueError, match="norm: expected one of"):
        build_norm("batchnorm", 16)


def test_mlp_flops_match_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    for kind in ("glu", "mlp", "monarch"):
        mlp = build_channel_mixer(kind, 64)
        counter = FlopCounterMode(display=False)
        with counter:
            mlp(torch.randn(1, 32, 64))
        assert abs(mlp.flops(32) - counter.get_total_flops()) <= 0.05 * counter.get_total_flops()
    assert build_channel_mixer("none", 64) is None
    with pytest.raises(ValueError, match="channel_mixer"):
        build_channel_mixer("moe", 64)
    with pytest.raises(ValueError, match="hidden"):
        MLP(8, 0)


@pytest.mark.parametrize("generator", ["diagonal", "dplr"])
def test_ssm_generators_recurrence_equals_their_kernel(generator):
    """Every generator with a recurrence: step and prefill (fresh or from a state) give the
    causal convolution by ``forward(length)[0]``, without the layer around them."""
    from seqarch.modules import DiagonalSSMKernel, DPLRSSMKernel

    torch.manual_seed(0)
    f64 = torch.float64
    if generator == "diagonal":
        kernel = DiagonalSSMKernel(3, d_state=8, dtype=f64)
    else:
        kernel = DPLRSSMKernel(3, d_state=8, max_length=30, dtype=f64)
    assert kernel.recurrent and kernel(30).shape == (1, 3, 30)
    u = torch.randn(2, 3, 30, dtype=f64)
    k = kernel(30)[0]
    direct = torch.stack([(k[:, :t + 1].flip(-1) * u[..., :t + 1]).sum(-1) for t in range(30)], -1)
    state = kernel.init_state(2, device="cpu", dtype=f64)
    outputs = []
    for t in range(30):
        y_t, state = kernel.step(u[..., t], state)
        outputs.append(y_t)
    assert torch.allclose(torch.stack(outputs, -1), direct, atol=1e-10)
    _, first = kernel.prefill(u[..., :12], kernel.init_state(2, device="cpu", dtype=f64), fresh=True)
    readout, last = kernel.prefill(u[..., 12:], first, fresh=False)
    rest = torch.stack([(k[:, :t + 1].flip(-1) * u[..., 12:12 + t + 1]).sum(-1) for t in range(18)], -1)
    assert torch.allclose(readout + rest, direct[..., 12:], atol=1e-10)
    assert torch.allclose(last["h"], state["h"], atol=1e-10)
    assert kernel.state_size() == 3 * 8


def test_generator_options_are_checked():
    from seqarch.modules import DiagonalSSMKernel, ImplicitKernel

    with pytest.raises(ValueError, match="directions: expected one of"):
        DiagonalSSMKernel(3, d_state=8, directions=3)
    with pytest.raises(ValueError, match="lr_scale: expected None or a positive multiple of train.lr"):
        DiagonalSSMKernel(3, d_state=8, lr_scale=-1.0)
    with pytest.raises(ValueError, match="length: expected a length of at most max_length=16"):
        ImplicitKernel(4, max_length=16)(17)
    with pytest.raises(ValueError, match="init_state: ImplicitKernel has no finite-state recurrence"):
        ImplicitKernel(4, max_length=16).init_state(1, device="cpu", dtype=torch.float32)


def test_a_kernel_generator_without_forward_and_flops_cannot_be_built():
    import pytest

    from seqarch.modules.kernel_generator import KernelGenerator

    class Incomplete(KernelGenerator):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(4)
