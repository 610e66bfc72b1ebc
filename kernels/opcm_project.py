r"""OPCM's projection (Tang et al., 2025) for every layer of a model in one batched call.

For each 2-D weight ℓ with merged update D_ℓ = U S Vᵀ (thin SVD, U (m, k), V (n, k), k = min(m, n)) and new task
vector τ_ℓ (m, n), r_ℓ = the smallest rank whose singular mass reaches α (``labkit.continual.merging.split_rank``),
and P = Uᵀ τ V (k, k) is τ in D's singular bases. Two projections (``labkit.continual.merging.opcm_project``):

"masked" (the paper's, the default): zero P's diagonal P_ii for every i and its top-left r × r block:

    τ̃ = τ − U_r (U_rᵀ τ V_r) V_rᵀ − Σ_{i ≥ r} P_ii u_i v_iᵀ

Derivation of the low-rank form. The removed part is U M Vᵀ with M (k, k) = blockdiag(C, diag(P_rr, ..., P_kk)),
C = U_rᵀ τ V_r (r, r) = the top-left block of P (its diagonal included, so the diagonal term starts at i = r).
Moving M to the left factor:

    W = Uᵀ τ (k, n),   P_ii = Σ_j W_ij (Vᵀ)_ij,   C = W_{:r} V_r (r, r)
    L = [U_r C | U_{r:k} · diag(P_ii)_{i ≥ r}] (m, k),   Rt = Vᵀ (k, n)
    τ̃ = τ − L Rt                                                                (one pass writing τ̃)

(equivalently [U_r | U_{r:k} diag(P_ii)] · [C V_rᵀ ; V_{r:k}ᵀ]; putting C on the left lets Rt be Vᵀ itself). The
correction has rank k, not 2r: the diagonal term touches every singular pair, so the masked projection costs two
GEMM-sized products (W and L Rt, 2·m·n·k flops each), like the reference's.

"two_sided" (the stricter ablation): τ̃ = (I − U_r U_rᵀ) τ (I − V_r V_rᵀ). Expanding the product gives one
rank-2r correction:

    A = U_rᵀ τ (r, n),   B = τ V_r (m, r),   C = A V_r (r, r),   E = B − U_r C (m, r)
    τ̃ = τ − U_r A − E V_rᵀ = τ − [U_r | E] · [A ; V_rᵀ]                        (one pass writing τ̃)

The layers are grouped by shape; each group is stacked into a batch (G, m, n) and gets ONE batched SVD
(``torch.linalg.svd``, float64 like the reference), one batched rank selection and one batched correction.
Layers of a group have different ranks: U_r, V_r, C are padded to the group's largest r with zero rows / columns
and the diagonal coefficients P_ii are zeroed for i < r_ℓ, which leaves each layer's product unchanged.

Honest notes. The SVD is O(m n min(m, n)) and dominates, and neither Numba nor Triton can beat LAPACK / cuSOLVER
at it, so **every backend computes the SVD with torch** and only the projection differs. The projection itself is
GEMM-shaped; torch's batched ``baddbmm`` (BLAS / cuBLAS) is already the right tool, and the hand-written kernels
below apply the final correction τ − L Rt in one pass over τ, not faster than BLAS (for "masked" the inner dimension
is k, a full GEMM, where a naive kernel loses clearly): they exist so that the whole op has the same structure as
the other kernels (and for teaching). The fused torch path gains only what it saves over the reference's per-layer
Python loop; the SVD bounds the speed-up. D = 0 gives r = 0 and τ̃ = τ in both projections (nothing to protect).
A caveat the reference shares: when D is rank-deficient but not zero, the singular vectors of its zero singular
values are an arbitrary basis chosen by LAPACK, and "masked" removes P_ii in that basis; the backends here agree
with the reference because they call the same SVD.

- ``reference``               the per-layer loop over ``labkit.continual.merging.opcm_project``: the spec.
- ``torch_batched``           group by shape, batched SVD, batched factors L, Rt, one ``baddbmm``: τ − L Rt.
- ``numba_opcm_project``      the same, the final τ − L Rt by a Numba kernel (rows of all layers in parallel).
- ``triton_opcm_project``     the same, the final τ − L Rt by a Triton kernel (one program per (layer, row block)).
- ``opcm_project``            checks the inputs and dispatches by device and ``backend=`` ("torch" = the batched
                              torch path; the unbatched reference is ``reference``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret

Layers = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
PROJECTIONS = ("masked", "two_sided")  # the same names as labkit.continual.merging.PROJECTIONS


def _check_projection(projection: object) -> str:
    if not isinstance(projection, str) or projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    return projection


# ------------------------------------------------------------------------------------------------------
# 1. The reference: chapter 4's opcm_project, layer by layer.
# ------------------------------------------------------------------------------------------------------


def reference(deltas: Sequence[torch.Tensor], taus: Sequence[torch.Tensor], alpha: float = 0.5,
              projection: str = "masked") -> tuple[list[torch.Tensor], list[int]]:
    """deltas[ℓ], taus[ℓ]: (m_ℓ, n_ℓ) -> ([τ̃_ℓ (m_ℓ, n_ℓ) in tau's dtype], [r_ℓ]), one SVD per layer.

    projection: "masked" (the paper's) or "two_sided"."""
    from labkit.continual.merging import opcm_project as project_one

    projection = _check_projection(projection)
    out = [project_one(d, t, alpha, projection) for d, t in zip(deltas, taus, strict=True)]
    return [p for p, _ in out], [r for _, r in out]


# ------------------------------------------------------------------------------------------------------
# 2. The batched factors (shared by every fused backend): one SVD per shape group.
# ------------------------------------------------------------------------------------------------------


def _split_ranks(S: torch.Tensor, alpha: float) -> torch.Tensor:
    """S (G, k) float64 singular values, descending -> (G,) int64 ranks: the smallest r >= 1 whose cumulative
    mass reaches alpha (``split_rank``, batched); 0 for an all-zero D."""
    total = S.sum(1, keepdim=True)
    mass = torch.cumsum(S, 1) / total.clamp(min=torch.finfo(S.dtype).tiny)
    r = ((mass < alpha).sum(1) + 1).clamp(max=S.shape[1])
    return torch.where(total[:, 0] > 0, r, torch.zeros_like(r))


def _factors(D: torch.Tensor, tau: torch.Tensor, alpha: float, projection: str = "masked"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D, tau (G, m, n) -> (L (G, m, K), Rt (G, K, n), ranks (G,)) in float64 with τ̃ = τ − L Rt.

    "masked": K = k = min(m, n), L = [U_r C | U_{r:k} diag(P_ii)], Rt = Vᵀ. "two_sided": K = 2R (R = the group's
    largest rank), L = [U_r | E], Rt = [A ; V_rᵀ]. Columns past each layer's rank are zero (see the module doc)."""
    U, S, Vh = torch.linalg.svd(D.double(), full_matrices=False)
    ranks = _split_ranks(S, alpha)
    R = max(int(ranks.max()), 1)
    keep = (torch.arange(R, device=D.device)[None, :] < ranks[:, None]).double()  # (G, R)
    Ur = U[:, :, :R] * keep[:, None, :]  # zero columns past each layer's rank
    Vr = Vh[:, :R, :].transpose(1, 2) * keep[:, None, :]  # (G, n, R)
    t = tau.double()
    if projection == "masked":
        W = U.transpose(1, 2) @ t  # Uᵀ τ (G, k, n)
        diag = (W * Vh).sum(2)  # P_ii (G, k)
        below = torch.arange(U.shape[2], device=D.device)[None, :] >= ranks[:, None]  # i ≥ r_ℓ (G, k)
        below &= (ranks > 0)[:, None]  # r = 0 (D = 0): nothing to protect, τ̃ = τ (the reference's rule)
        C = W[:, :R] @ Vr  # U_rᵀ τ V_r (G, R, R); rows past r_ℓ are zero through Vr's columns and Ur below
        L = U * (diag * below)[:, None, :]  # U_{r:k} diag(P_ii)
        L[:, :, :R] += Ur @ C  # + U_r C (Ur's zero columns drop C's padded rows)
        return L, Vh, ranks
    A = Ur.transpose(1, 2) @ t  # (G, R, n)
    B = t @ Vr  # (G, m, R)
    E = B - Ur @ (A @ Vr)  # (G, m, R)
    return torch.cat([Ur, E], 2), torch.cat([A, Vr.transpose(1, 2)], 1), ranks


def _groups(deltas: Sequence[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, d in enumerate(deltas):
        groups.setdefault(tuple(d.shape), []).append(i)
    return groups


def _batched(deltas, taus, alpha, projection, apply) -> tuple[list[torch.Tensor], list[int]]:
    """Group by shape, factor each group, and let ``apply(tau64 (G, m, n), L, Rt) -> τ̃ (G, m, n)`` finish."""
    projection = _check_projection(projection)
    out: list[torch.Tensor | None] = [None] * len(deltas)
    ranks = [0] * len(deltas)
    for idx in _groups(deltas).values():
        D = torch.stack([deltas[i] for i in idx])
        tau = torch.stack([taus[i] for i in idx])
        L, Rt, r = _factors(D, tau, alpha, projection)
        proj = apply(tau.double(), L, Rt)
        for g, i in enumerate(idx):
            out[i] = proj[g].to(taus[i].dtype)
            ranks[i] = int(r[g])
    return out, ranks


def torch_batched(deltas: Sequence[torch.Tensor], taus: Sequence[torch.Tensor], alpha: float = 0.5,
                  projection: str = "masked") -> tuple[list[torch.Tensor], list[int]]:
    """The fused torch path (any device): batched SVD and one ``baddbmm`` τ − L Rt per shape group."""
    return _batched(deltas, taus, alpha, projection, lambda t, L, Rt: torch.baddbmm(t, L, Rt, alpha=-1.0))


# ------------------------------------------------------------------------------------------------------
# 3. Numba (CPU): the final correction τ − L Rt, rows of every layer of a group in parallel.
# ------------------------------------------------------------------------------------------------------


@njit(parallel=True, fastmath=True, cache=True)
def _correct_rows(tau, L, Rt, out):  # pragma: no cover - compiled
    """tau, out (G, m, n); L (G, m, K); Rt (G, K, n), float64: out = tau − L @ Rt, one (layer, row) per task."""
    G, m, n = tau.shape
    K = L.shape[2]
    for gi in prange(G * m):
        g = gi // m
        i = gi - g * m
        row = out[g, i]
        for j in range(n):
            row[j] = tau[g, i, j]
        for c in range(K):
            lc = L[g, i, c]
            if lc != 0.0:
                for j in range(n):
                    row[j] -= lc * Rt[g, c, j]


def _numba_apply(t: torch.Tensor, L: torch.Tensor, Rt: torch.Tensor) -> torch.Tensor:
    out = np.empty(tuple(t.shape), np.float64)
    _correct_rows(t.contiguous().numpy(), L.contiguous().numpy(), Rt.contiguous().numpy(), out)
    return torch.from_numpy(out)


def numba_opcm_project(deltas: Sequence[torch.Tensor], taus: Sequence[torch.Tensor], alpha: float = 0.5,
                       projection: str = "masked") -> tuple[list[torch.Tensor], list[int]]:
    """Batched SVD and factors with torch; the correction τ − L Rt with Numba (inputs checked by ``opcm_project``)."""
    return _batched(deltas, taus, alpha, projection, _numba_apply)


# ------------------------------------------------------------------------------------------------------
# 4. Triton (GPU): the final correction, one program per (layer, block of rows), all columns in blocks.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _correct_kernel(t_ptr, l_ptr, r_ptr, o_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        g = tl.program_id(0).to(tl.int64)
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        mrow = rows < M
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            mcol = cols < N
            offs = g * M * N + rows[:, None] * N + cols[None, :]
            msk = mrow[:, None] & mcol[None, :]
            acc = tl.load(t_ptr + offs, mask=msk, other=0.0)
            for c in range(K):
                lc = tl.load(l_ptr + g * M * K + rows * K + c, mask=mrow, other=0.0)
                rc = tl.load(r_ptr + g * K * N + c * N + cols, mask=mcol, other=0.0)
                acc -= lc[:, None] * rc[None, :]
            tl.store(o_ptr + offs, acc, mask=msk)


def _triton_apply(t: torch.Tensor, L: torch.Tensor, Rt: torch.Tensor) -> torch.Tensor:
    G, M, N = t.shape
    K = L.shape[2]
    interp = triton_interpret() or t.device.type != "cuda"
    block_m = triton.next_power_of_2(M) if interp else 16
    block_n = triton.next_power_of_2(N) if interp else 128
    t, L, Rt = t.contiguous(), L.contiguous(), Rt.contiguous()
    out = torch.empty_like(t)
    _correct_kernel[(G, triton.cdiv(M, block_m))](t, L, Rt, out, M, N, K, BLOCK_M=block_m, BLOCK_N=block_n)
    return out


def triton_opcm_project(deltas: Sequence[torch.Tensor], taus: Sequence[torch.Tensor], alpha: float = 0.5,
                        projection: str = "masked") -> tuple[list[torch.Tensor], list[int]]:
    """Batched SVD and factors with torch; the correction τ − L Rt with Triton (inputs checked by
    ``opcm_project``). float64 inside, like the reference (a GPU's fp64 rate bounds it; the SVD dominates)."""
    if triton is None:
        raise RuntimeError("triton_opcm_project needs the triton package (pip install triton; Linux + CUDA)")
    return _batched(deltas, taus, alpha, projection, _triton_apply)


# ------------------------------------------------------------------------------------------------------
# 5. The public op.
# ------------------------------------------------------------------------------------------------------


def opcm_project(deltas: Layers, taus: Layers, alpha: float = 0.5, backend: str = "auto", projection: str = "masked"
                 ) -> tuple[list[torch.Tensor], list[int]] | tuple[dict[str, torch.Tensor], dict[str, int]]:
    """OPCM's τ̃_ℓ for every layer ℓ at once (U, V from D_ℓ's SVD, r by α's mass, P = Uᵀ τ_ℓ V).

    projection: "masked" (the paper's: zero P's diagonal and its top-left r × r block) or "two_sided"
    (τ̃ = (I − U_r U_rᵀ) τ (I − V_r V_rᵀ)); see the module docstring.
    deltas, taus: sequences of 2-D tensors (m_ℓ, n_ℓ), pairwise of one shape (or two dicts with the same names).
    alpha in (0, 1). Returns (τ̃ per layer in tau's dtype, r per layer) as lists, or dicts for dict inputs.
    backend: "auto" | "torch" (batched torch) | "numba" (CPU) | "triton" (CUDA, or CPU under TRITON_INTERPRET=1);
    the SVD is torch's in every backend.
    """
    projection = _check_projection(projection)
    names = None
    if isinstance(deltas, Mapping) or isinstance(taus, Mapping):
        if not (isinstance(deltas, Mapping) and isinstance(taus, Mapping)):
            raise TypeError("deltas and taus must both be sequences or both be dicts")
        if list(deltas) != list(taus):
            raise ValueError(f"deltas and taus must have the same names, got {list(deltas)} and {list(taus)}")
        names = list(deltas)
        deltas, taus = [deltas[n] for n in names], [taus[n] for n in names]
    deltas, taus = list(deltas), list(taus)
    if len(deltas) != len(taus):
        raise ValueError(f"taus must hold one tensor per delta ({len(deltas)}), got {len(taus)}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) \
            or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    for i, (d, t) in enumerate(zip(deltas, taus, strict=True)):
        label = names[i] if names else i
        for name, x in (("deltas", d), ("taus", t)):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                got = getattr(x, "dtype", type(x).__name__)
                raise TypeError(f"{name}[{label!r}] must be a floating-point tensor, got {got}")
        if d.dim() != 2 or d.shape != t.shape:
            raise ValueError(f"deltas[{label!r}] and taus[{label!r}] must be 2-D of one shape, "
                             f"got {tuple(d.shape)} and {tuple(t.shape)}")
        if d.numel() == 0:
            raise ValueError(f"deltas[{label!r}] must not be empty, got shape {tuple(d.shape)}")
    devices = {x.device for x in deltas + taus}
    if len(devices) > 1:
        raise ValueError(f"deltas and taus must be on one device, got {sorted(map(str, devices))}")
    device = deltas[0].device if deltas else torch.device("cpu")
    backend = resolve_backend(backend, device, op="opcm_project")
    run = {"torch": torch_batched, "numba": numba_opcm_project, "triton": triton_opcm_project}[backend]
    projected, ranks = run(deltas, taus, float(alpha), projection) if deltas else ([], [])
    if names is not None:
        return dict(zip(names, projected, strict=True)), dict(zip(names, ranks, strict=True))
    return projected, ranks
