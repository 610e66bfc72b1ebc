r"""Sparse distributed representations (SDRs) and the mathematics of matching them (Ahmad & Hawkins, "How do
neurons operate on sparse distributed representations?").

An SDR is a binary vector of ``n`` bits with ``w`` of them ON (``w ≪ n``). A dendritic segment that stores a
pattern with ``s`` synapses fires for an input when the **overlap** (the number of shared ON bits) reaches a
threshold ``θ``. The chance that a *random* w-bit input fires it by accident — a **false match** — is a
hypergeometric tail (choose which b of the s synapses the input hits, and where its other w − b bits fall):

    P(overlap ≥ θ) = Σ_{b=θ}^{min(w, s)} C(s, b) · C(n − s, w − b) / C(n, w)          (s = w: the brief's form)

computed in log space (``log_comb``) so n in the tens of thousands is exact to rounding. Because the count of
patterns is astronomically large, θ a little below w makes false matches vanishingly rare while tolerating
noise: a stored pattern with k of its w bits moved still matches when at most ``w − θ`` of them were lost.

**Subsampling**: a segment need not store all w bits of a pattern; with s < w synapses (and θ ≤ s) the false
match rate is the same formula with s, and a noisy copy (k of the w bits moved) still matches with probability
``noisy_match_probability`` = P(Hypergeom(w, w − k, s) ≥ θ).

**Unions**: OR together M stored patterns of s bits each (s = w unless a segment subsamples); a random w-bit
input matches the union when ≥ θ of its bits are ON in it. The paper substitutes the union's expected number of
ON bits, ``n (1 − (1 − s/n)^M)``, for s (``union_false_match_probability``). The union's size is random, so
``union_false_match_exact`` averages the formula over its exact distribution (``union_size_pmf``, a Markov chain
over the size as patterns are added); simulation agrees with the exact value within sampling error and shows
how good the paper's approximation is.

**Choosing θ**: ``threshold_sweep`` evaluates the formula over a grid of population sizes, sparsities and synapse
counts and summarises it per θ (median, mean, min, max), the paper's argument for where a dendritic (NMDA)
threshold should sit.

Simulation uses the bit-packed kernel ``labkit.kernels.sdr_match`` (popcount of AND over 64-bit words fused with
the threshold). With fixed-weight random SDRs the M × B pair indicators are **pairwise independent** (given one
side, the overlap with a fresh random SDR is hypergeometric whatever that side is), so the count of matches
has exactly binomial variance and ``binomial_interval`` (Wilson) is the honest error bar. Unions break this
(queries tested against one union share its size), so the union simulation reports a per-union (cluster)
standard error instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import gammaln, logsumexp

from labkit import data
from labkit.runtime import progress

__all__ = [
    "add_noise",
    "binomial_interval",
    "expected_union_bits",
    "false_match_experiment",
    "false_match_probability",
    "log_comb",
    "noisy_match_experiment",
    "noisy_match_probability",
    "overlap",
    "overlap_pmf",
    "plot_rates",
    "random_sdrs",
    "simulate_false_match",
    "simulate_union_false_match",
    "threshold_sweep",
    "union_experiment",
    "union_false_match_exact",
    "union_false_match_probability",
    "union_size_pmf",
]


def _int(name: str, value, low: int = 0, high: int | None = None, high_name: str | None = None) -> int:
    """An integer in low..high (clear ValueError otherwise); ``high_name`` names the bound in the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if high is None and value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    if high is not None and not low <= value <= high:
        bound = f"{low}..{high_name} = {low}..{high}" if high_name else f"{low}..{high}"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


def _nw(n, w) -> tuple[int, int]:
    n = _int("n", n, low=1)
    w = _int("w", w, low=1, high=n, high_name="n")
    return n, w


# --------------------------------------------------------------------------------------------------------
# SDRs
# --------------------------------------------------------------------------------------------------------


def random_sdrs(count: int, n: int, w: int, seed: data.SeedLike = 0) -> torch.Tensor:
    """``count`` uniformly random SDRs of ``n`` bits with exactly ``w`` ON. Returns (count, n) bool."""
    count = _int("count", count)
    n, w = _nw(n, w)
    g = data.rng(seed)
    out = np.zeros((count, n), dtype=bool)
    if count:
        idx = np.argpartition(g.random((count, n)), w - 1, axis=1)[:, :w]  # a uniform w-subset per row
        np.put_along_axis(out, idx, True, axis=1)
    return torch.from_numpy(out)


def _random_subsets(count: int, n: int, w: int, g: np.random.Generator) -> torch.Tensor:
    """Like ``random_sdrs`` (uniform w-subsets, (count, n) bool) but fast for w² < n: draw w positions with
    replacement and redraw the rows that repeat one (rejection keeps the subsets exactly uniform)."""
    if w * w >= n:
        return random_sdrs(count, n, w, g)
    idx = g.integers(n, size=(count, w))
    while True:
        srt = np.sort(idx, axis=1)
        bad = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(1))
        if bad.size == 0:
            break
        idx[bad] = g.integers(n, size=(bad.size, w))
    out = np.zeros((count, n), dtype=bool)
    np.put_along_axis(out, idx, True, axis=1)
    return torch.from_numpy(out)


def add_noise(sdrs: torch.Tensor, k: int, seed: data.SeedLike = 0) -> torch.Tensor:
    """Move ``k`` of each row's ON bits to positions that were OFF (the weight w stays). sdrs: (…, n) bool with
    at least k ON and k OFF bits per row. Returns a new bool tensor like ``sdrs``."""
    x = _bool("sdrs", sdrs)
    k = _int("k", k)
    flat = x.reshape(-1, x.shape[-1]).numpy().copy()
    on = flat.sum(1)
    if flat.shape[0] and (on.min() < k or (flat.shape[1] - on).max() < k):
        raise ValueError(f"k must be <= the ON and OFF bits of every row (min ON {on.min()}, min OFF "
                         f"{(flat.shape[1] - on).min()}), got {k}")
    g = data.rng(seed)
    if k:
        r = g.random(flat.shape)
        off_idx = np.argsort(np.where(flat, 2.0, r), axis=1)[:, :k]  # k random OFF positions
        on_idx = np.argsort(np.where(flat, r, 2.0), axis=1)[:, :k]  # k random ON positions
        np.put_along_axis(flat, on_idx, False, axis=1)
        np.put_along_axis(flat, off_idx, True, axis=1)
    return torch.from_numpy(flat.reshape(x.shape))


def _bool(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of bool, got {type(x).__name__}")
    if x.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (an SDR), got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (…, n), got {tuple(x.shape)}")
    return x.cpu()


def overlap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The number of shared ON bits, ``|x ∧ y|``. x, y: (…, n) bool, broadcast together. Returns (…) int64.
    (For many queries against many patterns use ``labkit.kernels.sdr_match`` on packed words.)"""
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.dtype != torch.bool \
            or y.dtype != torch.bool:
        raise TypeError("x and y must be bool tensors (SDRs)")
    if x.shape[-1:] != y.shape[-1:]:
        raise ValueError(f"y must have n = {x.shape[-1]} bits like x, got {y.shape[-1]}")
    return (x & y).sum(-1)


# --------------------------------------------------------------------------------------------------------
# the analytic formulas
# --------------------------------------------------------------------------------------------------------


def log_comb(n, k) -> np.ndarray:
    """log C(n, k) elementwise (float; -inf where k < 0 or k > n). Exact to rounding for huge n."""
    n, k = np.asarray(n, dtype=float), np.asarray(k, dtype=float)
    ok = (k >= 0) & (k <= n)
    with np.errstate(invalid="ignore"):
        val = gammaln(n + 1) - gammaln(np.where(ok, k, 0) + 1) - gammaln(np.where(ok, n - k, 0) + 1)
    return np.where(ok, val, -np.inf)


def overlap_pmf(n: int, w: int, s: int | None = None) -> np.ndarray:
    """P(overlap = b), b = 0..min(w, s), between a random w-bit SDR and a fixed set of s bits (s defaults to w):
    the hypergeometric ``C(s, b) C(n − s, w − b) / C(n, w)``. Returns (min(w, s) + 1,) float64 summing to 1."""
    n, w = _nw(n, w)
    s = w if s is None else _int("s", s, low=0, high=n, high_name="n")
    b = np.arange(min(w, s) + 1)
    return np.exp(log_comb(s, b) + log_comb(n - s, w - b) - log_comb(n, w))


def false_match_probability(n: int, w: int, theta: int, s: int | None = None) -> float:
    """P(overlap ≥ θ) for a random w-bit SDR against a stored pattern of s ON bits (s = w by default; s < w is
    subsampling): ``Σ_{b=θ}^{min(w,s)} C(s,b) C(n−s, w−b) / C(n, w)``, summed in log space. θ = 0 gives 1."""
    n, w = _nw(n, w)
    s = w if s is None else _int("s", s, low=0, high=n, high_name="n")
    theta = _int("theta", theta)
    top = min(w, s)
    if theta > top:
        return 0.0
    b = np.arange(theta, top + 1)
    logp = logsumexp(log_comb(s, b) + log_comb(n - s, w - b)) - float(log_comb(n, w))
    return float(min(1.0, math.exp(logp)))


def noisy_match_probability(w: int, s: int, theta: int, k: int) -> float:
    """P(a stored pattern still matches after ``k`` of its w ON bits moved elsewhere), for a segment holding a
    random s of the w bits with threshold θ: the kept w − k bits cover Hypergeom(w, w − k, s) synapses, so
    ``Σ_{b≥θ} C(w−k, b) C(k, s−b) / C(w, s)``."""
    w = _int("w", w, low=1)
    s = _int("s", s, low=0, high=w, high_name="w")
    k = _int("k", k, low=0, high=w, high_name="w")
    theta = _int("theta", theta)
    b = np.arange(theta, s + 1)
    if b.size == 0:
        return 0.0
    return float(min(1.0, math.exp(logsumexp(log_comb(w - k, b) + log_comb(k, s - b)) - float(log_comb(w, s)))))


def expected_union_bits(n: int, w: int, M: int) -> float:
    """Expected ON bits of the union (OR) of M random w-bit SDRs: ``n (1 − (1 − w/n)^M)``."""
    n, w = _nw(n, w)
    M = _int("M", M, low=1)
    return n * (1.0 - (1.0 - w / n) ** M)


def union_false_match_probability(n: int, w: int, M: int, theta: int, s: int | None = None) -> float:
    """The paper's union false-positive rate for a w-bit query against the union of M stored patterns of s bits
    each (s = w by default): ``false_match_probability`` with the stored size replaced by the union's expected ON
    bits ``n (1 − (1 − s/n)^M)`` (rounded to the nearest integer)."""
    n, w = _nw(n, w)
    s = w if s is None else _int("s", s, low=1, high=n, high_name="n")
    return false_match_probability(n, w, theta, s=int(round(expected_union_bits(n, s, M))))


def union_size_pmf(n: int, w: int, M: int) -> np.ndarray:
    """The exact distribution of the number of ON bits in the union of M random w-bit SDRs. Adding one SDR to a
    union of u bits overlaps it in o ~ Hypergeom(n, u, w) bits, so the size moves u → u + w − o.
    Returns (n + 1,) float64 (index = union size)."""
    n, w = _nw(n, w)
    M = _int("M", M, low=1)
    top = min(n, M * w)  # the union never exceeds M·w bits: only sizes 0..top need the transition table
    u = np.arange(top + 1)
    o = np.arange(w + 1)
    T = np.exp(log_comb(u[:, None], o[None, :]) + log_comb(n - u[:, None], w - o[None, :]) - float(log_comb(n, w)))
    p = np.zeros(top + 1)
    p[w] = 1.0
    for _ in range(M - 1):
        new = np.zeros(top + 1)
        for j in range(w + 1):  # overlap j moves u to u + (w - j)
            shift = w - j
            new[shift:] += (p * T[:, j])[: top + 1 - shift]
        p = new
    out = np.zeros(n + 1)
    out[: top + 1] = p / p.sum()
    return out


def union_false_match_exact(n: int, w: int, M: int, theta: int, s: int | None = None) -> float:
    """P(a random w-bit SDR has ≥ θ bits ON in the union of M random s-bit SDRs (s = w by default)), averaged over
    the union's exact size distribution (``union_size_pmf``); what a simulation estimates."""
    n, w = _nw(n, w)
    s = w if s is None else _int("s", s, low=1, high=n, high_name="n")
    theta = _int("theta", theta)
    pmf = union_size_pmf(n, s, M)
    sizes = np.flatnonzero(pmf > 1e-300)
    b = np.arange(theta, w + 1)
    if b.size == 0:
        return 0.0
    terms = log_comb(sizes[:, None], b[None, :]) + log_comb(n - sizes[:, None], w - b[None, :]) - float(log_comb(n, w))
    with np.errstate(divide="ignore", invalid="ignore"):
        p_size = np.exp(logsumexp(terms, axis=1))  # the false-match formula at every union size at once
    return float(np.clip(np.nan_to_num(p_size), 0.0, 1.0) @ pmf[sizes])


def binomial_interval(hits: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a binomial rate ``hits / trials`` (z = 1.96: 95 %). Returns (lo, hi)."""
    trials = _int("trials", trials, low=1)
    hits = _int("hits", hits, low=0, high=trials, high_name="trials")
    p = hits / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------------------------------------
# simulation
# --------------------------------------------------------------------------------------------------------


def _match_counts(queries: torch.Tensor, stored: torch.Tensor, thetas: Sequence[int], backend: str) -> list[int]:
    """How many of the B × M (query, stored) pairs reach each θ (one kernel call for the overlaps)."""
    from labkit.kernels.sdr_match import pack_bits, sdr_match

    _, ov = sdr_match(pack_bits(queries), pack_bits(stored), 0, backend=backend)
    counts = torch.bincount(ov.flatten().long(), minlength=queries.shape[1] + 1).cumsum(0)
    total = int(counts[-1])
    return [total - (int(counts[t - 1]) if t > 0 else 0) if t <= queries.shape[1] else 0 for t in thetas]


def simulate_false_match(n: int, w: int, thetas: Sequence[int] | int, s: int | None = None, n_stored: int = 500,
                         n_queries: int = 500, seed: data.SeedLike = 0, backend: str = "auto") -> dict[str, np.ndarray]:
    """Estimate P(overlap ≥ θ) by matching ``n_queries`` random w-bit SDRs against ``n_stored`` random s-bit
    patterns (s defaults to w): n_stored × n_queries pairwise-independent trials, all overlaps from one
    ``sdr_match`` call. Returns {"theta", "hits", "rate", "lo", "hi"} ((T,) arrays; lo/hi: 95 % Wilson) and
    "trials" (int)."""
    n, w = _nw(n, w)
    s = w if s is None else _int("s", s, low=1, high=n, high_name="n")
    thetas = np.atleast_1d(np.asarray(thetas))
    thetas = [_int("thetas[i]", int(t)) for t in thetas]
    n_stored, n_queries = _int("n_stored", n_stored, low=1), _int("n_queries", n_queries, low=1)
    g = data.rng(seed)
    stored = random_sdrs(n_stored, n, s, g)
    queries = random_sdrs(n_queries, n, w, g)
    hits = _match_counts(queries, stored, thetas, backend)
    trials = n_stored * n_queries
    ci = [binomial_interval(h, trials) for h in hits]
    return {"theta": np.asarray(thetas), "hits": np.asarray(hits), "rate": np.asarray(hits) / trials,
            "lo": np.array([c[0] for c in ci]), "hi": np.array([c[1] for c in ci]), "trials": trials}


def false_match_experiment(n: int, w: int, thetas: Sequence[int], s: int | None = None, n_stored: int = 500,
                           n_queries: int = 500, seed: data.SeedLike = 0,
                           backend: str = "auto") -> dict[str, np.ndarray]:
    """The analytic false-match curve over θ beside its simulation: ``simulate_false_match``'s entries plus
    "analytic" ((T,) from ``false_match_probability``), "z" ((T,) the binomial z-score of the simulated count,
    (rate − p) / sqrt(p (1 − p) / trials); nan where p is 0 or 1) and "inside" ((T,) bool: p lies in the 95 %
    Wilson interval)."""
    out = simulate_false_match(n, w, thetas, s=s, n_stored=n_stored, n_queries=n_queries, seed=seed,
                               backend=backend)
    p = np.array([false_match_probability(n, w, int(t), s=s) for t in out["theta"]])
    out["analytic"] = p
    sd = np.sqrt(p * (1 - p) / out["trials"])
    with np.errstate(divide="ignore", invalid="ignore"):
        out["z"] = np.where(sd > 0, (out["rate"] - p) / sd, np.nan)
    out["inside"] = (out["lo"] <= p) & (p <= out["hi"])
    return out


def noisy_match_experiment(w: int, s: int, theta: int, ks: Sequence[int], n: int = 1024, n_trials: int = 2000,
                           seed: data.SeedLike = 0) -> dict[str, np.ndarray]:
    """Subsampling under noise: store a random s of a pattern's w bits, move k of the pattern's bits, test the
    segment (≥ θ). Returns {"k", "analytic" (``noisy_match_probability``), "rate", "lo", "hi"}: (K,) arrays."""
    w = _int("w", w, low=1)
    n = _int("n", n, low=2 * w, high=None)
    s = _int("s", s, low=1, high=w, high_name="w")
    theta = _int("theta", theta)
    n_trials = _int("n_trials", n_trials, low=1)
    g = data.rng(seed)
    patterns = random_sdrs(n_trials, n, w, g)
    # the segment's synapses: a random s-subset of each pattern's ON bits
    keys = np.where(patterns.numpy(), g.random(patterns.shape), 2.0)
    syn_idx = np.argsort(keys, axis=1)[:, :s]
    synapses = np.zeros(patterns.shape, dtype=bool)
    np.put_along_axis(synapses, syn_idx, True, axis=1)
    synapses = torch.from_numpy(synapses)
    out = {"k": np.asarray(ks, dtype=int), "analytic": [], "rate": [], "lo": [], "hi": []}
    for k in out["k"]:
        k = _int("ks[i]", int(k), low=0, high=w, high_name="w")
        hits = int((overlap(add_noise(patterns, k, g), synapses) >= theta).sum())
        lo, hi = binomial_interval(hits, n_trials)
        for key, val in (("analytic", noisy_match_probability(w, s, theta, k)), ("rate", hits / n_trials),
                         ("lo", lo), ("hi", hi)):
            out[key].append(val)
    return {key: np.asarray(val) for key, val in out.items()}


def simulate_union_false_match(n: int, w: int, M: int, theta: int, n_unions: int = 200, n_queries: int = 500,
                               seed: data.SeedLike = 0, backend: str = "auto",
                               s: int | None = None) -> dict[str, float]:
    """Estimate the union false-positive rate: ``n_unions`` unions of M random s-bit SDRs (s = w by default), each
    tested against ``n_queries`` random w-bit SDRs. Returns {"rate", "se" (standard error from the spread of the
    per-union rates: queries that share a union share its size), "mean_union_bits", "trials"}."""
    n, w = _nw(n, w)
    s = w if s is None else _int("s", s, low=1, high=n, high_name="n")
    M = _int("M", M, low=1)
    theta = _int("theta", theta)
    n_unions, n_queries = _int("n_unions", n_unions, low=2), _int("n_queries", n_queries, low=1)
    g = data.rng(seed)
    unions = torch.zeros(n_unions, n, dtype=torch.bool)
    for _ in range(M):
        unions |= _random_subsets(n_unions, n, s, g)
    queries = random_sdrs(n_queries, n, w, g)
    from labkit.kernels.sdr_match import pack_bits, sdr_match

    match, _ = sdr_match(pack_bits(queries), pack_bits(unions), theta, backend=backend)
    per_union = match.double().mean(0).numpy()  # (n_unions,)
    return {"rate": float(per_union.mean()), "se": float(per_union.std(ddof=1) / math.sqrt(n_unions)),
            "mean_union_bits": float(unions.sum(1).double().mean()), "trials": n_unions * n_queries}


def union_experiment(n: int, w: int, Ms: Sequence[int], theta: int, n_unions: int = 200, n_queries: int = 500,
                     seed: int = 0, backend: str = "auto", s: int | None = None) -> dict[str, np.ndarray]:
    """The union property over M (unions of M patterns of s bits, s = w by default; w-bit queries): {"M", "paper"
    (``union_false_match_probability``), "exact" (``union_false_match_exact``), "rate", "se", "z" = (rate −
    exact) / se, "expected_bits", "mean_union_bits"}: (len(Ms),) arrays."""
    s_bits = w if s is None else s
    keys = ("M", "paper", "exact", "rate", "se", "expected_bits", "mean_union_bits")
    out = {key: [] for key in keys}
    for i, M in enumerate(progress(list(Ms), desc="SDR unions")):
        sim = simulate_union_false_match(n, w, int(M), theta, n_unions, n_queries,
                                         seed=np.random.default_rng([seed, i]), backend=backend, s=s)
        out["M"].append(int(M))
        out["paper"].append(union_false_match_probability(n, w, int(M), theta, s=s))
        out["exact"].append(union_false_match_exact(n, w, int(M), theta, s=s))
        out["rate"].append(sim["rate"])
        out["se"].append(sim["se"])
        out["expected_bits"].append(expected_union_bits(n, s_bits, int(M)))
        out["mean_union_bits"].append(sim["mean_union_bits"])
    out = {key: np.asarray(val) for key, val in out.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["z"] = np.where(out["se"] > 0, (out["rate"] - out["exact"]) / out["se"], np.nan)
    return out


def threshold_sweep(thetas: Sequence[int], ns: Sequence[int], sparsities: Sequence[float],
                    synapses: Sequence[int]) -> dict[str, np.ndarray]:
    """The false-match probability over a grid, summarised per threshold: for every θ in ``thetas`` and every
    (n, sparsity, s) with a = round(sparsity · n) active cells, ``false_match_probability(n, a, θ, s)``.
    Returns {"theta", "median", "mean", "min", "max"}: (T,) arrays, and "grid_size" (int)."""
    ns = [_int("ns[i]", int(n), low=1) for n in ns]
    synapses = [_int("synapses[i]", int(s), low=1) for s in synapses]
    for p in sparsities:
        if not 0 < p <= 1:
            raise ValueError(f"sparsities must lie in (0, 1], got {p}")
    cells = [(n, min(n, max(1, int(round(p * n)))), s) for n in ns for p in sparsities for s in synapses]
    for n, _, s in cells:
        if s > n:
            raise ValueError(f"synapses must be <= every n, got s = {s} > n = {n}")
    out = {key: [] for key in ("theta", "median", "mean", "min", "max")}
    for theta in thetas:
        theta = _int("thetas[i]", int(theta))
        vals = np.array([false_match_probability(n, a, theta, s=s) for n, a, s in cells])
        for key, val in (("theta", theta), ("median", np.median(vals)), ("mean", vals.mean()), ("min", vals.min()),
                         ("max", vals.max())):
            out[key].append(val)
    result = {key: np.asarray(val) for key, val in out.items()}
    result["grid_size"] = len(cells)
    return result


def plot_rates(curves: dict, title: str = "", xaxis: str = "", yaxis: str = "probability", log_y: bool = True):
    """Simulated rates with error bars over their theory curves (one colour per curve).

    curves: label -> {"x", "rate", "lo", "hi"}: measured points and their interval (points with rate 0 are drawn at
    the interval's top as open markers on a log axis; an empty "x" draws the theory only), with optional "theory" (a
    dashed line over "x", or over "theory_x" when given) and "theory2" (a dotted second theory curve, named by
    "theory2_name"). Returns a plotly figure in the book's theme."""
    import plotly.graph_objects as go

    from labkit.viz import PALETTE

    fig = go.Figure()
    for i, (label, c) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        x, rate = np.asarray(c["x"], dtype=float), np.asarray(c["rate"], dtype=float)
        lo, hi = np.asarray(c["lo"], dtype=float), np.asarray(c["hi"], dtype=float)
        if "theory" in c:
            fig.add_trace(go.Scatter(x=np.asarray(c.get("theory_x", x), dtype=float), y=c["theory"], mode="lines",
                                     name=f"{label}: theory", legendgroup=label,
                                     line=dict(color=color, dash="dash", width=2)))
        if "theory2" in c:
            fig.add_trace(go.Scatter(x=np.asarray(c.get("theory_x", x), dtype=float), y=c["theory2"], mode="lines",
                                     name=f"{label}: {c.get('theory2_name', 'theory 2')}", legendgroup=label,
                                     line=dict(color=color, dash="dot", width=2)))
        if x.size == 0:  # a theory-only curve
            continue
        seen = rate > 0 if log_y else np.ones_like(rate, dtype=bool)
        fig.add_trace(go.Scatter(x=x[seen], y=rate[seen], mode="markers", name=f"{label}: simulated",
                                 legendgroup=label, marker=dict(color=color, size=7),
                                 error_y=dict(type="data", symmetric=False, array=(hi - rate)[seen],
                                              arrayminus=(rate - np.maximum(lo, rate * 1e-3 if log_y else lo))[seen])))
        if log_y and (~seen).any():
            fig.add_trace(go.Scatter(x=x[~seen], y=hi[~seen], mode="markers", name=f"{label}: 0 hits (upper bound)",
                                     legendgroup=label, marker=dict(color=color, size=8, symbol="triangle-down-open")))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, hovermode="closest")
    if log_y:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig
