r"""TIES merging (Yadav et al., 2023) in one pass over the parameters: trim, elect sign, disjoint mean.

Given T task vectors stacked as τ (T, P) and a density d ∈ (0, 1], with k = max(1, round(d · P)):

    threshold   t_i = the k-th largest |τ_i[j]| over j                     (exact: ``torch.kthvalue``)
    trim        τ̂_i[j] = τ_i[j] if |τ_i[j]| ≥ t_i else 0
    elect       s[j] = sign(Σ_i τ̂_i[j])                                    (sum in float64; 0 if it cancels)
    merge       m[j] = Σ_{i∈A_j} τ̂_i[j] / |A_j|,   A_j = {i : τ̂_i[j] ≠ 0, sign(τ̂_i[j]) = s[j]}   (0 if A_j = ∅)

and optionally θ = θ_0 + c · m (``base``, ``scale``). The thresholds are computed once per call
(``ties_thresholds``; a selection, O(P) per task vector, not a sort) or passed in; the merge itself reads
each τ_i[j] once (a block of columns stays in L1 between the election and the mean) and writes m once.
On the GPU (Triton backend) the thresholds are ``torch.kthvalue``'s.

**Ties at the threshold.** Trim keeps *every* entry whose magnitude equals t_i, so a task vector with several
entries tied at the k-th largest magnitude keeps more than k. ``labkit.continual.merging._ties_vector`` keeps
exactly k (``topk``; which of the tied entries it keeps is up to torch). With distinct magnitudes (any
continuous data) the two are identical; every backend here follows the "≥ t_i" rule exactly. Zeros are never
counted (a zero entry cannot agree with a sign). The election sums in float64 (``_ties_vector`` in float32):
the elected sign can differ only where the float32 sum of the trimmed entries is within rounding of zero.

- ``reference``           plain torch (separate passes: abs, masks, sums), the spec.
- ``numba_ties_merge``    CPU: blocks of 512 columns in parallel; per block, pass 1 sums the trimmed entries
                          (float64), pass 2 averages the agreeing ones (the block is still in L1). Its
                          thresholds come from ``numba_ties_thresholds``: an exact radix select on the float
                          bits (two streaming passes per task vector; ``torch.kthvalue`` took 30x longer,
                          4.0 s vs 0.13 s at T = 8, P = 10M on one core, and would dominate the merge).
- ``triton_ties_merge``   GPU: one program per BLOCK columns, the T rows loaded once each per pass.
- ``ties_merge``          checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret

# ------------------------------------------------------------------------------------------------------
# 1. The thresholds and the reference.
# ------------------------------------------------------------------------------------------------------


def ties_k(P: int, density: float) -> int:
    """How many entries trim keeps per task vector (at least): max(1, round(density · P)) (P ≥ 1)."""
    return max(1, int(round(density * P)))


def ties_thresholds(task_vectors: torch.Tensor, density: float) -> torch.Tensor:
    """The trim threshold of each task vector: task_vectors (T, P), P ≥ 1 -> (T,) float32, t_i = the k-th largest
    |τ_i| with k = ``ties_k(P, density)`` (exact: ``torch.kthvalue`` on the magnitudes, k-th largest =
    (P − k + 1)-th smallest)."""
    P = task_vectors.shape[1]
    mag = task_vectors.detach().float().abs()
    return mag.kthvalue(P - ties_k(P, density) + 1, dim=1).values


def reference(
    task_vectors: torch.Tensor,
    density: float = 0.2,
    thresholds: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """task_vectors (T, P), thresholds (T,) or None (``ties_thresholds``), base (P,) or None -> the TIES-merged
    vector m (P,) float32, or base + scale · m in base's dtype. Plain torch, one op per step."""
    tv = task_vectors.float()
    if thresholds is None:
        thresholds = ties_thresholds(tv, density)
    trimmed = torch.where(tv.abs() >= thresholds.float()[:, None], tv, torch.zeros(()))
    sign = torch.sign(trimmed.double().sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    total = torch.where(agree, trimmed, torch.zeros(())).double().sum(0)
    merged = torch.where(count > 0, total / count.clamp(min=1), torch.zeros((), dtype=torch.float64)).float()
    return merged if base is None else (base.float() + scale * merged).to(base.dtype)


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU).
# ------------------------------------------------------------------------------------------------------

_NB_BLOCK = 512  # columns per parallel task: T x 512 floats (16 KiB at T = 8) stay in L1 between the passes


@njit(parallel=True, cache=True)
def _ties_blocks(tv, thr, base, scale, has_base, out):  # pragma: no cover - compiled
    """tv (T, P) float32, thr (T,) float32, base (P,) float32 (unused unless has_base), out (P,) float32."""
    T, P = tv.shape
    n_blocks = (P + _NB_BLOCK - 1) // _NB_BLOCK
    for b in prange(n_blocks):
        lo = b * _NB_BLOCK
        hi = min(lo + _NB_BLOCK, P)
        s = np.zeros(_NB_BLOCK, np.float64)
        for i in range(T):  # pass 1: the elected sign = sign of the summed trimmed entries
            t = thr[i]
            for j in range(lo, hi):
                x = tv[i, j]
                s[j - lo] += np.float64(x) if abs(x) >= t else 0.0  # branch-free (a select), vectorised
        tot = np.zeros(_NB_BLOCK, np.float64)
        cnt = np.zeros(_NB_BLOCK, np.int32)
        for i in range(T):  # pass 2: the disjoint mean of the agreeing entries (the block is in L1)
            t = thr[i]
            for j in range(lo, hi):
                x = np.float64(tv[i, j])
                keep = (abs(x) >= t) & (x * s[j - lo] > 0.0)  # kept and of the elected sign (x s > 0)
                tot[j - lo] += x if keep else 0.0
                cnt[j - lo] += np.int32(keep)
        for j in range(lo, hi):
            m = np.float32(tot[j - lo] / cnt[j - lo]) if cnt[j - lo] > 0 else np.float32(0.0)
            out[j] = base[j] + scale * m if has_base else m


@njit(parallel=True, cache=True)
def _kth_largest_bits(bits, k, out):  # pragma: no cover - compiled
    """bits (T, P) uint32: the float32 bit patterns of τ (the kernel clears the sign bit: then integer order =
    the order of the magnitudes); out (T,) uint32: the bits of the k-th largest magnitude per row. Exact radix
    select: a histogram of the high 16 bits finds the bucket holding the k-th largest, a second histogram of the
    low 16 bits (of that bucket's entries only) finds it exactly."""
    T, P = bits.shape
    for i in prange(T):
        hist = np.zeros(1 << 16, np.int64)
        for j in range(P):
            hist[(bits[i, j] & 0x7FFFFFFF) >> 16] += 1
        need = k
        hi = (1 << 16) - 1
        while hist[hi] < need:  # walk down from the largest bucket
            need -= hist[hi]
            hi -= 1
        hist[:] = 0
        for j in range(P):
            b = bits[i, j] & 0x7FFFFFFF
            if (b >> 16) == hi:
                hist[b & 0xFFFF] += 1
        lo = (1 << 16) - 1
        while hist[lo] < need:
            need -= hist[lo]
            lo -= 1
        out[i] = (np.uint32(hi) << np.uint32(16)) | np.uint32(lo)


def numba_ties_thresholds(task_vectors: torch.Tensor, density: float) -> torch.Tensor:
    """``ties_thresholds`` on the CPU by an exact radix select (two streaming passes per row, rows in parallel)
    instead of ``torch.kthvalue``: the same values, bit for bit. task_vectors (T, P), P >= 1 -> (T,) float32."""
    T, P = task_vectors.shape
    mag = task_vectors.detach().to(torch.float32).contiguous()
    bits = mag.view(torch.int32).numpy().view(np.uint32)  # with the sign bit cleared: |x| as ordered integers
    out = np.empty(T, np.uint32)
    _kth_largest_bits(bits, ties_k(P, density), out)
    return torch.from_numpy(out.view(np.float32).copy())


def numba_ties_merge(
    task_vectors: torch.Tensor, thresholds: torch.Tensor, base: torch.Tensor | None = None, scale: float = 1.0,
) -> torch.Tensor:
    """The fused merge on the CPU, thresholds given (inputs checked by ``ties_merge``)."""
    T, P = task_vectors.shape
    tv = task_vectors.detach().to(torch.float32).contiguous().numpy()
    thr = thresholds.detach().to(torch.float32).contiguous().numpy()
    b = base.detach().to(torch.float32).contiguous().numpy() if base is not None else thr
    out = np.empty(P, np.float32)
    _ties_blocks(tv, thr, b, np.float32(scale), base is not None, out)
    merged = torch.from_numpy(out)
    return merged if base is None else merged.to(base.dtype)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU).
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _ties_kernel(tv_ptr, thr_ptr, base_ptr, out_ptr, T, P, scale, HAS_BASE: tl.constexpr,
                     BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < P
        s = tl.zeros([BLOCK], tl.float64)
        ptrs = tv_ptr + offs  # int64 offsets: row i is at + i * P
        for i in range(T):  # pass 1: elect
            t = tl.load(thr_ptr + i)
            x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            s += tl.where(tl.abs(x) >= t, x, 0.0).to(tl.float64)
            ptrs += P
        tot = tl.zeros([BLOCK], tl.float64)
        cnt = tl.zeros([BLOCK], tl.int32)
        ptrs = tv_ptr + offs
        for i in range(T):  # pass 2: disjoint mean (re-read from L1/L2 on a GPU)
            t = tl.load(thr_ptr + i)
            x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            ptrs += P
            keep = (tl.abs(x) >= t) & (((x > 0) & (s > 0)) | ((x < 0) & (s < 0)))
            tot += tl.where(keep, x, 0.0).to(tl.float64)
            cnt += keep.to(tl.int32)
        m = tl.where(cnt > 0, tot / tl.maximum(cnt, 1).to(tl.float64), 0.0).to(tl.float32)
        if HAS_BASE:
            m = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32) + scale * m
        tl.store(out_ptr + offs, m, mask=mask)


def triton_ties_merge(
    task_vectors: torch.Tensor, thresholds: torch.Tensor, base: torch.Tensor | None = None, scale: float = 1.0,
    block: int | None = None,
) -> torch.Tensor:
    """The fused merge with Triton, thresholds given (inputs checked by ``ties_merge``). ``block``: columns per
    program (a power of two; default 1024 on a GPU, P/8 but at least 1024 in the interpreter)."""
    if triton is None:
        raise RuntimeError("triton_ties_merge needs the triton package (pip install triton; Linux + CUDA)")
    T, P = task_vectors.shape
    device = task_vectors.device
    direct = device.type == "cuda" and not triton_interpret()
    if block is None:
        block = 1024 if direct else max(1024, triton.next_power_of_2(max(1, P // 8)))
    tv = task_vectors.contiguous()
    thr = thresholds.to(torch.float32).contiguous()
    b = base.contiguous() if base is not None else thr
    out = torch.empty(P, dtype=base.dtype if base is not None and direct else torch.float32, device=device)
    _ties_kernel[(triton.cdiv(P, block),)](tv, thr, b, out, T, P, float(scale), HAS_BASE=base is not None,
                                           BLOCK=block)
    return out if base is None else out.to(base.dtype)


# ------------------------------------------------------------------------------------------------------
# 4. The public op.
# ------------------------------------------------------------------------------------------------------


def ties_merge(
    task_vectors: torch.Tensor,
    density: float = 0.2,
    thresholds: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
    scale: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """TIES-merge T task vectors: task_vectors (T, P) -> m (P,) float32, or base + scale · m (base: (P,)) in
    base's dtype.

    density in (0, 1]: trim keeps the entries with |τ_i| ≥ t_i, the k-th largest magnitude of τ_i,
    k = max(1, round(density · P)) (ties at t_i all kept). thresholds: (T,) precomputed t_i (e.g. by
    ``ties_thresholds``; then density is not used), else computed here with ``torch.kthvalue``.
    backend: "auto" | "torch" | "numba" (CPU) | "triton" (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    """
    if not isinstance(task_vectors, torch.Tensor):
        raise TypeError(f"task_vectors must be a torch.Tensor of shape (T, P), got {type(task_vectors).__name__}")
    if task_vectors.dim() != 2:
        raise ValueError(f"task_vectors must be 2-D (T, P), got shape {tuple(task_vectors.shape)}")
    if not task_vectors.is_floating_point():
        raise TypeError(f"task_vectors must hold floating-point numbers, got {task_vectors.dtype}")
    T, P = task_vectors.shape
    if T == 0:
        raise ValueError(f"task_vectors must hold at least one task vector (T >= 1), got T = {T}")
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite real number, got {scale!r}")
    device = task_vectors.device
    if thresholds is not None:
        if not isinstance(thresholds, torch.Tensor) or tuple(thresholds.shape) != (T,):
            got = tuple(thresholds.shape) if isinstance(thresholds, torch.Tensor) else type(thresholds).__name__
            raise ValueError(f"thresholds must be a tensor of shape (T,) = ({T},), got {got}")
        if thresholds.device != device:
            raise ValueError(f"thresholds must be on task_vectors' device {device}, got {thresholds.device}")
        if not thresholds.is_floating_point() or not torch.isfinite(thresholds).all() or (thresholds < 0).any():
            raise ValueError("thresholds must be finite non-negative floats")
    if base is not None:
        if not isinstance(base, torch.Tensor) or tuple(base.shape) != (P,):
            got = tuple(base.shape) if isinstance(base, torch.Tensor) else type(base).__name__
            raise ValueError(f"base must be a tensor of shape (P,) = ({P},), got {got}")
        if not base.is_floating_point():
            raise TypeError(f"base must hold floating-point numbers, got {base.dtype}")
        if base.device != device:
            raise ValueError(f"base must be on task_vectors' device {device}, got {base.device}")
    backend = resolve_backend(backend, device, op="ties_merge")
    if P == 0:
        return torch.empty(0, dtype=torch.float32 if base is None else base.dtype, device=device)
    if thresholds is None:
        select = numba_ties_thresholds if backend == "numba" else ties_thresholds
        thresholds = select(task_vectors, density)
    if backend == "torch":
        return reference(task_vectors, density, thresholds, base, scale)
    if backend == "numba":
        return numba_ties_merge(task_vectors, thresholds, base, scale)
    return triton_ties_merge(task_vectors, thresholds, base, scale)
