"""The Monarch FFT convolution kernel (kernels/fft_conv.py) against its rfft twin and a direct convolution."""

from __future__ import annotations

import pytest
import torch

import seqarch
from seqarch.kernels import fft_conv as fc
from seqarch.kernels import use_backend
from seqarch.kernels.fft_conv import (
    fft_conv,
    fft_conv_reference,
    fft_plan,
    offtheshelf_fft_conv,
)
from seqarch.modules import fft_conv as seqarch_fft_conv

from helpers import relative_rms


def make_inputs(batch, channels, length, filter_length, *, gates, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype).requires_grad_()

    u, k = randn(batch, channels, length), randn(channels, filter_length)
    pre = randn(batch, channels, length) if gates in ("pre", "both") else None
    post = randn(batch, channels, length) if gates in ("post", "both") else None
    return u, k, pre, post


def forward_and_grads(conv, u, k, pre, post, causal, grad_y):
    y = conv(u, k, causal=causal, pre_gate=pre, post_gate=post)
    inputs = [t for t in (u, k, pre, post) if t is not None]
    return y, torch.autograd.grad(y, inputs, grad_y)


def check_triton_matches_twin(batch, channels, length, filter_length, causal, gates, tol=1e-4):
    u, k, pre, post = make_inputs(batch, channels, length, filter_length, gates=gates)
    grad_y = torch.randn(batch, channels, length)
    with use_backend("triton"):
        y, grads = forward_and_grads(fft_conv, u, k, pre, post, causal, grad_y)
    y_ref, grads_ref = forward_and_grads(fft_conv_reference, u, k, pre, post, causal, grad_y)
    assert relative_rms(y, y_ref) <= tol
    assert len(grads) == len(grads_ref)
    for grad, grad_ref in zip(grads, grads_ref):
        assert relative_rms(grad, grad_ref) <= tol


# -- 1. the Triton kernels under the interpreter, against the twin ----------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("gates", [None, "pre", "post", "both"])
def test_triton_two_factor_matches_twin(causal, gates):
    check_triton_matches_twin(2, 3, 256, 256, causal, gates)


@pytest.mark.parametrize("wanted", ["u", "k", "pre"])
def test_triton_partial_gradients_match_twin(wanted):
    # the backward launches the filter product, the pair product or both, as the gradients need
    u, k, pre, _ = make_inputs(1, 2, 256, 256, gates="pre")
    inputs = {"u": u, "k": k, "pre": pre}
    for name, tensor in inputs.items():
        tensor.requires_grad_(name == wanted)
    with use_backend("triton"):
        (grad,) = torch.autograd.grad(fft_conv(u, k, pre_gate=pre).pow(2).sum(), inputs[wanted])
    (grad_ref,) = torch.autograd.grad(fft_conv_reference(u, k, pre_gate=pre).pow(2).sum(), inputs[wanted])
    assert relative_rms(grad, grad_ref) <= 1e-4


def test_triton_short_filter_matches_twin():
    check_triton_matches_twin(1, 4, 256, 37, True, "both")


@pytest.mark.parametrize("causal", [True, False])
def test_triton_three_factor_matches_twin(causal, monkeypatch):
    # a small two-factor limit sends the 256-long sequences down the three-factor path
    monkeypatch.setattr(fc, "MAX_ROW_FFT", 128)
    assert fft_plan(512)[0] > 1 and fft_plan(256)[0] > 1
    check_triton_matches_twin(1, 2, 256, 200, causal, "both")


def test_triton_three_factor_at_its_real_plan():
    # causal length 4096 is an FFT of 8192 = 16 * (16 * 32), the plan the GPU runs
    assert fft_plan(8192) == (16, 16, 32)
    check_triton_matches_twin(1, 1, 4096, 4096, True, "pre")


def test_triton_half_precision_inputs_keep_their_dtypes():
    # under the interpreter tf32 products are exact, so this checks the casts and the bf16 / fp16 stores
    u, k, pre, post = make_inputs(2, 2, 256, 256, gates="both", dtype=torch.bfloat16)
    post = post.detach().half().requires_grad_()
    grad_y = torch.randn(2, 2, 256, dtype=torch.bfloat16)
    with use_backend("triton"):
        y, grads = forward_and_grads(fft_conv, u, k, pre, post, True, grad_y)
    fp32 = [t.detach().float().requires_grad_() for t in (u, k, pre, post)]
    y_ref, grads_ref = forward_and_grads(fft_conv_reference, *fp32, True, grad_y.float())
    assert y.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3 + [torch.float16]
    assert relative_rms(y, y_ref) <= 1e-2
    for grad, grad_ref in zip(grads, grads_ref):
        assert relative_rms(grad, grad_ref) <= 1e-2


def test_fft_plan_factors():
    for exponent in range(8, 18):
        n = 2**exponent
        n1, na, nb = fft_plan(n)
        assert n1 * na * nb == n
        assert min(na, nb) >= 16 and (n1 == 1 or 16 <= n1 <= 128)
        assert (n1 == 1) == (n <= fc.MAX_ROW_FFT)


# -- 2. the twin against a float64 direct O(L^2) convolution ----------------------------
def direct_conv(u, k, *, causal, pre_gate=None, post_gate=None):
    """``(batch, channels, length)`` by a dense Toeplitz (causal) or circulant matrix per channel."""
    length = u.shape[-1]
    k = torch.nn.functional.pad(k, (0, length - k.shape[-1]))
    t = torch.arange(length)
    lag = t[:, None] - t[None, :]
    taps = k[:, lag.remainder(length)]  # (channels, t, s) = k[(t - s) mod L]
    if causal:
        taps = taps * (lag >= 0)
    v = u if pre_gate is None else u * pre_gate
    y = torch.einsum("cts,bcs->bct", taps, v)
    return y if post_gate is None else y * post_gate


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length,filter_length", [(16, 16), (37, 11), (64, 64)])
def test_twin_matches_direct_float64(causal, length, filter_length):
    u, k, pre, post = make_inputs(2, 3, length, filter_length, gates="both", dtype=torch.float64)
    grad_y = torch.randn(2, 3, length, dtype=torch.float64)
    y, grads = forward_and_grads(fft_conv_reference, u, k, pre, post, causal, grad_y)
    y_ref, grads_ref = forward_and_grads(direct_conv, u, k, pre, post, causal, grad_y)
    assert y.dtype == torch.float64
    assert torch.allclose(y, y_ref, atol=1e-11)
    for grad, grad_ref in zip(grads, grads_ref):
        assert torch.allclose(grad, grad_ref, atol=1e-11)


def test_offtheshelf_is_the_ungated_convolution():
    u, k, _, _ = make_inputs(2, 3, 40, 40, gates=None, dtype=torch.float64)
    assert torch.allclose(offtheshelf_fft_conv(u, k), direct_conv(u, k, causal=True), atol=1e-11)


# -- 3. bad inputs and the backend choice ----------------------------------------------
@pytest.mark.parametrize(
    "u_shape,k_shape,gate_shape,match",
    [
        ((3, 256), (3, 256), None, r"u: expected a floating tensor of rank 3"),
        ((2, 3, 256), (3, 1, 256), None, r"k: expected a floating tensor of rank 2"),
        ((2, 3, 256), (4, 256), None, r"k: expected 3 channels"),
        ((2, 3, 256), (3, 257), None, r"k: expected a filter length in \[1, 256\], got 257"),
        ((2, 3, 256), (3, 256), (2, 3, 128), r"pre_gate: expected a floating tensor of u's shape"),
    ],
)
def test_bad_shapes_raise(u_shape, k_shape, gate_shape, match):
    gate = None if gate_shape is None else torch.randn(gate_shape)
    with pytest.raises(ValueError, match=match):
        fft_conv(torch.randn(u_shape), torch.randn(k_shape), pre_gate=gate)


def test_bad_arguments_raise():
    u, k = torch.randn(1, 2, 256), torch.randn(2, 256)
    with pytest.raises(ValueError, match="post_gate: expected a floating tensor"):
        fft_conv(u, k, post_gate=torch.ones(1, 2, 256, dtype=torch.int64))
    with pytest.raises(ValueError, match="causal: expected a bool"):
        fft_conv(u, k, causal="yes")
    with pytest.raises(ValueError, match="k: expected a floating tensor"):
        fft_conv(u, k.long())


@pytest.mark.parametrize("length", [100, 128, 2**17])
def test_forced_triton_rejects_unsupported_lengths(length):
    u, k = torch.randn(1, 1, length), torch.randn(1, 3)
    with use_backend("triton"), pytest.raises(ValueError, match=f"u: expected a power-of-two length .* got {length}"):
        fft_conv(u, k)
    with use_backend("triton"), pytest.raises(ValueError, match="u: expected dtype float32"):
        fft_conv(torch.randn(1, 1, 256, dtype=torch.float64), torch.randn(1, 3))


def test_backend_choice_is_honoured(monkeypatch):
    calls = []
    original = fc.FFTConvFunction.apply

    def spy(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(fc.FFTConvFunction, "apply", spy)
    u, k = torch.randn(1, 2, 256), torch.randn(2, 256)
    with use_backend("torch"):
        y_torch = fft_conv(u, k)
    assert calls == []
    with use_backend("auto"):  # CPU tensors: auto takes the twin
        fft_conv(u, k)
    assert calls == []
    with use_backend("triton"):
        y_triton = fft_conv(u, k)
    assert calls == [u.shape]
    assert relative_rms(y_triton, y_torch) <= 1e-4
    # auto falls back to the twin for a length the kernel does not take, and gets it right
    u_odd, k_odd = torch.randn(1, 2, 100, dtype=torch.float64), torch.randn(2, 100, dtype=torch.float64)
    assert torch.allclose(fft_conv(u_odd, k_odd), direct_conv(u_odd, k_odd, causal=True), atol=1e-11)


# -- 5. the layers that use the op: swapping the backend changes nothing ----------------
@pytest.fixture
def kernel_calls(monkeypatch):
    """Records the ``(batch, channels, length)`` of every call that reaches the Triton autograd Function."""
    calls = []
    original = fc.FFTConvFunction.apply

    def spy(*args):
        calls.append(tuple(args[0].shape))
        return original(*args)

    monkeypatch.setattr(fc.FFTConvFunction, "apply", spy)
    return calls


@pytest.mark.parametrize("name,causal", [("m2", True), ("m2", False), ("s4d", True), ("s4d", False)])
def test_layer_backend_swap(name, causal, kernel_calls):
    torch.manual_seed(0)
    options = {"max_length": 256} if name == "m2" else {"d_state": 8}
    mixer = seqarch.build_mixer(name, 8, causal=causal, **options)
    x = torch.randn(1, 256, 8)
    losses, grads = [], []
    for choice in ("torch", "triton"):
        mixer.zero_grad()
        with use_backend(choice):
            loss = mixer(x).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in mixer.parameters() if p.grad is not None]))
    # only the triton pass reaches the kernel; bidirectional layers run one circular FFT of 2L
    assert kernel_calls == [(1, 8, 256 if causal else 512)]
    assert abs(losses[1] - losses[0]) <= 1e-4 * abs(losses[0])
    assert relative_rms(grads[1], grads[0]) <= 1e-4


def test_module_fft_conv_routes_through_the_kernel(kernel_calls):
    u, k, pre, post = make_inputs(2, 3, 256, 100, gates="both")
    u4, pre4, post4 = (t.detach().reshape(1, 2, 3, 256) for t in (u, pre, post))  # leading dims fold into batch
    with use_backend("triton"):
        y = seqarch_fft_conv.fft_conv(u4, k.detach(), pre_gate=pre4, post_gate=post4)
        # a length the kernel does not take: the module does not pre-empt the kernel's rule, forced triton raises
        with pytest.raises(ValueError, match="u: expected a power-of-two length in \\[256, 65536\\] .* got 100"):
            seqarch_fft_conv.fft_conv(u[..., :100].detach(), k[:, :50].detach(), causal=False)
    with use_backend("auto"):  # and auto runs the twin
        odd = seqarch_fft_conv.fft_conv(u[..., :100].detach(), k[:, :50].detach(), causal=False)
    assert kernel_calls == [(2, 3, 256)]
    assert y.shape == (1, 2, 3, 256)
    assert relative_rms(y.reshape(2, 3, 256), fft_conv_reference(u, k, pre_gate=pre, post_gate=post)) <= 1e-4
    assert relative_rms(odd, fft_conv_reference(u[..., :100], k[:, :50], causal=False)) <= 1e-6


@pytest.mark.parametrize("choice", ["torch", "triton"])
@pytest.mark.parametrize("batch, channels", [(0, 3), (2, 0)])
def test_zero_batch_or_channels_give_an_empty_result(choice, batch, channels):
    u, k, pre, post = make_inputs(batch, channels, 256, 16, gates="both")
    with use_backend(choice):
        y = fft_conv(u, k, pre_gate=pre, post_gate=post)
        module_y = seqarch_fft_conv.fft_conv(u.detach()[None], k.detach())  # leading dims folded, channels 0 too
    assert y.shape == (batch, channels, 256) and y.dtype == u.dtype
    assert module_y.shape == (1, batch, channels, 256)
    grads = torch.autograd.grad(y.sum(), (u, k, pre, post))
    assert [g.shape for g in grads] == [t.shape for t in (u, k, pre, post)]
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_module_bidirectional_gates_match_direct():
    u, kf, kb, pre, post = (torch.randn(2, 3, 10, dtype=torch.float64)[0] for _ in range(5))
    u, pre, post = (t.unsqueeze(0) for t in (u, pre, post))
    y = seqarch_fft_conv.bidirectional_fft_conv(u, kf, kb, pre_gate=pre, post_gate=post)
    expected = post * seqarch_fft_conv.bidirectional_fft_conv(pre * u, kf, kb)
    assert torch.allclose(y, expected, atol=1e-12)
    two_sided = direct_conv(torch.nn.functional.pad(pre * u, (0, 10)), seqarch_fft_conv.two_sided_filter(kf, kb),
                            causal=False)[..., :10]
    assert torch.allclose(y, post * two_sided, atol=1e-12)


# -- 4. real shapes on a GPU, half precision --------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestGpu:
    @pytest.mark.parametrize(
        "batch,channels,length,causal",
        [(8, 768, 1024, True), (4, 256, 4096, True), (4, 64, 16384, True), (8, 128, 4096, False)],
    )
    def test_gpu_bf16_matches_float32_twin(self, batch, channels, length, causal):
        u, k, pre, post = make_inputs(batch, channels, length, length, gates="both", dtype=torch.bfloat16,
                                      device="cuda")
        k_decay = torch.exp(-torch.arange(length, device="cuda") / (length / 8)).to(torch.bfloat16)
        k = (k.detach() * k_decay).requires_grad_()  # a decaying filter like the layers' keeps sums bounded
        grad_y = torch.randn(batch, channels, length, device="cuda", dtype=torch.bfloat16)
        with use_backend("triton"):
            y, grads = forward_and_grads(fft_conv, u, k, pre, post, causal, grad_y)
        fp32 = [t.detach().float().requires_grad_() for t in (u, k, pre, post)]
        y_ref, grads_ref = forward_and_grads(fft_conv_reference, *fp32, causal, grad_y.float())
        assert y.dtype == torch.bfloat16
        assert relative_rms(y, y_ref) <= 1e-2
        for grad, grad_ref in zip(grads, grads_ref):
            assert relative_rms(grad, grad_ref) <= 1e-2

    @pytest.mark.parametrize("length", [1024, 16384])
    def test_gpu_float32_matches_twin(self, length):
        u, k, _, _ = make_inputs(4, 64, length, length, gates=None, device="cuda")
        grad_y = torch.randn(4, 64, length, device="cuda")
        with use_backend("triton"):
            y, grads = forward_and_grads(fft_conv, u, k, None, None, True, grad_y)
        y_ref, grads_ref = forward_and_grads(fft_conv_reference, u, k, None, None, True, grad_y)
        assert relative_rms(y, y_ref) <= 1e-4
        for grad, grad_ref in zip(grads, grads_ref):
            assert relative_rms(grad, grad_ref) <= 1e-4

    def test_gpu_auto_takes_triton(self, monkeypatch):
        calls = []
        original = fc.FFTConvFunction.apply
        monkeypatch.setattr(fc.FFTConvFunction, "apply", lambda *a: calls.append(1) or original(*a))
        u, k = torch.randn(2, 8, 1024, device="cuda"), torch.randn(8, 1024, device="cuda")
        with use_backend("auto"):
            fft_conv(u, k)
        assert calls == [1]


def test_zero_length_is_an_error_naming_u():
    u, k = torch.randn(2, 3, 0), torch.randn(3, 1)
    with pytest.raises(ValueError, match="u: expected a length of at least 1, got 0"):
        fft_conv(u, k)
