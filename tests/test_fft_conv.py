"""FFT convolutions equal direct convolutions."""

from __future__ import annotations

import pytest
import torch

from seqarch.modules.fft_conv import bidirectional_fft_conv, fft_conv, two_sided_filter


def direct_causal(u, k):
    length = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(length):
        for s in range(min(t + 1, k.shape[-1])):
            y[..., t] += k[:, s] * u[..., t - s]
    return y


@pytest.mark.parametrize("length,filter_length", [(1, 1), (16, 16), (37, 37), (40, 5)])
def test_causal_fft_conv_equals_direct(length, filter_length):
    u = torch.randn(2, 3, length, dtype=torch.float64)
    k = torch.randn(3, filter_length, dtype=torch.float64)
    assert torch.allclose(fft_conv(u, k), direct_causal(u, k), atol=1e-12)


def test_circular_fft_conv_equals_direct():
    u = torch.randn(2, 3, 12, dtype=torch.float64)
    k = torch.randn(3, 12, dtype=torch.float64)
    expected = torch.zeros_like(u)
    for t in range(12):
        for s in range(12):
            expected[..., t] += k[:, s] * u[..., (t - s) % 12]
    assert torch.allclose(fft_conv(u, k, causal=False), expected, atol=1e-12)


def test_bidirectional_fft_conv_equals_direct():
    u = torch.randn(2, 3, 10, dtype=torch.float64)
    kf, kb = torch.randn(2, 3, 10, dtype=torch.float64)
    expected = direct_causal(u, kf)
    for t in range(10):
        for s in range(1, 10 - t):
            expected[..., t] += kb[:, s] * u[..., t + s]
    assert torch.allclose(bidirectional_fft_conv(u, kf, kb), expected, atol=1e-12)
    assert two_sided_filter(kf, kb).shape == (3, 20)


def test_fft_conv_keeps_dtype_and_checks_shapes():
    u = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    assert fft_conv(u, torch.randn(3, 16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="k: expected 3 channels"):
        fft_conv(u, torch.randn(4, 16))
    with pytest.raises(ValueError, match="k: expected a filter length of at most 16"):
        fft_conv(u, torch.randn(3, 17))
    with pytest.raises(ValueError, match="u: expected rank"):
        fft_conv(torch.randn(16), torch.randn(1, 16))
