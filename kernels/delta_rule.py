"""The (gated) delta rule over a whole sequence, chunk by chunk: a fast-weight memory S written token by token.

Per (b, h) the state S (Dk, Dv) is a linear associative memory. Token t first erases what S recalls for k_t
(a fraction β_t of it), then writes v_t, and the whole memory decays by α_t (the *gated* delta rule):

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ          o_t = scale · S_tᵀ q_t
        = α_t S_{t−1} + k_t u_tᵀ,     u_t = β_t (v_t − α_t S_{t−1}ᵀ k_t)      (the "new value")

β ∈ [0, 1], α ∈ (0, 1] (α = 1: the plain delta rule; β = 1, α = 1: the delta rule of DeltaNet). Keys are
expected L2-normalised (the state stays bounded when β |k|² ≤ 2; this is not checked).

The chunkwise (WY / UT) form. Split the sequence into chunks of C tokens and let S be the state at the start
of a chunk; inside it, with 1-based positions i, j ≤ C, write γ_i = α_1 ⋯ α_i and Γ_ij = γ_i / γ_j =
α_{j+1} ⋯ α_i (j ≤ i). Unrolling the recurrence inside the chunk:

    S_i = γ_i S + Σ_{j ≤ i} Γ_ij k_j u_jᵀ
    u_i = β_i (v_i − α_i S_{i−1}ᵀ k_i) = β_i v_i − β_i γ_i Sᵀ k_i − Σ_{j < i} β_i Γ_ij (k_iᵀ k_j) u_j

so with A = tril(diag(β) (K Kᵀ ⊙ Γ), −1) (strictly lower) the new values of the whole chunk solve one
unit-lower-triangular system:

    (I + A) U' = diag(β) (V − diag(γ) K S)
    U' = T V − W S,       T = (I + A)⁻¹ diag(β),   W = T diag(γ) K
    O  = scale · (diag(γ) Q S + (Q Kᵀ ⊙ Γ ⊙ M) U')                                    M: tril incl. diagonal
    S ← γ_C S + (diag(γ_C / γ) K)ᵀ U'

With α ≡ 1 (γ = Γ = 1) this is the WY form of DeltaNet: A = tril(diag(β) K Kᵀ, −1), W = T K, U = T V. The
decay only rescales A, the Q Kᵀ mask, the rows of W and the keys entering the state. Every Γ_ij (j ≤ i) and
γ_C/γ_j lies in [0, 1], so nothing overflows; Γ is formed by products of α (not exp of a log-sum) to keep
α = 1 exact. Each chunk costs ~3·C·Dk·Dv + 2·C²·D multiply-adds (the matmuls), and the only sequential work
left is the forward substitution for (I + A)⁻¹ inside the chunk.

Shapes: q, k (B, H, T, Dk); v (B, H, T, Dv); beta (B, H, T); alpha (B, H, T) or None (= 1); S0 (B, H, Dk, Dv)
or None (= 0). Returns o (B, H, T, Dv) in q's dtype and the final state (B, H, Dk, Dv) float32, which can be
passed as S0 to continue the sequence. Default scale 1.

Four implementations, top to bottom:

- ``reference``           plain torch, the spec: the token-by-token loop (fp32 inside).
- ``numba_delta_rule``    CPU: one (b, h) row per thread, chunkwise, S resident in a local array. The
                          forward substitution solves for U' directly (the right-hand side already holds
                          −diag(βγ) K S, so W S is never formed: same numbers, fewer flops).
- ``triton_delta_rule``   GPU: one program per (b, h) walking the chunks, S in registers, tl.dot for the
                          chunk matmuls, T = (I + A)⁻¹ by forward substitution over the chunk's rows.
- ``delta_rule``          checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret

# ------------------------------------------------------------------------------------------------------
# 1. The reference: the definition, written as plainly as possible.
# ------------------------------------------------------------------------------------------------------


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    alpha: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gated) delta rule token by token in plain torch: q, k (B, H, T, Dk), v (B, H, T, Dv), beta and
    alpha (B, H, T), S0 (B, H, Dk, Dv) -> (o (B, H, T, Dv) in q's dtype, S (B, H, Dk, Dv) float32).

    Computes in (at least) fp32. Differentiable; the spec the kernels must match (and their speed baseline).
    """
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    scale = 1.0 if scale is None else scale
    out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, beta = (x.to(dtype) for x in (q, k, v, beta))
    S = torch.zeros(B, H, Dk, Dv, dtype=dtype, device=q.device) if S0 is None else S0.to(dtype)
    outs = []
    for t in range(T):
        a = 1.0 if alpha is None else alpha[:, :, t, None, None].to(dtype)
        S = a * S  # decay: α_t S_{t-1}
        kt = k[:, :, t]
        u = beta[:, :, t, None] * (v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, kt))  # the new value
        S = S + kt[..., :, None] * u[..., None, :]  # write k_t u_tᵀ
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]))  # read with the new state
    o = torch.stack(outs, dim=2) if outs else torch.empty(B, H, 0, Dv, dtype=dtype, device=q.device)
    return o.to(out_dtype), S.to(torch.float32)


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU): one (b, h) row per thread, chunk by chunk, the state resident in a local array.
# ------------------------------------------------------------------------------------------------------


@njit(fastmath=True, cache=True)
def _delta_row(q, k, v, beta, alpha, S, C, scale, out):  # pragma: no cover - compiled
    """One (b, h) row: q, k (T, Dk), v (T, Dv), beta, alpha (T,) float32; S (Dk, Dv) the state, updated in
    place; C the chunk size; out (T, Dv).

    Every inner loop runs over a contiguous row of Dk or Dv floats (dot products over Dk; axpys over Dv),
    so LLVM vectorises them; the chunk's scratch (C x C and C x Dv) stays in L1/L2 with S.
    """
    T, Dk = k.shape
    Dv = v.shape[1]
    G = np.zeros((C, C), np.float32)  # Γ_ij = α_{j+1} ⋯ α_i for j <= i
    gam = np.empty(C, np.float32)  # γ_i = α_1 ⋯ α_i
    A = np.zeros((C, C), np.float32)  # β_i Γ_ij k_i·k_j, j < i
    P = np.zeros((C, C), np.float32)  # scale Γ_ij q_i·k_j, j <= i
    KS = np.empty((C, Dv), np.float32)  # K S, then the new values U'
    QS = np.empty((C, Dv), np.float32)  # Q S
    for t0 in range(0, T, C):
        n = min(C, T - t0)
        # decays inside the chunk
        for i in range(n):
            G[i, i] = 1.0
            for j in range(i - 1, -1, -1):
                G[i, j] = G[i, j + 1] * alpha[t0 + j + 1]
            gam[i] = G[i, 0] * alpha[t0]
        # K S and Q S in one pass over S
        for i in range(n):
            for e in range(Dv):
                KS[i, e] = 0.0
                QS[i, e] = 0.0
            for d in range(Dk):
                kd = k[t0 + i, d]
                qd = q[t0 + i, d]
                for e in range(Dv):
                    KS[i, e] += kd * S[d, e]
                    QS[i, e] += qd * S[d, e]
        # A (strictly lower) and P (lower, with the diagonal)
        for i in range(n):
            bi = beta[t0 + i]
            for j in range(i + 1):
                kk = np.float32(0.0)
                qk = np.float32(0.0)
                for d in range(Dk):
                    kk += k[t0 + i, d] * k[t0 + j, d]
                    qk += q[t0 + i, d] * k[t0 + j, d]
                A[i, j] = bi * G[i, j] * kk
                P[i, j] = scale * G[i, j] * qk
        # forward substitution: U'_i = β_i (v_i − γ_i (K S)_i) − Σ_{j<i} A_ij U'_j, in place of K S
        for i in range(n):
            bi = beta[t0 + i]
            gi = gam[i]
            for e in range(Dv):
                KS[i, e] = bi * (v[t0 + i, e] - gi * KS[i, e])
            for j in range(i):
                a = A[i, j]
                for e in range(Dv):
                    KS[i, e] -= a * KS[j, e]
        # O = scale γ Q S + P U'
        for i in range(n):
            g = scale * gam[i]
            for e in range(Dv):
                out[t0 + i, e] = g * QS[i, e]
            for j in range(i + 1):
                p = P[i, j]
                for e in range(Dv):
                    out[t0 + i, e] += p * KS[j, e]
        # S <- γ_n S + Σ_j (γ_n / γ_j) k_j U'_jᵀ
        gn = gam[n - 1]
        for d in range(Dk):
            for e in range(Dv):
                S[d, e] *= gn
        for j in range(n):
            w = G[n - 1, j]
            for d in range(Dk):
                kd = w * k[t0 + j, d]
                for e in range(Dv):
                    S[d, e] += kd * KS[j, e]


@njit(parallel=True, cache=True)
def _delta_rows_parallel(q, k, v, beta, alpha, S, C, scale, out):  # pragma: no cover - compiled
    """q, k: (BH, T, Dk), v: (BH, T, Dv), beta/alpha: (BH, T), S: (BH, Dk, Dv) in/out, out: (BH, T, Dv)."""
    for row in prange(k.shape[0]):
        _delta_row(q[row], k[row], v[row], beta[row], alpha[row], S[row], C, scale, out[row])


@njit(cache=True)
def _delta_rows_serial(q, k, v, beta, alpha, S, C, scale, out):  # pragma: no cover - compiled
    """The same on one core: for small problems, waking the thread pool costs more than the work."""
    for row in range(k.shape[0]):
        _delta_row(q[row], k[row], v[row], beta[row], alpha[row], S[row], C, scale, out[row])


_NUMBA_SERIAL_BELOW = 1 << 16  # multiply-adds (B*H*T*Dk*Dv) under which one core is faster


def _as_f32_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (no copy when x already is contiguous fp32 on the CPU)."""
    return x.detach().to(torch.float32).contiguous().numpy()


def numba_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    alpha: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunkwise (gated) delta rule on the CPU with Numba (inputs checked by ``delta_rule``)."""
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    scale = 1.0 if scale is None else float(scale)
    rows = B * H
    S = (np.zeros((rows, Dk, Dv), np.float32) if S0 is None
         else _as_f32_numpy(S0).reshape(rows, Dk, Dv).copy())
    a = np.ones((rows, T), np.float32) if alpha is None else _as_f32_numpy(alpha).reshape(rows, T)
    out = np.empty((rows, T, Dv), np.float32)
    kernel = _delta_rows_serial if rows * T * Dk * Dv < _NUMBA_SERIAL_BELOW else _delta_rows_parallel
    kernel(
        _as_f32_numpy(q).reshape(rows, T, Dk), _as_f32_numpy(k).reshape(rows, T, Dk),
        _as_f32_numpy(v).reshape(rows, T, Dv), _as_f32_numpy(beta).reshape(rows, T), a,
        S, max(1, min(int(chunk_size), T)), np.float32(scale), out,
    )
    o = torch.from_numpy(out).reshape(B, H, T, Dv).to(q.dtype)
    return o, torch.from_numpy(S).reshape(B, H, Dk, Dv)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU): one program per (b, h) walks the chunks; S (Dk x Dv) stays in registers.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _delta_rule_kernel(
        q_ptr, k_ptr, v_ptr, beta_ptr, alpha_ptr, s_ptr, o_ptr,  # s: (BH, Dk, Dv) fp32, S0 in, S_final out
        T, DK, DV, scale,
        HAS_ALPHA: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)  # int64: long sequences overflow int32 offsets
        offs_c = tl.arange(0, BLOCK_C)
        offs_k = tl.arange(0, BLOCK_K)
        offs_v = tl.arange(0, BLOCK_V)
        mask_k = offs_k < DK
        mask_v = offs_v < DV
        s_offs = row * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
        s_mask = mask_k[:, None] & mask_v[None, :]
        S = tl.load(s_ptr + s_offs, mask=s_mask, other=0.0)  # (BK, BV) fp32
        lower = offs_c[:, None] > offs_c[None, :]  # strictly lower
        causal = offs_c[:, None] >= offs_c[None, :]
        eye = (offs_c[:, None] == offs_c[None, :]).to(tl.float32)
        for t0 in range(0, T, BLOCK_C):
            offs_t = t0 + offs_c
            mask_t = offs_t < T
            qk_mask = mask_t[:, None] & mask_k[None, :]
            qk_offs = row * T * DK + offs_t[:, None] * DK + offs_k[None, :]
            q = tl.load(q_ptr + qk_offs, mask=qk_mask, other=0.0).to(tl.float32)  # (BC, BK)
            k = tl.load(k_ptr + qk_offs, mask=qk_mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + row * T * DV + offs_t[:, None] * DV + offs_v[None, :],
                        mask=mask_t[:, None] & mask_v[None, :], other=0.0).to(tl.float32)  # (BC, BV)
            beta = tl.load(beta_ptr + row * T + offs_t, mask=mask_t, other=0.0).to(tl.float32)  # padding: 0
            if HAS_ALPHA:  # log-decays, cumulated: g_i = log γ_i (padding: α = 1, no decay)
                la = tl.log(tl.load(alpha_ptr + row * T + offs_t, mask=mask_t, other=1.0).to(tl.float32))
                g = tl.cumsum(la, 0)
                g_last = tl.sum(la, 0)
                gam = tl.exp(g)
                ratio = tl.exp(tl.where(causal, g[:, None] - g[None, :], 0.0))  # Γ_ij, j <= i
                decay_end = tl.exp(g_last - g)  # γ_C / γ_j
                gam_last = tl.exp(g_last)
            else:
                gam = tl.full([BLOCK_C], 1.0, tl.float32)
                ratio = tl.full([BLOCK_C, BLOCK_C], 1.0, tl.float32)
                decay_end = gam
                gam_last = 1.0
            kk = tl.dot(k, tl.trans(k), input_precision="ieee")  # (BC, BC)
            A = tl.where(lower, beta[:, None] * kk * ratio, 0.0)
            # Tinv = (I + A)⁻¹ by forward substitution: row i = e_i − Σ_{j<i} A_ij Tinv_j (rows j < i are done)
            Tinv = eye
            for i in range(1, BLOCK_C):
                a_i = tl.sum(tl.where(offs_c[:, None] == i, A, 0.0), 0)  # row i of A: (BC,)
                new = tl.sum(a_i[:, None] * Tinv, 0)  # Σ_j A_ij Tinv_j
                Tinv = tl.where(offs_c[:, None] == i, Tinv - new[None, :], Tinv)
            ks = tl.dot(k, S, input_precision="ieee")  # (BC, BV)
            rhs = beta[:, None] * (v - gam[:, None] * ks)  # diag(β)(V − diag(γ) K S)
            u = tl.dot(Tinv, rhs, input_precision="ieee")  # U' = T V − W S
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            P = tl.where(causal, qk * ratio, 0.0)
            o = gam[:, None] * tl.dot(q, S, input_precision="ieee") + tl.dot(P, u, input_precision="ieee")
            tl.store(o_ptr + row * T * DV + offs_t[:, None] * DV + offs_v[None, :], o * scale,
                     mask=mask_t[:, None] & mask_v[None, :])
            kd = k * decay_end[:, None]
            S = gam_last * S + tl.dot(tl.trans(kd), u, input_precision="ieee")
        tl.store(s_ptr + s_offs, S, mask=s_mask)


def triton_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    alpha: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunkwise (gated) delta rule with Triton (inputs checked by ``delta_rule``).

    The chunk is rounded up to a power of two >= 16 (tl.dot's smallest tile); padded tokens have β = 0 and
    α = 1, so they change nothing.
    """
    if triton is None:
        raise RuntimeError("triton_delta_rule needs the triton package (pip install triton; Linux + CUDA)")
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    rows, device = B * H, q.device
    scale = 1.0 if scale is None else float(scale)
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    alpha_arg = beta if alpha is None else alpha.contiguous()
    S = (torch.zeros((B, H, Dk, Dv), dtype=torch.float32, device=device) if S0 is None
         else S0.to(device=device, dtype=torch.float32).clone().contiguous())
    # the interpreter mishandles 16-bit stores: write fp32 there
    direct = device.type == "cuda" and not triton_interpret()
    o = torch.empty((B, H, T, Dv), dtype=q.dtype if direct else torch.float32, device=device)
    p2 = triton.next_power_of_2
    block_c = max(16, min(p2(int(chunk_size)), p2(T)))
    _delta_rule_kernel[(rows,)](
        q, k, v, beta, alpha_arg, S, o, T, Dk, Dv, scale,
        HAS_ALPHA=alpha is not None, BLOCK_C=block_c, BLOCK_K=max(16, p2(Dk)), BLOCK_V=max(16, p2(Dv)),
    )
    return o.to(q.dtype), S


# ------------------------------------------------------------------------------------------------------
# 4. The public op: check the inputs, pick the backend.
# ------------------------------------------------------------------------------------------------------

_FLOATS = "float16, bfloat16, float32 or float64"


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    alpha: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gated) delta rule over a sequence: q, k (B, H, T, Dk), v (B, H, T, Dv), beta (B, H, T) in [0, 1],
    alpha (B, H, T) in (0, 1] or None (no decay), S0 (B, H, Dk, Dv) or None (zeros), scale (default 1).

    Returns (o (B, H, T, Dv) in q's dtype, S_final (B, H, Dk, Dv) float32); S_final passed as S0 continues
    the sequence. chunk_size: tokens per chunk of the chunkwise kernels (any T is fine).
    backend: "auto" | "torch" (the token loop, differentiable) | "numba" (CPU) | "triton" (CUDA, or the CPU
    under ``TRITON_INTERPRET=1``). Computes in fp32.
    """
    scale = _check_inputs(q, k, v, beta, alpha, S0, scale, chunk_size)
    backend = resolve_backend(backend, q.device, op="delta_rule")
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    if B * H == 0 or T == 0:
        S = (torch.zeros((B, H, Dk, Dv), dtype=torch.float32, device=q.device) if S0 is None
             else S0.to(torch.float32).clone())
        return torch.empty((B, H, T, Dv), dtype=q.dtype, device=q.device), S
    if backend == "torch":
        return reference(q, k, v, beta, alpha, S0, scale)
    if backend == "numba":
        return numba_delta_rule(q, k, v, beta, alpha, S0, scale, chunk_size)
    return triton_delta_rule(q, k, v, beta, alpha, S0, scale, chunk_size)


def check_gates(name: str, x: torch.Tensor, shape: tuple[int, ...], low_open: bool) -> None:
    """x: a floating tensor of ``shape`` in [0, 1] (``low_open``: in (0, 1]); clear error naming it otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must hold floating-point numbers ({_FLOATS}), got {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        bad_low = not lo > 0 if low_open else not lo >= 0
        if bad_low or not hi <= 1 or x.isnan().any():
            interval = "(0, 1]" if low_open else "[0, 1]"
            raise ValueError(f"{name} must lie in {interval}, got values from {lo:g} to {hi:g}")


def check_scale(scale) -> float:
    """The output scale: 1 for None, else a finite real number."""
    if scale is None:
        return 1.0
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_qkv(q, k, v) -> tuple[int, int, int, int, int]:
    """q, k (B, H, T, Dk) and v (B, H, T, Dv): floating point, one dtype; returns (B, H, T, Dk, Dv).
    Shared by the recurrent-memory kernels (delta_rule, titans_update)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floating-point numbers ({_FLOATS}), got {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, T, {'Dv' if name == 'v' else 'Dk'}), "
                             f"got shape {tuple(x.shape)}")
    B, H, T, Dk = k.shape
    Dv = v.shape[3]
    if tuple(q.shape) != (B, H, T, Dk):
        raise ValueError(f"q must have the shape of k (B, H, T, Dk) = {(B, H, T, Dk)}, got {tuple(q.shape)}")
    if tuple(v.shape[:3]) != (B, H, T):
        raise ValueError(f"v must have shape (B, H, T, Dv) with (B, H, T) = {(B, H, T)} from k, "
                         f"got {tuple(v.shape)}")
    if Dk == 0 or Dv == 0:
        raise ValueError(f"the head dimensions must be >= 1, got Dk={Dk}, Dv={Dv}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    return B, H, T, Dk, Dv


def _check_inputs(q, k, v, beta, alpha, S0, scale, chunk_size) -> float:
    """Validate shapes, dtypes, devices, gates, chunk_size and scale; return the scale."""
    B, H, T, Dk, Dv = check_qkv(q, k, v)
    check_gates("beta", beta, (B, H, T), low_open=False)
    if alpha is not None:
        check_gates("alpha", alpha, (B, H, T), low_open=True)
    if S0 is not None:
        if not isinstance(S0, torch.Tensor) or not S0.is_floating_point():
            raise TypeError(f"S0 must be a floating-point torch.Tensor or None, got "
                            f"{S0.dtype if isinstance(S0, torch.Tensor) else type(S0).__name__}")
        if tuple(S0.shape) != (B, H, Dk, Dv):
            raise ValueError(f"S0 must have shape (B, H, Dk, Dv) = {(B, H, Dk, Dv)}, got {tuple(S0.shape)}")
    devices = {x.device for x in (q, k, v, beta, alpha, S0) if x is not None}
    if len(devices) > 1:
        raise ValueError(f"q, k, v, beta, alpha and S0 must be on one device, got {sorted(map(str, devices))}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return check_scale(scale)
