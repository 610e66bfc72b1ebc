r"""Orthogonality as a tool: an orthogonal dictionary learned online, and orthogonal convolutional layers.

**Online orthogonal dictionary learning** (Xue & Lau, "Online Orthogonal Dictionary Learning Based on
Frank-Wolfe Method"). Data y ∈ ℝⁿ arrive one batch at a time, y = D₀ x with D₀ ∈ O(n) and x sparse. For an
orthogonal D the code is x̂ = Dᵀy, and a D that makes Dᵀy as spiky as possible recovers D₀ up to signs and a
permutation. We maximise the sparsity-promoting ℓ_p objective (p = 4 by default, as in ℓ⁴ "MSP" dictionary
learning; p = 3 also works) f(D) = E ‖Dᵀy‖_p^p, with the constraint O(n) *relaxed* to its convex hull, the
spectral-norm ball B = {D : ‖D‖₂ ≤ 1}. On B, Frank-Wolfe needs only a linear minimisation oracle, and

    LMO(G) = argmin_{S ∈ B} ⟨G, S⟩ = −U Vᵀ     (G = U Σ Vᵀ; the minimiser is the negative polar factor of G),

an orthogonal matrix. The online algorithm keeps a running gradient estimate and takes a FW step:

    Ĝ_t = (1 − ρ_t) Ĝ_{t−1} + ρ_t ∇f_t(D_{t−1}),   S_t = LMO(−Ĝ_t) = polar(Ĝ_t),   D_t = (1 − γ_t) D_{t−1} + γ_t S_t

with ∇f_t(D) = (1/b) Y_t (p |Z|^{p−1} ⊙ sign Z)ᵀ, Z = Dᵀ Y_t on the t-th batch Y_t: (n, b), ρ_t = t^{−1/2},
γ_t = t^{−3/4} (the schedule behind an O(ln t / t^{1/4})-type rate; our choice, the exponents are arguments).
D_t stays in B; the dictionary reported is its polar factor, exactly orthogonal. Nothing but Ĝ and D (two n×n
matrices) is stored. The batch baselines see all samples: alternating minimisation with a hard-threshold code
and a Procrustes dictionary update (X = H_λ(DᵀY), D = polar(Y Xᵀ)) and batch MSP (D = polar(∇f(D)) on all Y).

**Orthogonal convolutions** (Achour, Malgouyres & Mamalet, "Existence, Stability and Scalability of Orthogonal
Convolutional Neural Networks"). Setting here: 2-D convolution, stride 1, *circular* padding, odd k, inputs
(C_in, n, n). The layer is a linear map W: (C_out n², C_in n²); it is row-orthogonal when W Wᵀ = I (possible
only if C_out ≤ C_in) and column-orthogonal when Wᵀ W = I (C_out ≥ C_in). W W ᵀ is itself a circular
convolution whose kernel is K's self-correlation conv(K, K) (size 2k−1), so Wang et al.'s regulariser

    L_row(K) = ‖conv(K, K, padding k−1) − δ‖_F²           (δ: identity in channels, impulse at the centre)

satisfies, when n ≥ 2k − 1 (no wrap-around), ‖W Wᵀ − I‖_F² = n² L_row(K); the same with K's channels swapped
gives L_col and ‖Wᵀ W − I‖_F² = n² L_col(K), and L_col − L_row = C_in − C_out. Hence the regulariser cannot
reach 0 in the wrong direction: L_col ≥ C_in − C_out (Wᵀ W has at least (C_in − C_out) n² zero eigenvalues),
while for stride 1 and circular padding the right-direction orthogonal convolution always exists (a centred
impulse with an isometric channel matrix). The singular values of W are those of the n² matrices
K̂(ω): (C_out, C_in) of the 2-D DFT of K, so spectra of large layers cost one FFT.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.continual._checks import positive_int as _pos_int
from labkit.continual.data import digits_split
from labkit.runtime import load_results

__all__ = [
    "ConvNet",
    "OnlineOrthogonalDL",
    "alternating_procrustes",
    "circular_conv2d",
    "conv_matrix",
    "conv_singular_values",
    "conv_experiment",
    "dictionary_experiment",
    "hard_threshold",
    "lmo_spectral_ball",
    "load",
    "msp_batch",
    "orth_reg",
    "orthogonal_experiments",
    "orth_reg_lower_bound",
    "planted_dictionary",
    "polar",
    "random_orthogonal",
    "recovery",
    "regulariser_floor",
    "stability_vs_size",
]

MODES = ("row", "column", "auto")
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "orthogonal.json"


# ---------------------------------------------------------------------------------------------------------
# The orthogonal group and its convex hull


def polar(G: torch.Tensor) -> torch.Tensor:
    """The polar factor U Vᵀ of G: (n, n) = U Σ Vᵀ: the orthogonal matrix nearest to G (and maximiser of ⟨G, S⟩)."""
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"G must be a square (n, n) matrix, got shape {tuple(G.shape)}")
    if not torch.isfinite(G).all():
        raise ValueError("G must be finite")
    U, _, Vh = torch.linalg.svd(G)
    return U @ Vh


def lmo_spectral_ball(G: torch.Tensor) -> torch.Tensor:
    """argmin_{‖S‖₂ ≤ 1} ⟨G, S⟩ = −polar(G): the Frank-Wolfe oracle over conv(O(n)); the minimum is −‖G‖_*."""
    return -polar(G)


def random_orthogonal(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random (n, n) orthogonal matrix (QR of a Gaussian with the signs of R's diagonal fixed)."""
    n = _pos_int("n", n)
    g = torch.Generator().manual_seed(int(seed))
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    return Q * torch.sign(torch.diagonal(R))


# ---------------------------------------------------------------------------------------------------------
# Orthogonal dictionary learning


def planted_dictionary(
    n: int = 16, n_samples: int = 10000, theta: float = 0.2, noise: float = 0.0, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y = D₀ X (+ noise): D₀ (n, n) random orthogonal, X (n, N) Bernoulli(θ)-Gaussian, Y (n, N). Returns (Y, D₀, X)."""
    n, n_samples = _pos_int("n", n), _pos_int("n_samples", n_samples)
    if not 0.0 < theta < 1.0:
        raise ValueError(f"theta must be in (0, 1), got {theta}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    D0 = random_orthogonal(n, seed)
    g = torch.Generator().manual_seed(int(seed) + 1)
    X = (torch.rand(n, n_samples, generator=g, dtype=torch.float64) < theta) * \
        torch.randn(n, n_samples, generator=g, dtype=torch.float64)
    Y = D0 @ X + noise * torch.randn(n, n_samples, generator=g, dtype=torch.float64)
    return Y, D0, X


def hard_threshold(Z: torch.Tensor, lam: float) -> torch.Tensor:
    """H_λ(Z): entries with |z| > λ kept, the rest zeroed (Z any shape)."""
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    return Z * (Z.abs() > lam)


def recovery(D: torch.Tensor, D0: torch.Tensor, tol: float = 0.95) -> float:
    """Fraction of true atoms (columns of D0: (n, n)) matched by some column of D with |cos| > tol."""
    if D.shape != D0.shape or D.ndim != 2:
        raise ValueError(f"D and D0 must be 2-D of one shape, got {tuple(D.shape)} and {tuple(D0.shape)}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    Dn = D / D.norm(dim=0, keepdim=True).clamp_min(1e-300)
    D0n = D0 / D0.norm(dim=0, keepdim=True)
    return float(((D0n.T @ Dn).abs().max(1).values > tol).double().mean())


def _lp_grad(D: torch.Tensor, Y: torch.Tensor, p: float) -> torch.Tensor:
    """∇_D (1/b) Σ_s ‖Dᵀ y_s‖_p^p = (1/b) Y (p |Z|^{p−1} sign Z)ᵀ, Z = Dᵀ Y; D (n, n), Y (n, b)."""
    Z = D.T @ Y
    return Y @ (p * Z.abs().pow(p - 1) * torch.sign(Z)).T / Y.shape[1]


class OnlineOrthogonalDL:
    """Online Frank-Wolfe orthogonal dictionary learning over conv(O(n)) (module docstring).

    ``partial_fit(Y)`` consumes one batch Y: (n, b) and forgets it. ``D``: the iterate in the spectral-norm
    ball; ``dictionary``: its polar factor (n, n), exactly orthogonal; ``n_seen``: samples consumed.
    """

    def __init__(self, n: int, p: float = 4.0, step_exponent: float = 0.75, avg_exponent: float = 0.5,
                 seed: int = 0, D0: torch.Tensor | None = None) -> None:
        self.n = _pos_int("n", n)
        if not p > 2:
            raise ValueError(f"p must be > 2 (a sparsity-promoting ℓ_p), got {p}")
        for name, e in (("step_exponent", step_exponent), ("avg_exponent", avg_exponent)):
            if not 0.0 < e <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {e}")
        self.p, self.step_exponent, self.avg_exponent = float(p), float(step_exponent), float(avg_exponent)
        if D0 is not None and D0.shape != (self.n, self.n):
            raise ValueError(f"D0 must be ({self.n}, {self.n}), got {tuple(D0.shape)}")
        self.D = random_orthogonal(self.n, seed) if D0 is None else D0.double().clone()
        self.G = torch.zeros(self.n, self.n, dtype=torch.float64)
        self.t = 0
        self.n_seen = 0

    def partial_fit(self, Y: torch.Tensor) -> OnlineOrthogonalDL:
        """One Frank-Wolfe step on the batch Y: (n, b)."""
        if Y.ndim != 2 or Y.shape[0] != self.n or Y.shape[1] == 0:
            raise ValueError(f"Y must be ({self.n}, b) with b >= 1, got {tuple(Y.shape)}")
        self.t += 1
        rho, gamma = self.t ** -self.avg_exponent, self.t ** -self.step_exponent
        self.G = (1 - rho) * self.G + rho * _lp_grad(self.D, Y.double(), self.p)
        S = lmo_spectral_ball(-self.G)  # maximise f = minimise −f: the oracle at −Ĝ
        self.D = (1 - gamma) * self.D + gamma * S
        self.n_seen += int(Y.shape[1])
        return self

    @property
    def dictionary(self) -> torch.Tensor:
        return polar(self.D)


def msp_batch(Y: torch.Tensor, iters: int = 30, p: float = 4.0, seed: int = 0) -> torch.Tensor:
    """Batch ℓ_p maximisation by the polar (MSP) iteration D ← polar(∇f(D)) on all of Y: (n, N). Returns D (n, n)."""
    iters = _pos_int("iters", iters)
    D = random_orthogonal(Y.shape[0], seed)
    for _ in range(iters):
        D = polar(_lp_grad(D, Y.double(), p))
    return D


def alternating_procrustes(Y: torch.Tensor, lam: float | None = None, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Batch alternating minimisation of ‖Y − D X‖_F² over D ∈ O(n) and sparse X: X = H_λ(DᵀY), D = polar(Y Xᵀ).

    lam defaults to 0.5 · the RMS of Y's entries. Returns D (n, n).
    """
    iters = _pos_int("iters", iters)
    Y = Y.double()
    lam = 0.5 * float(Y.pow(2).mean().sqrt()) if lam is None else float(lam)
    D = random_orthogonal(Y.shape[0], seed)
    for _ in range(iters):
        X = hard_threshold(D.T @ Y, lam)
        D = polar(Y @ X.T)
    return D


def dictionary_experiment(
    seeds: Sequence[int] = (0, 1, 2), n: int = 16, theta: float = 0.2, noise: float = 0.0, batch: int = 20,
    checkpoints: Sequence[int] = (100, 200, 500, 1000, 2000, 5000, 10000, 20000), p: float = 4.0,
    batch_iters: int = 30,
) -> dict:
    """Recovery (fraction of atoms with |cos| > 0.95) against samples seen, ≥ 1 seed, for the online FW learner
    (one pass, batches of ``batch``), the batch methods run on the first N samples (MSP and alternating
    Procrustes), and a random orthogonal D. Also the time per sample of each (seconds)."""
    cps = sorted(int(c) for c in checkpoints)
    if not cps or cps[0] < batch:
        raise ValueError(f"checkpoints must be non-empty and >= batch ({batch}), got {list(checkpoints)}")
    names = ("online_fw", "batch_msp", "batch_procrustes", "random")
    rec = {m: np.zeros((len(seeds), len(cps))) for m in names}
    sec = {m: np.zeros((len(seeds), len(cps))) for m in names[:3]}
    for i, s in enumerate(seeds):
        Y, D0, _ = planted_dictionary(n, cps[-1], theta, noise, seed=1000 + s)
        learner = OnlineOrthogonalDL(n, p=p, seed=s)
        elapsed, seen = 0.0, 0
        for j, N in enumerate(cps):
            t0 = time.perf_counter()
            while seen < N:
                learner.partial_fit(Y[:, seen: min(seen + batch, N)])
                seen = learner.n_seen
            elapsed += time.perf_counter() - t0
            rec["online_fw"][i, j], sec["online_fw"][i, j] = recovery(learner.dictionary, D0), elapsed / N
            t0 = time.perf_counter()
            rec["batch_msp"][i, j] = recovery(msp_batch(Y[:, :N], batch_iters, p, seed=s), D0)
            sec["batch_msp"][i, j] = (time.perf_counter() - t0) / N
            t0 = time.perf_counter()
            rec["batch_procrustes"][i, j] = recovery(alternating_procrustes(Y[:, :N], iters=batch_iters, seed=s), D0)
            sec["batch_procrustes"][i, j] = (time.perf_counter() - t0) / N
            rec["random"][i, j] = recovery(random_orthogonal(n, s + 77), D0)
    return {"settings": {"seeds": list(seeds), "n": n, "theta": theta, "noise": noise, "batch": batch, "p": p,
                         "batch_iters": batch_iters}, "samples": cps,
            "recovery": {m: v.tolist() for m, v in rec.items()},
            "seconds_per_sample": {m: v.tolist() for m, v in sec.items()}}


# ---------------------------------------------------------------------------------------------------------
# Orthogonal convolutions (stride 1, circular padding, odd k)


def _check_kernel(K: torch.Tensor) -> tuple[int, int, int]:
    if K.ndim != 4 or K.shape[2] != K.shape[3] or K.shape[2] % 2 == 0:
        raise ValueError(f"K must be (C_out, C_in, k, k) with odd k, got shape {tuple(K.shape)}")
    return int(K.shape[0]), int(K.shape[1]), int(K.shape[2])


def circular_conv2d(x: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The layer: x (B, C_in, n, n) → (B, C_out, n, n), stride 1, circular padding k//2 (cross-correlation)."""
    _, c_in, k = _check_kernel(K)
    if x.ndim != 4 or x.shape[1] != c_in:
        raise ValueError(f"x must be (B, {c_in}, n, n), got shape {tuple(x.shape)}")
    p = k // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), K)


def conv_matrix(K: torch.Tensor, n: int) -> torch.Tensor:
    """The layer's matrix W: (C_out n², C_in n²) on (C_in, n, n) inputs flattened channel-major (for tests)."""
    n = _pos_int("n", n)
    c_out, c_in, k = _check_kernel(K)
    if n < k // 2:
        raise ValueError(f"n must be >= k // 2 = {k // 2} for circular padding, got {n}")
    basis = torch.eye(c_in * n * n, dtype=K.dtype).reshape(-1, c_in, n, n)
    return circular_conv2d(basis, K).reshape(c_in * n * n, c_out * n * n).T


def conv_singular_values(K: torch.Tensor, n: int) -> torch.Tensor:
    """All min(C_out, C_in)·n² singular values of the layer on n×n inputs, from the n² DFT symbols K̂(ω)."""
    n = _pos_int("n", n)
    c_out, c_in, k = _check_kernel(K)
    if n < k:
        raise ValueError(f"n must be >= k = {k} for the DFT route, got {n}")
    Kp = torch.zeros(c_out, c_in, n, n, dtype=torch.float64)
    Kp[:, :, :k, :k] = K.detach().double()
    symbols = torch.fft.fft2(Kp).permute(2, 3, 0, 1)  # (n, n, C_out, C_in); phases of the shift are unitary
    return torch.linalg.svdvals(symbols).reshape(-1).sort(descending=True).values


def _mode(K: torch.Tensor, mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "row" if K.shape[0] <= K.shape[1] else "column"
    return mode


def orth_reg(K: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    """L(K) = ‖conv(K, K, padding k−1) − δ‖_F² (Wang et al., 2020), differentiable; K: (C_out, C_in, k, k).

    mode "row": penalises W Wᵀ − I (target when C_out ≤ C_in); "column": W ᵀW − I (K with channels swapped);
    "auto": row if C_out ≤ C_in else column. n² L = ‖W Wᵀ − I‖_F² (resp. ‖WᵀW − I‖_F²) for any n ≥ 2k − 1.
    """
    _check_kernel(K)
    Kc = K if _mode(K, mode) == "row" else K.transpose(0, 1)
    c, k = Kc.shape[0], Kc.shape[2]
    corr = F.conv2d(Kc, Kc, padding=k - 1)  # (c, c, 2k−1, 2k−1)
    target = torch.zeros_like(corr)
    target[torch.arange(c), torch.arange(c), k - 1, k - 1] = 1.0
    return (corr - target).pow(2).sum()


def orth_reg_lower_bound(c_out: int, c_in: int, mode: str) -> int:
    """The floor of L over all kernels: column mode ≥ C_in − C_out, row mode ≥ C_out − C_in (0 if negative)."""
    c_out, c_in = _pos_int("c_out", c_out), _pos_int("c_in", c_in)
    if mode not in ("row", "column"):
        raise ValueError(f"mode must be 'row' or 'column', got {mode!r}")
    return max(0, c_in - c_out) if mode == "column" else max(0, c_out - c_in)


def regulariser_floor(c_out: int, c_in: int, k: int = 3, mode: str = "column", steps: int = 1500,
                      lr: float = 0.02, seed: int = 0) -> dict:
    """Minimise L(K) alone by Adam from a random kernel: returns the final L and the theoretical floor."""
    g = torch.Generator().manual_seed(int(seed))
    K = (torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64) / (k * math.sqrt(c_in))).requires_grad_()
    opt = torch.optim.Adam([K], lr=lr)
    for _ in range(_pos_int("steps", steps)):
        loss = orth_reg(K, mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"c_out": c_out, "c_in": c_in, "mode": mode, "final": float(orth_reg(K.detach(), mode)),
            "floor": orth_reg_lower_bound(c_out, c_in, mode)}


class ConvNet(nn.Module):
    """x (B, 1, 8, 8) → circular conv 1→C → ReLU → circular conv C→C → ReLU → 2×2 avg pool → linear → (B, 10)."""

    def __init__(self, channels: int = 8, k: int = 3) -> None:
        super().__init__()
        self.K1 = nn.Parameter(torch.randn(channels, 1, k, k) / k)
        self.K2 = nn.Parameter(torch.randn(channels, channels, k, k) / (k * math.sqrt(channels)))
        self.head = nn.Linear(channels * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(circular_conv2d(F.relu(circular_conv2d(x, self.K1)), self.K2))
        return self.head(F.avg_pool2d(h, 2).flatten(1))


def conv_experiment(lams: Sequence[float] = (0.0, 0.01, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2),
                    channels: int = 8, epochs: int = 15, lr: float = 3e-3, batch_size: int = 64) -> dict:
    """Train ``ConvNet`` on 8×8 digits with loss CE + λ (L(K1) + L(K2)) for each λ and seed. Returns per λ the test
    accuracy, and for the square layer K2 (C→C, n = 8): ‖WᵀW − I‖_F (= 8 √L), the spectral error max|σ² − 1|,
    the condition number σ_max/σ_min and the sorted singular values (first seed)."""
    data = digits_split(0)
    xtr, xte = data.x_train.reshape(-1, 1, 8, 8), data.x_test.reshape(-1, 1, 8, 8)
    out = {"settings": {"lams": list(lams), "seeds": list(seeds), "channels": channels, "epochs": epochs,
                        "lr": lr}, "runs": []}
    for lam in lams:
        if not lam >= 0:
            raise ValueError(f"lams must be >= 0, got {lam}")
        row = {"lam": lam, "acc": [], "frob": [], "spec": [], "cond": [], "sigma": None}
        for s in seeds:
            torch.manual_seed(s)
            net = ConvNet(channels)
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            g = torch.Generator().manual_seed(s)
            for _ in range(epochs):
                order = torch.randperm(len(xtr), generator=g)
                for b in range(0, len(xtr), batch_size):
                    idx = order[b: b + batch_size]
                    loss = F.cross_entropy(net(xtr[idx]), data.y_train[idx])
                    if lam > 0:
                        loss = loss + lam * (orth_reg(net.K1) + orth_reg(net.K2))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                row["acc"].append(float((net(xte).argmax(1) == data.y_test).float().mean()))
                sv = conv_singular_values(net.K2, 8)
                row["frob"].append(8 * math.sqrt(float(orth_reg(net.K2.double()))))
                row["spec"].append(float((sv.pow(2) - 1).abs().max()))
                row["cond"].append(float(sv[0] / sv[-1]))
                if row["sigma"] is None:
                    row["sigma"] = sv.tolist()
                    row["K2"] = net.K2.detach().double().tolist()
        out["runs"].append(row)
    return out


def stability_vs_size(K: torch.Tensor, sizes: Sequence[int] = (8, 16, 32, 64)) -> dict:
    """For one kernel: ‖WᵀW − I‖_F (grows like n) against max|σ² − 1| (bounded in n) as the image size n grows."""
    mode = _mode(K, "auto")
    L = float(orth_reg(K.double(), mode))
    spec = [float((conv_singular_values(K, n).pow(2) - 1).abs().max()) for n in sizes]
    return {"sizes": list(sizes), "L": L, "frob": [n * math.sqrt(L) for n in sizes], "spectral": spec}


# ---------------------------------------------------------------------------------------------------------
# Sizes and the committed full run

FAST = {
    "dictionary": {"seeds": (0,), "checkpoints": (100, 500, 2000, 5000)},
    "conv": {"lams": (0.0, 0.1), "seeds": (0,), "epochs": 3},
    "floor": {"steps": 400},
}
FULL = {
    "dictionary": {"seeds": (0, 1, 2), "checkpoints": (100, 200, 500, 1000, 2000, 5000, 10000, 20000)},
    "conv": {"lams": (0.0, 0.003, 0.03, 0.3, 3.0), "seeds": (0, 1, 2), "epochs": 10},
    "floor": {"steps": 1500},
}
FLOOR_CASES = ((2, 4), (4, 2), (4, 4))  # (C_out, C_in), column mode (Wᵀ W = I wanted)


def orthogonal_experiments(sizes: dict | None = None) -> dict:
    """The three measurements with ``sizes`` (``FAST`` or ``FULL``): dictionary recovery, the conv λ sweep, the
    regulariser's floor per channel case, and the stability of the most regularised K2 as n grows."""
    sizes = FULL if sizes is None else sizes
    t0 = time.perf_counter()
    out = {"dictionary": dictionary_experiment(**sizes["dictionary"])}
    t1 = time.perf_counter()
    out["conv"] = conv_experiment(**sizes["conv"])
    t2 = time.perf_counter()
    out["floor"] = [regulariser_floor(co, ci, mode="column", **sizes["floor"]) for co, ci in FLOOR_CASES]
    K2 = torch.tensor(out["conv"]["runs"][-1]["K2"], dtype=torch.float64)
    out["stability"] = stability_vs_size(K2)
    out["seconds"] = {"dictionary": t1 - t0, "conv": t2 - t1, "floor": time.perf_counter() - t2,
                      "total": time.perf_counter() - t0}
    return out


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/orthogonal.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.continual.orthogonal", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - writes the full run
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4 orthogonality: online dictionary + orthogonal convs.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    res = orthogonal_experiments(FULL)
    args.out.write_text(json.dumps(res))
    d = res["dictionary"]
    for m, v in d["recovery"].items():
        print(m, np.round(np.mean(v, 0), 3).tolist())
    for r in res["conv"]["runs"]:
        print(r["lam"], {k: round(float(np.mean(r[k])), 3) for k in ("acc", "frob", "spec", "cond")})
    print(res["floor"], res["stability"], {k: round(v, 1) for k, v in res["seconds"].items()})


if __name__ == "__main__":  # pragma: no cover
    main()
