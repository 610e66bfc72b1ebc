r"""Similarity top-k (with an optional threshold) for linking notes, without materialising the N × N matrix.

Given embeddings X (N, d) and queries Q (M, d) (Q = X when omitted), the similarity of query i to row j is the dot
product S_ij = ⟨q_i, x_j⟩ (the cosine when the rows are unit-normalised, as sentence embedders return them). For
each query we keep its k most similar rows

    nbrs(i) = the k indices j ≠ i (j = i excluded only when Q = X, i.e. "other notes") with the largest S_ij,
              ordered by score descending, equal scores by index ascending (deterministic),

and, with a ``threshold`` τ, only those with S_ij ≥ τ (the others padded with index −1 and score −inf): the
"link to at most k neighbours above τ" rule of A-MEM-style linking and of HippoRAG's synonymy edges.

Memory: the queries are processed in blocks of ``block`` rows, so only a (block, N) slab of S exists at a time,
O(block · N) instead of O(M · N); the cost is the M · N · d GEMM plus one selection pass per slab.

- ``reference``       plain torch: the full (M, N) matrix and a stable sort per row (the spec; small N).
- ``torch_sim_topk``  blocked: a GEMM per slab, then ``torch.topk`` and an exact tie fix-up (any device; on CUDA
                      this is what ``backend="auto"``/``"triton"`` run: the GEMM is cuBLAS's job and there is no
                      separate Triton kernel for it).
- ``numba_sim_topk``  CPU: the GEMM per slab by torch (BLAS), then one fused Numba pass per row (prange over rows)
                      that skips self, applies the threshold and keeps a sorted top-k by insertion.
- ``sim_topk``        checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend

__all__ = ["numba_sim_topk", "reference", "sim_topk", "torch_sim_topk"]

_SLAB = 1 << 24  # elements of S per block (64 MiB of float32) when block is not given


def _pad(idx: torch.Tensor, val: torch.Tensor, threshold: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    if threshold is not None:
        below = val < threshold
        idx = idx.masked_fill(below, -1)
        val = val.masked_fill(below, -math.inf)
    return idx, val


# ------------------------------------------------------------------------------------------------------
# 1. The reference.
# ------------------------------------------------------------------------------------------------------


def reference(X: torch.Tensor, k: int, Q: torch.Tensor | None = None, threshold: float | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """X (N, d), Q (M, d) or None (then Q = X and self is excluded) -> (indices (M, k) int64, scores (M, k)
    float32); the full (M, N) similarity matrix and a stable descending sort (ties: smaller index first)."""
    self_ = Q is None
    Q = X if Q is None else Q
    S = Q.float() @ X.float().T
    if self_:
        S.fill_diagonal_(-math.inf)
    val, idx = torch.sort(S, dim=1, descending=True, stable=True)
    return _pad(idx[:, :k].contiguous(), val[:, :k].contiguous(), threshold)


# ------------------------------------------------------------------------------------------------------
# 2. Blocked torch (any device).
# ------------------------------------------------------------------------------------------------------


def _select(S: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of each row of S (b, N), ties by index ascending: topk finds the k-th value, then every entry
    above it plus the first (by index) entries equal to it are taken, and the k picks are stably sorted by score."""
    b = S.shape[0]
    kth = torch.topk(S, k, dim=1, sorted=True).values[:, -1:]
    gt = S > kth
    eq = S == kth
    need = k - gt.sum(1, keepdim=True)
    sel = gt | (eq & (torch.cumsum(eq, 1) <= need))
    cols = sel.nonzero()[:, 1].view(b, k)  # row-major: ascending indices per row
    sc = S.gather(1, cols)
    order = torch.sort(sc, dim=1, descending=True, stable=True).indices
    return cols.gather(1, order), sc.gather(1, order)


def torch_sim_topk(X: torch.Tensor, k: int, Q: torch.Tensor | None = None, threshold: float | None = None,
                   block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference``, one (block, N) slab of S at a time (inputs checked by ``sim_topk``)."""
    self_ = Q is None
    Xf = X.float()
    Qf = Xf if Q is None else Q.float()
    M, N = Qf.shape[0], Xf.shape[0]
    block = block or max(1, min(M, _SLAB // max(N, 1)))
    idx = torch.empty(M, k, dtype=torch.int64, device=X.device)
    val = torch.empty(M, k, dtype=torch.float32, device=X.device)
    for lo in range(0, M, block):
        hi = min(lo + block, M)
        S = Qf[lo:hi] @ Xf.T
        if self_:
            r = torch.arange(hi - lo, device=X.device)
            S[r, r + lo] = -math.inf
        idx[lo:hi], val[lo:hi] = _select(S, k)
    return _pad(idx, val, threshold)


# ------------------------------------------------------------------------------------------------------
# 3. Numba (CPU): BLAS GEMM per slab + a fused selection pass.
# ------------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _select_rows(S, row0, exclude_self, thr, idx, val):  # pragma: no cover - compiled
    """S (b, N) float32; writes idx (b, k) int64 and val (b, k) float32: the k largest S[i, j] ≥ thr, j ≠ row0 + i
    when exclude_self, sorted by score descending then index ascending; -1 / -inf padding."""
    b, N = S.shape
    k = idx.shape[1]
    for i in prange(b):
        vi = val[i]
        ii = idx[i]
        vi[:] = -np.inf
        ii[:] = -1
        n = 0
        me = row0 + i if exclude_self else -1
        for j in range(N):
            s = S[i, j]
            if j == me or s < thr:
                continue
            if n == k and not s > vi[k - 1]:  # equal to the worst kept: the earlier index stays
                continue
            pos = n if n < k else k - 1
            while pos > 0 and vi[pos - 1] < s:  # strictly: ties keep index order
                if pos < k:
                    vi[pos] = vi[pos - 1]
                    ii[pos] = ii[pos - 1]
                pos -= 1
            vi[pos] = s
            ii[pos] = j
            if n < k:
                n += 1


def numba_sim_topk(X: torch.Tensor, k: int, Q: torch.Tensor | None = None, threshold: float | None = None,
                   block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference`` on the CPU (inputs checked by ``sim_topk``)."""
    self_ = Q is None
    Xf = X.float().contiguous()
    Qf = Xf if Q is None else Q.float().contiguous()
    M, N = Qf.shape[0], Xf.shape[0]
    block = block or max(1, min(M, _SLAB // max(N, 1)))
    idx = np.empty((M, k), np.int64)
    val = np.empty((M, k), np.float32)
    thr = np.float32(-np.inf if threshold is None else threshold)
    for lo in range(0, M, block):
        hi = min(lo + block, M)
        S = (Qf[lo:hi] @ Xf.T).numpy()
        _select_rows(S, lo, self_, thr, idx[lo:hi], val[lo:hi])
    return torch.from_numpy(idx), torch.from_numpy(val)


# ------------------------------------------------------------------------------------------------------
# 4. The public op.
# ------------------------------------------------------------------------------------------------------


def sim_topk(
    X: torch.Tensor,
    k: int,
    Q: torch.Tensor | None = None,
    threshold: float | None = None,
    block: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every query its k most similar rows of X by dot product (cosine for unit rows).

    X: (N, d) embeddings; Q: (M, d) queries, or None for Q = X with each row's own index excluded ("other notes").
    k: neighbours per query, 1..N (1..N−1 when Q is None). threshold: keep only scores ≥ threshold (missing ones
    padded with index −1, score −inf). block: query rows per slab (default: a 64 MiB slab of S).
    Returns (indices (M, k) int64, scores (M, k) float32), by score descending, equal scores by index ascending.
    backend: "auto" | "torch" (blocked, any device) | "numba" (CPU) | "triton" (runs the blocked torch path on the
    GPU: the GEMM is cuBLAS's; there is no separate Triton kernel).
    """
    for name, x in (("X", X), ("Q", Q)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floating-point numbers, got {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape ({'N' if name == 'X' else 'M'}, d), got {tuple(x.shape)}")
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must be finite, got inf or nan")
    N, d = X.shape
    if Q is not None:
        if Q.shape[1] != d:
            raise ValueError(f"Q must have X's width d = {d}, got shape {tuple(Q.shape)}")
        if Q.device != X.device:
            raise ValueError(f"Q must be on X's device {X.device}, got {Q.device}")
    k_max = N - 1 if Q is None else N
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= k_max:
        raise ValueError(f"k must be an integer in 1..{k_max} ({'N-1' if Q is None else 'N'}), got {k!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                  or math.isnan(threshold)):
        raise ValueError(f"threshold must be a real number or None, got {threshold!r}")
    if block is not None and (isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 1):
        raise ValueError(f"block must be an integer >= 1 or None, got {block!r}")
    backend = resolve_backend(backend, X.device, op="sim_topk")
    M = N if Q is None else Q.shape[0]
    if M == 0:
        return torch.empty(0, k, dtype=torch.int64, device=X.device), torch.empty(0, k, device=X.device)
    thr = None if threshold is None else float(threshold)
    if backend == "numba":
        return numba_sim_topk(X, int(k), Q, thr, block)
    return torch_sim_topk(X, int(k), Q, thr, block)
