"""Triton kernels for seqarch's hot paths, installed as ``seqarch.kernels``.

One module per op; each holds the Triton forward and backward kernels, the
PyTorch reference twin, the autograd wrapper and one public function. Calls on
CUDA tensors run Triton (when it imports), other calls run the twin;
``SEQARCH_KERNELS=auto|triton|torch`` or :func:`use_backend` forces a choice and
:func:`backend` says which one a call would take.
"""

from .backend import BACKENDS, backend, interpreting, triton_available, use_backend

__all__ = ["BACKENDS", "backend", "interpreting", "triton_available", "use_backend"]
