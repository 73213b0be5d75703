"""The DPLR state-space kernel of S4, learning the truncated output matrix ``C~``.

Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces",
ICLR 2022.  Per channel a complex SSM on ``d_state // 2`` modes,

    h' = A h + B u,    y = 2 Re(C h),    A = diag(Lambda) - P P^*,

initialised from the NPLR form of HiPPO-LegS (:mod:`seqarch.modules.hippo`) and
discretised by the bilinear transform with step ``dt``:

    Abar = (I - dt/2 A)^{-1} (I + dt/2 A),    Bbar = (I - dt/2 A)^{-1} dt B.

The kernel of length ``L = max_length``, ``K[l] = 2 Re(C Abar^l Bbar)``, has the
generating function ``sum_{l<L} C Abar^l Bbar z^l = C~ (I - Abar z)^{-1} Bbar`` at the
L-th roots of unity, with ``C~ = C (I - Abar^L)``.  As in the reference S4 code the
layer learns ``C~`` itself (the parameter ``C``), so the kernel needs only the
Woodbury identity and Cauchy sums, never ``Abar^L``; a kernel of length ``l <= L`` is
the first ``l`` taps of the length-``L`` one, so every length agrees with the
recurrence.  The recurrence needs ``C = C~ (I - Abar^L)^{-1}``: it is built without gradients,
once per parameter version, and put in each new state (:meth:`DPLRSSMKernel.init_state`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checks import check_positive_int
from .cauchy import cauchy_sums, cauchy_sums_flops
from .fft_conv import fft_flops
from .hippo import hippo_legs_dplr
from .kernel_generator import tag_optim
from .parameter_cache import cached
from .ssm import SSMKernel


def matrix_power(a: torch.Tensor, n: int) -> torch.Tensor:
    """``a ** n`` for ``n >= 1`` over the last two dims, by repeated squaring."""
    result = None
    while True:
        if n & 1:
            result = a if result is None else result @ a
        n >>= 1
        if n == 0:
            return result
        a = a @ a


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


# Numbers a chunk's Krylov basis (channels x modes x chunk) may hold beyond the sqrt(L) minimum:
# longer chunks mean fewer sequential Horner steps, each a small batched product that is slow on CPUs.
KRYLOV_BASIS_NUMBERS = 1 << 20


def chunk_length(length: int, rows: int) -> int:
    """The chunk :func:`final_state` and :func:`state_readout` cut ``length`` positions into, for a
    basis of ``rows`` (channels x modes) rows: at least ``~sqrt(length)``, longer while the basis holds
    at most :data:`KRYLOV_BASIS_NUMBERS` numbers."""
    shortest = math.isqrt(length - 1) + 1 if length > 1 else 1
    return max(shortest, min(length, KRYLOV_BASIS_NUMBERS // max(rows, 1)))


def chunk_operators(a: torch.Tensor, b: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`final_state` derives from ``a: (H, m, m)`` and ``b: (H, m)`` alone for chunks of
    ``chunk`` positions: the Krylov matrix ``[b, a b, ..., a^(c-1) b]`` ``(H, m, c)`` and ``a^c``."""
    return krylov(a, b, chunk), matrix_power(a, chunk)


def final_state(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor,
                operators: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``h_L = sum_l a^(L-1-l) b u_l`` for ``a: (H, m, m)``, ``b: (H, m)``, ``u: (batch, H, L)``.

    Positions are cut into ``J`` chunks of ``c`` (:func:`chunk_length`: at least ``~sqrt(L)``):
    each chunk's state is one product with the ``(H, m, c)`` Krylov matrix, then Horner's rule
    over chunks with ``a^c`` combines them, so memory stays bounded, never ``O(H m L)`` for long ``L``.
    ``operators``: :func:`chunk_operators` of ``a, b`` and :func:`chunk_length` ``(L, H m)``, when the
    caller keeps them (they depend on the parameters only), else computed here.
    Returns ``(batch, H, m)``.
    """
    length = u.shape[-1]
    if operators is None:
        operators = chunk_operators(a, b, chunk_length(length, a.shape[0] * a.shape[-1]))
    basis, a_chunk = operators
    chunk = basis.shape[-1]
    n_chunks = -(-length // chunk)
    # Zeros in front leave the sum unchanged and make whole chunks.
    u = torch.nn.functional.pad(u, (n_chunks * chunk - length, 0)).unflatten(-1, (n_chunks, chunk))
    # Batch last: each Horner step is then one (H, m, m) @ (H, m, batch) product, where a (batch, H, m, 1)
    # operand would broadcast a^c to every sequence first (at batch 8, 18x slower here).
    chunk_states = torch.einsum("bhjc,hmc->jhmb", u.flip(-1), basis)
    h = chunk_states[0]
    for j in range(1, n_chunks):
        h = torch.baddbmm(chunk_states[j], a_chunk, h)
    return h.permute(2, 0, 1).contiguous()


def state_readout(a: torch.Tensor, c: torch.Tensor, h0: torch.Tensor, length: int) -> torch.Tensor:
    """``c a^(t+1) h0`` for ``t < length``: ``a: (H, m, m)``, ``c: (H, m)``, ``h0: (batch, H, m)``.

    ``t + 1 = j chunk + i + 1`` (:func:`chunk_length`) splits it into ``(c a^(i+1)) (a^(j chunk) h0)``,
    two factors of ``H m chunk`` and ``batch H m L / chunk`` numbers.  Returns complex ``(batch, H, length)``.
    """
    chunk = chunk_length(length, a.shape[0] * a.shape[-1])
    n_chunks = -(-length // chunk)
    c_a = (c[..., :, None] * a).sum(-2)                                   # c a: (H, m)
    readouts = krylov(a.transpose(-1, -2), c_a, chunk)                    # c a^(i+1): (H, m, c)
    starts = krylov(matrix_power(a, chunk).unsqueeze(0), h0, n_chunks)     # a^(j c) h0: (B, H, m, J)
    out = torch.einsum("hmi,bhmj->bhji", readouts, starts)
    return out.flatten(-2)[..., :length]


class DPLRSSMKernel(SSMKernel):
    """S4 kernel generator: ``forward(length) -> (directions, channels, length)``, ``length <= max_length``.

    Args: those of :class:`~seqarch.modules.ssm.SSMKernel` (``max_length`` required: the
    truncation length ``L`` that ``C~`` is defined by, the length the model trains at).
    The eigenvalues, ``P``, ``B`` and ``log_dt`` carry the ``lr_scale`` hint.  A forward at a
    shorter length still evaluates the generating function at the ``L`` roots of unity.
    """

    def __init__(self, channels: int, *, d_state: int = 64, max_length: int = 2048, **options: Any) -> None:
        check_positive_int("max_length", max_length)
        init = hippo_legs_dplr(d_state)  # float64 / complex128, cast once
        half = d_state // 2
        super().__init__(channels, init["Lambda"].expand(channels, half), d_state=d_state, max_length=max_length,
                         **options)
        self.P = self.parameter(torch.view_as_real(init["P"].expand(channels, half)))
        self.B = self.parameter(torch.view_as_real(init["B"].expand(channels, half)))
        tag_optim([self.P, self.B], self.lr_scale)
        # The drawn C is the SSM's output matrix: store C~ = C (I - Abar^L), the same initial kernel.
        with torch.no_grad():
            s = self.discretize(torch.float64, dense=True)
            power = matrix_power(s["Abar"], self.max_length)
            c = torch.view_as_complex(self.C.double())
            self.C.copy_(torch.view_as_real(c - (c[..., :, None] * power).sum(-2)).to(self.C.dtype))

    # -- the SSM ------------------------------------------------------------------------
    def discretize(self, work: torch.dtype, *, dense: bool = False) -> dict[str, torch.Tensor]:
        """The SSM in ``work`` (complex accordingly) and the Woodbury pieces of ``(I - dt/2 A)^{-1}``.

        ``Lambda, P, B``: ``(channels, d_state // 2)``; ``C_tilde``: ``(directions, channels,
        d_state // 2)``; ``dt``: ``(channels,)``; ``e, pe, coef``: the pieces.  ``dense``
        adds ``Abar: (channels, m, m)`` and ``Bbar: (channels, m)``.
        """
        lam, p, dt = self.eigenvalues(work), torch.view_as_complex(self.P.to(work)), self.step_size(work)
        half = (dt / 2)[:, None]
        e = 1 - half * lam                                       # diagonal of I - dt/2 Lambda
        pe = p / e
        coef = half / (1 + half * (p.conj() * pe).sum(-1, keepdim=True))
        s = {"Lambda": lam, "P": p, "B": torch.view_as_complex(self.B.to(work)), "C_tilde": self.output_matrix(work),
             "dt": dt, "e": e, "pe": pe, "coef": coef}
        if dense:
            # (I - dt/2 A)^{-1} = diag(1/e) - coef (P/e)(P^*/e); Abar = R (2I - (I - dt/2 A)) = 2R - I.
            resolvent = torch.diag_embed(1 / e) - coef[..., None] * pe[..., :, None] * (p.conj() / e)[..., None, :]
            s["Abar"] = 2 * resolvent - torch.eye(lam.shape[-1], dtype=lam.dtype, device=lam.device)
            s["Bbar"] = self.resolve(s, dt[:, None] * s["B"])
        return s

    @staticmethod
    def resolve(s: dict[str, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        """``(I - dt/2 A)^{-1} v`` for ``v: (..., channels, m)`` in O(m) per channel (Woodbury)."""
        ve = v / s["e"]
        return ve - s["coef"] * s["pe"] * (s["P"].conj() * ve).sum(-1, keepdim=True)

    def forward(self, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``K[k, h, l] = 2 Re(C_k Abar^l Bbar)`` for ``l < length``, real."""
        self.check_length(length)
        s = self.discretize(self.work_dtype(dtype))
        lam, p, b, dt, c_tilde = s["Lambda"], s["P"], s["B"], s["dt"], s["C_tilde"]
        n = self.max_length
        angle = torch.arange(n, dtype=dt.dtype, device=dt.device) * (-2 * math.pi / n)
        z = torch.polar(torch.ones_like(angle), angle)
        # (I - Abar z)^{-1} Bbar = 2 dt [2(1-z) I - dt(1+z) A]^{-1} B.  Written this way (not
        # with the usual 2/(1+z) factor) it stays finite at z = -1, a root for even L.
        az = 2 * (1 - z)                                          # (L,)
        bz = dt[:, None] * (1 + z)                                # (H, L)
        # The Cauchy sums sum_n v_n / (az - bz lambda_n) in one call, by frequency chunks.
        pc, k = p.conj(), self.directions
        numerators = torch.cat([c_tilde * b, c_tilde * p, (pc * b)[None], (pc * p)[None]])
        sums = cauchy_sums(numerators.transpose(0, 1), az, bz, lam).transpose(0, 1)  # (2K+2, H, L)
        s_cb, s_cp, s_pb, s_pp = sums[:k], sums[k:2 * k], sums[2 * k], sums[2 * k + 1]
        # Woodbury on (diag + bz P P^*): the rank-one correction of the diagonal solve.
        k_f = 2 * dt[:, None] * (s_cb - bz * s_cp * s_pb / (1 + bz * s_pp))
        return 2 * torch.fft.ifft(k_f, n=n).real[..., :length]

    def flops(self, length: int) -> dict[str, int]:
        """The Cauchy sums at ``max_length`` frequencies (``matmul``: 2 per complex multiply-add,
        as ``torch.utils.flop_counter`` counts; the rest in ``other``), the inverse FFT
        (``fft``), Woodbury combine and discretisation (``other``).  No ``Abar^L``."""
        check_positive_int("length", length)
        h, m, k, n = self.channels, self.d_state // 2, self.directions, self.max_length
        cauchy = cauchy_sums_flops(h, 2 * k + 2, m, n)
        woodbury = k * h * n * 31                       # rank-one combine and 2 Re
        discretize = 30 * h * m + 8 * (2 * k + 2) * h * m   # Woodbury pieces, numerators
        return {"matmul": cauchy["matmul"], "fft": fft_flops(n, 2 * k * h),  # complex ifft = two real
                "other": cauchy["other"] + woodbury + discretize}

    # -- recurrence ---------------------------------------------------------------------
    def dense_discretization(self, work: torch.dtype) -> dict[str, torch.Tensor]:
        """``discretize(work, dense=True)``, once per parameter version outside training."""
        return cached(self, ("dense", work), lambda: self.discretize(work, dense=True))

    def step_matrices(self, work: torch.dtype) -> dict[str, torch.Tensor]:
        """What a step needs, once per parameter version outside training: ``1/e``,
        ``coef P/e``, ``conj(P)`` (the Woodbury solve) and ``dt B``, complex ``(channels, m)``, folded
        as a step uses them: ``2/e`` and ``dt B/e``."""
        def compute():
            s = self.discretize(work)
            inv_e = 1 / s["e"]
            return {"two_inv_e": 2 * inv_e, "dt_b_inv_e": s["dt"][:, None] * s["B"] * inv_e,
                    "coef_pe": s["coef"] * s["pe"], "p_conj": s["P"].conj().resolve_conj()}
        return cached(self, ("step", work), compute)

    def recurrent_output_matrix(self, work: torch.dtype) -> torch.Tensor:
        """``C = C~ (I - Abar^L)^{-1}`` for the causal direction: complex ``(channels, m)``, no gradient;
        once per parameter version (a dense ``Abar^L`` and a solve per channel: each ``init_state``
        would otherwise spend more on it than a prefill of a short prompt spends on everything else)."""
        def compute():
            s = self.dense_discretization(work)
            eye = torch.eye(s["Abar"].shape[-1], dtype=s["Abar"].dtype, device=s["Abar"].device)
            system = eye - matrix_power(s["Abar"], self.max_length)
            return torch.linalg.solve(system, s["C_tilde"][0].unsqueeze(-2), left=False).squeeze(-2)
        with torch.no_grad():  # no graph through it at any grad mode, so always cacheable
            return cached(self, ("recurrent_C", work), compute)

    def init_state(self, batch_size: int, *, device: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """``{"h": zeros, "C": C}``: ``C`` (:meth:`recurrent_output_matrix`) is a cache of the
        parameters, not per-sequence state; build a new state after the parameters change."""
        state = super().init_state(batch_size, device=device, dtype=dtype)
        work = state["h"].real.dtype
        return {**state, "C": self.recurrent_output_matrix(work).to(device=device, dtype=state["h"].dtype)}

    def _cached_c(self, state: dict, work: torch.dtype) -> torch.Tensor:
        c = state.get("C")
        expected = (self.channels, self.d_state // 2)
        if not isinstance(c, torch.Tensor) or tuple(c.shape) != expected or not c.is_complex():
            raise ValueError(f"state: expected 'C' complex of shape {expected} (made by init_state), got {c!r}")
        return c.to(self.state_h(state, state["h"].shape[0], work).dtype)

    def step(self, u_t: torch.Tensor, state: dict, matrices: Any = None) -> tuple[torch.Tensor, dict]:
        work = u_t.dtype
        h = self.state_h(state, u_t.shape[0], work)
        c = self._cached_c(state, work)
        s = self.step_matrices(work) if matrices is None else matrices
        # Abar h + Bbar u = R (2h + dt B u) - h with R = (I - dt/2 A)^{-1}: one O(m) solve (Woodbury).
        ve = torch.addcmul(h * s["two_inv_e"], s["dt_b_inv_e"], u_t[..., None])  # (2h + dt B u) / e
        h = torch.addcmul(ve - h, s["coef_pe"], (s["p_conj"] * ve).sum(-1, keepdim=True), value=-1)
        return 2 * (c * h).sum(-1).real, {**state, "h": h}

    def prefill(self, u: torch.Tensor, state: dict, fresh: bool) -> tuple[torch.Tensor | None, dict]:
        """The final state ``sum_l Abar^(L-1-l) Bbar u_l`` by chunked Krylov products; an
        incoming ``h0`` adds ``2 Re(C Abar^(t+1) h0)`` to output ``t`` and ``Abar^L h0``."""
        work, length = u.dtype, u.shape[-1]
        h0 = None if fresh else self.state_h(state, u.shape[0], work)
        c = self._cached_c(state, work)
        s = self.dense_discretization(work)
        chunk = chunk_length(length, self.channels * (self.d_state // 2))
        operators = cached(self, ("chunk_operators", work, chunk),
                           lambda: chunk_operators(s["Abar"], s["Bbar"], chunk))
        h = final_state(s["Abar"], s["Bbar"], u.to(c.dtype), operators)
        if h0 is None:
            return None, {**state, "h": h}
        h = h + torch.einsum("hmn,bhn->bhm", matrix_power(s["Abar"], length), h0)
        return 2 * state_readout(s["Abar"], c, h0, length).real, {**state, "h": h}
