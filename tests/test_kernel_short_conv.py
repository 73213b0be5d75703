"""Tests for seqarch.kernels.short_conv: the Triton kernels (interpreter) against the twin,
the twin against a direct loop over taps, input checks, backend choice, and the ShortConv layer."""

from __future__ import annotations

import pytest
import torch

from seqarch.kernels import backend, use_backend
from seqarch.kernels.short_conv import (
    offtheshelf_short_conv,
    short_conv,
    short_conv_reference,
)
from seqarch.modules.short_conv import ShortConv

from helpers import relative_rms


def inputs(batch, channels, length, kernel_size, *, bias=True, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, length, generator=gen, dtype=torch.float32).to(device, dtype)
    weight = torch.randn(channels, kernel_size, generator=gen).to(device, dtype)
    b = torch.randn(channels, generator=gen).to(device, dtype) if bias else None
    return [t.requires_grad_() if t is not None else None for t in (x, weight, b)]


def forward_and_grads(fn, x, weight, bias, grad_out):
    y = fn(x, weight, bias)
    wrt = [t for t in (x, weight, bias) if t is not None]
    return (y, *torch.autograd.grad(y, wrt, grad_out))


def direct_short_conv(x, weight, bias):
    """float64 explicit loop over taps: y[t] = bias + sum_j w[j] x[t - (k-1) + j]."""
    kernel_size, length = weight.shape[1], x.shape[-1]
    y = torch.zeros_like(x) if bias is None else torch.zeros_like(x) + bias[:, None]
    for j in range(kernel_size):
        shift = kernel_size - 1 - j
        y = y + torch.cat([torch.zeros_like(x[..., :shift]), x[..., : length - shift]], dim=-1) * weight[:, j:j + 1]
    return y


@pytest.mark.parametrize(
    "batch,channels,length,kernel_size,bias,transposed",
    [(2, 5, 13, 3, True, False), (1, 8, 70, 4, False, False), (2, 6, 9, 8, True, True), (1, 3, 5, 2, True, False),
     (2, 4, 7, 1, True, False), (1, 40, 20, 3, True, True)],
)
def test_triton_matches_twin_forward_and_grads(batch, channels, length, kernel_size, bias, transposed):
    x, weight, b = inputs(batch, channels, length, kernel_size, bias=bias)
    if transposed:  # M2's layout: channels contiguous, as in_proj(x).transpose(1, 2)
        x = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        assert x.stride(1) == 1
    grad_out = torch.randn(batch, channels, length).transpose(1, 2).contiguous().transpose(1, 2)
    with use_backend("triton"):
        assert backend(x) == "triton"
        got = forward_and_grads(short_conv, x, weight, b, grad_out)
    want = forward_and_grads(short_conv_reference, x, weight, b, grad_out)
    assert len(got) == len(want) == (4 if bias else 3)
    for name, g, w in zip(["y", "dx", "dweight", "dbias"], got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert relative_rms(g, w) <= 1e-4, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision_against_float32_twin(dtype):
    x, weight, b = inputs(2, 8, 30, 4, dtype=dtype)
    grad_out = torch.randn(2, 8, 30, dtype=dtype)
    with use_backend("triton"):
        got = forward_and_grads(short_conv, x, weight, b, grad_out)
    ref = [t.detach().float().requires_grad_() for t in (x, weight, b)]
    want = forward_and_grads(short_conv_reference, *ref, grad_out.float())
    for name, g, w in zip(["y", "dx", "dweight", "dbias"], got, want):
        assert g.dtype == dtype, name
        assert relative_rms(g, w) <= 1e-2, name


@pytest.mark.parametrize("kernel_size,bias", [(1, True), (3, True), (4, False), (8, True)])
def test_twin_matches_direct_loop_float64(kernel_size, bias):
    x, weight, b = inputs(2, 3, 12, kernel_size, bias=bias, dtype=torch.float64, seed=1)
    grad_out = torch.randn(2, 3, 12, dtype=torch.float64)
    got = forward_and_grads(short_conv_reference, x, weight, b, grad_out)
    want = forward_and_grads(direct_short_conv, x, weight, b, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    # and the off-the-shelf baseline computes the same thing
    torch.testing.assert_close(offtheshelf_short_conv(x, weight, b), want[0], rtol=1e-12, atol=1e-12)


def test_causal():
    x, weight, b = inputs(1, 4, 16, 4)
    with use_backend("triton"):
        y = short_conv(x, weight, b)
        x2 = x.detach().clone()
        x2[..., 9:] += 1.0
        y2 = short_conv(x2, weight, b)
    assert torch.equal(y[..., :9], y2[..., :9])
    assert not torch.equal(y[..., 9:], y2[..., 9:])


def test_long_filter_and_float64_raise_on_the_triton_path_and_take_the_twin_under_auto():
    x, weight, b = inputs(1, 2, 12, 9)
    x64, w64, b64 = (t.detach().double() for t in inputs(1, 2, 12, 3))
    with use_backend("triton"):
        with pytest.raises(ValueError, match="weight: expected kernel_size <= 8 for the Triton path, got 9"):
            short_conv(x, weight, b)
        with pytest.raises(ValueError, match="x: expected dtype float16, bfloat16 or float32 for the Triton path"):
            short_conv(x64, w64, b64)
    with use_backend("auto"):
        torch.testing.assert_close(short_conv(x, weight, b), short_conv_reference(x, weight, b))
        torch.testing.assert_close(short_conv(x64, w64, b64), direct_short_conv(x64, w64, b64))


@pytest.mark.parametrize("choice", ["torch", "triton"])
def test_strided_bias_is_read_with_its_stride(choice):
    x, weight = (t.detach() for t in inputs(2, 4, 10, 3, bias=False)[:2])
    bias = torch.arange(8.0).reshape(4, 2)[:, 1]  # a column view: stride 2
    assert bias.stride() == (2,)
    with use_backend(choice):
        got = short_conv(x, weight, bias)
    torch.testing.assert_close(got, direct_short_conv(x, weight, bias.contiguous()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("choice", ["torch", "triton"])
@pytest.mark.parametrize("batch, channels, length", [(2, 3, 0), (2, 0, 5), (0, 3, 5)])
def test_zero_size_inputs_give_an_empty_result(choice, batch, channels, length):
    x, weight, b = inputs(batch, channels, length, 3)
    with use_backend(choice):
        y = short_conv(x, weight, b)
    assert y.shape == (batch, channels, length) and y.dtype == x.dtype
    grads = torch.autograd.grad(y.sum(), (x, weight, b))
    assert [g.shape for g in grads] == [x.shape, weight.shape, b.shape]
    assert all(torch.count_nonzero(g) == 0 for g in grads)
    layer = ShortConv(channels or 1, 3)
    assert layer(torch.randn(batch, channels or 1, length)).shape == (batch, channels or 1, length)


def test_backend_choice_is_honoured(monkeypatch):
    import seqarch.kernels.short_conv as module

    calls = []
    monkeypatch.setattr(module.ShortConvFunction, "apply", lambda *a: calls.append("triton") or module._forward(*a))
    x, weight, b = inputs(1, 2, 6, 3)
    with use_backend("torch"):
        short_conv(x, weight, b)
    assert calls == []
    with use_backend("triton"):
        short_conv(x, weight, b)
    assert calls == ["triton"]


@pytest.mark.parametrize(
    "args,argument",
    [
        ((torch.randn(2, 3), torch.randn(3, 2), None), "x"),
        ((torch.randn(1, 2, 3).int(), torch.randn(2, 2), None), "x"),
        ((torch.randn(1, 3, 5), torch.randn(2, 2), None), "weight"),
        ((torch.randn(1, 3, 5), torch.randn(3), None), "weight"),
        ((torch.randn(1, 3, 5), torch.randn(3, 0), None), "weight"),
        ((torch.randn(1, 3, 5), torch.randn(3, 2, dtype=torch.float64), None), "weight"),
        ((torch.randn(1, 3, 5), torch.randn(3, 2), torch.randn(4)), "bias"),
        ((torch.randn(1, 3, 5), torch.randn(3, 2), torch.randn(3, dtype=torch.float16)), "bias"),
    ],
)
def test_bad_inputs_raise(args, argument):
    for choice in ("torch", "triton"):
        with use_backend(choice), pytest.raises(ValueError, match=rf"^{argument}: expected"):
            short_conv(*args)


@pytest.mark.parametrize("kernel_size", [3, 4])
def test_layer_backend_swap_changes_output_and_loss_by_at_most_1e4(kernel_size):
    torch.manual_seed(0)
    layer = ShortConv(6, kernel_size)
    x = torch.randn(2, 10, 6).transpose(1, 2)  # the transposed layout M2 feeds it
    results = {}
    for choice in ("torch", "triton"):
        layer.zero_grad()
        with use_backend(choice):
            y = layer(x)
        loss = y.sin().sum()
        loss.backward()
        results[choice] = (y.detach(), loss.detach(), layer.weight.grad.clone(), layer.bias.grad.clone())
    for got, want in zip(results["triton"], results["torch"]):
        assert relative_rms(got, want) <= 1e-4


def test_layer_under_autocast_runs_in_the_autocast_dtype():
    torch.manual_seed(0)
    layer = ShortConv(6, 3)
    x = torch.randn(2, 6, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16  # as conv1d under autocast
    assert 0 < relative_rms(y.float(), layer(x)) <= 1e-2
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestGPU:
    @pytest.mark.parametrize("transposed", [False, True])
    @pytest.mark.parametrize("kernel_size", [2, 4, 8])
    def test_gpu_bf16_real_shape_forward_backward(self, kernel_size, transposed):
        batch, channels, length = 8, 2304, 4096
        x, weight, b = inputs(batch, channels, length, kernel_size, dtype=torch.bfloat16, device="cuda")
        if transposed:
            x = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        grad_out = torch.randn(batch, channels, length, device="cuda", dtype=torch.bfloat16)
        with use_backend("auto"):
            assert backend(x) == "triton"
            got = forward_and_grads(short_conv, x, weight, b, grad_out)
        ref = [t.detach().float().requires_grad_() for t in (x, weight, b)]
        want = forward_and_grads(short_conv_reference, *ref, grad_out.float())
        for name, g, w in zip(["y", "dx", "dweight", "dbias"], got, want):
            assert g.dtype == torch.bfloat16, name
            assert relative_rms(g.float(), w) <= 1e-2, name

    def test_gpu_float32_matches_twin_tightly(self):
        x, weight, b = inputs(4, 768, 1024, 4, device="cuda")
        grad_out = torch.randn(4, 768, 1024, device="cuda")
        got = forward_and_grads(short_conv, x, weight, b, grad_out)
        want = forward_and_grads(short_conv_reference, x, weight, b, grad_out)
        for g, w in zip(got, want):
            assert relative_rms(g, w) <= 1e-5
