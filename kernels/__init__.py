"""Triton kernels for seqarch's hot paths, installed as ``seqarch.kernels``.

Layout: one module per op, each holding everything about it and named alike:

- the Triton forward and backward kernels and their launchers;
- the PyTorch twin ``<op>_reference`` (same arguments, same result) and, for benchmarks,
  an off-the-shelf baseline ``offtheshelf_<op>``;
- the autograd wrapper of the Triton path, ``<Op>Function``;
- ``triton_limits(<the op's arguments>) -> str | None``: why the Triton path cannot take a
  call (or None), which :mod:`.backend` consults;
- one public function, imported from its module (``from seqarch.kernels.fft_conv import
  fft_conv``: the package does not re-export them, so that each name keeps meaning its module).

The ops:

- ``attention.attention`` - fused (flash) softmax attention, causal or not, grouped-query heads;
- ``monarch_matmul.monarch_matmul`` - block-diagonal, stride permutation, block-diagonal, fused;
- ``fft_conv.fft_conv`` - long convolution by the Monarch decomposition of the DFT, fused gates;
- ``ssm_kernel.vandermonde_kernel``, ``ssm_kernel.cauchy_kernel`` - the S4D and S4 SSM kernels
  without the ``(channels, state, length)`` tensor (one module: they share the complex
  arithmetic helpers; their limits are ``vandermonde_triton_limits``, ``cauchy_triton_limits``);
- ``short_conv.short_conv`` - causal depthwise convolution with 1 to 8 taps;
- ``selective_scan.selective_scan`` - Mamba's selective scan without the ``(batch, channels, length,
  state)`` tensor, float32 state, initial state in and last state out.
- ``ssd.ssd`` - Mamba-2's SSD scan (chunk states, state passing, chunk scan), initial and final states.
- ``chunked_linear_attention.chunked_linear_attention`` - causal linear attention in chunks, with an optional
  per-head (RetNet) or per-key-channel (GLA) decay, initial and final states;
- ``delta_rule.delta_rule`` - the chunked (gated) delta rule of DeltaNet and Gated DeltaNet, WY form, initial
  and final states.

Why a module per op and not a folder per op (``ops/<op>/{chunk, fused_recurrent, naive}.py``
as flash-linear-attention keeps them): each op here has one Triton algorithm, and its
kernels, twin and wrapper (230 to 560 lines) read best together; a folder would split
every op into three small files that always change together.  When an op gains a second
Triton algorithm (say a chunked and a recurrent form), that op becomes a folder with one
module per algorithm and its public function in the folder's ``__init__``, without
changing its import path.

Shared pieces: :mod:`.backend` alone decides which path a call takes (Triton on CUDA
tensors within the op's limits, the twin otherwise; ``SEQARCH_KERNELS=auto|triton|torch``
or :func:`use_backend` forces a choice, forced ``triton`` raises ``ValueError`` for a call
the Triton path cannot take, and :func:`backend` says which path a call takes);
:mod:`.tensor_checks` holds the dtype and device checks every op makes, and the empty
result of a call with nothing to compute.
"""



def _hand_the_name_to_the_installed_kernels() -> None:
    """Load the installed top-level ``kernels`` package into ``sys.modules`` in this folder's place.

    Python puts the working directory on ``sys.path`` for ``python -m ...``, so from a checkout's
    root ``import kernels`` finds this folder before site-packages.  That name belongs to Hugging
    Face's ``kernels`` distribution, which transformers requires (from 5.25) and imports: without
    the hand-over, importing transformers' models from a checkout fails.  Replacing the
    ``sys.modules`` entry while the import runs is what importlib returns to the importer.
    """
    import importlib.machinery
    import importlib.util
    import os
    import sys

    checkout = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    elsewhere = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != checkout]
    spec = importlib.machinery.PathFinder.find_spec("kernels", elsewhere)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            "No module named 'kernels': the kernels/ folder of this checkout is seqarch.kernels, "
            "not a top-level package",
            name="kernels",
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["kernels"]
        raise


if __name__ == "kernels":  # imported by its folder's name from a checkout's root, not as seqarch.kernels
    _hand_the_name_to_the_installed_kernels()
else:
    from .backend import BACKENDS, OPS, backend, interpreting, select, triton_available, use_backend

__all__ = ["BACKENDS", "OPS", "backend", "interpreting", "select", "triton_available", "use_backend"]
