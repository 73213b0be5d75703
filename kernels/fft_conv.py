"""Long depthwise convolution by FFT, with the DFT as Monarch matrix products (FlashFFTConv).

``y = post_gate * conv(pre_gate * u, k)`` for ``u: (batch, channels, length)`` and a
per-channel filter ``k: (channels, filter_length)``, causal (zero padding to an FFT of
size ``N = 2 length``, the first ``length`` outputs kept) or circular (``N = length``).
The gated form is the Hyena / Monarch Mixer order-2 pattern.

The Triton kernels follow FlashFFTConv (Fu et al., "FlashFFTConv: Efficient
Convolutions for Long Sequences with Tensor Cores", 2023): a DFT of size
``N = NA * NB`` is a "Monarch" product -- view the sequence as an ``(NA, NB)`` matrix
``X[a, b] = x[a NB + b]``; ``F_NA @ X``, a pointwise twiddle ``w_N^(b ka)``, then
``@ F_NB`` -- which leaves the spectrum in a permuted order ``(ka, kb) -> ka + NA kb``.
The pointwise product with the filter's spectrum (permuted the same way, computed
once per call by ``torch.fft``) does not care about the order, and the inverse DFT
undoes it, so the whole convolution of one sequence runs inside one program with
real and imaginary parts carried as separate fp32 tiles. Sizes ``N <= MAX_ROW_FFT``
stay in registers. Larger sizes add a third factor: ``N = N1 * R``, a column DFT of
size ``N1`` with its twiddle, then the two-factor DFT (and the filter product and
its inverse) on each of the ``N1`` rows of size ``R``; between these stages the
sequence lives in a per-program scratch buffer (programs loop over sequences, so the
scratch is bounded by the number of programs: about 38 MB at N = 32768 on an H100, sized for its L2).

Backward: ``grad_v = corr(post_gate * grad_y, k)`` (the same kernel with the conjugate
filter spectrum), ``grad_u = pre_gate * grad_v``, ``grad_pre = u * grad_v``,
``grad_post = grad_y * conv(pre_gate * u, k)`` (saved from the forward) and
``grad_k = sum_batch corr(post_gate * grad_y, pre_gate * u)`` (the kernel's "pair"
product: the conjugate spectrum of a second sequence instead of the filter's). One
launch computes both from a single FFT of ``post_gate * grad_y``.
"""

from __future__ import annotations

import functools
import math

import torch

from .backend import device_guard, select, triton_available
from .tensor_checks import check_like, dot_precision, dtype_names, empty_result

MIN_LENGTH = 256  # the smallest DFT factor a GPU tl.dot takes is 16, and 16 * 16 = 256
MAX_LENGTH = 65536  # the outer DFT factor N1 stays <= 128 up to N = 2 * 65536
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_ROW_FFT = 4096  # largest FFT size run as two factors in registers; larger ones use three
_PROGRAMS_PER_SM = 2  # three-factor path: persistent programs, each with its own scratch


# -- PyTorch twin ------------------------------------------------------------------------
def fft_conv_reference(
    u: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    pre_gate: torch.Tensor | None = None,
    post_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rfft/irfft twin: ``post_gate * conv(pre_gate * u, k)`` for any length.

    ``u: (..., channels, length)``, ``k: (channels, filter_length <= length)``, gates
    like ``u`` or None. Computed in at least float32; returns ``u``'s dtype.
    """
    work = torch.promote_types(u.dtype, torch.float32)
    length = u.shape[-1]
    n = 2 * length if causal else length
    v = u.to(work) if pre_gate is None else u.to(work) * pre_gate.to(work)
    y = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k.to(work), n=n), n=n)[..., :length]
    if post_gate is not None:
        y = y * post_gate.to(work)
    return y.to(u.dtype)


def offtheshelf_fft_conv(u: torch.Tensor, k: torch.Tensor, *, causal: bool = True) -> torch.Tensor:
    """The off-the-shelf alternative for benchmarks: ``torch.fft`` rfft/irfft convolution (cuFFT on GPUs)."""
    return fft_conv_reference(u, k, causal=causal)


# -- plan and constant tables ------------------------------------------------------------
def _split(n: int) -> tuple[int, int]:
    """``n = na * nb`` with ``na <= nb`` powers of two as close as possible."""
    na = 1 << (n.bit_length() - 1) // 2
    return na, n // na


def fft_plan(n: int, max_row: int | None = None) -> tuple[int, int, int]:
    """``(N1, NA, NB)`` with ``n = N1 * NA * NB``: ``N1 = 1`` (two factors) when ``n <= max_row``."""
    max_row = MAX_ROW_FFT if max_row is None else max_row
    if n <= max_row:
        return (1, *_split(n))
    row = min(max_row // 4, n // 16)
    return (n // row, *_split(row))


def _dft(rows: int, cols: int, n: int) -> torch.Tensor:
    """``exp(-2 pi i r c / n)`` for ``r < rows, c < cols``, as ``(2, rows, cols)`` float64 (real, imag)."""
    r = torch.arange(rows, dtype=torch.float64)[:, None]
    c = torch.arange(cols, dtype=torch.float64)[None, :]
    angle = -2 * math.pi * torch.remainder(r * c, n) / n  # the remainder keeps the angle exact
    return torch.stack([torch.cos(angle), torch.sin(angle)])


@functools.lru_cache(maxsize=32)
def _tables(plan: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """DFT matrices and twiddles of a plan, flattened into one fp32 buffer in the kernel's order:
    ``F_NA, F_NB, twiddle (NA, NB)`` of the row DFT, then ``F_N1, twiddle (N1, R)`` of the outer one."""
    n1, na, nb = plan
    row = na * nb
    parts = [_dft(na, na, na), _dft(nb, nb, nb), _dft(na, nb, row), _dft(n1, n1, n1), _dft(n1, row, n1 * row)]
    return torch.cat([p.flatten() for p in parts]).to(device=device, dtype=torch.float32)


@functools.lru_cache(maxsize=32)
def _spectrum_order(plan: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """Frequency held at each flat position ``k1 R + ka NB + kb`` of the kernel's spectrum:
    ``k1 + N1 (ka + NA kb)``."""
    n1, na, nb = plan
    k1, ka, kb = torch.meshgrid(torch.arange(n1), torch.arange(na), torch.arange(nb), indexing="ij")
    return (k1 + n1 * (ka + na * kb)).flatten().to(device)


def _filter_spectrum(k: torch.Tensor, n: int, plan: tuple[int, int, int]) -> torch.Tensor:
    """``(channels, 2, n)`` fp32: real and imaginary FFT of the zero-padded filter, in the kernel's order."""
    spectrum = torch.fft.fft(k.detach().float(), n=n)[:, _spectrum_order(plan, k.device)]
    return torch.stack([spectrum.real, spectrum.imag], dim=1).contiguous()


# -- Triton kernels ----------------------------------------------------------------------
if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _cmm(ar, ai, br, bi, B_REAL: tl.constexpr, REAL_OUT: tl.constexpr, PREC: tl.constexpr):
        """Complex ``(ar + i ai) @ (br + i bi)``; ``bi`` unused when B_REAL, the imaginary part when REAL_OUT."""
        if B_REAL:
            re = tl.dot(ar, br, input_precision=PREC)
            im = tl.dot(ai, br, input_precision=PREC)
        else:
            re = tl.dot(ar, br, input_precision=PREC) - tl.dot(ai, bi, input_precision=PREC)
            if REAL_OUT:
                im = re
            else:
                im = tl.dot(ar, bi, input_precision=PREC) + tl.dot(ai, br, input_precision=PREC)
        return re, im

    @triton.jit
    def _load_table(tab_ptr, OFFSET: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
        offs = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
        return tl.load(tab_ptr + OFFSET + offs), tl.load(tab_ptr + OFFSET + ROWS * COLS + offs)

    @triton.jit
    def _row_dft(xr, xi, far, fai, twr, twi, fbr, fbi, X_REAL: tl.constexpr, PREC: tl.constexpr):
        """Monarch DFT of an ``(NA, NB)`` tile ``X[a, b] = x[a NB + b]``: ``((F_NA @ X) * twiddle) @ F_NB``,
        holding frequency ``ka + NA kb`` at ``[ka, kb]``."""
        pr, pi = _cmm(far, fai, xr, xi, X_REAL, False, PREC)
        pr, pi = pr * twr - pi * twi, pr * twi + pi * twr
        return _cmm(pr, pi, fbr, fbi, False, False, PREC)

    @triton.jit
    def _row_idft(qr, qi, far, fai, twr, twi, fbr, fbi, REAL_OUT: tl.constexpr, PREC: tl.constexpr):
        """Inverse of :func:`_row_dft` without the ``1/N``: conjugate matrices in reverse order."""
        dr, di = _cmm(qr, qi, fbr, -fbi, False, False, PREC)
        dr, di = dr * twr + di * twi, di * twr - dr * twi
        return _cmm(far, -fai, dr, di, False, REAL_OUT, PREC)

    @triton.jit
    def _load_gated(x_ptr, gate_ptr, offs, mask, HAS_GATE: tl.constexpr):
        """``x * gate`` in fp32, zero where ``mask`` is off (the causal zero padding)."""
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_GATE:
            x = x * tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        return x

    @triton.jit
    def _store_outputs(y, offs, mask, out_ptr, out_gate_ptr, out2_ptr, out2_gate_ptr, raw_ptr,
                       HAS_OUT_GATE: tl.constexpr, HAS_OUT2: tl.constexpr, STORE_RAW: tl.constexpr):
        """``out = y * out_gate``, optionally ``out2 = y * out2_gate`` and ``raw = y``."""
        if STORE_RAW:
            tl.store(raw_ptr + offs, y.to(raw_ptr.dtype.element_ty), mask=mask)
        if HAS_OUT2:
            gate2 = tl.load(out2_gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(out2_ptr + offs, (y * gate2).to(out2_ptr.dtype.element_ty), mask=mask)
        if HAS_OUT_GATE:
            y = y * tl.load(out_gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _outer_dft(x_ptr, gate_ptr, length, dst_ptr, f1r, f1i, t1_ptr, N1: tl.constexpr, R: tl.constexpr,
                   BLOCK_COLS: tl.constexpr, HAS_GATE: tl.constexpr, PREC: tl.constexpr):
        """Three-factor path, first stage: DFTs of size N1 down the columns of the ``(N1, R)`` view of a
        real sequence, times the twiddle ``w_N^(k1 m)``, into ``dst: (2, N1, R)``."""
        rows = tl.arange(0, N1)[:, None] * R
        for c0 in range(0, R, BLOCK_COLS):
            offs = rows + c0 + tl.arange(0, BLOCK_COLS)[None, :]
            x = _load_gated(x_ptr, gate_ptr, offs, offs < length, HAS_GATE)
            br, bi = _cmm(f1r, f1i, x, x, True, False, PREC)
            tr = tl.load(t1_ptr + offs)
            ti = tl.load(t1_ptr + N1 * R + offs)
            tl.store(dst_ptr + offs, br * tr - bi * ti)
            tl.store(dst_ptr + N1 * R + offs, br * ti + bi * tr)

    @triton.jit
    def _outer_idft(src_ptr, f1r, f1i, t1_ptr, out_length, out_ptr, out_gate_ptr, out2_ptr, out2_gate_ptr,
                    raw_ptr, N1: tl.constexpr, R: tl.constexpr, BLOCK_COLS: tl.constexpr,
                    HAS_OUT_GATE: tl.constexpr, HAS_OUT2: tl.constexpr, STORE_RAW: tl.constexpr,
                    PREC: tl.constexpr):
        """Three-factor path, last stage: the inverse of :func:`_outer_dft` (real part, with ``1/N``)."""
        rows = tl.arange(0, N1)[:, None] * R
        for c0 in range(0, R, BLOCK_COLS):
            offs = rows + c0 + tl.arange(0, BLOCK_COLS)[None, :]
            tr = tl.load(t1_ptr + offs)
            ti = tl.load(t1_ptr + N1 * R + offs)
            dr = tl.load(src_ptr + offs)
            di = tl.load(src_ptr + N1 * R + offs)
            dr, di = dr * tr + di * ti, di * tr - dr * ti
            y, _ = _cmm(f1r, -f1i, dr, di, False, True, PREC)
            _store_outputs(y * (1.0 / (N1 * R)), offs, offs < out_length, out_ptr, out_gate_ptr, out2_ptr,
                           out2_gate_ptr, raw_ptr, HAS_OUT_GATE, HAS_OUT2, STORE_RAW)

    @triton.jit
    def _fft_conv_kernel(
        a_ptr, a_gate_ptr, b_ptr, b_gate_ptr, w_ptr, tab_ptr, scratch_ptr,
        out_ptr, out_gate_ptr, out2_ptr, out2_gate_ptr, raw_ptr, pair_ptr,
        n_seq, channels, length, pair_length,
        N1: tl.constexpr, NA: tl.constexpr, NB: tl.constexpr, BLOCK_COLS: tl.constexpr,
        HAS_A_GATE: tl.constexpr, FILTER: tl.constexpr, CONJ_W: tl.constexpr, PAIR: tl.constexpr,
        HAS_B_GATE: tl.constexpr, HAS_OUT_GATE: tl.constexpr, HAS_OUT2: tl.constexpr, STORE_RAW: tl.constexpr,
        PREC: tl.constexpr,
    ):
        """Per sequence, ``A = FFT(a * a_gate)`` and one or both of:

        FILTER: ``IFFT(A * W)[:length]`` with ``W`` the filter spectrum ``w: (channels, 2, N)`` in the
        permuted order (conjugated when CONJ_W), stored gated into ``out`` (and ``out2``, ``raw``);
        PAIR: ``IFFT(A * conj(FFT(b * b_gate)))[:pair_length]`` into ``pair``.
        The backward runs both from one ``A``. ``a, b``, gates, ``out*``, ``raw``: ``(n_seq, length)``
        contiguous; ``pair``: ``(n_seq, pair_length)``. Each program loops over sequences
        ``pid, pid + programs, ...``; the three-factor path (``N1 > 1``) uses the program's ``(6, N)``
        slice of ``scratch``: a's and b's spectra after the column stage, then the FILTER result
        (the PAIR result overwrites b's).
        """
        R: tl.constexpr = NA * NB
        N: tl.constexpr = N1 * R
        far, fai = _load_table(tab_ptr, 0, NA, NA)
        fbr, fbi = _load_table(tab_ptr, 2 * NA * NA, NB, NB)
        twr, twi = _load_table(tab_ptr, 2 * NA * NA + 2 * NB * NB, NA, NB)
        row = tl.arange(0, NA)[:, None] * NB + tl.arange(0, NB)[None, :]
        pid = tl.program_id(0)
        for seq in range(pid, n_seq, tl.num_programs(0)):
            seq64 = tl.cast(seq, tl.int64)  # batch * channels * length may pass 2**31
            a_seq = seq64 * length
            pair_seq = seq64 * pair_length
            w_seq = (seq64 % channels) * 2 * N
            if N1 == 1:
                x = _load_gated(a_ptr + a_seq, a_gate_ptr + a_seq, row, row < length, HAS_A_GATE)
                qr, qi = _row_dft(x, x, far, fai, twr, twi, fbr, fbi, True, PREC)
                if FILTER:
                    wr, wi = _load_table(w_ptr + w_seq, 0, NA, NB)
                    if CONJ_W:
                        wi = -wi
                    y, _ = _row_idft(qr * wr - qi * wi, qr * wi + qi * wr, far, fai, twr, twi, fbr, fbi, True, PREC)
                    _store_outputs(y * (1.0 / N), row, row < length, out_ptr + a_seq, out_gate_ptr + a_seq,
                                   out2_ptr + a_seq, out2_gate_ptr + a_seq, raw_ptr + a_seq,
                                   HAS_OUT_GATE, HAS_OUT2, STORE_RAW)
                if PAIR:
                    xb = _load_gated(b_ptr + a_seq, b_gate_ptr + a_seq, row, row < length, HAS_B_GATE)
                    br, bi = _row_dft(xb, xb, far, fai, twr, twi, fbr, fbi, True, PREC)
                    y, _ = _row_idft(qr * br + qi * bi, qi * br - qr * bi, far, fai, twr, twi, fbr, fbi, True, PREC)
                    tl.store(pair_ptr + pair_seq + row, y * (1.0 / N), mask=row < pair_length)
            else:
                f1_at: tl.constexpr = 2 * (NA * NA + NB * NB + NA * NB)
                f1r, f1i = _load_table(tab_ptr, f1_at, N1, N1)
                t1_ptr = tab_ptr + f1_at + 2 * N1 * N1
                scr = scratch_ptr + pid * 6 * N
                _outer_dft(a_ptr + a_seq, a_gate_ptr + a_seq, length, scr, f1r, f1i, t1_ptr,
                           N1, R, BLOCK_COLS, HAS_A_GATE, PREC)
                if PAIR:
                    _outer_dft(b_ptr + a_seq, b_gate_ptr + a_seq, length, scr + 2 * N, f1r, f1i, t1_ptr,
                               N1, R, BLOCK_COLS, HAS_B_GATE, PREC)
                tl.debug_barrier()  # rows below mix what other threads stored by columns
                for k1 in range(N1):
                    at = k1 * R + row
                    qr, qi = _row_dft(tl.load(scr + at), tl.load(scr + N + at),
                                      far, fai, twr, twi, fbr, fbi, False, PREC)
                    if FILTER:
                        wr = tl.load(w_ptr + w_seq + at)
                        wi = tl.load(w_ptr + w_seq + N + at)
                        if CONJ_W:
                            wi = -wi
                        dr, di = _row_idft(qr * wr - qi * wi, qr * wi + qi * wr,
                                           far, fai, twr, twi, fbr, fbi, False, PREC)
                        tl.store(scr + 4 * N + at, dr)
                        tl.store(scr + 5 * N + at, di)
                    if PAIR:
                        br, bi = _row_dft(tl.load(scr + 2 * N + at), tl.load(scr + 3 * N + at),
                                          far, fai, twr, twi, fbr, fbi, False, PREC)
                        dr, di = _row_idft(qr * br + qi * bi, qi * br - qr * bi,
                                           far, fai, twr, twi, fbr, fbi, False, PREC)
                        tl.debug_barrier()  # every thread has read b's row before it is overwritten
                        tl.store(scr + 2 * N + at, dr)
                        tl.store(scr + 3 * N + at, di)
                tl.debug_barrier()
                if FILTER:
                    _outer_idft(scr + 4 * N, f1r, f1i, t1_ptr, length, out_ptr + a_seq, out_gate_ptr + a_seq,
                                out2_ptr + a_seq, out2_gate_ptr + a_seq, raw_ptr + a_seq,
                                N1, R, BLOCK_COLS, HAS_OUT_GATE, HAS_OUT2, STORE_RAW, PREC)
                if PAIR:
                    _outer_idft(scr + 2 * N, f1r, f1i, t1_ptr, pair_length, pair_ptr + pair_seq, pair_ptr, pair_ptr,
                                pair_ptr, pair_ptr, N1, R, BLOCK_COLS, False, False, False, PREC)
                tl.debug_barrier()  # the next sequence reuses the scratch


# -- launcher and autograd ---------------------------------------------------------------
def _programs(n_seq: int, plan: tuple[int, int, int], device: torch.device) -> int:
    """One program per sequence on the two-factor path; the three-factor path caps them (each holds
    scratch) and loops -- two under the interpreter, so that the tests exercise the loop."""
    if plan[0] == 1:
        return n_seq
    if device.type != "cuda":
        return min(n_seq, 2)
    return min(n_seq, _PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count)


def _num_warps(plan: tuple[int, int, int]) -> int:
    """8 warps except for the smallest sizes: ptxas (sm_90, bf16 inputs) reports register spills of the
    backward kernel at 4 warps from N = 1024 up and at 8 warps only from N = 4096 (a few hundred bytes to
    2 KB per thread); not yet timed on a GPU."""
    n1, na, nb = plan
    return 4 if n1 * na * nb <= 512 else 8


def _launch(a, a_gate, *, plan, precision, spectrum=None, conj=False, out=None, out_gate=None, out2=None,
            out2_gate=None, raw=None, b=None, b_gate=None, pair=None) -> None:
    """Run :func:`_fft_conv_kernel` over the ``(batch, channels, length)`` sequences of ``a``: the
    filter product when ``spectrum`` is given (into ``out`` ...), the pair product when ``b`` is."""
    n1, na, nb = plan
    n = n1 * na * nb
    n_seq = a.shape[0] * a.shape[1]
    tables = _tables(plan, a.device)
    programs = _programs(n_seq, plan, a.device)
    scratch = tables if n1 == 1 else torch.empty(programs, 6, n, device=a.device, dtype=torch.float32)
    some = a  # stands in for the pointers a launch does not use

    def given(x):
        return some if x is None else x

    _fft_conv_kernel[(programs,)](
        a, given(a_gate), given(b), given(b_gate), given(spectrum), tables, scratch,
        given(out), given(out_gate), given(out2), given(out2_gate), given(raw), given(pair),
        n_seq, a.shape[1], a.shape[2], 1 if pair is None else pair.shape[-1],
        N1=n1, NA=na, NB=nb, BLOCK_COLS=min(na * nb, max(16, 4096 // n1)),
        HAS_A_GATE=a_gate is not None, FILTER=spectrum is not None, CONJ_W=conj, PAIR=b is not None,
        HAS_B_GATE=b_gate is not None, HAS_OUT_GATE=out_gate is not None, HAS_OUT2=out2 is not None,
        STORE_RAW=raw is not None, PREC=precision, num_warps=_num_warps(plan),
    )


def _contiguous(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.contiguous()


class FFTConvFunction(torch.autograd.Function):
    """Triton forward and backward of ``post_gate * conv(pre_gate * u, k)``; see the module docstring."""

    @staticmethod
    def forward(ctx, u, k, pre_gate, post_gate, causal, keep_conv):
        u, pre, post = u.contiguous(), _contiguous(pre_gate), _contiguous(post_gate)
        length = u.shape[-1]
        n = 2 * length if causal else length
        plan = fft_plan(n)
        spectrum = _filter_spectrum(k, n, plan)
        precision = dot_precision(u.dtype)
        y = torch.empty_like(u)
        # grad_post_gate = grad_y * conv(pre_gate * u, k): keep the ungated convolution when it will be needed
        z = torch.empty(u.shape, device=u.device, dtype=torch.float32) if keep_conv else None
        with device_guard(u):
            _launch(u, pre, plan=plan, precision=precision, spectrum=spectrum, out=y, out_gate=post, raw=z)
        ctx.save_for_backward(u, pre, post, z, spectrum)
        ctx.plan, ctx.precision, ctx.k_shape, ctx.k_dtype = plan, precision, k.shape, k.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        u, pre, post, z, spectrum = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        need_u, need_k, need_pre, need_post = ctx.needs_input_grad[:4]
        grad_u = grad_k = grad_pre = grad_post = per_sequence = None
        filter_part, pair_part = {}, {}
        if need_u or need_pre:
            # grad_v = corr(post * grad_y, k): the filter's conjugate spectrum; then the pre-gate's product rule
            grad_u = torch.empty_like(u)
            grad_pre = None if pre is None else torch.empty_like(pre)
            filter_part = {"spectrum": spectrum, "conj": True, "out": grad_u, "out_gate": pre, "out2": grad_pre,
                           "out2_gate": None if pre is None else u}
        if need_k:
            # grad_k = sum over batch of corr(post * grad_y, pre * u), per sequence in the kernel
            per_sequence = torch.empty(*u.shape[:2], ctx.k_shape[-1], device=u.device, dtype=torch.float32)
            pair_part = {"b": u, "b_gate": pre, "pair": per_sequence}
        if filter_part or pair_part:  # one launch: both share the FFT of post * grad_y
            with device_guard(u):
                _launch(grad_y, post, plan=ctx.plan, precision=ctx.precision, **filter_part, **pair_part)
        if need_k:
            grad_k = per_sequence.sum(0).to(ctx.k_dtype)
        if need_post:
            grad_post = (grad_y.float() * z).to(post.dtype)
        return (grad_u if need_u else None), grad_k, (grad_pre if need_pre else None), grad_post, None, None


# -- public function ---------------------------------------------------------------------
def triton_limits(u: torch.Tensor, k: torch.Tensor, *, causal: bool = True, pre_gate: torch.Tensor | None = None,
                  post_gate: torch.Tensor | None = None) -> str | None:
    """Why the Triton path cannot take ``fft_conv(u, k, ...)``, or None when it can."""
    length = u.shape[-1]
    if length < MIN_LENGTH or length > MAX_LENGTH or length & (length - 1):
        return f"u: expected a power-of-two length in [{MIN_LENGTH}, {MAX_LENGTH}] for the Triton path, got {length}"
    if u.dtype not in TRITON_DTYPES:
        return f"u: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {u.dtype}"
    return None


def _check_inputs(u, k, pre_gate, post_gate, causal) -> None:
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or not u.is_floating_point():
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u: expected a floating tensor of rank 3 (batch, channels, length), got {got}")
    if not isinstance(k, torch.Tensor) or k.dim() != 2 or not k.is_floating_point():
        got = tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__
        raise ValueError(f"k: expected a floating tensor of rank 2 (channels, length), got {got}")
    if k.shape[0] != u.shape[1]:
        raise ValueError(f"k: expected {u.shape[1]} channels to match u, got {k.shape[0]}")
    if u.shape[2] == 0:
        raise ValueError("u: expected a length of at least 1, got 0 (an FFT convolution of no positions is undefined)")
    if not 1 <= k.shape[1] <= u.shape[2]:
        raise ValueError(f"k: expected a filter length in [1, {u.shape[2]}], got {k.shape[1]}")
    for name, gate in (("pre_gate", pre_gate), ("post_gate", post_gate)):
        if gate is None:
            continue
        if not isinstance(gate, torch.Tensor) or gate.shape != u.shape or not gate.is_floating_point():
            got = tuple(gate.shape) if isinstance(gate, torch.Tensor) else type(gate).__name__
            raise ValueError(f"{name}: expected a floating tensor of u's shape {tuple(u.shape)}, got {got}")
    # the filter and the gates may have other float dtypes (each is cast where it is read)
    check_like("u", u, {"k": k, "pre_gate": pre_gate, "post_gate": post_gate}, dtype=False)
    if not isinstance(causal, bool):
        raise ValueError(f"causal: expected a bool, got {causal!r}")


def fft_conv(
    u: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    pre_gate: torch.Tensor | None = None,
    post_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gated long depthwise convolution ``y = post_gate * conv(pre_gate * u, k)`` (FlashFFTConv, Hyena).

    Args:
        u: ``(batch, channels, length)``, float32 / bfloat16 / float16 (any float on the twin).
        k: ``(channels, filter_length)`` with ``1 <= filter_length <= length``, any float dtype.
            Causal: ``y[t] = sum_{s <= t} k[s] v[t - s]`` (FFT of size ``2 length``);
            ``causal=False``: circular, ``y[t] = sum_s k[s] v[(t - s) mod length]``.
        pre_gate, post_gate: ``(batch, channels, length)`` or None (no gate); ``v = pre_gate * u``.
    Returns:
        ``(batch, channels, length)`` in ``u``'s dtype, computed in float32 (products in tf32 for
        half-precision inputs on the Triton path). Differentiable in ``u``, ``k`` and both gates.

    Backends (:mod:`seqarch.kernels.backend`): the Triton path takes power-of-two lengths in
    ``[MIN_LENGTH, MAX_LENGTH] = [256, 65536]`` and float32 / bfloat16 / float16 ``u``
    (:func:`triton_limits`). Other lengths or dtypes run the PyTorch twin
    (:func:`fft_conv_reference`) under ``auto`` and raise ``ValueError`` when ``triton`` is forced
    (``use_backend("triton")`` or ``SEQARCH_KERNELS=triton``). Zero batch or channels: an empty
    result. Bad shapes raise ``ValueError``.
    """
    _check_inputs(u, k, pre_gate, post_gate, causal)
    if u.numel() == 0:
        return empty_result(u.shape, u, u, k, pre_gate, post_gate)
    if select("fft_conv", u, triton_limits(u, k, causal=causal, pre_gate=pre_gate, post_gate=post_gate)) == "triton":
        keep_conv = post_gate is not None and post_gate.requires_grad and torch.is_grad_enabled()
        return FFTConvFunction.apply(u, k, pre_gate, post_gate, causal, keep_conv)
    return fft_conv_reference(u, k, causal=causal, pre_gate=pre_gate, post_gate=post_gate)
