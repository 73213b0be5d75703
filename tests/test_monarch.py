"""Tests for seqarch.modules.monarch.MonarchLinear."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from seqarch.modules.monarch import MonarchLinear, monarch_mid_features

SHAPES = [(64, 64, 4), (16, 16, 2), (8, 12, 4), (32, 8, 4), (6, 10, 1), (12, 20, 2), (64, 128, 8)]


@pytest.mark.parametrize("in_features,out_features,nblocks", SHAPES)
def test_forward_equals_dense_matrix(in_features, out_features, nblocks):
    torch.manual_seed(0)
    layer = MonarchLinear(in_features, out_features, nblocks, dtype=torch.float64)
    x = torch.randn(3, 5, in_features, dtype=torch.float64)
    dense = layer.dense_matrix()
    assert dense.shape == (out_features, in_features)
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias, rtol=1e-12, atol=1e-12)


def test_nblocks_one_is_a_dense_layer():
    layer = MonarchLinear(6, 10, 1, bias=False, dtype=torch.float64)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert layer.weight.shape == (10, 6)
    torch.testing.assert_close(layer.dense_matrix(), layer.weight)


@pytest.mark.parametrize("in_features,out_features,nblocks", [s for s in SHAPES if s[2] > 1])
def test_every_output_depends_on_every_input(in_features, out_features, nblocks):
    torch.manual_seed(1)
    layer = MonarchLinear(in_features, out_features, nblocks, dtype=torch.float64)
    assert (layer.dense_matrix().abs() > 0).all()


def test_is_structured():
    # At nblocks = sqrt(n) the layer holds 2 n^1.5 weights, not n^2.
    layer = MonarchLinear(64, 64, 8, bias=False)
    assert sum(p.numel() for p in layer.parameters()) == 2 * 64 * 8
    assert monarch_mid_features(64, 64, 8) == 64
    assert monarch_mid_features(8, 12, 4) == 16


@pytest.mark.parametrize("in_features,out_features,nblocks", SHAPES)
def test_flops_match_flop_counter(in_features, out_features, nblocks):
    layer = MonarchLinear(in_features, out_features, nblocks)
    x = torch.randn(2, 7, in_features)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    assert layer.flops(14) == counter.get_total_flops()


def test_output_variance_matches_linear():
    torch.manual_seed(2)
    x = torch.randn(4096, 256)
    for nblocks in (1, 4, 16):
        layer = MonarchLinear(256, 256, nblocks, bias=False)
        assert abs(layer(x).var().item() - 1 / 3) < 0.05


@pytest.mark.parametrize("in_features,out_features", [(10, 12), (12, 10)])
def test_bad_nblocks_raises(in_features, out_features):
    with pytest.raises(ValueError, match="nblocks"):
        MonarchLinear(in_features, out_features, 4)
    with pytest.raises(ValueError, match="nblocks"):
        MonarchLinear(8, 8, 0)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="x"):
        MonarchLinear(8, 8, 2)(torch.randn(3, 6))


def test_gradients_flow():
    layer = MonarchLinear(16, 24, 4)
    layer(torch.randn(2, 3, 16)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dtype_and_leading_shape():
    layer = MonarchLinear(16, 8, 2, dtype=torch.bfloat16)
    y = layer(torch.randn(2, 3, 4, 16, dtype=torch.bfloat16))
    assert y.shape == (2, 3, 4, 8) and y.dtype == torch.bfloat16
