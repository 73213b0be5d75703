"""Kernel generators: where a long-convolution layer's kernels come from.

A long-convolution layer (S4, S4D, Hyena / Monarch Mixer, ...) is one layer shell,
:class:`seqarch.mixers.long_conv.LongConv`, around a generator of its convolution
kernels, as in the reference S4 code (an ``FFTConv`` layer over a registry of
kernels).  A generator owns only the kernel's parameters and maths:

``forward(length, dtype=None)``
    real ``(directions, channels, length)``: ``directions`` is 1 (causal: ``k[0, c, s]``
    weighs the input ``s`` steps back) or 2 (bidirectional: ``k[1]`` weighs the
    input ``s`` steps ahead, its tap 0 unused), the layout ``ssm_conv`` takes.
    Computed in ``compute_dtype(dtype)`` (default: the parameters' dtype).
``max_length``
    the longest kernel it makes (``None``: any length); a kernel of length ``L`` is
    exactly the first ``L`` taps of a longer one.
``flops(length)``
    ``{"matmul", "fft", "other"}`` FLOPs of ``forward(length)`` (keys as in
    :meth:`seqarch.mixers.base.Mixer.flops_breakdown`).  All of it is work done once per
    layer call whatever the batch (the kernel does not depend on the input): the layer
    reports it in its ``shared_flops_breakdown``, never per sequence.

Generators with an exact finite-state recurrence (``recurrent = True``: the SSMs)
also run the causal kernel as one, for channels ``u: (batch, channels)``:
``init_state(batch_size, device, dtype) -> dict``, ``step(u_t, state) -> (y_t, state)``
with ``y_t = sum_{s<=t} k[0, :, s] u_{t-s}``, ``prefill(u, state, fresh) -> (readout,
state)`` for a chunk ``u: (batch, channels, length)`` (``readout``: what the incoming
state adds to the chunk's outputs, ``None`` when ``fresh``) and ``state_size()``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from ..checks import check_choice, check_positive_int, check_real
from ..precision import compute_dtype

PARAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


#: The kernel parameters' learning rate as a multiple of the run's (``train.lr``). 0.5 keeps the shipped
#: experiments near the absolute 1e-3 these parameters used to get: lm_small (lr 2e-3) exactly, mqar
#: (3e-3) at 1.5e-3, listops (1e-3) at 5e-4; S4's recipes train the SSM at a fraction of the model's rate.
DEFAULT_LR_SCALE = 0.5


def check_lr_scale(lr_scale: Any) -> float | None:
    """An optimizer hint: ``None`` (the run's learning rate) or a positive multiple of it."""
    if lr_scale is None:
        return None
    return check_real("lr_scale", lr_scale, low=0.0, expected="None or a positive multiple of train.lr")


def check_param_dtype(dtype: Any) -> torch.dtype | None:
    """``None`` or a floating parameter dtype (float32, float64, bfloat16, float16)."""
    if dtype is not None and dtype not in PARAM_DTYPES:
        raise ValueError(f"dtype: expected a floating torch.dtype ({', '.join(map(str, PARAM_DTYPES))}) or None, "
                         f"got {dtype!r}")
    return dtype


def tag_optim(params: Iterable[nn.Parameter], lr_scale: float | None) -> None:
    """Mark kernel parameters for their own optimizer group: no weight decay and, unless
    ``lr_scale`` is None, ``lr_scale`` times the run's learning rate (read by
    :mod:`seqarch.training.optim`), so a learning-rate sweep moves them with the rest."""
    hint = {"weight_decay": 0.0} if lr_scale is None else {"lr_scale": lr_scale, "weight_decay": 0.0}
    for param in params:
        param._optim = dict(hint)


class KernelGenerator(nn.Module, abc.ABC):
    """Base class of kernel generators: ``forward(length) -> (directions, channels, length)``.

    Args:
        channels: kernels per direction (the layer's convolution channels).
        directions: 1 (causal) or 2 (a forward and a backward kernel).
        max_length: longest kernel (``None``: no limit).
    """

    recurrent: ClassVar[bool] = False

    def __init__(self, channels: int, *, directions: int = 1, max_length: int | None = None) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.directions = check_choice("directions", directions, (1, 2))
        self.max_length = None if max_length is None else check_positive_int("max_length", max_length)

    def check_length(self, length: int, argument: str = "length") -> int:
        """Return ``length`` if it is a positive int within ``max_length``, else raise a ValueError."""
        check_positive_int(argument, length)
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"{argument}: expected a length of at most max_length={self.max_length}, got {length}")
        return length

    def work_dtype(self, dtype: torch.dtype | None) -> torch.dtype:
        """``compute_dtype`` of ``dtype``, or of the parameters' dtype when ``dtype`` is None."""
        return compute_dtype(dtype if dtype is not None else next(self.parameters()).dtype)

    @abc.abstractmethod
    def forward(self, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The kernel ``(directions, channels, length)`` in ``work_dtype(dtype)``."""

    @abc.abstractmethod
    def flops(self, length: int) -> dict[str, int]:
        """FLOPs of ``forward(length)`` by kind (``matmul``, ``fft``, ``other``), once per call."""

    # -- recurrence (recurrent generators only) ----------------------------------------
    def init_state(self, batch_size: int, *, device: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        raise ValueError(f"init_state: {type(self).__name__} has no finite-state recurrence")

    def step_matrices(self, work: torch.dtype) -> Any:
        """What :meth:`step` derives from the parameters in real dtype ``work``, once per parameter version."""
        raise ValueError(f"step_matrices: {type(self).__name__} has no finite-state recurrence")

    def step(self, u_t: torch.Tensor, state: dict, matrices: Any = None) -> tuple[torch.Tensor, dict]:
        """One token ``u_t: (rows, channels)`` (``matrices``: :meth:`step_matrices` of ``u_t``'s dtype,
        or None to derive them here)."""
        raise ValueError(f"step: {type(self).__name__} has no finite-state recurrence")

    def prefill(self, u: torch.Tensor, state: dict, fresh: bool) -> tuple[torch.Tensor | None, dict]:
        raise ValueError(f"prefill: {type(self).__name__} has no finite-state recurrence")

    def state_size(self) -> int:
        raise ValueError(f"state_size: {type(self).__name__} has no finite-state recurrence")
