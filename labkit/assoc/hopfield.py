r"""Hopfield networks, classical and modern, as chapter 6 compares them with the spiking memory.

The classical network and one softmax read were built in the prologue (``labkit.prologue``: ``hebbian_weights``,
``hopfield_step``, ``hopfield_recall``, ``softmax_read``, ``predicted_bit_error``); this module imports them
and adds what chapter 6 measures.

**Classical** (Hopfield 1982). P patterns ξ^μ ∈ {±1}^N are stored by Hebb's rule
``W = (1/N) Σ_μ ξ^μ ξ^μᵀ`` with a zero diagonal; a state s evolves by ``s_i ← sign(Σ_j W_ij s_j)``, either all
units at once (**synchronous**, ``hopfield_step``) or one unit at a time in random order (**asynchronous**,
``async_recall``). The energy ``E(s) = −½ sᵀ W s`` never increases under asynchronous updates (W symmetric,
zero diagonal), so the network settles in a local minimum. Reading unit i of a stored pattern gives the signal
(N−1)/N plus crosstalk from the other P − 1 patterns, a sum of ≈ P N random ±1/N terms; the signal-to-noise
argument gives the per-bit error rate ``Φ(−sqrt(N/P))`` (``snr_bit_error``; the prologue's
``predicted_bit_error`` keeps the finite-size factors). Errors feed back as the state moves, and the replica
theory of Amit, Gutfreund & Sompolinsky (1985) puts the cliff at the load ``α_c = P/N ≈ 0.138``: below it a
retrieval state within ≈ 1.6 % bit errors of each pattern exists, above it retrieval collapses
(``capacity_experiment`` measures the fraction recalled within a bit-error tolerance vs load).

**Modern** (dense associative memory; Krotov & Hopfield 2016, Demircigil et al. 2017, Ramsauer et al. 2021).
With the patterns as the columns of X (N, P) the update

    ξ_new = X softmax(β Xᵀ ξ)

is one attention step with query ξ and keys = values = the stored patterns (``modern_retrieve``; equal to
``torch.nn.functional.scaled_dot_product_attention`` with ``scale=β``). It minimises the energy
``E(ξ) = −β⁻¹ log Σ_μ exp(β x_μᵀ ξ) + ½ ξᵀξ + β⁻¹ log P + ½ max_μ |x_μ|²`` (``modern_energy``; each update
lowers it, by the concave–convex procedure), and its capacity grows exponentially with N: Demircigil et al.
prove that ``exp(α N)`` random ±1 patterns can be stored and recovered from ρN flipped bits for
``α < I(1 − 2ρ)/2`` with ``I(x) = ½((1+x)ln(1+x) + (1−x)ln(1−x))`` (``demircigil_capacity``; ``2^{N/2}`` at ρ = 0),
and Ramsauer et al. give a similar exponential bound for continuous patterns on a sphere.
``modern_capacity_experiment`` measures recall vs load where the classical network has long failed.

How sharp must the softmax be? One update from a cue ξ with a fraction f of wrong bits returns exactly the target's
signs when the target's softmax weight exceeds ½ (the other patterns together then cannot outvote any bit). With
w_μ = exp(β x_μᵀ ξ), a random ±1 pattern has ``E w_μ = cosh(β)^N`` and the target has ``w_t = exp(β N (1 − 2f))``,
so to first moment recall holds while ``(P − 1) cosh(β)^N < exp(β N (1 − 2f))`` (``modern_capacity_bound``). The
exponent ``N (β (1 − 2f) − ln cosh β)`` is largest at ``β* = atanh(1 − 2f)``, where it equals ``N I(1 − 2f)``: the
exponent of Demircigil et al. without their ½ (they ask every pattern to be a fixed point at once; here one cue is
asked to come back). Above β* the average is carried by rare patterns closer to the cue than typical, which a
finite store does not hold, and the bound stays at its value at β*. It is a sufficient condition, so it sits below
measured recall. ``energy_path`` draws both energies along a path of bit flips between two stored patterns.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from labkit import data
from labkit.prologue import (
    AGS_CAPACITY,
    hebbian_weights,
    hopfield_recall,
    hopfield_step,
    normal_cdf,
    predicted_bit_error,
    softmax_read,
)
from labkit.runtime import progress

__all__ = [
    "AGS_CAPACITY",
    "ags_capacity",
    "async_recall",
    "capacity_experiment",
    "demircigil_capacity",
    "energy",
    "energy_path",
    "flip_cue",
    "hebbian_weights",
    "hopfield_recall",
    "hopfield_step",
    "modern_capacity_bound",
    "modern_capacity_experiment",
    "modern_energy",
    "modern_retrieve",
    "predicted_bit_error",
    "recall_fraction",
    "snr_bit_error",
    "sync_recall",
]


def _int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _pm1(name: str, x, width: int | None = None) -> tuple[torch.Tensor, bool]:
    """x as a float (m, N) tensor of ±1 (a 1-D x is one row); checks the width against ``width``."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if x.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape (N,) or (m, N), got {tuple(x.shape)}")
    vector = x.dim() == 1
    x = x[None] if vector else x
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{name} must have N = {width} units per row, got {x.shape[1]}")
    if x.numel() and not bool(((x == 1) | (x == -1)).all()):
        raise ValueError(f"{name} must hold only +1 and -1 entries, got other values")
    return x, vector


def _square(W) -> torch.Tensor:
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be a square (N, N) tensor, got {tuple(getattr(W, 'shape', ()))}")
    return W


# --------------------------------------------------------------------------------------------------------
# classical
# --------------------------------------------------------------------------------------------------------


def energy(W: torch.Tensor, state) -> torch.Tensor:
    """The Hopfield energy ``E(s) = −½ sᵀ W s``. W: (N, N); state: (N,) or (m, N) of ±1. Returns () or (m,)."""
    W = _square(W)
    s, vector = _pm1("state", state, W.shape[0])
    s = s.to(W.dtype)
    e = -0.5 * ((s @ W) * s).sum(1)
    return e[0] if vector else e


def sync_recall(W: torch.Tensor, cue, max_steps: int = 50) -> tuple[torch.Tensor, int]:
    """Synchronous recall: iterate ``s ← sign(W s)`` (all units at once, sign(0) = +1) until nothing changes or
    ``max_steps``. W: (N, N); cue: (N,) or (m, N) of ±1. Returns (state like cue, steps taken). A synchronous
    network may end in a 2-cycle instead of a fixed point; ``async_recall`` always converges."""
    W = _square(W)
    s, vector = _pm1("cue", cue, W.shape[0])
    max_steps = _int("max_steps", max_steps)
    s = s.to(W.dtype)
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 (steps is read after the loop)
        new = hopfield_step(W, s)
        if torch.equal(new, s):
            break
        s = new
    return (s[0] if vector else s), steps


def async_recall(W: torch.Tensor, cue, max_sweeps: int = 50, seed: data.SeedLike = 0,
                 return_energy: bool = False):
    """Asynchronous recall: sweep the units in a fresh random order, setting ``s_i ← sign(Σ_j W_ij s_j)`` one at a
    time (sign(0) keeps s_i; a field below 1e-9 max|W| counts as 0), until a whole sweep changes nothing (a fixed
    point) or ``max_sweeps``. W: (N, N); cue: (N,) or (m, N) of ±1 (the m states evolve independently, same
    orders). Returns
    (state like cue, sweeps taken), plus the energy after every sweep ((sweeps + 1, m), row 0 = the cue) when
    ``return_energy``."""
    W = _square(W)
    s, vector = _pm1("cue", cue, W.shape[0])
    max_sweeps = _int("max_sweeps", max_sweeps)
    g = data.rng(seed)
    s = s.to(W.dtype).clone()
    N = W.shape[0]
    energies = [energy(W, s)]
    eps = 1e-9 * float(W.abs().max()) if W.numel() else 0.0  # a field this small is a rounded 0: keep the unit
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007
        changed = False
        for i in g.permutation(N):
            h = s @ W[:, i]
            new = torch.where(h > eps, 1.0, torch.where(h < -eps, -1.0, s[:, i])).to(s.dtype)
            if not torch.equal(new, s[:, i]):
                changed = True
                s[:, i] = new
        energies.append(energy(W, s))
        if not changed:
            break
    out = (s[0] if vector else s), sweeps
    return (*out, torch.stack(energies)) if return_energy else out


def snr_bit_error(P: int, N: int) -> float:
    """The signal-to-noise prediction of the per-bit error of one update: ``Φ(−sqrt(N/P))`` (signal 1, crosstalk
    variance P/N). ``predicted_bit_error(P, N)`` (prologue) keeps the finite-size factors."""
    P, N = _int("P", P), _int("N", N)
    return float(normal_cdf(-math.sqrt(N / P)))


def ags_capacity(N: int) -> float:
    """The Amit–Gutfreund–Sompolinsky capacity ``0.138 N`` (patterns a Hebbian network of N units retrieves)."""
    return AGS_CAPACITY * _int("N", N)


def flip_cue(patterns: torch.Tensor, flips: int, seed: data.SeedLike = 0) -> torch.Tensor:
    """Copies of ±1 ``patterns`` (m, N) with exactly ``flips`` random signs flipped per row (a noisy cue)."""
    p, _ = _pm1("patterns", patterns)
    N = p.shape[1]
    if isinstance(flips, bool) or not isinstance(flips, numbers.Integral) or not 0 <= flips <= N:
        raise ValueError(f"flips must be in 0..N = 0..{N}, got {flips!r}")
    g = data.rng(seed)
    out = p.clone()
    if flips:
        idx = torch.from_numpy(np.argsort(g.random(p.shape), axis=1)[:, :flips])
        out.scatter_(1, idx, -out.gather(1, idx))
    return out


def recall_fraction(recalled: torch.Tensor, targets: torch.Tensor, tolerance: float = 0.0) -> float:
    """Fraction of rows of ``recalled`` within ``tolerance`` (a fraction of bits) of the matching ``targets`` row.
    Both (m, N) of ±1."""
    if recalled.shape != targets.shape:
        raise ValueError(f"recalled must have the targets' shape {tuple(targets.shape)}, got {tuple(recalled.shape)}")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    errors = (recalled != targets).double().mean(1)
    return float((errors <= tolerance + 1e-12).double().mean())


def capacity_experiment(loads: Sequence[float], N: int, n_seeds: int = 3, tolerance: float = 0.02,
                        flips: int = 0, mode: str = "sync", n_probe: int = 100, max_steps: int = 50,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """The classical network against the load ``α = P/N``.

    For each load store ``P = max(1, round(α N))`` random ±1 patterns, start from up to ``n_probe`` of them with
    ``flips`` bits flipped, run ``mode`` ("sync" or "async") recall and count a pattern recalled when at most
    ``tolerance`` of its bits end wrong. Returns {"load" (L,), "recalled", "bit_error" (fraction of bits one
    synchronous update flips in a stored pattern), "final_error" (mean fraction of wrong bits at the end):
    (n_seeds, L); "snr" (L,) = ``snr_bit_error``; "predicted" (L,) = ``predicted_bit_error``; "ags" = 0.138}.
    """
    N, n_seeds, n_probe = _int("N", N, low=2), _int("n_seeds", n_seeds), _int("n_probe", n_probe)
    if mode not in ("sync", "async"):
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    loads = np.asarray(loads, dtype=float)
    if loads.ndim != 1 or loads.size == 0 or loads.min() <= 0:
        raise ValueError(f"loads must be a non-empty 1-D sequence of positive numbers, got {loads!r}")
    Ps = [max(1, int(round(a * N))) for a in loads]
    out = {key: np.zeros((n_seeds, len(Ps))) for key in ("recalled", "bit_error", "final_error")}
    for s in progress(range(n_seeds), desc=f"Hopfield capacity N={N}"):
        for j, P in enumerate(Ps):
            g = np.random.default_rng([seed, s, j, N])
            patterns = torch.as_tensor(data.binary_patterns(P, N, g))
            W = hebbian_weights(patterns)
            probe = patterns[:n_probe]
            out["bit_error"][s, j] = float((hopfield_step(W, probe) != probe).double().mean())
            cue = flip_cue(probe, flips, g)
            if mode == "sync":
                final, _ = sync_recall(W, cue, max_steps=max_steps)
            else:
                final, _ = async_recall(W, cue, max_sweeps=max_steps, seed=g)
            out["recalled"][s, j] = recall_fraction(final, probe, tolerance)
            out["final_error"][s, j] = float((final != probe).double().mean())
    out["load"] = loads
    out["snr"] = np.array([snr_bit_error(P, N) for P in Ps])
    out["predicted"] = np.array([predicted_bit_error(P, N) for P in Ps])
    out["ags"] = AGS_CAPACITY
    return out


# --------------------------------------------------------------------------------------------------------
# modern
# --------------------------------------------------------------------------------------------------------


def _patterns(X) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(np.asarray(X, dtype=np.float64))
    if X.dim() != 2 or X.shape[0] == 0:
        raise ValueError(f"X must hold the stored patterns as rows, shape (P, N) with P >= 1, got {tuple(X.shape)}")
    return X if X.is_floating_point() else X.double()


def modern_retrieve(X, xi, beta: float, steps: int = 1) -> torch.Tensor:
    """The modern Hopfield update ``ξ ← X softmax(β Xᵀ ξ)``, ``steps`` times.

    X: (P, N), the stored patterns **as rows** (so the chapter's column matrix is Xᵀ here); xi: (N,) or (m, N)
    states; beta > 0 (inverse temperature; ``math.inf`` = nearest pattern). One step is attention with query ξ
    and keys = values = the patterns (``labkit.prologue.softmax_read``). Returns like ``xi``.
    """
    X = _patterns(X)
    steps = _int("steps", steps)
    state = xi
    for _ in range(steps):
        state = softmax_read(state, X, X, beta)
    return state


def modern_energy(X, xi, beta: float) -> torch.Tensor:
    """Ramsauer et al.'s energy ``E(ξ) = −β⁻¹ lse(β Xᵀξ) + ½ ξᵀξ + β⁻¹ log P + ½ M²`` (M = the largest pattern
    norm), which ``modern_retrieve`` never increases. X: (P, N) rows; xi: (N,) or (m, N). Returns () or (m,)."""
    X = _patterns(X)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (0 < beta < math.inf):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    x = torch.as_tensor(xi).to(X.dtype)
    vector = x.dim() == 1
    x = x[None] if vector else x
    if x.dim() != 2 or x.shape[1] != X.shape[1]:
        raise ValueError(f"xi must have N = {X.shape[1]} entries per row, got shape {tuple(torch.as_tensor(xi).shape)}")
    P = X.shape[0]
    M2 = float((X * X).sum(1).max())
    e = -torch.logsumexp(beta * x @ X.T, dim=1) / beta + 0.5 * (x * x).sum(1) + math.log(P) / beta + 0.5 * M2
    return e[0] if vector else e


def demircigil_capacity(N: int, rho: float = 0.0) -> float:
    """Demircigil et al. (2017): the exponential-interaction network stores ``exp(α N)`` random ±1 patterns and
    recovers them from ρN flipped bits for ``α < I(1 − 2ρ)/2``, ``I(x) = ½((1+x)ln(1+x) + (1−x)ln(1−x))``.
    Returns the bound ``exp(N I(1 − 2ρ)/2)`` (= 2^{N/2} at ρ = 0; asymptotic in N, not a finite-N guarantee)."""
    N = _int("N", N)
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not 0.0 <= rho < 0.5:
        raise ValueError(f"rho must be in [0, 0.5), got {rho!r}")
    x = 1.0 - 2.0 * rho
    info = 0.5 * ((1 + x) * math.log1p(x) + ((1 - x) * math.log(1 - x) if x < 1 else 0.0))
    return math.exp(N * info / 2.0)


def modern_capacity_experiment(loads: Sequence[float], N: int, beta: float = 1.0, flips: int = 0,
                               n_seeds: int = 3, tolerance: float = 0.0, n_probe: int = 100, steps: int = 1,
                               seed: int = 0) -> dict[str, np.ndarray]:
    """Modern Hopfield recall against the load ``P/N`` (loads far above 0.138 are the point).

    Store ``P = max(1, round(α N))`` random ±1 patterns, cue up to ``n_probe`` of them with ``flips`` flipped bits,
    run ``steps`` updates of ``modern_retrieve`` (raw dot products scaled by ``beta``), take the sign and count
    the rows within ``tolerance`` of their pattern. Returns {"load" (L,), "recalled": (n_seeds, L), "classical":
    (n_seeds, L) the Hebbian network (synchronous) on the same cues}."""
    N, n_seeds, n_probe = _int("N", N, low=2), _int("n_seeds", n_seeds), _int("n_probe", n_probe)
    loads = np.asarray(loads, dtype=float)
    if loads.ndim != 1 or loads.size == 0 or loads.min() <= 0:
        raise ValueError(f"loads must be a non-empty 1-D sequence of positive numbers, got {loads!r}")
    Ps = [max(1, int(round(a * N))) for a in loads]
    out = {"recalled": np.zeros((n_seeds, len(Ps))), "classical": np.zeros((n_seeds, len(Ps)))}
    for s in progress(range(n_seeds), desc=f"modern Hopfield N={N}"):
        for j, P in enumerate(Ps):
            g = np.random.default_rng([seed, s, j, N, 1])
            patterns = torch.as_tensor(data.binary_patterns(P, N, g))
            probe = patterns[:n_probe]
            cue = flip_cue(probe, flips, g)
            new = modern_retrieve(patterns, cue, beta, steps=steps)
            out["recalled"][s, j] = recall_fraction(torch.where(new >= 0, 1.0, -1.0).to(probe.dtype), probe,
                                                    tolerance)
            final, _ = sync_recall(hebbian_weights(patterns), cue)
            out["classical"][s, j] = recall_fraction(final, probe, tolerance)
    out["load"] = loads
    return out


def modern_capacity_bound(N: int, flips: int, beta: float) -> float:
    """First-moment estimate of how many random ±1 patterns one modern update (``modern_retrieve``, raw dot products
    scaled by ``beta``) recalls exactly from a cue with ``flips`` wrong bits: the target's softmax weight exceeds ½
    when ``(P − 1) cosh(β)^N < exp(β N (1 − 2f))``, f = flips / N, so

        P_max(β) = 1 + exp(N [β' (1 − 2f) − ln cosh β']),   β' = min(β, atanh(1 − 2f)),

    which at β' = atanh(1 − 2f) is ``1 + exp(N I(1 − 2f))`` (= 1 + ``demircigil_capacity(N, f)``²). A sufficient
    condition on average, not a sharp threshold (see the module docstring). beta > 0 (``math.inf`` allowed)."""
    N = _int("N", N)
    if isinstance(flips, bool) or not isinstance(flips, numbers.Integral) or not 0 <= flips < N / 2:
        raise ValueError(f"flips must be an integer in 0..N/2 (exclusive) = 0..{(N - 1) // 2}, got {flips!r}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or math.isnan(beta) or not beta > 0:
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    x = 1.0 - 2.0 * flips / N
    b = min(float(beta), math.atanh(x)) if x < 1 else float(beta)
    # ln cosh b = b + log1p(e^{-2b}) - ln 2 (stable for large b)
    exponent = N * (b * x - (b + math.log1p(math.exp(-2.0 * b)) - math.log(2.0)))
    return 1.0 + math.exp(exponent)


def energy_path(X, start: int, end: int, beta: float | None = None) -> dict[str, np.ndarray]:
    """Energies along a path of single bit flips from the stored pattern ``X[start]`` to ``X[end]``.

    X: (P, N) stored ±1 patterns (rows); state k of the path agrees with ``X[end]`` on the first k of the D bits where
    the two patterns differ (in index order) and with ``X[start]`` elsewhere, k = 0..D. Returns {"k" (D+1,),
    "overlap" (D+1,) = state·X[start]/N, "classical" (D+1,) = ``energy`` of the Hebbian network of all of X, per unit
    (E/N), and with ``beta`` "modern" (D+1,) = ``modern_energy(X, state, beta)`` per unit}."""
    X, _ = _pm1("X", X)
    P, N = X.shape
    for name, idx in (("start", start), ("end", end)):
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral) or not 0 <= idx < P:
            raise ValueError(f"{name} must be a pattern index in 0..P-1 = 0..{P - 1}, got {idx!r}")
    diff = torch.nonzero(X[start] != X[end]).flatten()
    states = X[start].repeat(diff.numel() + 1, 1)
    for k in range(1, diff.numel() + 1):
        states[k:, diff[k - 1]] = X[end, diff[k - 1]]
    W = hebbian_weights(X)
    out = {"k": np.arange(diff.numel() + 1), "overlap": (states @ X[start] / N).numpy(),
           "classical": (energy(W, states) / N).numpy()}
    if beta is not None:
        out["modern"] = (modern_energy(X, states, beta) / N).numpy()
    return out
