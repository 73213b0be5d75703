"""HiPPO-LegS and its normal-plus-low-rank (NPLR / DPLR) form, for S4.

HiPPO-LegS (Gu et al., NeurIPS 2020) is the state matrix that makes an SSM project
its input history onto Legendre polynomials:

    A[n, k] = -sqrt(2n+1) sqrt(2k+1)  (n > k),   -(n+1)  (n = k),   0  (n < k)
    B[n]    =  sqrt(2n+1)

S4 (Gu, Goel, Ré, ICLR 2022, "Efficiently Modeling Long Sequences with Structured
State Spaces") writes it as normal plus low rank, ``A = S - P P^T`` with
``P[n] = sqrt(n + 1/2)``: then ``S = -1/2 I + (skew-symmetric)`` is normal, so it is
unitarily diagonalisable, ``S = V diag(Lambda) V^*`` with ``Re Lambda = -1/2``.  In
the eigenbasis ``A = Lambda - (V^* P)(V^* P)^*`` is diagonal plus low rank (DPLR).

Everything here is computed in float64; callers cast.
"""

from __future__ import annotations

import torch

from ..checks import check_positive_int


def hippo_legs(d_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO-LegS ``(A, B)``: ``A`` is ``(d_state, d_state)``, ``B`` is ``(d_state,)``, float64."""
    check_positive_int("d_state", d_state)
    q = torch.sqrt(2.0 * torch.arange(d_state, dtype=torch.float64) + 1.0)
    a = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(
        torch.arange(1, d_state + 1, dtype=torch.float64)
    )
    return a, q.clone()


def hippo_legs_nplr(d_state: int) -> dict[str, torch.Tensor]:
    """The NPLR form of HiPPO-LegS on the full real state of size ``d_state``.

    Returns a dict of float64 / complex128 tensors with
    ``A = V diag(Lambda) V^* - P P^T`` (``A`` from :func:`hippo_legs`):

    ``Lambda``: ``(d_state,)`` complex eigenvalues of the normal part (real part -1/2),
    ``V``: ``(d_state, d_state)`` unitary eigenvectors (columns),
    ``P``: ``(d_state,)`` real low-rank factor ``sqrt(n + 1/2)``,
    ``B``: ``(d_state,)`` real input vector ``sqrt(2n + 1)``.
    """
    a, b = hippo_legs(d_state)
    p = torch.sqrt(torch.arange(d_state, dtype=torch.float64) + 0.5)
    normal = a + p[:, None] * p[None, :]
    # normal = -1/2 I + skew; -i * skew is Hermitian, so eigh gives an exactly unitary V
    # (a general eig of a non-Hermitian matrix would not).
    skew = normal + 0.5 * torch.eye(d_state, dtype=torch.float64)
    skew = 0.5 * (skew - skew.T)  # exact skew-symmetry before the Hermitian solver
    omega, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    lam = torch.complex(torch.full_like(omega, -0.5), omega)
    return {"Lambda": lam, "V": v, "P": p, "B": b}


def hippo_legs_dplr(d_state: int) -> dict[str, torch.Tensor]:
    """The half DPLR system S4 stores: ``d_state // 2`` complex modes, one per conjugate pair.

    The skew part of a real matrix has eigenvalues ``±i omega`` with conjugate
    eigenvectors, so keeping the modes with ``omega > 0`` keeps one of each pair:
    ``S = 2 Re(V_h diag(Lambda_h) V_h^*)``.  The returned ``P = V_h^* P`` and
    ``B = V_h^* B`` are the low-rank factor and input vector in that basis; S4's SSM
    is ``A = diag(Lambda) - P P^*`` on this half state with output ``2 Re(C h)``.

    Returns complex128 ``Lambda``, ``P``, ``B`` of shape ``(d_state // 2,)`` and
    ``V`` of shape ``(d_state, d_state // 2)``.
    """
    check_positive_int("d_state", d_state)
    if d_state % 2:
        raise ValueError(f"d_state: expected an even positive integer, got {d_state}")
    full = hippo_legs_nplr(d_state)
    keep = full["Lambda"].imag > 0
    if int(keep.sum()) != d_state // 2:  # a zero eigenvalue would have no conjugate partner
        raise ValueError(
            f"d_state: expected {d_state // 2} conjugate pairs in HiPPO-LegS, got {int(keep.sum())}"
        )
    v = full["V"][:, keep]
    vh = v.conj().T
    return {
        "Lambda": full["Lambda"][keep],
        "P": vh @ full["P"].to(torch.complex128),
        "B": vh @ full["B"].to(torch.complex128),
        "V": v,
    }
