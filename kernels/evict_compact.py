"""Score-based eviction in one pass: keep the k highest-scoring positions of each (b, h) row, compacted.

An eviction policy (H2O, SnapKV, TOVA, ...) scores every cached position; the cache then keeps the k best
of each row, **in their original time order** (so a causal, position-ordered cache stays one):

    idx[b, h]  = the positions of the k largest scores[b, h, :], sorted ascending          (B, H, k) int64
    K_out[b, h] = K[b, h, idx[b, h]],  V_out[b, h] = V[b, h, idx[b, h]]                     (B, H, k, D)

Ties are broken towards the **earlier position** (a stable descending sort), so every backend keeps the
same positions; give protected positions (a recent window, attention sinks) the score +inf. NaN scores are
an error. K and V keep their dtype: the gather copies bits.

Four implementations, top to bottom:

- ``reference``              plain torch, the spec: stable descending sort, first k, sort the positions,
                             gather.
- ``numba_evict_compact``    CPU: one row per thread: the k-th largest score by ``np.partition``, then one
                             scan that keeps (score > it) or (score == it, while ties remain) and copies
                             the kept K/V rows straight into the output.
- ``triton_evict_compact``   GPU: one program per row finds the k-th largest score by a radix select on the
                             float bits (32 counting passes), then compacts the positions with a prefix
                             sum; a second, wide kernel gathers the K/V rows.
- ``evict_compact``          checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton

# ------------------------------------------------------------------------------------------------------
# 1. The reference.
# ------------------------------------------------------------------------------------------------------


def reference(
    scores: torch.Tensor, K: torch.Tensor, V: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores (B, H, T), K/V (B, H, T, D), k -> (K_out (B, H, k, D), V_out (B, H, k, D), idx (B, H, k) int64).

    The k highest scores per row (ties: the earlier position), kept in position order."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # equal scores keep position order
    idx = order[..., :k].sort(dim=-1).values  # back to time order
    gather = idx[..., None].expand(*idx.shape, K.shape[-1])
    return K.gather(2, gather), V.gather(2, gather), idx


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU).
# ------------------------------------------------------------------------------------------------------


def _as_bits(x: torch.Tensor) -> torch.Tensor:
    """The same tensor viewed as integers of its element size (so that a gather copies bits exactly)."""
    return x.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()])


@njit(cache=True)
def _select_row(s, k, K, V, idx, K_out, V_out):  # pragma: no cover - compiled
    """One row: s (T,) float64; K/V (T, D); idx (k,) int64; K_out/V_out (k, D): the k best, in order."""
    T, D = K.shape
    if k == 0:
        return
    kth = np.partition(s, T - k)[T - k]  # the k-th largest score
    above = 0
    for t in range(T):
        if s[t] > kth:
            above += 1
    ties = k - above  # how many positions scoring exactly kth to keep: the first ones
    j = 0
    for t in range(T):
        x = s[t]
        if x > kth or (x == kth and ties > 0):
            if x == kth:
                ties -= 1
            idx[j] = t
            for d in range(D):  # explicit loops: slice assignment builds views, 5x slower per row
                K_out[j, d] = K[t, d]
            for d in range(D):
                V_out[j, d] = V[t, d]
            j += 1


@njit(parallel=True, cache=True)
def _select_rows(s, k, K, V, idx, K_out, V_out):  # pragma: no cover - compiled
    for row in prange(s.shape[0]):
        _select_row(s[row], k, K[row], V[row], idx[row], K_out[row], V_out[row])


def numba_evict_compact(
    scores: torch.Tensor, K: torch.Tensor, V: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eviction on the CPU with Numba (inputs checked by ``evict_compact``)."""
    B, H, T, D = K.shape
    rows = B * H
    K_out = torch.empty((B, H, k, D), dtype=K.dtype)
    V_out = torch.empty((B, H, k, D), dtype=V.dtype)
    idx = torch.empty((B, H, k), dtype=torch.int64)
    _select_rows(
        scores.detach().to(torch.float64).contiguous().numpy().reshape(rows, T), k,
        _as_bits(K.detach().contiguous()).numpy().reshape(rows, T, D),
        _as_bits(V.detach().contiguous()).numpy().reshape(rows, T, D),
        idx.numpy().reshape(rows, k),
        _as_bits(K_out).numpy().reshape(rows, k, D), _as_bits(V_out).numpy().reshape(rows, k, D),
    )
    return K_out, V_out, idx


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU).
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _sortable_key(s):
        """float32 -> uint32 whose unsigned order is the float order (-0.0 folded into +0.0)."""
        s = s + 0.0  # -0.0 + 0.0 = +0.0: the two zeros must tie, as they do for the reference
        u = s.to(tl.uint32, bitcast=True)
        flip = tl.where((u >> 31) == 1, 0xFFFFFFFF, 0x80000000).to(tl.uint32)
        return u ^ flip

    @triton.jit
    def _select_kernel(s_ptr, idx_ptr, T, k, BLOCK_T: tl.constexpr):
        """One program per row: radix-select the k-th largest key, then write the kept positions in order."""
        row = tl.program_id(0).to(tl.int64)
        base = row * T
        # MSB first: the largest key v with #{key >= v} >= k, one counting pass per bit
        prefix = tl.zeros([1], dtype=tl.uint32)
        for bit in range(31, -1, -1):
            cand = prefix | (tl.full([1], 1, tl.uint32) << bit)
            count = tl.zeros([1], dtype=tl.int32)
            for t0 in range(0, T, BLOCK_T):
                offs = t0 + tl.arange(0, BLOCK_T)
                mask = offs < T
                key = _sortable_key(tl.load(s_ptr + base + offs, mask=mask, other=0.0).to(tl.float32))
                count += tl.sum(((key >= cand) & mask).to(tl.int32), axis=0)
            prefix = tl.where(count >= k, cand, prefix)
        # keep key > kth, and the first (k - #above) positions with key == kth
        above = tl.zeros([1], dtype=tl.int32)
        for t0 in range(0, T, BLOCK_T):
            offs = t0 + tl.arange(0, BLOCK_T)
            mask = offs < T
            key = _sortable_key(tl.load(s_ptr + base + offs, mask=mask, other=0.0).to(tl.float32))
            above += tl.sum(((key > prefix) & mask).to(tl.int32), axis=0)
        ties_left = k - above
        kept = tl.zeros([1], dtype=tl.int32)
        for t0 in range(0, T, BLOCK_T):
            offs = t0 + tl.arange(0, BLOCK_T)
            mask = offs < T
            key = _sortable_key(tl.load(s_ptr + base + offs, mask=mask, other=0.0).to(tl.float32))
            tie = ((key == prefix) & mask).to(tl.int32)
            tie_rank = tl.cumsum(tie, axis=0) - tie  # ties before this one, within the tile
            keep = ((key > prefix) & mask) | ((tie == 1) & (tie_rank < ties_left))
            keep_i = keep.to(tl.int32)
            pos = kept + tl.cumsum(keep_i, axis=0) - keep_i
            tl.store(idx_ptr + row * k + pos, offs.to(tl.int64), mask=keep)
            kept += tl.sum(keep_i, axis=0)
            ties_left -= tl.sum((keep & (tie == 1)).to(tl.int32), axis=0)

    @triton.jit
    def _gather_kernel(idx_ptr, k_ptr, v_ptr, ko_ptr, vo_ptr, T, D, k,
                       BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        """Program (row, block of kept slots): copy rows idx[j] of K and V (as raw bits) to slots j."""
        row = tl.program_id(0).to(tl.int64)
        offs_j = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_j = offs_j < k
        src = tl.load(idx_ptr + row * k + offs_j, mask=mask_j, other=0)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = mask_j[:, None] & (offs_d < D)[None, :]
            src_offs = (row * T + src)[:, None] * D + offs_d[None, :]
            dst_offs = (row * k + offs_j)[:, None] * D + offs_d[None, :]
            tl.store(ko_ptr + dst_offs, tl.load(k_ptr + src_offs, mask=mask), mask=mask)
            tl.store(vo_ptr + dst_offs, tl.load(v_ptr + src_offs, mask=mask), mask=mask)


def triton_evict_compact(
    scores: torch.Tensor, K: torch.Tensor, V: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eviction with Triton (inputs checked by ``evict_compact``).

    Scores are compared in float32: exact for 16- and 32-bit scores; float64 scores that round to the same
    float32 count as ties (and may then keep a different one of them than the reference)."""
    if triton is None:
        raise RuntimeError("triton_evict_compact needs the triton package (pip install triton; Linux + CUDA)")
    B, H, T, D = K.shape
    rows, device = B * H, K.device
    K_out = torch.empty((B, H, k, D), dtype=K.dtype, device=device)
    V_out = torch.empty((B, H, k, D), dtype=V.dtype, device=device)
    idx = torch.empty((B, H, k), dtype=torch.int64, device=device)
    if k == 0 or rows == 0:
        return K_out, V_out, idx
    s = scores.contiguous() if scores.dtype in (torch.float32, torch.float16) else scores.float().contiguous()
    block_t = min(triton.next_power_of_2(T), 4096 if device.type == "cuda" else 1 << 16)
    _select_kernel[(rows,)](s, idx, T, k, BLOCK_T=block_t)
    block_d = min(triton.next_power_of_2(D), 128)
    block_k = min(triton.next_power_of_2(k), 64 if device.type == "cuda" else 4096)
    _gather_kernel[(rows, triton.cdiv(k, block_k))](
        idx, _as_bits(K.contiguous()), _as_bits(V.contiguous()), _as_bits(K_out), _as_bits(V_out), T, D, k,
        BLOCK_K=block_k, BLOCK_D=block_d,
    )
    return K_out, V_out, idx


# ------------------------------------------------------------------------------------------------------
# 4. The public op.
# ------------------------------------------------------------------------------------------------------


def evict_compact(
    scores: torch.Tensor, K: torch.Tensor, V: torch.Tensor, k: int, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the k highest-scoring positions of each (b, h) row, in time order.

    scores (B, H, T) real; K, V (B, H, T, D); k in 0..T. Returns (K_out (B, H, k, D), V_out (B, H, k, D),
    idx (B, H, k) int64 ascending); ties go to the earlier position. backend: "auto" | "torch" | "numba" |
    "triton". Checking for NaN reads the scores once (one synchronisation on a GPU).
    """
    _check_inputs(scores, K, V, k)
    backend = resolve_backend(backend, K.device, op="evict_compact")
    if backend == "torch":
        return reference(scores, K, V, k)
    if backend == "numba":
        return numba_evict_compact(scores, K, V, k)
    return triton_evict_compact(scores, K, V, k)


def _check_inputs(scores, K, V, k) -> None:
    for name, x in (("scores", scores), ("K", K), ("V", V)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must hold floating-point numbers, got {scores.dtype}")
    if K.dim() != 4:
        raise ValueError(f"K must be 4-D (B, H, T, D), got shape {tuple(K.shape)}")
    if V.shape != K.shape:
        raise ValueError(f"V must have K's shape {tuple(K.shape)} (B, H, T, D), got {tuple(V.shape)}")
    if V.dtype != K.dtype:
        raise TypeError(f"V must have K's dtype {K.dtype}, got {V.dtype}")
    B, H, T, _ = K.shape
    if tuple(scores.shape) != (B, H, T):
        raise ValueError(f"scores must have shape (B, H, T) = {(B, H, T)} to match K, got {tuple(scores.shape)}")
    if not (scores.device == K.device == V.device):
        raise ValueError(f"scores, K and V must be on one device, got scores on {scores.device}, K on {K.device}, "
                         f"V on {V.device}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if not 0 <= k <= T:
        raise ValueError(f"k must be in 0..T = 0..{T}, got {k}")
    if scores.numel() and bool(torch.isnan(scores).any()):
        raise ValueError("scores must not hold NaN")
