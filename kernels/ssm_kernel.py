"""Convolution kernels of state-space layers without the ``(channels, state, length)`` tensor.

Two ops, each with Triton forward and backward kernels, a PyTorch twin, an autograd
Function, its Triton limits and one public function:

- :func:`vandermonde_kernel`: the S4D kernel ``K[h, l] = 2 Re(sum_n C[h, n] z[h, n]^l)``,
  ``z = exp(log_z)`` (Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of
  Diagonal State Space Models", NeurIPS 2022).
- :func:`cauchy_kernel`: the Cauchy sums ``sum_n v[h, j, n] / (a[l] - b[h, l] lambda[h, n])``
  of S4's generating function (Gu, Goel, Ré, "Efficiently Modeling Long Sequences with
  Structured State Spaces", ICLR 2022).

Triton has no complex dtype, so every complex tensor travels to the kernels as two
contiguous real tensors (real part, imaginary part) and the kernels spell out complex
arithmetic (complex64 only).  No kernel writes a ``(channels, state, length)`` tensor: each
program rebuilds its ``(state block, position block)`` tile of powers or reciprocals in
registers and reduces it at once.

Gradients follow PyTorch's complex convention (``grad = dL/dRe p + i dL/dIm p`` for a real
loss ``L``).  Vandermonde, with ``S0 = sum_l g_l z^l`` and ``S1 = sum_l g_l l z^l``:
``grad_C = 2 conj(S0)``, ``grad_log_z = 2 conj(C S1)`` (summed over leading batch dims).
Cauchy, with ``r = 1/d``, ``d = a - b lambda``: ``grad_v = sum_l g conj(r)``,
``W = (sum_j conj(v) g) conj(r)^2`` (minus ``dL/dd``), ``grad_b = sum_n conj(lambda) W``,
``grad_lambda = sum_l W conj(b)`` (``d``'s minus signs cancel ``W``'s).
"""

from __future__ import annotations

import math

import torch

from .backend import device_guard, interpreting, select, triton_available
from .tensor_checks import check_like, dtype_names, empty_result

# Complex dtypes the Triton kernels run in (see vandermonde_triton_limits, cauchy_triton_limits).
TRITON_DTYPES = (torch.complex64,)
DTYPES = (torch.complex64, torch.complex128)
# Complex elements of one (channels, state, chunk) block of the Cauchy twin: 2^18 complex64 is 2 MiB, so
# the few elementwise passes over a block run in cache (on one CPU core the twin's forward and backward
# take about half the time they take with 32 MiB blocks, and a seventh of the old twin's with its extra
# passes; scripts/bench_layers.py).
CAUCHY_CHUNK_ELEMENTS = 1 << 18
# Most states per register tile (the Vandermonde kernels loop over larger states).
MAX_BLOCK_STATE = 32
# Position tiles per Vandermonde forward program: their powers reuse one tile z^i.
TILES_PER_PROGRAM = 8


# -- Vandermonde (S4D) ---------------------------------------------------------------------------
def vandermonde_block_size(length: int) -> int:
    """Block ``b ~ sqrt(length)`` of the twin's split ``l = j b + i``."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def vandermonde_kernel_reference(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
    """The PyTorch twin of :func:`vandermonde_kernel` (same arguments, same result).

    Splitting ``l = j b + i`` with ``b ~ sqrt(length)`` makes the sum one real batched
    matrix product of a ``(channels, length/b, 2 state)`` factor by a ``(channels, 2 state, b)``
    factor: memory ``O(channels * state * sqrt(length))``, gradients by autograd.
    """
    block = vandermonde_block_size(length)
    n_blocks = -(-length // block)
    real_dtype = log_z.real.dtype
    steps_in = torch.arange(block, device=log_z.device, dtype=real_dtype)
    steps_out = torch.arange(n_blocks, device=log_z.device, dtype=real_dtype) * block
    inner = torch.exp(log_z.unsqueeze(-1) * steps_in)  # (channels, state, block)
    outer = coef.unsqueeze(-2) * torch.exp(log_z.unsqueeze(-2) * steps_out.unsqueeze(-1))
    # Re(u v) = Re u Re v - Im u Im v: one real product with twice the inner dimension.
    left = torch.cat([outer.real, -outer.imag], dim=-1)  # (..., channels, n_blocks, 2 state)
    right = torch.cat([inner.real, inner.imag], dim=-2)  # (channels, 2 state, block)
    out = 2 * torch.matmul(left, right)  # (..., channels, n_blocks, block)
    return out.flatten(-2)[..., :length]


def offtheshelf_vandermonde_kernel(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
    """The materialising baseline for benchmarks: builds the ``(..., channels, state, length)`` powers."""
    steps = torch.arange(length, device=log_z.device, dtype=log_z.real.dtype)
    return 2 * (coef.unsqueeze(-1) * torch.exp(log_z.unsqueeze(-1) * steps)).sum(-2).real


# -- Cauchy (S4) ---------------------------------------------------------------------------------
def _cauchy_chunk(channels: int, state: int, length: int, chunk_elements: int) -> int:
    return max(1, min(length, chunk_elements // max(1, channels * state)))


def cauchy_kernel_reference(numerators: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, *,
                            chunk_elements: int = CAUCHY_CHUNK_ELEMENTS) -> torch.Tensor:
    """The PyTorch twin of :func:`cauchy_kernel` (same arguments, same result, non-empty ``a``):
    frequency chunk by frequency chunk, reciprocals recomputed in the backward pass, so memory
    stays ``O(channels * state * chunk)`` with ``chunk * channels * state <= chunk_elements``."""
    return _CauchyReferenceFunction.apply(numerators, a, b, lam, chunk_elements)


def _cauchy_reciprocals(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``1 / (a[l] - b[h, l] lam[h, n])`` as a new ``(H, m, c)`` tensor in two passes over it.

    ``addcmul`` writes the denominators in one pass and ``reciprocal_`` inverts them in place
    (``1 / t`` would add a pass multiplying by one); called with conjugated inputs it gives
    ``conj(r)`` without the copy a conjugate view costs when a product resolves it."""
    return torch.addcmul(a, b.unsqueeze(-2), lam.unsqueeze(-1), value=-1).reciprocal_()


class _CauchyReferenceFunction(torch.autograd.Function):
    """Autograd of :func:`cauchy_kernel_reference`: ``apply(numerators, a, b, lam, chunk_elements)``."""

    @staticmethod
    def forward(ctx, numerators, a, b, lam, chunk_elements):
        channels, sums, state = numerators.shape
        length = a.shape[-1]
        chunk = _cauchy_chunk(channels, state, length, chunk_elements)
        out = numerators.new_empty(channels, sums, length)
        for start in range(0, length, chunk):
            stop = min(length, start + chunk)
            r = _cauchy_reciprocals(a[start:stop], b[:, start:stop], lam)  # (H, m, c)
            out[..., start:stop] = numerators @ r  # (H, J, c)
        ctx.save_for_backward(numerators, a, b, lam)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        numerators, a, b, lam = ctx.saved_tensors
        length, chunk = a.shape[-1], ctx.chunk
        grad_num = torch.zeros_like(numerators)
        grad_lam = torch.zeros_like(lam)
        grad_b = torch.empty_like(b)
        # Conjugates of the small inputs, materialised once (a conjugate view inside a product
        # is copied on every use): conj(r) = 1 / (conj(a) - conj(b) conj(lam)).
        a_conj, b_conj, lam_conj = a.conj().resolve_conj(), b.conj().resolve_conj(), lam.conj().resolve_conj()
        num_conj_t = numerators.conj().transpose(-1, -2).resolve_conj()  # (H, m, J)
        lam_row = lam_conj.unsqueeze(-2)  # (H, 1, m)
        for start in range(0, length, chunk):
            stop = min(length, start + chunk)
            b_chunk = b_conj[:, start:stop]
            r_conj = _cauchy_reciprocals(a_conj[start:stop], b_chunk, lam_conj)  # (H, m, c)
            g = grad_out[..., start:stop]  # (H, J, c)
            grad_num += torch.bmm(g, r_conj.transpose(-1, -2))
            grad_d = torch.bmm(num_conj_t, g).mul_(r_conj).mul_(r_conj)  # -(dL/dd): (H, m, c)
            # The two reductions of grad_d as batched products, not broadcast temporaries.
            grad_b[:, start:stop] = torch.bmm(lam_row, grad_d).squeeze(-2)
            grad_lam += torch.bmm(grad_d, b_chunk.unsqueeze(-1)).squeeze(-1)
        return grad_num, None, grad_b, grad_lam, None


def offtheshelf_cauchy_kernel(numerators: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                              lam: torch.Tensor) -> torch.Tensor:
    """The materialising baseline for benchmarks: the broadcast ``(channels, state, length)`` Cauchy matrix."""
    return numerators @ (1 / (a - b[:, None, :] * lam[..., None]))


# -- Triton kernels and launchers ---------------------------------------------------------------
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


def _vandermonde_forward(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
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


def _vandermonde_backward_sums(grad: torch.Tensor, log_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _cauchy_forward(numerators, a, b, lam) -> torch.Tensor:
    """``sum_n numerators[h, j, n] / (a[l] - b[h, l] lam[h, n])``, complex64 ``(channels, sums, length)``."""
    channels, sums, state = numerators.shape
    length = a.shape[0]
    block_j, block_n, block_l = cauchy_blocks(sums, state, length)
    out = torch.empty(2, channels, sums, length, device=a.device, dtype=torch.float32)
    grid = (channels, triton.cdiv(length, block_l))
    _cauchy_fwd_kernel[grid](*_split(numerators), *_split(a), *_split(b), *_split(lam), *out, sums, state, length,
                             BLOCK_J=block_j, BLOCK_N=block_n, BLOCK_L=block_l)
    return torch.complex(out[0], out[1])


def _cauchy_backward(grad, numerators, a, b, lam) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_numerators, grad_b, grad_lam)`` in PyTorch's convention, complex64, for complex64 ``grad``
    ``(channels, sums, length)`` (formulas in the module docstring)."""
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


# -- autograd Functions of the Triton path ------------------------------------------------------
class VandermondeKernelFunction(torch.autograd.Function):
    """:func:`vandermonde_kernel` on the Triton kernels (complex64 in, float32 out)."""

    @staticmethod
    def forward(ctx, coef, log_z, length):
        rows = coef.reshape(-1, coef.shape[-1])
        ctx.save_for_backward(rows, log_z)
        ctx.coef_shape = coef.shape
        with device_guard(rows):
            out = _vandermonde_forward(rows, log_z, length)
        return out.reshape(*coef.shape[:-1], length)

    @staticmethod
    def backward(ctx, grad_out):
        rows, log_z = ctx.saved_tensors
        grad = grad_out.reshape(rows.shape[0], -1).to(torch.float32)
        with device_guard(grad):
            s0, s1 = _vandermonde_backward_sums(grad, log_z)
        grad_coef = (2 * s0.conj()).reshape(ctx.coef_shape) if ctx.needs_input_grad[0] else None
        grad_log_z = None
        if ctx.needs_input_grad[1]:
            grad_log_z = (2 * (rows * s1).conj()).reshape(-1, *log_z.shape).sum(0)
        return grad_coef, grad_log_z, None


class CauchyKernelFunction(torch.autograd.Function):
    """:func:`cauchy_kernel` on the Triton kernels (complex64)."""

    @staticmethod
    def forward(ctx, numerators, a, b, lam):
        ctx.save_for_backward(numerators, a, b, lam)
        with device_guard(numerators):
            return _cauchy_forward(numerators, a, b, lam)

    @staticmethod
    def backward(ctx, grad_out):
        with device_guard(grad_out):
            grad_num, grad_b, grad_lam = _cauchy_backward(grad_out, *ctx.saved_tensors)
        return grad_num, None, grad_b, grad_lam


# -- public functions ----------------------------------------------------------------------------
def vandermonde_kernel(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
    """``K[..., h, l] = 2 Re(sum_n coef[..., h, n] * exp(log_z[h, n] * l))`` for ``l < length``.

    Args:
        coef: complex ``(..., channels, state)``; leading dimensions are batched (S4D passes
            ``(directions, channels, state)``, its prefill ``(batch, channels, state)``).
        log_z: complex ``(channels, state)``, the log of the eigenvalues (``dt * A``).
        length: positive int, number of positions.
    Returns:
        real ``(..., channels, length)`` in ``coef``'s real dtype.

    Dtypes: complex64 or complex128 (same for both).  Memory: no ``(channels, state, length)``
    tensor in either pass (Triton: ``O(rows * (state + length))``; twin:
    ``O(rows * state * sqrt(length))``).  No rows or channels: an empty result.

    Backends (:mod:`seqarch.kernels.backend`): the Triton kernels run complex64 (fp32
    arithmetic, :func:`vandermonde_triton_limits`); complex128 runs the PyTorch twin
    (:func:`vandermonde_kernel_reference`) under ``auto`` and raises ``ValueError`` under
    forced ``triton``.
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length: expected a positive int, got {length!r}")
    if not isinstance(log_z, torch.Tensor) or log_z.dim() != 2 or log_z.dtype not in DTYPES:
        got = f"{log_z.dtype} of shape {tuple(log_z.shape)}" if isinstance(log_z, torch.Tensor) else type(log_z)
        raise ValueError(f"log_z: expected complex (channels, state), got {got}")
    if not isinstance(coef, torch.Tensor) or coef.dim() < 2 or coef.shape[-2:] != log_z.shape:
        got = tuple(coef.shape) if isinstance(coef, torch.Tensor) else type(coef).__name__
        raise ValueError(f"coef: expected shape (..., {log_z.shape[0]}, {log_z.shape[1]}), got {got}")
    check_like("log_z", log_z, {"coef": coef})
    if coef.shape[:-1].numel() == 0:
        return empty_result((*coef.shape[:-1], length), coef.real, coef, log_z)
    if select("vandermonde_kernel", coef, vandermonde_triton_limits(coef, log_z, length)) == "triton":
        return VandermondeKernelFunction.apply(coef, log_z, length)
    return vandermonde_kernel_reference(coef, log_z, length)


def vandermonde_triton_limits(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> str | None:
    """Why the Triton path cannot take ``vandermonde_kernel(coef, log_z, length)``, or None when it can."""
    if coef.dtype not in TRITON_DTYPES:
        return f"coef: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {coef.dtype}"
    return None


def cauchy_kernel(numerators: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, *,
                  chunk_elements: int = CAUCHY_CHUNK_ELEMENTS) -> torch.Tensor:
    """``out[h, j, l] = sum_n numerators[h, j, n] / (a[l] - b[h, l] * lam[h, n])``.

    Args:
        numerators: complex ``(channels, sums, state)``.
        a: complex ``(length,)``, a constant (it must not require a gradient).
        b: complex ``(channels, length)``.
        lam: complex ``(channels, state)``.
        chunk_elements: complex elements of one ``(channels, state, chunk)`` block of the PyTorch
            twin (its memory bound); the Triton kernels keep their tiles in registers.
    Returns:
        complex ``(channels, sums, length)``; empty when ``channels``, ``sums`` or ``length`` is 0.

    Dtypes: complex64 or complex128, the same for all four.  No ``(channels, state, length)``
    tensor is held in either pass.

    Backends (:mod:`seqarch.kernels.backend`): the Triton kernels run complex64 (fp32
    arithmetic, IEEE ``tl.dot``; :func:`cauchy_triton_limits`); complex128 runs the PyTorch
    twin (:func:`cauchy_kernel_reference`) under ``auto`` and raises ``ValueError`` under
    forced ``triton``.
    """
    for name, tensor in (("lam", lam), ("numerators", numerators), ("a", a), ("b", b)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name}: expected a complex tensor, got {type(tensor).__name__}")
    if lam.dim() != 2 or lam.dtype not in DTYPES:
        raise ValueError(f"lam: expected complex (channels, state), got {lam.dtype} of shape {tuple(lam.shape)}")
    if numerators.dim() != 3 or numerators.shape[::2] != lam.shape:
        raise ValueError(
            f"numerators: expected (channels, sums, state) matching lam {tuple(lam.shape)}, "
            f"got {tuple(numerators.shape)}"
        )
    if a.dim() != 1:
        raise ValueError(f"a: expected rank 1 (length,), got shape {tuple(a.shape)}")
    if a.requires_grad:
        raise ValueError("a: expected a constant, got a tensor that requires grad (its gradient is not computed)")
    if b.shape != (lam.shape[0], a.shape[-1]):
        raise ValueError(f"b: expected shape {(lam.shape[0], a.shape[-1])}, got {tuple(b.shape)}")
    check_like("lam", lam, {"numerators": numerators, "a": a, "b": b})
    if not isinstance(chunk_elements, int) or isinstance(chunk_elements, bool) or chunk_elements < 1:
        raise ValueError(f"chunk_elements: expected a positive int, got {chunk_elements!r}")
    shape = (*numerators.shape[:2], a.shape[0])
    if math.prod(shape) == 0:
        return empty_result(shape, lam, numerators, b, lam)
    if select("cauchy_kernel", lam, cauchy_triton_limits(numerators, a, b, lam)) == "triton":
        return CauchyKernelFunction.apply(numerators, a, b, lam)
    return cauchy_kernel_reference(numerators, a, b, lam, chunk_elements=chunk_elements)


def cauchy_triton_limits(numerators: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, *,
                         chunk_elements: int = CAUCHY_CHUNK_ELEMENTS) -> str | None:
    """Why the Triton path cannot take ``cauchy_kernel(numerators, a, b, lam)``, or None when it can."""
    if lam.dtype not in TRITON_DTYPES:
        return f"lam: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {lam.dtype}"
    return None
