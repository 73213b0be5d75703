"""Hyena (Poli et al., "Hyena Hierarchy", ICML 2023) and its distilled, constant-cost form.

:class:`Hyena` is the Hyena operator of order ``N`` as a configuration of
:class:`~seqarch.mixers.long_conv.LongConv`: ``in_proj`` to ``N + 1`` streams, a short
causal depthwise convolution, ``N - 1`` gated long convolutions with implicit filters
(:class:`~seqarch.modules.implicit_filter.ImplicitKernel`) computed by FFT, the last gate
and ``out_proj``.  ``causal=False`` trains a forward and a backward filter.  The Monarch
Mixer's sequence mixer (:mod:`seqarch.mixers.m2`) is its order-2 case with M2's settings.

The step is exact but not constant-cost: an implicit filter has no finite recurrent
state, so a step at position ``t`` reads the ``t + 1`` gated inputs seen so far.

:func:`distill_hyena` (Massaroli et al., "Laughing Hyena Distillery", NeurIPS 2023) fits
each trained filter with a diagonal SSM (:mod:`seqarch.modules.modal_filter`) and returns a
:class:`ModalHyena`, the same operator with S4D kernels
(:class:`~seqarch.modules.diagonal_ssm.DiagonalSSMKernel`): an O(1) step, its state
``d_state`` numbers per convolution channel, and the distillation errors on the filter and
on the layer's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..checks import check_nonnegative_int, check_positive_int
from ..modules.diagonal_ssm import DiagonalSSMKernel
from ..modules.implicit_filter import ImplicitKernel, check_decay, check_emb_dim
from ..modules.kernel_generator import DEFAULT_LR_SCALE
from ..modules.modal_filter import fit_modal, relative_error
from .base import register_mixer
from .long_conv import LongConv


@register_mixer("hyena")
class Hyena(LongConv):
    """Hyena operator of order ``N``: ``(batch, length, d_model)`` -> same shape.

    ``x_0 .. x_{N-1}, v`` from ``in_proj(x)`` and a short causal depthwise conv;
    ``v <- k_i * (x_{N-1-i} v) + D_i x_{N-1-i} v`` for ``i < N - 1``;
    ``y = out_proj(dropout(x_0 v))`` with implicit filters ``k_i``.

    Args:
        d_model: width.
        order: the operator's order ``N >= 2`` (Hyena: 2).
        causal: causal (True) or bidirectional with forward and backward filters (False).
        max_length: longest sequence; the filters' positions are normalised by it.
        short_kernel: taps of the short depthwise conv (Hyena: 3).
        filter_order: hidden width of the filter MLP (Hyena: 64).
        filter_emb_dim: positional features (odd, >= 3; Hyena: 3).
        filter_inner: inner ``Linear, sin`` layers of the filter MLP (Hyena: 2).
        filter_decay: ``(fast, slow)`` fractions of ``max_length`` over which the fastest /
            slowest channel's window decays to 1e-2 (Hyena: 0.3, 1.5).
        dropout: on the gated output before ``out_proj``.
        lr_scale: learning rate of the filter parameters as a multiple of the run's (``_optim``).
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "hyena": {"description": "Hyena (Poli et al. 2023): the order-2 Hyena operator with a SwiGLU channel mixer",
                  "channel_mixer": "glu"},
    }

    kernel_class = ImplicitKernel

    def __init__(self, d_model: int, *, order: int = 2, causal: bool = True, max_length: int = 2048,
                 short_kernel: int = 3, filter_order: int = 64, filter_emb_dim: int = 3, filter_inner: int = 2,
                 filter_decay: tuple[float, float] = (0.3, 1.5), dropout: float = 0.0,
                 lr_scale: float = DEFAULT_LR_SCALE, device: Any = None, dtype: torch.dtype | None = None,
                 layer_idx: int | None = None) -> None:
        # The filter's own checks would name its arguments (order, ...): name this layer's.
        check_positive_int("filter_order", filter_order)
        check_emb_dim("filter_emb_dim", filter_emb_dim)
        check_nonnegative_int("filter_inner", filter_inner)
        check_decay("filter_decay", filter_decay)
        kernel = {"max_length": max_length, "order": filter_order, "emb_dim": filter_emb_dim,
                  "num_inner": filter_inner, "decay": filter_decay, "lr_scale": lr_scale}
        super().__init__(d_model, kernel, causal=causal, order=order, short_kernel=short_kernel, dropout=dropout,
                         device=device, dtype=dtype, layer_idx=layer_idx)


@register_mixer("hyena_modal")
class ModalHyena(LongConv):
    """Hyena operator of order ``N`` with modal (diagonal SSM, S4D) long filters:
    ``(batch, length, d_model)`` -> same shape, with a fixed-size recurrent state.

    What :func:`distill_hyena` returns; built directly, its filters start as S4D's.

    Args:
        d_model: width.
        order: the operator's order ``N >= 2``.
        d_state: real state size per convolution channel (``d_state / 2`` complex modes).
        causal: causal (True) or bidirectional (two read-outs of the SSM, no step).
        max_length: longest sequence (``None``: any; a distilled layer keeps its Hyena's).
        short_kernel: taps of the short depthwise conv.
        init, dt_min, dt_max, lr_scale: the S4D kernel's (see :class:`~seqarch.mixers.s4d.S4D`).
        dropout: on the gated output before ``out_proj``.
    """

    kernel_class = DiagonalSSMKernel

    def __init__(self, d_model: int, *, order: int = 2, d_state: int = 16, causal: bool = True,
                 max_length: int | None = None, short_kernel: int = 3, init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, lr_scale: float | None = DEFAULT_LR_SCALE, dropout: float = 0.0,
                 device: Any = None, dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        kernel = {"d_state": d_state, "init": init, "dt_min": dt_min, "dt_max": dt_max, "lr_scale": lr_scale,
                  "max_length": max_length}
        super().__init__(d_model, kernel, causal=causal, order=order, short_kernel=short_kernel, dropout=dropout,
                         device=device, dtype=dtype, layer_idx=layer_idx)
        self.d_state = d_state

    @torch.no_grad()
    def set_modes(self, log_z: torch.Tensor, residues: torch.Tensor) -> None:
        """Make the kernel ``2 Re(sum_n r z^t)``: complex ``(channels, d_state / 2)`` modes ``log z``
        (negative real parts) and residues.  With ``dt = 1``, ``A = log z`` and ``C = r / B-bar``
        the S4D kernel ``2 Re(C B-bar z^t)`` is exactly that."""
        kernel = self.kernel
        expected = (kernel.channels, kernel.d_state // 2)
        for name, value in (("log_z", log_z), ("residues", residues)):
            if not isinstance(value, torch.Tensor) or not value.is_complex() or tuple(value.shape) != expected:
                got = f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else value
                raise ValueError(f"{name}: expected complex of shape {expected}, got {got}")
        if not bool((log_z.real < 0).all()):
            raise ValueError("log_z: expected negative real parts (stable modes), got some >= 0")
        log_z, residues = log_z.to(torch.complex128), residues.to(torch.complex128)
        b_bar = torch.expm1(log_z) / log_z
        kernel.log_dt.zero_()
        kernel.log_a_real.copy_(torch.log(-log_z.real))
        kernel.a_imag.copy_(log_z.imag)
        kernel.C.copy_(torch.view_as_real(residues / b_bar).unsqueeze(0).expand_as(kernel.C))


@dataclass(frozen=True)
class DistillationReport:
    """How close the distilled layer is to its Hyena.

    Attributes:
        filter_error: relative L2 error of the distilled filters (all channels, the first ``length`` taps).
        output_error: relative L2 error of the distilled layer's output on the evaluation input.
        d_state: the distilled layer's real state size per convolution channel.
        length: filter taps fitted (the Hyena's ``max_length``).
    """

    filter_error: float
    output_error: float
    d_state: int
    length: int


def distill_hyena(mixer: Hyena, *, d_state: int = 16, steps: int = 20, lr: float = 1e-3,
                  x: torch.Tensor | None = None, seed: int = 0) -> tuple[ModalHyena, DistillationReport]:
    """Distill a causal :class:`Hyena` (or M2) into a :class:`ModalHyena` with an O(1) step.

    Each of the ``(order - 1) * d_model`` filters (without the skip ``D``, which is kept)
    is fitted on its ``max_length`` taps by :func:`seqarch.modules.modal_filter.fit_modal`
    with ``d_state / 2`` complex modes; projections, short conv and skips are copied.

    Args:
        mixer: the Hyena to distill (causal).
        d_state: real state size per channel of the distilled filters (even).
        steps, lr: Adam refinement of the fit (see ``fit_modal``).
        x: ``(batch, length, d_model)`` input on which the output error is measured
            (default: standard normal, batch 2, ``max_length`` tokens, drawn from ``seed``).
    Returns:
        ``(distilled, report)``; ``distilled`` is in eval mode, on the mixer's device and dtype.
    """
    if not isinstance(mixer, Hyena):
        raise ValueError(f"mixer: expected a Hyena (or M2) mixer, got {type(mixer).__name__}")
    if not mixer.causal:
        raise ValueError("mixer: expected a causal Hyena (causal=True); a bidirectional one has no step to speed up")
    if not isinstance(d_state, int) or isinstance(d_state, bool) or d_state < 2 or d_state % 2:
        raise ValueError(f"d_state: expected an even positive int (conjugate pairs), got {d_state!r}")
    reference = next(mixer.parameters())
    length = mixer.max_length
    with torch.no_grad():
        target = mixer.kernel(length, torch.float64)[0]
    fit = fit_modal(target, d_state // 2, steps=steps, lr=lr)
    distilled = ModalHyena(mixer.d_model, order=mixer.order, d_state=d_state, max_length=length,
                           short_kernel=mixer.short_kernel, dropout=mixer.dropout.p, device=reference.device,
                           dtype=reference.dtype)
    for part in ("in_proj", "short_conv", "out_proj"):
        getattr(distilled, part).load_state_dict(getattr(mixer, part).state_dict())
    with torch.no_grad():
        distilled.skip.copy_(mixer.skip)
    distilled.set_modes(fit.log_z, fit.residues)
    distilled.eval()
    if x is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn(2, length, mixer.d_model, generator=generator, dtype=torch.float64)
        x = x.to(device=reference.device, dtype=reference.dtype)
    mixer.check_sequence(x)
    was_training = mixer.training
    mixer.eval()
    with torch.no_grad():
        filter_error = relative_error(distilled.kernel(length, torch.float64)[0], target)
        output_error = relative_error(distilled(x).double(), mixer(x).double())
    mixer.train(was_training)
    if not math.isfinite(output_error):
        raise ValueError(f"mixer: the distilled layer's output is not finite (filter error {filter_error})")
    return distilled, DistillationReport(filter_error, output_error, d_state, length)
