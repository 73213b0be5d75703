"""Triton kernels for seqarch's hot paths, installed as ``seqarch.kernels``.

One module per op; each holds the Triton forward and backward kernels, the
PyTorch reference twin, the autograd wrapper and one public function (imported from its module, e.g.
``from seqarch.kernels.fft_conv import fft_conv``: the package does not re-export
them, so that each name keeps meaning its module):

- ``attention.attention`` - fused (flash) softmax attention, causal or not, grouped-query heads;
- ``monarch_matmul.monarch_matmul`` - block-diagonal, stride permutation, block-diagonal, fused;
- ``fft_conv.fft_conv`` - long convolution by the Monarch decomposition of the DFT, fused gates;
- ``ssm_kernel.vandermonde_kernel``, ``ssm_kernel.cauchy_kernel`` - the S4D and S4 SSM kernels
  without the ``(channels, state, length)`` tensor;
- ``short_conv.short_conv`` - causal depthwise convolution with 1 to 8 taps.

Calls on CUDA tensors run Triton (when it imports), other calls run the twin;
``SEQARCH_KERNELS=auto|triton|torch`` or :func:`use_backend` forces a choice and
:func:`backend` says which one a call would take.
"""

from .backend import BACKENDS, backend, interpreting, triton_available, use_backend

__all__ = ["BACKENDS", "backend", "interpreting", "triton_available", "use_backend"]
