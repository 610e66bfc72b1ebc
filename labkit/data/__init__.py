"""Seeded data generators shared by the chapters. Nothing here touches the network.

Every generator takes ``seed`` (an int or a ``numpy.random.Generator``) so a notebook reruns exactly.

Submodules: ``corpus`` (text corpora), ``recall`` (associative-recall tasks), ``worlds`` (chapter 5's generated
worlds: entities with aliases and hubs, facts that change over time, templated passages with gold triples,
1/2/3-hop questions, distractors, and multi-session conversations with typed QA — ``from labkit.data.worlds import
make_world, make_conversations``).
"""

from __future__ import annotations

import numpy as np

SeedLike = int | np.random.Generator


def rng(seed: SeedLike) -> np.random.Generator:
    """A NumPy generator from an int seed (or pass a generator through)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def gaussian_keys(n: int, d: int, seed: SeedLike = 0, normalize: bool = True) -> np.ndarray:
    """``n`` random keys in R^d, i.i.d. Gaussian, unit length by default. Returns (n, d)."""
    _check_positive("n", n)
    _check_positive("d", d)
    keys = rng(seed).standard_normal((n, d))
    if normalize:
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    return keys


def correlated_keys(n: int, d: int, correlation: float, seed: SeedLike = 0) -> np.ndarray:
    """``n`` unit keys whose pairwise cosine similarity is ``correlation`` in expectation.

    Each key is ``sqrt(c) * shared + sqrt(1 - c) * own`` with unit-variance Gaussian parts, then
    normalised; for large ``d`` the cosine between two keys concentrates at ``c``. Returns (n, d).
    """
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"correlation must be in [0, 1), got {correlation!r}")
    _check_positive("n", n)
    _check_positive("d", d)
    g = rng(seed)
    shared = g.standard_normal(d)
    own = g.standard_normal((n, d))
    keys = np.sqrt(correlation) * shared + np.sqrt(1.0 - correlation) * own
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


def orthogonal_keys(n: int, d: int, seed: SeedLike = 0) -> np.ndarray:
    """``n <= d`` orthonormal keys (rows of a random orthogonal matrix). Returns (n, d)."""
    _check_positive("n", n)
    _check_positive("d", d)
    if n > d:
        raise ValueError(f"n must be <= d={d} for orthonormal keys, got {n}")
    q, r = np.linalg.qr(rng(seed).standard_normal((d, n)))
    q *= np.sign(np.diag(r))  # fix the sign so the draw is uniform (Haar) and deterministic
    return q.T.copy()


def binary_patterns(n: int, d: int, seed: SeedLike = 0, p: float = 0.5) -> np.ndarray:
    """``n`` random ±1 patterns of length ``d`` with P(+1) = ``p``. Returns (n, d) float."""
    _check_positive("n", n)
    _check_positive("d", d)
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    return np.where(rng(seed).random((n, d)) < p, 1.0, -1.0)


def flip_bits(patterns: np.ndarray, fraction: float, seed: SeedLike = 0) -> np.ndarray:
    """Copy of ±1 ``patterns`` with exactly round(fraction * d) signs flipped per row (a noisy cue)."""
    patterns = np.asarray(patterns, dtype=float)
    if patterns.ndim != 2:
        raise ValueError(f"patterns must be 2-D (n, d), got shape {patterns.shape}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    g = rng(seed)
    n, d = patterns.shape
    k = int(round(fraction * d))
    noisy = patterns.copy()
    for i in range(n):
        idx = g.choice(d, size=k, replace=False)
        noisy[i, idx] *= -1
    return noisy


def correlated_patterns(n: int, d: int, correlation: float, seed: SeedLike = 0) -> np.ndarray:
    """``n`` random ±1 patterns whose pairwise overlap ``ξ_μ·ξ_ν / d`` is ``correlation`` in expectation.

    Each bit copies a shared prototype bit with probability ``sqrt(c)`` and is a fair coin otherwise, so
    ``E[ξ_μi ξ_νi] = c``. ``correlation = 0`` gives independent patterns. Returns (n, d) float.
    """
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"correlation must be in [0, 1), got {correlation!r}")
    _check_positive("n", n)
    _check_positive("d", d)
    g = rng(seed)
    prototype = np.where(g.random(d) < 0.5, 1.0, -1.0)
    own = np.where(g.random((n, d)) < 0.5, 1.0, -1.0)
    copy = g.random((n, d)) < np.sqrt(correlation)
    return np.where(copy, prototype, own)


def sparse_keys(n: int, d: int, active: int, seed: SeedLike = 0) -> np.ndarray:
    """``n`` sparse non-negative unit keys: ``active`` entries equal to ``1/sqrt(active)``, the rest 0.

    The active units of each key are drawn uniformly without replacement. Returns (n, d).
    """
    _check_positive("n", n)
    _check_positive("d", d)
    _check_positive("active", active)
    if active > d:
        raise ValueError(f"active must be in 1..{d}, got {active}")
    support = np.argsort(rng(seed).random((n, d)), axis=1)[:, :active]
    keys = np.zeros((n, d))
    np.put_along_axis(keys, support, 1.0 / np.sqrt(active), axis=1)
    return keys


def frame_keys(n: int, d: int, seed: SeedLike = 0, iterations: int = 100) -> np.ndarray:
    """``n`` unit keys in R^d that are as close to orthogonal as ``n`` allows. Returns (n, d).

    ``n <= d``: orthonormal (``orthogonal_keys``). ``n > d``: a unit-norm tight frame (``KᵀK = (n/d) I``)
    found by alternating projection between unit rows and tight frames from a random start; it meets the
    Welch bound ``Σ_{i≠j} (k_i·k_j)² >= n²/d - n``, the least total crosstalk n unit keys can have.
    """
    _check_positive("n", n)
    _check_positive("d", d)
    _check_positive("iterations", iterations)
    if n <= d:
        return orthogonal_keys(n, d, seed)
    import torch  # torch's BLAS threads idle politely (OMP_WAIT_POLICY) where NumPy's spin on a busy CPU

    keys = torch.as_tensor(rng(seed).standard_normal((n, d)))
    for _ in range(iterations):
        keys = keys / keys.norm(dim=1, keepdim=True)
        # Nearest tight frame: the polar factor K (KᵀK)^(-1/2), scaled so rows have unit length on average.
        w, v = torch.linalg.eigh(keys.T @ keys)
        tight = np.sqrt(n / d) * keys @ (v / w.sqrt()) @ v.T
        if float((tight - keys).abs().max()) < 1e-12:
            break
        keys = tight
    return (keys / keys.norm(dim=1, keepdim=True)).numpy()
