"""Exact learning of a permutation from k examples by an ensemble of wide 2-layer nets (Giapitzakis et al., 2025).

The task: a fixed permutation π of k positions maps every nonzero binary input x ∈ {0,1}^k to y = P x
(``y[π(i)] = x[i]``). Training sees only the k standard basis vectors e_i → e_{π(i)}, out of the 2^k − 1 inputs.

The learner is a two-layer ReLU net in the NTK parameterisation,

    f(x) = relu(x W + b) A / √n,     W: (k, n), b: (n,), A: (n, k), all entries N(0, 1) at init,

(x a row vector) trained by full-batch gradient descent on ½ Σ_i ||f(e_i) − e_{π(i)}||². M members with
independent inits are trained at once as batched tensors (``train_ensemble``). In the infinite-width limit
every trained member is a draw of a Gaussian process (``ntk_posterior_cov``) whose mean is kernel regression
with the NTK Θ (``ntk_kernel``, closed form through the arc-cosine kernels):

    μ(x) = Θ(x, X) Θ(X, X)⁻¹ Y.

Because the k training inputs are symmetric, μ is two-valued (``mean_levels``): for an input with m ones,
μ_j(x) = α_m where (P x)_j = 1 and β_m where (P x)_j = 0, with α_1 = 1, β_1 = 0 and, for m ≥ 2, α_m > 0 > β_m
(the "sign-based features"). α_m falls below ½ for large m, so rounding the mean to the nearest integer fails;
what works is a threshold between the two levels (``round_prediction``):

- ``"midpoint"``: 1 where μ > (α_m + β_m)/2, the rule whose margins give the paper's k log k / k² scaling;
- ``"sign"``: 1 where μ > 0 (m ≥ 2; at the training inputs, m = 1, the mean is the target and ½ is used);
- ``"topm"``: the m largest entries are 1 (uses only that a permutation keeps the number of ones);
- ``"half"``: 1 where μ > ½, the naive rounding, shown to fail.

``ensemble_complexity`` finds, for each k, the smallest ensemble size M at which the averaged, rounded
prediction is exact (a) on one random unseen input and (b) on all unseen inputs at once, with probability
≥ 0.9: exactly in the infinite-width limit (``method="gp"``: the average of M members is N(μ, Σ/M)) or by
training real finite-width nets (``method="network"``). ``fit_growth`` compares the growth with k log k and k².
The full experiment is a script (``python -m labkit.memory.permutation`` → ``labkit/assets/permutation.json``);
``load`` reads its result.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.runtime import load_results

__all__ = [
    "RULES",
    "Ensemble",
    "all_inputs",
    "empirical_ntk",
    "ensemble_complexity",
    "ensemble_forward",
    "fit_growth",
    "gd_step",
    "init_ensemble",
    "load",
    "mean_levels",
    "nngp_kernel",
    "ntk_kernel",
    "ntk_mean_prediction",
    "ntk_posterior_cov",
    "permutation_targets",
    "posterior_variance",
    "round_prediction",
    "run_experiment",
    "thresholds",
    "train_ensemble",
    "width_agreement",
]

RULES = ("midpoint", "sign", "topm", "half")
D64 = torch.float64
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "permutation.json"


# ---------------------------------------------------------------------------------------------------------
# Inputs, targets, argument checks


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2, got {k!r}")
    return k


def _check_perm(perm: Sequence[int] | torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(perm)
    if p.ndim != 1 or p.is_floating_point() or p.dtype == torch.bool:
        raise ValueError(f"perm must be a 1-D integer sequence, got {perm!r}")
    k = _check_k(len(p))
    if sorted(p.tolist()) != list(range(k)):
        raise ValueError(f"perm must be a permutation of 0..{k - 1}, got {p.tolist()}")
    return p.long()


def _check_pos(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_binary(x: torch.Tensor, k: int | None = None) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or (k is not None and x.shape[1] != k):
        raise ValueError(f"x must have shape (B, {k if k is not None else 'k'}), got {tuple(x.shape)}")
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError("x must hold only 0s and 1s")
    if bool((x.sum(1) == 0).any()):
        raise ValueError("x must be nonzero binary inputs (every row needs at least one 1)")
    return x


def all_inputs(k: int, dtype: torch.dtype = D64) -> torch.Tensor:
    """The 2^k − 1 nonzero binary inputs, row r is the binary code of r + 1 (bit i → coordinate i). (2^k−1, k)."""
    k = _check_k(k)
    codes = torch.arange(1, 2**k)
    return ((codes[:, None] >> torch.arange(k)) & 1).to(dtype)


def permutation_targets(x: torch.Tensor, perm: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """y = P x with y[..., π(i)] = x[..., i].  x: (..., k) → (..., k)."""
    p = _check_perm(perm)
    if x.shape[-1] != len(p):
        raise ValueError(f"x must have last dimension k = {len(p)}, got {x.shape[-1]}")
    y = torch.zeros_like(x)
    y[..., p] = x
    return y


# ---------------------------------------------------------------------------------------------------------
# Closed-form kernels (infinite width)


def _augment(x: torch.Tensor, bias: bool) -> torch.Tensor:
    x = x.to(D64)
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=D64)], -1) if bias else x


def _arccos(nu2: torch.Tensor, nv2: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k0 = E[relu'(w·u) relu'(w·v)] and k1 = E[relu(w·u) relu(w·v)] for w ~ N(0, I), from |u|², |v|², u·v."""
    norm = torch.sqrt(nu2 * nv2)
    cos = (uv / norm).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(0.0))
    k0 = (math.pi - theta) / (2 * math.pi)
    k1 = norm * (sin + (math.pi - theta) * cos) / (2 * math.pi)
    return k0, k1


def _gram(x1: torch.Tensor, x2: torch.Tensor, bias: bool) -> tuple[torch.Tensor, ...]:
    u, v = _augment(torch.as_tensor(x1), bias), _augment(torch.as_tensor(x2), bias)
    if bool(((u * u).sum(-1) == 0).any()) or bool(((v * v).sum(-1) == 0).any()):
        raise ValueError("the kernels need nonzero inputs (x = 0 without a bias has no angle)")
    uv = u @ v.T
    k0, k1 = _arccos((u * u).sum(-1)[:, None], (v * v).sum(-1)[None, :], uv)
    return k0, k1, uv


def ntk_kernel(x1: torch.Tensor, x2: torch.Tensor, bias: bool = False) -> torch.Tensor:
    """Infinite-width NTK of f(x) = relu(xW + b)A/√n, per output coordinate (outputs are independent).

    Θ(x, x') = k1(x̃, x̃') + (x̃·x̃') k0(x̃, x̃'), with x̃ = (x, 1) when ``bias`` else x: the first term is the
    output layer's gradient, the second the hidden layer's.  x1: (B1, k), x2: (B2, k) → (B1, B2) float64.
    """
    k0, k1, uv = _gram(x1, x2, bias)
    return k1 + uv * k0


def nngp_kernel(x1: torch.Tensor, x2: torch.Tensor, bias: bool = False) -> torch.Tensor:
    """Covariance of the untrained output, E[f_j(x) f_j(x')] = k1(x̃, x̃').  (B1, k), (B2, k) → (B1, B2)."""
    return _gram(x1, x2, bias)[1]


def _train_solve(k: int, bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.eye(k, dtype=D64)
    return X, torch.linalg.inv(ntk_kernel(X, X, bias))


def ntk_mean_prediction(x: torch.Tensor, perm: Sequence[int] | torch.Tensor, bias: bool = False) -> torch.Tensor:
    """Mean output of the trained infinite-width net, μ(x) = Θ(x, X) Θ(X, X)⁻¹ Y, X = the k basis vectors.

    x: (B, k) nonzero binary → (B, k) float64. Exact kernel regression (the t → ∞ limit of gradient flow).
    """
    p = _check_perm(perm)
    k = len(p)
    x = _check_binary(x, k)
    X, inv = _train_solve(k, bias)
    return ntk_kernel(x, X, bias) @ inv @ permutation_targets(X, p)


def ntk_posterior_cov(x1: torch.Tensor, x2: torch.Tensor | None = None, bias: bool = False) -> torch.Tensor:
    """Covariance across inits of one trained infinite-width member, per output coordinate (same for all).

    f∞(x) = f0(x) + v(x) (Y − f0(X)), v(x) = Θ(x, X)Θ(X, X)⁻¹, f0 ~ GP(0, K) with K = ``nngp_kernel``, so
    Σ(x, x') = K(x, x') − v(x)K(X, x') − K(x, X)v(x')ᵀ + v(x)K(X, X)v(x')ᵀ.  (B1, k), (B2, k) → (B1, B2).
    It does not depend on π.
    """
    x1 = _check_binary(x1)
    x2 = x1 if x2 is None else _check_binary(x2, x1.shape[1])
    X, inv = _train_solve(x1.shape[1], bias)
    v1, v2 = ntk_kernel(x1, X, bias) @ inv, ntk_kernel(x2, X, bias) @ inv
    K1X, KX2 = nngp_kernel(x1, X, bias), nngp_kernel(X, x2, bias)
    return nngp_kernel(x1, x2, bias) - v1 @ KX2 - K1X @ v2.T + v1 @ nngp_kernel(X, X, bias) @ v2.T


def _scalar(nu2: float, nv2: float, uv: float, bias: bool) -> tuple[float, float]:
    """(Θ, K) for inputs with |u|² = nu2, |v|² = nv2, u·v = uv (kernels depend on nothing else)."""
    if bias:
        nu2, nv2, uv = nu2 + 1, nv2 + 1, uv + 1
    norm = math.sqrt(nu2 * nv2)
    cos = min(1.0, max(-1.0, uv / norm))
    theta = math.acos(cos)
    k0 = (math.pi - theta) / (2 * math.pi)
    k1 = norm * (math.sqrt(max(0.0, 1.0 - cos * cos)) + (math.pi - theta) * cos) / (2 * math.pi)
    return k1 + uv * k0, k1


def mean_levels(m: int, k: int, bias: bool = False) -> tuple[float, float]:
    """(α_m, β_m): the NTK mean on an input with m ones is α_m where the target is 1 and β_m where it is 0.

    With Θ(X, X) = (a − b)I + b11ᵀ and Θ(x, e_i) = c (x_i = 1) or d (x_i = 0):
    T = (m c + (k − m) d)/(a + (k − 1) b), α_m = (c − bT)/(a − b), β_m = (d − bT)/(a − b).
    (For m = k no coordinate takes the value β_k; it is still defined by the formula.)
    """
    k = _check_k(k)
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= k:
        raise ValueError(f"m must be an int in 1..{k}, got {m!r}")
    a, b = _scalar(1, 1, 1, bias)[0], _scalar(1, 1, 0, bias)[0]
    c, d = _scalar(m, 1, 1, bias)[0], _scalar(m, 1, 0, bias)[0]
    T = (m * c + (k - m) * d) / (a + (k - 1) * b)
    return (c - b * T) / (a - b), (d - b * T) / (a - b)


def posterior_variance(m: int, k: int, bias: bool = False) -> float:
    """Σ(x, x) of ``ntk_posterior_cov`` for an input with m ones, in closed form (any k; 0 at m = 1)."""
    alpha, beta = mean_levels(m, k, bias)
    p, q = _scalar(1, 1, 1, bias)[1], _scalar(1, 1, 0, bias)[1]
    k_in, k_out, k_xx = _scalar(m, 1, 1, bias)[1], _scalar(m, 1, 0, bias)[1], _scalar(m, m, m, bias)[1]
    s1, s2 = m * alpha + (k - m) * beta, m * alpha**2 + (k - m) * beta**2
    var = k_xx - 2 * (m * alpha * k_in + (k - m) * beta * k_out) + (p - q) * s2 + q * s1**2
    return max(var, 0.0)


# ---------------------------------------------------------------------------------------------------------
# Rounding


def thresholds(k: int, rule: str = "midpoint", bias: bool = False) -> torch.Tensor:
    """τ_m for m = 1..k (index m − 1) of a threshold rule: predict 1 where the mean exceeds τ_m. (k,) float64."""
    k = _check_k(k)
    if rule not in ("midpoint", "sign", "half"):
        raise ValueError(f"rule must be one of ('midpoint', 'sign', 'half') for thresholds, got {rule!r}")
    return torch.tensor(_tau(k, rule, bool(bias)), dtype=D64)


@functools.lru_cache(maxsize=256)
def _tau(k: int, rule: str, bias: bool) -> tuple[float, ...]:
    if rule == "half":
        return (0.5,) * k
    if rule == "sign":
        return (0.5,) + (0.0,) * (k - 1)
    return tuple(sum(mean_levels(m, k, bias)) / 2 for m in range(1, k + 1))


def round_prediction(mean: torch.Tensor, x: torch.Tensor, rule: str = "midpoint", bias: bool = False) -> torch.Tensor:
    """Round an (ensemble-)mean output to a binary prediction.  mean: (..., B, k), x: (B, k) → (..., B, k) in {0, 1}.

    The rule sees only x's number of ones m and the architecture's kernel, never π (see the module docstring).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    x = _check_binary(x)
    if mean.shape[-2:] != x.shape:
        raise ValueError(f"mean must end with shape {tuple(x.shape)}, got {tuple(mean.shape)}")
    m = x.sum(1).long()
    if rule == "topm":
        ranks = torch.argsort(torch.argsort(mean, dim=-1, descending=True, stable=True), dim=-1)
        return (ranks < m[:, None]).to(mean.dtype)
    tau = thresholds(x.shape[1], rule, bias)[m - 1].to(mean.dtype)
    return (mean > tau[:, None]).to(mean.dtype)


# ---------------------------------------------------------------------------------------------------------
# The batched ensemble of finite-width nets


@dataclass
class Ensemble:
    """M two-layer nets as batched tensors: W (M, k, n), b (M, n) or None, A (M, n, k); f = relu(xW + b)A/√n."""

    W: torch.Tensor
    b: torch.Tensor | None
    A: torch.Tensor

    @property
    def n_members(self) -> int:
        return self.W.shape[0]

    @property
    def width(self) -> int:
        return self.W.shape[2]

    @property
    def k(self) -> int:
        return self.W.shape[1]

    def member(self, i: int) -> Ensemble:
        """Member i as an ensemble of one (views)."""
        return Ensemble(self.W[i:i + 1], None if self.b is None else self.b[i:i + 1], self.A[i:i + 1])


def init_ensemble(k: int, width: int, n_members: int, bias: bool = False, seed: int = 0,
                  dtype: torch.dtype = D64) -> Ensemble:
    """M independent NTK-parameterised inits, every weight N(0, 1), from one seeded generator."""
    k, width, n_members = _check_k(k), _check_pos("width", width), _check_pos("n_members", n_members)
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n_members, k, width, generator=g, dtype=dtype)
    b = torch.randn(n_members, width, generator=g, dtype=dtype) if bias else None
    A = torch.randn(n_members, width, k, generator=g, dtype=dtype)
    return Ensemble(W, b, A)


def _hidden(ens: Ensemble, x: torch.Tensor) -> torch.Tensor:
    pre = torch.matmul(x, ens.W)  # (B, k) @ (M, k, n) → (M, B, n)
    return pre if ens.b is None else pre + ens.b[:, None, :]


def ensemble_forward(ens: Ensemble, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Every member's output.  x: (B, k) → (M, B, k); members in chunks of ``chunk`` to bound memory."""
    x = torch.as_tensor(x).to(ens.W.dtype)
    if x.ndim != 2 or x.shape[1] != ens.k:
        raise ValueError(f"x must have shape (B, {ens.k}), got {tuple(x.shape)}")
    outs = []
    for s in range(0, ens.n_members, chunk):
        part = Ensemble(ens.W[s:s + chunk], None if ens.b is None else ens.b[s:s + chunk], ens.A[s:s + chunk])
        outs.append(torch.bmm(torch.relu(_hidden(part, x)), part.A) / math.sqrt(ens.width))
    return torch.cat(outs)


def gd_step(ens: Ensemble, x: torch.Tensor, y: torch.Tensor, lr: float, tol: float | None = None) -> torch.Tensor:
    """One full-batch GD step on L = ½ Σ_b ||f(x_b) − y_b||² for every member at once (in place).

    x: (B, k), y: (B, k). Returns each member's loss before the step, (M,); with ``tol``, members whose loss is
    already below it are left unchanged (so each member stops on its own). Gradients by hand:
    with R = f(x) − y (M, B, k): ∂L/∂A = hᵀR/√n, ∂L/∂W = xᵀ(R Aᵀ/√n ⊙ 1[pre > 0]), ∂L/∂b = the latter's batch sum.
    """
    x, y = x.to(ens.W.dtype), y.to(ens.W.dtype)
    pre = _hidden(ens, x)
    h = torch.relu(pre)
    scale = 1.0 / math.sqrt(ens.width)
    r = torch.bmm(h, ens.A) * scale - y
    loss = 0.5 * (r * r).sum((1, 2))
    gA = torch.bmm(h.transpose(1, 2), r) * scale
    gpre = torch.bmm(r, ens.A.transpose(1, 2)) * scale * (pre > 0)
    step = torch.full_like(loss, lr) if tol is None else lr * (loss >= tol).to(loss.dtype)
    ens.W -= step[:, None, None] * torch.matmul(x.T, gpre)
    if ens.b is not None:
        ens.b -= step[:, None] * gpre.sum(1)
    ens.A -= step[:, None, None] * gA
    return loss


def _default_schedule(k: int, bias: bool) -> tuple[float, int]:
    """lr = 1/λ_max of the closed-form Θ(X, X); steps to shrink the slowest mode by 1e-13 (×1.5 for finite n)."""
    a, b = _scalar(1, 1, 1, bias)[0], _scalar(1, 1, 0, bias)[0]
    lam_min, lam_max = a - b, a + (k - 1) * b
    steps = math.ceil(1.5 * math.log(1e-13) / math.log(1 - lam_min / lam_max))
    return 1.0 / lam_max, steps


def train_ensemble(perm: Sequence[int] | torch.Tensor, width: int, n_members: int, steps: int | None = None,
                   lr: float | None = None, bias: bool = False, seed: int = 0, dtype: torch.dtype = D64,
                   tol: float = 1e-18, chunk: int = 512, progress: bool = False) -> tuple[Ensemble, torch.Tensor]:
    """Train M members on the k basis vectors e_i → e_{π(i)} by full-batch GD; returns (ensemble, final losses (M,)).

    lr defaults to 1/λ_max(Θ(X, X)). ``steps=None`` trains each member until its loss is below ``tol`` (at most 40×
    the steps the linearised dynamics need to shrink the error by 1e-13: narrow nets move their kernel, need more);
    an int runs exactly that many steps. Members are trained in chunks of ``chunk`` (same result, bounded memory).
    """
    p = _check_perm(perm)
    k = len(p)
    d_lr, d_steps = _default_schedule(k, bias)
    lr = d_lr if lr is None else lr
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be None or an int >= 0, got {steps!r}")
    ens = init_ensemble(k, width, n_members, bias=bias, seed=seed, dtype=dtype)
    X = torch.eye(k, dtype=dtype)
    Y = permutation_targets(X, p)
    losses = []
    for s in _progress(range(0, n_members, chunk), progress, "training chunks"):
        part = Ensemble(ens.W[s:s + chunk], None if ens.b is None else ens.b[s:s + chunk], ens.A[s:s + chunk])
        for _ in range(40 * d_steps if steps is None else steps):
            if float(gd_step(part, X, Y, lr, None if steps is not None else tol).max()) < tol and steps is None:
                break
        r = ensemble_forward(part, X) - Y
        losses.append(0.5 * (r * r).sum((1, 2)))
    return ens, torch.cat(losses)


def empirical_ntk(ens: Ensemble, x1: torch.Tensor, x2: torch.Tensor, member: int = 0,
                  outputs: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Finite-width NTK of one member by autograd: ⟨∂f_i(x)/∂θ, ∂f_j(x')/∂θ⟩, (i, j) = ``outputs``. → (B1, B2).

    As the width grows it tends to ``ntk_kernel`` for i = j and to 0 for i ≠ j.
    """
    one = ens.member(member)
    params = [t.detach().clone().requires_grad_(True) for t in (one.W, one.b, one.A) if t is not None]

    def jac(x: torch.Tensor, j: int) -> torch.Tensor:
        rows = []
        for xb in torch.as_tensor(x).to(ens.W.dtype):
            net = Ensemble(params[0], params[1] if one.b is not None else None, params[-1])
            out = ensemble_forward(net, xb[None])[0, 0, j]
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
        return torch.stack(rows)

    return jac(x1, outputs[0]) @ jac(x2, outputs[1]).T


# ---------------------------------------------------------------------------------------------------------
# Ensemble complexity


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    import labkit

    return labkit.progress(iterable, desc=desc)


def _unseen(k: int) -> torch.Tensor:
    x = all_inputs(k)
    return x[x.sum(1) >= 2]


def _p_exact_single(M: float, k: int, rule: str, bias: bool, levels: list, worst: bool) -> float:
    """P(the rounded mean of M members is exact on an unseen input): averaged over a uniform random unseen input,
    or the smallest over m (``worst``). Infinite width, threshold rules: Π_j Φ(|μ_j − τ_m| √M / σ_m)."""
    probs, weights = [], []
    for m in range(2, k + 1):
        alpha, beta, tau, sd = levels[m - 1]
        if alpha <= tau or (m < k and beta >= tau):
            p = 0.0
        else:
            p = _ndtr((alpha - tau) * math.sqrt(M) / sd) ** m * _ndtr((tau - beta) * math.sqrt(M) / sd) ** (k - m)
        probs.append(p)
        weights.append(math.comb(k, m))
    if worst:
        return min(probs)
    return sum(p * w for p, w in zip(probs, weights)) / sum(weights)


def _ndtr(z: float) -> float:
    """Standard normal CDF Φ(z)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _min_m(pred, target: float, m_max: int) -> int | None:
    """Smallest integer M in 1..m_max with pred(M) ≥ target (pred increasing), None when there is none."""
    if pred(m_max) < target:
        return None
    lo, hi = 0, m_max
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) >= target else (mid, hi)
    return hi


def _levels(k: int, rule: str, bias: bool) -> list[tuple[float, float, float, float]]:
    tau = thresholds(k, rule, bias)
    out = []
    for m in range(1, k + 1):
        alpha, beta = mean_levels(m, k, bias)
        out.append((alpha, beta, float(tau[m - 1]), math.sqrt(posterior_variance(m, k, bias))))
    return out


def _gp_point(k: int, rule: str, bias: bool, target: float, n_samples: int, joint_k_max: int, m_max: int,
              g: torch.Generator) -> dict:
    levels = _levels(k, rule, bias)
    rec = {"k": k}
    rec["M_single"] = _min_m(lambda M: _p_exact_single(M, k, rule, bias, levels, False), target, m_max)
    rec["M_single_worst"] = _min_m(lambda M: _p_exact_single(M, k, rule, bias, levels, True), target, m_max)

    def union_fail(M: float) -> float:  # Σ over unseen inputs and coordinates of P(wrong): ≥ P(any wrong)
        total = 0.0
        for m in range(2, k + 1):
            alpha, beta, tau, sd = levels[m - 1]
            if alpha <= tau or (m < k and beta >= tau):
                return math.inf
            q1, q0 = _ndtr(-(alpha - tau) * math.sqrt(M) / sd), _ndtr(-(tau - beta) * math.sqrt(M) / sd)
            total += math.comb(k, m) * (m * q1 + (k - m) * q0)
        return total

    rec["M_all_union"] = _min_m(lambda M: 1.0 - union_fail(M), target, m_max)
    rec["M_all"] = None
    if k <= joint_k_max:
        # Per sample (one ensemble), the rounded mean μ + Z/√M is right everywhere iff M ≥ max Z²/margin² over the
        # (input, coordinate) pairs where Z pushes towards the wrong side: M_all is that maximum's target-quantile.
        x = _unseen(k)
        m = x.sum(1).long()
        alpha = torch.tensor([lv[0] for lv in levels], dtype=D64)[m - 1]
        beta = torch.tensor([lv[1] for lv in levels], dtype=D64)[m - 1]
        tau = torch.tensor([lv[2] for lv in levels], dtype=D64)[m - 1]
        y = x  # π = identity: the success probability does not depend on π (relabel the outputs)
        mu = torch.where(y > 0, alpha[:, None], beta[:, None])
        margin = (mu - tau[:, None]).abs()
        side = torch.sign(mu - tau[:, None])
        if bool((side * (1 - 2 * (y == 0).to(D64)) <= 0).any()):
            rec["M_all"] = None  # some mean sits on the wrong side or on the threshold: no M suffices
        else:
            # Σ is positive definite on the unseen inputs; its Cholesky factor is unique (an eigen-basis would not
            # be, as Σ has repeated eigenvalues), so the draws do not depend on the LAPACK build or thread count
            L = torch.linalg.cholesky(ntk_posterior_cov(x, bias=bias))
            needed = torch.empty(n_samples, dtype=D64)
            for s in range(0, n_samples, 256):
                n = min(256, n_samples - s)
                # one independent GP draw per output coordinate: Z (n, inputs, k)
                Z = torch.einsum("ab,rjb->raj", L, torch.randn(n, k, len(x), generator=g, dtype=D64))
                bad = (side * Z).clamp(max=0.0)
                needed[s:s + n] = ((bad / margin) ** 2).amax((1, 2))
            rec["M_all"] = max(1, math.ceil(float(torch.quantile(needed, target))))
    return rec


def _network_point(k: int, rule: str, bias: bool, target: float, width: int, pool: int, repeats: int,
                   grid: Sequence[int], seed: int, progress: bool) -> dict:
    g = torch.Generator().manual_seed(seed + 1000 * k)
    perm = torch.randperm(k, generator=g)
    ens, loss = train_ensemble(perm, width, pool, bias=bias, seed=seed + k, progress=progress)
    x = _unseen(k)
    out = ensemble_forward(ens, x)  # (pool, N, k)
    y = permutation_targets(x, perm)
    grid = sorted({int(M) for M in grid if 1 <= M <= pool // 2})  # at most half the pool per sub-ensemble
    single = torch.zeros(len(grid), dtype=D64)
    every = torch.zeros(len(grid), dtype=D64)
    gidx = torch.tensor(grid) - 1
    sizes = torch.tensor(grid, dtype=out.dtype)[:, None, None]
    target_bits = y > 0
    tau = None if rule == "topm" else thresholds(k, rule, bias)[x.sum(1).long() - 1][:, None].to(out.dtype)
    for _ in _progress(range(repeats), progress, f"k={k} subsets"):
        order = torch.randperm(pool, generator=g)[:grid[-1]]
        means = out[order].cumsum(0)[gidx] / sizes  # (G, N, k): the first M members of a random order, every M
        pred = round_prediction(means, x, rule, bias) > 0 if tau is None else means > tau
        ok = (pred == target_bits).all(-1)  # (G, N)
        single += ok.to(D64).mean(1)
        every += ok.all(1).to(D64)
    single, every = single / repeats, every / repeats

    def first(curve: torch.Tensor) -> int | None:
        hits = [M for M, p in zip(grid, curve.tolist()) if p >= target]
        return hits[0] if hits else None

    return {"k": k, "M_single": first(single), "M_all": first(every), "grid": grid,
            "p_single": [round(v, 4) for v in single.tolist()], "p_all": [round(v, 4) for v in every.tolist()],
            "max_train_loss": float(loss.max()), "width": width, "pool": pool}


def ensemble_complexity(k_values: Sequence[int], method: str = "gp", rule: str = "midpoint", bias: bool = False,
                        target: float = 0.9, n_samples: int = 2000, joint_k_max: int = 10, m_max: int = 10**7,
                        width: int = 256, pool: int = 1024, repeats: int = 100, grid: Sequence[int] | None = None,
                        seed: int = 0, progress: bool = False) -> dict:
    """Smallest ensemble size M with P(exact) ≥ ``target`` per k: on one random unseen input and on all of them.

    method="gp" (infinite width, exact up to Monte Carlo): per k, ``M_single`` (uniform random unseen input),
    ``M_single_worst`` (the hardest number of ones), ``M_all`` (all unseen inputs at once, ``n_samples`` draws of
    the joint GP; only k ≤ ``joint_k_max``) and ``M_all_union`` (the union bound, an upper bound on M_all, any k).
    method="network": a pool of ``pool`` trained nets of ``width`` per k (a random π per k); M is the first
    point of ``grid`` (up to pool/2) where the fraction of ``repeats`` random size-M sub-ensembles drawn from the
    pool that succeed reaches ``target`` (sub-ensembles share members, so this is a resampling estimate).
    None means no M up to ``m_max`` (gp) or the grid's end (network) suffices. Threshold rules only for "gp".
    Returns {"records": [...], "fit": fit_growth(...) of each M column, "settings": {...}}.
    """
    if method not in ("gp", "network"):
        raise ValueError(f"method must be 'gp' or 'network', got {method!r}")
    if rule not in RULES or (method == "gp" and rule == "topm"):
        raise ValueError(f"rule must be one of {RULES} ('topm' only with method='network'), got {rule!r}")
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target}")
    ks = [_check_k(k) for k in k_values]
    if not ks:
        raise ValueError("k_values must hold at least one k")
    g = torch.Generator().manual_seed(seed)
    it = _progress(ks, progress, f"ensemble complexity ({method})")
    if grid is None:
        grid = sorted({max(1, round(1.25**i)) for i in range(60)})
    records = []
    for k in it:
        if method == "gp":
            records.append(_gp_point(k, rule, bias, target, n_samples, joint_k_max, m_max, g))
        else:
            records.append(_network_point(k, rule, bias, target, width, pool, repeats, grid, seed, progress))
    cols = [c for c in ("M_single", "M_single_worst", "M_all", "M_all_union") if c in records[0]]
    fits = {}
    for c in cols:
        pts = [(r["k"], r[c]) for r in records if r[c] is not None]
        if len(pts) >= 2:
            fits[c] = fit_growth([p[0] for p in pts], [p[1] for p in pts])
    settings = {"method": method, "rule": rule, "bias": bias, "target": target, "seed": seed}
    if method == "gp":
        settings.update(n_samples=n_samples, joint_k_max=joint_k_max)
    else:
        settings.update(width=width, pool=pool, repeats=repeats)
    return {"records": records, "fit": fits, "settings": settings}


def fit_growth(k: Sequence[float], M: Sequence[float]) -> dict:
    """Fit M ≈ c·k log k, M ≈ c·k² (one constant each, least squares on log M) and M ≈ c·k^p (free slope).

    Returns {"klogk": {"c", "rms_log"}, "k2": {"c", "rms_log"}, "power": {"c", "p", "rms_log"},
    "local": {"p", "p_klogk", "p_k2"}}; rms_log is the root-mean-square residual of log M (smaller fits better);
    "local" is the slope d log M / d log k between the two largest k, beside the slopes k log k (1 + 1/ln k,
    roughly) and k² (2) have there: small k cannot tell the two laws apart, the local slope at large k can.
    """
    k_t, M_t = torch.as_tensor(k, dtype=D64), torch.as_tensor(M, dtype=D64)
    if k_t.ndim != 1 or k_t.shape != M_t.shape or len(k_t) < 2:
        raise ValueError(f"k and M must be 1-D of the same length >= 2, got {tuple(k_t.shape)}, {tuple(M_t.shape)}")
    if bool((k_t < 2).any()) or bool((M_t <= 0).any()):
        raise ValueError("fit_growth needs k >= 2 and M > 0")
    logM = M_t.log()
    out = {}
    for name, shape in (("klogk", k_t * k_t.log()), ("k2", k_t**2)):
        logc = (logM - shape.log()).mean()
        out[name] = {"c": float(logc.exp()), "rms_log": float(((logM - shape.log() - logc) ** 2).mean().sqrt())}
    design = torch.stack([torch.ones_like(k_t), k_t.log()], 1)
    coef = torch.linalg.lstsq(design, logM[:, None]).solution[:, 0]
    resid = logM - design @ coef
    out["power"] = {"c": float(coef[0].exp()), "p": float(coef[1]), "rms_log": float((resid**2).mean().sqrt())}
    order = torch.argsort(k_t)
    (k1, k2), (M1, M2) = k_t[order[-2:]].tolist(), M_t[order[-2:]].tolist()
    if k2 > k1:
        span = math.log(k2 / k1)
        out["local"] = {"k": [k1, k2], "p": math.log(M2 / M1) / span,
                        "p_klogk": math.log(k2 * math.log(k2) / (k1 * math.log(k1))) / span, "p_k2": 2.0}
    return out


# ---------------------------------------------------------------------------------------------------------
# Finite width vs the closed form, the experiment, the script


def width_agreement(k: int = 4, widths: Sequence[int] = (16, 64, 256, 1024), n_members: int = 512,
                    bias: bool = False, seed: int = 0, progress: bool = False) -> list[dict]:
    """For each width: train ``n_members`` nets on a random π, and compare their mean and variance on all 2^k − 1
    inputs with ``ntk_mean_prediction`` / ``ntk_posterior_cov``. Per width: max |mean − μ|, the same in standard
    errors (max_z), max relative variance error, and the fraction of inputs the rounded ensemble mean gets exact.
    """
    k = _check_k(k)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(k, generator=g)
    x = all_inputs(k)
    mu = ntk_mean_prediction(x, perm, bias)
    var = ntk_posterior_cov(x, bias=bias).diagonal()
    y = permutation_targets(x, perm)
    rows = []
    it = _progress(widths, progress, "widths")
    for n in it:
        ens, loss = train_ensemble(perm, _check_pos("width", n), n_members, bias=bias, seed=seed + n)
        out = ensemble_forward(ens, x)
        mean, ev = out.mean(0), out.var(0)
        se = (ev / n_members).sqrt().clamp_min(1e-12)
        unseen = x.sum(1) >= 2
        rows.append({
            "width": n, "max_abs_err": float((mean - mu).abs().max()),
            "max_z": float(((mean - mu).abs() / se)[unseen].max()),
            "var_rel_err": float(((ev[unseen] - var[unseen, None]).abs() / var[unseen, None]).max()),
            "exact_frac": float((round_prediction(mean, x, "midpoint", bias) == y).all(1).to(D64).mean()),
            "max_train_loss": float(loss.max()),
        })
    return rows


def _levels_table(ks: Sequence[int], bias: bool) -> list[dict]:
    rows = []
    for k in ks:
        for m in range(1, k + 1):
            alpha, beta = mean_levels(m, k, bias)
            rows.append({"k": k, "m": m, "alpha": alpha, "beta": beta, "var": posterior_variance(m, k, bias)})
    return rows


def run_experiment(fast: bool = True, seed: int = 0, progress: bool = False) -> dict:
    """The chapter's experiment (no bias unless named). FAST (~1 s of CPU): closed-form levels, GP complexities
    for k ≤ 8, networks for k = 3, 4, a two-width check. Full (the script): GP complexities for k = 2..10 (joint
    sampling) and to k = 256 (single input, union bound) for the midpoint and sign rules and, with a bias, the
    midpoint rule; trained networks (width 256, pools of 1536) for k = 3..8; the width sweep at k = 5."""
    t0, c0 = time.perf_counter(), time.process_time()
    res: dict = {"fast": fast, "seed": seed, "bias": False}
    res["levels"] = _levels_table([8] if fast else [8, 16, 32], False)
    gp_ks = list(range(2, 9)) if fast else list(range(2, 11)) + [12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    n_samples = 400 if fast else 2000
    res["gp"] = {rule: ensemble_complexity(gp_ks, "gp", rule, n_samples=n_samples, seed=seed, progress=progress)
                 for rule in ("midpoint", "sign")}
    if not fast:
        res["gp_bias"] = ensemble_complexity(gp_ks, "gp", "midpoint", bias=True, n_samples=1000, joint_k_max=8,
                                             seed=seed, progress=progress)
    if fast:
        res["network"] = ensemble_complexity([3, 4], "network", "midpoint", width=64, pool=256, repeats=40,
                                             seed=seed, progress=progress)
        res["width"] = width_agreement(3, (32, 256), n_members=128, seed=seed, progress=progress)
    else:
        res["network"] = ensemble_complexity(list(range(3, 9)), "network", "midpoint", width=256, pool=1536,
                                             repeats=200, seed=seed, progress=progress)
        res["width"] = width_agreement(5, (8, 32, 128, 512, 2048), n_members=1024, seed=seed, progress=progress)
    res["seconds"] = time.perf_counter() - t0
    res["cpu_seconds"] = time.process_time() - c0
    return res


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/permutation.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.memory.permutation", path, what="results")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m labkit.memory.permutation", description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="the FAST configuration (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default labkit/assets/permutation.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run_experiment(fast=args.fast, seed=args.seed, progress=True)
    out = args.out or (Path("/tmp/permutation_fast.json") if args.fast else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"done in {res['seconds']:.1f} s ({res['cpu_seconds']:.1f} s of CPU) -> {out}")
    return res


if __name__ == "__main__":
    main()
