"""FLOPs of a real forward and backward, counted, to check the analytic ones (:mod:`seqarch.flops`).

Matrix products and convolutions are counted by ``torch.utils.flop_counter.FlopCounterMode``,
FFTs by a dispatch mode (:class:`FFTCounter`: ``5 n log2 n`` per complex transform, half per real
one). Two corrections to FlopCounterMode, in :data:`FLOP_MAPPING`: it counts CPU SDPA as 0, so
SDPA's CPU kernels are counted by formula (the score pairs the kernel computes: causal ``L (L + 1)
/ 2``, else every pair; backward twice the forward, the model FLOPs without the recomputed scores);
and it overcounts the backward of grouped (depthwise) convolutions, so a convolution's backward is
one forward per gradient it computes. Elementwise work is not counted.
"""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

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


def counted_training_step(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, float]:
    """Counted FLOPs of ``model.loss(tokens, tokens).backward()`` (a language model's training step):
    ``{"matmul_conv": FlopCounterMode's total, "fft": FFTCounter's}``."""
    counter, ffts = FlopCounterMode(display=False, custom_mapping=FLOP_MAPPING), FFTCounter()
    with counter, ffts:
        model.loss(tokens, tokens).backward()
    return {"matmul_conv": float(counter.get_total_flops()), "fft": ffts.flops}
