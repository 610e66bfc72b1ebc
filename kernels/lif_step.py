r"""One fused simulation step of a population of N leaky integrate-and-fire neurons, with the STDP of one dense
synapse group onto them.

The neuron (``labkit.snn.lif`` derives the numbers). Per neuron i, with the coefficients ``LIFCoeffs``
(decay_v, gain_syn, gain_ext, decay_syn, v_rest, v_reset, v_th, n_ref) of the exact propagator for one step dt:

    I₁ = I + I_in                                                   (input arriving at the step's start)
    if refrac > 0:  v ← v_reset,  refrac ← refrac − 1               (clamped; the current still integrates)
    else:           v ← v_rest + (v − v_rest)·decay_v + I₁·gain_syn + i_ext·gain_ext
                    if v ≥ v_th:  spike,  v ← v_reset,  refrac ← n_ref
    I ← I₁·decay_syn

The expression is evaluated left to right in the state's dtype, the same way in every backend, so a float64 or a
float32 simulation gives identical spike trains in torch, Numba and the Triton interpreter (CUDA Triton is run
without FMA contraction for the same reason; its atomic adds in ``spike_propagate`` may still reorder sums).

The plasticity (optional; ``STDPCoeffs``: decay_pre, decay_post, a_plus, a_minus, w_min, w_max). A dense weight
matrix W (M, N) from M presynaptic neurons onto these N neurons (row = presynaptic), presynaptic traces x (M,),
postsynaptic traces y (N,), and the presynaptic spikes of this step (M,) (or, for recurrent synapses with M = N,
the step's own spikes). After the neurons, in this order:

    x ← x·decay_pre,  y ← y·decay_post                              (the traces decay to this step)
    W[i, :] ← clip(W[i, :] − a_minus·y)     for every pre i that spiked   (depression: post before pre)
    x[i] ← x[i] + 1                           for every pre i that spiked
    W[:, j] ← clip(W[:, j] + a_plus·x)      for every post j that spiked  (potentiation: pre before post,
    y[j] ← y[j] + 1                           for every post j that spiked   a same-step pre counts as Δt = 0)

with clip(w) = min(max(w, w_min), w_max). Only the rows and columns of neurons that spiked are touched, so the
plasticity costs O(spikes × N + M), not O(M × N), per step. ``stdp_step`` is the plasticity phase alone (for a
synapse group whose presynaptic spikes are known only after its postsynaptic population was stepped).

Everything is updated in place: v, I (N,) float32/float64, refrac (N,) int32, and W, x, y. The step returns the
spikes (N,) bool.

- ``reference``            plain torch, the spec (readable, one tensor op per line).
- ``numba_lif_step``       CPU: one ``@njit(parallel=True)`` call per step: prange over neurons, then prange over
                           the spiking rows (depression) and over all rows (potentiation of the spiking columns).
- ``triton_lif_step``      GPU: an elementwise neuron kernel, then a row kernel over the spiking pre neurons and a
                           tile kernel over (rows × spiking post columns); the trace updates are torch ops.
- ``lif_step``, ``stdp_step``  check the inputs and dispatch by device and ``backend=``.
"""

from __future__ import annotations

import numpy as np
import torch

from labkit.snn.lif import LIFCoeffs, STDPCoeffs

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret

__all__ = ["lif_step", "numba_lif_step", "numba_stdp_step", "reference", "reference_stdp", "stdp_step",
           "triton_lif_step", "triton_stdp_step"]


def _consts(coeffs: LIFCoeffs, dtype: torch.dtype, device) -> torch.Tensor:
    """The seven float coefficients as one tensor of the state's dtype (so every backend rounds them alike):
    v_rest, decay_v, gain_syn, gain_ext, decay_syn, v_reset, v_th."""
    c = coeffs
    return torch.tensor([c.v_rest, c.decay_v, c.gain_syn, c.gain_ext, c.decay_syn, c.v_reset, c.v_th],
                        dtype=dtype, device=device)


def _stdp_consts(stdp: STDPCoeffs, dtype: torch.dtype, device) -> torch.Tensor:
    """decay_pre, decay_post, a_plus, a_minus, w_min, w_max as one tensor of the weights' dtype."""
    return torch.tensor(list(stdp), dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------------------
# 1. The reference.
# ------------------------------------------------------------------------------------------------------


def reference_stdp(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pre_spiked: torch.Tensor,
                   post_spiked: torch.Tensor, stdp: STDPCoeffs) -> None:
    """The plasticity phase, in place. W: (M, N); x: (M,); y: (N,); pre_spiked: (M,) bool; post_spiked: (N,) bool."""
    decay_pre, decay_post, a_plus, a_minus, w_min, w_max = _stdp_consts(stdp, W.dtype, W.device)
    x.mul_(decay_pre)
    y.mul_(decay_post)
    rows = torch.nonzero(pre_spiked).flatten()
    if rows.numel():  # depression of the spiking rows, with the post traces before this step's post spikes
        W[rows] = torch.minimum(torch.maximum(W[rows] - a_minus * y, w_min), w_max)
    x.add_(pre_spiked.to(x.dtype))
    cols = torch.nonzero(post_spiked).flatten()
    if cols.numel():  # potentiation of the spiking columns, with the pre traces including this step's pre spikes
        W[:, cols] = torch.minimum(torch.maximum(W[:, cols] + (a_plus * x)[:, None], w_min), w_max)
    y.add_(post_spiked.to(y.dtype))


def reference(v: torch.Tensor, I: torch.Tensor, refrac: torch.Tensor, I_in: torch.Tensor | None,
              coeffs: LIFCoeffs, i_ext: torch.Tensor | None = None, W: torch.Tensor | None = None,
              x: torch.Tensor | None = None, y: torch.Tensor | None = None, pre_spiked: torch.Tensor | None = None,
              stdp: STDPCoeffs | None = None) -> torch.Tensor:
    """One step in plain torch, in place (shapes and order in the module docstring). Returns spiked (N,) bool."""
    v_rest, decay_v, gain_syn, gain_ext, decay_syn, v_reset, v_th = _consts(coeffs, v.dtype, v.device)
    I1 = I + I_in if I_in is not None else I.clone()
    v_new = v_rest + (v - v_rest) * decay_v + I1 * gain_syn
    if i_ext is not None:
        v_new = v_new + i_ext * gain_ext
    refractory = refrac > 0
    spiked = ~refractory & (v_new >= v_th)
    v.copy_(torch.where(refractory | spiked, v_reset, v_new))
    refrac.copy_(torch.where(spiked, coeffs.n_ref, torch.where(refractory, refrac - 1, 0)))
    I.copy_(I1 * decay_syn)
    if W is not None:
        reference_stdp(W, x, y, spiked if pre_spiked is None else pre_spiked, spiked, stdp)
    return spiked


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU).
# ------------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _stdp_phase(W, x, y, pre, post, ks):  # pragma: no cover - compiled
    """W (M, N), x (M,), y (N,), pre (M,) bool, post (N,) bool, ks (6,) in W's dtype: in place."""
    M, N = W.shape
    decay_pre, decay_post, a_plus, a_minus, w_min, w_max = ks[0], ks[1], ks[2], ks[3], ks[4], ks[5]
    for i in prange(M):
        x[i] = x[i] * decay_pre
    for j in prange(N):
        y[j] = y[j] * decay_post
    rows = np.nonzero(pre)[0]
    for r in prange(rows.size):  # distinct rows: no two threads write one weight
        i = rows[r]
        for j in range(N):
            W[i, j] = min(max(W[i, j] - a_minus * y[j], w_min), w_max)
    for i in prange(M):
        if pre[i]:
            x[i] = x[i] + 1
    cols = np.nonzero(post)[0]
    if cols.size:
        for i in prange(M):
            dw = a_plus * x[i]
            for c in range(cols.size):
                j = cols[c]
                W[i, j] = min(max(W[i, j] + dw, w_min), w_max)
    for j in prange(N):
        if post[j]:
            y[j] = y[j] + 1


@njit(parallel=True, cache=True)
def _lif_step(v, I, refrac, I_in, i_ext, k, n_ref, spiked, W, x, y, pre, recurrent, ks):  # pragma: no cover
    """The fused step: v, I, I_in, i_ext (N,) and k (7,) in one float dtype; refrac (N,) int32; spiked (N,) bool
    (written). W.shape == (0, 0) means no plasticity; recurrent: the pre spikes are ``spiked``."""
    v_rest, decay_v, gain_syn, gain_ext, decay_syn, v_reset, v_th = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
    for i in prange(v.shape[0]):
        I1 = I[i] + I_in[i]
        if refrac[i] > 0:
            v[i] = v_reset
            refrac[i] = refrac[i] - 1
            spiked[i] = False
        else:
            vi = v_rest + (v[i] - v_rest) * decay_v + I1 * gain_syn + i_ext[i] * gain_ext
            if vi >= v_th:
                v[i] = v_reset
                refrac[i] = n_ref
                spiked[i] = True
            else:
                v[i] = vi
                spiked[i] = False
        I[i] = I1 * decay_syn
    if W.shape[0] > 0 or W.shape[1] > 0:
        _stdp_phase(W, x, y, spiked if recurrent else pre, spiked, ks)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def numba_stdp_step(W, x, y, pre_spiked, post_spiked, stdp: STDPCoeffs) -> None:
    """The plasticity phase on the CPU (inputs checked by ``stdp_step``; contiguous), in place."""
    ks = _np(_stdp_consts(stdp, W.dtype, "cpu"))
    _stdp_phase(_np(W), _np(x), _np(y), _np(pre_spiked), _np(post_spiked), ks)


def numba_lif_step(v, I, refrac, I_in, coeffs: LIFCoeffs, i_ext=None, W=None, x=None, y=None, pre_spiked=None,
                   stdp: STDPCoeffs | None = None) -> torch.Tensor:
    """One fused step on the CPU (inputs checked by ``lif_step``; contiguous), in place. Returns spiked (N,) bool."""
    N = v.shape[0]
    npdt = _np(v).dtype
    zeros = np.zeros(N, npdt)
    spiked = np.empty(N, np.bool_)
    k = _np(_consts(coeffs, v.dtype, "cpu"))
    if W is None:
        Wn, xn, yn, pre, ks = np.empty((0, 0), npdt), zeros[:0], zeros[:0], spiked[:0], np.zeros(6, npdt)
    else:
        Wn, xn, yn = _np(W), _np(x), _np(y)
        pre = spiked if pre_spiked is None else _np(pre_spiked)
        ks = _np(_stdp_consts(stdp, W.dtype, "cpu"))
    _lif_step(_np(v), _np(I), _np(refrac), zeros if I_in is None else _np(I_in),
              zeros if i_ext is None else _np(i_ext), k, int(coeffs.n_ref), spiked, Wn, xn, yn, pre,
              pre_spiked is None, ks)
    return torch.from_numpy(spiked)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU).
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _lif_kernel(v_ptr, i_ptr, ref_ptr, in_ptr, ext_ptr, k_ptr, spk_ptr, N, n_ref,
                    HAS_IN: tl.constexpr, HAS_EXT: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        v_rest = tl.load(k_ptr + 0)
        decay_v = tl.load(k_ptr + 1)
        gain_syn = tl.load(k_ptr + 2)
        gain_ext = tl.load(k_ptr + 3)
        decay_syn = tl.load(k_ptr + 4)
        v_reset = tl.load(k_ptr + 5)
        v_th = tl.load(k_ptr + 6)
        v = tl.load(v_ptr + offs, mask=m, other=0.0)
        cur = tl.load(i_ptr + offs, mask=m, other=0.0)
        if HAS_IN:
            cur = cur + tl.load(in_ptr + offs, mask=m, other=0.0)
        r = tl.load(ref_ptr + offs, mask=m, other=0)
        vi = v_rest + (v - v_rest) * decay_v + cur * gain_syn
        if HAS_EXT:
            vi = vi + tl.load(ext_ptr + offs, mask=m, other=0.0) * gain_ext
        refractory = r > 0
        spk = (r == 0) & (vi >= v_th)
        tl.store(v_ptr + offs, tl.where(refractory | spk, v_reset, vi), mask=m)
        tl.store(ref_ptr + offs, tl.where(spk, n_ref, tl.where(refractory, r - 1, 0)).to(tl.int32), mask=m)
        tl.store(i_ptr + offs, cur * decay_syn, mask=m)
        tl.store(spk_ptr + offs, spk.to(tl.int8), mask=m)

    @triton.jit
    def _depress_kernel(w_ptr, y_ptr, rows_ptr, ks_ptr, N, BLOCK_N: tl.constexpr):
        i = tl.load(rows_ptr + tl.program_id(0)).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = cols < N
        a_minus = tl.load(ks_ptr + 3)
        w_min = tl.load(ks_ptr + 4)
        w_max = tl.load(ks_ptr + 5)
        w = tl.load(w_ptr + i * N + cols, mask=m, other=0.0)
        yv = tl.load(y_ptr + cols, mask=m, other=0.0)
        tl.store(w_ptr + i * N + cols, tl.minimum(tl.maximum(w - a_minus * yv, w_min), w_max), mask=m)

    @triton.jit
    def _potentiate_kernel(w_ptr, x_ptr, cols_ptr, ks_ptr, M, N, S, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        sidx = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
        rm = rows < M
        sm = sidx < S
        cols = tl.load(cols_ptr + sidx, mask=sm, other=0)
        a_plus = tl.load(ks_ptr + 2)
        w_min = tl.load(ks_ptr + 4)
        w_max = tl.load(ks_ptr + 5)
        xv = tl.load(x_ptr + rows, mask=rm, other=0.0)
        dw = a_plus * xv
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]
        m2 = rm[:, None] & sm[None, :]
        w = tl.load(w_ptr + offs, mask=m2, other=0.0)
        tl.store(w_ptr + offs, tl.minimum(tl.maximum(w + dw[:, None], w_min), w_max), mask=m2)


def _launch_opts(device: torch.device) -> dict:
    # No FMA contraction on the GPU, so v_rest + (v − v_rest)·decay_v + … rounds as in the reference.
    return {} if device.type != "cuda" or triton_interpret() else {"enable_fp_fusion": False}


def triton_stdp_step(W, x, y, pre_spiked, post_spiked, stdp: STDPCoeffs, block_n: int | None = None,
                     block_m: int | None = None) -> None:
    """The plasticity phase with Triton (inputs checked by ``stdp_step``; contiguous), in place."""
    if triton is None:
        raise RuntimeError("triton_stdp_step needs the triton package (pip install triton; Linux + CUDA)")
    M, N = W.shape
    device = W.device
    ks = _stdp_consts(stdp, W.dtype, device)
    gpu = device.type == "cuda" and not triton_interpret()
    p2 = triton.next_power_of_2
    x.mul_(ks[0])
    y.mul_(ks[1])
    rows = torch.nonzero(pre_spiked).flatten()
    if rows.numel() and N:
        bn = block_n or (1024 if gpu else max(16, p2(N)))
        _depress_kernel[(rows.numel(), triton.cdiv(N, bn))](W, y, rows, ks, N, BLOCK_N=bn, **_launch_opts(device))
    x.add_(pre_spiked.to(x.dtype))
    cols = torch.nonzero(post_spiked).flatten()
    if cols.numel() and M:
        S = cols.numel()
        bm = block_m or (64 if gpu else max(16, p2(M)))
        bs = 32 if gpu else max(16, p2(S))
        _potentiate_kernel[(triton.cdiv(M, bm), triton.cdiv(S, bs))](W, x, cols, ks, M, N, S, BLOCK_M=bm,
                                                                      BLOCK_S=bs, **_launch_opts(device))
    y.add_(post_spiked.to(y.dtype))


def triton_lif_step(v, I, refrac, I_in, coeffs: LIFCoeffs, i_ext=None, W=None, x=None, y=None, pre_spiked=None,
                    stdp: STDPCoeffs | None = None, block: int | None = None) -> torch.Tensor:
    """One step with Triton (inputs checked by ``lif_step``; contiguous), in place. Returns spiked (N,) bool.
    ``block`` (a power of two) overrides the neurons per program (1024 on a GPU; all of them in the interpreter)."""
    if triton is None:
        raise RuntimeError("triton_lif_step needs the triton package (pip install triton; Linux + CUDA)")
    N = v.shape[0]
    device = v.device
    spk = torch.zeros(N, dtype=torch.int8, device=device)
    if N:
        if block is None:
            block = 1024 if device.type == "cuda" and not triton_interpret() else max(16, triton.next_power_of_2(N))
        k = _consts(coeffs, v.dtype, device)
        _lif_kernel[(triton.cdiv(N, block),)](
            v, I, refrac, v if I_in is None else I_in, v if i_ext is None else i_ext, k, spk, N, int(coeffs.n_ref),
            HAS_IN=I_in is not None, HAS_EXT=i_ext is not None, BLOCK=block, **_launch_opts(device))
    spiked = spk.bool()
    if W is not None:
        triton_stdp_step(W, x, y, spiked if pre_spiked is None else pre_spiked, spiked, stdp)
    return spiked


# ------------------------------------------------------------------------------------------------------
# 4. The public ops.
# ------------------------------------------------------------------------------------------------------


def _check_vec(name: str, t, N: int, dtype: torch.dtype, device: torch.device, what: str = "") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != (N,):
        raise ValueError(f"{name} must have shape ({what or 'N'},) = ({N},), got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def _check_stdp(W, x, y, pre_spiked, stdp, N: int, dtype, device, recurrent_ok: bool) -> None:
    if not isinstance(stdp, STDPCoeffs):
        raise TypeError(f"stdp must be an STDPCoeffs (STDPParams.coefficients(dt)), got {type(stdp).__name__}")
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"W must be a 2-D tensor (M, N), got {getattr(W, 'shape', type(W).__name__)}")
    M = W.shape[0]
    if W.shape[1] != N:
        raise ValueError(f"W must have N = {N} columns (one per postsynaptic neuron), got shape {tuple(W.shape)}")
    if W.dtype != dtype or W.device != device:
        raise TypeError(f"W must be {dtype} on {device}, got {W.dtype} on {W.device}")
    _check_vec("x", x, M, dtype, device, "M")
    _check_vec("y", y, N, dtype, device)
    if pre_spiked is None:
        if not recurrent_ok:
            raise ValueError("pre_spiked must be given")
        if M != N:
            raise ValueError(f"pre_spiked=None means recurrent synapses, so W must be square (N, N) = ({N}, {N}), "
                             f"got {tuple(W.shape)}")
    else:
        _check_vec("pre_spiked", pre_spiked, M, torch.bool, device, "M")


def _contig(tensors: dict) -> tuple[dict, list]:
    """Contiguous versions of the given tensors and the (original, copy) pairs to write back after the step."""
    out, back = {}, []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and not t.is_contiguous():
            c = t.contiguous()
            out[name] = c
            back.append((t, c))
        else:
            out[name] = t
    return out, back


def lif_step(v: torch.Tensor, I: torch.Tensor, refrac: torch.Tensor, I_in: torch.Tensor | None,
             coeffs: LIFCoeffs, i_ext: torch.Tensor | None = None, *, W: torch.Tensor | None = None,
             x: torch.Tensor | None = None, y: torch.Tensor | None = None, pre_spiked: torch.Tensor | None = None,
             stdp: STDPCoeffs | None = None, backend: str = "auto") -> torch.Tensor:
    """Advance N LIF neurons by one step, in place, and apply the STDP of one dense synapse group onto them.

    v, I: (N,) float32 or float64 (membrane potential, synaptic current); refrac: (N,) int32 (refractory steps left);
    I_in: (N,) the input current arriving this step (the delay buffer's slot) or None; coeffs: ``LIFCoeffs``
    (``LIFParams.coefficients(dt)``); i_ext: (N,) an external current held over the step, or None.
    Plasticity (all of W, x, y, stdp, or none): W (M, N) weights from M presynaptic neurons (row = pre), x (M,) pre
    traces, y (N,) post traces, pre_spiked (M,) bool the presynaptic spikes of this step (None: recurrent, M = N,
    the pre spikes are this step's spikes), stdp: ``STDPCoeffs``. Returns spiked (N,) bool.
    backend: "auto" | "torch" | "numba" (CPU) | "triton" (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    """
    if not isinstance(coeffs, LIFCoeffs):
        raise TypeError(f"coeffs must be a LIFCoeffs (LIFParams.coefficients(dt)), got {type(coeffs).__name__}")
    if not isinstance(v, torch.Tensor) or v.dim() != 1:
        raise ValueError(f"v must be a 1-D tensor (N,), got {getattr(v, 'shape', type(v).__name__)}")
    if v.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"v must be float32 or float64, got {v.dtype}")
    N, dtype, device = v.shape[0], v.dtype, v.device
    _check_vec("I", I, N, dtype, device)
    _check_vec("refrac", refrac, N, torch.int32, device)
    if I_in is not None:
        _check_vec("I_in", I_in, N, dtype, device)
    if i_ext is not None:
        _check_vec("i_ext", i_ext, N, dtype, device)
    plastic = [a is not None for a in (W, x, y, stdp)]
    if any(plastic) and not all(plastic):
        raise ValueError("W, x, y and stdp must be given together (plasticity) or not at all")
    if W is not None:
        _check_stdp(W, x, y, pre_spiked, stdp, N, dtype, device, recurrent_ok=True)
    elif pre_spiked is not None:
        raise ValueError("pre_spiked is given without W, x, y, stdp")
    if coeffs.n_ref < 0:
        raise ValueError(f"coeffs.n_ref must be >= 0, got {coeffs.n_ref}")
    backend = resolve_backend(backend, device, op="lif_step")
    args, back = _contig(dict(v=v, I=I, refrac=refrac, I_in=I_in, i_ext=i_ext, W=W, x=x, y=y,
                              pre_spiked=pre_spiked))
    fn = {"torch": reference, "numba": numba_lif_step, "triton": triton_lif_step}[backend]
    spiked = fn(args["v"], args["I"], args["refrac"], args["I_in"], coeffs, args["i_ext"], args["W"], args["x"],
                args["y"], args["pre_spiked"], stdp)
    for orig, copy in back:
        orig.copy_(copy)
    return spiked


def stdp_step(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pre_spiked: torch.Tensor,
              post_spiked: torch.Tensor, stdp: STDPCoeffs, backend: str = "auto") -> None:
    """The plasticity phase of ``lif_step`` alone, in place: W (M, N) float32/float64, x (M,), y (N,),
    pre_spiked (M,) bool, post_spiked (N,) bool, stdp: ``STDPCoeffs``."""
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"W must be a 2-D tensor (M, N), got {getattr(W, 'shape', type(W).__name__)}")
    if W.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"W must be float32 or float64, got {W.dtype}")
    N = W.shape[1]
    _check_stdp(W, x, y, pre_spiked, stdp, N, W.dtype, W.device, recurrent_ok=False)
    _check_vec("post_spiked", post_spiked, N, torch.bool, W.device)
    backend = resolve_backend(backend, W.device, op="stdp_step")
    args, back = _contig(dict(W=W, x=x, y=y, pre=pre_spiked, post=post_spiked))
    fn = {"torch": reference_stdp, "numba": numba_stdp_step, "triton": triton_stdp_step}[backend]
    fn(args["W"], args["x"], args["y"], args["pre"], args["post"], stdp)
    for orig, copy in back:
        orig.copy_(copy)
