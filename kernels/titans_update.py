"""Titans' linear memory over a whole sequence, chunk rule: a matrix memory trained at test time, fused.

Per (b, h) the memory is a matrix M (Dk, Dv) read as M(k) = Mᵀk, with a momentum S (Dk, Dv). Token t takes a
gradient step on ℓ(M; k_t, v_t) = ‖Mᵀk_t − v_t‖², with momentum η_t and forgetting α_t (chapter 3, Titans):

    u_t = ∇ℓ(M'; k_t, v_t) = 2 k_t e_tᵀ,   e_t = M'ᵀ k_t − v_t       (M' = M at the start of t's chunk)
    S_t = η_t S_{t−1} − θ_t u_t        M_t = (1 − α_t) M_{t−1} + S_t        o_t = M_tᵀ q_t

Chunk rule: the sequence is cut into chunks of C tokens at multiples of C (from the start of the call) and
every gradient of a chunk is taken at the memory the chunk started with, M' = M0 (C = 1: the fully online
memory). θ, η, α ∈ [0, 1]; η None = no momentum (S_t = −θ_t u_t; no state S), α None = no forgetting.

The closed form inside a chunk. Let (M0, S0) be the state at the chunk's start and, for 1-based positions
i, j, l ≤ C, γ_i = 1 − α_i. Write the products (empty products are 1)

    a_i = γ_1 ⋯ γ_i        P_i = η_1 ⋯ η_i        Γ_il = γ_{l+1} ⋯ γ_i        Π_jl = η_{j+1} ⋯ η_l      (j ≤ l ≤ i)

Unrolling the momentum, S_l = P_l S0 − Σ_{j ≤ l} Π_jl θ_j u_j; unrolling the forgetting, M_i = a_i M0 +
Σ_{l ≤ i} Γ_il S_l. Substituting, every memory of the chunk is M0, S0 and the chunk's rank-1 gradients:

    M_i = a_i M0 + b_i S0 + Σ_{j ≤ i} c_ij k_j e_jᵀ,      b_i = Σ_{l ≤ i} Γ_il P_l,
                                                          c_ij = −2 θ_j Σ_{l=j..i} Γ_il Π_jl    (c = −2 (Γ Π) diag θ)
    S_i = P_i S0 + Σ_{j ≤ i} s_ij k_j e_jᵀ,               s_ij = −2 θ_j Π_ji

so the outputs of a whole chunk are three matmuls and a C × C mask, like the delta rule's chunk form:

    E = K M0 − V         O = diag(a) Q M0 + diag(b) Q S0 + (Q Kᵀ ⊙ c) E
    M ← a_C M0 + b_C S0 + Kᵀ diag(c_C·) E          S ← P_C S0 + Kᵀ diag(s_C·) E

(without momentum: η ≡ 0, i.e. Π = I, P = b = 0 and c_ij = −2 θ_j Γ_ij). No per-token gradient or memory is
formed. All coefficients are products of numbers in [0, 1], built by multiplication (not exp of log-sums), so
γ = 0 (α = 1: forget everything) and η = 0 are exact. One chunk costs ~5 C·Dk·Dv + C²·(Dk + Dv)
multiply-adds, about what the token loop spends per token times C, but in a few large loops.

Shapes: q, k (B, H, T, Dk); v (B, H, T, Dv); theta, eta, alpha (B, H, T); M0, S0 (B, H, Dk, Dv) or None
(zeros; S0 only with eta). Returns o (B, H, T, Dv) in q's dtype, M_T (B, H, Dk, Dv) float32 and S_T
(float32, None without eta); passed back as (M0, S0) they continue the sequence exactly when the split falls
on a chunk boundary (``labkit.memory.titans.titans_chunk`` also continues inside a chunk).

Four implementations, top to bottom:

- ``reference``              plain torch, the spec: the token-by-token loop (fp32 inside).
- ``numba_titans_update``    CPU: one (b, h) row per thread, chunk by chunk, M and S resident in local arrays.
- ``triton_titans_update``   GPU: one program per (b, h) walking the chunks, M and S in registers, tl.dot for
                             the chunk matmuls; Γ and Π built by a loop over the chunk's C positions.
- ``titans_update``          checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret
from .delta_rule import check_gates, check_qkv

# ------------------------------------------------------------------------------------------------------
# 1. The reference: the definition, written as plainly as possible.
# ------------------------------------------------------------------------------------------------------


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    M0: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Titans' linear memory token by token in plain torch (``titans_recurrent`` with kind="linear"):
    q, k (B, H, T, Dk), v (B, H, T, Dv), theta/eta/alpha (B, H, T), M0/S0 (B, H, Dk, Dv) ->
    (o (B, H, T, Dv) in q's dtype, M_T float32, S_T float32 or None without eta).

    Computes in (at least) fp32. Differentiable; the spec the kernels must match (and their speed baseline).
    """
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, theta = (x.to(dtype) for x in (q, k, v, theta))
    M = torch.zeros(B, H, Dk, Dv, dtype=dtype, device=q.device) if M0 is None else M0.to(dtype)
    S = None
    if eta is not None:
        S = torch.zeros(B, H, Dk, Dv, dtype=dtype, device=q.device) if S0 is None else S0.to(dtype)
    M_start, outs = M, []
    for t in range(T):
        if t % chunk_size == 0:
            M_start = M  # the chunk's gradients are all taken here
        kt = k[:, :, t]
        e = torch.einsum("bhkv,bhk->bhv", M_start, kt) - v[:, :, t]  # prediction error
        u = 2 * kt[..., :, None] * e[..., None, :]  # ∇_M ‖Mᵀk − v‖² = 2 k eᵀ
        step = -theta[:, :, t, None, None] * u
        if S is not None:
            S = eta[:, :, t, None, None].to(dtype) * S + step  # momentum (past surprise)
            step = S
        keep = 1.0 if alpha is None else 1 - alpha[:, :, t, None, None].to(dtype)
        M = keep * M + step  # forgetting, then the step
        outs.append(torch.einsum("bhkv,bhk->bhv", M, q[:, :, t]))  # read with the new memory
    o = torch.stack(outs, dim=2) if outs else torch.empty(B, H, 0, Dv, dtype=dtype, device=q.device)
    return o.to(out_dtype), M.to(torch.float32), (None if S is None else S.to(torch.float32))


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU): one (b, h) row per thread, chunk by chunk, M and S resident in local arrays.
# ------------------------------------------------------------------------------------------------------


@njit(fastmath=True, cache=True)
def _titans_row(q, k, v, theta, eta, keep, M, S, C, has_mom, out):  # pragma: no cover - compiled
    """One (b, h) row: q, k (T, Dk), v (T, Dv), theta, eta, keep = 1 − α (T,) float32 (eta zeros without
    momentum); M, S (Dk, Dv) the state, updated in place; C the chunk size; out (T, Dv).

    The inner loops run over contiguous rows of Dv floats (axpys), so LLVM vectorises them; the chunk's
    scratch (C x C and 3 C x Dv) stays in L1/L2 next to M and S.
    """
    T, Dk = k.shape
    Dv = v.shape[1]
    c = np.zeros((C, C), np.float32)  # c_ij, j <= i
    a = np.empty(C, np.float32)
    b = np.zeros(C, np.float32)
    s_end = np.empty(C, np.float32)  # s_nj: the momentum's coefficients at the chunk's end
    E = np.empty((C, Dv), np.float32)  # K M0 − V
    QM = np.empty((C, Dv), np.float32)  # Q M0
    QS = np.zeros((C, Dv), np.float32)  # Q S0 (stays 0 without momentum)
    for t0 in range(0, T, C):
        n = min(C, T - t0)
        # the scalar coefficients: a_i, P_i, b_i by running products, c_ij by two nested scans
        ga = np.float32(1.0)
        p = np.float32(1.0)
        bb = np.float32(0.0)
        for i in range(n):
            ga *= keep[t0 + i]
            p *= eta[t0 + i]
            bb = keep[t0 + i] * bb + p
            a[i] = ga
            b[i] = bb
        p_end = p
        for j in range(n):
            s = np.float32(1.0)  # Π_ji: the momentum's weight of u_j at i
            m = np.float32(0.0)  # Σ_l Γ_il Π_jl: the memory's weight
            w = np.float32(-2.0) * theta[t0 + j]
            for i in range(j, n):
                if i > j:
                    s *= eta[t0 + i]
                m = keep[t0 + i] * m + s
                c[i, j] = w * m
            s_end[j] = w * s
        # E = K M0 − V, Q M0, Q S0 in one pass over the state
        for i in range(n):
            for e in range(Dv):
                E[i, e] = -v[t0 + i, e]
                QM[i, e] = 0.0
        for d in range(Dk):
            for i in range(n):
                kd = k[t0 + i, d]
                qd = q[t0 + i, d]
                for e in range(Dv):
                    E[i, e] += kd * M[d, e]
                    QM[i, e] += qd * M[d, e]
        if has_mom:
            for i in range(n):
                for e in range(Dv):
                    QS[i, e] = 0.0
            for d in range(Dk):
                for i in range(n):
                    qd = q[t0 + i, d]
                    for e in range(Dv):
                        QS[i, e] += qd * S[d, e]
        # O = diag(a) Q M0 + diag(b) Q S0 + (Q Kᵀ ⊙ c) E
        for i in range(n):
            ai = a[i]
            bi = b[i]
            for e in range(Dv):
                out[t0 + i, e] = ai * QM[i, e] + bi * QS[i, e]
            for j in range(i + 1):
                qk = np.float32(0.0)
                for d in range(Dk):
                    qk += q[t0 + i, d] * k[t0 + j, d]
                w = c[i, j] * qk
                for e in range(Dv):
                    out[t0 + i, e] += w * E[j, e]
        # M <- a_n M0 + b_n S0 + Kᵀ diag(c_n·) E;   S <- P_n S0 + Kᵀ diag(s_n·) E
        an = a[n - 1]
        bn = b[n - 1]
        for d in range(Dk):
            if has_mom:
                for e in range(Dv):
                    mv = an * M[d, e] + bn * S[d, e]
                    S[d, e] *= p_end
                    M[d, e] = mv
                for j in range(n):
                    kd = k[t0 + j, d]
                    cm = c[n - 1, j] * kd
                    cs = s_end[j] * kd
                    for e in range(Dv):
                        M[d, e] += cm * E[j, e]
                        S[d, e] += cs * E[j, e]
            else:
                for e in range(Dv):
                    M[d, e] *= an
                for j in range(n):
                    cm = c[n - 1, j] * k[t0 + j, d]
                    for e in range(Dv):
                        M[d, e] += cm * E[j, e]


@njit(parallel=True, fastmath=True, cache=True)
def _titans_rows_parallel(q, k, v, theta, eta, keep, M, S, C, has_mom, out):  # pragma: no cover - compiled
    """q, k: (BH, T, Dk), v: (BH, T, Dv), theta/eta/keep: (BH, T), M, S: (BH, Dk, Dv) in/out, out: (BH, T, Dv)."""
    for row in prange(k.shape[0]):
        _titans_row(q[row], k[row], v[row], theta[row], eta[row], keep[row], M[row], S[row], C, has_mom, out[row])


@njit(fastmath=True, cache=True)
def _titans_rows_serial(q, k, v, theta, eta, keep, M, S, C, has_mom, out):  # pragma: no cover - compiled
    """The same on one core: for small problems, waking the thread pool costs more than the work."""
    for row in range(k.shape[0]):
        _titans_row(q[row], k[row], v[row], theta[row], eta[row], keep[row], M[row], S[row], C, has_mom, out[row])


_NUMBA_SERIAL_BELOW = 1 << 16  # multiply-adds (B*H*T*Dk*Dv) under which one core is faster


def _as_f32_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (no copy when x already is contiguous fp32 on the CPU)."""
    return x.detach().to(torch.float32).contiguous().numpy()


def _state_numpy(x: torch.Tensor | None, rows: int, Dk: int, Dv: int) -> np.ndarray:
    """A fresh (rows, Dk, Dv) float32 copy of the state (zeros for None): the kernels update it in place."""
    if x is None:
        return np.zeros((rows, Dk, Dv), np.float32)
    return _as_f32_numpy(x).reshape(rows, Dk, Dv).copy()


def numba_titans_update(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    M0: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The fused chunk rule on the CPU with Numba (inputs checked by ``titans_update``)."""
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    rows = B * H
    M = _state_numpy(M0, rows, Dk, Dv)
    S = _state_numpy(S0, rows, Dk, Dv)
    et = np.zeros((rows, T), np.float32) if eta is None else _as_f32_numpy(eta).reshape(rows, T)
    keep = (np.ones((rows, T), np.float32) if alpha is None
            else (1.0 - _as_f32_numpy(alpha)).reshape(rows, T).astype(np.float32))
    out = np.empty((rows, T, Dv), np.float32)
    kernel = _titans_rows_serial if rows * T * Dk * Dv < _NUMBA_SERIAL_BELOW else _titans_rows_parallel
    kernel(
        _as_f32_numpy(q).reshape(rows, T, Dk), _as_f32_numpy(k).reshape(rows, T, Dk),
        _as_f32_numpy(v).reshape(rows, T, Dv), _as_f32_numpy(theta).reshape(rows, T), et, keep,
        M, S, max(1, min(int(chunk_size), T)), eta is not None, out,
    )
    o = torch.from_numpy(out).reshape(B, H, T, Dv).to(q.dtype)
    S_T = None if eta is None else torch.from_numpy(S).reshape(B, H, Dk, Dv)
    return o, torch.from_numpy(M).reshape(B, H, Dk, Dv), S_T


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU): one program per (b, h) walks the chunks; M and S (Dk x Dv) stay in registers.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _titans_update_kernel(
        q_ptr, k_ptr, v_ptr, theta_ptr, eta_ptr, alpha_ptr, m_ptr, s_ptr, o_ptr,  # m, s: (BH, Dk, Dv) fp32 in/out
        T, DK, DV, C,
        HAS_ETA: tl.constexpr, HAS_ALPHA: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)  # int64: long sequences overflow int32 offsets
        offs_c = tl.arange(0, BLOCK_C)
        offs_k = tl.arange(0, BLOCK_K)
        offs_v = tl.arange(0, BLOCK_V)
        mask_k = offs_k < DK
        mask_v = offs_v < DV
        st_offs = row * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
        st_mask = mask_k[:, None] & mask_v[None, :]
        M = tl.load(m_ptr + st_offs, mask=st_mask, other=0.0)  # (BK, BV) fp32
        if HAS_ETA:
            S = tl.load(s_ptr + st_offs, mask=st_mask, other=0.0)
        causal = offs_c[:, None] >= offs_c[None, :]  # i >= l (rows i, columns l)
        lower = causal.to(tl.float32)
        eye = (offs_c[:, None] == offs_c[None, :]).to(tl.float32)
        for t0 in range(0, T, C):
            n = tl.minimum(T - t0, C)  # tokens in this chunk (C <= BLOCK_C; rows >= n are padding)
            offs_t = t0 + offs_c
            mask_t = offs_c < n
            qk_mask = mask_t[:, None] & mask_k[None, :]
            qk_offs = row * T * DK + offs_t[:, None] * DK + offs_k[None, :]
            q = tl.load(q_ptr + qk_offs, mask=qk_mask, other=0.0).to(tl.float32)  # (BC, BK)
            k = tl.load(k_ptr + qk_offs, mask=qk_mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + row * T * DV + offs_t[:, None] * DV + offs_v[None, :],
                        mask=mask_t[:, None] & mask_v[None, :], other=0.0).to(tl.float32)  # (BC, BV)
            theta = tl.load(theta_ptr + row * T + offs_t, mask=mask_t, other=0.0).to(tl.float32)  # padding: 0
            # Γ_il = γ_{l+1} ⋯ γ_i, Π_lj = η_{j+1} ⋯ η_l (lower, incl. the diagonal), a_i = γ_1 ⋯ γ_i,
            # P_i = η_1 ⋯ η_i: one multiplication per position m (exact for γ = 0 or η = 0)
            G = lower
            a = tl.full([BLOCK_C], 1.0, tl.float32)
            if HAS_ETA:
                Pi = lower
                P = tl.full([BLOCK_C], 1.0, tl.float32)
            else:
                Pi = eye
                P = tl.zeros([BLOCK_C], tl.float32)
            for m in range(BLOCK_C):
                inside = (offs_c[:, None] >= m) & (offs_c[None, :] < m)  # l < m <= i
                if HAS_ALPHA:
                    g_m = 1.0 - tl.load(alpha_ptr + row * T + t0 + m, mask=m < n, other=0.0).to(tl.float32)
                    G = tl.where(inside, G * g_m, G)
                    a = tl.where(offs_c >= m, a * g_m, a)
                if HAS_ETA:
                    e_m = tl.load(eta_ptr + row * T + t0 + m, mask=m < n, other=1.0).to(tl.float32)
                    Pi = tl.where(inside, Pi * e_m, Pi)
                    P = tl.where(offs_c >= m, P * e_m, P)
            c = -2.0 * theta[None, :] * tl.dot(G, Pi, input_precision="ieee")  # c_ij (lower)
            last = offs_c == n - 1
            c_end = tl.sum(tl.where(last[:, None], c, 0.0), 0)  # c_nj
            a_end = tl.sum(tl.where(last, a, 0.0), 0)
            E = tl.dot(k, M, input_precision="ieee") - v  # (BC, BV): K M0 − V
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            W = tl.where(causal, qk * c, 0.0)
            o = a[:, None] * tl.dot(q, M, input_precision="ieee") + tl.dot(W, E, input_precision="ieee")
            if HAS_ETA:
                b = tl.sum(G * P[None, :], 1)  # b_i = Σ_l Γ_il P_l
                b_end = tl.sum(tl.where(last, b, 0.0), 0)
                P_end = tl.sum(tl.where(last, P, 0.0), 0)
                s_end = -2.0 * theta * tl.sum(tl.where(last[:, None], Pi, 0.0), 0)  # s_nj = −2 θ_j Π_nj
                o += b[:, None] * tl.dot(q, S, input_precision="ieee")
                M = a_end * M + b_end * S + tl.dot(tl.trans(k * c_end[:, None]), E, input_precision="ieee")
                S = P_end * S + tl.dot(tl.trans(k * s_end[:, None]), E, input_precision="ieee")
            else:
                M = a_end * M + tl.dot(tl.trans(k * c_end[:, None]), E, input_precision="ieee")
            tl.store(o_ptr + row * T * DV + offs_t[:, None] * DV + offs_v[None, :], o,
                     mask=mask_t[:, None] & mask_v[None, :])
        tl.store(m_ptr + st_offs, M, mask=st_mask)
        if HAS_ETA:
            tl.store(s_ptr + st_offs, S, mask=st_mask)


def triton_titans_update(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    M0: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The fused chunk rule with Triton (inputs checked by ``titans_update``).

    The chunk size is semantic (it says where gradients are taken), so the tile is the chunk rounded up to a
    power of two >= 16 (tl.dot's smallest tile) and the rows past the chunk are masked (θ = 0, k = v = 0).
    Chunks longer than 128 tokens would not fit in registers: use the numba or torch backend for those.
    """
    if triton is None:
        raise RuntimeError("triton_titans_update needs the triton package (pip install triton; Linux + CUDA)")
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    rows, device = B * H, q.device
    C = max(1, min(int(chunk_size), T))
    p2 = triton.next_power_of_2
    block_c = max(16, p2(C))
    if block_c > 128:
        raise ValueError(f"backend='triton' supports chunk_size up to 128 (or >= T), got {chunk_size} with T={T}: "
                         f"use backend='numba' or 'torch'")
    q, k, v, theta = (x.contiguous() for x in (q, k, v, theta))
    eta_arg = theta if eta is None else eta.contiguous()
    alpha_arg = theta if alpha is None else alpha.contiguous()

    def state(x):
        return (torch.zeros((B, H, Dk, Dv), dtype=torch.float32, device=device) if x is None
                else x.to(device=device, dtype=torch.float32).clone().contiguous())

    M, S = state(M0), state(S0)
    # the interpreter mishandles 16-bit stores: write fp32 there
    direct = device.type == "cuda" and not triton_interpret()
    o = torch.empty((B, H, T, Dv), dtype=q.dtype if direct else torch.float32, device=device)
    _titans_update_kernel[(rows,)](
        q, k, v, theta, eta_arg, alpha_arg, M, S, o, T, Dk, Dv, C,
        HAS_ETA=eta is not None, HAS_ALPHA=alpha is not None,
        BLOCK_C=block_c, BLOCK_K=max(16, p2(Dk)), BLOCK_V=max(16, p2(Dv)),
    )
    return o.to(q.dtype), M, (None if eta is None else S)


# ------------------------------------------------------------------------------------------------------
# 4. The public op: check the inputs, pick the backend.
# ------------------------------------------------------------------------------------------------------

def titans_update(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    M0: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
    chunk_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Titans' linear memory over a sequence with the chunk rule: q, k (B, H, T, Dk), v (B, H, T, Dv);
    theta (learning rates), eta (momenta; None = no momentum), alpha (forgetting; None = none): (B, H, T) in
    [0, 1]; M0 (B, H, Dk, Dv) or None (zeros); S0 (B, H, Dk, Dv) or None (zeros; only with eta).

    chunk_size: tokens per chunk of the chunk rule (every gradient of a chunk at the chunk's starting memory;
    1 = fully online). Returns (o (B, H, T, Dv) in q's dtype, M_T (B, H, Dk, Dv) float32, S_T float32 or
    None without eta); (M_T, S_T) passed as (M0, S0) continue the sequence when T is a multiple of chunk_size.
    backend: "auto" | "torch" (the token loop, differentiable) | "numba" (CPU) | "triton" (CUDA, or the CPU
    under ``TRITON_INTERPRET=1``). Computes in fp32.
    """
    _check_inputs(q, k, v, theta, eta, alpha, M0, S0, chunk_size)
    backend = resolve_backend(backend, q.device, op="titans_update")
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    if B * H == 0 or T == 0:
        def state(x):
            return (torch.zeros((B, H, Dk, Dv), dtype=torch.float32, device=q.device) if x is None
                    else x.to(torch.float32).clone())
        return (torch.empty((B, H, T, Dv), dtype=q.dtype, device=q.device), state(M0),
                None if eta is None else state(S0))
    if backend == "torch":
        return reference(q, k, v, theta, eta, alpha, M0, S0, chunk_size)
    if backend == "numba":
        return numba_titans_update(q, k, v, theta, eta, alpha, M0, S0, chunk_size)
    return triton_titans_update(q, k, v, theta, eta, alpha, M0, S0, chunk_size)


def _check_inputs(q, k, v, theta, eta, alpha, M0, S0, chunk_size) -> None:
    """Validate shapes, dtypes, devices, gates, states and chunk_size (clear errors naming the argument)."""
    B, H, T, Dk, Dv = check_qkv(q, k, v)
    check_gates("theta", theta, (B, H, T), low_open=False)
    if eta is not None:
        check_gates("eta", eta, (B, H, T), low_open=False)
    if alpha is not None:
        check_gates("alpha", alpha, (B, H, T), low_open=False)
    for name, x in (("M0", M0), ("S0", S0)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor or None, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if tuple(x.shape) != (B, H, Dk, Dv):
            raise ValueError(f"{name} must have shape (B, H, Dk, Dv) = {(B, H, Dk, Dv)}, got {tuple(x.shape)}")
    if S0 is not None and eta is None:
        raise ValueError("S0 (the momentum) needs eta: without eta there is no momentum to continue, "
                         "pass eta or S0=None")
    devices = {x.device for x in (q, k, v, theta, eta, alpha, M0, S0) if x is not None}
    if len(devices) > 1:
        raise ValueError(f"q, k, v, theta, eta, alpha, M0 and S0 must be on one device, "
                         f"got {sorted(map(str, devices))}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
