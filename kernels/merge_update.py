r"""One pass of a continual merger over flat parameters: update the running state, write the merged model and
the squared norm of the new state together.

With θ_0 = ``w0`` the base, D = ``delta`` the merger's running state and τ = ``tau`` the new (possibly projected)
task vector, all (P,) (any shape, read as flat), and scalars β (``beta``), μ (``mu``), λ (``lam``):

    D_new  = β D + μ τ                 (float32)
    merged = θ_0 + λ D_new             (w0's dtype; skipped when w0 is None)
    sq     = ‖D_new‖² = Σ_j D_new[j]²  (accumulated in float64)

The form asked for, merged = θ_0 + λ (D + μ τ), is the case β = 1; β lets the running *mean* use the same pass.
How the continual mergers of ``labkit.continual.merging`` map onto it (t = the number of models after the update):

- ``ContinualTaskArithmetic(scale)``: D = Σ_{i<t} τ_i, β = μ = 1, λ = scale: D_new = Σ_{i≤t} τ_i and
  merged = θ_0 + scale · Σ τ_i (sq unused).
- ``ContinualAverage``: β = 1 − 1/t, μ = 1/t, λ = 1: D_new = (1 − 1/t) D + τ/t, the running mean (the merger writes
  it D + (τ − D)/t: equal up to fp32 rounding).
- ``OPCM``: D = the accumulated projected updates, τ = τ̃ from ``opcm_project``, β = μ = 1, ``w0=None``:
  D_new = D + τ̃ and sq = ‖D_new‖², summed over the 2-D weights, gives λ_t = ‖D_new‖ / m_t (m_t the running mean of
  ‖τ_i‖). λ_t depends on the norm of the whole new state, so merged = θ_0 + D_new / λ_t cannot be written in the
  same pass; it is a second call (``merge_update(w0, D_new, zeros, lam=1/λ_t)``, or plain torch) made only when
  the merged model is wanted. Per update OPCM then reads D and τ̃ once and writes D_new once.

Merging is memory-bound (three flops per element): the torch ``reference`` makes ~6 passes over P (β D, μ τ, their
sum, λ D_new, θ_0 + ..., the float64 square-sum), each reading and writing 4 bytes per element. The fused kernels
read θ_0, D, τ once and write merged and D_new once: 20 bytes per element, the roofline.

- ``reference``              plain torch, separate ops, the spec.
- ``numba_merge_update``     CPU: fixed chunks of 64K elements in parallel; each chunk keeps a float64 partial
                             sum of squares, added in chunk order (deterministic, whatever the thread count).
- ``triton_merge_update``    GPU: one program per BLOCK elements; float64 partial sums per program, added by torch.
- ``merge_update``           checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret

# ------------------------------------------------------------------------------------------------------
# 1. The reference.
# ------------------------------------------------------------------------------------------------------


def reference(
    w0: torch.Tensor | None,
    delta: torch.Tensor,
    tau: torch.Tensor,
    mu: float = 1.0,
    lam: float = 1.0,
    beta: float = 1.0,
) -> tuple[torch.Tensor | None, torch.Tensor, float]:
    """w0 (P,) or None, delta (P,), tau (P,) (any one shape) -> (merged like w0 or None, delta_new float32 like
    delta, sq = ‖delta_new‖² as a Python float, accumulated in float64). Separate torch ops, fp32 inside."""
    d_new = beta * delta.float() + mu * tau.float()
    merged = None if w0 is None else (w0.float() + lam * d_new).to(w0.dtype)
    sq = float(d_new.double().square().sum())
    return merged, d_new, sq


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU).
# ------------------------------------------------------------------------------------------------------

_CHUNK = 1 << 16  # elements per parallel task: 5 x 256 KiB of traffic, big enough to amortise scheduling


@njit(parallel=True, cache=True)
def _merge_chunks(w0, delta, tau, beta, mu, lam, has_w0, merged, d_new, partial):  # pragma: no cover - compiled
    """w0, delta, tau, merged, d_new: (P,) float32 (w0/merged unused when not has_w0); partial: (n_chunks,) f64."""
    P = delta.shape[0]
    for c in prange(partial.shape[0]):
        lo = c * _CHUNK
        hi = min(lo + _CHUNK, P)
        acc = 0.0
        for j in range(lo, hi):
            d = beta * delta[j] + mu * tau[j]
            d_new[j] = d
            acc += np.float64(d) * np.float64(d)
            if has_w0:
                merged[j] = w0[j] + lam * d
        partial[c] = acc


def _f32(x: torch.Tensor) -> np.ndarray:
    """A flat C-contiguous float32 numpy view (no copy when x already is contiguous fp32 on the CPU)."""
    return x.detach().to(torch.float32).contiguous().reshape(-1).numpy()


def numba_merge_update(
    w0: torch.Tensor | None, delta: torch.Tensor, tau: torch.Tensor, mu: float = 1.0, lam: float = 1.0,
    beta: float = 1.0, inplace: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor, float]:
    """The fused pass on the CPU (inputs checked by ``merge_update``). ``inplace``: write D_new into delta (each
    element is read before it is written, so they may alias)."""
    shape, P = delta.shape, delta.numel()
    d_in = _f32(delta)
    d_new = d_in if inplace else np.empty(P, np.float32)
    has_w0 = w0 is not None
    w = _f32(w0) if has_w0 else d_in
    merged = np.empty(P, np.float32) if has_w0 else d_new
    partial = np.zeros((P + _CHUNK - 1) // _CHUNK, np.float64)
    f = np.float32
    _merge_chunks(w, d_in, _f32(tau), f(beta), f(mu), f(lam), has_w0, merged, d_new, partial)
    m = torch.from_numpy(merged).reshape(shape).to(w0.dtype) if has_w0 else None
    return m, delta if inplace else torch.from_numpy(d_new).reshape(shape), float(partial.sum())


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU).
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _merge_kernel(w0_ptr, d_ptr, t_ptr, m_ptr, dn_ptr, part_ptr, P, beta, mu, lam,
                      HAS_W0: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < P
        d = tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dn = beta * d + mu * t
        tl.store(dn_ptr + offs, dn, mask=mask)
        if HAS_W0:
            w = tl.load(w0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(m_ptr + offs, w + lam * dn, mask=mask)
        dn64 = dn.to(tl.float64)
        tl.store(part_ptr + pid, tl.sum(dn64 * dn64, 0))


def triton_merge_update(
    w0: torch.Tensor | None, delta: torch.Tensor, tau: torch.Tensor, mu: float = 1.0, lam: float = 1.0,
    beta: float = 1.0, inplace: bool = False, block: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, float]:
    """The fused pass with Triton (inputs checked by ``merge_update``). ``block`` (a power of two) overrides the
    elements per program (default 4096 on a GPU; 1/16 of P, at least 1024, in the interpreter: few programs)."""
    if triton is None:
        raise RuntimeError("triton_merge_update needs the triton package (pip install triton; Linux + CUDA)")
    shape, P, device = delta.shape, delta.numel(), delta.device
    if block is None:
        block = 4096 if device.type == "cuda" and not triton_interpret() else \
            max(1024, triton.next_power_of_2(max(1, P // 16)))
    d = delta.reshape(-1) if inplace else delta.contiguous().reshape(-1)
    t = tau.contiguous().reshape(-1)
    d_new = d if inplace else torch.empty(P, dtype=torch.float32, device=device)
    direct = device.type == "cuda" and not triton_interpret()  # the interpreter mishandles 16-bit stores
    if w0 is not None:
        w = w0.contiguous().reshape(-1)
        merged = torch.empty(P, dtype=w0.dtype if direct else torch.float32, device=device)
    else:
        w = merged = d_new  # dummy pointers
    grid = triton.cdiv(P, block)
    partial = torch.empty(grid, dtype=torch.float64, device=device)
    _merge_kernel[(grid,)](w, d, t, merged, d_new, partial, P, float(beta), float(mu), float(lam),
                           HAS_W0=w0 is not None, BLOCK=block)
    m = None if w0 is None else merged.reshape(shape).to(w0.dtype)
    return m, delta if inplace else d_new.reshape(shape), float(partial.sum())


# ------------------------------------------------------------------------------------------------------
# 4. The public op.
# ------------------------------------------------------------------------------------------------------


def merge_update(
    w0: torch.Tensor | None,
    delta: torch.Tensor,
    tau: torch.Tensor,
    mu: float = 1.0,
    lam: float = 1.0,
    beta: float = 1.0,
    inplace: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor | None, torch.Tensor, float]:
    """D_new = β·delta + μ·tau, merged = w0 + λ·D_new, sq = ‖D_new‖² (float64) in one pass.

    w0: (P,) base parameters or None (then merged is None: only the state is updated); delta: (P,) the running
    state; tau: (P,) the new task vector; one shape for all three (any number of dimensions: read as flat).
    Returns (merged in w0's dtype or None, D_new float32 of delta's shape, sq a Python float). ``inplace=True``
    overwrites delta (a contiguous float32 tensor) with D_new and returns it.
    backend: "auto" | "torch" | "numba" (CPU) | "triton" (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    """
    mu, lam, beta = (_check_scalar(n, v) for n, v in (("mu", mu), ("lam", lam), ("beta", beta)))
    tensors = {"delta": delta, "tau": tau} if w0 is None else {"w0": w0, "delta": delta, "tau": tau}
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floating-point numbers, got {x.dtype}")
        if x.shape != delta.shape:
            raise ValueError(f"{name} must have delta's shape {tuple(delta.shape)}, got {tuple(x.shape)}")
    devices = {x.device for x in tensors.values()}
    if len(devices) > 1:
        raise ValueError(f"{', '.join(tensors)} must be on one device, got {sorted(map(str, devices))}")
    if inplace and (delta.dtype != torch.float32 or not delta.is_contiguous()):
        raise ValueError(f"inplace=True needs delta to be a contiguous float32 tensor, got {delta.dtype}"
                         f"{'' if delta.is_contiguous() else ' (not contiguous)'}")
    backend = resolve_backend(backend, delta.device, op="merge_update")
    if delta.numel() == 0 or backend == "torch":
        merged, d_new, sq = reference(w0, delta, tau, mu, lam, beta)
        return (merged, delta.copy_(d_new), sq) if inplace else (merged, d_new, sq)
    if backend == "numba":
        return numba_merge_update(w0, delta, tau, mu, lam, beta, inplace=inplace)
    return triton_merge_update(w0, delta, tau, mu, lam, beta, inplace=inplace)


def _check_scalar(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)
