"""Atlas: a memory that learns from a window of recent tokens, not one token at a time (Behrouz et al., 2025).

Titans' memory takes a gradient step on the loss of the *current* token only (online learning). Atlas's
**Omega rule** optimises the memory for the last c tokens together: the step at token t uses

    g_t = Σ_{i=t−c+1}^{t} γ_i ∇ℓ(M_{t−1}; φ(k_i), v_i),          ℓ(M; φ, v) = ‖Mᵀφ − v‖²

with γ_i = sigmoid(Linear(x_i)) ∈ (0, 1) a learned per-token gate (how much token i still matters), and
then the same momentum and forgetting as Titans (``titans.momentum_scan``, ``titans.forgetting_scan``):

    S_t = η_t S_{t−1} − θ_t g_t          M_t = (1 − α_t) M_{t−1} + S_t          y_t = M_tᵀ φ(q_t)

The memory is a matrix per head (Dφ × Dv). c = 1 and degree 1 give back Titans' linear memory exactly.

Feature map φ (``power_features``): elementwise powers, each block L2-normalised, all scaled by 1/√p,

    φ(k) = [k, k^2/‖k^2‖, …, k^p/‖k^p‖] / √p          (Dφ = p·Dk; degree 1: φ(k) = k)

A polynomial map of degree p lifts keys to more dimensions, so a matrix memory can hold more independent
pairs (capacity ~ Dφ). The paper's theory uses all monomials up to degree p (Dk^p features, as
``labkit.memory.demos.polynomial_features`` builds for p = 2); here the memory would be Dk^p·Dv numbers per
head, far off the other mixers on the chapter's state-size axis. Elementwise powers grow capacity by a
factor p instead of a power, keep ‖φ(k)‖ = 1 (so the same learning rates θ stay stable as in Titans), and
allow any degree.

Muon (``muon=True``): the memory follows the orthogonalised momentum instead of the momentum itself,
S_t = η_t S_{t−1} − g_t, M_t = (1 − α_t) M_{t−1} + θ_t NS₅(S_t), with NS₅ five Newton–Schulz steps
towards the nearest semi-orthogonal matrix (``newton_schulz``): every direction of S moves at the same rate.

θ starts at min(max_lr/2, 1/(C·c)) (``titans._initial_theta``): a chunk step sums C·c gradients (each
token's in c windows), all at the chunk's start weights, and from θ ≈ 1/2 it would multiply the memory by up
to ~C·c per chunk (‖M‖ ≈ 10⁶ after 64 MQAR tokens at initialisation, C = 16, c = 4); see ``titans``' module
docstring. With ``muon`` θ scales an orthogonalised step, not a sum of gradients, and starts at max_lr/2.

Chunk rule and continuation as in Titans: within a chunk all gradients are taken at the chunk's start
weights (the window's tokens from before the chunk too), and a state keeps the chunk-start weights while
inside a chunk, plus the last c − 1 (φ(k), v, γ) of the window, so continuation is exact at any split point.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labkit.memory.base import MemoryState, Mixer, check_gate, merge_heads, split_heads
from labkit.memory.titans import (
    _check_bool,
    _check_max_lr,
    _check_positive_int,
    _initial_theta,
    _logit,
    _per_token,
    forgetting_scan,
    memory_grad,
    memory_loss,
    memory_read,
    momentum_scan,
)

__all__ = ["Atlas", "newton_schulz", "omega_chunk", "omega_recurrent", "power_features"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic: pushes all singular values towards ~1 fast


def power_features(k: torch.Tensor, degree: int) -> torch.Tensor:
    """φ(k) = [k, k^2/‖k^2‖, …, k^p/‖k^p‖] / √p: (..., D) -> (..., p·D). Unit keys give unit features.

    The first block is k itself (keys come L2-normalised), so degree 1 is the identity.
    """
    _check_positive_int("degree", degree)
    blocks = [k] + [F.normalize(k ** i, dim=-1) for i in range(2, degree + 1)]
    return torch.cat(blocks, dim=-1) / math.sqrt(degree)


def newton_schulz(X: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise the last two dims of X (..., m, n): U Vᵀ of X = U Σ Vᵀ, roughly.

    X is first scaled to Frobenius norm 1 (so every singular value is ≤ 1), then ``steps`` times
    X ← a X + (b A + c A²) X with A = X Xᵀ, an odd polynomial in X that maps each singular value σ to
    aσ + bσ³ + cσ⁵, pushing it towards 1. Odd: NS(−X) = −NS(X), so a descent direction stays one.
    """
    a, b, c = NS_COEFFICIENTS
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # work with the smaller Gram matrix
        X = X.transpose(-1, -2)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.transpose(-1, -2)
        X = a * X + (b * A + c * A @ A) @ X
    return X.transpose(-1, -2) if tall else X


def _check_omega_args(q, k, v, gamma, theta, eta, alpha, memory, momentum, window) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, H, T, Dφ), got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, H, T, Dv) with (B, H, T) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if q.shape[2] < 1:
        raise ValueError("the sequence must hold at least one token (T >= 1), got T = 0")
    _check_positive_int("window", window)
    for name, gate, high in (("gamma", gamma, 1.0), ("theta", theta, math.inf), ("eta", eta, 1.0),
                             ("alpha", alpha, 1.0)):
        if gate is None:
            continue
        check_gate(name, gate, 0.0, high)
        if gate.shape != q.shape[:3]:
            raise ValueError(f"{name} must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(gate.shape)}")
    expected = (*q.shape[:2], q.shape[3], v.shape[3])
    for name, W in (("memory", memory), ("momentum", momentum)):
        if tuple(W.shape) != expected:
            raise ValueError(f"{name} must be (B, H, Dφ, Dv) = {expected}, got {tuple(W.shape)}")


def omega_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor | None,
                    theta: torch.Tensor, eta: torch.Tensor, alpha: torch.Tensor, memory: torch.Tensor,
                    momentum: torch.Tensor, *, window: int = 4, chunk_size: int = 1,
                    muon: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Omega rule token by token (the specification of ``omega_chunk``), from an empty window.

    q, k: (B, H, T, Dφ) (already feature-mapped); v: (B, H, T, Dv); gamma (None = all 1), theta, eta,
    alpha: (B, H, T); memory M_0, momentum S_0: (B, H, Dφ, Dv). For t = 1..T, with M' the memory at the
    start of t's chunk and the window's loss L_t(M) = Σ_{i=max(1, t−c+1)}^{t} γ_i ‖Mᵀk_i − v_i‖²,

        g_t = ∇L_t(M') (autograd)     S_t = η_t S_{t−1} − θ_t g_t     M_t = (1 − α_t) M_{t−1} + S_t

    (muon: S_t = η_t S_{t−1} − g_t and M_t = (1 − α_t) M_{t−1} + θ_t NS₅(S_t)); o_t = M_tᵀ q_t.
    Returns o: (B, H, T, Dv), the final memory and momentum.
    """
    _check_positive_int("chunk_size", chunk_size)
    _check_omega_args(q, k, v, gamma, theta, eta, alpha, memory, momentum, window)
    gamma = torch.ones_like(theta) if gamma is None else gamma

    def window_loss(W: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        losses = memory_loss("linear", {"W": W}, k[:, :, lo:hi], v[:, :, lo:hi])  # (B, H, hi − lo)
        return (gamma[:, :, lo:hi] * losses).sum()

    gradient = torch.func.grad(window_loss)
    M, S, outs = memory, momentum, []
    for t in range(q.shape[2]):
        if t % chunk_size == 0:
            M_start = M
        g = gradient(M_start, max(0, t - window + 1), t + 1)
        th, et = theta[:, :, t, None, None], eta[:, :, t, None, None]
        if muon:
            S = et * S - g
            step = th * newton_schulz(S)
        else:
            S = et * S - th * g
            step = S
        M = (1 - alpha[:, :, t, None, None]) * M + step
        outs.append(memory_read("linear", {"W": M}, q[:, :, t:t + 1]))
    return torch.cat(outs, dim=2), M, S


def omega_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor | None,
                theta: torch.Tensor, eta: torch.Tensor, alpha: torch.Tensor, memory: torch.Tensor,
                momentum: torch.Tensor, *, window: int = 4, chunk_size: int = 16, muon: bool = False,
                offset: int = 0, start: torch.Tensor | None = None,
                past: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """``omega_recurrent``'s outputs chunk by chunk, reusing Titans' gradient and scans.

    Shapes as in ``omega_recurrent``. Per chunk of L tokens starting from memory M_0: the window tokens
    i = (c − 1 before the chunk, then the chunk's own) get u_i = γ_i ∇ℓ(M_0; k_i, v_i) in one batch
    (``titans.memory_grad``); g_t sums c consecutive u's; then ``momentum_scan`` and ``forgetting_scan``.

    ``past``: (k, v, γ) of the c − 1 tokens before this call, (B, H, c − 1, ·) each, or None (a fresh
    sequence: zeros, which write nothing since ∇ℓ(M; 0, 0) = 0). ``offset``/``start``: continuing inside a
    chunk, as in ``titans.titans_chunk``. Returns o: (B, H, T, Dv), memory, momentum, the chunk-start
    weights (None at a chunk boundary) and the new ``past`` (None when window = 1).
    """
    _check_positive_int("chunk_size", chunk_size)
    _check_omega_args(q, k, v, gamma, theta, eta, alpha, memory, momentum, window)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < chunk_size:
        raise ValueError(f"offset must be an int in [0, chunk_size={chunk_size}), got {offset!r}")
    if offset > 0 and start is None:
        raise ValueError(f"start (the weights at the chunk's start) is required when offset > 0, got offset={offset}")
    B, H, T, _ = q.shape
    c = window
    gamma = torch.ones_like(theta) if gamma is None else gamma
    if past is None:
        past = (k.new_zeros(B, H, c - 1, k.shape[-1]), v.new_zeros(B, H, c - 1, v.shape[-1]),
                gamma.new_zeros(B, H, c - 1))
    # the whole call's window tokens in one row: c − 1 from before, then this call's T
    k_all, v_all, gamma_all = (torch.cat([p, x], dim=2) for p, x in zip(past, (k, v, gamma)))
    outs, lo = [], 0
    while lo < T:
        if offset == 0:
            start = memory
        hi = min(T, lo + chunk_size - offset)
        L = hi - lo
        rows = slice(lo, hi + c - 1)  # in k_all: token lo's window starts c − 1 rows before it
        u = memory_grad("linear", {"W": start}, k_all[:, :, rows], v_all[:, :, rows])["W"]
        u = _per_token(gamma_all[:, :, rows], u) * u  # (B, H, L + c − 1, Dφ, Dv)
        g = sum(u[:, :, i:i + L] for i in range(c))  # g_t: the c rows ending at t
        th, et = theta[:, :, lo:hi], eta[:, :, lo:hi]
        if muon:
            S = momentum_scan({"W": g}, torch.ones_like(th), et, {"W": momentum})["W"]
            steps = _per_token(th, S) * newton_schulz(S)
        else:
            S = momentum_scan({"W": g}, th, et, {"W": momentum})["W"]
            steps = S
        memories = forgetting_scan({"W": steps}, alpha[:, :, lo:hi], {"W": memory})
        outs.append(memory_read("linear", memories, q[:, :, lo:hi]))
        memory, momentum = memories["W"][:, :, -1], S[:, :, -1]
        offset = (offset + L) % chunk_size
        lo = hi
    new_past = None if c == 1 else tuple(x[:, :, x.shape[2] - (c - 1):] for x in (k_all, v_all, gamma_all))
    return torch.cat(outs, dim=2), memory, momentum, (start if offset else None), new_past


class Atlas(Mixer):
    """Atlas: a matrix memory over polynomial features, written by the Omega rule (window of c tokens).

    Options: ``window`` c (1 = Titans' online rule; γ ≡ 1 then, no γ gate); ``degree`` p of ``power_features``;
    ``chunk_size`` of the chunk rule; ``max_lr`` the largest θ; ``muon`` orthogonalised momentum.
    Momentum and forgetting are always on. Parameter names match ``Titans``' memory (``q_proj``, ``k_proj``,
    ``v_proj``, ``theta_proj``, ``eta_proj``, ``alpha_proj``, ``init.W``, ``o_proj``), plus ``gamma_proj``.

    State: ``"memory.W"``, ``"momentum.W"`` (B, H, Dφ, Dv); ``"chunk_start.W"`` while inside a chunk;
    with c > 1 ``"window.k"`` (B, H, c − 1, Dφ), ``"window.v"`` (B, H, c − 1, Dv), ``"window.gamma"``
    (B, H, c − 1): the last c − 1 tokens' features, values and gates (zeros before the sequence starts).
    """

    name = "atlas"

    def __init__(self, d_model: int, n_heads: int = 1, *, window: int = 4, degree: int = 2, chunk_size: int = 16,
                 max_lr: float = 1.0, muon: bool = False) -> None:
        super().__init__(d_model, n_heads)
        for arg, value in (("window", window), ("degree", degree), ("chunk_size", chunk_size)):
            _check_positive_int(arg, value)
        _check_max_lr(max_lr)
        _check_bool("muon", muon)
        self.window, self.degree, self.chunk_size, self.muon = window, degree, chunk_size, muon
        self.max_lr = float(max_lr)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.theta_proj = nn.Linear(d_model, n_heads)  # learning rate θ = max_lr · sigmoid(.)
        self.eta_proj = nn.Linear(d_model, n_heads)  # momentum η
        self.alpha_proj = nn.Linear(d_model, n_heads)  # forgetting α
        self.gamma_proj = nn.Linear(d_model, n_heads) if window > 1 else None  # window gate γ
        with torch.no_grad():
            # a chunk step sums chunk_size · window gradients at the chunk's start: θ starts where it is a
            # non-expansion for any keys (``titans._initial_theta``); Muon's steps are orthogonalised instead
            theta0 = self.max_lr / 2 if muon else _initial_theta(self.max_lr, chunk_size * window)
            self.theta_proj.bias.fill_(_logit(theta0 / self.max_lr))
            self.eta_proj.bias.zero_()
            self.alpha_proj.bias.fill_(_logit(0.02))
            if self.gamma_proj is not None:
                self.gamma_proj.bias.fill_(_logit(0.9))  # every window token counts at first
        self.d_feature = degree * self.head_dim
        self.init = nn.ParameterDict({"W": nn.Parameter(torch.zeros(n_heads, self.d_feature, self.head_dim))})
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return (f"window={self.window}, degree={self.degree}, chunk_size={self.chunk_size}, max_lr={self.max_lr}, "
                f"muon={self.muon}")

    def state_size(self, seq_len: int) -> int:
        """Memory + momentum + window buffer (c − 1 tokens), + chunk-start weights while inside a chunk."""
        H, Df, D = self.n_heads, self.d_feature, self.head_dim
        n = H * Df * D
        return 2 * n + H * (self.window - 1) * (Df + D + 1) + (n if seq_len % self.chunk_size else 0)

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the memory after these T tokens."""
        self.check_input(x)
        B, T, _ = x.shape
        self.check_state(state, B)
        seen = 0 if state is None else state.seen
        split = lambda t: split_heads(t, self.n_heads)  # noqa: E731
        q = power_features(F.normalize(split(self.q_proj(x)), dim=-1), self.degree)  # (B, H, T, Dφ)
        k = power_features(F.normalize(split(self.k_proj(x)), dim=-1), self.degree)
        v = split(self.v_proj(x))
        gate = lambda proj: torch.sigmoid(proj(x)).transpose(1, 2)  # noqa: E731  (B, H, T)
        theta, eta, alpha = self.max_lr * gate(self.theta_proj), gate(self.eta_proj), gate(self.alpha_proj)
        gamma = None if self.gamma_proj is None else gate(self.gamma_proj)
        if state is None:
            W = self.init["W"].expand(B, *self.init["W"].shape)
            S, start, past = torch.zeros_like(W), None, None
        else:
            W, S = state["memory.W"], state["momentum.W"]
            start = state.tensors.get("chunk_start.W")
            past = (state["window.k"], state["window.v"], state["window.gamma"]) if self.window > 1 else None
        o, W, S, start, past = omega_chunk(q, k, v, gamma, theta, eta, alpha, W, S, window=self.window,
                                           chunk_size=self.chunk_size, muon=self.muon,
                                           offset=seen % self.chunk_size, start=start, past=past)
        tensors = {"memory.W": W, "momentum.W": S}
        if start is not None:
            tensors["chunk_start.W"] = start
        if past is not None:
            tensors.update({"window.k": past[0], "window.v": past[1], "window.gamma": past[2]})
        return self.o_proj(merge_heads(o)), MemoryState(self.fingerprint, tensors, seen + T)
