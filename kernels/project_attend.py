"""Decode attention in a projected (low-rank) space: the cache holds r coefficients per token, not D.

A low-rank KV cache stores, per (b, h), the coefficients of each key and value in an orthonormal basis:
Kc = K U_k (T, r_k) and Vc = V U_v (T, r_v), with U_k (D, r_k) and U_v (D, r_v). Attention never needs
the reconstructed K̂ = Kc U_kᵀ and V̂ = Vc U_vᵀ:

    q̃ = q U_k                          project the query once             (r_k,)
    s = scale · Kc q̃                    scores, rank r_k per token          (T,)      = scale · K̂ q
    õ = softmax(s) Vc                   accumulate in rank r_v              (r_v,)
    out = U_v õ                          one back-projection                 (D,)      = softmax(s) V̂

so ``project_attend(q, Kc, Vc, U_k, U_v) == attend(q, Kc U_kᵀ, Vc U_vᵀ)`` exactly in exact arithmetic, for
any U (orthonormality only makes Kc the best rank-r approximation, it is not needed for the identity).
Decoding is memory-bound, and the cache read falls from 2·T·D to T·(r_k + r_v) numbers: a factor D/r.

Positions: the op is position-free. Whatever positional encoding the keys carry must already be in the
cached coefficients (project *post*-RoPE keys) and in q (pass the RoPE'd query), exactly as for ``attend``.

Shapes: q (B, H, D); Kc (B, H, T, r_k); Vc (B, H, T, r_v); U_k (H, D, r_k); U_v (H, D, r_v) (one basis per
head); lengths (B,) ints in 1..T; out (B, H, D) in q's dtype. Default scale 1/sqrt(D) (the full head's).

Four implementations, top to bottom:

- ``reference``             plain torch, the spec (projects q, materialises the scores; fp32 inside).
- ``numba_project_attend``  CPU: one thread per (b, h) row: project q, one pass over Kc/Vc in lockstep with
                            an online softmax in rank r, back-project.
- ``triton_project_attend`` GPU, flash-decoding in rank r: splits of T run in parallel (each projects q),
                            the merge kernel combines them and back-projects.
- ``project_attend``        checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._dispatch import check_lengths, check_scale, njit, prange, resolve_backend, tl, triton, triton_interpret
from .attend import _triton_config

# ------------------------------------------------------------------------------------------------------
# 1. The reference: the definition, written as plainly as possible.
# ------------------------------------------------------------------------------------------------------


def reference(
    q: torch.Tensor,
    Kc: torch.Tensor,
    Vc: torch.Tensor,
    U_k: torch.Tensor,
    U_v: torch.Tensor,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Projected decode attention in plain torch. q: (B, H, D), Kc: (B, H, T, r_k), Vc: (B, H, T, r_v),
    U_k: (H, D, r_k), U_v: (H, D, r_v), lengths: (B,) -> (B, H, D).

    Computes in (at least) fp32 and returns q's dtype. Differentiable; the spec the kernels must match.
    """
    T, D = Kc.shape[-2], q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, Kc, Vc, U_k, U_v = (x.to(dtype) for x in (q, Kc, Vc, U_k, U_v))
    q_r = torch.einsum("bhd,hdr->bhr", q, U_k)  # project the query once: (B, H, r_k)
    scores = torch.einsum("bhr,bhtr->bht", q_r, Kc) * scale  # (B, H, T)
    if lengths is not None:
        beyond = torch.arange(T, device=Kc.device) >= lengths.to(Kc.device)[:, None, None]  # (B, 1, T)
        scores = scores.masked_fill(beyond, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, T)
    out_r = torch.einsum("bht,bhtr->bhr", weights, Vc)  # accumulate in rank r_v: (B, H, r_v)
    out = torch.einsum("bhr,hdr->bhd", out_r, U_v)  # one back-projection: (B, H, D)
    return out.to(out_dtype)


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU): one (b, h) row per thread; project q, one pass over Kc/Vc, back-project.
# ------------------------------------------------------------------------------------------------------

_TILE = 256  # positions per tile of the Numba kernel (measured: 32..1024 all within noise of each other)

# exp(x) for x <= 0 as 2^n * 2^f with n = round(x log2 e) and |f| <= 1/2: 2^f = exp(f ln 2) by its Taylor
# series to degree 6 (relative error below 2e-7), 2^n by writing n + 127 into the exponent bits. Rounding
# y = x log2 e in float32 adds |y| 2^-24 (5e-6 at x = -87, where the weight is 1e-38 anyway). Unlike np.exp
# (a scalar libm call without Intel's SVML), this loop vectorises.
_LOG2E = np.float32(1.4426950408889634)
_EXP2_TAYLOR = tuple(np.float32(0.6931471805599453**k / np.prod(np.arange(1, k + 1, dtype=np.float64)))
                     for k in range(7))
_C0, _C1, _C2, _C3, _C4, _C5, _C6 = _EXP2_TAYLOR


@njit(fastmath=True, cache=True)
def _exp_shifted(s, nt, m, two_n, two_n_bits):  # pragma: no cover - compiled
    """s[u] <- exp(s[u] - m) for u < nt (all s[u] <= m); returns their sum. two_n is (nt,) float32 scratch,
    two_n_bits its int32 view."""
    for u in range(nt):
        y = max(s[u] - m, np.float32(-87.0)) * _LOG2E  # below -87 exp underflows float32 anyway
        n = np.floor(y + np.float32(0.5))
        f = y - n
        two_n_bits[u] = (np.int32(n) + np.int32(127)) << 23
        s[u] = _C0 + f * (_C1 + f * (_C2 + f * (_C3 + f * (_C4 + f * (_C5 + f * _C6)))))
    total = np.float32(0.0)
    for u in range(nt):
        s[u] *= two_n[u]
        total += s[u]
    return total


@njit(fastmath=True, cache=True)
def _project_row(q, Kc, Vc, U_k, U_v, n, scale, out):  # pragma: no cover - compiled
    """One (b, h) row: q (D,), Kc (T, rk), Vc (T, rv), U_k (D, rk), U_v (D, rv) float32, n valid, out (D,).

    The online softmax of ``attend._attend_row`` in rank r, by tiles of _TILE positions: the tile's scores,
    one max and rescale per tile, their exps, then the weighted sum of the tile's Vc rows. With r = 16 a
    single token is too little work for a loop of its own, so the score and value loops take four tokens
    per iteration (four independent sums; the running accumulator is read and written once per four).
    """
    D, rk = U_k.shape
    rv = U_v.shape[1]
    qr = np.zeros(rk, np.float32)  # q̃ = scale * q U_k
    for d in range(D):
        qd = q[d] * scale
        for j in range(rk):
            qr[j] += qd * U_k[d, j]
    acc = np.zeros(rv, np.float32)  # running sum of exp(score - m) * Vc[t]
    m = np.float32(-1e30)  # running max (finite sentinel: fastmath assumes no infinities)
    l = np.float32(0.0)  # running denominator
    s = np.empty(_TILE, np.float32)
    two_n = np.empty(_TILE, np.float32)
    two_n_bits = two_n.view(np.int32)
    for t0 in range(0, n, _TILE):
        nt = min(_TILE, n - t0)
        tile_max = np.float32(-1e30)
        u = 0
        while u + 4 <= nt:  # scores and their max, four tokens at a time
            t = t0 + u
            x0 = np.float32(0.0)
            x1 = np.float32(0.0)
            x2 = np.float32(0.0)
            x3 = np.float32(0.0)
            for j in range(rk):
                qj = qr[j]
                x0 += qj * Kc[t, j]
                x1 += qj * Kc[t + 1, j]
                x2 += qj * Kc[t + 2, j]
                x3 += qj * Kc[t + 3, j]
            s[u], s[u + 1], s[u + 2], s[u + 3] = x0, x1, x2, x3
            tile_max = max(tile_max, max(max(x0, x1), max(x2, x3)))
            u += 4
        for w in range(u, nt):  # the tile's last nt % 4 tokens
            x = np.float32(0.0)
            for j in range(rk):
                x += qr[j] * Kc[t0 + w, j]
            s[w] = x
            tile_max = max(tile_max, x)
        if tile_max > m:
            alpha = np.exp(m - tile_max)
            l *= alpha
            for j in range(rv):
                acc[j] *= alpha
            m = tile_max
        l += _exp_shifted(s, nt, m, two_n, two_n_bits)
        u = 0
        while u + 4 <= nt:  # weighted values, four tokens at a time
            t = t0 + u
            p0, p1, p2, p3 = s[u], s[u + 1], s[u + 2], s[u + 3]
            for j in range(rv):
                acc[j] += (p0 * Vc[t, j] + p1 * Vc[t + 1, j]) + (p2 * Vc[t + 2, j] + p3 * Vc[t + 3, j])
            u += 4
        for w in range(u, nt):
            p = s[w]
            for j in range(rv):
                acc[j] += p * Vc[t0 + w, j]
    inv = np.float32(1.0) / l
    for d in range(D):  # out = U_v (acc / l)
        o = np.float32(0.0)
        for j in range(rv):
            o += U_v[d, j] * acc[j]
        out[d] = o * inv


@njit(parallel=True, cache=True)
def _project_rows_parallel(q, Kc, Vc, U_k, U_v, lengths, heads, scale, out):  # pragma: no cover - compiled
    """q: (BH, D), Kc: (BH, T, rk), Vc: (BH, T, rv), U_k/U_v: (H, D, r), lengths: (B,), out: (BH, D)."""
    for row in prange(Kc.shape[0]):
        h = row % heads
        _project_row(q[row], Kc[row], Vc[row], U_k[h], U_v[h], lengths[row // heads], scale, out[row])


@njit(cache=True)
def _project_rows_serial(q, Kc, Vc, U_k, U_v, lengths, heads, scale, out):  # pragma: no cover - compiled
    """The same on one core: for small problems, waking the thread pool costs more than the work."""
    for row in range(Kc.shape[0]):
        h = row % heads
        _project_row(q[row], Kc[row], Vc[row], U_k[h], U_v[h], lengths[row // heads], scale, out[row])


_NUMBA_SERIAL_BELOW = 1 << 16  # elements of Kc + Vc under which one core is faster


def _as_f32_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (no copy when x already is contiguous fp32 on the CPU)."""
    return x.detach().to(torch.float32).contiguous().numpy()


def numba_project_attend(
    q: torch.Tensor,
    Kc: torch.Tensor,
    Vc: torch.Tensor,
    U_k: torch.Tensor,
    U_v: torch.Tensor,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Projected decode attention on the CPU with Numba (inputs checked by ``project_attend``): (B, H, D)."""
    B, H, T, rk = Kc.shape
    rv, D = Vc.shape[-1], q.shape[-1]
    scale = D**-0.5 if scale is None else float(scale)
    n = np.full(B, T, np.int64) if lengths is None else lengths.detach().cpu().numpy().astype(np.int64)
    out = np.empty((B * H, D), np.float32)
    kernel = _project_rows_serial if B * H * T * (rk + rv) < _NUMBA_SERIAL_BELOW else _project_rows_parallel
    kernel(
        _as_f32_numpy(q).reshape(B * H, D),
        _as_f32_numpy(Kc).reshape(B * H, T, rk),
        _as_f32_numpy(Vc).reshape(B * H, T, rv),
        _as_f32_numpy(U_k), _as_f32_numpy(U_v),
        n, H, np.float32(scale), out,
    )
    return torch.from_numpy(out).reshape(B, H, D).to(q.dtype)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU): flash-decoding in rank r. Program (row, split) projects q and reduces one chunk of T to
#    (m, l, acc in rank r_v); the merge kernel combines the splits of a row and back-projects once.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _project_split_kernel(
        q_ptr, k_ptr, v_ptr, uk_ptr, len_ptr, m_ptr, l_ptr, acc_ptr,  # partials: m, l (BH, S); acc (BH, S, rv)
        H, T, D, RK, RV, chunk, scale,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_RK: tl.constexpr, BLOCK_RV: tl.constexpr,
    ):
        row = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)
        head = row % H
        length = tl.load(len_ptr + row // H)
        start = split * chunk
        stop = tl.minimum(start + chunk, length)

        # q̃ = scale * q U_k: (D,) x (D, rk), a few hundred flops, redone by every split (cheaper than a launch)
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        offs_k = tl.arange(0, BLOCK_RK)
        mask_k = offs_k < RK
        q = tl.load(q_ptr + row * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        uk = tl.load(uk_ptr + head * D * RK + offs_d[:, None] * RK + offs_k[None, :],
                     mask=mask_d[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        qr = tl.sum(q[:, None] * uk, axis=0) * scale  # (BLOCK_RK,)

        offs_v = tl.arange(0, BLOCK_RV)
        mask_v = offs_v < RV
        row64 = row.to(tl.int64)  # int64: large caches overflow int32 offsets
        m = -float("inf")
        l = 0.0
        acc = tl.zeros([BLOCK_RV], dtype=tl.float32)
        for t0 in range(start, stop, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            mask_t = offs_t < stop
            k = tl.load(k_ptr + row64 * T * RK + offs_t[:, None] * RK + offs_k[None, :],
                        mask=mask_t[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            s = tl.sum(k * qr[None, :], axis=1)
            s = tl.where(mask_t, s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new)
            v = tl.load(v_ptr + row64 * T * RV + offs_t[:, None] * RV + offs_v[None, :],
                        mask=mask_t[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
            l = l * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m = m_new

        part = row * n_splits + split
        tl.store(m_ptr + part, m)
        tl.store(l_ptr + part, l)
        tl.store(acc_ptr + part * RV + offs_v, acc, mask=mask_v)

    @triton.jit
    def _project_combine_kernel(
        m_ptr, l_ptr, acc_ptr, uv_ptr, out_ptr, n_splits, H, D, RV,
        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_RV: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = row % H
        offs_s = tl.arange(0, BLOCK_S)
        mask_s = offs_s < n_splits
        offs_v = tl.arange(0, BLOCK_RV)
        mask_v = offs_v < RV
        m = tl.load(m_ptr + row * n_splits + offs_s, mask=mask_s, other=-float("inf"))
        l = tl.load(l_ptr + row * n_splits + offs_s, mask=mask_s, other=0.0)
        acc = tl.load(acc_ptr + (row * n_splits + offs_s[:, None]) * RV + offs_v[None, :],
                      mask=mask_s[:, None] & mask_v[None, :], other=0.0)  # (S, rv)
        w = tl.exp(m - tl.max(m, axis=0))
        out_r = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)  # õ: (rv,)
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        uv = tl.load(uv_ptr + head * D * RV + offs_d[:, None] * RV + offs_v[None, :],
                     mask=mask_d[:, None] & mask_v[None, :], other=0.0).to(tl.float32)  # (D, rv)
        out = tl.sum(uv * out_r[None, :], axis=1)  # U_v õ: (D,)
        tl.store(out_ptr + row * D + offs_d, out, mask=mask_d)


def triton_project_attend(
    q: torch.Tensor,
    Kc: torch.Tensor,
    Vc: torch.Tensor,
    U_k: torch.Tensor,
    U_v: torch.Tensor,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
    block_t: int | None = None,
    n_splits: int | None = None,
) -> torch.Tensor:
    """Flash-decoding in rank r with Triton (inputs checked by ``project_attend``): (B, H, D) in q's dtype.

    ``block_t`` (a power of two) and ``n_splits`` override the launch heuristic (tests use them).
    """
    if triton is None:
        raise RuntimeError("triton_project_attend needs the triton package (pip install triton; Linux + CUDA)")
    B, H, T, rk = Kc.shape
    rv, D = Vc.shape[-1], q.shape[-1]
    rows, device = B * H, q.device
    scale = D**-0.5 if scale is None else float(scale)
    q, Kc, Vc, U_k, U_v = (x.contiguous() for x in (q, Kc, Vc, U_k, U_v))
    n = (torch.full((B,), T, dtype=torch.int32, device=device) if lengths is None
         else lengths.to(device=device, dtype=torch.int32))
    # tiles of BLOCK_T x r: the attend heuristic sized for a row of max(rk, rv) numbers
    block_t, n_splits, chunk = _triton_config(rows, T, max(rk, rv), device, block_t, n_splits)
    m = torch.empty((rows, n_splits), dtype=torch.float32, device=device)
    l = torch.empty_like(m)
    acc = torch.empty((rows, n_splits, rv), dtype=torch.float32, device=device)
    p2 = triton.next_power_of_2
    _project_split_kernel[(rows, n_splits)](
        q, Kc, Vc, U_k, n, m, l, acc, H, T, D, rk, rv, chunk, scale,
        BLOCK_T=block_t, BLOCK_D=p2(D), BLOCK_RK=p2(rk), BLOCK_RV=p2(rv),
    )
    direct = device.type == "cuda" and not triton_interpret()  # the interpreter mishandles 16-bit stores
    out = torch.empty((B, H, D), dtype=q.dtype if direct else torch.float32, device=device)
    _project_combine_kernel[(rows,)](
        m, l, acc, U_v, out, n_splits, H, D, rv, BLOCK_S=p2(n_splits), BLOCK_D=p2(D), BLOCK_RV=p2(rv),
    )
    return out.to(q.dtype)


# ------------------------------------------------------------------------------------------------------
# 4. The public op: check the inputs, pick the backend.
# ------------------------------------------------------------------------------------------------------

_FLOATS = "float16, bfloat16, float32 or float64"


def project_attend(
    q: torch.Tensor,
    Kc: torch.Tensor,
    Vc: torch.Tensor,
    U_k: torch.Tensor,
    U_v: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode attention over a low-rank cache: q (B, H, D), Kc (B, H, T, r_k), Vc (B, H, T, r_v),
    U_k (H, D, r_k), U_v (H, D, r_v) -> (B, H, D); equals ``attend(q, Kc U_kᵀ, Vc U_vᵀ)``.

    q is used as given (RoPE'd if the cached keys were projected after RoPE: the op is position-free).
    lengths: (B,) ints in 1..T (None: all T positions). scale: default 1/sqrt(D).
    backend: "auto" | "torch" (the reference, differentiable) | "numba" (CPU) | "triton" (CUDA, or the CPU
    under ``TRITON_INTERPRET=1``). Computes in fp32 and returns q's dtype.
    """
    lengths, scale = _check_inputs(q, Kc, Vc, U_k, U_v, lengths, scale)
    backend = resolve_backend(backend, q.device, op="project_attend")
    if q.shape[0] * q.shape[1] == 0:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if backend == "torch":
        return reference(q, Kc, Vc, U_k, U_v, lengths, scale)
    if backend == "numba":
        return numba_project_attend(q, Kc, Vc, U_k, U_v, lengths, scale)
    return triton_project_attend(q, Kc, Vc, U_k, U_v, lengths, scale)


def _check_inputs(q, Kc, Vc, U_k, U_v, lengths, scale) -> tuple[torch.Tensor | None, float]:
    """Validate shapes, dtypes, devices, lengths and scale; return (lengths tensor or None, scale)."""
    for name, x in (("q", q), ("Kc", Kc), ("Vc", Vc), ("U_k", U_k), ("U_v", U_v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floating-point numbers ({_FLOATS}), got {x.dtype}")
    if q.dim() != 3:
        raise ValueError(f"q must be 3-D (B, H, D), got shape {tuple(q.shape)}")
    B, H, D = q.shape
    if D == 0:
        raise ValueError("q must have a head dimension D >= 1, got D=0")
    for name, x, r in (("Kc", Kc, "r_k"), ("Vc", Vc, "r_v")):
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, T, {r}), got shape {tuple(x.shape)}")
    T, rk, rv = Kc.shape[2], Kc.shape[3], Vc.shape[3]
    if tuple(Kc.shape[:2]) != (B, H):
        raise ValueError(f"Kc must have shape (B, H, T, r_k) with (B, H) = {(B, H)} from q, got {tuple(Kc.shape)}")
    if tuple(Vc.shape[:3]) != (B, H, T):
        raise ValueError(f"Vc must have shape (B, H, T, r_v) with (B, H, T) = {(B, H, T)} from Kc, "
                         f"got {tuple(Vc.shape)}")
    if T == 0:
        raise ValueError("Kc must hold at least one position (T >= 1), got T=0")
    for name, U, r, rname in (("U_k", U_k, rk, "r_k"), ("U_v", U_v, rv, "r_v")):
        if not 1 <= r <= D:
            raise ValueError(f"{rname} (the last dimension of {'Kc' if rname == 'r_k' else 'Vc'}) must be in "
                             f"1..D = 1..{D}, got {r}")
        if tuple(U.shape) != (H, D, r):
            raise ValueError(f"{name} must have shape (H, D, {rname}) = {(H, D, r)}, got {tuple(U.shape)}")
    devices = {x.device for x in (q, Kc, Vc, U_k, U_v)}
    if len(devices) > 1:
        raise ValueError(f"q, Kc, Vc, U_k and U_v must be on one device, got q on {q.device}, Kc on {Kc.device}, "
                         f"Vc on {Vc.device}, U_k on {U_k.device}, U_v on {U_v.device}")
    if not (q.dtype == Kc.dtype == Vc.dtype):
        raise TypeError(f"q, Kc and Vc must share one dtype, got q {q.dtype}, Kc {Kc.dtype}, Vc {Vc.dtype}")
    scale = check_scale(scale, D)
    if lengths is None:
        return None, scale
    return check_lengths("lengths", lengths, B, 1, T, "T", q.device), scale
