"""Mamba-2 (Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", ICML 2024, arXiv 2405.21060).

A selective state-space layer whose transition is one scalar decay per head: ``in_proj``
maps ``x`` to ``(z, x, B, C, dt)`` with ``d_inner = expand * d_model`` channels; a causal
depthwise convolution and a SiLU run over ``(x, B, C)`` together; per head,
``dt = softplus(dt + dt_bias)`` and ``A = -exp(A_log)``, and the SSD scan
(:func:`seqarch.kernels.ssd.ssd`) runs ``H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T``,
``y_t = H_t C_t + D x_t`` over ``(head_dim, d_state)`` states, ``B`` and ``C`` shared by the
heads of each of ``ngroups`` groups; then ``out_proj(RMSNorm(y * SiLU(z)))``.

The parallel form is the chunked SSD algorithm (quadratic inside chunks, state passing
between them); the recurrent form keeps the convolution's last ``conv_kernel - 1`` inputs and
the SSM state, so a step costs the same at every position.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_bool, check_divides, check_positive_int, check_range_pair, check_real
from ..kernels.ssd import DEFAULT_CHUNK_SIZE, ssd, ssd_flops
from ..modules.kernel_generator import tag_optim
from ..modules.norm import GatedRMSNorm
from ..modules.parameter_cache import cached
from ..modules.short_conv import ShortConv
from ..precision import compute_dtype
from .base import Mixer, State, register_mixer

# FLOPs per element of the elementwise work (SiLU ~ exp, add, divide, multiply; softplus ~ exp, log1p, add).
SILU_FLOPS, SOFTPLUS_FLOPS = 4, 4


@register_mixer("mamba2")
class Mamba2(Mixer):
    """The Mamba-2 mixer.  ``(batch, length, d_model)`` -> same shape; causal only.

    Args:
        d_model: width.
        d_state: state size per head (the paper: 64 or 128).
        head_dim: channels per head (the paper: 64); must divide ``expand * d_model``.
        expand: ``d_inner = expand * d_model``.
        ngroups: groups of heads sharing ``B`` and ``C``; must divide the heads.
        conv_kernel: taps of the causal depthwise convolution over ``(x, B, C)``.
        chunk_size: positions per chunk of the SSD algorithm (a speed setting, not a model one).
        dt_range: ``(dt_min, dt_max)``: ``dt`` starts log-uniform in this range.
        dt_init_floor: the smallest initial ``dt``.
        A_init_range: ``-A`` starts uniform in this range.
        bias: biases in ``in_proj`` and ``out_proj``.
        conv_bias: a bias in the convolution.
        causal: must be True (Mamba-2 has no bidirectional form here).
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "mamba2": {"description": "Mamba-2 (Dao & Gu 2024): SSD blocks with no channel mixer",
                   "channel_mixer": "none"},
    }

    has_bidirectional_form = False
    has_fixed_size_state = True
    step_reads_position = False

    def __init__(self, d_model: int, *, d_state: int = 128, head_dim: int = 64, expand: int = 2, ngroups: int = 1,
                 conv_kernel: int = 4, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 dt_range: tuple[float, float] = (1e-3, 1e-1), dt_init_floor: float = 1e-4,
                 A_init_range: tuple[float, float] = (1.0, 16.0), bias: bool = False, conv_bias: bool = True,
                 causal: bool = True, device: Any = None, dtype: torch.dtype | None = None,
                 layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        self.d_state = check_positive_int("d_state", d_state)
        self.head_dim = check_positive_int("head_dim", head_dim)
        self.expand = check_positive_int("expand", expand)
        self.d_inner = expand * d_model
        check_divides("head_dim", head_dim, "d_inner (expand * d_model)", self.d_inner)
        self.n_heads = self.d_inner // head_dim
        self.ngroups = check_positive_int("ngroups", ngroups)
        check_divides("ngroups", ngroups, "n_heads (d_inner / head_dim)", self.n_heads)
        self.conv_kernel = check_positive_int("conv_kernel", conv_kernel)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        dt_min, dt_max = check_range_pair("dt_range", dt_range, what="(dt_min, dt_max)")
        floor = check_real("dt_init_floor", dt_init_floor, low=0.0, expected="a positive number")
        a_low, a_high = check_range_pair("A_init_range", A_init_range, what="(low, high)")
        check_bool("bias", bias)
        check_bool("conv_bias", conv_bias)
        factory = {"device": device, "dtype": dtype}
        self.conv_channels = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_channels + self.n_heads, bias=bias, **factory)
        self.conv = ShortConv(self.conv_channels, conv_kernel, bias=conv_bias, **factory)
        # dt = softplus(dt_bias) starts log-uniform in dt_range: dt_bias is its inverse softplus.
        dt = torch.exp(torch.rand(self.n_heads, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(dtype))
        self.A_log = nn.Parameter(torch.empty(self.n_heads, **factory).uniform_(a_low, a_high).log())
        self.D = nn.Parameter(torch.ones(self.n_heads, **factory))
        tag_optim([self.dt_bias, self.A_log, self.D], None)
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # -- shared by every form -------------------------------------------------------------
    def _split(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``in_proj`` output ``(..., width)`` -> ``z (..., d_inner)``, ``xBC (..., conv_channels)``,
        ``dt (..., n_heads)`` (after the softplus, float32 or wider)."""
        z, xbc, dt = projected.split([self.d_inner, self.conv_channels, self.n_heads], dim=-1)
        work = compute_dtype(dt.dtype)
        return z, xbc, F.softplus(dt.to(work) + self.dt_bias.to(work))

    def _heads(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Convolved ``(..., conv_channels)`` -> ``x (..., n_heads, head_dim)``, ``B, C (..., ngroups, d_state)``."""
        x, b, c = xbc.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        return (x.unflatten(-1, (self.n_heads, self.head_dim)), b.unflatten(-1, (self.ngroups, self.d_state)),
                c.unflatten(-1, (self.ngroups, self.d_state)))

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``y, x: (..., n_heads, head_dim)`` -> ``out_proj(RMSNorm((y + D x) * SiLU(z)))``."""
        return self._gate_out(torch.addcmul(y, self.D.to(y.dtype)[:, None], x), z)

    def _gate_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``y`` with its skip ``(..., n_heads, head_dim)``, ``z: (..., d_inner)`` -> ``out_proj(RMSNorm(y * SiLU(z)))``
        in ``z``'s dtype."""
        return self.out_proj(self.norm(y.flatten(-2), z).to(z.dtype))

    def _mix(self, x: torch.Tensor, history: torch.Tensor | None,
             state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The parallel form over ``x: (batch, length, d_model)`` after the convolution inputs ``history``
        ``(batch, conv_kernel - 1, conv_channels)`` and SSM state ``state`` (None: a fresh start).
        Returns ``(y, the convolution's history after x (None without one in), final SSM state)``."""
        z, xbc, dt = self._split(self.in_proj(x))
        xbc = xbc.transpose(1, 2)  # (batch, channels, length), read in place by the conv kernel
        if history is None:
            conv = self.conv(xbc)
        else:  # the conv continues from the previous inputs
            conv, history = self.conv.extend(xbc, history)
        # Back to (batch, length, channels) in one copy before the SiLU: the SiLU, the heads' views and their
        # gradients then share one contiguous layout (on a CPU, mixed layouts cost several times more).
        xs, b, c = self._heads(F.silu(conv.transpose(1, 2).contiguous()))
        A = -torch.exp(self.A_log.to(dt.dtype))
        y, final = ssd(xs, dt, A, b, c, chunk_size=self.chunk_size, initial_state=state)
        return self._output(y, xs, z), history, final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_sequence(x)
        return self._mix(x, None, None)[0]

    # -- recurrent form ---------------------------------------------------------------------
    def _init_state(self, batch_size, *, device, dtype, max_length) -> State:
        """``{"conv": (batch, conv_kernel - 1, conv_channels), "ssm": (batch, n_heads, head_dim, d_state)}``
        (the SSM state in float32 or wider).  Also derives the step's decay rates (so the first step costs
        what every other does)."""
        ssm = torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state, device=device,
                          dtype=compute_dtype(dtype))
        state = {"conv": self.conv.init_state(batch_size, device=device, dtype=dtype), "ssm": ssm}
        with torch.no_grad():
            self.step_constants(state)
        return state

    def step_constants(self, state: State) -> dict[str, torch.Tensor]:
        """``{"A": -exp(A_log) (n_heads,), "D": D (n_heads, 1)}`` in the SSM state's dtype, derived once per
        parameter version, not per token (:func:`~seqarch.modules.parameter_cache.cached`)."""
        ssm = state.get("ssm")
        if not isinstance(ssm, torch.Tensor):
            return {}  # not this mixer's state: the step says so
        work = ssm.dtype
        return cached(self, ("step_constants", work),
                      lambda: {"A": -torch.exp(self.A_log.to(work)), "D": self.D.to(work)[:, None]},
                      params=(self.A_log, self.D))

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        z, xbc, dt = self._split(self.in_proj(x_t))
        conv, history = self.conv.step(xbc, state["conv"].to(xbc.dtype))
        xs, b, c = self._heads(F.silu(conv))
        ssm = state["ssm"]
        work = ssm.dtype
        batch, rep = xs.shape[0], self.n_heads // self.ngroups
        dt = dt.to(work)
        constants = self.constants_of(state)
        decay = torch.exp(dt * constants["A"])  # (batch, n_heads)
        # grouped views, no copies: (batch, groups, heads per group, head_dim, d_state)
        grouped = ssm.view(batch, self.ngroups, rep, self.head_dim, self.d_state)
        inputs = (dt[..., None] * xs.to(work)).view(batch, self.ngroups, rep, self.head_dim, 1)
        decay, b = decay.view(batch, self.ngroups, rep, 1, 1), b.to(work)[:, :, None, None, :]
        if torch.is_grad_enabled():  # autograd keeps the old state: a new one
            new = torch.addcmul(grouped * decay, inputs, b)
        else:  # in place, as the contract allows: no two state-sized tensors made per token
            new = grouped.mul_(decay).addcmul_(inputs, b)
        # The read-out as one product per group, C as a row vector times the state's transpose:
        # (1, d_state) @ (d_state, heads per group * head_dim).  Half the time of a product batched over
        # heads at one token; and a CPU runs the row form several times faster than state @ C as a
        # column (at batch 8 here, 9x).
        y = torch.bmm(c.to(work).reshape(batch * self.ngroups, 1, self.d_state),
                      new.view(batch * self.ngroups, rep * self.head_dim, self.d_state).transpose(1, 2))
        # the skip D x added in the state's dtype, in place: y is this step's own
        y = y.view(batch, self.n_heads, self.head_dim).addcmul_(constants["D"], xs)
        return (self._gate_out(y, z),
                {**state, "conv": history, "ssm": new.view(batch, self.n_heads, self.head_dim, self.d_state)})

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The whole prompt in the parallel form, from a fresh or a non-empty state; returns the final state."""
        state = self.start_prefill(x, state)
        y, history, final = self._mix(x, state["conv"], state["ssm"])
        return y, {**state, "conv": history.to(state["conv"].dtype), "ssm": final.to(state["ssm"].dtype)}

    # -- accounting -------------------------------------------------------------------------
    def flops_breakdown(self, length: int) -> dict[str, int]:
        """Forward FLOPs of one sequence: the projections and the SSD scan's batched products
        (:func:`seqarch.kernels.ssd.ssd_flops`, whose ``4 L d_inner d_state`` are the state x inner x
        length products) as ``matmul``; the short convolution as ``conv``; gates, softplus, the skip,
        the norm and the scan's decay masks as ``other``.  The once-per-call ``A = -exp(A_log)`` is
        :meth:`shared_flops_breakdown`'s."""
        n = check_positive_int("length", length)
        width = self.in_proj.out_features
        scan = ssd_flops(n, self.n_heads, self.head_dim, self.ngroups, self.d_state, self.chunk_size)
        matmul = 2 * n * self.d_model * width + 2 * n * self.d_inner * self.d_model + scan["matmul"]
        biases = n * (width + self.d_model) if self.in_proj.bias is not None else 0
        biases += n * self.conv_channels if self.conv.bias is not None else 0
        other = (biases + SILU_FLOPS * n * (self.conv_channels + self.d_inner) + (SOFTPLUS_FLOPS + 1) * n * self.n_heads
                 + 2 * n * self.d_inner + self.norm.flops(n) + scan["other"])
        return {"matmul": matmul, "conv": self.conv.flops(n), "fft": 0, "other": other}

    def shared_flops_breakdown(self, length: int) -> dict[str, int]:
        """Once per call whatever the batch: ``A = -exp(A_log)`` over the heads."""
        check_positive_int("length", length)
        return {"matmul": 0, "conv": 0, "fft": 0, "other": 2 * self.n_heads}

    def state_size(self, length: int) -> int:
        """The convolution's last ``conv_kernel - 1`` inputs and the SSM state, at every length."""
        return self.conv_channels * (self.conv_kernel - 1) + self.n_heads * self.head_dim * self.d_state

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, d_state={self.d_state}, head_dim={self.head_dim}, n_heads={self.n_heads}, "
                f"ngroups={self.ngroups}, expand={self.expand}")
