"""Chunked Cauchy sums: forward equals the broadcast formula; analytic gradients pass gradcheck."""

from __future__ import annotations

import pytest
import torch

from seqarch.modules import cauchy
from seqarch.modules.cauchy import cauchy_sums


def random_inputs(channels=3, sums=4, state=5, length=7):
    c = torch.complex128
    numerators = torch.randn(channels, sums, state, dtype=c, requires_grad=True)
    a = torch.randn(length, dtype=c) + 3
    b = torch.randn(channels, length, dtype=c, requires_grad=True)
    lam = torch.complex(-torch.rand(channels, state, dtype=torch.float64),
                        torch.randn(channels, state, dtype=torch.float64))
    return numerators, a, b, lam.requires_grad_()


def broadcast(numerators, a, b, lam):
    return numerators @ (1 / (a - b[:, None, :] * lam[..., None]))


@pytest.mark.parametrize("block", [1 << 22, 16])  # one chunk, and chunks of one or two frequencies
def test_forward_and_gradients(monkeypatch, block):
    monkeypatch.setattr(cauchy, "_BLOCK_ELEMENTS", block)
    inputs = random_inputs()
    assert torch.allclose(cauchy_sums(*inputs), broadcast(*inputs), atol=1e-12)
    assert torch.autograd.gradcheck(cauchy_sums, inputs)


def test_shapes_are_checked():
    numerators, a, b, lam = random_inputs()
    with pytest.raises(ValueError, match="numerators"):
        cauchy_sums(numerators[0], a, b, lam)
    with pytest.raises(ValueError, match="b: expected shape"):
        cauchy_sums(numerators, a, b[:, :3], lam)
