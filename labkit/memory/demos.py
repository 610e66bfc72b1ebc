"""Training-free experiments of chapter 3: memories written by a rule, read back, scored.

- ``recall_vs_load``: store n random key→value pairs with a write rule (sum of outer products, the delta
  rule for one or more passes, the delta rule over polynomial features) and count how many come back.
- ``recent_recall``: a stream of ever-new pairs, longer than the memory can hold; how well are the last
  few recalled, with and without forgetting.
- ``legs_reconstruction``: HiPPO-LegS compresses a signal's whole history into N numbers online; read the
  history back from them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from labkit.data import gaussian_keys, rng
from labkit.memory.deltanet import delta_rule_recurrent
from labkit.memory.linear import linear_attention_recurrent
from labkit.memory.lssl import discretize, hippo_legs

__all__ = ["legs_reconstruction", "polynomial_features", "recall_vs_load", "recent_recall"]

RULES = ("sum", "delta", "delta, 2 passes", "delta, degree-2 keys")


def polynomial_features(k: torch.Tensor) -> torch.Tensor:
    """The degree-2 feature map φ(k) = the upper triangle of k kᵀ (off-diagonal terms times √2), so that
    φ(a)·φ(b) = (a·b)². (..., d) -> (..., d(d+1)/2). Unit keys give unit features."""
    d = k.shape[-1]
    i, j = torch.triu_indices(d, d)
    weight = torch.where(i == j, 1.0, math.sqrt(2.0)).to(k.dtype)
    return k[..., i] * k[..., j] * weight


def _write_and_read(keys: torch.Tensor, values: torch.Tensor, rule: str) -> torch.Tensor:
    """keys (n, dk), values (n, dv) -> what the memory returns for each key after all are written."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "delta, degree-2 keys":
        keys = polynomial_features(keys)
    q = k = keys[None, None]  # (1, 1, n, dk)
    v = values[None, None]
    if rule == "sum":
        _, S = linear_attention_recurrent(k, k, v)  # the final state is all we read
    else:
        passes = 2 if rule == "delta, 2 passes" else 1
        S = None
        for _ in range(passes):
            _, S = delta_rule_recurrent(k, k, v, torch.ones(1, 1, keys.shape[0], dtype=keys.dtype), S0=S)
    return q[0, 0] @ S[0, 0]  # (n, dv): read every key from the final memory


def recall_vs_load(d: int, loads: list[int], rules=RULES, n_trials: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Fraction of pairs recalled (the read-out is nearest to its own value among all stored values) after
    writing ``n`` random unit keys in R^d with random unit values in R^d, for each n in ``loads``.
    Returns {rule: (n_trials, len(loads)) array}."""
    out = {rule: np.zeros((n_trials, len(loads))) for rule in rules}
    g = rng(seed)
    for trial in range(n_trials):
        for j, n in enumerate(loads):
            keys = torch.from_numpy(gaussian_keys(n, d, g))
            values = torch.from_numpy(gaussian_keys(n, d, g))
            for rule in rules:
                read = _write_and_read(keys, values, rule)
                nearest = (read @ values.T).argmax(dim=1)
                out[rule][trial, j] = (nearest == torch.arange(n)).double().mean().item()
    return out


def recent_recall(d: int, stream_len: int, recent: int, decays: dict[str, tuple[str, float]], n_trials: int = 5,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """A stream of ``stream_len`` new random pairs in R^d, written one by one; afterwards, the fraction of
    the last ``recent`` pairs recalled. ``decays``: {label: (rule, alpha)} with rule "sum" or "delta" and
    alpha the per-token decay of the memory (1 = no forgetting). Returns {label: (n_trials,) array}."""
    g = rng(seed)
    out = {label: np.zeros(n_trials) for label in decays}
    for trial in range(n_trials):
        keys = torch.from_numpy(gaussian_keys(stream_len, d, g))[None, None]
        values = torch.from_numpy(gaussian_keys(stream_len, d, g))[None, None]
        for label, (rule, alpha) in decays.items():
            a = torch.full((1, 1, stream_len), float(alpha), dtype=keys.dtype)
            beta = torch.ones_like(a) if rule == "delta" else torch.zeros_like(a)
            if rule == "sum":  # S_t = α S_{t-1} + k vᵀ: the gated delta rule with the erase term switched off
                S = torch.zeros(1, 1, d, d, dtype=keys.dtype)
                for t in range(stream_len):
                    S = alpha * S + keys[0, 0, t, :, None] * values[0, 0, t, None, :]
            else:
                _, S = delta_rule_recurrent(keys, keys, values, beta, alpha=a)
            read = keys[0, 0, -recent:] @ S[0, 0]
            nearest = (read @ values[0, 0].T).argmax(dim=1)
            target = torch.arange(stream_len - recent, stream_len)
            out[label][trial] = (nearest == target).double().mean().item()
    return out


def legs_reconstruction(signal: np.ndarray, state_dim: int) -> np.ndarray:
    """Feed ``signal`` (L,) through the HiPPO-LegS recurrence (step 1/k at step k: the measure covers the
    whole history) and reconstruct the history from the final state's N = ``state_dim`` coefficients:
    f(s) ≈ Σ_n c_n √(2n+1) P_n(2s/L − 1). Returns the reconstruction (L,)."""
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1 or signal.size < 2:
        raise ValueError(f"signal must be 1-D with at least 2 samples, got shape {signal.shape}")
    A, B = hippo_legs(state_dim)
    x = torch.zeros(state_dim, dtype=torch.float64)
    for k, u in enumerate(signal, start=1):  # LegS is time-varying: dt = 1/k
        Ad, Bd = discretize(A / k, B / k, 1.0, method="bilinear")
        x = Ad @ x + Bd * float(u)
    s = (np.arange(signal.size) + 0.5) / signal.size * 2 - 1
    basis = np.stack([np.sqrt(2 * n + 1) * np.polynomial.legendre.Legendre.basis(n)(s) for n in range(state_dim)])
    return x.numpy() @ basis
