"""Helpers shared by the test modules (``from helpers import relative_rms``)."""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``rms(actual - expected) / rms(expected)``, computed in float64 (complex: on magnitudes).

    The one closeness measure of the suite: scale-free, so one tolerance serves
    every shape, and robust to a single large entry in a way a max-norm is not.
    """
    actual, expected = actual.detach(), expected.detach()
    wide = torch.complex128 if (actual.is_complex() or expected.is_complex()) else torch.float64
    actual, expected = actual.to(wide), expected.to(wide)
    return float((actual - expected).abs().pow(2).mean().sqrt() / expected.abs().pow(2).mean().sqrt().clamp_min(1e-300))


def run_steps(mixer, x: torch.Tensor, state) -> tuple[torch.Tensor, object]:
    """``mixer.step`` over every position of ``x: (batch, length, d_model)``, from ``state``:
    the outputs stacked as ``(batch, length, d_model)`` and the final state."""
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state


# -- FLOP counting (tests/test_flop_accounting.py, tests/test_budget.py) ------------------------------
aten = torch.ops.aten


class FFTCounter(TorchDispatchMode):
    """FLOPs of the FFT calls made under it: ``5 n log2 n`` per complex transform of size ``n``, half
    that per real-to-complex or complex-to-real one (the convention of ``seqarch.modules.fft_flops``)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in (aten._fft_r2c, aten._fft_c2c, aten._fft_c2r):
            real = packet is aten._fft_c2r
            signal = out if real else args[0]  # the real (or complex) side of full size n
            n = math.prod(signal.shape[d] for d in args[1])
            per_row = 5 * n * math.log2(max(n, 2)) * (1 if packet is aten._fft_c2c else 0.5)
            self.flops += per_row * signal.numel() / n
        return out


def _pairs(query_shape, key_shape, is_causal: bool) -> int:
    length_q, length_kv = query_shape[-2], key_shape[-2]
    if is_causal and length_q == length_kv:
        return length_q * (length_q + 1) // 2
    return length_q * length_kv


def _sdpa_cpu(query, key, value, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs) -> int:
    """Forward: ``4 d_head`` per (query, key) pair the kernel computes, per batch row and head."""
    batch_heads = math.prod(query[:-2])
    return 4 * batch_heads * _pairs(query, key, is_causal) * query[-1]


def _sdpa_cpu_backward(grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False, *args,
                       out_shape=None, **kwargs) -> int:
    """Backward: twice the forward (dQ, dK, dV and dP), the recomputed scores left out."""
    return 2 * _sdpa_cpu(query, key, value, dropout_p, is_causal)


def _conv_backward(grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups,
                   output_mask, out_shape=None) -> int:
    """One forward convolution's FLOPs per gradient computed (input, weight); groups as the forward."""
    forward = conv_flop_count(x, weight, grad_out, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


FLOP_MAPPING = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
    aten.convolution_backward: _conv_backward,
}
