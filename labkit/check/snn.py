r"""Checks of Lab 6 (labs/lab06_snn_cam.ipynb): spiking content-addressable memory and the classical associative
memories it is compared with.

Each ``ex_6_k`` property-tests a student's answer on random inputs and prints one line on success, or raises
``AssertionError`` with a hint. Where an independent truth exists the check uses it rather than labkit's own
function: the matrix exponential of the linear LIF system (scipy's ``expm``) and the continuous-time
``labkit.snn.lif_closed_form`` (6.1); the STDP pair sum written here, with hand-computed pairs (6.2); Hebb's rule
and synchronous recall written here on N a power of two, so every field is exact (6.3);
``torch.nn.functional.scaled_dot_product_attention`` (6.4); exact big-integer binomial sums and a Monte-Carlo
estimate (6.5, 6.6); orthogonality, Haar symmetry and entry statistics (6.7); a dictionary replay of the CAM
operations (6.8); a replay of the batch Oja subspace rule and ``numpy.linalg.eigh``'s principal subspace (6.9);
``labkit.kernels.lif_step.reference`` (6.10); and bits unpacked with ``numpy.unpackbits`` (6.11). Every check is
deterministic (fixed seeds, derandomised hypothesis).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from hypothesis import strategies as st

from labkit.check import _context, exercise, expect, expect_close, for_all
from labkit.check import answer_array as _array
from labkit.check import answer_number as _number
from labkit.check import answer_tuple as _tuple
from labkit.check import call_answer as _call
from labkit.check import is_njit as _is_njit

_SEEDS = st.integers(0, 2**16)


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def _close(a: np.ndarray, b: np.ndarray, atol: float = 1e-9, rtol: float = 1e-9) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol))


def _bare(err: AssertionError) -> str:
    """The message of a check's AssertionError without its "Exercise N.k: " prefix (to add a hint to it)."""
    prefix = f"Exercise {_context.label}: "
    text = str(err)
    return text[len(prefix):] if text.startswith(prefix) else text


def _expect_value_error(what: str, fn: Callable, *args) -> None:
    """``fn(*args)`` must raise ValueError (bad input); anything else fails with a hint."""
    try:
        result = fn(*args)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001 - the student's code may raise anything
        raise AssertionError(f"Exercise {_context.label}: {what} raised {type(err).__name__}: {err}; expected a "
                             "ValueError that names the argument, the expected and the got.") from err
    raise AssertionError(f"Exercise {_context.label}: {what} returned {result!r}; expected a ValueError (bad "
                         "input must fail loudly, not silently).")


# ------------------------------------------------------------------------------ 6.1 the exact LIF propagator


def lif_propagator(tau_m: float, tau_s: float, R: float, dt: float) -> np.ndarray:
    """e^{A dt} of the linear system d/dt (u, I, i_ext) = A (u, I, i_ext), u = v − v_rest (scipy's ``expm``):
    the exact one-step map without any closed form, valid at τ_s = τ_m too. Returns (3, 3); row 0 holds
    (decay_v, gain_syn, gain_ext), entry (1, 1) is decay_syn."""
    from scipy.linalg import expm

    A = np.array([[-1.0 / tau_m, R / tau_m, R / tau_m], [0.0, -1.0 / tau_s, 0.0], [0.0, 0.0, 0.0]])
    return expm(A * dt)


_LIF_NAMES = ("decay_v", "gain_syn", "gain_ext", "decay_syn")


def _lif_hint(got: np.ndarray, want: np.ndarray, tau_m: float, tau_s: float, R: float, dt: float) -> str:
    if not np.all(np.isfinite(got)):
        return ("a coefficient is nan or inf: at τ_s = τ_m the form τ_s/(τ_s − τ_m)·(e^{−dt/τ_s} − e^{−dt/τ_m}) is "
                "0/0; write gain_syn = R (dt/τ_m) e^{−dt/τ_m} φ(δ), δ = dt (1/τ_m − 1/τ_s), φ(δ) = expm1(δ)/δ, "
                "φ(0) = 1.")
    euler = np.array([1 - dt / tau_m, R * dt / tau_m, R * dt / tau_m, 1 - dt / tau_s])
    if _close(got, euler, atol=1e-12, rtol=1e-9):
        return ("these are forward-Euler coefficients (1 − dt/τ, R dt/τ_m): integrate exactly, e.g. decay_v = "
                "e^{−dt/τ_m}.")
    if _close(got[[0, 2, 3]], want[[0, 2, 3]], atol=1e-12) and abs(got[1] * R - want[1]) <= 1e-9 * abs(want[1]) + 1e-12:
        return "gain_syn is missing the factor R (the current drives v through R)."
    if _close(got[[0, 2, 3]], want[[0, 2, 3]], atol=1e-12) and abs(tau_s - tau_m) <= 1e-6 * tau_m:
        return ("gain_syn is inaccurate for τ_s close to τ_m: e^{−dt/τ_s} − e^{−dt/τ_m} cancels; use "
                "(dt/τ_m) e^{−dt/τ_m} φ(δ) with φ(δ) = expm1(δ)/δ.")
    if _close(got[[0, 2, 3]], want[[0, 2, 3]], atol=1e-12):
        return ("decay_v, gain_ext and decay_syn are right; gain_syn = R·τ_s/(τ_s − τ_m)·(e^{−dt/τ_s} − e^{−dt/τ_m}) "
                "(integrate the decaying current against the membrane's kernel).")
    return ("one step maps u = v − v_rest and I as u ← u e^{−dt/τ_m} + I·gain_syn + i_ext R (1 − e^{−dt/τ_m}), "
            "I ← I e^{−dt/τ_s}.")


@exercise("6.1", "lif_coefficients gives the exact one-step propagator (equal to the matrix exponential and to the "
                 "continuous-time solution, also at τ_s = τ_m) and rejects non-positive constants")
def ex_6_1(lif_coefficients: Callable) -> None:
    from labkit.snn.lif import LIFParams, lif_closed_form

    def one(tau_m: float, tau_s: float, R: float, dt: float) -> None:
        what = f"lif_coefficients(tau_m={tau_m:.6g}, tau_s={tau_s:.10g}, R={R:.6g}, dt={dt:.6g})"
        try:
            result = _call(what, lif_coefficients, tau_m, tau_s, R, dt)
        except AssertionError as err:
            if "ZeroDivision" in str(err):
                expect(False, f"{_bare(err)} — at τ_s = τ_m the form τ_s/(τ_s − τ_m)·(e^{{−dt/τ_s}} − "
                              "e^{−dt/τ_m}) is 0/0; write gain_syn = R (dt/τ_m) e^{−dt/τ_m} φ(δ), "
                              "δ = dt (1/τ_m − 1/τ_s), φ(δ) = expm1(δ)/δ, φ(0) = 1.")
            raise
        result = _tuple(what, result, _LIF_NAMES)
        got = np.array([_number(f"{name} of {what}", x) for name, x in zip(_LIF_NAMES, result)])
        E = lif_propagator(tau_m, tau_s, R, dt)
        want = np.array([E[0, 0], E[0, 1], E[0, 2], E[1, 1]])
        scale = np.array([1.0, R, R, 1.0])
        if not (np.all(np.isfinite(got)) and np.all(np.abs(got - want) <= 1e-12 * scale + 1e-9 * np.abs(want))):
            bad = int(np.argmax(~np.isfinite(got) | (np.abs(got - want) > 1e-12 * scale + 1e-9 * np.abs(want))))
            expect(False, f"{_LIF_NAMES[bad]} of {what} is {got[bad]:.12g}, expected {want[bad]:.12g} "
                          f"(e^(A dt) of the linear system): {_lif_hint(got, want, tau_m, tau_s, R, dt)}")

    for case in ((10.0, 10.0, 1.0, 1.0), (3.0, 0.3, 3.0 / 0.27, 1.0), (20.0, 5.0, 20.0, 0.1), (0.5, 0.3, 3.5, 1.0),
                 (10.0, 10.0 * (1 + 1e-9), 2.0, 0.5), (8.0, 8.0 * (1 - 1e-7), 1.0, 2.0)):
        one(*case)

    def test(example):
        tau_m, mode, tau_s, R, dt = example
        tau_s = {"equal": tau_m, "near": tau_m * (1 + 3e-9), "any": tau_s}[mode]
        one(tau_m, tau_s, R, dt)

    taus = st.floats(0.1, 50.0)
    for_all(st.tuples(taus, st.sampled_from(["equal", "near", "any", "any"]), taus, st.floats(0.1, 20.0),
                      st.floats(0.01, 5.0)), test, max_examples=40)

    # many steps of the affine map with input jumps = the continuous-time solution (any dt, no threshold)
    p = LIFParams(tau_m=10.0, tau_s=0.3, R=5.0, v_rest=-60.0, v_reset=-60.0, v_th=-57.0, t_ref=1.0)
    dt, n = 1.0, 25
    rng = _rng(0)
    w_in = np.where(rng.random(n) < 0.3, rng.uniform(0.5, 3.0, n), 0.0)
    decay_v, gain_syn, gain_ext, decay_syn = (float(x) for x in lif_coefficients(p.tau_m, p.tau_s, p.R, dt))
    v, current, i_ext = -58.0, 1.5, 0.2
    for k in range(n):
        current += w_in[k]  # the input arriving at the step's start
        v = p.v_rest + (v - p.v_rest) * decay_v + current * gain_syn + i_ext * gain_ext
        current *= decay_syn
    want = float(lif_closed_form(n * dt, p, v0=-58.0, I0=1.5, i_ext=i_ext,
                                 jumps=[(k * dt, w) for k, w in enumerate(w_in) if w]))
    expect(abs(v - want) <= 1e-9 * abs(want), f"{n} steps of your propagator (dt = 1 ms, τ_s = 0.3 ms) end at "
                                              f"v = {v:.12g}, the continuous-time solution at {want:.12g}.")

    for bad in ((-10.0, 5.0, 1.0, 1.0), (10.0, 0.0, 1.0, 1.0), (10.0, 5.0, -1.0, 1.0), (10.0, 5.0, 1.0, 0.0),
                (10.0, 5.0, 1.0, -0.5)):
        _expect_value_error(f"lif_coefficients{bad}", lif_coefficients, *bad)


# ------------------------------------------------------------------------------ 6.2 STDP of spike pairs


def stdp_pairs_reference(pre_times, post_times, params) -> float:
    """Σ over all (pre, post) pairs of the pair window at Δt = t_post − t_pre: +A₊ e^{−Δt/τ₊} for Δt ≥ 0 (pre before
    post, same time included), −A₋ e^{Δt/τ₋} for Δt < 0. Written here, not taken from labkit."""
    total = 0.0
    for tp in pre_times:
        for tq in post_times:
            d = float(tq) - float(tp)
            if d >= 0:
                total += params.A_plus * math.exp(-d / params.tau_plus)
            else:
                total -= params.A_minus * math.exp(d / params.tau_minus)
    return total


def _stdp_variant(pre, post, p, swap: bool = False, zero_depresses: bool = False) -> float:
    total = 0.0
    for tp in pre:
        for tq in post:
            d = (float(tp) - float(tq)) if swap else (float(tq) - float(tp))
            if d > 0 or (d == 0 and not zero_depresses):
                total += p.A_plus * math.exp(-d / p.tau_plus)
            else:
                total -= p.A_minus * math.exp(d / p.tau_minus)
    return total


@exercise("6.2", "stdp_dw sums the pair window over all pre/post spike pairs (Δt = t_post − t_pre; Δt = 0 "
                 "potentiates), equal to hand-computed pairs")
def ex_6_2(stdp_dw: Callable) -> None:
    from labkit.snn.lif import STDPParams

    def one(pre, post, p) -> None:
        what = (f"stdp_dw(pre={list(pre)}, post={list(post)}, STDPParams(tau_plus={p.tau_plus:g}, "
                f"tau_minus={p.tau_minus:g}, A_plus={p.A_plus:g}, A_minus={p.A_minus:g}))")
        got = _number(what, _call(what, stdp_dw, list(pre), list(post), p))
        want = stdp_pairs_reference(pre, post, p)
        if abs(got - want) <= 1e-12 + 1e-9 * abs(want):
            return
        if pre and post and abs(got - _stdp_variant(pre, post, p, swap=True)) <= 1e-12 + 1e-9 * abs(want):
            hint = "Δt = t_post − t_pre: a presynaptic spike BEFORE the postsynaptic one potentiates."
        elif abs(got - _stdp_variant(pre, post, p, zero_depresses=True)) <= 1e-12 + 1e-9 * abs(want):
            hint = "a pre and a post spike at the same time (Δt = 0) count as potentiation, +A₊."
        else:
            hint = ("every pre spike pairs with every post spike (all-to-all): Δw = Σ +A₊e^{−Δt/τ₊} (Δt ≥ 0) "
                    "− A₋e^{Δt/τ₋} (Δt < 0).")
        expect(False, f"{what} = {got:.10g}, expected {want:.10g}: {hint}")

    p = STDPParams(tau_plus=20.0, tau_minus=20.0, A_plus=0.01, A_minus=0.012)
    # hand-computed pairs: A₊ e^{−1/2} = 0.006065306597, −A₋ e^{−1/2} = −0.007278367917, A₊ at Δt = 0
    for pre, post, value in (([0.0], [10.0], 0.006065306597126334), ([10.0], [0.0], -0.0072783679165516),
                             ([5.0], [5.0], 0.01), ([0.0], [], 0.0)):
        one(pre, post, p)
        expect(abs(stdp_pairs_reference(pre, post, p) - value) < 1e-15, "internal: hand-computed pair")
    one([0.0, 30.0], [10.0], p)

    def test(example):
        n_pre, n_post, integer_times, seed = example
        rng = _rng(seed)
        params = STDPParams(tau_plus=float(rng.uniform(5, 40)), tau_minus=float(rng.uniform(5, 40)),
                            A_plus=float(rng.uniform(0, 1)), A_minus=float(rng.uniform(0, 1)))
        draw = (lambda k: rng.integers(0, 60, k).astype(float)) if integer_times else (lambda k: rng.uniform(0, 60, k))
        one(sorted(draw(n_pre).tolist()), sorted(draw(n_post).tolist()), params)

    for_all(st.tuples(st.integers(0, 6), st.integers(0, 6), st.booleans(), _SEEDS), test, max_examples=40)


# ------------------------------------------------------------------------------ 6.3 Hopfield: Hebb + sync recall


def hopfield_reference(patterns: np.ndarray, cue: np.ndarray, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """W = ξᵀξ / N with a zero diagonal; s ← sign(W s) (sign(0) = +1) until s no longer changes, at most
    ``max_steps`` updates. patterns (P, N), cue (N,) of ±1. Returns (W (N, N), s (N,))."""
    N = patterns.shape[1]
    W = patterns.T @ patterns / N
    np.fill_diagonal(W, 0.0)
    s = cue.astype(np.float64).copy()
    for _ in range(max_steps):
        new = np.where(W @ s >= 0, 1.0, -1.0)
        if np.array_equal(new, s):
            break
        s = new
    return W, s


@exercise("6.3", "hopfield builds Hebb's weights (1/N, zero diagonal) and recalls synchronously to a fixed point, "
                 "sign(0) = +1")
def ex_6_3(hopfield: Callable) -> None:
    def test(example):
        P, log2N, flip, max_steps, seed = example
        rng = _rng(seed)
        N = 2**log2N  # a power of two: every W entry k/N and every field is exact in floating point
        patterns = rng.choice([-1.0, 1.0], size=(P, N))
        cue = patterns[rng.integers(P)].copy() if rng.random() < 0.7 else rng.choice([-1.0, 1.0], size=N)
        cue[rng.random(N) < flip] *= -1
        what = f"hopfield(patterns ({P}, {N}), cue ({N},), max_steps={max_steps})"
        W, state = _tuple(what, _call(what, hopfield, patterns.copy(), cue.copy(), max_steps), ("W", "state"))
        W, state = _array(f"W of {what}", W), _array(f"state of {what}", state)
        want_W, want_s = hopfield_reference(patterns, cue, max_steps)
        expect(W.shape == (N, N), f"W of {what} has shape {W.shape}, expected ({N}, {N}).")
        if not np.allclose(W, want_W, atol=1e-12):
            if np.allclose(W - np.diag(np.diag(W)), want_W, atol=1e-12):
                hint = "set the diagonal to zero (no self-connections)."
            elif np.allclose(W, want_W * N, atol=1e-9) or np.allclose(W - np.diag(np.diag(W)), want_W * N, atol=1e-9):
                hint = "divide by N: W = (1/N) Σ_μ ξ^μ ξ^μᵀ."
            else:
                hint = "W = (1/N) Σ_μ ξ^μ ξ^μᵀ with W_ii = 0 (patterns are the rows of `patterns`)."
            expect_close(f"W of {what}", W, want_W, atol=1e-12, hint=hint)
        expect(state.shape == (N,), f"state of {what} has shape {state.shape}, expected ({N},).")
        if not np.array_equal(state, want_s):
            if np.any(state == 0):
                hint = "a unit with field exactly 0 must become +1 (np.sign(0) is 0): sign(h) = +1 if h ≥ 0 else −1."
            elif max_steps > 1 and np.array_equal(state, hopfield_reference(patterns, cue, 1)[1]):
                hint = "iterate s ← sign(W s) until the state stops changing (at most max_steps updates), not once."
            else:
                hint = "update ALL units at once from the same old state (synchronous), s ← sign(W s)."
            wrong = int(np.sum(state != want_s))
            expect(False, f"state of {what} differs from the expected recall in {wrong} of {N} units: {hint}")

    for_all(st.tuples(st.integers(1, 8), st.integers(2, 7), st.sampled_from([0.0, 0.1, 0.3]), st.integers(1, 6),
                      _SEEDS), test, max_examples=40)


# ------------------------------------------------------------------------------ 6.4 modern Hopfield = attention


@exercise("6.4", "modern_step is one softmax-attention step ξ ← softmax(β ξ Xᵀ) X, equal to torch's "
                 "scaled_dot_product_attention and stable for any β")
def ex_6_4(modern_step: Callable) -> None:
    import torch.nn.functional as F

    def test(example):
        P, N, m, beta, binary, seed = example
        rng = _rng(seed)
        X = rng.choice([-1.0, 1.0], size=(P, N)) if binary else rng.standard_normal((P, N))
        xi = X[rng.integers(P, size=m)] + 0.5 * rng.standard_normal((m, N))
        what = f"modern_step(X ({P}, {N}), xi ({m}, {N}), beta={beta:g})"
        got = _array(what, _call(what, modern_step, X.copy(), xi.copy(), beta))
        q, kv = torch.from_numpy(xi)[None], torch.from_numpy(X)[None]
        want = F.scaled_dot_product_attention(q, kv, kv, scale=beta)[0].numpy()
        expect(got.shape == want.shape, f"{what} has shape {got.shape}, expected {want.shape} (one row per query).")
        if _close(got, want, atol=1e-9):
            return
        expect(bool(np.all(np.isfinite(got))), f"{what} holds nan or inf: exp(β·score) overflows for large β; "
                                               "subtract each query's largest score before exp (softmax(z) = "
                                               "softmax(z − max z)).")
        S = beta * xi @ X.T
        A0 = np.exp(S - S.max(0, keepdims=True))
        if _close(got, (A0 / A0.sum(0, keepdims=True)) @ X, atol=1e-9):
            hint = "normalise over the P stored patterns for each query (softmax along the last axis of ξ Xᵀ)."
        else:
            hint = "scores = β ξ Xᵀ (m, P); weights = softmax over P; result = weights @ X (m, N)."
        expect_close(what, got, want, atol=1e-9, hint=hint)

    for_all(st.tuples(st.integers(1, 12), st.integers(1, 32), st.integers(1, 5),
                      st.sampled_from([0.01, 0.5, 1.0, 8.0, 100.0, 1e4]), st.booleans(), _SEEDS), test,
            max_examples=40)


# ------------------------------------------------------------------------------ 6.5 SDR false match in log space


def log_false_match_exact(n: int, w: int, theta: int, s: int) -> float:
    """log P(overlap ≥ θ) of a random w-bit SDR (of n bits) with a fixed set of s bits, from exact big-integer
    binomials: log Σ_{b=θ}^{min(w,s)} C(s,b) C(n−s, w−b) − log C(n, w) (−inf when the sum is 0)."""
    num = sum(math.comb(s, b) * math.comb(n - s, w - b) for b in range(max(theta, 0), min(w, s) + 1))
    return -math.inf if num == 0 else math.log(num) - math.log(math.comb(n, w))


def _log_close(got: float, want: float, atol: float = 1e-7, rtol: float = 1e-9) -> bool:
    if math.isinf(want) or math.isinf(got):
        return got == want
    return abs(got - want) <= atol + rtol * abs(want)


@exercise("6.5", "log_false_match is the exact log false-match probability of Ahmad & Hawkins (big-integer truth, "
                 "hand-computed values and a Monte-Carlo estimate), without overflow or underflow")
def ex_6_5(log_false_match: Callable) -> None:
    def one(n: int, w: int, theta: int, s: int) -> None:
        what = f"log_false_match(n={n}, w={w}, theta={theta}, s={s})"
        try:
            got = _number(what, _call(what, log_false_match, n, w, theta, s))
        except AssertionError as err:
            if "Overflow" in str(err):
                expect(False, f"{_bare(err)} — compute in log space: log C(n, k) = lgamma(n+1) − lgamma(k+1) − "
                              "lgamma(n−k+1), and add the terms with logsumexp.")
            raise
        want = log_false_match_exact(n, w, theta, s)
        if _log_close(got, want):
            return
        if math.isnan(got) or (math.isinf(got) and not math.isinf(want)):
            hint = (f"P = e^{want:.4g} (the binomials themselves reach 10^{int(math.log10(math.comb(n, w)))}) "
                    "over- or underflows in floating point: stay in log space (lgamma / gammaln and logsumexp), "
                    "never form the probability or a binomial itself.")
        elif math.isfinite(want) and want < 700 and _log_close(got, math.exp(want), atol=1e-9):
            hint = "return the natural log of the probability, not the probability."
        elif _log_close(got, want / math.log(10), atol=1e-6):
            hint = "return the natural log (ln), not log10."
        elif theta <= min(w, s) and _log_close(got, log_false_match_exact(n, w, theta + 1, s)):
            hint = "a match is overlap ≥ θ: the sum starts at b = θ, not θ + 1."
        else:
            hint = ("P(overlap ≥ θ) = Σ_{b=θ}^{min(w,s)} C(s, b) C(n − s, w − b) / C(n, w) (choose which b of the s "
                    "stored bits the input hits, and where its other w − b bits fall).")
        expect(False, f"{what} = {got:.10g}, expected {want:.10g}: {hint}")

    # hand-computed: P(overlap ≥ 1) of 2 of 4 bits with a fixed pair = 1 − 1/6; θ = 0 is certain; θ = w = s is
    # one pattern of C(n, w); θ above min(w, s) is impossible
    for n, w, theta, s, value in ((4, 2, 1, 2, math.log(5 / 6)), (100, 10, 0, 10, 0.0),
                                  (2048, 40, 40, 40, -math.log(math.comb(2048, 40))), (64, 8, 9, 8, -math.inf),
                                  (64, 8, 5, 4, -math.inf)):
        expect(_log_close(log_false_match_exact(n, w, theta, s), value), "internal: a hand-computed value")
        one(n, w, theta, s)
    for case in ((2048, 40, 10, 40), (20000, 400, 20, 400), (20000, 400, 300, 400), (10000, 200, 5, 30)):
        one(*case)

    def test(example):
        n, w, s, theta = example
        w, s = min(w, n), min(s, n)
        one(n, w, min(theta, min(w, s) + 1), s)

    for_all(st.tuples(st.integers(1, 20000), st.integers(1, 300), st.integers(0, 300), st.integers(0, 301)), test,
            max_examples=30)

    # Monte Carlo: random 8-of-64 SDRs against a fixed 8-bit pattern
    rng = _rng(1)
    n, w, trials = 64, 8, 20000
    ov = (np.argpartition(rng.random((trials, n)), w - 1, axis=1)[:, :w] < w).sum(1)  # stored pattern = bits 0..7
    for theta in (1, 2, 3):
        hits = int((ov >= theta).sum())
        lo, hi = _wilson(hits, trials, z=4.5)
        p = math.exp(_number("log_false_match", log_false_match(n, w, theta, w)))
        expect(lo <= p <= hi, f"exp(log_false_match(64, 8, {theta}, 8)) = {p:.5f}, but {hits} of {trials} random SDRs "
                              f"matched ({hits / trials:.5f}, 4.5σ interval [{lo:.5f}, {hi:.5f}]).")


def _wilson(hits: int, trials: int, z: float) -> tuple[float, float]:
    p = hits / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return centre - half, centre + half


# ------------------------------------------------------------------------------ 6.6 unions of SDRs


def expected_union_bits_exact(n: int, w: int, M: int) -> float:
    """E[ON bits of the OR of M random w-bit SDRs] = n (1 − (1 − w/n)^M): a bit stays OFF in one SDR with
    probability 1 − w/n, independently across the M SDRs (linearity of expectation)."""
    return -n * math.expm1(M * math.log1p(-w / n)) if w < n else float(n)


@exercise("6.6", "union_false_match gives the union's expected ON bits n(1 − (1 − w/n)^M) and the paper's false-match "
                 "rate with s = that size (exact, and matching simulated unions)")
def ex_6_6(union_false_match: Callable) -> None:
    def one(n: int, w: int, M: int, theta: int) -> None:
        what = f"union_false_match(n={n}, w={w}, M={M}, theta={theta})"
        E, p = _tuple(what, _call(what, union_false_match, n, w, M, theta), ("expected_on", "p"))
        E, p = _number(f"expected_on of {what}", E), _number(f"p of {what}", p)
        want_E = expected_union_bits_exact(n, w, M)
        if not abs(E - want_E) <= 1e-9 * want_E + 1e-9:
            if abs(E - min(n, M * w)) < 1e-9:
                hint = ("bits shared by two SDRs count once: a bit is OFF in the union with probability "
                        "(1 − w/n)^M.")
            elif abs(E - (n - want_E)) <= 1e-9 * n:
                hint = "n (1 − w/n)^M is the expected number of OFF bits; ON = n − that."
            else:
                hint = "E[ON] = n (1 − (1 − w/n)^M)."
            expect(False, f"expected_on of {what} = {E:.10g}, expected {want_E:.10g}: {hint}")
        s = int(round(want_E))
        # E exactly half-way between two integers: either rounding of a float within rounding error is fine
        sizes = {math.floor(want_E), math.ceil(want_E)} if abs(want_E % 1 - 0.5) < 1e-9 else {s}
        wants = [math.exp(log_false_match_exact(n, w, theta, size)) for size in sorted(sizes)]
        expect(any(abs(p - x) <= 1e-9 * x + 1e-300 for x in wants), f"p of {what} = {p:.10g}, expected "
               f"{wants[-1]:.10g}: the paper's rate is the false-match probability of 6.5 with s = round(expected_on) "
               f"= {s} stored bits.")

    for case in ((2048, 40, 1, 20), (2048, 40, 50, 20), (1024, 20, 100, 10), (100, 100, 3, 50), (64, 8, 1, 0)):
        one(*case)

    def test(example):
        n, w, M, theta = example
        w = min(w, n)
        one(n, w, M, min(theta, w))

    for_all(st.tuples(st.integers(10, 5000), st.integers(1, 100), st.integers(1, 200), st.integers(0, 100)), test,
            max_examples=30)

    # simulated unions: the mean size agrees with the formula within sampling error
    rng = _rng(2)
    n, w, M, reps = 200, 10, 12, 400
    sizes = np.array([np.unique(np.concatenate([rng.choice(n, w, replace=False) for _ in range(M)])).size
                      for _ in range(reps)])
    E = _number("expected_on", union_false_match(n, w, M, 3)[0])
    se = sizes.std(ddof=1) / math.sqrt(reps)
    expect(abs(sizes.mean() - E) <= 5 * se, f"{reps} simulated unions of {M} random {w}-of-{n} SDRs have "
                                            f"{sizes.mean():.2f} ± {se:.2f} ON bits on average; your expected_on "
                                            f"is {E:.2f}.")


# ------------------------------------------------------------------------------ 6.7 MBAT binding matrices


@exercise("6.7", "binding_matrix draws Haar-orthogonal (unbinding by Mᵀ exact at any depth) and N(0, 1/d) Gaussian "
                 "binding matrices from the given generator")
def ex_6_7(binding_matrix: Callable) -> None:
    def draw(d: int, kind: str, seed: int) -> np.ndarray:
        what = f"binding_matrix({d}, {kind!r}, rng)"
        M = _array(what, _call(what, binding_matrix, d, kind, _rng(seed)))
        expect(M.shape == (d, d), f"{what} has shape {M.shape}, expected ({d}, {d}).")
        expect(bool(np.all(np.isfinite(M))), f"{what} holds nan or inf.")
        return M

    def test(example):
        d, seed = example
        Q = draw(d, "orthogonal", seed)
        expect(np.allclose(Q.T @ Q, np.eye(d), atol=1e-10),
               f"binding_matrix({d}, 'orthogonal', rng) is not orthogonal: max |QᵀQ − I| = "
               f"{np.abs(Q.T @ Q - np.eye(d)).max():.3g}. Take Q of a QR decomposition of a Gaussian matrix.")
        rng = _rng(seed + 1)
        x = rng.standard_normal(d)
        y = x.copy()
        mats = [Q] + [draw(d, "orthogonal", seed + 100 + k) for k in range(4)]
        for M in mats:  # bind 5 deep, then unbind by transposes in reverse order
            y = M @ y
        for M in reversed(mats):
            y = M.T @ y
        expect(np.allclose(y, x, atol=1e-9), "unbinding 5 nested orthogonal bindings by Mᵀ should give x back "
                                             f"exactly; the error is {np.abs(y - x).max():.3g}.")
        G = draw(d, "gaussian", seed)
        expect(not np.allclose(G.T @ G, np.eye(d), atol=1e-3) or d == 1,
               f"binding_matrix({d}, 'gaussian', rng) is orthogonal: draw i.i.d. N(0, 1/d) entries, no QR.")
        expect(not np.array_equal(Q, draw(d, "orthogonal", seed + 7)) or d == 1,
               "two generators gave the same orthogonal matrix: draw the Gaussian entries from `rng`.")
        expect(np.array_equal(Q, draw(d, "orthogonal", seed)), "the same generator state gave different "
                                                                "matrices: use only `rng` for randomness.")

    for_all(st.tuples(st.integers(1, 24), _SEEDS), test, max_examples=20)

    # statistics: Gaussian entries have variance 1/d; a Haar matrix is as likely to have Q[0,0] > 0 as < 0
    d = 200
    G = np.concatenate([draw(d, "gaussian", s).ravel() for s in range(3)])
    var = float((G**2).mean()) * d
    expect(abs(G.mean()) < 5 / math.sqrt(G.size) / math.sqrt(d) and abs(var - 1) < 0.05,
           f"Gaussian entries should be N(0, 1/d): mean {G.mean():.3g}, d·E[M²] = {var:.3f} (expected 1; so that "
           "|M x| ≈ |x|).")
    q00 = np.array([draw(3, "orthogonal", 1000 + s)[0, 0] for s in range(400)])
    expect(abs(q00.mean()) < 5 * math.sqrt(1 / 3 / q00.size),
           f"over 400 draws the mean of Q[0, 0] is {q00.mean():.3f}, expected 0 for a Haar-random matrix: QR fixes "
           "the signs of R's diagonal, so Q is not uniform; apply the sign fix Q ← Q · sign(diag(R)).")
    _expect_value_error("binding_matrix(4, 'unitary', rng)", binding_matrix, 4, "unitary", _rng(0))


# ------------------------------------------------------------------------------ 6.8 a CAM recall from a fragment


def cam_reference(n_cues: int, n_bits: int, ops) -> list:
    """Replay of the CAM operations with one binary cue → content matrix (written here): learn overwrites the
    cue's row; "cue" returns the row; "content" returns the sorted cues whose row shares ≥ 1 ON bit with the
    fragment."""
    W = np.zeros((n_cues, n_bits), dtype=bool)
    out = []
    for op in ops:
        if op[0] == "learn":
            W[op[1]] = op[2]
        elif op[0] == "cue":
            out.append(W[op[1]].copy())
        else:
            out.append(sorted(int(c) for c in np.flatnonzero((W & op[1]).any(1))))
    return out


def _cam_variant(n_cues, n_bits, ops, accumulate=False, contained=False) -> list:
    W = np.zeros((n_cues, n_bits), dtype=bool)
    out = []
    for op in ops:
        if op[0] == "learn":
            W[op[1]] = (W[op[1]] | op[2]) if accumulate else op[2]
        elif op[0] == "cue":
            out.append(W[op[1]].copy())
        elif contained:
            out.append(sorted(int(c) for c in np.flatnonzero((W >= op[1]).all(1) & op[1].any())))
        else:
            out.append(sorted(int(c) for c in np.flatnonzero((W & op[1]).any(1))))
    return out


def _same_outputs(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        (np.array_equal(x, y) if isinstance(y, np.ndarray) else x == y) for x, y in zip(a, b))


def _cam_ops(rng: np.random.Generator, n_cues: int, n_bits: int, n_ops: int, density: float) -> list:
    ops, stored = [], []
    for _ in range(n_ops):
        r = rng.random()
        if r < 0.4 or not stored:
            content = rng.random(n_bits) < density
            cue = int(rng.integers(n_cues))
            ops.append(("learn", cue, content))
            stored.append(content)
        elif r < 0.7:
            ops.append(("cue", int(rng.integers(n_cues))))
        else:
            base = stored[int(rng.integers(len(stored)))] if rng.random() < 0.7 else rng.random(n_bits) < density
            ops.append(("content", base & (rng.random(n_bits) < 0.5)))
    return ops


def _shown(result):
    return np.flatnonzero(result).tolist() if isinstance(result, np.ndarray) else result


def _describe_ops(ops) -> str:
    def one(op):
        if op[0] == "learn":
            return f"learn(cue {op[1]}, bits {np.flatnonzero(op[2]).tolist()})"
        if op[0] == "cue":
            return f"recall by cue {op[1]}"
        return f"recall by content {np.flatnonzero(op[1]).tolist()}"

    text = "; ".join(one(op) for op in ops)
    return text if len(text) < 600 else text[:600] + " …"


@exercise("6.8", "cam_run learns by overwriting a cue's row (forgetting), recalls content by cue and every cue whose "
                 "content shares ≥ 1 bit with a fragment, and rejects bad cues and widths")
def ex_6_8(cam_run: Callable) -> None:
    def run(n_cues, n_bits, ops) -> None:
        what = f"cam_run({n_cues}, {n_bits}, ops)"
        got = _call(what, cam_run, n_cues, n_bits, [tuple(x.copy() if isinstance(x, np.ndarray) else x for x in op)
                                                     for op in ops])
        want = cam_reference(n_cues, n_bits, ops)
        expect(isinstance(got, (list, tuple)) and len(got) == len(want),
               f"{what} should return a list with one result per recall operation ({len(want)}), got "
               f"{type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, (list, tuple)) else "") + ".")
        norm = []
        for g, wnt in zip(got, want):
            if isinstance(wnt, np.ndarray):
                norm.append(_array("a recall by cue", g).astype(bool) if g is not None else g)
            else:
                norm.append(sorted(int(c) for c in g) if g is not None else g)
        if _same_outputs(norm, want):
            return
        if _same_outputs(norm, _cam_variant(n_cues, n_bits, ops, accumulate=True)):
            hint = "learning a cue again must FORGET its old content: overwrite the cue's row, do not OR into it."
        elif _same_outputs(norm, _cam_variant(n_cues, n_bits, ops, contained=True)):
            hint = ("recall by content returns every cue whose content shares AT LEAST ONE active bit with the "
                    "fragment, not only contents that contain the whole fragment.")
        else:
            k = next(i for i, (g, wnt) in enumerate(zip(norm, want)) if not _same_outputs([g], [wnt]))
            hint = (f"recall {k} returned {_shown(norm[k])}, expected {_shown(want[k])} (a recall by cue returns the "
                    "ON bits' vector, all False for a cue never learned; a recall by content the sorted cue list).")
        expect(False, f"{what} with ops [{_describe_ops(ops)}] is wrong: {hint}")

    # the paper's functional test, in small: learn three memories, recall each by cue and by a fragment,
    # relearn cue 0 (forgetting), recall again
    def b(*on):
        return np.isin(np.arange(10), on)

    ops = [("learn", 0, b(0, 1, 2)), ("learn", 1, b(3, 4)), ("learn", 2, b(2, 5, 6)), ("cue", 0), ("cue", 1),
           ("content", b(3)), ("content", b(2)), ("content", b(7)), ("learn", 0, b(8, 9)), ("cue", 0),
           ("content", b(0, 1)), ("content", b(9)), ("cue", 4)]
    run(5, 10, ops)

    def test(example):
        n_cues, n_bits, n_ops, density, seed = example
        run(n_cues, n_bits, _cam_ops(_rng(seed), n_cues, n_bits, n_ops, density))

    for_all(st.tuples(st.integers(1, 8), st.integers(1, 16), st.integers(0, 40), st.sampled_from([0.1, 0.3, 0.6]),
                      _SEEDS), test, max_examples=40)

    ok = np.zeros(6, dtype=bool)
    ok[1] = True
    for bad, why in (([("learn", 4, ok)], "a cue index = n_cues"), ([("learn", -1, ok)], "a negative cue index"),
                     ([("learn", 0, ok[:5])], "a content of the wrong width"), ([("cue", 4)], "recall by cue 4 of 4"),
                     ([("content", np.ones(7, bool))], "a fragment of the wrong width"),
                     ([("forget", 0)], "an unknown operation")):
        _expect_value_error(f"cam_run(4, 6, [{why}])", cam_run, 4, 6, bad)


# ------------------------------------------------------------------------------ 6.9 HLOP projection


def hlop_reference(X: np.ndarray, dW: np.ndarray, H0: np.ndarray, eta: float, epochs: int):
    """Batch Oja subspace rule, ``epochs`` times: Y = X Hᵀ, H ← H + (η/B)(YᵀX − YᵀY H); then the update projected
    off the learned subspace, dW − dW Hᵀ H. Returns (H (k, n), dW_proj (out, n))."""
    H = H0.astype(np.float64).copy()
    B = X.shape[0]
    for _ in range(epochs):
        Y = X @ H.T
        H = H + (eta / B) * (Y.T @ X - Y.T @ Y @ H)
    return H, dW - dW @ H.T @ H


@exercise("6.9", "hlop learns the inputs' principal subspace by Oja's subspace rule and projects a weight update "
                 "onto its orthogonal complement")
def ex_6_9(hlop: Callable) -> None:
    def call(X, dW, H0, eta, epochs):
        what = f"hlop(X {X.shape}, dW {dW.shape}, H0 {H0.shape}, eta={eta:g}, epochs={epochs})"
        H, dWp = _tuple(what, _call(what, hlop, X.copy(), dW.copy(), H0.copy(), eta, epochs), ("H", "dW_proj"))
        return what, _array(f"H of {what}", H), _array(f"dW_proj of {what}", dWp)

    def test(example):
        B, n, k, out, eta, epochs, seed = example
        rng = _rng(seed)
        k = min(k, n)
        X = rng.standard_normal((B, n)) * rng.uniform(0.3, 1.5, n)
        X /= math.sqrt(np.linalg.eigvalsh(X.T @ X / B).max())  # covariance λ_max = 1: η ≤ 0.2 is stable
        H0 = 0.1 * rng.standard_normal((k, n))
        dW = rng.standard_normal((out, n))
        what, H, dWp = call(X, dW, H0, eta, epochs)
        want_H, want_dWp = hlop_reference(X, dW, H0, eta, epochs)
        expect(bool(np.all(np.isfinite(H)) and np.all(np.isfinite(dWp))), f"{what} returned nan or inf.")
        if not _close(H, want_H, atol=1e-9, rtol=1e-7):
            Hh = H0.copy()
            for _ in range(epochs):
                Hh = Hh + (eta / B) * ((X @ Hh.T).T @ X)
            if _close(H, Hh, atol=1e-9, rtol=1e-7):
                hint = ("plain Hebb, ΔH ∝ yxᵀ, only grows: Oja's subspace rule subtracts y yᵀH, "
                        "ΔH = (η/B)(YᵀX − YᵀY H), which keeps the rows orthonormal.")
            else:
                hint = ("per epoch: Y = X Hᵀ (B, k); H ← H + (η/B)(YᵀX − YᵀY H) (all B inputs at once, one update "
                        "per epoch).")
            expect_close(f"H of {what}", H, want_H, atol=1e-9, rtol=1e-7, hint=hint)
        if not _close(dWp, want_dWp, atol=1e-9, rtol=1e-7):
            if _close(dWp, dW @ want_H.T @ want_H, atol=1e-9, rtol=1e-7):
                hint = "dW Hᵀ H is the part IN the old subspace; keep the rest, dW − dW Hᵀ H."
            else:
                hint = "dW_proj = dW − dW Hᵀ H (rows of dW act on inputs x; remove their component in span(H))."
            expect_close(f"dW_proj of {what}", dWp, want_dWp, atol=1e-9, rtol=1e-7, hint=hint)

    for_all(st.tuples(st.integers(2, 40), st.integers(1, 10), st.integers(1, 3), st.integers(1, 5),
                      st.sampled_from([0.01, 0.05, 0.2]), st.integers(1, 30), _SEEDS), test, max_examples=30)

    # what it is for: inputs near a 3-D subspace; the rule finds it and the projected update leaves old outputs be
    rng = _rng(3)
    n, k, B = 12, 3, 300
    U = np.linalg.qr(rng.standard_normal((n, k)))[0]
    X = (rng.standard_normal((B, k)) * [3.0, 2.0, 1.5]) @ U.T + 0.05 * rng.standard_normal((B, n))
    dW = rng.standard_normal((4, n))
    what, H, dWp = call(X, dW, 0.1 * rng.standard_normal((k, n)), 0.05, 400)
    expect(np.allclose(H @ H.T, np.eye(k), atol=1e-3), f"after 400 epochs the rows of H of {what} should be "
                                                        f"orthonormal; H Hᵀ = {np.round(H @ H.T, 3).tolist()}.")
    top = np.linalg.eigh(X.T @ X)[1][:, -k:]
    gap = np.abs(H.T @ H - top @ top.T).max()
    expect(gap < 1e-3, f"span(H) of {what} should be the top-{k} principal subspace of the inputs (eigh): max "
                       f"|HᵀH − U Uᵀ| = {gap:.3g}.")
    ratio = np.linalg.norm(dWp @ X.T) / np.linalg.norm(dW @ X.T)
    expect(ratio < 0.05, f"the projected update still changes the old inputs' outputs: |dW_proj Xᵀ| / |dW Xᵀ| = "
                         f"{ratio:.3f} (expected ≪ 1).")


# ------------------------------------------------------------------------------ 6.10 kernel: the fused LIF step


def _lif_state(rng: np.random.Generator, N: int, c) -> tuple[np.ndarray, ...]:
    v = rng.uniform(c.v_reset - 5.0, c.v_th + 2.0, N)
    current = rng.normal(0.0, 5.0, N)
    refrac = rng.integers(0, c.n_ref + 1, N).astype(np.int32)
    i_ext = rng.normal(8.0, 6.0, N)
    return v, current, refrac, i_ext


@exercise("6.10", "lif_step_numba (Numba) does the fused LIF step — current input, membrane update, refractory "
                  "clamp, threshold and reset — in place, equal to labkit.kernels.lif_step.reference")
def ex_6_10(lif_step_numba: Callable) -> None:
    from labkit.kernels.lif_step import _consts, reference
    from labkit.snn.lif import LIFParams

    expect(_is_njit(lif_step_numba), "compile lif_step_numba with @njit (from numba import njit).")

    def test(example):
        N, T, dt, n_ref, seed = example
        rng = _rng(seed)
        p = LIFParams(tau_m=float(rng.uniform(1, 20)), tau_s=float(rng.uniform(0.3, 10)), R=float(rng.uniform(0.5, 3)),
                      v_rest=-65.0, v_reset=float(rng.choice([-65.0, -70.0])), v_th=-50.0, t_ref=n_ref * dt)
        c = p.coefficients(dt)
        k = _consts(c, torch.float64, "cpu").numpy().copy()
        v, current, refrac, i_ext = _lif_state(rng, N, c)
        tv, tI, tr, text = (torch.from_numpy(x.copy()) for x in (v, current, refrac, i_ext))
        for t in range(T):
            I_in = np.where(rng.random(N) < 0.3, rng.normal(0, 10, N), 0.0)
            before = (v.copy(), current.copy(), refrac.copy())
            what = (f"lif_step_numba(v, I, refrac, I_in, i_ext, k, n_ref={c.n_ref}) at step {t} of {T} ({N} "
                    f"neurons, dt={dt})")
            spiked = _array(f"spiked of {what}", _call(what, lif_step_numba, v, current, refrac, I_in.copy(),
                                                       i_ext.copy(), k, c.n_ref))
            want_spk = reference(tv, tI, tr, torch.from_numpy(I_in), c, text).numpy()
            want_v, want_I, want_r = tv.numpy(), tI.numpy(), tr.numpy()
            ref_mask = before[2] > 0
            if not _close(current, want_I, atol=1e-10, rtol=1e-12):
                bad = ~np.isclose(current, want_I, atol=1e-10, rtol=1e-12)
                if np.array_equal(current, before[1]) and np.array_equal(v, before[0]):
                    hint = ("v and I did not change: update the arrays IN PLACE (v[i] = …, I[i] = …, refrac[i] = …); "
                            "the kernel returns only the spikes.")
                elif bad.any() and ref_mask[bad].all():
                    hint = ("the synaptic current keeps receiving input and decaying while a neuron is refractory: "
                            "I ← (I + I_in)·decay_syn for every neuron.")
                elif np.allclose(current, before[1] * k[4] + I_in, atol=1e-10):
                    hint = "add the input first, then decay: I ← (I + I_in)·decay_syn."
                else:
                    hint = "I ← (I + I_in)·decay_syn."
                expect_close(f"I after {what}", current, want_I, atol=1e-10, rtol=1e-12, hint=hint)
            expect(spiked.shape == (N,), f"{what} returned spikes of shape {spiked.shape}, expected ({N},).")
            if not np.array_equal(spiked.astype(bool), want_spk) or not _close(v, want_v, atol=1e-10, rtol=1e-12):
                wrong_ref = ((spiked.astype(bool) != want_spk) | ~np.isclose(v, want_v, atol=1e-10)) & ref_mask
                if wrong_ref.any():
                    hint = ("a refractory neuron (refrac > 0) stays at v_reset, cannot spike, and counts refrac "
                            "down by 1.")
                elif (spiked.astype(bool) != want_spk).any():
                    hint = ("v_new = v_rest + (v − v_rest)·decay_v + (I + I_in)·gain_syn + i_ext·gain_ext, using "
                            "the current BEFORE its decay; spike when v_new ≥ v_th.")
                else:
                    hint = "a neuron that spikes is reset to v_reset."
                n_bad = int(np.sum((spiked.astype(bool) != want_spk) | ~np.isclose(v, want_v, atol=1e-10)))
                expect(False, f"{what}: {n_bad} neurons differ in spike or v from the reference: {hint}")
            if not np.array_equal(refrac, want_r):
                expect(False, f"refrac after {what} differs from the reference: a spike sets refrac = n_ref, a "
                              "refractory neuron counts down by 1, the others stay 0.")

    for_all(st.tuples(st.integers(1, 300), st.integers(1, 12), st.sampled_from([0.1, 0.5, 1.0]),
                      st.integers(0, 3), _SEEDS), test, max_examples=25)


# ------------------------------------------------------------------------------ 6.11 kernel: bit-packed SDR match


def sdr_overlap_reference(Q: np.ndarray, S: np.ndarray) -> np.ndarray:
    """overlap[b, m] = the number of bits set in both Q[b] and S[m] (int64 words, bit i of word j = SDR bit 64j+i),
    by unpacking the bytes with ``numpy.unpackbits`` (little-endian words). Returns (B, M) int64."""
    def as_bits(A: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(A).astype("<i8").view(np.uint8).reshape(A.shape[0], -1)
        return np.unpackbits(raw, axis=1, bitorder="little").astype(np.int64)

    return as_bits(Q) @ as_bits(S).T


@exercise("6.11", "sdr_match_numba (Numba) fuses the popcount of AND over 64-bit words with the ≥ θ test, equal to "
                  "the overlaps of the unpacked bits")
def ex_6_11(sdr_match_numba: Callable) -> None:
    expect(_is_njit(sdr_match_numba), "compile sdr_match_numba with @njit (from numba import njit).")

    def test(example):
        B, M, W, sparse, theta_frac, seed = example
        rng = _rng(seed)
        if sparse:
            from labkit.assoc.sdr import random_sdrs
            from labkit.kernels.sdr_match import pack_bits

            n = 64 * W - int(rng.integers(0, 64))
            w = max(1, n // 8)
            Q = pack_bits(random_sdrs(B, n, w, seed)).numpy()
            S = pack_bits(random_sdrs(M, n, w, seed + 1)).numpy()
        else:
            Q = rng.integers(-(2**63), 2**63 - 1, (B, W), dtype=np.int64, endpoint=True)
            S = rng.integers(-(2**63), 2**63 - 1, (M, W), dtype=np.int64, endpoint=True)
        want_ov = sdr_overlap_reference(Q, S)
        theta = int(round(theta_frac * (want_ov.max() if want_ov.size else 0)))
        what = f"sdr_match_numba(Q ({B}, {W}), S ({M}, {W}), theta={theta})"
        match, ov = _tuple(what, _call(what, sdr_match_numba, Q.copy(), S.copy(), theta), ("match", "overlap"))
        match, ov = _array(f"match of {what}", match), _array(f"overlap of {what}", ov)
        expect(ov.shape == (B, M) and match.shape == (B, M),
               f"{what} returned shapes {match.shape} and {ov.shape}, expected ({B}, {M}) for both.")
        if not np.array_equal(ov, want_ov):
            bad = ov != want_ov
            rows_neg = (Q < 0).any(1)[:, None] | (S < 0).any(1)[None, :]
            if (bad & ~rows_neg).sum() == 0:
                hint = ("only pairs with negative words (bit 63 set) are wrong: an arithmetic shift copies the sign "
                        "bit, so mask after every shift (SWAR: x − ((x >> 1) & 0x5555…), …) or count bit by bit "
                        "with (x >> i) & 1.")
            else:
                hint = "overlap[b, m] = Σ_j popcount(Q[b, j] & S[m, j])."
            b, m = np.argwhere(bad)[0]
            expect(False, f"overlap[{b}, {m}] of {what} is {int(ov[b, m])}, expected {int(want_ov[b, m])}: {hint}")
        if not np.array_equal(match.astype(bool), want_ov >= theta):
            hint = ("a segment fires when the overlap REACHES θ: match = overlap ≥ θ."
                    if np.array_equal(match.astype(bool), want_ov > theta) else "match[b, m] = overlap[b, m] ≥ θ.")
            expect(False, f"match of {what} is wrong: {hint}")

    for_all(st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 5), st.booleans(),
                      st.sampled_from([0.0, 0.5, 0.8, 1.0]), _SEEDS), test, max_examples=30)


__all__ = ["cam_reference", "expected_union_bits_exact", "hlop_reference", "hopfield_reference", "lif_propagator",
           "log_false_match_exact", "sdr_overlap_reference", "stdp_pairs_reference"] + [
    f"ex_6_{k}" for k in range(1, 12)]
