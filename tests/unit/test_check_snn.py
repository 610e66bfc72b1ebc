"""The Lab 6 checks (labkit.check.snn) pass correct answers and bite on wrong ones, stubs and `...`; their
independent truths agree with labkit's own chapter-6 code."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lab_answers import answer_factory, contract_tests, expect_hint
from numba import njit
from scipy.special import gammaln, logsumexp

import labkit.check.snn as checks
from labkit.snn.lif import LIFParams, STDPParams

_spec = importlib.util.spec_from_file_location(
    "_wrong_lab06_unit", Path(__file__).resolve().parents[1] / "labs" / "wrong_lab06.py")
_wrong = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wrong)
WRONG = _wrong.WRONG

torch.set_num_threads(1)  # two cores shared with other jobs


# ------------------------------------------------------------------------- correct answers (as a student)

def lif_coefficients(tau_m, tau_s, R, dt):
    for name, value in (("tau_m", tau_m), ("tau_s", tau_s), ("R", R), ("dt", dt)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    decay_v = math.exp(-dt / tau_m)
    delta = dt * (1 / tau_m - 1 / tau_s)
    phi = 1.0 if delta == 0 else math.expm1(delta) / delta
    gain_syn = R * (dt / tau_m) * decay_v * phi
    gain_ext = -R * math.expm1(-dt / tau_m)
    return decay_v, gain_syn, gain_ext, math.exp(-dt / tau_s)


def stdp_dw(pre_times, post_times, params):
    dw = 0.0
    for t_pre in pre_times:
        for t_post in post_times:
            delta = t_post - t_pre
            if delta >= 0:
                dw += params.A_plus * math.exp(-delta / params.tau_plus)
            else:
                dw -= params.A_minus * math.exp(delta / params.tau_minus)
    return dw


def hopfield(patterns, cue, max_steps):
    N = patterns.shape[1]
    W = patterns.T @ patterns / N
    np.fill_diagonal(W, 0.0)
    s = cue.copy()
    for _ in range(max_steps):
        new = np.where(W @ s >= 0, 1.0, -1.0)
        if np.array_equal(new, s):
            break
        s = new
    return W, s


def modern_step(X, xi, beta):
    scores = beta * xi @ X.T
    scores = scores - scores.max(axis=1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=1, keepdims=True)
    return p @ X


def log_false_match(n, w, theta, s):
    lo = max(theta, w - (n - s))  # C(n − s, w − b) = 0 when w − b > n − s
    b = np.arange(lo, min(w, s) + 1)
    if b.size == 0:
        return -math.inf

    def log_comb(a, k):
        return gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1)

    return float(logsumexp(log_comb(s, b) + log_comb(n - s, w - b)) - log_comb(n, w))


def union_false_match(n, w, M, theta):
    expected_on = n * (1 - (1 - w / n) ** M)
    return expected_on, math.exp(log_false_match(n, w, theta, round(expected_on)))


def binding_matrix(d, kind, rng):
    A = rng.standard_normal((d, d))
    if kind == "gaussian":
        return A / math.sqrt(d)
    if kind == "orthogonal":
        Q, R = np.linalg.qr(A)
        return Q * np.sign(np.diag(R))
    raise ValueError(f"kind must be 'gaussian' or 'orthogonal', got {kind!r}")


def cam_run(n_cues, n_bits, ops):
    W = np.zeros((n_cues, n_bits), dtype=bool)
    out = []

    def cue_of(op):
        if not 0 <= op[1] < n_cues:
            raise ValueError(f"cue must be in 0..{n_cues - 1}, got {op[1]}")
        return op[1]

    def bits_of(name, bits):
        bits = np.asarray(bits, dtype=bool)
        if bits.shape != (n_bits,):
            raise ValueError(f"{name} must have {n_bits} bits, got shape {bits.shape}")
        return bits

    for op in ops:
        if op[0] == "learn":
            W[cue_of(op)] = bits_of("content", op[2])
        elif op[0] == "cue":
            out.append(W[cue_of(op)].copy())
        elif op[0] == "content":
            fragment = bits_of("fragment", op[1])
            out.append([int(c) for c in np.flatnonzero((W & fragment).any(axis=1))])
        else:
            raise ValueError(f"op must be 'learn', 'cue' or 'content', got {op[0]!r}")
    return out


def hlop(X, dW, H0, eta, epochs):
    H = H0.copy()
    B = X.shape[0]
    for _ in range(epochs):
        Y = X @ H.T
        H = H + eta / B * (Y.T @ X - Y.T @ Y @ H)
    return H, dW - dW @ H.T @ H


@njit(cache=True)
def lif_step_numba(v, I, refrac, I_in, i_ext, k, n_ref):
    v_rest, decay_v, gain_syn, gain_ext, decay_syn, v_reset, v_th = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
    N = v.shape[0]
    spiked = np.zeros(N, dtype=np.bool_)
    for i in range(N):
        I1 = I[i] + I_in[i]
        if refrac[i] > 0:
            v[i] = v_reset
            refrac[i] -= 1
        else:
            vi = v_rest + (v[i] - v_rest) * decay_v + I1 * gain_syn + i_ext[i] * gain_ext
            if vi >= v_th:
                v[i] = v_reset
                refrac[i] = n_ref
                spiked[i] = True
            else:
                v[i] = vi
        I[i] = I1 * decay_syn
    return spiked


@njit(cache=True)
def sdr_match_numba(Q, S, theta):
    B, W = Q.shape
    M = S.shape[0]
    overlap = np.zeros((B, M), dtype=np.int64)
    match = np.zeros((B, M), dtype=np.bool_)
    m1, m2, m4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F
    for b in range(B):
        for m in range(M):
            c = 0
            for j in range(W):
                x = Q[b, j] & S[m, j]
                x = x - ((x >> 1) & m1)
                x = (x & m2) + ((x >> 2) & m2)
                x = (x + (x >> 4)) & m4
                x = x + (x >> 8)
                x = x + (x >> 16)
                x = x + (x >> 32)
                c += x & 0x7F
            overlap[b, m] = c
            match[b, m] = c >= theta
    return match, overlap


CORRECT = {
    "6.1": lif_coefficients,
    "6.2": stdp_dw,
    "6.3": hopfield,
    "6.4": modern_step,
    "6.5": log_false_match,
    "6.6": union_false_match,
    "6.7": binding_matrix,
    "6.8": cam_run,
    "6.9": hlop,
    "6.10": lif_step_numba,
    "6.11": sdr_match_numba,
}
CHECKS = {label: getattr(checks, f"ex_{label.replace('.', '_')}") for label in CORRECT}

SIGNATURES = {
    "6.1": "lif_coefficients(tau_m, tau_s, R, dt)",
    "6.2": "stdp_dw(pre_times, post_times, params)",
    "6.3": "hopfield(patterns, cue, max_steps)",
    "6.4": "modern_step(X, xi, beta)",
    "6.5": "log_false_match(n, w, theta, s)",
    "6.6": "union_false_match(n, w, M, theta)",
    "6.7": "binding_matrix(d, kind, rng)",
    "6.8": "cam_run(n_cues, n_bits, ops)",
    "6.9": "hlop(X, dW, H0, eta, epochs)",
    "6.10": "lif_step_numba(v, I, refrac, I_in, i_ext, k, n_ref)",
    "6.11": "sdr_match_numba(Q, S, theta)",
}
COMPILED = {"6.10", "6.11"}
_from_body, stub = answer_factory(SIGNATURES, COMPILED, WRONG)


def from_body(label: str, body: str | None = None):
    """Like answer_factory's, with what the lab's namespace holds: scipy's gammaln / logsumexp (6.5) and the
    correct ``log_false_match`` (6.6 builds on 6.5)."""
    fn = _from_body(label, body)
    namespace = getattr(fn, "py_func", fn).__globals__
    namespace.setdefault("gammaln", gammaln)
    namespace.setdefault("logsumexp", logsumexp)
    namespace.setdefault("log_false_match", log_false_match)
    return fn


# -------------------------------------------------------------------------------------------- the tests


assert set(SIGNATURES) == set(CORRECT)
globals().update(contract_tests(CORRECT, CHECKS, WRONG, from_body, stub))


# -------------------------------------------------------------- the hints name the likely cause


def test_hints_of_the_wrong_answers():
    expect_hint(checks.ex_6_1, from_body("6.1"), "0/0")
    expect_hint(checks.ex_6_2, from_body("6.2"), "t_post − t_pre")
    expect_hint(checks.ex_6_3, from_body("6.3"), r"sign\(0\)|np.sign")
    expect_hint(checks.ex_6_4, from_body("6.4"), "largest score")
    expect_hint(checks.ex_6_5, from_body("6.5"), "starts at b = θ")
    expect_hint(checks.ex_6_6, from_body("6.6"), "count once")
    expect_hint(checks.ex_6_7, from_body("6.7"), "sign fix")
    expect_hint(checks.ex_6_8, from_body("6.8"), "FORGET")
    expect_hint(checks.ex_6_9, from_body("6.9"), "Oja")
    expect_hint(checks.ex_6_10, from_body("6.10"), "while a neuron is refractory")
    expect_hint(checks.ex_6_11, from_body("6.11"), "≥ θ")


def test_more_wrong_answers():
    """Further slips each check must reject, with the hint that names them."""
    def euler(tau_m, tau_s, R, dt):
        if min(tau_m, tau_s, R, dt) <= 0:
            raise ValueError("must be > 0")
        return 1 - dt / tau_m, R * dt / tau_m, R * dt / tau_m, 1 - dt / tau_s

    expect_hint(checks.ex_6_1, euler, "forward-Euler")

    def no_R(tau_m, tau_s, R, dt):
        d, g, e, s = lif_coefficients(tau_m, tau_s, R, dt)
        return d, g / R, e, s

    expect_hint(checks.ex_6_1, no_R, "factor R")

    def guarded_naive(tau_m, tau_s, R, dt):  # handles τ_s = τ_m exactly but cancels near it
        if min(tau_m, tau_s, R, dt) <= 0:
            raise ValueError("must be > 0")
        d = math.exp(-dt / tau_m)
        g = R * dt / tau_m * d if tau_s == tau_m else R * tau_s / (tau_s - tau_m) * (math.exp(-dt / tau_s) - d)
        return d, g, -R * math.expm1(-dt / tau_m), math.exp(-dt / tau_s)

    expect_hint(checks.ex_6_1, guarded_naive, "close to τ_m")

    def no_validation(tau_m, tau_s, R, dt):
        return lif_coefficients(abs(tau_m) or 1.0, abs(tau_s) or 1.0, abs(R), abs(dt) or 1.0)

    expect_hint(checks.ex_6_1, no_validation, "expected a ValueError")

    def zero_depresses(pre_times, post_times, params):
        return sum(params.A_plus * math.exp(-(b - a) / params.tau_plus) if b > a
                   else -params.A_minus * math.exp((b - a) / params.tau_minus)
                   for a in pre_times for b in post_times)

    expect_hint(checks.ex_6_2, zero_depresses, "Δt = 0")

    def self_coupled(patterns, cue, max_steps):
        W, _ = hopfield(patterns, cue, max_steps)
        W = W + np.eye(len(W)) * patterns.shape[0] / patterns.shape[1]
        return W, cue

    expect_hint(checks.ex_6_3, self_coupled, "diagonal to zero")

    def one_step(patterns, cue, max_steps):
        return hopfield(patterns, cue, 1)

    expect_hint(checks.ex_6_3, one_step, "not once")

    def wrong_axis(X, xi, beta):
        S = beta * xi @ X.T
        A = np.exp(S - S.max(0, keepdims=True))
        return (A / A.sum(0, keepdims=True)) @ X

    expect_hint(checks.ex_6_4, wrong_axis, "over the P stored patterns")

    def linear_space(n, w, theta, s):  # float binomials: inf / inf and underflow
        from scipy.special import comb

        b = np.arange(theta, min(w, s) + 1)
        with np.errstate(all="ignore"):
            p = (comb(s, b) * comb(n - s, w - b)).sum() / comb(n, w)
            return float(np.log(p))

    expect_hint(checks.ex_6_5, linear_space, "log space")

    def probability(n, w, theta, s):
        return math.exp(log_false_match(n, w, theta, s))

    expect_hint(checks.ex_6_5, probability, "not the probability")

    def off_bits(n, w, M, theta):
        off = n * (1 - w / n) ** M
        return off, math.exp(log_false_match(n, w, theta, round(off)))

    expect_hint(checks.ex_6_6, off_bits, "OFF bits")

    def unscaled(d, kind, rng):
        return binding_matrix(d, kind, rng) * (math.sqrt(d) if kind == "gaussian" else 1.0)

    expect_hint(checks.ex_6_7, unscaled, "N\\(0, 1/d\\)")

    def fixed_seed(d, kind, rng):
        return binding_matrix(d, kind, np.random.default_rng(0))

    expect_hint(checks.ex_6_7, fixed_seed, "from `rng`")

    def containment(n_cues, n_bits, ops):
        W, out = np.zeros((n_cues, n_bits), dtype=bool), []
        for op in ops:
            if op[0] == "content" and np.shape(op[1]) != (n_bits,):
                raise ValueError("width")
            if op[0] == "learn":
                W[op[1]] = op[2]
            elif op[0] == "cue":
                out.append(W[op[1]].copy())
            else:
                out.append([int(c) for c in np.flatnonzero((W >= op[1]).all(1) & op[1].any())])
        return out

    expect_hint(checks.ex_6_8, containment, "AT LEAST ONE")

    def no_checks(n_cues, n_bits, ops):  # negative cues wrap around, wrong widths broadcast
        W, out = np.zeros((n_cues, n_bits), dtype=bool), []
        for op in ops:
            if op[0] == "learn":
                W[op[1]] = op[2]
            elif op[0] == "cue":
                out.append(W[op[1]].copy())
            else:
                out.append([int(c) for c in np.flatnonzero((W & op[1]).any(1))])
        return out

    expect_hint(checks.ex_6_8, no_checks, "ValueError")

    def keeps_old_subspace(X, dW, H0, eta, epochs):
        H, _ = hlop(X, dW, H0, eta, epochs)
        return H, dW @ H.T @ H

    expect_hint(checks.ex_6_9, keeps_old_subspace, "part IN the old subspace")

    @njit
    def decay_then_add(v, I, refrac, I_in, i_ext, k, n_ref):
        spiked = np.zeros(v.shape[0], dtype=np.bool_)
        for i in range(v.shape[0]):
            I1 = I[i] + I_in[i]
            if refrac[i] > 0:
                v[i] = k[5]
                refrac[i] -= 1
            else:
                vi = k[0] + (v[i] - k[0]) * k[1] + I1 * k[2] + i_ext[i] * k[3]
                if vi >= k[6]:
                    v[i] = k[5]
                    refrac[i] = n_ref
                    spiked[i] = True
                else:
                    v[i] = vi
            I[i] = I[i] * k[4] + I_in[i]
        return spiked

    expect_hint(checks.ex_6_10, decay_then_add, "add the input first")

    @njit
    def not_in_place(v, I, refrac, I_in, i_ext, k, n_ref):
        return lif_step_numba(v.copy(), I.copy(), refrac.copy(), I_in, i_ext, k, n_ref)

    expect_hint(checks.ex_6_10, not_in_place, "IN PLACE")

    def plain_python(v, I, refrac, I_in, i_ext, k, n_ref):
        return lif_step_numba(v, I, refrac, I_in, i_ext, k, n_ref)

    expect_hint(checks.ex_6_10, plain_python, "@njit")

    @njit
    def misses_bit_63(Q, S, theta):
        B, M = Q.shape[0], S.shape[0]
        overlap = np.zeros((B, M), dtype=np.int64)
        for b in range(B):
            for m in range(M):
                c = 0
                for j in range(Q.shape[1]):
                    x = Q[b, j] & S[m, j]
                    for i in range(63):
                        c += (x >> i) & 1
                overlap[b, m] = c
        return overlap >= theta, overlap

    expect_hint(checks.ex_6_11, misses_bit_63, "negative words")


# -------------------------------------------------------------- the truths agree with labkit's chapter-6 code


@pytest.mark.parametrize("tau_m, tau_s, R, dt", [(10.0, 5.0, 1.0, 1.0), (3.0, 0.3, 11.1, 1.0), (10.0, 10.0, 2.0, 0.1),
                                                 (0.5, 0.3, 3.5, 1.0), (20.0, 20.0 * (1 + 1e-10), 1.0, 5.0)])
def test_matrix_exponential_equals_labkits_propagator(tau_m, tau_s, R, dt):
    E = checks.lif_propagator(tau_m, tau_s, R, dt)
    c = LIFParams(tau_m=tau_m, tau_s=tau_s, R=R, t_ref=0.0).coefficients(dt)
    assert np.allclose([E[0, 0], E[0, 1], E[0, 2], E[1, 1]], [c.decay_v, c.gain_syn, c.gain_ext, c.decay_syn],
                       rtol=1e-10, atol=1e-13)
    assert np.allclose(E[1:, 0], 0) and E[2, 2] == 1.0


def test_stdp_pair_sum_equals_the_window_and_the_trace_rule():
    """The pair sum of 6.2 = Σ stdp_window = the trace-based rule of the kernel (labkit.kernels.lif_step)."""
    from labkit.kernels.lif_step import reference_stdp
    from labkit.snn.lif import stdp_window

    rng = np.random.default_rng(0)
    p = STDPParams(tau_plus=15.0, tau_minus=25.0, A_plus=0.02, A_minus=0.03, w_min=-100.0, w_max=100.0)
    for _ in range(20):
        pre = np.sort(rng.choice(60, rng.integers(0, 6), replace=False)).astype(float)
        post = np.sort(rng.choice(60, rng.integers(0, 6), replace=False)).astype(float)
        want = checks.stdp_pairs_reference(pre, post, p)
        assert math.isclose(want, float(stdp_window(post[None, :] - pre[:, None], p).sum()), abs_tol=1e-14)
        W, x, y = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), torch.zeros(
            1, dtype=torch.float64)
        for t in range(61):
            reference_stdp(W, x, y, torch.tensor([float(t) in pre]), torch.tensor([float(t) in post]),
                           p.coefficients(1.0))
        assert math.isclose(float(W[0, 0]), want, rel_tol=1e-12, abs_tol=1e-14)


def test_hopfield_reference_equals_labkit():
    from labkit.assoc.hopfield import hebbian_weights, sync_recall

    rng = np.random.default_rng(1)
    for _ in range(10):
        patterns = rng.choice([-1.0, 1.0], size=(int(rng.integers(1, 8)), 32))
        cue = patterns[0] * np.where(rng.random(32) < 0.2, -1, 1)
        W, s = checks.hopfield_reference(patterns, cue, 10)
        assert np.array_equal(W, hebbian_weights(torch.from_numpy(patterns)).numpy())
        assert np.array_equal(s, sync_recall(torch.from_numpy(W), torch.from_numpy(cue), max_steps=10)[0].numpy())


def test_exact_false_match_equals_labkit():
    from labkit.assoc.sdr import expected_union_bits, false_match_probability

    for n, w, theta, s in [(2048, 40, 10, 40), (1024, 20, 5, 10), (64, 8, 2, 8), (100, 100, 50, 60)]:
        assert math.isclose(math.exp(checks.log_false_match_exact(n, w, theta, s)),
                            false_match_probability(n, w, theta, s=s), rel_tol=1e-9)
    assert math.isclose(checks.expected_union_bits_exact(2048, 40, 50), expected_union_bits(2048, 40, 50),
                        rel_tol=1e-12)


def test_overlap_reference_equals_the_kernels_reference():
    from labkit.kernels.sdr_match import reference

    rng = np.random.default_rng(2)
    Q = rng.integers(-(2**63), 2**63 - 1, (5, 3), dtype=np.int64, endpoint=True)
    S = rng.integers(-(2**63), 2**63 - 1, (7, 3), dtype=np.int64, endpoint=True)
    _, ov = reference(torch.from_numpy(Q), torch.from_numpy(S), 0)
    assert np.array_equal(checks.sdr_overlap_reference(Q, S), ov.numpy())


def test_cam_reference_forgets_and_recalls_from_any_fragment():
    b = np.eye(6, dtype=bool)
    content = b[0] | b[1] | b[2]
    out = checks.cam_reference(3, 6, [("learn", 1, content), ("content", b[2]), ("learn", 1, b[5]),
                                      ("content", b[2]), ("cue", 1), ("cue", 0)])
    assert out[0] == [1] and out[1] == [] and np.array_equal(out[2], b[5]) and not out[3].any()


def test_checks_reject_a_placeholder_before_running():
    with pytest.raises(AssertionError, match="placeholder"):
        checks.ex_6_5(...)
