"""Triton kernels of :mod:`seqarch.kernels.ssm_kernel`: Vandermonde (S4D) and Cauchy (S4) sums.

Triton has no complex dtype, so every complex tensor travels as two contiguous
real tensors (real part, imaginary part) and the kernels spell out complex
arithmetic.  No kernel writes a ``(channels, state, length)`` tensor: each program
rebuilds its ``(state block, position block)`` tile of powers or reciprocals in
registers and reduces it at once.

The launchers here take and return complex tensors (complex64 only); the formulas
that turn the kernels' sums into gradients live with the autograd Functions in
:mod:`seqarch.kernels.ssm_kernel`.
"""

from __future__ import annotations

import torch

from .backend import interpreting, triton_available

# Most states per register tile (the Vandermonde kernels loop over larger states).
MAX_BLOCK_STATE = 32
# Position tiles per Vandermonde forward program: their powers reuse one tile z^i.
TILES_PER_PROGRAM = 8


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def vandermonde_blocks(state: int, length: int) -> tuple[int, int]:
    """``(block_state, block_length)`` of the Vandermonde kernels (no autotuning: the
    interpreter would run every configuration).  Under the interpreter the position tiles
    are small, so tests at short lengths still cross several tiles and partial ones."""
    block_state = min(_next_power_of_2(state), MAX_BLOCK_STATE)
    cap = 16 if interpreting() else 128
    return block_state, min(cap, max(16, _next_power_of_2(length)))


def cauchy_blocks(sums: int, state: int, length: int) -> tuple[int, int, int]:
    """``(block_sums, block_state, block_length)`` of the Cauchy kernels; ``tl.dot`` needs >= 16."""
    block_sums = max(16, _next_power_of_2(sums))
    block_state = max(16, min(_next_power_of_2(state), MAX_BLOCK_STATE))
    cap = 16 if interpreting() else 64
    return block_sums, block_state, min(cap, max(16, _next_power_of_2(length)))


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.real.contiguous(), x.imag.contiguous()


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _power_tile(sr, si, steps):
        """``exp((sr + i si) steps)`` as ``(BLOCK_N, BLOCK_L)`` for ``sr, si: (BLOCK_N,)``, ``steps: (BLOCK_L,)``."""
        angle = si[:, None] * steps[None, :]
        magnitude = tl.exp(sr[:, None] * steps[None, :])
        return magnitude * tl.cos(angle), magnitude * tl.sin(angle)

    @triton.jit
    def _power_at(sr, si, step):
        """``exp((sr + i si) step)`` as ``(BLOCK_N,)`` for one position ``step``."""
        magnitude = tl.exp(sr * step)
        return magnitude * tl.cos(si * step), magnitude * tl.sin(si * step)

    @triton.jit
    def _vandermonde_fwd_kernel(
        coef_r, coef_i, logz_r, logz_i, out, channels, state, length,
        BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, TILES: tl.constexpr,
    ):
        # One program: one (batch, channel) row, TILES consecutive position tiles.
        # z^(l0 + i) = z^l0 z^i: the tile z^i is computed once per state block and
        # reused by every tile, so each tile costs BLOCK_N transcendentals, not BLOCK_N * BLOCK_L.
        row = tl.program_id(0).to(tl.int64)  # rows * length may pass 2^31 (batched prefill)
        group = tl.program_id(1)
        channel = row % channels
        steps = tl.arange(0, BLOCK_L)
        for n0 in range(0, state, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < state
            sr = tl.load(logz_r + channel * state + offs_n, mask=mask_n, other=0.0)
            si = tl.load(logz_i + channel * state + offs_n, mask=mask_n, other=0.0)
            cr = tl.load(coef_r + row * state + offs_n, mask=mask_n, other=0.0)
            ci = tl.load(coef_i + row * state + offs_n, mask=mask_n, other=0.0)
            inner_r, inner_i = _power_tile(sr, si, steps.to(tl.float32))
            for t in tl.static_range(TILES):
                l0 = (group * TILES + t) * BLOCK_L
                pr, pi = _power_at(sr, si, l0 * 1.0)
                wr = cr * pr - ci * pi
                wi = cr * pi + ci * pr
                part = 2 * tl.sum(wr[:, None] * inner_r - wi[:, None] * inner_i, axis=0)
                offs_l = l0 + steps
                mask_l = offs_l < length
                # The program owns these outputs (zeroed by the launcher): read-add-write over state blocks.
                previous = tl.load(out + row * length + offs_l, mask=mask_l, other=0.0)
                tl.store(out + row * length + offs_l, previous + part, mask=mask_l)

    @triton.jit
    def _vandermonde_bwd_kernel(
        grad, logz_r, logz_i, s0_r, s0_i, s1_r, s1_i, channels, state, length,
        BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    ):
        # One program: one (batch, channel) row and one state block, looping over positions:
        # S0 = sum_l g_l z^l and S1 = sum_l g_l l z^l, with z^(l0+i) = z^l0 z^i as in the forward.
        row = tl.program_id(0).to(tl.int64)  # rows * length may pass 2^31 (batched prefill)
        channel = row % channels
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < state
        sr = tl.load(logz_r + channel * state + offs_n, mask=mask_n, other=0.0)
        si = tl.load(logz_i + channel * state + offs_n, mask=mask_n, other=0.0)
        steps = tl.arange(0, BLOCK_L)
        steps_f = steps.to(tl.float32)
        inner_r, inner_i = _power_tile(sr, si, steps_f)
        acc0_r = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc0_i = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc1_r = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc1_i = tl.zeros([BLOCK_N], dtype=tl.float32)
        for l0 in range(0, length, BLOCK_L):
            offs_l = l0 + steps
            g = tl.load(grad + row * length + offs_l, mask=offs_l < length, other=0.0)
            t0_r = tl.sum(g[None, :] * inner_r, axis=1)
            t0_i = tl.sum(g[None, :] * inner_i, axis=1)
            gi = g * steps_f
            t1_r = tl.sum(gi[None, :] * inner_r, axis=1)
            t1_i = tl.sum(gi[None, :] * inner_i, axis=1)
            l0_f = l0 * 1.0  # a Python int under the interpreter, an int32 scalar when compiled
            pr, pi = _power_at(sr, si, l0_f)
            acc0_r += pr * t0_r - pi * t0_i
            acc0_i += pr * t0_i + pi * t0_r
            # sum_i g (l0 + i) z^(l0+i) = z^l0 (l0 T0 + T1)
            ur = l0_f * t0_r + t1_r
            ui = l0_f * t0_i + t1_i
            acc1_r += pr * ur - pi * ui
            acc1_i += pr * ui + pi * ur
        out = row * state + offs_n
        tl.store(s0_r + out, acc0_r, mask=mask_n)
        tl.store(s0_i + out, acc0_i, mask=mask_n)
        tl.store(s1_r + out, acc1_r, mask=mask_n)
        tl.store(s1_i + out, acc1_i, mask=mask_n)

    @triton.jit
    def _reciprocals(ar, ai, br, bi, lr, li, mask):
        """``1 / (a_l - b_l lambda_n)`` as a ``(BLOCK_N, BLOCK_L)`` tile, zero where ``mask`` is off."""
        dr = ar[None, :] - (br[None, :] * lr[:, None] - bi[None, :] * li[:, None])
        di = ai[None, :] - (br[None, :] * li[:, None] + bi[None, :] * lr[:, None])
        dr = tl.where(mask, dr, 0.0)
        di = tl.where(mask, di, 0.0)
        norm = tl.where(mask, dr * dr + di * di, 1.0)
        return dr / norm, -di / norm

    @triton.jit
    def _cdot(ar, ai, br, bi):
        """Complex matrix product from four real ``tl.dot`` (fp32, IEEE: no tf32 rounding)."""
        re = tl.dot(ar, br, input_precision="ieee") - tl.dot(ai, bi, input_precision="ieee")
        im = tl.dot(ar, bi, input_precision="ieee") + tl.dot(ai, br, input_precision="ieee")
        return re, im

    @triton.jit
    def _load_complex(ptr_r, ptr_i, offsets, mask):
        return tl.load(ptr_r + offsets, mask=mask, other=0.0), tl.load(ptr_i + offsets, mask=mask, other=0.0)

    @triton.jit
    def _frequency_tile(a_r, a_i, b_r, b_i, h, l0, length, BLOCK_L: tl.constexpr):
        """Frequencies ``[l0, l0 + BLOCK_L)`` of channel ``h``: offsets, mask, ``a[l]`` and ``b[h, l]``."""
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < length
        ar, ai = _load_complex(a_r, a_i, offs_l, mask_l)
        br, bi = _load_complex(b_r, b_i, h * length + offs_l, mask_l)
        return offs_l, mask_l, ar, ai, br, bi

    @triton.jit
    def _cauchy_fwd_kernel(
        num_r, num_i, a_r, a_i, b_r, b_i, lam_r, lam_i, out_r, out_i, sums, state, length,
        BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    ):
        # One program: one channel, one frequency tile; (sums, frequencies) accumulators in registers.
        h = tl.program_id(0).to(tl.int64)
        offs_l, mask_l, ar, ai, br, bi = _frequency_tile(a_r, a_i, b_r, b_i, h, tl.program_id(1) * BLOCK_L, length,
                                                         BLOCK_L)
        offs_j = tl.arange(0, BLOCK_J)
        mask_j = offs_j < sums
        acc_r = tl.zeros([BLOCK_J, BLOCK_L], dtype=tl.float32)
        acc_i = tl.zeros([BLOCK_J, BLOCK_L], dtype=tl.float32)
        for n0 in range(0, state, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < state
            lr, li = _load_complex(lam_r, lam_i, h * state + offs_n, mask_n)
            rr, ri = _reciprocals(ar, ai, br, bi, lr, li, mask_n[:, None] & mask_l[None, :])
            v_offsets = h * sums * state + offs_j[:, None] * state + offs_n[None, :]
            vr, vi = _load_complex(num_r, num_i, v_offsets, mask_j[:, None] & mask_n[None, :])
            pr, pi = _cdot(vr, vi, rr, ri)
            acc_r += pr
            acc_i += pi
        out = h * sums * length + offs_j[:, None] * length + offs_l[None, :]
        mask = mask_j[:, None] & mask_l[None, :]
        tl.store(out_r + out, acc_r, mask=mask)
        tl.store(out_i + out, acc_i, mask=mask)

    @triton.jit
    def _cauchy_weighted_grad(vtr, vti, gr, gi, rr, ri):
        """``W = (conj(v)^T g) * conj(r)^2``: ``(BLOCK_N, BLOCK_L)``, minus dL/d(denominator)."""
        sr, si = _cdot(vtr, -vti, gr, gi)
        qr = rr * rr - ri * ri
        qi = -2 * rr * ri
        return sr * qr - si * qi, sr * qi + si * qr

    @triton.jit
    def _cauchy_bwd_b_kernel(
        num_r, num_i, a_r, a_i, b_r, b_i, lam_r, lam_i, g_r, g_i, gb_r, gb_i, sums, state, length,
        BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    ):
        # grad_b[h, l] = sum_n conj(lambda_n) W[n, l]: one program per (channel, frequency tile).
        h = tl.program_id(0).to(tl.int64)
        offs_l, mask_l, ar, ai, br, bi = _frequency_tile(a_r, a_i, b_r, b_i, h, tl.program_id(1) * BLOCK_L, length,
                                                         BLOCK_L)
        offs_j = tl.arange(0, BLOCK_J)
        mask_j = offs_j < sums
        g_offsets = h * sums * length + offs_j[:, None] * length + offs_l[None, :]
        gr, gi = _load_complex(g_r, g_i, g_offsets, mask_j[:, None] & mask_l[None, :])
        acc_r = tl.zeros([BLOCK_L], dtype=tl.float32)
        acc_i = tl.zeros([BLOCK_L], dtype=tl.float32)
        for n0 in range(0, state, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < state
            lr, li = _load_complex(lam_r, lam_i, h * state + offs_n, mask_n)
            rr, ri = _reciprocals(ar, ai, br, bi, lr, li, mask_n[:, None] & mask_l[None, :])
            vt_offsets = h * sums * state + offs_j[None, :] * state + offs_n[:, None]
            vtr, vti = _load_complex(num_r, num_i, vt_offsets, mask_n[:, None] & mask_j[None, :])
            wr, wi = _cauchy_weighted_grad(vtr, vti, gr, gi, rr, ri)
            acc_r += tl.sum(lr[:, None] * wr + li[:, None] * wi, axis=0)
            acc_i += tl.sum(lr[:, None] * wi - li[:, None] * wr, axis=0)
        tl.store(gb_r + h * length + offs_l, acc_r, mask=mask_l)
        tl.store(gb_i + h * length + offs_l, acc_i, mask=mask_l)

    @triton.jit
    def _cauchy_bwd_state_kernel(
        num_r, num_i, a_r, a_i, b_r, b_i, lam_r, lam_i, g_r, g_i, gv_r, gv_i, gl_r, gl_i, sums, state, length,
        BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    ):
        # grad_v[h, j, n] = sum_l g[j, l] conj(r[n, l]) and grad_lambda[h, n] = sum_l W[n, l] conj(b_l):
        # one program per (channel, state block), looping over frequency tiles.
        h = tl.program_id(0).to(tl.int64)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < state
        offs_j = tl.arange(0, BLOCK_J)
        mask_j = offs_j < sums
        lr, li = _load_complex(lam_r, lam_i, h * state + offs_n, mask_n)
        vt_offsets = h * sums * state + offs_j[None, :] * state + offs_n[:, None]
        vtr, vti = _load_complex(num_r, num_i, vt_offsets, mask_n[:, None] & mask_j[None, :])
        acc_v_r = tl.zeros([BLOCK_J, BLOCK_N], dtype=tl.float32)
        acc_v_i = tl.zeros([BLOCK_J, BLOCK_N], dtype=tl.float32)
        acc_l_r = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
        for l0 in range(0, length, BLOCK_L):
            offs_l, mask_l, ar, ai, br, bi = _frequency_tile(a_r, a_i, b_r, b_i, h, l0, length, BLOCK_L)
            rr, ri = _reciprocals(ar, ai, br, bi, lr, li, mask_n[:, None] & mask_l[None, :])
            g_offsets = h * sums * length + offs_j[:, None] * length + offs_l[None, :]
            gr, gi = _load_complex(g_r, g_i, g_offsets, mask_j[:, None] & mask_l[None, :])
            pr, pi = _cdot(gr, gi, tl.trans(rr), -tl.trans(ri))
            acc_v_r += pr
            acc_v_i += pi
            wr, wi = _cauchy_weighted_grad(vtr, vti, gr, gi, rr, ri)
            acc_l_r += tl.sum(wr * br[None, :] + wi * bi[None, :], axis=1)
            acc_l_i += tl.sum(wi * br[None, :] - wr * bi[None, :], axis=1)
        v_out = h * sums * state + offs_j[:, None] * state + offs_n[None, :]
        v_mask = mask_j[:, None] & mask_n[None, :]
        tl.store(gv_r + v_out, acc_v_r, mask=v_mask)
        tl.store(gv_i + v_out, acc_v_i, mask=v_mask)
        tl.store(gl_r + h * state + offs_n, acc_l_r, mask=mask_n)
        tl.store(gl_i + h * state + offs_n, acc_l_i, mask=mask_n)


def vandermonde_forward(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
    """``2 Re(sum_n coef[r, n] z[r % channels, n]^l)``: coef ``(rows, state)``, log_z ``(channels, state)``
    complex64 -> real ``(rows, length)`` float32."""
    rows, state = coef.shape
    channels = log_z.shape[0]
    block_n, block_l = vandermonde_blocks(state, length)
    tiles = min(TILES_PER_PROGRAM, -(-length // block_l))
    out = torch.zeros(rows, length, device=coef.device, dtype=torch.float32)
    grid = (rows, triton.cdiv(length, block_l * tiles))
    _vandermonde_fwd_kernel[grid](*_split(coef), *_split(log_z), out, channels, state, length,
                                  BLOCK_N=block_n, BLOCK_L=block_l, TILES=tiles)
    return out


def vandermonde_backward_sums(grad: torch.Tensor, log_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_l g[r, l] z^l, sum_l g[r, l] l z^l)``, each complex64 ``(rows, state)``, for
    grad ``(rows, length)`` float32 and log_z complex64 ``(channels, state)``."""
    rows, length = grad.shape
    channels, state = log_z.shape
    block_n, block_l = vandermonde_blocks(state, length)
    sums = torch.empty(4, rows, state, device=grad.device, dtype=torch.float32)
    grid = (rows, triton.cdiv(state, block_n))
    _vandermonde_bwd_kernel[grid](grad.contiguous(), *_split(log_z), *sums, channels, state, length,
                                  BLOCK_N=block_n, BLOCK_L=block_l)
    return torch.complex(sums[0], sums[1]), torch.complex(sums[2], sums[3])


def cauchy_forward(numerators, a, b, lam) -> torch.Tensor:
    """``sum_n numerators[h, j, n] / (a[l] - b[h, l] lam[h, n])``, complex64 ``(channels, sums, length)``."""
    channels, sums, state = numerators.shape
    length = a.shape[0]
    block_j, block_n, block_l = cauchy_blocks(sums, state, length)
    out = torch.empty(2, channels, sums, length, device=a.device, dtype=torch.float32)
    grid = (channels, triton.cdiv(length, block_l))
    _cauchy_fwd_kernel[grid](*_split(numerators), *_split(a), *_split(b), *_split(lam), *out, sums, state, length,
                             BLOCK_J=block_j, BLOCK_N=block_n, BLOCK_L=block_l)
    return torch.complex(out[0], out[1])


def cauchy_backward(grad, numerators, a, b, lam) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_numerators, grad_b, grad_lam)`` in PyTorch's convention, complex64, for complex64 ``grad``
    ``(channels, sums, length)`` (see :mod:`seqarch.kernels.ssm_kernel` for the formulas)."""
    channels, sums, state = numerators.shape
    length = a.shape[0]
    block_j, block_n, block_l = cauchy_blocks(sums, state, length)
    inputs = (*_split(numerators), *_split(a), *_split(b), *_split(lam), *_split(grad))
    grad_b = torch.empty(2, channels, length, device=a.device, dtype=torch.float32)
    _cauchy_bwd_b_kernel[(channels, triton.cdiv(length, block_l))](
        *inputs, *grad_b, sums, state, length, BLOCK_J=block_j, BLOCK_N=block_n, BLOCK_L=block_l)
    grad_num = torch.empty(2, channels, sums, state, device=a.device, dtype=torch.float32)
    grad_lam = torch.empty(2, channels, state, device=a.device, dtype=torch.float32)
    _cauchy_bwd_state_kernel[(channels, triton.cdiv(state, block_n))](
        *inputs, *grad_num, *grad_lam, sums, state, length, BLOCK_J=block_j, BLOCK_N=block_n, BLOCK_L=block_l)
    return (torch.complex(grad_num[0], grad_num[1]), torch.complex(grad_b[0], grad_b[1]),
            torch.complex(grad_lam[0], grad_lam[1]))
