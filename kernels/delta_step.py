"""One decode step of a linear-attention memory, all heads at once: read the state S once, write it once.

Per (b, h), with the state S (Dk, Dv), one new token (q, k, v) and optional gates β, α:

    linear attention (beta=None):   S' = α S + k vᵀ                         (α = 1 when alpha is None)
    (gated) delta rule:             u = β (v − α Sᵀ k);   S' = α S + k uᵀ
    read-out (both):                o = scale · S'ᵀ q

Done as separate torch ops (``reference``) this reads S three times (Sᵀk, the update, S'ᵀq) and writes it
once. The fused kernels read every column block of S once: the same pass gives Sᵀk and Sᵀq, and the read-out
needs no second pass because

    S'ᵀ q = α Sᵀ q + u (kᵀ q)

then the block is updated and written (still in L1). Decoding is memory-bound (S is Dk·Dv floats per head,
four flops per float), so one read and one write of S is the roofline.

Shapes: q, k (B, H, Dk); v (B, H, Dv); S (B, H, Dk, Dv); beta, alpha (B, H) or None. Returns (o (B, H, Dv) in
q's dtype, S_new (B, H, Dk, Dv) float32): a new tensor, S is not modified, unless ``inplace=True`` (S must then
be a contiguous float32 tensor; S_new is S, overwritten: no allocation, which a decode loop wants). Default
scale 1. The step equals one token of ``delta_rule`` (with beta=None: of causal linear attention).

- ``reference``           plain torch, separate ops (fp32 inside), the spec.
- ``numba_delta_step``    CPU: one (b, h) row per thread, column blocks of S.
- ``triton_delta_step``   GPU: one program per ((b, h), block of Dv columns) holding S[:, block] in registers.
- ``delta_step``          checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret
from .delta_rule import _FLOATS, check_gates, check_scale

# ------------------------------------------------------------------------------------------------------
# 1. The reference: the definition, written as plainly as possible.
# ------------------------------------------------------------------------------------------------------


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    S: torch.Tensor,
    beta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step in plain torch: q, k (B, H, Dk), v (B, H, Dv), S (B, H, Dk, Dv), beta/alpha (B, H) or None
    -> (o (B, H, Dv) in q's dtype, S_new (B, H, Dk, Dv) float32). fp32 inside; differentiable."""
    scale = 1.0 if scale is None else scale
    out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, S = (x.to(dtype) for x in (q, k, v, S))
    if alpha is not None:
        S = alpha.to(dtype)[..., None, None] * S
    if beta is None:
        u = v  # linear attention: write v, erase nothing
    else:
        u = beta.to(dtype)[..., None] * (v - torch.einsum("bhkv,bhk->bhv", S, k))  # S here is already α S
    S_new = S + k[..., :, None] * u[..., None, :]
    o = scale * torch.einsum("bhkv,bhk->bhv", S_new, q)
    return o.to(out_dtype), S_new.to(torch.float32)


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU): one (b, h) row per thread; blocks of _BLOCK columns of S, each read once and written once.
# ------------------------------------------------------------------------------------------------------

_BLOCK = 32  # columns of S per block: Dk x 32 floats (16 KiB at Dk = 128) stay in L1 between the two loops


@njit(fastmath=True, cache=True)
def _step_row(q, k, v, S, beta, alpha, delta, scale, out, S_new):  # pragma: no cover - compiled
    """One (b, h) row: q, k (Dk,), v (Dv,), S (Dk, Dv) float32; delta: apply the erase with beta; out (Dv,);
    S_new (Dk, Dv)."""
    Dk, Dv = S.shape
    kq = np.float32(0.0)
    for d in range(Dk):
        kq += k[d] * q[d]
    sk = np.empty(_BLOCK, np.float32)
    sq = np.empty(_BLOCK, np.float32)
    u = np.empty(_BLOCK, np.float32)
    for e0 in range(0, Dv, _BLOCK):
        m = min(_BLOCK, Dv - e0)
        for e in range(m):
            sk[e] = 0.0
            sq[e] = 0.0
        for d in range(Dk):  # Sᵀk and Sᵀq of the block in one pass
            kd = k[d]
            qd = q[d]
            for e in range(m):
                s = S[d, e0 + e]
                sk[e] += kd * s
                sq[e] += qd * s
        for e in range(m):
            if delta:
                u[e] = beta * (v[e0 + e] - alpha * sk[e])
            else:
                u[e] = v[e0 + e]
            out[e0 + e] = scale * (alpha * sq[e] + u[e] * kq)  # S'ᵀq = α Sᵀq + u (kᵀq)
        for d in range(Dk):  # S' = α S + k uᵀ, the block still in L1
            kd = k[d]
            for e in range(m):
                S_new[d, e0 + e] = alpha * S[d, e0 + e] + kd * u[e]


@njit(parallel=True, cache=True)
def _step_rows_parallel(q, k, v, S, beta, alpha, delta, scale, out, S_new):  # pragma: no cover - compiled
    """q, k: (BH, Dk), v: (BH, Dv), S: (BH, Dk, Dv), beta/alpha: (BH,), out: (BH, Dv), S_new like S."""
    for row in prange(S.shape[0]):
        _step_row(q[row], k[row], v[row], S[row], beta[row], alpha[row], delta, scale, out[row], S_new[row])


@njit(cache=True)
def _step_rows_serial(q, k, v, S, beta, alpha, delta, scale, out, S_new):  # pragma: no cover - compiled
    """The same on one core: for small problems, waking the thread pool costs more than the work."""
    for row in range(S.shape[0]):
        _step_row(q[row], k[row], v[row], S[row], beta[row], alpha[row], delta, scale, out[row], S_new[row])


_NUMBA_SERIAL_BELOW = 1 << 16  # elements of S under which one core is faster


def _as_f32_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (no copy when x already is contiguous fp32 on the CPU)."""
    return x.detach().to(torch.float32).contiguous().numpy()


def numba_delta_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    S: torch.Tensor,
    beta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    scale: float | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused step on the CPU with Numba (inputs checked by ``delta_step``). ``inplace``: write into S
    (each block of S is read in full before it is written, so S and S_new may alias)."""
    B, H, Dk, Dv = S.shape
    rows = B * H
    scale = 1.0 if scale is None else float(scale)
    b = np.zeros(rows, np.float32) if beta is None else _as_f32_numpy(beta).reshape(rows)
    a = np.ones(rows, np.float32) if alpha is None else _as_f32_numpy(alpha).reshape(rows)
    out = np.empty((rows, Dv), np.float32)
    S_in = _as_f32_numpy(S).reshape(rows, Dk, Dv)
    S_new = S_in if inplace else np.empty((rows, Dk, Dv), np.float32)
    kernel = _step_rows_serial if S.numel() < _NUMBA_SERIAL_BELOW else _step_rows_parallel
    kernel(
        _as_f32_numpy(q).reshape(rows, Dk), _as_f32_numpy(k).reshape(rows, Dk), _as_f32_numpy(v).reshape(rows, Dv),
        S_in, b, a, beta is not None, np.float32(scale), out, S_new,
    )
    o = torch.from_numpy(out).reshape(B, H, Dv).to(q.dtype)
    return o, S if inplace else torch.from_numpy(S_new).reshape(B, H, Dk, Dv)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU): program (row, column block) loads S[:, block] once, stores S'[:, block] once.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _delta_step_kernel(
        q_ptr, k_ptr, v_ptr, s_ptr, beta_ptr, alpha_ptr, o_ptr, snew_ptr, DK, DV, scale,
        DELTA: tl.constexpr, HAS_ALPHA: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offs_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        offs_k = tl.arange(0, BLOCK_K)
        mask_k = offs_k < DK
        mask_v = offs_v < DV
        q = tl.load(q_ptr + row * DK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + row * DK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
        s_offs = row * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
        s_mask = mask_k[:, None] & mask_v[None, :]
        S = tl.load(s_ptr + s_offs, mask=s_mask, other=0.0).to(tl.float32)  # (BK, BV): the one read
        if HAS_ALPHA:
            a = tl.load(alpha_ptr + row).to(tl.float32)
        else:
            a = 1.0
        sq = tl.sum(S * q[:, None], 0)
        if DELTA:
            sk = tl.sum(S * k[:, None], 0)
            u = tl.load(beta_ptr + row).to(tl.float32) * (v - a * sk)
        else:
            u = v
        kq = tl.sum(k * q, 0)
        tl.store(o_ptr + row * DV + offs_v, scale * (a * sq + u * kq), mask=mask_v)
        tl.store(snew_ptr + s_offs, a * S + k[:, None] * u[None, :], mask=s_mask)  # the one write


def triton_delta_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    S: torch.Tensor,
    beta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    scale: float | None = None,
    block_v: int | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused step with Triton (inputs checked by ``delta_step``). ``block_v`` (a power of two) overrides
    the columns per program (tests use it to exercise several blocks). ``inplace``: write into S (every program
loads its block in full before storing it, and the blocks are disjoint)."""
    if triton is None:
        raise RuntimeError("triton_delta_step needs the triton package (pip install triton; Linux + CUDA)")
    B, H, Dk, Dv = S.shape
    rows, device = B * H, q.device
    scale = 1.0 if scale is None else float(scale)
    S_out = S
    q, k, v, S = (x.contiguous() for x in (q, k, v, S))
    b = q if beta is None else beta.contiguous()  # dummy pointers when a gate is absent
    a = q if alpha is None else alpha.contiguous()
    p2 = triton.next_power_of_2
    block_k = p2(Dk)
    if block_v is None:  # about 8K floats of S per program on a GPU; the interpreter prefers few programs
        block_v = min(p2(Dv), max(16, 8192 // block_k)) if device.type == "cuda" else p2(Dv)
    direct = device.type == "cuda" and not triton_interpret()  # the interpreter mishandles 16-bit stores
    o = torch.empty((B, H, Dv), dtype=q.dtype if direct else torch.float32, device=device)
    S_new = S_out if inplace else torch.empty((B, H, Dk, Dv), dtype=torch.float32, device=device)
    _delta_step_kernel[(rows, triton.cdiv(Dv, block_v))](
        q, k, v, S, b, a, o, S_new, Dk, Dv, scale,
        DELTA=beta is not None, HAS_ALPHA=alpha is not None, BLOCK_K=block_k, BLOCK_V=block_v,
    )
    return o.to(q.dtype), S_new


# ------------------------------------------------------------------------------------------------------
# 4. The public op: check the inputs, pick the backend.
# ------------------------------------------------------------------------------------------------------


def delta_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    S: torch.Tensor,
    beta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    scale: float | None = None,
    inplace: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of a linear-attention memory: q, k (B, H, Dk), v (B, H, Dv), S (B, H, Dk, Dv),
    beta (B, H) in [0, 1] or None (linear attention: no erase), alpha (B, H) in (0, 1] or None (no decay).

    Returns (o (B, H, Dv) in q's dtype, S_new (B, H, Dk, Dv) float32); S itself is left unchanged, unless
    ``inplace=True``: then S (a contiguous float32 tensor) is overwritten with the new state and returned.
    backend: "auto" | "torch" | "numba" (CPU) | "triton" (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    """
    scale = _check_inputs(q, k, v, S, beta, alpha, scale)
    if inplace and (S.dtype != torch.float32 or not S.is_contiguous()):
        raise ValueError(f"inplace=True needs S to be a contiguous float32 tensor, got {S.dtype}"
                         f"{'' if S.is_contiguous() else ' (not contiguous)'}: pass S.float().contiguous()")
    backend = resolve_backend(backend, q.device, op="delta_step")
    B, H, Dk, Dv = S.shape
    if B * H == 0:
        return (torch.empty((B, H, Dv), dtype=q.dtype, device=q.device),
                S if inplace else S.to(torch.float32).clone())
    if backend == "torch":
        o, S_new = reference(q, k, v, S, beta, alpha, scale)
        return (o, S.copy_(S_new)) if inplace else (o, S_new)
    if backend == "numba":
        return numba_delta_step(q, k, v, S, beta, alpha, scale, inplace=inplace)
    return triton_delta_step(q, k, v, S, beta, alpha, scale, inplace=inplace)


def _check_inputs(q, k, v, S, beta, alpha, scale) -> float:
    """Validate shapes, dtypes, devices, gates and scale; return the scale."""
    for name, x, dims in (("q", q, 3), ("k", k, 3), ("v", v, 3), ("S", S, 4)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floating-point numbers ({_FLOATS}), got {x.dtype}")
        if x.dim() != dims:
            shape = {"q": "(B, H, Dk)", "k": "(B, H, Dk)", "v": "(B, H, Dv)", "S": "(B, H, Dk, Dv)"}[name]
            raise ValueError(f"{name} must be {dims}-D {shape}, got shape {tuple(x.shape)}")
    B, H, Dk, Dv = S.shape
    if Dk == 0 or Dv == 0:
        raise ValueError(f"the head dimensions must be >= 1, got Dk={Dk}, Dv={Dv}")
    for name, x, want in (("q", q, (B, H, Dk)), ("k", k, (B, H, Dk)), ("v", v, (B, H, Dv))):
        if tuple(x.shape) != want:
            raise ValueError(f"{name} must have shape {want} to match S {tuple(S.shape)}, got {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if beta is not None:
        check_gates("beta", beta, (B, H), low_open=False)
    if alpha is not None:
        check_gates("alpha", alpha, (B, H), low_open=True)
    devices = {x.device for x in (q, k, v, S, beta, alpha) if x is not None}
    if len(devices) > 1:
        raise ValueError(f"q, k, v, S, beta and alpha must be on one device, got {sorted(map(str, devices))}")
    return check_scale(scale)
