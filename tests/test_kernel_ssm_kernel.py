"""SSM convolution kernels: Vandermonde (S4D) and Cauchy (S4) sums, Triton against the twin.

Without a GPU the Triton kernels run in Triton's CPU interpreter (tests/conftest.py), at
small shapes with lengths that are not multiples of the blocks.
"""

from __future__ import annotations

import pytest
import torch

import seqarch
from seqarch.kernels import ssm_kernel, use_backend
from seqarch.kernels.ssm_kernel import (
    cauchy_kernel,
    offtheshelf_cauchy_kernel,
    offtheshelf_vandermonde_kernel,
    vandermonde_kernel,
    vandermonde_kernel_reference,
)

from helpers import relative_rms


def s4d_like_log_z(channels, state, dtype=torch.float32, device=None, seed=0):
    """``dt A`` as S4D-Lin initialises it: decays -dt/2, frequencies pi n dt, dt in [1e-3, 1e-1]."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.empty(channels, 1).uniform_(-6.9, -2.3, generator=gen)).to(torch.float64)
    n = torch.arange(state, dtype=torch.float64)
    log_z = torch.complex(-0.5 * dt.expand(channels, state), torch.pi * n * dt)
    return log_z.to(device=device, dtype=dtype.to_complex()).requires_grad_()


def vandermonde_inputs(batch, channels, state, dtype=torch.float32, device=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    log_z = torch.complex(-torch.rand(channels, state, generator=gen) * 0.3,
                          torch.randn(channels, state, generator=gen) * 2).to(dtype.to_complex())
    coef = torch.randn(*batch, channels, state, dtype=dtype.to_complex(), generator=gen)
    return coef.to(device).requires_grad_(), log_z.to(device).requires_grad_()


def cauchy_inputs(channels, sums, state, length, dtype=torch.float32, device=None, seed=0):
    """Inputs shaped like S4's: a = 2(1 - omega), b = dt (1 + omega) at the roots of unity."""
    gen = torch.Generator().manual_seed(seed)
    cdtype = dtype.to_complex()
    omega = torch.exp(-2j * torch.pi * torch.arange(length, dtype=torch.float64) / length)
    dt = torch.exp(torch.empty(channels, 1, dtype=torch.float64).uniform_(-6.9, -2.3, generator=gen))
    a = (2 * (1 - omega)).to(device=device, dtype=cdtype)
    b = (dt * (1 + omega)).to(device=device, dtype=cdtype).requires_grad_()
    lam = torch.complex(-0.5 - torch.rand(channels, state, dtype=torch.float64, generator=gen),
                        torch.pi * torch.randn(channels, state, dtype=torch.float64, generator=gen) * state)
    numerators = torch.randn(channels, sums, state, dtype=torch.complex128, generator=gen)
    return (numerators.to(device=device, dtype=cdtype).requires_grad_(), a, b,
            lam.to(device=device, dtype=cdtype).requires_grad_())


def forward_and_grads(fn, inputs, differentiable, grad_seed=1):
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(grad_seed)
    # Drawn in double precision then cast, so runs in different dtypes get the same upstream gradient.
    wide = torch.complex128 if out.is_complex() else torch.float64
    grad = torch.randn(out.shape, dtype=wide, generator=gen).to(device=out.device, dtype=out.dtype)
    grads = torch.autograd.grad(out, [inputs[i] for i in differentiable], grad)
    return out, grads


def assert_triton_matches_twin(fn, inputs, differentiable, tol=1e-4):
    with use_backend("triton"):
        out, grads = forward_and_grads(fn, inputs, differentiable)
    with use_backend("torch"):
        ref_out, ref_grads = forward_and_grads(fn, inputs, differentiable)
    assert relative_rms(out, ref_out) <= tol
    for got, ref in zip(grads, ref_grads):
        assert relative_rms(got, ref) <= tol


# -- 1. Triton (interpreter) against the twin -----------------------------------------------------
# The last case: two state tiles (tile of 4) and two position groups (8 tiles of 16 each).
@pytest.mark.parametrize("batch, channels, state, length, max_block_state",
                         [((), 2, 4, 32, 32), ((2,), 3, 6, 77, 32), ((2,), 2, 8, 150, 4)])
def test_vandermonde_triton_matches_twin(monkeypatch, batch, channels, state, length, max_block_state):
    monkeypatch.setattr(ssm_kernel, "MAX_BLOCK_STATE", max_block_state)
    coef, log_z = vandermonde_inputs(batch, channels, state)
    assert_triton_matches_twin(lambda c, z: vandermonde_kernel(c, z, length), (coef, log_z), (0, 1))


@pytest.mark.parametrize("channels, sums, state, length", [(2, 4, 4, 32), (3, 6, 6, 77), (4, 4, 20, 100)])
def test_cauchy_triton_matches_twin(channels, sums, state, length):
    inputs = cauchy_inputs(channels, sums, state, length)
    assert_triton_matches_twin(cauchy_kernel, inputs, (0, 2, 3))


def test_triton_gradient_of_one_input_only():
    coef, log_z = vandermonde_inputs((), 2, 4)
    with use_backend("triton"):
        (grad_z,) = torch.autograd.grad(vandermonde_kernel(coef.detach(), log_z, 40).sum(), [log_z])
    (ref,) = torch.autograd.grad(vandermonde_kernel_reference(coef.detach(), log_z, 40).sum(), [log_z])
    assert relative_rms(grad_z, ref) <= 1e-4


# -- 2. the twins against float64 direct computations ---------------------------------------------
def impulse_response(coef, log_z, length):
    """The S4D kernel as the impulse response of x_{l+1} = z x_l (x_0 = 1), read out by 2 Re(C x_l)."""
    z = torch.exp(log_z)
    x = torch.ones_like(log_z)
    out = []
    for _ in range(length):
        out.append(2 * (coef * x).sum(-1).real)
        x = z * x
    return torch.stack(out, -1)


@pytest.mark.parametrize("length", [2, 33, 100])
def test_vandermonde_twin_matches_recurrence_float64(length):
    inputs = vandermonde_inputs((2,), 3, 5, dtype=torch.float64)
    out, grads = forward_and_grads(lambda c, z: vandermonde_kernel_reference(c, z, length), inputs, (0, 1))
    direct, direct_grads = forward_and_grads(lambda c, z: impulse_response(c, z, length), inputs, (0, 1))
    assert torch.allclose(out, direct, atol=1e-12)
    for got, ref in zip(grads, direct_grads):
        assert torch.allclose(got, ref, atol=1e-10)


def test_vandermonde_formulas_of_triton_backward_match_autograd_float64():
    """The analytic gradient formulas the Triton Function uses (2 conj(S0), 2 conj(C S1)), in float64."""
    coef, log_z = vandermonde_inputs((2,), 3, 5, dtype=torch.float64)
    length = 37
    grad = torch.randn(2, 3, length, dtype=torch.float64)
    steps = torch.arange(length, dtype=torch.float64)
    powers = torch.exp(log_z.detach().unsqueeze(-1) * steps)  # (channels, state, length), fine at this size
    s0 = (grad.unsqueeze(-2) * powers).sum(-1)
    s1 = (grad.unsqueeze(-2) * steps * powers).sum(-1)
    ref = torch.autograd.grad(impulse_response(coef, log_z, length), (coef, log_z), grad)
    assert torch.allclose(2 * s0.conj(), ref[0], atol=1e-10)
    assert torch.allclose((2 * (coef.detach() * s1).conj()).sum(0), ref[1], atol=1e-10)


def test_vandermonde_twin_passes_gradcheck():
    coef, log_z = vandermonde_inputs((2,), 2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c, z: vandermonde_kernel_reference(c, z, 19), (coef, log_z))


@pytest.mark.parametrize("chunk_elements", [1 << 22, 10])  # one chunk, and chunks of one frequency
def test_cauchy_twin_matches_explicit_sum_float64(chunk_elements):
    inputs = cauchy_inputs(2, 3, 5, 21, dtype=torch.float64)
    out, grads = forward_and_grads(lambda *x: cauchy_kernel(*x, chunk_elements=chunk_elements), inputs, (0, 2, 3))
    direct, direct_grads = forward_and_grads(offtheshelf_cauchy_kernel, inputs, (0, 2, 3))
    assert torch.allclose(out, direct, rtol=1e-10, atol=1e-12)
    for got, ref in zip(grads, direct_grads):
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    small = cauchy_inputs(2, 2, 3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda n, b, lam: cauchy_kernel(n, small[1], b, lam, chunk_elements=chunk_elements),
                                    (small[0], small[2], small[3]))


def test_offtheshelf_vandermonde_matches_twin():
    coef, log_z = vandermonde_inputs((2,), 3, 4, dtype=torch.float64)
    baseline = offtheshelf_vandermonde_kernel(coef, log_z, 50)
    assert torch.allclose(baseline, vandermonde_kernel_reference(coef, log_z, 50), atol=1e-12)


# -- 3. bad inputs and the backend choice ---------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    (lambda c, z, n: (c, z, 0), "length: expected a positive int"),
    (lambda c, z, n: (c, z, 3.0), "length: expected a positive int"),
    (lambda c, z, n: (c, z[0], n), "log_z: expected complex"),
    (lambda c, z, n: (c, z.real, n), "log_z: expected complex"),
    (lambda c, z, n: (c[..., :3], z, n), "coef: expected shape"),
    (lambda c, z, n: (c[0, 0], z, n), "coef: expected shape"),
    (lambda c, z, n: (c.to(torch.complex128), z, n), "coef: expected dtype torch.complex64"),
])
def test_vandermonde_rejects_bad_inputs(change, match):
    coef, log_z = vandermonde_inputs((2,), 3, 4)
    with pytest.raises(ValueError, match=match):
        vandermonde_kernel(*change(coef.detach(), log_z.detach(), 10))


@pytest.mark.parametrize("change, match", [
    (lambda v, a, b, lam: (v, a, b, lam[0]), "lam: expected complex"),
    (lambda v, a, b, lam: (v, a, b, lam.real), "lam: expected complex"),
    (lambda v, a, b, lam: (v[0], a, b, lam), "numerators: expected"),
    (lambda v, a, b, lam: (v[..., :2], a, b, lam), "numerators: expected"),
    (lambda v, a, b, lam: (v, a[None], b, lam), "a: expected rank 1"),
    (lambda v, a, b, lam: (v, a.clone().requires_grad_(), b, lam), "a: expected a constant"),
    (lambda v, a, b, lam: (v, a, b[:, :3], lam), "b: expected shape"),
    (lambda v, a, b, lam: (v, a.to(torch.complex128), b, lam), "a: expected dtype torch.complex64"),
])
def test_cauchy_rejects_bad_inputs(change, match):
    inputs = [t.detach() for t in cauchy_inputs(2, 3, 4, 9)]
    with pytest.raises(ValueError, match=match):
        cauchy_kernel(*change(*inputs))
    with pytest.raises(ValueError, match="chunk_elements"):
        cauchy_kernel(*inputs, chunk_elements=0)


def test_backend_choice_is_honoured(monkeypatch):
    calls = []

    def spy(name, fn):
        return lambda *args, **kwargs: calls.append(name) or fn(*args, **kwargs)

    for owner, name, path in ((ssm_kernel.VandermondeKernelFunction, "apply", "triton"),
                              (ssm_kernel, "vandermonde_kernel_reference", "torch"),
                              (ssm_kernel.CauchyKernelFunction, "apply", "triton"),
                              (ssm_kernel, "cauchy_kernel_reference", "torch")):
        monkeypatch.setattr(owner, name, spy(path, getattr(owner, name)))
    coef, log_z = vandermonde_inputs((), 2, 4)
    cauchy = cauchy_inputs(2, 3, 4, 9)
    for choice in ("torch", "triton"):
        with use_backend(choice):
            vandermonde_kernel(coef, log_z, 20)
            cauchy_kernel(*cauchy)
        assert calls == [choice, choice]
        calls.clear()
    # complex128 is outside the Triton kernels: a ValueError saying why when forced, the twin under auto.
    coef128, log_z128 = coef.detach().to(torch.complex128), log_z.detach().to(torch.complex128)
    cauchy128 = [t.detach().to(torch.complex128) for t in cauchy]
    with use_backend("triton"):
        with pytest.raises(ValueError, match="coef: expected dtype complex64 for the Triton path, got .*complex128"):
            vandermonde_kernel(coef128, log_z128, 20)
        with pytest.raises(ValueError, match="lam: expected dtype complex64 for the Triton path, got torch.complex128"):
            cauchy_kernel(*cauchy128)
    assert calls == []
    with use_backend("auto"):
        vandermonde_kernel(coef128, log_z128, 20)
        cauchy_kernel(*cauchy128)
    assert calls == ["torch", "torch"]


@pytest.mark.parametrize("choice", ["torch", "triton"])
def test_empty_results(choice):
    """No frequencies, channels or sums (Cauchy), no rows (Vandermonde): empty results, zero gradients."""
    with use_backend(choice):
        for channels, sums, length in [(2, 3, 0), (0, 3, 9), (2, 0, 9)]:
            numerators, a, b, lam = cauchy_inputs(channels, sums, 4, max(length, 1))
            a, b = a[:length], b.detach()[:, :length].requires_grad_()
            out = cauchy_kernel(numerators, a, b, lam)
            assert out.shape == (channels, sums, length) and out.dtype == torch.complex64
            grads = torch.autograd.grad(out.abs().sum(), (numerators, b, lam))
            assert all(torch.count_nonzero(g) == 0 for g in grads)
        coef, log_z = vandermonde_inputs((0,), 3, 4)
        out = vandermonde_kernel(coef, log_z, 10)
        assert out.shape == (0, 3, 10) and out.dtype == torch.float32
        assert torch.count_nonzero(torch.autograd.grad(out.sum(), log_z)[0]) == 0


# -- 5. the layers: swapping the backend changes nothing beyond rounding ---------------------------
@pytest.mark.parametrize("name", ["s4d", "s4"])
def test_layer_loss_and_gradients_do_not_depend_on_backend(name):
    torch.manual_seed(0)
    # two channels: the interpreter's time grows with the Cauchy kernel's programs, one row per channel
    layer = seqarch.build_mixer(name, 2, d_state=8)
    # a length the FFT convolution's Triton kernel takes: forced triton covers every op of the layer
    x = torch.randn(2, 256, 2)
    results = {}
    for choice in ("torch", "triton"):
        with use_backend(choice):
            layer.zero_grad()
            loss = layer(x).pow(2).mean()
            loss.backward()
        results[choice] = (loss.detach(), [p.grad.clone() for p in layer.parameters()])
    (loss_t, grads_t), (loss_r, grads_r) = results["triton"], results["torch"]
    assert relative_rms(loss_t, loss_r) <= 1e-4
    for got, ref in zip(grads_t, grads_r):
        assert relative_rms(got, ref) <= 1e-4


# -- 4. real shapes on a GPU (fp32: these layers compute their SSM kernels in complex64) ----------
def run_on_gpu(fn, inputs, differentiable):
    """Triton forward + backward on CUDA; returns ``(out, grads, peak bytes above the inputs)``."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    with use_backend("triton"):
        out, grads = forward_and_grads(fn, inputs, differentiable)
    torch.cuda.synchronize()
    return out, grads, torch.cuda.max_memory_allocated() - start


def assert_close_to(out, grads, fn, inputs, differentiable, dtype, tol_out, tol_grad):
    """Compare with ``fn``'s PyTorch twin run on ``inputs`` cast to ``dtype`` (complex)."""
    cast = [t.detach().to(dtype).requires_grad_(t.requires_grad) for t in inputs]
    with use_backend("torch"):
        ref, ref_grads = forward_and_grads(fn, cast, differentiable)
    assert relative_rms(out.to(ref.dtype), ref) <= tol_out
    for got, want in zip(grads, ref_grads):
        assert relative_rms(got.to(want.dtype), want) <= tol_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestGpu:
    @pytest.mark.parametrize("channels, state, length", [(256, 64, 4096), (1024, 32, 16384)])
    def test_gpu_vandermonde_matches_twin_without_big_tensor(self, channels, state, length):
        args = (torch.randn(2, channels, state, dtype=torch.complex64, device="cuda").requires_grad_(),
                s4d_like_log_z(channels, state, device="cuda"))

        def fn(c, z):
            return vandermonde_kernel(c, z, length)

        out, grads, peak = run_on_gpu(fn, args, (0, 1))
        # Output, upstream gradient and a few (rows, state) sums: far below the (2, channels, state,
        # length) complex64 powers (2 * state times the output's bytes) a materialising version holds.
        assert peak <= 4 * out.numel() * out.element_size() + (1 << 20)
        assert_close_to(out, grads, fn, args, (0, 1), torch.complex64, 1e-4, 1e-3)
        # The float64 truth: Triton and the fp32 twin both round the phases Im(log_z) * l.
        assert_close_to(out, grads, fn, args, (0, 1), torch.complex128, 1e-3, 1e-3)

    @pytest.mark.parametrize("channels, state, length", [(256, 64, 4096), (512, 64, 16384)])
    def test_gpu_cauchy_matches_twin_without_big_tensor(self, channels, state, length):
        inputs = cauchy_inputs(channels, 4, state, length, device="cuda")
        out, grads, peak = run_on_gpu(cauchy_kernel, inputs, (0, 2, 3))
        # Output (4 sums), upstream gradient, its real/imag split, (channels, length) pieces: under
        # 6x the output's bytes, while the (channels, state, length) reciprocals alone take 16x.
        assert peak <= 6 * out.numel() * out.element_size()
        assert_close_to(out, grads, cauchy_kernel, inputs, (0, 2, 3), torch.complex64, 1e-4, 1e-3)
        assert_close_to(out, grads, cauchy_kernel, inputs, (0, 2, 3), torch.complex128, 1e-3, 1e-3)
