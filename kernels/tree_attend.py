"""Tree-masked verification attention: N tree tokens attend to a shared prefix cache and to their ancestors.

Speculative decoding with a *tree* of drafts (SpecInfer, Medusa, EAGLE) verifies every node of the tree in
one forward pass of the target. Node i may see the whole cached prefix and, among the new tokens, only
itself and its ancestors:

    out[b, h, i] = softmax(scale * [K_prefix[b, h, :P_b] ; K_tree[b, h, A(i)]] @ q[b, h, i])
                   @ [V_prefix[b, h, :P_b] ; V_tree[b, h, A(i)]]

with A(i) = {i} ∪ ancestors(i) read from ``parents`` (parents[i] < i, -1 for a root: a topologically
ordered forest) and P_b = prefix_len[b] valid prefix positions (P_b may be 0: then a node sees only its
path). Shapes: q, K_tree, V_tree (B, H, N, D); K_prefix, V_prefix (B, H, P, D), P >= 0; out (B, H, N, D).

The mask is never stored as a dense N × N matrix inside the kernels: row i of ``ancestor_bitsets`` packs
A(i) into ceil(N / 64) 64-bit words (bit j of word j // 64 is set iff j ∈ A(i)); since a parent precedes
its child, row i is row parents[i] plus bit i, built in one pass.

Unlike decode attention, the N queries of a (b, h) row all read the *same* prefix keys and values. The
fast versions load each prefix tile once and use it for a block of queries, so the op does about N/2 flops
per byte of K/V: with N = 64 it is bound by arithmetic, not memory, and they are matrix products of tiles
with a flash-attention (online) softmax between them.

Four implementations, top to bottom:

- ``reference``           plain torch, the spec: concatenate prefix and tree, dense mask, softmax, matmul.
- ``numba_tree_attend``   CPU: one task per (b, h, block of 64 queries); prefix and tree in tiles of 256
                          keys: scores by a register-blocked dot-product kernel, online softmax with a
                          vectorised exp, then the weighted sum of values.
- ``triton_tree_attend``  GPU: one program per (b, h, block of queries); tl.dot on tiles of K/V, the tree
                          tiles masked by bitsets.
- ``tree_attend``         checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ._dispatch import check_lengths, check_scale, njit, numba, prange, resolve_backend, tl, triton, triton_interpret

# ------------------------------------------------------------------------------------------------------
# 0. The tree: parents -> ancestor bitsets -> dense mask.
# ------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _ancestor_words(parents):  # pragma: no cover - compiled
    """parents: (N,) int64, parents[i] < i -> (N, ceil(N / 64)) uint64 ancestor-or-self bitsets."""
    N = parents.shape[0]
    W = (N + 63) // 64
    bits = np.zeros((N, W), np.uint64)
    for i in range(N):
        p = parents[i]
        if p >= 0:
            for w in range(W):
                bits[i, w] = bits[p, w]
        bits[i, i >> 6] |= np.uint64(1) << np.uint64(i & 63)
    return bits


_BITSET_CACHE: OrderedDict = OrderedDict()  # (parents bytes, device) -> int64 bitsets
_BITSET_CACHE_SIZE = 32


def _parents_numpy(parents) -> np.ndarray:
    if isinstance(parents, torch.Tensor):
        return parents.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(parents, dtype=np.int64).reshape(-1)


def _bitsets(parents: np.ndarray, device: torch.device) -> torch.Tensor:
    """Ancestor bitsets of a checked ``parents`` array, cached: every layer of a step verifies one tree."""
    key = (parents.tobytes(), str(device))
    bits = _BITSET_CACHE.get(key)
    if bits is None:
        bits = torch.from_numpy(_ancestor_words(parents).view(np.int64)).to(device)
        _BITSET_CACHE[key] = bits
        if len(_BITSET_CACHE) > _BITSET_CACHE_SIZE:
            _BITSET_CACHE.popitem(last=False)
    else:
        _BITSET_CACHE.move_to_end(key)
    return bits


def ancestor_bitsets(parents: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Ancestor-or-self sets of a topologically ordered tree, packed: (N,) parents -> (N, ceil(N / 64)) int64.

    Bit j (j % 64 of word j // 64) of row i is set iff node j is node i or one of its ancestors. parents[i]
    is the parent of node i (< i), or -1 for a root. Returned on parents' device (CPU for a list).
    """
    device = parents.device if isinstance(parents, torch.Tensor) else torch.device("cpu")
    return _bitsets(_check_parents(parents), device).clone()


def tree_mask(parents: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Dense ancestor-or-self mask (N, N) bool: [i, j] is True iff node j is node i or an ancestor of i.

    The ``tree_mask`` a model's forward pass takes when it verifies a token tree (lower triangular, with a
    true diagonal). Unpacked from ``ancestor_bitsets``.
    """
    bits = ancestor_bitsets(parents)
    N = bits.shape[0]
    j = torch.arange(N, device=bits.device)
    return ((bits[:, j // 64] >> (j % 64)) & 1).bool()


# ------------------------------------------------------------------------------------------------------
# 1. The reference: the definition, written as plainly as possible.
# ------------------------------------------------------------------------------------------------------


def reference(
    q: torch.Tensor,
    K_prefix: torch.Tensor,
    V_prefix: torch.Tensor,
    K_tree: torch.Tensor,
    V_tree: torch.Tensor,
    parents: torch.Tensor | Sequence[int],
    prefix_len: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Tree attention in plain torch: q, K_tree, V_tree (B, H, N, D), K/V_prefix (B, H, P, D) -> (B, H, N, D).

    Concatenates prefix and tree keys, masks with the dense (N, P + N) mask, softmax, matmul. Computes in
    (at least) fp32 and returns q's dtype. Differentiable; the spec the kernels must match.
    """
    B, H, N, D = q.shape
    P = K_prefix.shape[2]
    scale = D**-0.5 if scale is None else scale
    out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    K = torch.cat([K_prefix, K_tree], dim=2).to(dtype)  # (B, H, P + N, D)
    V = torch.cat([V_prefix, V_tree], dim=2).to(dtype)
    sees_prefix = torch.ones(B, 1, N, P, dtype=torch.bool, device=q.device)
    if prefix_len is not None:
        sees_prefix = torch.arange(P, device=q.device) < prefix_len.to(q.device)[:, None, None, None]
        sees_prefix = sees_prefix.expand(B, 1, N, P)
    sees_tree = tree_mask(parents).to(q.device).expand(B, 1, N, N)
    mask = torch.cat([sees_prefix, sees_tree], dim=-1)  # (B, 1, N, P + N)
    scores = (q.to(dtype) @ K.transpose(-1, -2)) * scale  # (B, H, N, P + N)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (weights @ V).to(out_dtype)


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU): flash attention on tiles, one task per (b, h, block of queries).
# ------------------------------------------------------------------------------------------------------

_TILE = 256  # keys per tile: scores (64 queries x 256 keys) and transposed values (D x 256) stay in L2
_QBLOCK = 64  # queries per task: each prefix tile is loaded once for all of them
_MASKED = np.float32(-1e30)  # a finite "-inf" (fastmath assumes no infinities)


@njit(fastmath=True, cache=True, inline="always")
def _dot(a, b, n):  # pragma: no cover - compiled
    c = np.float32(0.0)
    for k in range(n):
        c += a[k] * b[k]
    return c


@njit(fastmath=True, cache=True, inline="always")
def _dot4x2(a0, a1, a2, a3, b0, b1, n):  # pragma: no cover - compiled
    """Eight dot products of 4 rows of A with 2 rows of B: 6 vector loads feed 8 FMAs (1 load per FMA for
    one dot at a time), so the loop is bound by arithmetic, not by the loads."""
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = np.float32(0.0)
    for k in range(n):
        x0 = b0[k]
        x1 = b1[k]
        c00 += a0[k] * x0
        c01 += a0[k] * x1
        c10 += a1[k] * x0
        c11 += a1[k] * x1
        c20 += a2[k] * x0
        c21 += a2[k] * x1
        c30 += a3[k] * x0
        c31 += a3[k] * x1
    return c00, c01, c10, c11, c20, c21, c30, c31


@njit(fastmath=True, cache=True)
def _abt(A, B, b0, J, n, C, beta, accumulate):  # pragma: no cover - compiled
    """C[i, j] = (beta[i] * C[i, j] if accumulate else 0) + A[i, :n] . B[b0 + j, :n], i < len(A), j < J.

    A times B-transposed on tiles, 4 x 2 outputs at a time (a register-blocked micro-kernel), the rest one
    dot product at a time. Every row is contiguous, so each dot product vectorises over k.
    """
    I = A.shape[0]
    I4, J2 = I - I % 4, J - J % 2
    for i in range(0, I4, 4):
        a0, a1, a2, a3 = A[i], A[i + 1], A[i + 2], A[i + 3]
        for j in range(0, J2, 2):
            c = _dot4x2(a0, a1, a2, a3, B[b0 + j], B[b0 + j + 1], n)
            for r in range(4):
                if accumulate:
                    C[i + r, j] = C[i + r, j] * beta[i + r] + c[2 * r]
                    C[i + r, j + 1] = C[i + r, j + 1] * beta[i + r] + c[2 * r + 1]
                else:
                    C[i + r, j] = c[2 * r]
                    C[i + r, j + 1] = c[2 * r + 1]
        for j in range(J2, J):
            for r in range(4):
                v = _dot(A[i + r], B[b0 + j], n)
                C[i + r, j] = C[i + r, j] * beta[i + r] + v if accumulate else v
    for i in range(I4, I):
        for j in range(J):
            v = _dot(A[i], B[b0 + j], n)
            C[i, j] = C[i, j] * beta[i] + v if accumulate else v


@njit(fastmath=True, cache=True, inline="always")
def _exp_shifted(x, mx, n, ibuf):  # pragma: no cover - compiled
    """x[:n] <- exp(x[:n] - mx) (0 where x holds the mask value); returns their sum.

    A vectorisable expf (Cephes: exp(r) * 2^k with |r| <= ln(2)/2, relative error ~1e-7): calling libm's
    scalar expf once per score took as long as the two matrix products together. 2^k is built from its
    bits in an int32 buffer and read back through a float32 view. Arguments below -87 are clamped there
    (e^-87 ~ 1.6e-38, negligible against the row's largest term, which is 1).
    """
    fbuf = ibuf.view(np.float32)
    for t in range(n):
        v = max(x[t] - mx, np.float32(-87.0))
        k = np.floor(v * np.float32(1.44269504) + np.float32(0.5))
        r = v - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        x[t] = p if x[t] > np.float32(-1e29) else np.float32(0.0)
        ibuf[t] = (np.int32(k) + np.int32(127)) << np.int32(23)
    total = np.float32(0.0)
    for t in range(n):
        e = x[t] * fbuf[t]
        x[t] = e
        total += e
    return total


@njit(fastmath=True, cache=True)
def _transpose(V, k0, n, VT):  # pragma: no cover - compiled
    """VT[d, t] = V[k0 + t, d] for t < n, in blocks of 8 keys: each inner loop writes 8 contiguous floats
    (3x faster than one key at a time, whose stores stride through VT)."""
    D = V.shape[1]
    n8 = n - n % 8
    for t0 in range(0, n8, 8):
        for d in range(D):
            for t in range(8):
                VT[d, t0 + t] = V[k0 + t0 + t, d]
    for t in range(n8, n):
        for d in range(D):
            VT[d, t] = V[k0 + t, d]


@njit(fastmath=True, cache=True)
def _tile(qs, K, V, k0, n, bits, i0, tree, S, VT, acc, m, l, alpha, ibuf):  # pragma: no cover - compiled
    """Fold keys k0..k0+n of K/V into the running softmax of the query block (online softmax).

    qs: (nq, D) scaled queries i0..i0+nq; tree: mask key j (= k0 + t) for query i unless bit j of
    bits[i0 + i] is set. S (nq, TILE), VT (D, TILE), ibuf (TILE,) are scratch; acc (nq, D), m, l (nq,) the
    running weighted sum, max and denominator; alpha (nq,) scratch for the rescale factors.
    """
    nq, D = qs.shape
    _abt(qs, K, k0, n, D, S, alpha, False)  # S[:, :n] = qs @ K[k0:k0+n].T
    if tree:
        for i in range(nq):
            row = bits[i0 + i]
            for t in range(n):
                j = k0 + t
                if (row[j >> 6] >> (j & 63)) & 1 == 0:
                    S[i, t] = _MASKED
    for i in range(nq):
        mx = m[i]
        for t in range(n):
            mx = max(mx, S[i, t])
        alpha[i] = np.exp(m[i] - mx)  # rescales what was accumulated under the old max (0 at the start)
        m[i] = mx
        l[i] = l[i] * alpha[i] + _exp_shifted(S[i], mx, n, ibuf)
    _transpose(V, k0, n, VT)  # so that acc[i, d] is a contiguous dot product over the keys
    _abt(S, VT, 0, D, n, acc, alpha, True)  # acc = alpha * acc + P @ V[k0:k0+n]


@njit(fastmath=True, cache=True)
def _tree_block(q, Kp, Vp, n_prefix, Kt, Vt, bits, i0, nq, scale, out):  # pragma: no cover - compiled
    """Queries i0..i0+nq of one (b, h) row. q, Kt, Vt, out: (N, D); Kp, Vp: (P, D), first n_prefix valid."""
    D = q.shape[1]
    qs = np.empty((nq, D), np.float32)
    for i in range(nq):
        for d in range(D):
            qs[i, d] = q[i0 + i, d] * scale
    S = np.empty((nq, _TILE), np.float32)
    VT = np.empty((D, _TILE), np.float32)
    ibuf = np.empty(_TILE, np.int32)
    acc = np.zeros((nq, D), np.float32)
    m = np.full(nq, _MASKED, np.float32)
    l = np.zeros(nq, np.float32)
    alpha = np.empty(nq, np.float32)
    for k0 in range(0, n_prefix, _TILE):  # the prefix: every query sees every valid key
        _tile(qs, Kp, Vp, k0, min(_TILE, n_prefix - k0), bits, i0, False, S, VT, acc, m, l, alpha, ibuf)
    hi = i0 + nq  # ancestors precede their node: keys >= hi are never seen by this block
    for k0 in range(0, hi, _TILE):
        _tile(qs, Kt, Vt, k0, min(_TILE, hi - k0), bits, i0, True, S, VT, acc, m, l, alpha, ibuf)
    for i in range(nq):  # l >= 1: the largest score of a row (at least the node itself) adds exp(0)
        for d in range(D):
            out[i0 + i, d] = acc[i, d] / l[i]


@njit(parallel=True, cache=True)
def _tree_rows_parallel(q, Kp, Vp, Kt, Vt, bits, n_prefix, heads, qblock, scale, out):  # pragma: no cover
    """q, Kt, Vt, out: (BH, N, D); Kp, Vp: (BH, P, D); n_prefix: (B,). One (row, query block) per task."""
    BH, N = q.shape[0], q.shape[1]
    nb = (N + qblock - 1) // qblock
    for task in prange(BH * nb):
        r, i0 = task // nb, (task % nb) * qblock
        _tree_block(q[r], Kp[r], Vp[r], n_prefix[r // heads], Kt[r], Vt[r], bits, i0, min(qblock, N - i0),
                    scale, out[r])


@njit(cache=True)
def _tree_rows_serial(q, Kp, Vp, Kt, Vt, bits, n_prefix, heads, qblock, scale, out):  # pragma: no cover
    """The same on one core: for small problems, waking the thread pool costs more than the work."""
    BH, N = q.shape[0], q.shape[1]
    nb = (N + qblock - 1) // qblock
    for task in range(BH * nb):
        r, i0 = task // nb, (task % nb) * qblock
        _tree_block(q[r], Kp[r], Vp[r], n_prefix[r // heads], Kt[r], Vt[r], bits, i0, min(qblock, N - i0),
                    scale, out[r])


_NUMBA_SERIAL_BELOW = 1 << 20  # multiply-adds (B*H*N*(P+N)*D) under which one core is faster


def _as_f32_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (no copy when x already is contiguous fp32 on the CPU)."""
    return x.detach().to(torch.float32).contiguous().numpy()


def _query_block(rows: int, N: int) -> int:
    """Queries per task: up to 64, but split a row into blocks when there are fewer rows than threads."""
    threads = numba.get_num_threads() if numba is not None else 1
    splits = max(1, min(math.ceil(threads / max(rows, 1)), math.ceil(N / 4)))
    return min(_QBLOCK, 4 * math.ceil(math.ceil(N / splits) / 4))


def numba_tree_attend(
    q: torch.Tensor,
    K_prefix: torch.Tensor,
    V_prefix: torch.Tensor,
    K_tree: torch.Tensor,
    V_tree: torch.Tensor,
    parents: torch.Tensor | Sequence[int],
    prefix_len: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Tree attention on the CPU with Numba (inputs checked by ``tree_attend``). Returns (B, H, N, D)."""
    B, H, N, D = q.shape
    P = K_prefix.shape[2]
    scale = D**-0.5 if scale is None else float(scale)
    n_prefix = (np.full(B, P, np.int64) if prefix_len is None
                else prefix_len.detach().cpu().numpy().astype(np.int64))
    bits = _bitsets(_parents_numpy(parents), torch.device("cpu")).numpy()
    out = np.empty((B * H, N, D), np.float32)
    work = B * H * N * (P + N) * D
    kernel = _tree_rows_serial if work < _NUMBA_SERIAL_BELOW else _tree_rows_parallel
    kernel(
        _as_f32_numpy(q).reshape(B * H, N, D),
        _as_f32_numpy(K_prefix).reshape(B * H, P, D),
        _as_f32_numpy(V_prefix).reshape(B * H, P, D),
        _as_f32_numpy(K_tree).reshape(B * H, N, D),
        _as_f32_numpy(V_tree).reshape(B * H, N, D),
        bits, n_prefix, H, _query_block(B * H, N), np.float32(scale), out,
    )
    return torch.from_numpy(out).reshape(B, H, N, D).to(q.dtype)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU): program (row, block of queries) streams the prefix in tiles with tl.dot, then the
#    tree tiles masked by the bitsets; online softmax in fp32.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _online_update(s, valid, v, m, l, acc, precision: tl.constexpr):
        s = tl.where(valid, s, -1e30)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)  # 0 the first time (m = -1e30), 1 while the max holds
        p = tl.where(valid, tl.exp(s - m_new[:, None]), 0.0)
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=precision)
        return m_new, l, acc

    @triton.jit
    def _tree_attend_kernel(
        q_ptr, kp_ptr, vp_ptr, kt_ptr, vt_ptr, bits_ptr, plen_ptr, out_ptr,
        H, N, P, D, W, scale,
        BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        row = tl.program_id(0)  # which (b, h)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # which queries
        mask_n = offs_n < N
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        tree_base = row.to(tl.int64) * N * D  # int64: large caches overflow int32 offsets
        prefix_base = row.to(tl.int64) * P * D
        q = tl.load(q_ptr + tree_base + offs_n[:, None] * D + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        n_prefix = tl.load(plen_ptr + row // H)

        m = tl.full([BLOCK_N], -1e30, dtype=tl.float32)
        l = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for t0 in range(0, n_prefix, BLOCK_T):  # the prefix: shared by every query of the block
            offs_t = t0 + tl.arange(0, BLOCK_T)
            mask_t = offs_t < n_prefix
            offs = prefix_base + offs_t[:, None] * D + offs_d[None, :]
            kv_mask = mask_t[:, None] & mask_d[None, :]
            k = tl.load(kp_ptr + offs, mask=kv_mask, other=0.0)  # (BLOCK_T, BLOCK_D)
            v = tl.load(vp_ptr + offs, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BLOCK_N, BLOCK_T)
            m, l, acc = _online_update(s, mask_t[None, :] & mask_n[:, None], v, m, l, acc, PRECISION)

        hi = tl.minimum(N, (tl.program_id(1) + 1) * BLOCK_N)  # ancestors precede their node
        for j0 in range(0, hi, BLOCK_T):
            offs_j = j0 + tl.arange(0, BLOCK_T)
            mask_j = offs_j < N
            offs = tree_base + offs_j[:, None] * D + offs_d[None, :]
            kv_mask = mask_j[:, None] & mask_d[None, :]
            k = tl.load(kt_ptr + offs, mask=kv_mask, other=0.0)
            v = tl.load(vt_ptr + offs, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            pair = mask_n[:, None] & mask_j[None, :]
            words = tl.load(bits_ptr + offs_n[:, None] * W + offs_j[None, :] // 64, mask=pair, other=0)
            seen = ((words >> (offs_j[None, :] % 64).to(tl.int64)) & 1) != 0  # bit j of row i
            m, l, acc = _online_update(s, seen & pair, v, m, l, acc, PRECISION)

        l = tl.where(l > 0.0, l, 1.0)  # padding rows past N saw nothing (and are not stored)
        out = acc / l[:, None]
        tl.store(out_ptr + tree_base + offs_n[:, None] * D + offs_d[None, :], out,
                 mask=mask_n[:, None] & mask_d[None, :])


def triton_tree_attend(
    q: torch.Tensor,
    K_prefix: torch.Tensor,
    V_prefix: torch.Tensor,
    K_tree: torch.Tensor,
    V_tree: torch.Tensor,
    parents: torch.Tensor | Sequence[int],
    prefix_len: torch.Tensor | None = None,
    scale: float | None = None,
    block_n: int | None = None,
    block_t: int | None = None,
) -> torch.Tensor:
    """Tree attention with Triton (inputs checked by ``tree_attend``). Returns (B, H, N, D) in q's dtype.

    ``block_n`` / ``block_t`` (powers of two >= 16) override the tile sizes (tests use them).
    """
    if triton is None:
        raise RuntimeError("triton_tree_attend needs the triton package (pip install triton; Linux + CUDA)")
    B, H, N, D = q.shape
    P = K_prefix.shape[2]
    device = q.device
    scale = D**-0.5 if scale is None else float(scale)
    interpret = device.type != "cuda" or triton_interpret()
    # The interpreter mishandles 16-bit floats: it computes in fp32, and torch casts the result back.
    dtype = torch.float32 if interpret or q.dtype == torch.float64 else q.dtype
    out_dtype = q.dtype
    q, K_prefix, V_prefix, K_tree, V_tree = (
        x.to(dtype).contiguous() for x in (q, K_prefix, V_prefix, K_tree, V_tree))
    n_prefix = (torch.full((B,), P, dtype=torch.int32, device=device) if prefix_len is None
                else prefix_len.to(device=device, dtype=torch.int32))
    bits = _bitsets(_parents_numpy(parents), device)
    if P == 0:  # an empty tensor may have no valid address; the prefix loop never reads it
        K_prefix, V_prefix = K_tree, V_tree
    block_d = max(16, triton.next_power_of_2(D))
    if block_n is None:  # the interpreter pays per program: few, large ones
        block_n = max(16, min(128 if interpret else 64, triton.next_power_of_2(N)))
    if block_t is None:
        block_t = 64 if not interpret else 128
    if block_d > 128 and not interpret:  # keep the (BLOCK_N, BLOCK_D) accumulator in registers
        block_n, block_t = min(block_n, 32), min(block_t, 32)
    out = torch.empty((B, H, N, D), dtype=dtype, device=device)
    precision = "ieee" if dtype == torch.float32 else "tf32"  # fp32 exactly; 16-bit inputs ignore it
    _tree_attend_kernel[(B * H, triton.cdiv(N, block_n))](
        q, K_prefix, V_prefix, K_tree, V_tree, bits, n_prefix, out,
        H, N, P, D, bits.shape[1], scale,
        BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_D=block_d, PRECISION=precision,
    )
    return out.to(out_dtype)


# ------------------------------------------------------------------------------------------------------
# 4. The public op: check the inputs, pick the backend.
# ------------------------------------------------------------------------------------------------------

_FLOATS = "float16, bfloat16, float32 or float64"


def tree_attend(
    q: torch.Tensor,
    K_prefix: torch.Tensor,
    V_prefix: torch.Tensor,
    K_tree: torch.Tensor,
    V_tree: torch.Tensor,
    parents: torch.Tensor | Sequence[int],
    prefix_len: torch.Tensor | Sequence[int] | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of N tree tokens over a shared prefix cache and their own ancestors -> (B, H, N, D).

    q, K_tree, V_tree: (B, H, N, D), the new tokens' queries, keys and values (node i of the tree).
    K_prefix, V_prefix: (B, H, P, D), the cache of the committed prefix (P may be 0).
    parents: (N,) ints, parents[i] < i the parent of node i, -1 for a root (a topologically ordered forest).
    prefix_len: (B,) ints in 0..P, the valid prefix length of each batch row (None: all P).
    scale: multiplies the scores, default 1/sqrt(D).
    backend: "auto" | "torch" | "numba" | "triton", as for ``attend``. Computes in fp32 and returns q's
    dtype; only "torch" keeps gradients. ``parents`` and ``prefix_len`` are read on the host (one
    synchronisation on a GPU); the bitsets of a tree are cached, so all layers of one step share them.
    """
    parents_np, prefix_len, scale = _check_inputs(q, K_prefix, V_prefix, K_tree, V_tree, parents, prefix_len,
                                                  scale)
    backend = resolve_backend(backend, q.device, op="tree_attend")
    if q.numel() == 0:  # an empty batch or an empty tree: nothing to attend with
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    parents = torch.from_numpy(parents_np)
    if backend == "torch":
        return reference(q, K_prefix, V_prefix, K_tree, V_tree, parents, prefix_len, scale)
    if backend == "numba":
        return numba_tree_attend(q, K_prefix, V_prefix, K_tree, V_tree, parents, prefix_len, scale)
    return triton_tree_attend(q, K_prefix, V_prefix, K_tree, V_tree, parents, prefix_len, scale)


def _check_parents(parents, N: int | None = None) -> np.ndarray:
    """(N,) parents with parents[i] in -1..i-1, as an int64 numpy array; a clear error otherwise."""
    if isinstance(parents, torch.Tensor):
        if parents.dtype == torch.bool or parents.is_floating_point() or parents.is_complex():
            raise TypeError(f"parents must hold integers, got {parents.dtype}")
    else:
        try:
            array = np.asarray(parents)
        except (TypeError, ValueError) as err:
            raise TypeError(f"parents must be a 1-D sequence of ints, got {parents!r}") from err
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"parents must hold integers, got {array.dtype}")
    if len(getattr(parents, "shape", np.shape(parents))) != 1:
        raise ValueError(f"parents must be 1-D (N,), got shape {tuple(np.shape(parents))}")
    array = _parents_numpy(parents)
    if N is not None and array.shape[0] != N:
        raise ValueError(f"parents must have shape (N,) = ({N},) to match q, got ({array.shape[0]},)")
    bad = np.flatnonzero((array < -1) | (array >= np.arange(array.shape[0])))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"parents[i] must lie in -1..i-1 (a parent precedes its child; -1 for a root), "
                         f"got parents[{i}] = {int(array[i])}")
    return np.ascontiguousarray(array)


def _check_inputs(q, K_prefix, V_prefix, K_tree, V_tree, parents, prefix_len, scale):
    """Validate shapes, dtypes, devices, parents, prefix_len and scale; return (parents, prefix_len, scale)."""
    named = (("q", q), ("K_prefix", K_prefix), ("V_prefix", V_prefix), ("K_tree", K_tree), ("V_tree", V_tree))
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floating-point numbers ({_FLOATS}), got {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, {'P' if 'prefix' in name else 'N'}, D), "
                             f"got shape {tuple(x.shape)}")
    B, H, N, D = q.shape
    if D == 0:
        raise ValueError("q must have a head dimension D >= 1, got D=0")
    for name, x in named[3:]:
        if x.shape != q.shape:
            raise ValueError(f"{name} must have q's shape (B, H, N, D) = {tuple(q.shape)}, got {tuple(x.shape)}")
    P = K_prefix.shape[2]
    if tuple(K_prefix.shape) != (B, H, P, D):
        raise ValueError(f"K_prefix must have shape (B, H, P, D) = ({B}, {H}, P, {D}) to match q, "
                         f"got {tuple(K_prefix.shape)}")
    if V_prefix.shape != K_prefix.shape:
        raise ValueError(f"V_prefix must have K_prefix's shape {tuple(K_prefix.shape)}, got {tuple(V_prefix.shape)}")
    if len({x.device for _, x in named}) != 1:
        raise ValueError("q, K_prefix, V_prefix, K_tree and V_tree must be on one device, got "
                         + ", ".join(f"{name} on {x.device}" for name, x in named))
    if len({x.dtype for _, x in named}) != 1:
        raise TypeError("q, K_prefix, V_prefix, K_tree and V_tree must share one dtype, got "
                        + ", ".join(f"{name} {x.dtype}" for name, x in named))
    parents = _check_parents(parents, N)

    scale = check_scale(scale, D)
    if prefix_len is None:
        return parents, None, scale
    return parents, check_lengths("prefix_len", prefix_len, B, 0, P, "P", q.device), scale
