r"""Event-driven spike propagation with synaptic delays: only the rows of the neurons that spiked are added into the
delay ring buffer.

The ring buffer. ``buffer`` (D, N) holds, for each of the next D time steps, the current that will arrive at each
of the N postsynaptic neurons. A spike emitted at time step t through a synapse i → j with weight w_ij and delay
d_ij (in steps, 0 <= d_ij <= D − 1) arrives d_ij steps later:

    buffer[(t + d_ij) mod D, j] += w_ij        for every presynaptic i that spiked at t, every synapse of row i.

The simulator reads (and clears) slot t mod D when it integrates the step that starts at time step t, and
propagates the spikes found at the end of that step (time step t + 1) afterwards, so a delay d lands on slot
(t + 1 + d) mod D: with D = D_max + 1 slots, delays 0..D_max never write into a slot that has not been read yet
(a delay of 0 makes the current jump at the very time of the spike).

The synapses, either
- CSR: ``indptr`` (M+1,), ``indices`` (E,) (postsynaptic j of each synapse), ``weights`` (E,), and ``delays`` an
  int (all synapses) or (E,) integers; row i lists the outgoing synapses of presynaptic neuron i; or
- dense: ``weights`` (M, N) (row = presynaptic), ``delays`` an int or (M, N) integers.

Work is O(Σ_{i spiking} deg(i)), not O(E): at the sparse activity of a memory network (≪ 1 % of the neurons per
step) this is what makes the simulation cheap. Sums are added in the order of ``spiking`` and, within a row, of
its synapses, in every backend but CUDA Triton's CSR path (atomic adds; the order of additions may differ there).

- ``reference``              plain torch: gather the edges of the spiking rows, ``index_add_`` into the flat buffer.
- ``numba_spike_propagate``  CPU: CSR one serial scatter loop (memory bound; keeps the order); dense prange over
                             column chunks, each walking the spiking rows (no two threads write one column).
- ``triton_spike_propagate`` GPU: CSR one program per spiking row, atomic adds; dense one program per column block,
                             looping over the spiking rows (plain stores, deterministic).
- ``spike_propagate``        checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret

__all__ = ["numba_spike_propagate", "reference", "spike_propagate", "triton_spike_propagate"]


# ------------------------------------------------------------------------------------------------------
# 1. The reference.
# ------------------------------------------------------------------------------------------------------


def _csr_edges(indptr: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The synapse ids of the given rows, row after row (in the order of ``rows``)."""
    starts, ends = indptr[rows], indptr[rows + 1]
    counts = ends - starts
    total = int(counts.sum()) if rows.numel() else 0
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=indptr.device)
    offsets = torch.cumsum(counts, 0) - counts  # where each row's run starts in the output
    row_of = torch.repeat_interleave(torch.arange(rows.numel(), device=indptr.device), counts, output_size=total)
    return starts[row_of] + torch.arange(total, device=indptr.device) - offsets[row_of]


def reference(buffer: torch.Tensor, t: int, spiking: torch.Tensor, weights: torch.Tensor,
              indptr: torch.Tensor | None = None, indices: torch.Tensor | None = None,
              delays: int | torch.Tensor = 1) -> torch.Tensor:
    """Add the spiking rows into the ring buffer, in place; returns ``buffer``. buffer: (D, N) contiguous; t: the
    current step; spiking: (S,) int64 presynaptic indices; CSR (indptr, indices, weights (E,)) or dense weights
    (M, N) when indptr is None; delays: int or per-synapse integers."""
    D, N = buffer.shape
    rows = spiking.long()
    flat = buffer.view(-1)
    if indptr is None:  # dense
        src = weights[rows]  # (S, N)
        cols = torch.arange(N, device=buffer.device)
        slot = (t + (delays[rows] if isinstance(delays, torch.Tensor) else delays)) % D  # int or (S, N)
        target = slot * N + cols  # (N,) or (S, N)
        target = target.expand(rows.numel(), N)
    else:
        e = _csr_edges(indptr.long(), rows)
        src = weights[e]
        slot = (t + (delays[e].long() if isinstance(delays, torch.Tensor) else delays)) % D
        target = slot * N + indices[e].long()
    flat.index_add_(0, target.reshape(-1), src.reshape(-1))
    return buffer


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU).
# ------------------------------------------------------------------------------------------------------

_CHUNK = 256  # columns per parallel task in the dense path


@njit(cache=True)
def _csr_scatter(buf, t, rows, indptr, indices, w, delays, d_all):  # pragma: no cover - compiled
    """buf (D, N); rows (S,) int64; indptr, indices int64; w (E,); delays (E,) int64 or empty (then d_all)."""
    D = buf.shape[0]
    per_synapse = delays.size > 0
    for r in range(rows.size):
        i = rows[r]
        for e in range(indptr[i], indptr[i + 1]):
            d = delays[e] if per_synapse else d_all
            buf[(t + d) % D, indices[e]] += w[e]


def _csr_codes(D: int, N: int, indices: np.ndarray, delays) -> np.ndarray:
    """The packed targets code[e] = d_e·N + j_e of CSR synapses (int32 when D·N fits, else int64), for a simulator
    that propagates through the same synapses every step: one load per synapse instead of two, no modulo."""
    dtype = np.int32 if D * N < 2**31 else np.int64
    return (np.asarray(delays, dtype=np.int64) * N + indices.astype(np.int64)).astype(dtype)


@njit(cache=True)
def _csr_scatter_packed(flat, base, rows, indptr, code, w):  # pragma: no cover - compiled
    """``_csr_scatter`` on the flat ring buffer flat (D·N,) with base = (t mod D)·N and code from ``_csr_codes``:
    slot (t + d) mod D, column j is flat[base + d·N + j], wrapped by one subtraction of D·N (d <= D − 1). The same
    additions in the same order as ``_csr_scatter``."""
    DN = flat.size
    for r in range(rows.size):
        i = rows[r]
        for e in range(indptr[i], indptr[i + 1]):
            k = base + code[e]
            if k >= DN:
                k -= DN
            flat[k] += w[e]


@njit(parallel=True, cache=True)
def _dense_scatter(buf, t, rows, W, delays, d_all):  # pragma: no cover - compiled
    """buf (D, N); rows (S,) int64; W (M, N); delays (M, N) int64 or (0, 0) (then d_all for all)."""
    D, N = buf.shape
    per_synapse = delays.shape[0] > 0
    n_chunks = (N + _CHUNK - 1) // _CHUNK
    for ch in prange(n_chunks):
        lo = ch * _CHUNK
        hi = min(lo + _CHUNK, N)
        for r in range(rows.size):
            i = rows[r]
            if per_synapse:
                for j in range(lo, hi):
                    buf[(t + delays[i, j]) % D, j] += W[i, j]
            else:
                s = (t + d_all) % D
                for j in range(lo, hi):
                    buf[s, j] += W[i, j]


def numba_spike_propagate(buffer, t, spiking, weights, indptr=None, indices=None, delays=1) -> torch.Tensor:
    """The scatter on the CPU (inputs checked by ``spike_propagate``; contiguous), in place; returns ``buffer``."""
    buf = buffer.numpy()
    rows = spiking.long().numpy()
    per = isinstance(delays, torch.Tensor)
    if indptr is None:
        d = delays.long().numpy() if per else np.zeros((0, 0), np.int64)
        _dense_scatter(buf, int(t), rows, weights.numpy(), d, 0 if per else int(delays))
    else:
        d = delays.long().numpy() if per else np.zeros(0, np.int64)
        _csr_scatter(buf, int(t), rows, indptr.long().numpy(), indices.long().numpy(), weights.numpy(), d,
                     0 if per else int(delays))
    return buffer


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU).
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _csr_kernel(buf_ptr, rows_ptr, indptr_ptr, idx_ptr, w_ptr, d_ptr, t, d_all, D, N,
                    PER_SYNAPSE: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.load(rows_ptr + tl.program_id(0))
        lo = tl.load(indptr_ptr + i)
        hi = tl.load(indptr_ptr + i + 1)
        for start in range(lo, hi, BLOCK):
            e = start + tl.arange(0, BLOCK)
            m = e < hi
            j = tl.load(idx_ptr + e, mask=m, other=0)
            w = tl.load(w_ptr + e, mask=m, other=0.0)
            if PER_SYNAPSE:
                d = tl.load(d_ptr + e, mask=m, other=0)
            else:
                d = d_all
            slot = ((t + d) % D).to(tl.int64)
            tl.atomic_add(buf_ptr + slot * N + j, w, mask=m)

    @triton.jit
    def _dense_kernel(buf_ptr, rows_ptr, w_ptr, d_ptr, t, d_all, D, N, S,
                      PER_SYNAPSE: tl.constexpr, BLOCK: tl.constexpr):
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = cols < N
        for r in range(0, S):
            i = tl.load(rows_ptr + r).to(tl.int64)
            w = tl.load(w_ptr + i * N + cols, mask=m, other=0.0)
            if PER_SYNAPSE:
                d = tl.load(d_ptr + i * N + cols, mask=m, other=0)
            else:
                d = d_all
            slot = ((t + d) % D).to(tl.int64)
            ptr = buf_ptr + slot * N + cols
            tl.store(ptr, tl.load(ptr, mask=m, other=0.0) + w, mask=m)


def triton_spike_propagate(buffer, t, spiking, weights, indptr=None, indices=None, delays=1,
                           block: int | None = None) -> torch.Tensor:
    """The scatter with Triton (inputs checked by ``spike_propagate``; contiguous), in place; returns ``buffer``.
    ``block`` (a power of two) overrides the synapses (CSR) or columns (dense) per program step."""
    if triton is None:
        raise RuntimeError("triton_spike_propagate needs the triton package (pip install triton; Linux + CUDA)")
    D, N = buffer.shape
    S = spiking.numel()
    if S == 0 or N == 0:
        return buffer
    gpu = buffer.device.type == "cuda" and not triton_interpret()
    opts = {"enable_fp_fusion": False} if gpu else {}
    per = isinstance(delays, torch.Tensor)
    rows = spiking.long().contiguous()
    if indptr is None:
        bl = block or (256 if gpu else max(16, triton.next_power_of_2(N)))
        d = delays.long().contiguous() if per else rows
        _dense_kernel[(triton.cdiv(N, bl),)](buffer, rows, weights, d, int(t), 0 if per else int(delays), D, N, S,
                                             PER_SYNAPSE=per, BLOCK=bl, **opts)
    else:
        deg = int((indptr[1:] - indptr[:-1]).max()) if indptr.numel() > 1 else 0
        bl = block or (128 if gpu else max(16, triton.next_power_of_2(max(deg, 1))))
        d = delays.long().contiguous() if per else rows
        _csr_kernel[(S,)](buffer, rows, indptr.long().contiguous(), indices.long().contiguous(), weights, d, int(t),
                          0 if per else int(delays), D, N, PER_SYNAPSE=per, BLOCK=bl, **opts)
    return buffer


# ------------------------------------------------------------------------------------------------------
# 4. The public op.
# ------------------------------------------------------------------------------------------------------


def _int_tensor(name: str, x, shape: tuple, device) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must hold integers, got {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} must be on the buffer's device {device}, got {x.device}")


def spike_propagate(buffer: torch.Tensor, t: int, spiking: torch.Tensor, weights: torch.Tensor,
                    indptr: torch.Tensor | None = None, indices: torch.Tensor | None = None,
                    delays: int | torch.Tensor = 1, backend: str = "auto", validate: bool = True) -> torch.Tensor:
    """Add the synapses of the presynaptic neurons that spiked at step ``t`` into the delay ring buffer, in place.

    buffer: (D, N) float32/float64, slot s = the current arriving at step ≡ s (mod D); t: the current step (int >= 0);
    spiking: (S,) integer indices of the presynaptic neurons that spiked (in 0..M−1; repeats add twice).
    CSR synapses: indptr (M+1,), indices (E,) in 0..N−1, weights (E,); dense: weights (M, N) and indptr = indices =
    None. delays: an int, or integers per synapse ((E,) or (M, N)), each in 0..D−1. Returns ``buffer``.
    validate=False skips the O(E) checks of the synapse structure (a simulator checks once, then steps many times).
    backend: "auto" | "torch" | "numba" (CPU) | "triton" (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    """
    if not isinstance(buffer, torch.Tensor) or buffer.dim() != 2:
        raise ValueError(f"buffer must be a 2-D tensor (D, N), got {getattr(buffer, 'shape', type(buffer).__name__)}")
    if buffer.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"buffer must be float32 or float64, got {buffer.dtype}")
    D, N = buffer.shape
    device = buffer.device
    if D < 1:
        raise ValueError(f"buffer must have D >= 1 slots, got D = {D}")
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
        raise ValueError(f"t must be an integer >= 0, got {t!r}")
    if not isinstance(weights, torch.Tensor) or weights.dtype != buffer.dtype or weights.device != device:
        raise TypeError(f"weights must be a {buffer.dtype} tensor on {device}, got "
                        f"{getattr(weights, 'dtype', type(weights).__name__)}")
    dense = indptr is None
    if dense:
        if indices is not None:
            raise ValueError("indices is given without indptr (CSR needs both; dense weights need neither)")
        if weights.dim() != 2 or weights.shape[1] != N:
            raise ValueError(f"dense weights must have shape (M, N) with N = {N} (the buffer's width), got "
                             f"{tuple(weights.shape)}")
        M = weights.shape[0]
        syn_shape = (M, N)
    else:
        if not isinstance(indptr, torch.Tensor) or indptr.dim() != 1 or indptr.numel() < 1:
            raise ValueError(f"indptr must be a 1-D tensor (M+1,), got {getattr(indptr, 'shape', indptr)}")
        M = indptr.numel() - 1
        _int_tensor("indptr", indptr, (M + 1,), device)
        if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
            raise ValueError(f"indices must be a 1-D tensor (E,), got {getattr(indices, 'shape', indices)}")
        E = indices.numel()
        _int_tensor("indices", indices, (E,), device)
        if tuple(weights.shape) != (E,):
            raise ValueError(f"CSR weights must have shape (E,) = ({E},), got {tuple(weights.shape)}")
        syn_shape = (E,)
        if validate:
            if int(indptr[0]) != 0 or int(indptr[-1]) != E:
                raise ValueError(f"indptr must start at 0 and end at len(indices) = {E}, got {int(indptr[0])} .. "
                                 f"{int(indptr[-1])}")
            if M and bool((indptr[1:] < indptr[:-1]).any()):
                raise ValueError("indptr must be non-decreasing")
            if E and (int(indices.min()) < 0 or int(indices.max()) >= N):
                raise ValueError(f"indices must lie in 0..N-1 = 0..{N - 1}, got values from {int(indices.min())} to "
                                 f"{int(indices.max())}")
    if isinstance(delays, torch.Tensor):
        _int_tensor("delays", delays, syn_shape, device)
        if validate and delays.numel() and (int(delays.min()) < 0 or int(delays.max()) > D - 1):
            raise ValueError(f"delays must lie in 0..D-1 = 0..{D - 1} steps, got values from {int(delays.min())} to "
                             f"{int(delays.max())}")
    elif isinstance(delays, bool) or not isinstance(delays, numbers.Integral):
        raise TypeError(f"delays must be an int or an integer tensor, got {type(delays).__name__}")
    elif not 0 <= delays <= D - 1:
        raise ValueError(f"delays must lie in 0..D-1 = 0..{D - 1} steps, got {delays}")
    if not isinstance(spiking, torch.Tensor) or spiking.dim() != 1:
        raise ValueError(f"spiking must be a 1-D tensor of indices, got {getattr(spiking, 'shape', spiking)}")
    _int_tensor("spiking", spiking, (spiking.numel(),), device)
    if spiking.numel() and (int(spiking.min()) < 0 or int(spiking.max()) >= M):
        raise ValueError(f"spiking must lie in 0..M-1 = 0..{M - 1}, got values from {int(spiking.min())} to "
                         f"{int(spiking.max())}")
    backend = resolve_backend(backend, device, op="spike_propagate")
    if spiking.numel() == 0:
        return buffer
    work = buffer if buffer.is_contiguous() else buffer.contiguous()
    weights = weights.contiguous()
    if isinstance(delays, torch.Tensor):
        delays = delays.contiguous()
    fn = {"torch": reference, "numba": numba_spike_propagate, "triton": triton_spike_propagate}[backend]
    fn(work, int(t), spiking.contiguous(), weights, indptr, indices, delays)
    if work is not buffer:
        buffer.copy_(work)
    return buffer
