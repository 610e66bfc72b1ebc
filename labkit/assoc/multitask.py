r"""The multitasking Hebbian network (Agliari, Alessandrelli, Barra & Ricci-Tersenghi, "Parallel Learning by
Multitasking Neural Networks"): a Hopfield network on **diluted** patterns that retrieves several of them at once.

**Patterns.** P archetypes ξ^μ ∈ {−1, 0, +1}^N with ``P(ξ_i = 0) = d`` (the dilution) and ``P(ξ_i = ±1) =
(1 − d)/2`` (``diluted_patterns``). The network does not see them: it learns from M **examples** per archetype,
``η^{μa}_i = χ^{μa}_i ξ^μ_i`` with ``χ = +1`` with probability ``(1 + r)/2`` and −1 otherwise (``make_examples``;
r ∈ (0, 1] is the dataset quality, a blank stays blank). ``ρ = (1 − r²)/(M r²)`` is the dataset entropy and
``R = r²(1 + ρ) = r² + (1 − r²)/M`` the normalisation used below.

**Couplings** (zero diagonal), the two protocols of the paper:

- supervised (a teacher groups the examples by archetype): ``J = (1/(N R)) Σ_μ η̄^μ η̄^μᵀ`` with the class mean
  ``η̄^μ = (1/M) Σ_a η^{μa}``;
- unsupervised (no labels): ``J = (1/(N R M)) Σ_μ Σ_a η^{μa} η^{μa}ᵀ``;
- stored archetypes (r = 1, M = 1, both reduce to it): ``J = (1/N) Σ_μ ξ^μ ξ^μᵀ``, Hebb's rule on diluted patterns.

J has rank ≤ P (supervised) or ≤ P·M (unsupervised), so ``MultitaskNetwork`` keeps the factor V (N, K) with
``J = V Vᵀ / N − diag`` and never builds the N × N matrix: a local field costs O(K) per unit.

**Dynamics.** Units σ_i ∈ {±1} follow Glauber dynamics at temperature T (fast noise):
``P(σ_i = +1) = ½(1 + tanh(h_i / T))`` with ``h_i = Σ_j J_ij σ_j``; at T = 0 this is ``σ_i ← sign(h_i)`` (a zero
field keeps σ_i). Updates are random-sequential in small blocks (a block of N/``blocks`` units at a time, a fresh
random order each sweep; with 64 blocks a block moves every overlap by ≤ 1/64, close to one-at-a-time updates).
The order parameters are the **Mattis magnetizations** ``m_μ = (1/N) Σ_i ξ^μ_i σ_i`` (``mattis``); the largest
possible value is 1 − d, the fraction of non-blank entries.

**Why several patterns at once.** Cue pattern 1: its units align with ξ^1 where ξ^1 ≠ 0, but on its blanks
(a fraction d) ξ^1 exerts no field, and those units are free to align with another pattern, whose own blanks go
to a third, and so on. At T = 0 the signal-to-noise argument gives the **hierarchical** state

    σ_i = sign(ξ^1_i + d ξ^2_i + d² ξ^3_i + …)  ⇒  m_k = (1 − d) d^{k−1}  (k = 1, …, P; sorted)

(``hierarchical_magnetizations``), a power law in the rank. It is self-consistent while pattern 1 outweighs all
the others together where they all disagree, ``m_1 > m_2 + … + m_P``, i.e. ``d + d² + … + d^{P−1} < 1``
(``hierarchical_threshold``: 1 for P = 2, the inverse golden ratio 0.618 for P = 3, → ½ for large P). Past it,
and with fast noise, the amplitudes equalise: the **parallel** regime, all m_μ equal. The low-storage mean-field
theory (P finite, N → ∞; ``mean_field``) makes this quantitative with the overlaps ``n_μ = (1/N) Σ_i η̄^μ_i σ_i``:

    n_μ = E[ξ^μ χ̄^μ tanh(β Σ_ν n_ν ξ^ν χ̄^ν / R)],   m_μ = E[ξ^μ tanh(β Σ_ν n_ν ξ^ν χ̄^ν / R)],

with χ̄^μ the mean of M signs of mean r. The **unsupervised** field ``(1/(RM)) Σ_a η^{μa}_i (η^{μa}·σ/N)`` has the
same N → ∞ limit, because by symmetry among the examples every ``η^{μa}·σ/N`` equals n_μ: the teacher changes
nothing in the low-storage limit (the paper's claim), only finite-N corrections (which ``learning_experiment``
measures). ``regime`` names the state a set of magnetizations describes; ``phase_diagram`` maps it over (d, T).

Conventions here are ours where we could not check the paper's text (the normalisation R only rescales T).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from labkit import data
from labkit.runtime import progress

__all__ = [
    "MODES",
    "REGIMES",
    "MultitaskNetwork",
    "cue_state",
    "dilution_experiment",
    "diluted_patterns",
    "hierarchical_magnetizations",
    "hierarchical_threshold",
    "dilution_figure",
    "learning_experiment",
    "learning_threshold",
    "make_examples",
    "mattis",
    "mean_field",
    "phase_diagram",
    "regime",
]

MODES = ("supervised", "unsupervised")
REGIMES = ("paramagnetic", "pure", "hierarchical", "parallel")
_ENUM_LIMIT = 2_000_000  # rows of the exact mean-field expectation before we fall back to sampling


def _int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _dilution(d) -> float:
    if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= d < 1.0:
        raise ValueError(f"d (dilution, the probability of a blank entry) must be in [0, 1), got {d!r}")
    return float(d)


def _quality(r) -> float:
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0.0 < r <= 1.0:
        raise ValueError(f"r (example quality) must be in (0, 1], got {r!r}")
    return float(r)


def _temperature(T) -> float:
    if isinstance(T, bool) or not isinstance(T, numbers.Real) or not 0.0 <= T < math.inf:
        raise ValueError(f"T (temperature) must be a finite number >= 0, got {T!r}")
    return float(T)


def _ternary(name: str, x, ndim: Sequence[int] = (2,)) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if x.dim() not in ndim:
        raise ValueError(f"{name} must have {' or '.join(f'{k}-D' for k in ndim)} shape, got {tuple(x.shape)}")
    x = x.to(torch.float64)
    if x.numel() and not bool(((x == 1) | (x == -1) | (x == 0)).all()):
        raise ValueError(f"{name} must hold only -1, 0 and +1 entries, got other values")
    return x


def _spins(name: str, s, N: int) -> tuple[torch.Tensor, bool]:
    if not isinstance(s, torch.Tensor):
        s = torch.as_tensor(np.asarray(s, dtype=np.float64))
    if s.dim() not in (1, 2) or s.shape[-1] != N:
        raise ValueError(f"{name} must have shape (N,) or (B, N) with N = {N}, got {tuple(s.shape)}")
    s = s.to(torch.float64)
    if s.numel() and not bool(((s == 1) | (s == -1)).all()):
        raise ValueError(f"{name} must hold only +1 and -1 entries, got other values")
    vector = s.dim() == 1
    return (s[None] if vector else s).clone(), vector


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------


def diluted_patterns(P: int, N: int, d: float, seed: data.SeedLike = 0) -> torch.Tensor:
    """P archetypes of N entries, each 0 with probability d and ±1 with probability (1 − d)/2. Returns (P, N)
    float64."""
    P, N, d = _int("P", P), _int("N", N), _dilution(d)
    g = data.rng(seed)
    signs = np.where(g.random((P, N)) < 0.5, -1.0, 1.0)
    return torch.from_numpy(np.where(g.random((P, N)) < d, 0.0, signs))


def make_examples(patterns, M: int, r: float, seed: data.SeedLike = 0) -> torch.Tensor:
    """M noisy examples of each archetype: ``η^{μa}_i = χ^{μa}_i ξ^μ_i`` with ``χ = +1`` w.p. (1 + r)/2, else −1
    (blanks stay blank). patterns: (P, N) ternary. Returns (P, M, N) float64."""
    xi = _ternary("patterns", patterns)
    M, r = _int("M", M), _quality(r)
    g = data.rng(seed)
    chi = np.where(g.random((xi.shape[0], M, xi.shape[1])) < (1.0 + r) / 2.0, 1.0, -1.0)
    return torch.from_numpy(chi) * xi[:, None, :]


def mattis(patterns, sigma) -> torch.Tensor:
    """Mattis magnetizations ``m_μ = (1/N) Σ_i ξ^μ_i σ_i``. patterns: (P, N); sigma: (N,) or (B, N) of ±1.
    Returns (P,) or (B, P)."""
    xi = _ternary("patterns", patterns)
    s, vector = _spins("sigma", sigma, xi.shape[1])
    m = s @ xi.T / xi.shape[1]
    return m[0] if vector else m


def cue_state(patterns, index: int = 0, n_states: int = 1, seed: data.SeedLike = 0) -> torch.Tensor:
    """Initial states that show pattern ``index`` where it is non-blank and random signs on its blanks (the
    network is asked to fill them). Returns (n_states, N)."""
    xi = _ternary("patterns", patterns)
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < xi.shape[0]:
        raise ValueError(f"index must be in 0..{xi.shape[0] - 1}, got {index!r}")
    n_states = _int("n_states", n_states)
    g = data.rng(seed)
    rand = torch.from_numpy(np.where(g.random((n_states, xi.shape[1])) < 0.5, -1.0, 1.0))
    return torch.where(xi[index] != 0, xi[index], rand)


# --------------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------------


class MultitaskNetwork:
    """Hebbian couplings ``J = V Vᵀ / N`` with the diagonal removed, kept as the factor V: (N, K).

    Build with ``from_patterns(xi)`` (Hebb on the archetypes) or ``from_examples(eta, r, mode)`` (the paper's
    supervised / unsupervised protocols). ``couplings()`` returns the dense (N, N) matrix (for small N and tests),
    ``field(sigma)`` the local fields and ``run`` the Glauber / zero-temperature dynamics.
    """

    def __init__(self, V: torch.Tensor):
        if not isinstance(V, torch.Tensor) or V.dim() != 2 or V.shape[0] < 1 or V.shape[1] < 1:
            raise ValueError(f"V must be a (N, K) tensor with N, K >= 1, got {tuple(getattr(V, 'shape', ()))}")
        self.V = V.to(torch.float64)
        self.N = self.V.shape[0]
        self.diag = (self.V * self.V).sum(1) / self.N  # J_ii, removed from every field

    @classmethod
    def from_patterns(cls, patterns) -> MultitaskNetwork:
        """Hebb's rule on the archetypes: ``J = (1/N) Σ_μ ξ^μ ξ^μᵀ``. patterns: (P, N) ternary."""
        return cls(_ternary("patterns", patterns).T.contiguous())

    @classmethod
    def from_examples(cls, examples, r: float, mode: str = "supervised") -> MultitaskNetwork:
        """The paper's protocols on examples (P, M, N): "supervised" ``J = (1/(NR)) Σ_μ η̄^μ η̄^μᵀ`` or
        "unsupervised" ``J = (1/(NRM)) Σ_{μ,a} η^{μa} η^{μa}ᵀ``, with ``R = r² + (1 − r²)/M``."""
        eta = _ternary("examples", examples, ndim=(3,))
        r = _quality(r)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        P, M, N = eta.shape
        if P < 1 or M < 1 or N < 1:
            raise ValueError(f"examples must have shape (P, M, N) with P, M, N >= 1, got {tuple(eta.shape)}")
        R = r * r + (1.0 - r * r) / M
        if mode == "supervised":
            return cls(eta.mean(1).T.contiguous() / math.sqrt(R))
        return cls(eta.reshape(P * M, N).T.contiguous() / math.sqrt(R * M))

    def couplings(self) -> torch.Tensor:
        """The dense (N, N) coupling matrix (zero diagonal)."""
        J = self.V @ self.V.T / self.N
        J.fill_diagonal_(0.0)
        return J

    def field(self, sigma) -> torch.Tensor:
        """Local fields ``h = J σ``. sigma: (N,) or (B, N) of ±1. Returns like sigma."""
        s, vector = _spins("sigma", sigma, self.N)
        h = (s @ self.V) @ self.V.T / self.N - s * self.diag
        return h[0] if vector else h

    def run(self, sigma0, T: float = 0.0, sweeps: int = 40, blocks: int = 64, seed: data.SeedLike = 0,
            patterns=None, average_last: int = 0, T_start: float | None = None):
        """Random-sequential Glauber dynamics at temperature T (T = 0: ``σ_i ← sign(h_i)``, ties keep σ_i).

        ``T_start`` > T anneals: the temperature falls linearly from T_start to T over the first half of the
        sweeps (a slow cooling lets the state find the deeper minima a quench can miss) and stays at T after.

        sigma0: (N,) or (B, N) of ±1 (B independent runs, same block orders, own noise). Every sweep visits all
        units in a fresh random order, ``blocks`` groups at a time. At T = 0 the run stops after a sweep that
        changes nothing (a fixed point). Returns (final state like sigma0, sweeps done); with ``patterns`` (P, N)
        also the Mattis magnetizations averaged over the last ``average_last`` sweeps (0: the final state only),
        (P,) or (B, P).
        """
        s, vector = _spins("sigma0", sigma0, self.N)
        T, sweeps, blocks = _temperature(T), _int("sweeps", sweeps), _int("blocks", blocks)
        blocks = min(blocks, self.N)
        if T_start is not None and (_temperature(T_start) < T):
            raise ValueError(f"T_start must be >= T = {T}, got {T_start!r}")
        cool = max(1, sweeps // 2)
        average_last = _int("average_last", average_last, low=0)
        xi = None if patterns is None else _ternary("patterns", patterns)
        if xi is not None and xi.shape[1] != self.N:
            raise ValueError(f"patterns must have N = {self.N} entries per row, got {xi.shape[1]}")
        g = data.rng(seed)
        q = s @ self.V  # (B, K) overlaps with the factor columns
        m_sum, n_avg = None, 0
        done = 0
        for done in range(1, sweeps + 1):  # noqa: B007 (done is read after the loop)
            changed = False
            temp = T if T_start is None else T + (T_start - T) * max(0.0, 1.0 - (done - 1) / cool)
            for idx in np.array_split(g.permutation(self.N), blocks):
                idx_t = torch.from_numpy(idx)
                Vb = self.V[idx_t]
                old = s[:, idx_t]
                h = q @ Vb.T / self.N - old * self.diag[idx_t]
                if temp == 0.0:
                    new = torch.where(h > 1e-12, 1.0, torch.where(h < -1e-12, -1.0, old))
                else:
                    u = torch.from_numpy(g.random(h.shape))
                    new = torch.where(u < torch.sigmoid(2.0 * h / temp), 1.0, -1.0).to(torch.float64)
                delta = new - old
                if bool(delta.any()):
                    changed = True
                    s[:, idx_t] = new
                    q += delta @ Vb
            if xi is not None and average_last and done > sweeps - average_last:
                m = s @ xi.T / self.N
                m_sum = m if m_sum is None else m_sum + m
                n_avg += 1
            if temp == 0.0 and not changed:
                break
        out = (s[0] if vector else s), done
        if xi is None:
            return out
        if m_sum is None or (T == 0.0 and n_avg < average_last):
            m = s @ xi.T / self.N  # stopped at a fixed point: the final state is the average
        else:
            m = m_sum / n_avg
        return (*out, m[0] if vector else m)


# --------------------------------------------------------------------------------------------------------
# theory
# --------------------------------------------------------------------------------------------------------


def hierarchical_magnetizations(d: float, P: int) -> np.ndarray:
    """The T = 0 hierarchical state ``m_k = (1 − d) d^{k−1}``, k = 1..P (sorted magnetizations). Returns (P,)."""
    d, P = _dilution(d), _int("P", P)
    return (1.0 - d) * d ** np.arange(P, dtype=float)


def hierarchical_threshold(P: int) -> float:
    """The dilution above which the hierarchical state stops being self-consistent at T = 0: the root in (0, 1]
    of ``d + d² + … + d^{P−1} = 1`` (1 for P ≤ 2, 0.618 for P = 3, → ½ as P grows)."""
    P = _int("P", P)
    if P <= 2:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):  # the left side increases in d: bisection
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sum(mid ** k for k in range(1, P)) < 1.0 else (lo, mid)
    return 0.5 * (lo + hi)


def _site_law(d: float, r: float, M: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pattern's site variable z = ξ χ̄: values, probabilities w(z) and u(z) = E[ξ; z]. M None or r = 1:
    χ̄ = r exactly (the archetype itself when r = 1)."""
    if M is None or r == 1.0:
        return np.array([0.0, r, -r]), np.array([d, (1 - d) / 2, (1 - d) / 2]), np.array([0.0, (1 - d) / 2,
                                                                                         -(1 - d) / 2])
    k = np.arange(M + 1)
    logp = (np.array([math.lgamma(M + 1) - math.lgamma(i + 1) - math.lgamma(M - i + 1) for i in k])
            + k * math.log((1 + r) / 2) + (M - k) * math.log((1 - r) / 2))
    p = np.exp(logp)  # P(χ̄ = (2k − M)/M)
    c = (2 * k - M) / M
    vals, w, u = [0.0], [d], [0.0]
    for i in range(M + 1):
        if c[i] == 0.0:  # a tie among the examples: z = 0 whatever ξ is
            w[0] += (1 - d) * p[i]
            continue
        vals += [c[i], -c[i]]
        w += [(1 - d) / 2 * p[i], (1 - d) / 2 * p[i]]  # ξ = +1 with χ̄ = c, or ξ = −1 with χ̄ = c
        u += [(1 - d) / 2 * p[i], -(1 - d) / 2 * p[i]]
    vals, w, u = np.array(vals), np.array(w), np.array(u)
    keys = np.round(vals, 12)  # merge equal z values
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inv, w), np.bincount(inv, u)


def mean_field(d: float, P: int, T: float = 0.0, r: float = 1.0, M: int | None = None, init=None,
               max_iter: int = 2000, tol: float = 1e-10, n_samples: int = 400_000, seed: int = 0) -> dict:
    """Low-storage mean-field theory (P finite, N → ∞) of the multitasking network.

    Iterates ``n_μ ← E[ξ^μ χ̄^μ tanh(β Σ_ν n_ν ξ^ν χ̄^ν / R)]`` to a fixed point (β = 1/T; T = 0: sign, with
    sign(0) = 0, the average of a random tie), from ``init`` (magnetizations (P,); default the hierarchical state
    ``(1 − d) d^{k−1}``, the state a cue of pattern 1 reaches). r, M: the examples (r = 1 or M None: the
    archetypes themselves; supervised and unsupervised share this limit). The expectation is exact (enumerated
    over the joint law of the P site variables) up to 2e6 terms, else a Monte Carlo average over ``n_samples``
    sites. Returns {"m": (P,) Mattis magnetizations, "n": (P,) overlaps with the class means, "iterations",
    "converged"}.
    """
    d, P, T, r = _dilution(d), _int("P", P), _temperature(T), _quality(r)
    if M is not None:
        M = _int("M", M)
    R = 1.0 if (M is None or r == 1.0) else r * r + (1.0 - r * r) / M
    vals, w, u = _site_law(d, r, M)
    if len(vals) ** P <= _ENUM_LIMIT:
        idx = np.array(list(itertools.product(range(len(vals)), repeat=P)), dtype=np.int64).reshape(-1, P)
        z = vals[idx]  # (rows, P)
        wz = w[idx]
        weight = wz.prod(1)
        # E[ξ^μ ...] = Σ u_μ(z_μ) Π_{ν≠μ} w_ν(z_ν) ...; guard w = 0 (never: every listed value has mass)
        ratio = u[idx] / np.where(wz > 0, wz, 1.0)
        mult_m = weight[:, None] * ratio
        mult_n = weight[:, None] * z
    else:
        g = np.random.default_rng(seed)
        idx = np.stack([g.choice(len(vals), size=n_samples, p=w / w.sum()) for _ in range(P)], 1)
        z = vals[idx]
        ratio = u[idx] / w[idx]
        mult_m = ratio / n_samples
        mult_n = z / n_samples
    if init is None:
        m0 = hierarchical_magnetizations(d, P)
    else:
        m0 = np.asarray(init, dtype=float)
        if m0.shape != (P,):
            raise ValueError(f"init must have shape (P,) = ({P},), got {m0.shape}")
    n = m0 * r  # a state built from the archetype: n = E[ξ χ̄ σ] = r m
    converged, it = False, 0
    for it in range(1, max_iter + 1):  # noqa: B007
        h = z @ n / R
        f = np.sign(h) if T == 0.0 else np.tanh(h / T)
        f = np.where(np.abs(h) < 1e-13, 0.0, f)
        new = (mult_n * f[:, None]).sum(0)
        if np.abs(new - n).max() < tol:
            n, converged = new, True
            break
        n = new
    h = z @ n / R
    f = np.sign(h) if T == 0.0 else np.tanh(h / T)
    f = np.where(np.abs(h) < 1e-13, 0.0, f)
    return {"m": (mult_m * f[:, None]).sum(0), "n": n, "iterations": it, "converged": converged}


def regime(m, zero: float = 0.02, equal: float = 0.05) -> str:
    """Name the state magnetizations describe: "paramagnetic" (all |m| < ``zero``), "pure" (one above), "parallel"
    (all above and within a relative spread ``equal`` of each other) or "hierarchical" (several above, unequal)."""
    m = np.sort(np.abs(np.asarray(m, dtype=float)))[::-1]
    if m.ndim != 1 or m.size < 1:
        raise ValueError(f"m must be a non-empty 1-D sequence, got shape {m.shape}")
    alive = m > zero
    if not alive.any():
        return "paramagnetic"
    if alive.sum() == 1:
        return "pure" if m.size > 1 else "parallel"
    if alive.all() and (m[0] - m[-1]) <= equal * m[0]:
        return "parallel"
    return "hierarchical"


# --------------------------------------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------------------------------------


def _float_grid(name: str, values, low: float, high: float, high_open: bool = True) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    ok = a.ndim == 1 and a.size > 0 and np.all(a >= low) and (np.all(a < high) if high_open else np.all(a <= high))
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be a non-empty 1-D sequence in [{low}, {high}{bracket}, got {values!r}")
    return a


def _anneal(T: float, anneal) -> float | None:
    if isinstance(anneal, bool) or not isinstance(anneal, numbers.Real) or not 0.0 <= anneal < math.inf:
        raise ValueError(f"anneal must be a finite number >= 0, got {anneal!r}")
    return T + float(anneal) if anneal > 0 else None


def _sorted_run(xi: torch.Tensor, net: MultitaskNetwork, n_states: int, T: float, sweeps: int, blocks: int,
                anneal, g: np.random.Generator) -> np.ndarray:
    """Runs from cues of pattern 1 (anneal from T + anneal, average the last half of the sweeps when T > 0);
    each run's |m| sorted in decreasing order. Returns (n_states, P)."""
    _, _, mm = net.run(cue_state(xi, 0, n_states, g), T=T, sweeps=sweeps, blocks=blocks, seed=g, patterns=xi,
                       average_last=(sweeps // 2 if T > 0 else 0), T_start=_anneal(T, anneal))
    return np.sort(mm.abs().numpy(), axis=1)[:, ::-1]


def dilution_experiment(ds: Sequence[float], P: int, N: int, T: float = 0.0, n_seeds: int = 3, n_states: int = 2,
                        sweeps: int = 40, blocks: int = 64, anneal: float = 0.3,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted Mattis magnetizations against the dilution, simulation vs theory.

    For each d and seed: P diluted archetypes stored by Hebb's rule, ``n_states`` runs from a cue of pattern 1
    (``cue_state``), Glauber dynamics annealed from T + ``anneal`` down to T over the first half of the sweeps (0:
    a quench at T; at T = 0 a quench often stops in a mixture of the later patterns on pattern 1's blanks),
    magnetizations averaged over the last half when T > 0 and sorted in decreasing order per run (which pattern
    ranks second is decided by chance on the blanks). Returns {"d" (L,), "m": (n_seeds, L, P) mean over states,
    "theory" (L, P) ``mean_field``, "hierarchical" (L, P), "threshold" = ``hierarchical_threshold(P)``, "P", "N"}.
    """
    ds = _float_grid("ds", ds, 0.0, 1.0)
    P, N, n_seeds, n_states = _int("P", P), _int("N", N, 2), _int("n_seeds", n_seeds), _int("n_states", n_states)
    T = _temperature(T)
    _anneal(T, anneal)
    m = np.zeros((n_seeds, len(ds), P))
    for s in progress(range(n_seeds), desc=f"multitask d-sweep P={P} N={N}"):
        for j, d in enumerate(ds):
            g = np.random.default_rng([seed, s, j, N, P])
            xi = diluted_patterns(P, N, float(d), g)
            m[s, j] = _sorted_run(xi, MultitaskNetwork.from_patterns(xi), n_states, T, sweeps, blocks, anneal,
                                  g).mean(0)
    theory = np.array([np.sort(np.abs(mean_field(float(d), P, T)["m"]))[::-1] for d in ds])
    return {"d": ds, "m": m, "theory": theory,
            "hierarchical": np.array([hierarchical_magnetizations(float(d), P) for d in ds]),
            "threshold": hierarchical_threshold(P), "P": P, "N": N}


def phase_diagram(ds: Sequence[float], Ts: Sequence[float], P: int = 3, N: int | None = None, n_seeds: int = 1,
                  sweeps: int = 40, blocks: int = 64, anneal: float = 0.3, seed: int = 0) -> dict:
    """The regime (``regime``) over a (T, d) grid from the mean-field theory, and from simulations when N is given
    (one run per seed and grid point, the protocol of ``dilution_experiment``).

    Returns {"d" (L,), "T" (K,), "theory_m": (K, L, P) sorted magnetizations, "theory": (K, L) regime names,
    "spread": (K, L) ``m_min / m_max`` of the theory (1 = parallel, 0 = a pattern left out; 0 when all vanish)};
    with N also "sim_m" (n_seeds, K, L, P), "sim_spread" (K, L) and "sim" (K, L) regime names of the seed mean.
    """
    ds = _float_grid("ds", ds, 0.0, 1.0)
    Ts = _float_grid("Ts", Ts, 0.0, math.inf)
    P = _int("P", P)
    for T in Ts:
        _anneal(float(T), anneal)
    tm = np.zeros((len(Ts), len(ds), P))
    for a, T in enumerate(Ts):
        for b, d in enumerate(ds):
            tm[a, b] = np.sort(np.abs(mean_field(float(d), P, float(T))["m"]))[::-1]

    def spread(mm):
        return np.where(mm[..., 0] > 0.02, mm[..., -1] / np.maximum(mm[..., 0], 1e-12), 0.0)

    out = {"d": ds, "T": Ts, "theory_m": tm, "spread": spread(tm),
           "theory": np.array([[regime(tm[a, b]) for b in range(len(ds))] for a in range(len(Ts))])}
    if N is not None:
        N, n_seeds = _int("N", N, 2), _int("n_seeds", n_seeds)
        sm = np.zeros((n_seeds, len(Ts), len(ds), P))
        for s in progress(range(n_seeds), desc="multitask phase diagram"):
            for a, T in enumerate(Ts):
                for b, d in enumerate(ds):
                    g = np.random.default_rng([seed, s, a, b, N, P])
                    xi = diluted_patterns(P, N, float(d), g)
                    sm[s, a, b] = _sorted_run(xi, MultitaskNetwork.from_patterns(xi), 1, float(T), sweeps, blocks,
                                              anneal, g)[0]
        mean = sm.mean(0)
        out.update(sim_m=sm, sim_spread=spread(mean),
                   sim=np.array([[regime(mean[a, b]) for b in range(len(ds))] for a in range(len(Ts))]))
    return out


def learning_experiment(Ms: Sequence[int], r: float, d: float, P: int, N: int, T: float = 0.0, n_seeds: int = 3,
                        sweeps: int = 40, blocks: int = 64, anneal: float = 0.3, modes: Sequence[str] = MODES,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """Learning the archetypes from M examples each, supervised vs unsupervised, against M.

    For each M and seed: P archetypes, M examples of quality r, couplings by each protocol from the same examples,
    one run from a cue of archetype 1 (the archetype itself on its support, random on its blanks: does the learned
    network keep it and fill the blanks with the others?), the protocol of ``dilution_experiment``; sorted
    archetype magnetizations. Returns {"M" (L,), mode: (n_seeds, L, P) for each mode, "theory": (L, P)
    ``mean_field(d, P, T, r, M)`` (both protocols share it)}.
    """
    Ms = [_int("M", M) for M in Ms]
    if not Ms:
        raise ValueError("Ms must hold at least one number of examples")
    r, d, T = _quality(r), _dilution(d), _temperature(T)
    P, N, n_seeds = _int("P", P), _int("N", N, 2), _int("n_seeds", n_seeds)
    _anneal(T, anneal)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"modes must be drawn from {MODES}, got {mode!r}")
    out = {mode: np.zeros((n_seeds, len(Ms), P)) for mode in modes}
    for s in progress(range(n_seeds), desc=f"multitask learning r={r}"):
        for j, M in enumerate(Ms):
            g = np.random.default_rng([seed, s, j, N, P, M])
            xi = diluted_patterns(P, N, d, g)
            eta = make_examples(xi, M, r, g)
            for mode in modes:
                net = MultitaskNetwork.from_examples(eta, r, mode)
                gm = np.random.default_rng([seed, s, j, N, P, M, 1])  # same cue and noise for both protocols
                out[mode][s, j] = _sorted_run(xi, net, 1, T, sweeps, blocks, anneal, gm)[0]
    out["M"] = np.asarray(Ms)
    out["theory"] = np.array([np.sort(np.abs(mean_field(d, P, T, r, M)["m"]))[::-1] for M in Ms])
    return out


def learning_threshold(Ms: Sequence[float], m1, target: float) -> float:
    """The number of examples at which the top magnetization first reaches ``target`` (linear interpolation in
    log M between the grid points; ``inf`` if it never does). Ms: (L,) increasing; m1: (L,)."""
    Ms = np.asarray(Ms, dtype=float)
    m1 = np.asarray(m1, dtype=float)
    if Ms.ndim != 1 or Ms.shape != m1.shape or Ms.size == 0 or np.any(Ms <= 0) or np.any(np.diff(Ms) <= 0):
        raise ValueError(f"Ms must be increasing positive numbers with one m1 value each, got {Ms!r} and {m1!r}")
    above = np.nonzero(m1 >= target)[0]
    if above.size == 0:
        return math.inf
    j = int(above[0])
    if j == 0:
        return float(Ms[0])
    x0, x1, y0, y1 = math.log(Ms[j - 1]), math.log(Ms[j]), m1[j - 1], m1[j]
    return float(math.exp(x0 + (target - y0) * (x1 - x0) / (y1 - y0)))


def dilution_figure(results: Sequence[dict], title: str = ""):
    """Sorted magnetizations vs dilution, one slider step per ``dilution_experiment`` result (one P each): the
    simulation (markers, ±1 std over seeds), the mean-field theory (dashed) and the hierarchical threshold."""
    import plotly.graph_objects as go

    from labkit.viz import PALETTE

    if not results:
        raise ValueError("results must hold at least one dilution_experiment result")
    fig, owner = go.Figure(), []
    for step, res in enumerate(results):
        d, m, th = res["d"], res["m"], res["theory"]
        for k in range(m.shape[2]):
            color = PALETTE[k % len(PALETTE)]
            fig.add_trace(go.Scatter(x=d, y=m[:, :, k].mean(0), error_y=dict(array=m[:, :, k].std(0)),
                                     mode="markers", marker=dict(color=color, size=7), name=f"m_{k + 1} simulated",
                                     visible=step == 0))
            fig.add_trace(go.Scatter(x=d, y=th[:, k], mode="lines", line=dict(color=color, dash="dash"),
                                     name=f"m_{k + 1} theory", visible=step == 0))
            owner += [step, step]
        dc = res["threshold"]
        if dc < 1.0:
            fig.add_trace(go.Scatter(x=[dc, dc], y=[0, 1], mode="lines", line=dict(color=PALETTE[5], dash="dot"),
                                     name=f"d_c(P={res['P']}) = {dc:.3f}", visible=step == 0))
            owner.append(step)
    steps = [dict(method="update", label=f"P = {res['P']}",
                  args=[{"visible": [o == i for o in owner]}]) for i, res in enumerate(results)]
    fig.update_layout(title=title, xaxis_title="dilution d", yaxis_title="sorted Mattis magnetization m_k",
                      sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="patterns: "))],
                      hovermode="closest")
    return fig
