"""Tests for seqarch.kernels.ssd: the Triton kernels (interpreter) and the chunked twin against a float64
direct sequential recurrence, states in and out, gradients, odd lengths, strides, zero sizes, checks."""

from __future__ import annotations

import pytest
import torch

from seqarch.kernels import backend, use_backend
from seqarch.kernels.ssd import ssd, ssd_recurrence, ssd_reference

from helpers import mamba_ssm_module, relative_rms


def inputs(batch=1, length=7, heads=2, head_dim=4, groups=1, d_state=8, *, dtype=torch.float64, seed=0,
           transposed=False):
    """Mamba-2-like inputs: positive dt, negative A; ``transposed`` gives non-contiguous x, B, C (views of
    one projection, as the layer hands them over)."""
    gen = torch.Generator().manual_seed(seed)
    width = heads * head_dim + 2 * groups * d_state
    if transposed:
        packed = torch.randn(batch, width, length, generator=gen, dtype=torch.float64).transpose(1, 2)
    else:
        packed = torch.randn(batch, length, width, generator=gen, dtype=torch.float64)
    packed = packed.to(dtype)
    x, B, C = packed.split([heads * head_dim, groups * d_state, groups * d_state], dim=-1)
    x = x.unflatten(-1, (heads, head_dim))
    B, C = B.unflatten(-1, (groups, d_state)), C.unflatten(-1, (groups, d_state))
    dt = torch.nn.functional.softplus(torch.randn(batch, length, heads, generator=gen, dtype=torch.float64) - 1)
    A = -(0.5 + 2 * torch.rand(heads, generator=gen, dtype=torch.float64))
    state = torch.randn(batch, heads, head_dim, d_state, generator=gen, dtype=torch.float64)
    return x, dt.to(dtype), A, B, C, state


def run(fn, x, dt, A, B, C, state, grads=None, **options):
    """``(y, final)`` and, when ``grads=(dy, dfinal)``, the gradients of every input."""
    wrt = [t.detach().requires_grad_() for t in (x, dt, A, B, C, state)]
    y, final = fn(*wrt[:5], initial_state=wrt[5], **options)
    if grads is None:
        return y, final
    return (y, final, *torch.autograd.grad((y * grads[0]).sum() + (final * grads[1]).sum(), wrt))


@pytest.mark.parametrize("length", [1, 7, 100, 129])
@pytest.mark.parametrize("chunk_size", [16, 64, 5])
def test_twin_equals_the_float64_recurrence(length, chunk_size):
    x, dt, A, B, C, state = inputs(length=length, groups=2, heads=4)
    want_y, want_state = ssd_recurrence(x, dt, A, B, C, initial_state=state)
    y, final = ssd_reference(x, dt, A, B, C, chunk_size=chunk_size, initial_state=state)
    assert relative_rms(y, want_y) < 1e-12 and relative_rms(final, want_state) < 1e-12
    fresh, _ = ssd_reference(x, dt, A, B, C, chunk_size=chunk_size)
    assert relative_rms(fresh, ssd_recurrence(x, dt, A, B, C)[0]) < 1e-12


@pytest.mark.parametrize("length,groups,transposed", [(1, 1, False), (7, 2, True), (100, 1, True), (129, 2, False)])
def test_triton_matches_recurrence_and_twin_with_gradients(length, groups, transposed):
    x, dt, A, B, C, state = inputs(length=length, heads=4, groups=groups, transposed=transposed)
    gen = torch.Generator().manual_seed(1)
    grads = (torch.randn(x.shape, generator=gen, dtype=torch.float64),
             torch.randn(state.shape, generator=gen, dtype=torch.float64))
    want_y, want_state = ssd_recurrence(x, dt, A, B, C, initial_state=state)
    twin = run(ssd_reference, x, dt, A, B, C, state, grads, chunk_size=16)
    f32 = [t.float() for t in (x, dt, A, B, C, state)]
    if transposed:
        assert not f32[0].is_contiguous() and not f32[3].is_contiguous()
        f32[0] = f32[0].transpose(0, 1).contiguous().transpose(0, 1)  # other strides again
    with use_backend("triton"):
        assert backend("ssd", *f32[:5], chunk_size=16) == "triton"
        got = run(ssd, *f32, (grads[0].float(), grads[1].float()), chunk_size=16)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert relative_rms(got[0], want_y) < 1e-5 and relative_rms(got[1], want_state) < 1e-5
    names = ["y", "final", "dx", "ddt", "dA", "dB", "dC", "dstate"]
    for name, g, w in zip(names, got, twin):
        assert g.shape == w.shape, name
        assert relative_rms(g, w) < 1e-5, name


def test_triton_chunk_sizes_and_a_fresh_start_agree():
    x, dt, A, B, C, _ = inputs(length=40, heads=2, d_state=20, head_dim=20)  # two row tiles of state passing
    want, want_state = ssd_recurrence(x, dt, A, B, C)
    f32 = [t.float().requires_grad_() for t in (x, dt, A, B, C)]
    for chunk_size in (16, 32):
        with use_backend("triton"):
            y, final = ssd(*f32, chunk_size=chunk_size)
        assert relative_rms(y, want) < 1e-5 and relative_rms(final, want_state) < 1e-5
        y.sum().backward()  # no initial state: no gradient for it, the others come
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in f32)


def test_state_carries_across_calls():
    x, dt, A, B, C, state = inputs(length=50, heads=2)
    whole, whole_state = ssd_reference(x, dt, A, B, C, chunk_size=16, initial_state=state)
    first, mid = ssd_reference(x[:, :23], dt[:, :23], A, B[:, :23], C[:, :23], chunk_size=16, initial_state=state)
    second, end = ssd_reference(x[:, 23:], dt[:, 23:], A, B[:, 23:], C[:, 23:], chunk_size=16, initial_state=mid)
    assert relative_rms(torch.cat([first, second], 1), whole) < 1e-12
    assert relative_rms(end, whole_state) < 1e-12


def test_zero_sizes_are_empty_results():
    x, dt, A, B, C, state = inputs(length=5)
    for backend_name in ("auto", "triton"):
        with use_backend(backend_name):
            y, final = ssd(x[:0].float(), dt[:0].float(), A, B[:0].float(), C[:0].float())
            assert y.shape == (0, 5, 2, 4) and final.shape == (0, 2, 4, 8)
            # length 0: the state passes through
            y, final = ssd(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0], initial_state=state)
            assert y.shape == (1, 0, 2, 4) and torch.equal(final, state)
    # d_state 0: nothing is remembered, the output is zeros
    y, final = ssd(x, dt, A, B[..., :0], C[..., :0])
    assert torch.equal(y, torch.zeros_like(x)) and final.shape == (1, 2, 4, 0)


def test_bad_inputs_name_the_argument():
    x, dt, A, B, C, state = inputs(length=5, heads=4, groups=2)
    with pytest.raises(ValueError, match="x: expected rank 4"):
        ssd(x[0], dt, A, B, C)
    with pytest.raises(ValueError, match="dt: expected shape"):
        ssd(x, dt[:, :4], A, B, C)
    with pytest.raises(ValueError, match="A: expected"):
        ssd(x, dt, A[:3], B, C)
    with pytest.raises(ValueError, match="B: expected a number of groups dividing heads=4, got 3"):
        ssd(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1))
    with pytest.raises(ValueError, match="C: expected shape"):
        ssd(x, dt, A, B, C[..., :4])
    with pytest.raises(ValueError, match="C: expected dtype"):
        ssd(x, dt, A, B, C.float())
    with pytest.raises(ValueError, match="chunk_size"):
        ssd(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="initial_state"):
        ssd(x, dt, A, B, C, initial_state=state[:, :2])
    with pytest.raises(ValueError, match="x: expected dtype"):
        ssd(x.int(), dt, A, B, C)


def test_forced_triton_names_what_it_cannot_take():
    x, dt, A, B, C, _ = inputs(length=5)
    assert backend("ssd", x, dt, A, B, C) == "torch"  # CPU tensors under auto
    with use_backend("triton"), pytest.raises(ValueError, match="x: expected dtype float16, bfloat16 or float32"):
        ssd(x, dt, A, B, C)
    f32 = [t.float() for t in (x, dt, B, C)]
    with use_backend("triton"), pytest.raises(ValueError, match="chunk_size: expected one of"):
        ssd(f32[0], f32[1], A, f32[2], f32[3], chunk_size=24)
    # under auto the twin takes it
    y, _ = ssd(f32[0], f32[1], A, f32[2], f32[3], chunk_size=24)
    assert relative_rms(y, ssd_recurrence(x, dt, A, B, C)[0]) < 1e-5


def test_float32_at_a_shared_memory_footprint_past_an_h100_takes_the_twin():
    from seqarch.kernels import backend
    from seqarch.kernels.ssd import triton_limits

    x, dt = torch.randn(1, 8, 2, 64), torch.rand(1, 8, 2)
    A, B, C = -torch.rand(2), torch.randn(1, 8, 1, 128), torch.randn(1, 8, 1, 128)
    assert "float32 on the Triton path" in triton_limits(x, dt, A, B, C, chunk_size=64)
    assert triton_limits(x, dt, A, B, C, chunk_size=32) is None
    assert triton_limits(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), chunk_size=64) is None
    assert backend("ssd", x, dt, A, B, C, chunk_size=64) == "torch"


@pytest.mark.parametrize("with_state", [False, True])
def test_twin_equals_the_authors_minimal_ssd(with_state):
    """The Mamba-2 paper's Listing 1 (``ssd_minimal_discrete`` in the authors' package) on the same inputs:
    it takes the discretised ``x dt`` and ``A dt``, B and C per head, whole chunks only."""
    ssd_minimal_discrete = mamba_ssm_module("modules.ssd_minimal").ssd_minimal_discrete
    x, dt, A, B, C, state = inputs(2, 96, 4, 8, 2, 16)
    y, final = ssd_reference(x, dt, A, B, C, chunk_size=32, initial_state=state if with_state else None)
    per_head = {"B": B.repeat_interleave(2, dim=2), "C": C.repeat_interleave(2, dim=2)}  # group h // 2
    y_ref, final_ref = ssd_minimal_discrete(x * dt[..., None], A * dt, per_head["B"], per_head["C"], 32,
                                            initial_states=state[:, None] if with_state else None)
    assert relative_rms(y, y_ref) < 1e-10 and relative_rms(final, final_ref) < 1e-10
