"""The chunked linear attention Triton kernels (under the interpreter without a GPU) against the PyTorch
twin and the float64 token-by-token recurrence: every decay kind, odd lengths, batch 1, strided
inputs, states passed in and out, gradients of every input, zero-size calls and forced-backend errors."""

from __future__ import annotations

import pytest
import torch

from seqarch.kernels import backend
from seqarch.kernels.backend import use_backend
from seqarch.kernels.chunked_linear_attention import (
    chunked_linear_attention,
    chunked_linear_attention_reference,
    linear_attention_recurrence,
    linear_attention_step,
)

from helpers import needs_triton, relative_rms

pytestmark = needs_triton


def make(batch, heads, length, d_k, d_v, decay, *, strided=False, with_state=True, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        if strided:  # a view with the last two axes swapped: no unit stride on the last axis
            return torch.randn(*shape[:-2], shape[-1], shape[-2], generator=generator).transpose(-1, -2)
        return torch.randn(*shape, generator=generator)

    q, k, v = (rand(batch, heads, length, d_k) * 0.5, rand(batch, heads, length, d_k) * 0.5,
               rand(batch, heads, length, d_v))
    g = {None: None, "head": lambda: -torch.rand(batch, heads, length, generator=generator),
         "channel": lambda: -rand(batch, heads, length, d_k).abs()}[decay]
    g = g() if callable(g) else g
    s0 = torch.randn(batch, heads, d_k, d_v, generator=generator) if with_state else None
    return [t if t is None else t.requires_grad_() for t in (q, k, v, g, s0)]


def run(inputs, choice):
    leaves = [t if t is None else t.detach().clone().requires_grad_() for t in inputs]
    with use_backend(choice):
        out, state = chunked_linear_attention(*leaves)
    generator = torch.Generator().manual_seed(1)
    ((out * torch.randn(out.shape, generator=generator)).sum()
     + (state * torch.randn(state.shape, generator=generator)).sum()).backward()
    return out, state, [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("decay", [None, "head", "channel"])
@pytest.mark.parametrize("shape", [(1, 2, 37, 8, 24), (2, 1, 16, 5, 70)])
def test_kernel_matches_twin_forward_and_backward(decay, shape):
    inputs = make(*shape, decay)
    out, state, grads = run(inputs, "triton")
    ref_out, ref_state, ref_grads = run(inputs, "torch")
    assert relative_rms(out, ref_out) < 1e-5 and relative_rms(state, ref_state) < 1e-5
    for got, expected in zip(grads, ref_grads):
        if expected is not None:
            assert relative_rms(got, expected) < 1e-5


@pytest.mark.parametrize("decay", ["head", "channel"])
def test_kernel_matches_the_float64_recurrence_on_strided_inputs_without_a_state(decay):
    inputs = make(1, 2, 21, 8, 16, decay, strided=True, with_state=False)
    assert not inputs[0].is_contiguous()
    with use_backend("triton"):
        out, state = chunked_linear_attention(*inputs)
    expected, expected_state = linear_attention_recurrence(*(None if t is None else t.double() for t in inputs))
    assert relative_rms(out.double(), expected) < 1e-5
    assert relative_rms(state.double(), expected_state) < 1e-5


def test_states_chain_across_calls():
    q, k, v, g, _ = (None if t is None else t.detach() for t in make(1, 2, 40, 8, 16, "channel"))
    with use_backend("triton"):
        whole, final = chunked_linear_attention(q, k, v, g)
        first, middle = chunked_linear_attention(q[:, :, :19], k[:, :, :19], v[:, :, :19], g[:, :, :19])
        second, chained = chunked_linear_attention(q[:, :, 19:], k[:, :, 19:], v[:, :, 19:], g[:, :, 19:], middle)
    assert relative_rms(torch.cat([first, second], 2), whole) < 1e-5
    assert relative_rms(chained, final) < 1e-5


@pytest.mark.parametrize("choice", ["triton", "torch"])
def test_zero_size_calls(choice):
    q, k, v, g, s0 = (t.detach() for t in make(1, 2, 0, 8, 16, "channel"))
    with use_backend(choice):
        out, state = chunked_linear_attention(q, k, v, g, s0)
        empty_batch, empty_state = chunked_linear_attention(q[:0], k[:0], v[:0])
    assert out.shape == (1, 2, 0, 16) and torch.equal(state, s0)
    assert empty_batch.shape == (0, 2, 0, 16) and empty_state.shape == (0, 2, 8, 16)


def test_forced_triton_names_what_it_cannot_take():
    q, k, v, _, _ = (None if t is None else t.detach().double() for t in make(1, 1, 5, 8, 16, None))
    with use_backend("triton"), pytest.raises(ValueError, match="q: expected dtype"):
        chunked_linear_attention(q, k, v)
    wide = torch.randn(1, 1, 5, 130)
    with use_backend("triton"), pytest.raises(ValueError, match="q: expected d_k <= 128"):
        chunked_linear_attention(wide, wide, torch.randn(1, 1, 5, 4))
    assert backend("chunked_linear_attention", q.float(), k.float(), v.float()) in ("triton", "torch")


def test_twin_is_the_cpu_path_under_auto():
    q, k, v, g, s0 = (t.detach() for t in make(1, 2, 9, 8, 16, "head"))
    out, state = chunked_linear_attention(q, k, v, g, s0)
    ref, ref_state = chunked_linear_attention_reference(q, k, v, g, s0)
    assert torch.equal(out, ref) and torch.equal(state, ref_state)


@pytest.mark.parametrize("decay", [None, "head", "channel"])
def test_one_token_step_in_place_equals_the_new_state_step_in_every_input_dtype(decay):
    """``linear_attention_step(..., inplace=True)`` (what a decoding step without autograd runs) writes
    the new state into the one it was given and returns the same output as the step that makes a new
    state; both return the output in the values' dtype and the state in the state dtype."""
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(2, 3, 8).to(dtype) for _ in range(3))
        log_decay = {None: None, "head": -torch.rand(2, 3), "channel": -torch.rand(2, 3, 8)}[decay]
        state = torch.randn(2, 3, 8, 8)
        o_new, new = linear_attention_step(q, k, v, log_decay, state.clone())
        given = state.clone()
        o_in, written = linear_attention_step(q, k, v, log_decay, given, inplace=True)
        assert written is given and o_in.dtype == o_new.dtype == dtype and new.dtype == torch.float32
        torch.testing.assert_close(written, new, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(o_in, o_new, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-5)
