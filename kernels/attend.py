"""Single-query (decode) attention: one new query per head reads the whole key/value cache.

    out[b, h] = softmax(scale * K[b, h, :n_b] @ q[b, h]) @ V[b, h, :n_b]        n_b = lengths[b]

Shapes: q (B, H, D), K and V (B, H, T, D), lengths (B,) ints in 1..T (positions >= lengths[b] are
ignored, as in a batch of caches of different lengths), out (B, H, D) in q's dtype.

Decoding reads every byte of K and V once and does only 4 flops per byte pair, so the op is bound by
memory bandwidth, not arithmetic. The fast versions therefore make exactly one pass over K/V with an
*online softmax*: keep a running max ``m``, a running denominator ``l`` and a running weighted sum
``acc``; when a new score raises the max, rescale ``l`` and ``acc`` by ``exp(m_old - m_new)``.

Four implementations, top to bottom:

- ``reference``     plain torch, the spec (three passes, materialises the scores; fp32 inside).
- ``numba_attend``  CPU: one thread per (b, h) row, one pass over K and V in lockstep.
- ``triton_attend`` GPU, flash-decoding: split T into chunks run in parallel, then merge the splits.
- ``attend``        checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._dispatch import check_lengths, check_scale, njit, prange, resolve_backend, tl, triton, triton_interpret

# ------------------------------------------------------------------------------------------------------
# 1. The reference: the definition, written as plainly as possible.
# ------------------------------------------------------------------------------------------------------


def reference(
    q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Decode attention in plain torch. q: (B, H, D), K/V: (B, H, T, D), lengths: (B,) -> (B, H, D).

    Computes in (at least) fp32 and returns q's dtype. Differentiable; the spec the kernels must match.
    """
    T, D = K.shape[-2], K.shape[-1]
    scale = D**-0.5 if scale is None else scale
    out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, K, V = q.to(dtype), K.to(dtype), V.to(dtype)
    scores = torch.einsum("bhd,bhtd->bht", q, K) * scale  # (B, H, T)
    if lengths is not None:
        beyond = torch.arange(T, device=K.device) >= lengths.to(K.device)[:, None, None]  # (B, 1, T)
        scores = scores.masked_fill(beyond, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, T)
    out = torch.einsum("bht,bhtd->bhd", weights, V)  # (B, H, D)
    return out.to(out_dtype)


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU): one pass over K/V with an online softmax, one (b, h) row per thread.
# ------------------------------------------------------------------------------------------------------


@njit(fastmath=True, cache=True)
def _attend_row(q, K, V, n, scale, out):  # pragma: no cover - compiled
    """One (b, h) row: q (D,), K/V (T, D) float32 C-contiguous, the first n positions valid, out (D,).

    Position t reads K[t] and then V[t], so the two streams advance in lockstep and the CPU's hardware
    prefetchers keep both running (reading a block of K, then the same block of V, was 20-30% slower on
    our 2-core VM). Both inner loops run over D contiguous floats and vectorise (fastmath lets LLVM
    reassociate the dot product).
    """
    D = K.shape[1]
    qs = np.empty(D, np.float32)
    for d in range(D):
        qs[d] = q[d] * scale
    acc = np.zeros(D, np.float32)  # running sum of exp(score - m) * V[t]
    m = np.float32(-1e30)  # running max (a finite sentinel: fastmath assumes no infinities)
    l = np.float32(0.0)  # running denominator: sum of exp(score - m)
    for t in range(n):
        s = np.float32(0.0)
        for d in range(D):
            s += qs[d] * K[t, d]
        if s > m:  # a new max: rescale what we have (rare: about log T times for random scores)
            alpha = np.exp(m - s)
            l *= alpha
            for d in range(D):
                acc[d] *= alpha
            m = s
        p = np.exp(s - m)
        l += p
        for d in range(D):
            acc[d] += p * V[t, d]
    for d in range(D):
        out[d] = acc[d] / l


@njit(parallel=True, cache=True)
def _attend_rows_parallel(q, K, V, lengths, heads, scale, out):  # pragma: no cover - compiled
    """q: (BH, D), K/V: (BH, T, D), lengths: (B,) int64, out: (BH, D). One row per task, on all cores."""
    for row in prange(K.shape[0]):
        _attend_row(q[row], K[row], V[row], lengths[row // heads], scale, out[row])


@njit(cache=True)
def _attend_rows_serial(q, K, V, lengths, heads, scale, out):  # pragma: no cover - compiled
    """The same on one core: for small problems, waking the thread pool costs more than the work."""
    for row in range(K.shape[0]):
        _attend_row(q[row], K[row], V[row], lengths[row // heads], scale, out[row])


_NUMBA_SERIAL_BELOW = 1 << 16  # elements of K (B*H*T*D) under which one core is faster


def _as_f32_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (no copy when x already is contiguous fp32 on the CPU)."""
    return x.detach().to(torch.float32).contiguous().numpy()


def numba_attend(
    q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Decode attention on the CPU with Numba (inputs checked by ``attend``). Returns (B, H, D)."""
    B, H, T, D = K.shape
    scale = D**-0.5 if scale is None else float(scale)
    n = np.full(B, T, np.int64) if lengths is None else lengths.detach().cpu().numpy().astype(np.int64)
    out = np.empty((B * H, D), np.float32)
    kernel = _attend_rows_serial if B * H * T * D < _NUMBA_SERIAL_BELOW else _attend_rows_parallel
    kernel(
        _as_f32_numpy(q).reshape(B * H, D),
        _as_f32_numpy(K).reshape(B * H, T, D),
        _as_f32_numpy(V).reshape(B * H, T, D),
        n, H, np.float32(scale), out,
    )
    return torch.from_numpy(out).reshape(B, H, D).to(q.dtype)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU): flash-decoding. Program (row, split) reduces one chunk of T to a partial
#    (max m, denominator l, accumulator acc); a second small kernel merges the splits of each row.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _attend_split_kernel(
        q_ptr, k_ptr, v_ptr, len_ptr, m_ptr, l_ptr, acc_ptr,  # partials: m, l (BH, S); acc (BH, S, D)
        H, T, D, chunk, scale,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        row = tl.program_id(0)  # which (b, h)
        split = tl.program_id(1)  # which chunk of positions
        n_splits = tl.num_programs(1)
        length = tl.load(len_ptr + row // H)
        start = split * chunk
        stop = tl.minimum(start + chunk, length)  # an empty range when the chunk lies past the length

        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        q = tl.load(q_ptr + row * D + offs_d, mask=mask_d, other=0.0).to(tl.float32) * scale
        base = row.to(tl.int64) * T * D  # int64: large caches overflow int32 offsets

        m = -float("inf")
        l = 0.0
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for t0 in range(start, stop, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            mask_t = offs_t < stop
            offs = base + offs_t[:, None] * D + offs_d[None, :]  # (BLOCK_T, BLOCK_D)
            mask = mask_t[:, None] & mask_d[None, :]
            k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # fp32 right after the load
            s = tl.sum(k * q[None, :], axis=1)  # (BLOCK_T,) scores
            s = tl.where(mask_t, s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))  # finite: every tile holds a valid position
            alpha = tl.exp(m - m_new)  # rescales what was accumulated under the old max
            p = tl.exp(s - m_new)  # 0 at masked positions
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            l = l * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m = m_new

        part = row * n_splits + split
        tl.store(m_ptr + part, m)  # -inf for an empty chunk: the merge gives it weight 0
        tl.store(l_ptr + part, l)
        tl.store(acc_ptr + part * D + offs_d, acc, mask=mask_d)

    @triton.jit
    def _attend_combine_kernel(
        m_ptr, l_ptr, acc_ptr, out_ptr, n_splits, D,
        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        row = tl.program_id(0)
        offs_s = tl.arange(0, BLOCK_S)
        mask_s = offs_s < n_splits
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        m = tl.load(m_ptr + row * n_splits + offs_s, mask=mask_s, other=-float("inf"))  # (S,)
        l = tl.load(l_ptr + row * n_splits + offs_s, mask=mask_s, other=0.0)
        acc_offs = (row * n_splits + offs_s[:, None]) * D + offs_d[None, :]
        acc = tl.load(acc_ptr + acc_offs, mask=mask_s[:, None] & mask_d[None, :], other=0.0)  # (S, D)
        w = tl.exp(m - tl.max(m, axis=0))  # each split's partials were scaled by exp(-m_split)
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
        tl.store(out_ptr + row * D + offs_d, out, mask=mask_d)


def _triton_config(
    rows: int, T: int, D: int, device: torch.device, block_t: int | None, n_splits: int | None
) -> tuple[int, int, int]:
    """(BLOCK_T, n_splits, chunk) for the split kernel; explicit block_t / n_splits win.

    On a GPU: enough programs to fill every SM about four times over, chunks a multiple of BLOCK_T.
    Under the interpreter every program costs ~0.5 ms, so use few, large ones (but still > 1 split
    whenever T allows, so that the merge is exercised).
    """
    on_gpu = device.type == "cuda"
    block_d = triton.next_power_of_2(D)
    if block_t is None:
        block_t = max(16, min(64, 4096 // block_d)) if on_gpu else max(16, min(128, 8192 // block_d))
    if n_splits is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if on_gpu else 1
        n_splits = min(triton.cdiv(4 * sms, rows), 128) if on_gpu else 4
    n_splits = max(1, min(n_splits, triton.cdiv(T, block_t)))
    chunk = triton.cdiv(triton.cdiv(T, n_splits), block_t) * block_t
    return block_t, triton.cdiv(T, chunk), chunk


def triton_attend(
    q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
    block_t: int | None = None,
    n_splits: int | None = None,
) -> torch.Tensor:
    """Flash-decoding with Triton (inputs checked by ``attend``). Returns (B, H, D) in q's dtype.

    ``block_t`` (a power of two) and ``n_splits`` override the launch heuristic (tests use them).
    """
    if triton is None:
        raise RuntimeError("triton_attend needs the triton package (pip install triton; Linux + CUDA)")
    B, H, T, D = K.shape
    rows, device = B * H, q.device
    scale = D**-0.5 if scale is None else float(scale)
    q, K, V = q.contiguous(), K.contiguous(), V.contiguous()
    n = (torch.full((B,), T, dtype=torch.int32, device=device) if lengths is None
         else lengths.to(device=device, dtype=torch.int32))

    block_t, n_splits, chunk = _triton_config(rows, T, D, device, block_t, n_splits)

    m = torch.empty((rows, n_splits), dtype=torch.float32, device=device)
    l = torch.empty_like(m)
    acc = torch.empty((rows, n_splits, D), dtype=torch.float32, device=device)
    block_d = triton.next_power_of_2(D)
    _attend_split_kernel[(rows, n_splits)](
        q, K, V, n, m, l, acc, H, T, D, chunk, scale, BLOCK_T=block_t, BLOCK_D=block_d,
    )
    # The interpreter mishandles 16-bit floats, so the merge writes fp32 there and torch casts after.
    direct = device.type == "cuda" and not triton_interpret()
    out = torch.empty((B, H, D), dtype=q.dtype if direct else torch.float32, device=device)
    _attend_combine_kernel[(rows,)](
        m, l, acc, out, n_splits, D, BLOCK_S=triton.next_power_of_2(n_splits), BLOCK_D=block_d,
    )
    return out.to(q.dtype)


# ------------------------------------------------------------------------------------------------------
# 4. The public op: check the inputs, pick the backend.
# ------------------------------------------------------------------------------------------------------

_FLOATS = "float16, bfloat16, float32 or float64"


def attend(
    q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Single-query attention over a key/value cache: q (B, H, D), K/V (B, H, T, D) -> (B, H, D).

    lengths: (B,) ints in 1..T, the valid length of each batch row (None: all T positions).
    scale: multiplies the scores, default 1/sqrt(D).
    backend: "auto" (the one ``labkit.setup()`` chose when it fits the device; else Triton on CUDA,
    Numba on the CPU), "torch" (the reference, differentiable), "numba" (CPU) or "triton" (CUDA, or the
    CPU under ``TRITON_INTERPRET=1``). Computes in fp32 and returns q's dtype; only "torch" keeps
    gradients. Checking ``lengths`` on a GPU reads its min and max back (one synchronisation).
    """
    lengths, scale = _check_inputs(q, K, V, lengths, scale)
    backend = resolve_backend(backend, q.device, op="attend")
    if q.shape[0] * q.shape[1] == 0:  # an empty batch: nothing to attend over
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if backend == "torch":
        return reference(q, K, V, lengths, scale)
    if backend == "numba":
        return numba_attend(q, K, V, lengths, scale)
    return triton_attend(q, K, V, lengths, scale)


def _check_inputs(q, K, V, lengths, scale) -> tuple[torch.Tensor | None, float]:
    """Validate shapes, dtypes, devices, lengths and scale; return (lengths tensor or None, scale)."""
    for name, x in (("q", q), ("K", K), ("V", V)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floating-point numbers ({_FLOATS}), got {x.dtype}")
    if q.dim() != 3:
        raise ValueError(f"q must be 3-D (B, H, D), got shape {tuple(q.shape)}")
    if K.dim() != 4:
        raise ValueError(f"K must be 4-D (B, H, T, D), got shape {tuple(K.shape)}")
    if V.shape != K.shape:
        raise ValueError(f"V must have K's shape {tuple(K.shape)} (B, H, T, D), got {tuple(V.shape)}")
    B, H, T, D = K.shape
    if T == 0:
        raise ValueError("K must hold at least one position (T >= 1), got T=0")
    if D == 0:
        raise ValueError("K must have a head dimension D >= 1, got D=0")
    if tuple(q.shape) != (B, H, D):
        raise ValueError(f"q must have shape (B, H, D) = {(B, H, D)} to match K, got {tuple(q.shape)}")
    if not (q.device == K.device == V.device):
        raise ValueError(f"q, K and V must be on one device, got q on {q.device}, K on {K.device}, "
                         f"V on {V.device}")
    if not (q.dtype == K.dtype == V.dtype):
        raise TypeError(f"q, K and V must share one dtype, got q {q.dtype}, K {K.dtype}, V {V.dtype}")

    scale = check_scale(scale, D)
    if lengths is None:
        return None, scale
    return check_lengths("lengths", lengths, B, 1, T, "T", q.device), scale
