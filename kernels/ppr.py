r"""Batched Personalized PageRank (PPR) by power iteration: one fused pass per iteration does the sparse mat-vec,
the teleport, the dangling-mass bookkeeping and the L1 residual for a batch of B queries at once.

The graph. A directed graph on N nodes is given as the CSR of its weighted adjacency matrix: ``indptr`` (N+1,),
``indices`` (E,) and ``weights`` (E,) (None: all ones), row u listing the out-edges u → v with weights w_uv ≥ 0
(duplicate edges add up; self loops are allowed; an undirected graph lists each edge in both directions). The
transition matrix P is column-stochastic: each node splits its mass over its out-edges in proportion to the weights,

    P[v, u] = w_uv / W_u,          W_u = Σ_v w_uv   (the weighted out-degree of u).

A node with W_u = 0 (no out-edges, or only zero-weight ones) is *dangling*: its whole column of P is zero, and its
mass is sent back to the query's personalization vector (networkx's default, ``dangling=None``).

The iteration. With s (N,) the personalization vector of one query (normalised to Σ s = 1) and α ∈ (0, 1) the
teleport (restart) probability,

    r_0 = s,     r_{t+1} = (1 − α) · (P r_t + m_t · s) + α · s,     m_t = Σ_{u dangling} r_t[u],

so r stays a probability vector and converges to the stationary distribution of "follow an out-edge with probability
1 − α, restart at s with probability α". In networkx's convention ``networkx.pagerank(G, alpha=d)`` the damping d is
the probability of *following an edge*: d = 1 − α (networkx's default d = 0.85 is α = 0.15 here; igraph's and
HippoRAG's ``damping`` is the same d). Each query stops on its own when ‖r_{t+1} − r_t‖₁ < ``tol`` (networkx
stops when the residual is below N·tol, so a networkx ``tol`` equals ours divided by N), or after ``max_iter``
iterations; the error to the fixed point is then at most tol·(1 − α)/α.

The batch. The B queries share the graph, so the state is kept node-major, R (N, B): the fused pass visits each
node v once, reads its in-edges (the CSR of Pᵀ, i.e. P's CSC, built once by ``ppr_transition``), and updates all
B queries in the inner loop, so every edge is read once per iteration for the whole batch:

    R_new[v, :] = (1 − α) · Σ_{u → v} P[v, u] · R[u, :] + c ⊙ S[v, :],      c = (1 − α) · m + α   (B,)

and, in the same pass, accumulates ‖R_new[:, b] − R[:, b]‖₁ and the next dangling mass m_b = Σ_{v dangling}
R_new[v, b] per query. Converged queries are dropped from the batch (their columns frozen).

- ``ppr_transition``   adjacency CSR -> the in-edge CSR of P (normalised weights) and the dangling mask (torch).
- ``reference``        plain torch: a ``torch.sparse_csr_tensor`` mat-mat product per iteration (the spec).
- ``numba_ppr``        CPU: prange over chunks of nodes; per node its in-edges, the B queries innermost; per-chunk
                       partial sums (residual, dangling mass) added in chunk order (deterministic).
- ``triton_ppr``       GPU: one program per (node block × query block); per-program partial sums added by torch.
- ``ppr``              checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret

__all__ = ["Transition", "numba_ppr", "ppr", "ppr_transition", "reference", "triton_ppr"]


class Transition(NamedTuple):
    """P in CSR-of-the-transpose form: row v lists v's in-edges u → v with P[v, u] = w_uv / W_u.

    in_ptr (N+1,) int64, in_src (E,) int64 (the u's), in_p (E,) float64 (the P[v, u]), dangling (N,) bool."""

    in_ptr: torch.Tensor
    in_src: torch.Tensor
    in_p: torch.Tensor
    dangling: torch.Tensor

    @property
    def n_nodes(self) -> int:
        return self.in_ptr.numel() - 1


# ------------------------------------------------------------------------------------------------------
# 0. The graph: adjacency CSR -> normalised in-edge CSR (shared by every backend).
# ------------------------------------------------------------------------------------------------------


def ppr_transition(indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor | None = None,
                   n_nodes: int | None = None) -> Transition:
    """The column-stochastic transition of an adjacency CSR (indptr (N+1,), indices (E,), weights (E,) or None),
    transposed so that row v lists v's in-edges. Checks the graph (clear errors). O(E log E), done once per graph."""
    indptr, indices, weights, N = _check_graph(indptr, indices, weights, n_nodes)
    device = indptr.device
    E = indices.numel()
    src = torch.repeat_interleave(torch.arange(N, device=device), indptr[1:] - indptr[:-1], output_size=E)
    w = weights.double()
    out_w = torch.zeros(N, dtype=torch.float64, device=device).index_add_(0, src, w)
    dangling = out_w == 0
    p = w / torch.where(dangling, 1.0, out_w)[src]
    order = torch.sort(indices, stable=True).indices  # by destination, sources ascending within a row
    in_ptr = torch.zeros(N + 1, dtype=torch.int64, device=device)
    in_ptr[1:] = torch.cumsum(torch.bincount(indices, minlength=N), 0)
    return Transition(in_ptr, src[order].contiguous(), p[order].contiguous(), dangling)


def _check_graph(indptr, indices, weights, n_nodes):
    for name, x in (("indptr", indptr), ("indices", indices)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype in (torch.bool,) or x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must hold integers, got {x.dtype}")
        if x.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if indptr.numel() < 1:
        raise ValueError("indptr must have N+1 >= 1 entries, got 0")
    N = indptr.numel() - 1
    if n_nodes is not None and n_nodes != N:
        raise ValueError(f"indptr must have N+1 = {n_nodes + 1} entries (N from the personalization), "
                         f"got {indptr.numel()}")
    indptr, indices = indptr.long(), indices.long()
    E = indices.numel()
    if int(indptr[0]) != 0 or int(indptr[-1]) != E:
        raise ValueError(f"indptr must start at 0 and end at len(indices) = {E}, got {int(indptr[0])} .. "
                         f"{int(indptr[-1])}")
    if N > 0 and bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("indptr must be non-decreasing")
    if E and (int(indices.min()) < 0 or int(indices.max()) >= N):
        raise ValueError(f"indices must lie in 0..N-1 = 0..{N - 1}, got values from {int(indices.min())} to "
                         f"{int(indices.max())}")
    if weights is None:
        weights = torch.ones(E, dtype=torch.float64, device=indptr.device)
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        raise TypeError(f"weights must be a floating-point torch.Tensor or None, got "
                        f"{getattr(weights, 'dtype', type(weights).__name__)}")
    if tuple(weights.shape) != (E,):
        raise ValueError(f"weights must have shape (E,) = ({E},), got {tuple(weights.shape)}")
    if E and not bool(torch.isfinite(weights).all()):
        raise ValueError("weights must be finite, got inf or nan")
    if E and float(weights.min()) < 0:
        raise ValueError(f"weights must be >= 0 (transition probabilities), got a minimum of {float(weights.min())}")
    devices = {indptr.device, indices.device, weights.device}
    if len(devices) > 1:
        raise ValueError(f"indptr, indices, weights must be on one device, got {sorted(map(str, devices))}")
    return indptr, indices, weights, N


# ------------------------------------------------------------------------------------------------------
# 1. The reference.
# ------------------------------------------------------------------------------------------------------


def reference(graph: Transition, personalization: torch.Tensor, alpha: float = 0.15, tol: float = 1e-6,
              max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """graph: a ``Transition`` on N nodes; personalization: (B, N) non-negative rows (normalised here) ->
    (scores (B, N) in the personalization's float dtype (fp32 or fp64), iterations used (B,) int64).
    Power iteration with a torch sparse CSR matrix; a query stops (its row frozen) once its L1 residual < tol."""
    s = personalization / personalization.sum(1, keepdim=True)  # (B, N)
    N, B = s.shape[1], s.shape[0]
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        P = torch.sparse_csr_tensor(graph.in_ptr, graph.in_src, graph.in_p.to(s.dtype), size=(N, N),
                                    check_invariants=False)
    S = s.T.contiguous()  # (N, B)
    R = S.clone()
    iters = torch.zeros(B, dtype=torch.int64, device=s.device)
    active = torch.ones(B, dtype=torch.bool, device=s.device)
    for t in range(1, max_iter + 1):
        m = R[graph.dangling].sum(0)  # (B,) mass on dangling nodes, sent back to s
        R_new = (1 - alpha) * (P @ R + m * S) + alpha * S
        residual = (R_new - R).abs().sum(0)  # (B,) L1
        R = torch.where(active, R_new, R)
        iters[active] = t
        active = active & (residual >= tol)
        if not bool(active.any()):
            break
    return R.T.contiguous(), iters


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU).
# ------------------------------------------------------------------------------------------------------

_CHUNK = 256  # nodes per parallel task


@njit(parallel=True, cache=True)
def _ppr_pass(in_ptr, in_src, in_p, dangling, S, R, R_new, c, one_minus_alpha, part_res, part_dm):  # pragma: no cover
    """One fused iteration. S, R, R_new: (N, B) (fp32 or fp64, C order); c: (B,) = (1-α)m + α; in_p like R;
    dangling (N,) uint8; part_res, part_dm: (n_chunks, B) float64, written (not accumulated into)."""
    N, B = R.shape
    for ch in prange(part_res.shape[0]):
        lo = ch * _CHUNK
        hi = min(lo + _CHUNK, N)
        acc = np.empty(B, R.dtype)
        res = np.zeros(B, np.float64)
        dm = np.zeros(B, np.float64)
        for v in range(lo, hi):
            acc[:] = 0
            for e in range(in_ptr[v], in_ptr[v + 1]):
                u = in_src[e]
                p = in_p[e]
                for b in range(B):  # all queries of the batch: one contiguous row of R per in-edge
                    acc[b] += p * R[u, b]
            d = dangling[v]
            for b in range(B):
                x = one_minus_alpha * acc[b] + c[b] * S[v, b]  # all in R's dtype
                R_new[v, b] = x
                res[b] += abs(np.float64(x) - np.float64(R[v, b]))
                if d:
                    dm[b] += x
        for b in range(B):
            part_res[ch, b] = res[b]
            part_dm[ch, b] = dm[b]


def numba_ppr(graph: Transition, personalization: torch.Tensor, alpha: float = 0.15, tol: float = 1e-6,
              max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused power iteration on the CPU (inputs checked by ``ppr``); same contract as ``reference``.
    A query that converges is written out and dropped from the batch (S and R compacted)."""
    dtype = personalization.dtype
    npdt = np.float64 if dtype == torch.float64 else np.float32
    s = personalization.double()
    s = (s / s.sum(1, keepdim=True)).T.numpy().astype(npdt)  # (N, B)
    N, B = s.shape
    in_ptr, in_src = graph.in_ptr.numpy(), graph.in_src.numpy()
    in_p = graph.in_p.numpy().astype(npdt)
    dangling = graph.dangling.numpy()
    dangling_u8 = dangling.astype(np.uint8)
    out = np.empty((N, B), npdt)
    iters = np.zeros(B, np.int64)
    ids = np.arange(B)  # the queries still running = the first ids.size columns of S and R
    S = np.ascontiguousarray(s)
    R = S.copy()
    R_new = np.empty_like(R)
    n_chunks = (N + _CHUNK - 1) // _CHUNK
    part_res = np.empty((n_chunks, R.shape[1]), np.float64)
    part_dm = np.empty_like(part_res)
    m = R[dangling].sum(0, dtype=np.float64)
    for t in range(1, max_iter + 1):
        c = ((1 - alpha) * m + alpha).astype(npdt)
        _ppr_pass(in_ptr, in_src, in_p, dangling_u8, S, R, R_new, c, npdt(1 - alpha), part_res, part_dm)
        residual, m = part_res.sum(0)[: ids.size], part_dm.sum(0)
        R, R_new = R_new, R
        iters[ids] = t
        done = residual < tol
        if t == max_iter:
            done[:] = True
        if done.any():  # write the finished columns out and drop them from the batch
            out[:, ids[done]] = R[:, : ids.size][:, done]
            keep = np.flatnonzero(~done)
            ids = ids[keep]
            if ids.size == 0:
                break
            S, R, m = np.ascontiguousarray(S[:, keep]), np.ascontiguousarray(R[:, keep]), m[keep]
            R_new = np.empty_like(R)
            part_res = np.empty((n_chunks, R.shape[1]), np.float64)
            part_dm = np.empty_like(part_res)
    return torch.from_numpy(np.ascontiguousarray(out.T)).to(dtype), torch.from_numpy(iters)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU).
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _ppr_kernel(in_ptr, in_src, in_p, dang_ptr, s_ptr, r_ptr, rn_ptr, c_ptr, res_ptr, dm_ptr, N, B,
                    one_minus_alpha, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_b = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < N
        cmask = cols < B
        start = tl.load(in_ptr + rows, mask=rmask, other=0)
        deg = tl.load(in_ptr + rows + 1, mask=rmask, other=0) - start
        max_deg = tl.max(deg, 0)
        acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=r_ptr.dtype.element_ty)
        for k in range(0, max_deg):  # the block's rows walk their in-edges together (masked past each degree)
            emask = k < deg
            src = tl.load(in_src + start + k, mask=emask, other=0)
            p = tl.load(in_p + start + k, mask=emask, other=0.0)
            x = tl.load(r_ptr + src[:, None] * B + cols[None, :], mask=emask[:, None] & cmask[None, :], other=0.0)
            acc += p[:, None] * x
        m2 = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * B + cols[None, :]
        sv = tl.load(s_ptr + offs, mask=m2, other=0.0)
        c = tl.load(c_ptr + cols, mask=cmask, other=0.0)
        xn = one_minus_alpha * acc + c[None, :] * sv
        tl.store(rn_ptr + offs, xn, mask=m2)
        xo = tl.load(r_ptr + offs, mask=m2, other=0.0)
        d = tl.load(dang_ptr + rows, mask=rmask, other=0).to(xn.dtype)
        tl.store(res_ptr + pid_n * B + cols, tl.sum(tl.abs(xn - xo), 0), mask=cmask)
        tl.store(dm_ptr + pid_n * B + cols, tl.sum(xn * d[:, None], 0), mask=cmask)


def triton_ppr(graph: Transition, personalization: torch.Tensor, alpha: float = 0.15, tol: float = 1e-6,
               max_iter: int = 100, block_n: int | None = None, block_b: int | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused power iteration with Triton (inputs checked by ``ppr``); same contract as ``reference``.
    ``block_n``/``block_b`` (powers of two) override the node and query tile (default 32 × min(32, B) on a GPU;
    larger tiles, few programs, in the interpreter)."""
    if triton is None:
        raise RuntimeError("triton_ppr needs the triton package (pip install triton; Linux + CUDA)")
    dtype = torch.float64 if personalization.dtype == torch.float64 else torch.float32
    s = personalization.to(dtype)
    S = (s / s.sum(1, keepdim=True)).T.contiguous()  # (N, B)
    N, B = S.shape
    device = S.device
    if block_n is None:
        block_n = 32 if device.type == "cuda" and not triton_interpret() else max(16, triton.next_power_of_2(N))
    if block_b is None:
        block_b = min(32, triton.next_power_of_2(max(B, 1))) if device.type == "cuda" and not triton_interpret() \
            else triton.next_power_of_2(max(B, 1))
    in_p = graph.in_p.to(device=device, dtype=dtype)
    in_ptr, in_src = graph.in_ptr.to(device), graph.in_src.to(device)
    dang = graph.dangling.to(device=device, dtype=torch.int8)
    R = S.clone()
    R_new = torch.empty_like(R)
    out = torch.empty_like(R)
    iters = torch.zeros(B, dtype=torch.int64, device=device)
    ids = torch.arange(B, device=device)
    n_blocks = triton.cdiv(N, block_n)
    m = R[graph.dangling.to(device)].sum(0)
    for t in range(1, max_iter + 1):
        Bt = ids.numel()
        c = (1 - alpha) * m + alpha
        part_res = torch.empty(n_blocks, Bt, dtype=dtype, device=device)
        part_dm = torch.empty_like(part_res)
        grid = (n_blocks, triton.cdiv(Bt, block_b))
        _ppr_kernel[grid](in_ptr, in_src, in_p, dang, S, R, R_new, c, part_res, part_dm, N, Bt, float(1 - alpha),
                          BLOCK_N=block_n, BLOCK_B=block_b)
        residual, m = part_res.double().sum(0), part_dm.sum(0)
        R, R_new = R_new, R
        iters[ids] = t
        done = (residual < tol) | (t == max_iter)
        if bool(done.any()):
            out[:, ids[done]] = R[:, done]
            keep = ~done
            ids, m = ids[keep], m[keep]
            if ids.numel() == 0:
                break
            S, R = S[:, keep].contiguous(), R[:, keep].contiguous()
            R_new = torch.empty_like(R)
    return out.T.contiguous().to(personalization.dtype if personalization.dtype in (torch.float32, torch.float64)
                                 else torch.float32), iters


# ------------------------------------------------------------------------------------------------------
# 4. The public op.
# ------------------------------------------------------------------------------------------------------


def ppr(
    graph: Transition | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    personalization: torch.Tensor,
    alpha: float = 0.15,
    tol: float = 1e-6,
    max_iter: int = 100,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Personalized PageRank of B queries on one graph.

    graph: the adjacency CSR ``(indptr (N+1,), indices (E,), weights (E,) or None)`` (row u = u's out-edges,
    weights ≥ 0, normalised per source node), or a ``Transition`` from ``ppr_transition`` (build it once when the
    same graph serves many calls). personalization: (B, N) or (N,) non-negative restart weights, each row with a
    positive sum (normalised here). alpha: the restart probability in (0, 1) (networkx's ``alpha`` = 1 − alpha).
    Iterates until each query's L1 residual < tol, or max_iter (in float32 the residual floors near 1e-6: ask for
    a smaller tol in float64, or the iteration runs to max_iter). Returns (scores like personalization: (B, N) or
    (N,), float32 unless float64 given, each row summing to 1; iterations used: (B,) int64, or a 0-d tensor).
    backend: "auto" | "torch" | "numba" (CPU) | "triton" (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1) (the restart probability; networkx's alpha is 1 - alpha), "
                         f"got {alpha!r}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not isinstance(personalization, torch.Tensor):
        raise TypeError(f"personalization must be a torch.Tensor, got {type(personalization).__name__}")
    if not personalization.is_floating_point():
        raise TypeError(f"personalization must hold floating-point numbers, got {personalization.dtype}")
    if personalization.dim() not in (1, 2):
        raise ValueError(f"personalization must have shape (B, N) or (N,), got {tuple(personalization.shape)}")
    single = personalization.dim() == 1
    s = personalization[None] if single else personalization
    B, N = s.shape
    if not isinstance(graph, Transition):
        if not isinstance(graph, tuple | list) or len(graph) != 3:
            raise TypeError("graph must be a Transition or a tuple (indptr, indices, weights), got "
                            f"{type(graph).__name__}")
        graph = ppr_transition(*graph, n_nodes=N)
    elif graph.n_nodes != N:
        raise ValueError(f"personalization must have N = graph.n_nodes = {graph.n_nodes} columns, got {N}")
    if s.device != graph.in_ptr.device:
        raise ValueError(f"personalization must be on the graph's device {graph.in_ptr.device}, got {s.device}")
    dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
    s = s.to(dtype)
    if B and N:
        if not bool(torch.isfinite(s).all()):
            raise ValueError("personalization must be finite, got inf or nan")
        if float(s.min()) < 0:
            raise ValueError(f"personalization must be >= 0, got a minimum of {float(s.min())}")
    sums = s.sum(1)
    if B and bool((sums <= 0).any()):
        bad = torch.nonzero(sums <= 0).flatten()[:5].tolist()
        raise ValueError(f"every personalization row must have a positive sum, got rows {bad} summing to 0")
    backend = resolve_backend(backend, s.device, op="ppr")
    if B == 0:
        scores, iters = s.clone(), torch.zeros(0, dtype=torch.int64, device=s.device)
    elif backend == "torch":
        scores, iters = reference(graph, s, float(alpha), float(tol), int(max_iter))
    elif backend == "numba":
        scores, iters = numba_ppr(graph, s, float(alpha), float(tol), int(max_iter))
    else:
        scores, iters = triton_ppr(graph, s, float(alpha), float(tol), int(max_iter))
    return (scores[0], iters[0]) if single else (scores, iters)
