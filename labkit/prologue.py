"""Chapter 0 — Memory without interference: three ways to store key → value pairs in a matrix.

The names follow the chapter:

* **outer-product memory** (Kohonen 1972; the state of linear attention): ``outer_product_write`` adds
  ``v kᵀ`` for each pair, ``outer_product_read`` multiplies by the query. Reading a stored key returns its
  value plus **crosstalk** from every other pair; ``predicted_crosstalk_variance`` is its variance.
* **classical Hopfield network** (Hopfield 1982): ``hebbian_weights`` stores ±1 patterns,
  ``hopfield_step``/``hopfield_recall`` clean up a noisy cue by iterating ``sign(W s)``.
* **softmax attention = modern Hopfield / dense associative memory** (Krotov & Hopfield 2016; Demircigil
  et al. 2017; Ramsauer et al. 2021): ``softmax_read`` is one attention step.

Plus the three tools the book keeps using: projection (``projection_write``, ``delta_rule_write``),
gating/forgetting (the ``decay`` of ``outer_product_write``) and sparsity (``labkit.data.sparse_keys``), and
the experiment functions the chapter plots. Every core function accepts torch tensors or numpy arrays
(float64 unless a floating tensor is given) and returns torch tensors; experiment functions return numpy
arrays shaped ``(seeds, points)`` ready for ``labkit.viz``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from labkit import data
from labkit.runtime import progress

MEMORIES = ("outer product", "Hopfield", "softmax")
AGS_CAPACITY = 0.138  # Amit, Gutfreund & Sompolinsky (1985): critical load n/d of the Hebbian Hopfield net

# --------------------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------------------


def _as_tensor(name: str, value) -> torch.Tensor:
    """A tensor view of ``value``: floating tensors keep their dtype, everything else becomes float64."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else value.to(torch.float64)
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must hold numbers, got a {type(value).__name__} that does not") from err
        return torch.as_tensor(array)
    raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(value).__name__}")


def _matrix(name: str, value, allow_vector: bool = False) -> tuple[torch.Tensor, bool]:
    """``value`` as a 2-D tensor; a 1-D input (when allowed) becomes one row. Returns (tensor, was_vector)."""
    tensor = _as_tensor(name, value)
    if allow_vector and tensor.ndim == 1:
        return tensor[None, :], True
    if tensor.ndim != 2:
        expected = "1-D or 2-D" if allow_vector else "2-D"
        raise ValueError(f"{name} must be {expected}, got shape {tuple(tensor.shape)}")
    return tensor, False


def _same_pairs(keys: torch.Tensor, values: torch.Tensor) -> None:
    if keys.shape[0] != values.shape[0]:
        raise ValueError(
            f"keys and values must hold the same number of pairs, got {keys.shape[0]} and {values.shape[0]}")


def _common(*tensors: torch.Tensor) -> list[torch.Tensor]:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    device = tensors[0].device
    return [t.to(device=device, dtype=dtype) for t in tensors]


def _count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


# --------------------------------------------------------------------------------------------------------
# 1. the outer-product memory (linear attention's state)
# --------------------------------------------------------------------------------------------------------


def outer_product_write(keys, values, W=None, decay: float = 1.0) -> torch.Tensor:
    """Store pairs in a matrix: ``W' = decay * W + Σ_i v_i k_iᵀ``.

    keys: (n, dk), values: (n, dv) (a 1-D key/value is one pair); W: (dv, dk) or None (zeros);
    decay in [0, 1] multiplies the old memory once, before the new pairs are added (gating/forgetting).
    Returns W': (dv, dk).
    """
    k, _ = _matrix("keys", keys, allow_vector=True)
    v, _ = _matrix("values", values, allow_vector=True)
    _same_pairs(k, v)
    decay = _real("decay", decay)
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    if W is None:
        k, v = _common(k, v)
        return v.T @ k
    W, _ = _matrix("W", W)
    if W.shape != (v.shape[1], k.shape[1]):
        raise ValueError(f"W must have shape (dv, dk) = ({v.shape[1]}, {k.shape[1]}), got {tuple(W.shape)}")
    W, k, v = _common(W, k, v)
    return decay * W + v.T @ k


def outer_product_read(W, queries) -> torch.Tensor:
    """Read the memory: ``queries @ Wᵀ``. W: (dv, dk), queries: (m, dk) or (dk,). Returns (m, dv) or (dv,)."""
    W, _ = _matrix("W", W)
    q, vector = _matrix("queries", queries, allow_vector=True)
    if q.shape[1] != W.shape[1]:
        raise ValueError(f"queries must have dk = {W.shape[1]} columns like W, got {q.shape[1]}")
    W, q = _common(W, q)
    out = q @ W.T
    return out[0] if vector else out


def crosstalk(keys, values, W=None) -> torch.Tensor:
    """What reading each stored key returns beyond its own value: ``W k_i - (k_i·k_i) v_i``.

    keys: (n, dk), values: (n, dv); W defaults to ``outer_product_write(keys, values)``. Returns (n, dv).
    """
    k, _ = _matrix("keys", keys)
    v, _ = _matrix("values", values)
    _same_pairs(k, v)
    W = outer_product_write(k, v) if W is None else _matrix("W", W)[0]
    k, v, W = _common(k, v, W)
    return outer_product_read(W, k) - (k * k).sum(1, keepdim=True) * v


def predicted_crosstalk_variance(n: int, d: int, correlation: float = 0.0) -> float:
    """Variance of one component of the crosstalk when reading one of ``n`` stored pairs.

    Random unit keys in R^d (i.i.d. Gaussian directions) with i.i.d. unit-variance values give
    ``(n - 1) / d``: each of the n - 1 other pairs adds ``v_j (k_j·k_i)`` and ``E[(k_j·k_i)^2] = 1/d``.
    Keys with pairwise cosine ``correlation = c`` (``labkit.data.correlated_keys``) have
    ``E[(k_j·k_i)^2] ≈ c^2 + (1 - c^2)/d``, so the variance becomes ``(n - 1) (c^2 + (1 - c^2)/d)``.
    """
    n, d = _count("n", n), _count("d", d)
    c = _real("correlation", correlation)
    if not 0.0 <= c < 1.0:
        raise ValueError(f"correlation must be in [0, 1), got {c}")
    return (n - 1) * (c * c + (1.0 - c * c) / d)


def predicted_sparse_crosstalk_variance(n: int, d: int, active: int) -> float:
    """Crosstalk variance for ``labkit.data.sparse_keys``: binary keys with ``active`` ones, unit length.

    The overlap of two such keys is hypergeometric (mean s²/d), so ``E[(k_j·k_i)^2] = s²/d² +
    (d - s)² / (d² (d - 1))`` and the variance is ``(n - 1)`` times that (s = ``active``).
    """
    n, d, s = _count("n", n), _count("d", d), _count("active", active)
    if s > d:
        raise ValueError(f"active must be in 1..{d}, got {s}")
    second_moment = s * s / d**2 + ((d - s) ** 2 / (d**2 * (d - 1)) if d > 1 else 0.0)
    return (n - 1) * second_moment


def predicted_welch_crosstalk_variance(n: int, d: int) -> float:
    """The least crosstalk variance any ``n`` unit keys in R^d allow (Welch bound): ``max(0, (n - d) / d)``.

    Orthonormal keys reach 0 up to ``n = d``; beyond, a unit-norm tight frame (``labkit.data.frame_keys``)
    reaches ``n/d - 1``.
    """
    n, d = _count("n", n), _count("d", d)
    return max(0.0, (n - d) / d)


def projection_write(keys, values) -> torch.Tensor:
    """The projection (pseudo-inverse) rule ``W = Vᵀ (K⁺)ᵀ``: ``W k_i = v_i`` exactly for independent keys.

    keys: (n, dk) with n <= dk for exact recall; values: (n, dv). Returns W: (dv, dk).
    """
    k, _ = _matrix("keys", keys)
    v, _ = _matrix("values", values)
    _same_pairs(k, v)
    k, v = _common(k, v)
    return v.T @ torch.linalg.pinv(k).T


def delta_rule_write(keys, values, W=None, lr: float = 1.0) -> torch.Tensor:
    """Online projection (the delta rule of DeltaNet / fast weights): for each pair in order,
    ``W ← W + lr (v_i - W k_i) k_iᵀ``; with unit keys and ``lr = 1`` the newest pair is stored exactly.

    keys: (n, dk), values: (n, dv), W: (dv, dk) or None. Returns W: (dv, dk).
    """
    k, _ = _matrix("keys", keys, allow_vector=True)
    v, _ = _matrix("values", values, allow_vector=True)
    _same_pairs(k, v)
    lr = _real("lr", lr)
    if not 0.0 < lr <= 2.0:
        raise ValueError(f"lr must be in (0, 2], got {lr}")
    if W is None:
        k, v = _common(k, v)
        W = torch.zeros(v.shape[1], k.shape[1], dtype=k.dtype, device=k.device)
    else:
        W, _ = _matrix("W", W)
        if W.shape != (v.shape[1], k.shape[1]):
            raise ValueError(
                f"W must have shape (dv, dk) = ({v.shape[1]}, {k.shape[1]}), got {tuple(W.shape)}")
        W, k, v = _common(W, k, v)
        W = W.clone()
    for key, value in zip(k, v):
        W += lr * torch.outer(value - W @ key, key)
    return W


# --------------------------------------------------------------------------------------------------------
# 2. the classical Hopfield network
# --------------------------------------------------------------------------------------------------------


def hebbian_weights(patterns) -> torch.Tensor:
    """Hebb's rule for ±1 patterns: ``W = (1/d) Σ_μ ξ_μ ξ_μᵀ`` with a zero diagonal.

    patterns: (n, d) of ±1. Returns W: (d, d), symmetric.
    """
    p, _ = _matrix("patterns", patterns)
    if p.numel() and not bool(((p == 1) | (p == -1)).all()):
        raise ValueError("patterns must hold only +1 and -1 entries, got other values")
    d = p.shape[1]
    W = p.T @ p / d
    W.fill_diagonal_(0.0)
    return W


def hopfield_step(W, state) -> torch.Tensor:
    """One synchronous update ``sign(W s)`` with sign(0) = +1. W: (d, d); state: (d,) or (m, d)."""
    W, _ = _matrix("W", W)
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square (d, d), got {tuple(W.shape)}")
    s, vector = _matrix("state", state, allow_vector=True)
    if s.shape[1] != W.shape[0]:
        raise ValueError(f"state must have d = {W.shape[0]} entries per row, got {s.shape[1]}")
    W, s = _common(W, s)
    h = s @ W.T
    out = torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))
    return out[0] if vector else out


def hopfield_recall(W, cue, max_steps: int = 20) -> torch.Tensor:
    """Iterate ``hopfield_step`` from ``cue`` until no entry changes (a fixed point) or ``max_steps``.

    W: (d, d); cue: (d,) or (m, d). Returns the final state, same shape as ``cue`` (entries ±1).
    """
    max_steps = _count("max_steps", max_steps)
    state = _as_tensor("cue", cue)
    for _ in range(max_steps):
        new = hopfield_step(W, state)
        if torch.equal(new, state):
            break
        state = new
    return state


# --------------------------------------------------------------------------------------------------------
# 3. softmax attention = modern Hopfield / dense associative memory
# --------------------------------------------------------------------------------------------------------


def softmax_read(queries, keys, values, beta: float) -> torch.Tensor:
    """One attention step: ``softmax(beta * queries @ keysᵀ, dim=-1) @ values``.

    queries: (m, dk) or (dk,); keys: (n, dk); values: (n, dv); beta > 0 (``math.inf`` reads the value of
    the best-matching key, ties to the first). Stable for any beta: the softmax subtracts the row maximum.
    Returns (m, dv) or (dv,).
    """
    q, vector = _matrix("queries", queries, allow_vector=True)
    k, _ = _matrix("keys", keys)
    v, _ = _matrix("values", values)
    _same_pairs(k, v)
    if k.shape[0] == 0:
        raise ValueError("keys must hold at least one pair, got 0")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"queries must have dk = {k.shape[1]} columns like keys, got {q.shape[1]}")
    beta = _real("beta", beta)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    q, k, v = _common(q, k, v)
    scores = q @ k.T
    if math.isinf(beta):
        out = v[scores.argmax(dim=-1)]
    else:
        out = torch.softmax(beta * scores, dim=-1) @ v
    return out[0] if vector else out


# --------------------------------------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------------------------------------


def normal_cdf(x: float | np.ndarray) -> np.ndarray:
    """Φ(x), the standard normal CDF (no scipy needed)."""
    x = np.asarray(x, dtype=float)
    return 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2.0))


def predicted_bit_error(n: int, d: int) -> float:
    """Probability that one Hopfield update flips a bit of a stored pattern (n patterns, d units).

    The local field is signal ``(d-1)/d`` plus Gaussian crosstalk of variance ``(n-1)(d-1)/d²``, so the
    bit flips with probability ``Φ(-sqrt((d-1)/(n-1)))`` ≈ ``Φ(-1/sqrt(α))`` with load ``α = n/d``.
    """
    n, d = _count("n", n), _count("d", d)
    if n == 1:
        return 0.0
    return float(normal_cdf(-math.sqrt((d - 1) / (n - 1))))


def perfect_recall_load(d: int) -> float:
    """The load ``1 / (2 ln d)`` below which a stored pattern is, with probability → 1, an exact fixed point.

    From ``d Φ(-1/sqrt(α)) → 0`` (McEliece et al. 1987); all patterns at once needs ``1 / (4 ln d)``.
    """
    d = _count("d", d, minimum=2)
    return 1.0 / (2.0 * math.log(d))


def predicted_nearest_capacity(d: int, flipped: int, recall: float = 0.9) -> float:
    """How many random ±1 patterns a nearest-pattern (argmax) read holds with ``recall`` success.

    A cue with ``f = flipped`` wrong bits is at Hamming distance f from its pattern; a random other
    pattern is at distance ``D ~ Binomial(d, 1/2)`` from the cue. Exact recall fails when one of the n - 1
    others is as close (a tie blends two patterns, which a sharp softmax then cannot undo), so
    ``recall ≈ exp(-(n-1) p)`` with ``p = P(D <= f)``; solve for n. Exponential in d:
    ``log n ≈ d (1 - H(f/d)) log 2`` with H the binary entropy.
    """
    d, f = _count("d", d), _count("flipped", flipped, minimum=0)
    if f >= d / 2:
        raise ValueError(f"flipped must be < d/2 = {d / 2}, got {f}")
    if not 0.0 < recall < 1.0:
        raise ValueError(f"recall must be in (0, 1), got {recall}")
    p = sum(math.comb(d, j) for j in range(f + 1)) / 2.0**d
    return 1.0 + -math.log(recall) / p


def predicted_decay_cosine(T: int, d: int, decay: float) -> np.ndarray:
    """Cosine between the read-out and the stored value, by age, for a stream of ``T`` random pairs.

    With ``W_t = decay * W_{t-1} + v_t k_tᵀ`` the pair of age a has signal ``decay^a`` and crosstalk variance
    ``Σ_{b != a} decay^(2b) / d``, so ``cos ≈ decay^a / sqrt(decay^(2a) + Σ_{b != a} decay^(2b) / d)``.
    Returns (T,), index = age (0 = newest).
    """
    T, d = _count("T", T), _count("d", d)
    decay = _real("decay", decay)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    signal = decay ** np.arange(T, dtype=float)
    total = float((signal**2).sum())
    return signal / np.sqrt(signal**2 + (total - signal**2) / d)


# --------------------------------------------------------------------------------------------------------
# experiments (what the chapter plots); each returns numpy arrays (seeds, points)
# --------------------------------------------------------------------------------------------------------


def _rng(seed: int, *tags: int) -> np.random.Generator:
    seed = _count("seed", seed, minimum=0)
    return np.random.default_rng(np.random.SeedSequence([seed, *[int(t) for t in tags]]))


def _cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


def _check_grid(name: str, values: Sequence, low: float, high: float) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    if array.min() < low or array.max() > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {array.min()}..{array.max()}")
    return array


def linear_recall_vs_load(
    ns: Sequence[int], d: int, dv: int | None = None, n_seeds: int = 5, keys: str = "random", seed: int = 0
) -> dict[str, np.ndarray]:
    """Store ``n`` pairs in an outer-product memory and read every stored key back, for each n in ``ns``.

    keys: "random" (unit Gaussian directions) or "orthogonal" (orthonormal up to d, then the tightest frame,
    ``labkit.data.frame_keys``). Values are i.i.d. N(0, 1) in R^dv (dv defaults to d).
    Returns {"crosstalk_variance", "cosine"}: (n_seeds, len(ns)) — the variance per component of the
    crosstalk and the mean cosine between read-out and stored value.
    """
    d, n_seeds = _count("d", d), _count("n_seeds", n_seeds)
    dv = d if dv is None else _count("dv", dv)
    if keys not in ("random", "orthogonal"):
        raise ValueError(f"keys must be 'random' or 'orthogonal', got {keys!r}")
    ns = [_count("ns[i]", int(n)) for n in ns]
    out = {name: np.zeros((n_seeds, len(ns))) for name in ("crosstalk_variance", "cosine")}
    for s in progress(range(n_seeds), desc=f"linear memory ({keys} keys)"):
        for j, n in enumerate(ns):
            g = _rng(seed, 1, s, n)
            K = data.gaussian_keys(n, d, g) if keys == "random" else data.frame_keys(n, d, g)
            V = torch.as_tensor(g.standard_normal((n, dv)))
            K = torch.as_tensor(K)
            W = outer_product_write(K, V)
            out["crosstalk_variance"][s, j] = float(crosstalk(K, V, W).pow(2).mean())
            out["cosine"][s, j] = float(_cosine_rows(outer_product_read(W, K), V).mean())
    return out


def crosstalk_vs_correlation(
    correlations: Sequence[float], n: int, d: int, dv: int | None = None, n_seeds: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """Crosstalk of ``n`` pairs whose keys have pairwise cosine ``c`` (``labkit.data.correlated_keys``).

    Returns {"crosstalk_variance": outer-product crosstalk variance, and one "cosine <rule>" entry per
    write rule — "outer product", "centred keys" (subtract the mean key before writing and reading),
    "projection" (pseudo-inverse)}: each (n_seeds, len(correlations)).
    """
    n, d, n_seeds = _count("n", n), _count("d", d), _count("n_seeds", n_seeds)
    dv = d if dv is None else _count("dv", dv)
    cs = _check_grid("correlations", correlations, 0.0, 0.999)
    names = ["crosstalk_variance", "cosine outer product", "cosine centred keys", "cosine projection"]
    out = {name: np.zeros((n_seeds, len(cs))) for name in names}
    for s in progress(range(n_seeds), desc="crosstalk vs correlation"):
        for j, c in enumerate(cs):
            g = _rng(seed, 2, s, j)
            K = torch.as_tensor(data.correlated_keys(n, d, float(c), g))
            V = torch.as_tensor(g.standard_normal((n, dv)))
            W = outer_product_write(K, V)
            out["crosstalk_variance"][s, j] = float(crosstalk(K, V, W).pow(2).mean())
            out["cosine outer product"][s, j] = float(_cosine_rows(outer_product_read(W, K), V).mean())
            Kc = K - K.mean(0, keepdim=True)
            Kc = Kc / Kc.norm(dim=1, keepdim=True)
            out["cosine centred keys"][s, j] = float(
                _cosine_rows(outer_product_read(outer_product_write(Kc, V), Kc), V).mean())
            out["cosine projection"][s, j] = float(
                _cosine_rows(outer_product_read(projection_write(K, V), K), V).mean())
    return out


def sparse_crosstalk(
    actives: Sequence[int], n: int, d: int, dv: int | None = None, n_seeds: int = 5, seed: int = 0
) -> np.ndarray:
    """Crosstalk variance of ``n`` pairs with sparse binary keys (``active`` ones of d, unit length).

    Returns (n_seeds, len(actives)); compare with ``predicted_sparse_crosstalk_variance``.
    """
    n, d, n_seeds = _count("n", n), _count("d", d), _count("n_seeds", n_seeds)
    dv = d if dv is None else _count("dv", dv)
    actives = [_count("actives[i]", int(a)) for a in actives]
    out = np.zeros((n_seeds, len(actives)))
    for s in progress(range(n_seeds), desc="sparse keys"):
        for j, a in enumerate(actives):
            g = _rng(seed, 3, s, j)
            K = torch.as_tensor(data.sparse_keys(n, d, a, g))
            V = torch.as_tensor(g.standard_normal((n, dv)))
            out[s, j] = float(crosstalk(K, V).pow(2).mean())
    return out


def forgetting_curve(
    T: int, d: int, decays: Sequence[float], dv: int | None = None, n_seeds: int = 5, seed: int = 0
) -> dict[float, np.ndarray]:
    """Stream ``T`` random pairs through ``W_t = decay W_{t-1} + v_t k_tᵀ`` and read every pair at the end.

    Returns {decay: (n_seeds, T)}: cosine between read-out and stored value, indexed by age (0 = newest).
    The same keys and values are used for every decay, so the curves differ only by the gate.
    """
    T, d, n_seeds = _count("T", T), _count("d", d), _count("n_seeds", n_seeds)
    dv = d if dv is None else _count("dv", dv)
    decays = _check_grid("decays", decays, 0.0, 1.0)
    out = {float(lam): np.zeros((n_seeds, T)) for lam in decays}
    for s in progress(range(n_seeds), desc="forgetting"):
        g = _rng(seed, 4, s)
        K = torch.as_tensor(data.gaussian_keys(T, d, g))
        V = torch.as_tensor(g.standard_normal((T, dv)))
        for lam in decays:
            # Writing one pair per step with decay λ equals one write with values scaled by λ^age.
            age = torch.arange(T - 1, -1, -1, dtype=K.dtype)
            W = outer_product_write(K, V * (float(lam) ** age)[:, None])
            cos = _cosine_rows(outer_product_read(W, K), V).numpy()
            out[float(lam)][s] = cos[::-1]
    return out


def correlated_cues(
    n: int, d: int, correlation: float, flip: float, g: np.random.Generator, n_cues: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` correlated ±1 patterns (``labkit.data.correlated_patterns``) and ``n_cues`` cues (default n):
    cue i is pattern ``i % n`` with exactly round(flip d) bits flipped, so with ``n_cues > n`` each pattern is
    cued several times with independent noise. Returns float32 tensors (n, d) and (n_cues, d)."""
    patterns = data.correlated_patterns(n, d, correlation, g)
    n_cues = n if n_cues is None else _count("n_cues", n_cues)
    k = int(round(flip * d))
    cues = patterns[np.arange(n_cues) % n].copy()
    if k:
        idx = np.argsort(g.random((n_cues, d)), axis=1)[:, :k]
        np.put_along_axis(cues, idx, -np.take_along_axis(cues, idx, axis=1), axis=1)
    return torch.as_tensor(patterns, dtype=torch.float32), torch.as_tensor(cues, dtype=torch.float32)


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def recall_three_ways(patterns: torch.Tensor, cues: torch.Tensor, beta: float, max_steps: int = 30):
    """Complete ``cues`` (m, d) from the stored ±1 ``patterns`` (n, d) with the three memories.

    "outer product": one linear read of ``W = Σ ξ ξᵀ / d`` then sign; "Hopfield": ``hopfield_recall``;
    "softmax": one ``softmax_read`` with keys = values = patterns (raw dot products, scale ``beta``), then
    sign. Returns {memory: (m, d) ±1 tensor}.
    """
    d = patterns.shape[1]
    W = outer_product_write(patterns / math.sqrt(d), patterns)
    return {
        "outer product": _sign(outer_product_read(W, cues / math.sqrt(d))),
        "Hopfield": hopfield_recall(hebbian_weights(patterns), cues, max_steps=max_steps),
        "softmax": _sign(softmax_read(cues, patterns, patterns, beta)),
    }


def recall_vs_load(
    loads: Sequence[float],
    d: int,
    correlations: Sequence[float] = (0.0,),
    n_seeds: int = 3,
    flip: float = 0.1,
    beta: float | None = None,
    n_probe: int = 200,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Pattern completion by the three memories as the load ``n/d`` grows.

    For each correlation c and load α, store ``n = max(2, round(α d))`` correlated ±1 patterns, cue up to
    ``n_probe`` of them with ``flip`` of their bits flipped and measure the overlap ``m = ξ·s/d`` of what
    each memory returns (1 = perfect, ``1 - 2 flip`` = no better than the cue). beta defaults to
    ``1/sqrt(d)``, the attention scale. Returns {memory: (len(correlations), n_seeds, len(loads))}.
    """
    d, n_seeds, n_probe = _count("d", d), _count("n_seeds", n_seeds), _count("n_probe", n_probe)
    loads = _check_grid("loads", loads, 0.0, 1e6)
    cs = _check_grid("correlations", correlations, 0.0, 0.999)
    beta = 1.0 / math.sqrt(d) if beta is None else _real("beta", beta)
    out = {name: np.zeros((len(cs), n_seeds, len(loads))) for name in MEMORIES}
    cells = [(i, s) for i in range(len(cs)) for s in range(n_seeds)]
    for i, s in progress(cells, desc="recall vs load"):
        for j, alpha in enumerate(loads):
            n = max(2, int(round(alpha * d)))
            g = _rng(seed, 5, i, s, j)
            patterns, cues = correlated_cues(n, d, float(cs[i]), flip, g, n_cues=min(n, n_probe))
            m = cues.shape[0]
            for name, state in recall_three_ways(patterns, cues, beta).items():
                out[name][i, s, j] = float((state * patterns[:m]).sum(1).mean()) / d
    return out


def hopfield_capacity(
    loads: Sequence[float], d: int, n_seeds: int = 3, n_probe: int = 200, max_steps: int = 50, seed: int = 0
) -> dict[str, np.ndarray]:
    """The classical Hopfield network from its own stored patterns, as the load ``α = n/d`` grows.

    Returns, each (n_seeds, len(loads)): "bit_error" — fraction of bits one update flips (compare
    ``predicted_bit_error``); "stable" — fraction of probed patterns that are exact fixed points;
    "overlap" — mean overlap after iterating to a fixed point (≈1 below α ≈ 0.138, collapses above);
    "retrieved" — fraction of probes ending with overlap ≥ 0.9.
    """
    d, n_seeds = _count("d", d), _count("n_seeds", n_seeds)
    n_probe, max_steps = _count("n_probe", n_probe), _count("max_steps", max_steps)
    loads = _check_grid("loads", loads, 0.0, 1e3)
    out = {name: np.zeros((n_seeds, len(loads))) for name in ("bit_error", "stable", "overlap", "retrieved")}
    for s in progress(range(n_seeds), desc=f"Hopfield d={d}"):
        for j, alpha in enumerate(loads):
            n = max(1, int(round(alpha * d)))
            patterns = data.binary_patterns(n, d, _rng(seed, 6, d, s, j))
            patterns = torch.as_tensor(patterns, dtype=torch.float32)
            W = hebbian_weights(patterns)
            probe = patterns[: min(n, n_probe)]
            first = hopfield_step(W, probe)
            out["bit_error"][s, j] = float((first != probe).float().mean())
            out["stable"][s, j] = float((first == probe).all(1).float().mean())
            final = hopfield_recall(W, probe, max_steps=max_steps)
            overlap = (final * probe).sum(1) / d
            out["overlap"][s, j] = float(overlap.mean())
            out["retrieved"][s, j] = float((overlap >= 0.9).float().mean())
    return out


def crossing(x: Sequence[float], y: Sequence[float], level: float) -> float:
    """First x where the curve y (sampled at x, decreasing through ``level``) crosses ``level``; linear
    interpolation. Returns nan when it never crosses."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    for i in range(len(x) - 1):
        if y[i] >= level > y[i + 1]:
            return float(x[i] + (y[i] - level) * (x[i + 1] - x[i]) / (y[i] - y[i + 1]))
    return float("nan")


def capacity_vs_dimension(
    dims: Sequence[int],
    n_grid: Sequence[int],
    flip: float = 0.125,
    n_seeds: int = 3,
    beta: float = 1.0,
    recall: float = 0.9,
    n_probe: int = 200,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Measured capacity — the n at which exact recall falls below ``recall`` — against dimension d.

    For each d, store n random ±1 patterns for n in ``n_grid`` (ascending; a memory stops at its first
    failing n), give ``n_probe`` cues with ``round(flip d)`` bits flipped (cycling over the patterns when
    n < n_probe) and count exact recalls (every bit right) by the classical Hopfield net and by one softmax
    step (raw dot products, ``beta``). The capacity interpolates ln n linearly in the recall rate between
    the last passing and the first failing grid value (the largest grid value if none fails).
    Returns {"Hopfield", "softmax"}: (n_seeds, len(dims)) capacities, and "recall Hopfield" /
    "recall softmax": (n_seeds, len(dims), len(n_grid)) exact-recall rates (nan = not run).
    """
    n_seeds, n_probe = _count("n_seeds", n_seeds), _count("n_probe", n_probe)
    dims = [_count("dims[i]", int(d), minimum=2) for d in dims]
    grid = sorted({_count("n_grid[i]", int(n)) for n in n_grid})
    if not 0.0 < recall < 1.0:
        raise ValueError(f"recall must be in (0, 1), got {recall}")
    names = ("Hopfield", "softmax")
    out = {name: np.zeros((n_seeds, len(dims))) for name in names}
    for name in names:
        out[f"recall {name}"] = np.full((n_seeds, len(dims), len(grid)), np.nan)
    for s, i in progress([(s, i) for s in range(n_seeds) for i in range(len(dims))], desc="capacity vs d"):
        d = dims[i]
        last = {name: None for name in names}  # (n, rate) of the last passing grid value
        alive = set(names)
        for j, n in enumerate(grid):
            patterns, cue = correlated_cues(n, d, 0.0, flip, _rng(seed, 7, s, d, n), n_probe)
            target = patterns[torch.arange(cue.shape[0]) % n]
            results = {}
            if "Hopfield" in alive:
                results["Hopfield"] = hopfield_recall(hebbian_weights(patterns), cue, max_steps=30)
            if "softmax" in alive:
                # in chunks of cues: the score matrix of all cues against 10^5 patterns would not fit
                results["softmax"] = torch.cat([_sign(softmax_read(part, patterns, patterns, beta))
                                                for part in cue.split(128)])
            for name, state in results.items():
                rate = float((state == target).all(1).float().mean())
                out[f"recall {name}"][s, i, j] = rate
                if rate >= recall:
                    last[name] = (n, rate)
                    out[name][s, i] = n
                    continue
                alive.discard(name)
                if last[name] is not None:
                    n0, r0 = last[name]
                    t = (r0 - recall) / (r0 - rate)
                    out[name][s, i] = math.exp(math.log(n0) + t * (math.log(n) - math.log(n0)))
            if not alive:
                break
    return out
