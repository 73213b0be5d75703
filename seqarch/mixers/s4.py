"""S4: the structured state space layer with a DPLR (NPLR) HiPPO-LegS state matrix.

Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces",
ICLR 2022.  Per channel (``d_model`` of them) a complex SSM on ``d_state // 2``
modes (one per conjugate pair of the real ``d_state``-dimensional system):

    h' = A h + B u,    y = 2 Re(C h) + D u,    A = diag(Lambda) - P P^*,

initialised from the NPLR form of HiPPO-LegS (:mod:`seqarch.modules.hippo`) and
discretised by the bilinear transform with step ``dt = exp(log_dt)``:

    Abar = (I - dt/2 A)^{-1} (I + dt/2 A),    Bbar = (I - dt/2 A)^{-1} dt B.

The convolution kernel ``K[l] = 2 Re(C Abar^l Bbar)`` comes from its generating
function at the L-th roots of unity (Woodbury identity + Cauchy kernel, then an
inverse FFT); the recurrent ``step`` runs the very same half system, so the two agree
to rounding.  Layer: SSM convolution + ``D u``, GELU, dropout, ``Linear(d, 2d)`` + GLU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..checks import check_choice, check_dropout, check_positive_int, check_real
from ..modules.cauchy import cauchy_sums, cauchy_sums_flops
from ..modules.fft_conv import fft_conv_flops, fft_flops, ssm_conv
from ..modules.hippo import hippo_legs_dplr
from ..modules.mlp import GLUOutput
from ..precision import complex_dtype, compute_dtype
from .base import Mixer, State, register_mixer

_PARAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def matrix_power(a: torch.Tensor, n: int) -> torch.Tensor:
    """``a ** n`` for ``n >= 1`` over the last two dims, by repeated squaring.

    Uses ``matrix_power_products(n)`` matrix products (what ``flops_breakdown`` counts).
    """
    result = None
    while True:
        if n & 1:
            result = a if result is None else result @ a
        n >>= 1
        if n == 0:
            return result
        a = a @ a


def matrix_power_products(n: int) -> int:
    """Number of matrix products :func:`matrix_power` uses for exponent ``n``."""
    return n.bit_length() - 1 + bin(n).count("1") - 1


def krylov(a: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
    """``[v, a v, ..., a^(length-1) v]`` as ``(..., m, length)`` for ``a: (..., m, m)``, ``v: (..., m)``.

    Doubling (``k -> [k, a^w k]``) takes O(log length) batched products instead of a
    sequential loop.
    """
    k = v.unsqueeze(-1)
    power = a
    while k.shape[-1] < length:
        k = torch.cat([k, power @ k], dim=-1)
        if k.shape[-1] < length:
            power = power @ power
    return k[..., :length]


def final_state(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``h_L = sum_l a^(L-1-l) b u_l`` for ``a: (H, m, m)``, ``b: (H, m)``, ``u: (batch, H, L)``.

    Positions are cut into ``J`` chunks of ``c ~ sqrt(L)``: each chunk's state is one
    product with the ``(H, m, c)`` Krylov matrix, then Horner's rule over chunks with
    ``a^c`` combines them, so memory stays ``O(H m sqrt(L))``, not ``O(H m L)``.
    Returns ``(batch, H, m)``.
    """
    length = u.shape[-1]
    chunk = math.isqrt(length - 1) + 1 if length > 1 else 1
    n_chunks = -(-length // chunk)
    # Zeros in front leave the sum unchanged and make whole chunks.
    u = torch.nn.functional.pad(u, (n_chunks * chunk - length, 0)).unflatten(-1, (n_chunks, chunk))
    chunk_states = torch.einsum("bhjc,hmc->bhjm", u.flip(-1), krylov(a, b, chunk))
    a_chunk = matrix_power(a, chunk)
    h = chunk_states[:, :, 0]
    for j in range(1, n_chunks):
        h = (a_chunk @ h.unsqueeze(-1)).squeeze(-1) + chunk_states[:, :, j]
    return h


def state_readout(a: torch.Tensor, c: torch.Tensor, h0: torch.Tensor, length: int) -> torch.Tensor:
    """``c a^(t+1) h0`` for ``t < length``: ``a: (H, m, m)``, ``c: (H, m)``, ``h0: (batch, H, m)``.

    ``t + 1 = j chunk + i + 1`` splits it into ``(c a^(i+1)) (a^(j chunk) h0)``, two
    factors of ``O(H m sqrt(L))`` numbers.  Returns complex ``(batch, H, length)``.
    """
    chunk = math.isqrt(length - 1) + 1 if length > 1 else 1
    n_chunks = -(-length // chunk)
    c_a = (c[..., :, None] * a).sum(-2)                                   # c a: (H, m)
    readouts = krylov(a.transpose(-1, -2), c_a, chunk)                    # c a^(i+1): (H, m, c)
    starts = krylov(matrix_power(a, chunk).unsqueeze(0), h0, n_chunks)     # a^(j c) h0: (B, H, m, J)
    out = torch.einsum("hmi,bhmj->bhji", readouts, starts)
    return out.flatten(-2)[..., :length]


@register_mixer("s4")
class S4(Mixer):
    """S4 layer: ``(batch, length, d_model)`` -> ``(batch, length, d_model)``.

    Args:
        d_model: channels; each runs its own SSM.
        d_state: real state size N per channel (even); ``N // 2`` complex modes are stored.
        causal: ``False`` runs a second SSM kernel backwards in time (no recurrent form).
        dt_min, dt_max: range of the log-uniform initial step ``dt`` per channel.
        lr: learning rate put on the SSM parameters (``Lambda``, ``P``, ``B``, ``log_dt``)
            as their ``_optim`` attribute, with no weight decay.
        dropout: after the GELU.
        device, dtype: of the parameters (float32, float64, bfloat16 or float16); the
            SSM kernel and FFTs run in ``compute_dtype(x.dtype)``.

    The recurrent step uses the DPLR structure (Woodbury on ``I - dt/2 A``): O(d_model *
    d_state) per token, independent of the position.
    """

    def __init__(self, d_model: int, *, d_state: int = 64, causal: bool = True,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, lr: float = 1e-3,
                 dropout: float = 0.0, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(d_model, causal=causal)
        check_positive_int("d_state", d_state)
        if d_state % 2:
            raise ValueError(f"d_state: expected an even positive integer, got {d_state}")
        dt_min = check_real("dt_min", dt_min, low=0.0, expected="a positive float")
        dt_max = check_real("dt_max", dt_max, low=0.0, expected="a positive float")
        if dt_max < dt_min:
            raise ValueError(f"dt_max: expected a value >= dt_min={dt_min}, got {dt_max}")
        lr = check_real("lr", lr, low=0.0, low_inclusive=True, expected="a non-negative float")
        dropout = check_dropout(dropout)
        if dtype is not None:
            check_choice("dtype", dtype, _PARAM_DTYPES)
        self.d_state = d_state
        self.n_kernels = 1 if causal else 2
        self.dt_min, self.dt_max, self.lr = dt_min, dt_max, lr
        h, m = d_model, d_state // 2
        dtype = dtype if dtype is not None else torch.get_default_dtype()

        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.to(device=device, dtype=dtype))

        init = hippo_legs_dplr(d_state)  # float64 / complex128, cast once here
        lam = init["Lambda"].expand(h, m)
        # Re(Lambda) = -exp(log_lambda_re) < 0 keeps every mode stable while training.
        self.log_lambda_re = param(torch.log(-lam.real))
        self.lambda_im = param(lam.imag.clone())
        # Complex parameters live as real views (..., 2) so optimisers and .to(dtype) work.
        self.P = param(torch.view_as_real(init["P"].expand(h, m).clone()))
        self.B = param(torch.view_as_real(init["B"].expand(h, m).clone()))
        self.C = param(torch.view_as_real(torch.randn(self.n_kernels, h, m, dtype=torch.complex128)))
        self.D = param(torch.randn(h, dtype=torch.float64))
        log_dt = torch.rand(h, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = param(log_dt)
        for p in (self.log_lambda_re, self.lambda_im, self.P, self.B, self.log_dt):
            p._optim = {"lr": lr, "weight_decay": 0.0}
        self.output = GLUOutput(d_model, dropout=dropout, device=device, dtype=dtype)

    # -- the SSM ----------------------------------------------------------------------
    def ssm_parameters(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The continuous SSM in ``compute_dtype(dtype)`` (complex accordingly).

        ``Lambda, P, B``: ``(d_model, d_state // 2)``; ``C``: ``(n_kernels, d_model,
        d_state // 2)``; ``dt``: ``(d_model,)``; ``A = diag(Lambda) - P P^*``.
        """
        work = compute_dtype(dtype if dtype is not None else self.log_dt.dtype)
        return {
            "Lambda": torch.complex(-torch.exp(self.log_lambda_re.to(work)), self.lambda_im.to(work)),
            "P": torch.view_as_complex(self.P.to(work)),
            "B": torch.view_as_complex(self.B.to(work)),
            "C": torch.view_as_complex(self.C.to(work)),
            "dt": torch.exp(self.log_dt.to(work)),
        }

    def _discretize(self, dtype: torch.dtype, *, dense: bool = True) -> dict[str, torch.Tensor]:
        """Parameters plus the pieces of ``(I - dt/2 A)^{-1}`` by Woodbury, and (``dense``)
        the dense ``Abar: (H, m, m)`` and ``Bbar: (H, m)``; the step needs only the pieces."""
        s = self.ssm_parameters(dtype)
        lam, p = s["Lambda"], s["P"]
        half = (s["dt"] / 2)[:, None]                            # (H, 1)
        e = 1 - half * lam                                       # diagonal of I - dt/2 Lambda
        pe = p / e
        coef = half / (1 + half * (p.conj() * pe).sum(-1, keepdim=True))
        s.update(e=e, pe=pe, coef=coef)
        if not dense:
            return s
        # (I - dt/2 A)^{-1} = diag(1/e) - coef (P/e)(P^*/e); an outer product, not a matmul.
        resolvent = torch.diag_embed(1 / e) - coef[..., None] * pe[..., :, None] * (p.conj() / e)[..., None, :]
        # Abar = R (I + dt/2 A) = R (2I - (I - dt/2 A)) = 2R - I: no matrix product needed.
        s["Abar"] = 2 * resolvent - torch.eye(lam.shape[-1], dtype=lam.dtype, device=lam.device)
        s["Bbar"] = self._resolve(s, s["dt"][:, None] * s["B"])
        return s

    @staticmethod
    def _resolve(s: dict[str, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        """``(I - dt/2 A)^{-1} v`` for ``v: (..., H, m)`` in O(m) per channel (Woodbury)."""
        ve = v / s["e"]
        return ve - s["coef"] * s["pe"] * (s["P"].conj() * ve).sum(-1, keepdim=True)

    def _kernel(self, s: dict[str, torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real kernels ``(n_kernels, H, length)`` and ``Abar^length`` ``(H, m, m)``."""
        lam, p, b, dt = s["Lambda"], s["P"], s["B"], s["dt"]
        apow = matrix_power(s["Abar"], length)
        # sum_{l<L} C Abar^l Bbar z^l = C (I - Abar^L)(I - Abar z)^{-1} Bbar at z^L = 1: the
        # truncation correction, recomputed for each length so every length is exact.
        c_tilde = s["C"] - (s["C"][..., :, None] * apow).sum(-2)
        angle = torch.arange(length, dtype=dt.dtype, device=dt.device) * (-2 * math.pi / length)
        z = torch.polar(torch.ones_like(angle), angle)
        # (I - Abar z)^{-1} Bbar = 2 dt [2(1-z) I - dt(1+z) A]^{-1} B.  Written this way (not
        # with the usual 2/(1+z) factor) it stays finite at z = -1, a root for even L.
        az = 2 * (1 - z)                                          # (L,)
        bz = dt[:, None] * (1 + z)                                # (H, L)
        # The four Cauchy sums sum_n v_n / (az - bz lambda_n) in one call, by frequency
        # chunks: the (H, m, L) Cauchy matrix is never held whole.
        pc, k = p.conj(), c_tilde.shape[0]
        numerators = torch.cat([c_tilde * b, c_tilde * p, (pc * b)[None], (pc * p)[None]])
        sums = cauchy_sums(numerators.transpose(0, 1), az, bz, lam).transpose(0, 1)  # (2K+2, H, L)
        s_cb, s_cp, s_pb, s_pp = sums[:k], sums[k:2 * k], sums[2 * k], sums[2 * k + 1]
        # Woodbury on (diag + bz P P^*): the rank-one correction of the diagonal solve.
        k_f = 2 * dt[:, None] * (s_cb - bz * s_cp * s_pb / (1 + bz * s_pp))
        return 2 * torch.fft.ifft(k_f, n=length).real, apow

    def ssm_kernel(self, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``K[k, h, l] = 2 Re(C_k Abar^l Bbar)``: ``(n_kernels, d_model, length)``, real.

        Computed in ``compute_dtype(dtype)`` (default: the parameters' dtype).
        """
        check_positive_int("length", length)
        work = compute_dtype(dtype if dtype is not None else self.log_dt.dtype)
        return self._kernel(self._discretize(work), length)[0]

    # -- layer ------------------------------------------------------------------------
    def _convolve(self, x: torch.Tensor, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """SSM output ``(batch, d_model, length)`` in the compute dtype, and ``Abar^length``."""
        work = compute_dtype(x.dtype)
        u = x.transpose(1, 2).to(work)
        k, apow = self._kernel(s, x.shape[1])
        return ssm_conv(u, k) + self.D.to(work)[:, None] * u, apow

    def _output(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.output(y).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, length, d_model)`` -> ``(batch, length, d_model)`` in ``x.dtype``."""
        self.check_sequence(x)
        y, _ = self._convolve(x, self._discretize(compute_dtype(x.dtype)))
        return self._output(y.transpose(1, 2), x.dtype)

    # -- recurrent form ---------------------------------------------------------------
    def init_state(self, batch_size: int, *, device: Any = None, dtype: torch.dtype | None = None,
                   max_length: int | None = None) -> State:
        """``{"batch_size", "h"}`` with ``h: (batch, d_model, d_state // 2)`` complex zeros.

        ``h`` is complex in ``compute_dtype(dtype)``; ``max_length`` is accepted and
        unused (the state does not grow).
        """
        if not self.causal:
            return super().init_state(batch_size, device=device, dtype=dtype, max_length=max_length)
        check_positive_int("batch_size", batch_size)
        if max_length is not None:
            check_positive_int("max_length", max_length)
        device, dtype = self._state_like(device, dtype)
        h = torch.zeros(batch_size, self.d_model, self.d_state // 2, device=device,
                        dtype=complex_dtype(dtype))
        return {"batch_size": batch_size, "h": h}

    def _state_h(self, state: State, work: torch.dtype) -> torch.Tensor:
        h = state.get("h")
        expected = (state["batch_size"], self.d_model, self.d_state // 2)
        if not isinstance(h, torch.Tensor) or tuple(h.shape) != expected or not h.is_complex():
            got = (h.dtype, tuple(h.shape)) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"state: expected 'h' complex of shape {expected}, got {got}")
        return h.to(complex_dtype(work))

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        work = compute_dtype(x_t.dtype)
        s = self._discretize(work, dense=False)
        u = x_t.to(work)
        h = self._state_h(state, work)
        # Abar h + Bbar u = R (2h + dt B u) - h with R = (I - dt/2 A)^{-1}: one O(m) solve.
        h = self._resolve(s, 2 * h + (s["dt"][:, None] * s["B"]) * u[..., None]) - h
        y = 2 * (s["C"][0] * h).sum(-1).real + self.D.to(work) * u
        return self._output(y, x_t.dtype), {"batch_size": state["batch_size"], "h": h}

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run a prompt ``x: (batch, length, d_model)`` in parallel; returns ``(y, state)``.

        Outputs by the FFT convolution; the final state ``h_L = sum_l Abar^(L-1-l) Bbar u_l``
        by chunked Krylov products (:func:`final_state`).  A given state ``h0`` adds ``2 Re(C Abar^(t+1) h0)``
        to output t and ``Abar^L h0`` to the final state.
        """
        fresh = state is None
        state = self.start_prefill(x, state)
        batch, length, _ = x.shape
        work = compute_dtype(x.dtype)
        h0 = None if fresh else self._state_h(state, work)
        s = self._discretize(work)
        y, apow = self._convolve(x, s)
        u = x.transpose(1, 2).to(complex_dtype(work))
        h = final_state(s["Abar"], s["Bbar"], u)
        if h0 is not None:
            h = h + torch.einsum("hmn,bhn->bhm", apow, h0)
            y = y + 2 * state_readout(s["Abar"], s["C"][0], h0, length).real
        return self._output(y.transpose(1, 2), x.dtype), {"batch_size": batch, "h": h}

    # -- accounting -------------------------------------------------------------------
    def flops_breakdown(self, length: int) -> dict[str, int]:
        """Forward FLOPs for one sequence of ``length`` tokens (a multiply-add counts 2).

        ``"matmul"``: the output projection and the complex products (``Abar^L`` by
        squaring, the Cauchy sums), counted as ``torch.utils.flop_counter`` does: 2 per
        multiply-add, complex or not.
        ``"fft"``: the FFT convolution and the inverse FFT of the kernel.
        ``"other"``: the rest of those complex products (a complex multiply-add is 8 real
        FLOPs), Cauchy denominators, discretisation, Woodbury, skip, GELU, GLU.
        """
        n = check_positive_int("length", length)
        h, m, k = self.d_model, self.d_state // 2, self.n_kernels
        # complex multiply-adds done by matmul: Abar^L, then the Cauchy sums
        power_macs = matrix_power_products(n) * h * m ** 3
        cauchy = cauchy_sums_flops(h, 2 * k + 2, m, n)
        output = self.output.flops(n)
        matmul = output["matmul"] + 2 * power_macs + cauchy["matmul"]
        conv = fft_conv_flops(n, h) if self.causal else fft_conv_flops(2 * n, h, causal=False)
        fft = conv + fft_flops(n, 2 * k * h)  # complex ifft of size n = two real ones
        woodbury = k * h * n * 30 + k * h * n                      # rank-one combine, 2 Re
        discretize = 10 * h * m * m + 8 * k * h * m * m + 30 * h * m  # dense Abar, C Abar^L
        gates = n * h * 4 + output["other"]  # skip D u, projection bias, GELU, GLU
        other = 6 * power_macs + cauchy["other"] + woodbury + discretize + gates
        return {"matmul": int(matmul), "fft": int(fft), "other": int(other)}

    def state_size(self, length: int) -> int:
        """Real numbers in the state for one sequence: ``d_model * d_state`` (complex counts 2)."""
        check_positive_int("length", length)
        return self.d_model * self.d_state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, causal={self.causal}, "
                f"dt_min={self.dt_min}, dt_max={self.dt_max}, lr={self.lr}")
