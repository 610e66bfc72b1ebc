"""Checks of Lab 0 (labs/lab00_memory.ipynb): memory without interference.

Each ``ex_0_k`` property-tests a student's answer against :mod:`labkit.prologue` (and, for the attention
exercises, :func:`labkit.kernels.attend.reference`) on random inputs, prints one line on success and raises
``AssertionError`` with a hint on failure. Inputs are float64 torch tensors; answers may return tensors,
arrays or numbers. Every check is deterministic and takes well under a few seconds on a CPU.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import torch
from hypothesis import strategies as st

from labkit import data, prologue
from labkit.check import answer_array as _array
from labkit.check import answer_number as _number
from labkit.check import call_answer as _call
from labkit.check import exercise, expect, expect_close, for_all, to_numpy

# The size at which exercise 0.5 asks for the capacity, and how close alpha_c must come to labkit's value.
CAPACITY_D = 100
CAPACITY_TOLERANCE = 0.02
CAPACITY_SEEDS = 400  # seeds behind labkit's own measurement of the 50%-stable load

_SEEDS = st.integers(0, 2**16)


# --------------------------------------------------------------------------------------------- helpers


def _gaussian(seed: int, *shape: int) -> torch.Tensor:
    """A float64 tensor of i.i.d. standard normal entries, reproducible from ``seed``."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def _pm1(seed: int, n: int, d: int) -> torch.Tensor:
    """``n`` random ±1 patterns of length ``d`` (float64 tensor)."""
    return torch.from_numpy(data.binary_patterns(n, d, seed))




def _close(a: np.ndarray, b: np.ndarray, atol: float = 1e-8, rtol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol))


# ----------------------------------------------------------------------------- 0.1 outer-product memory


@exercise("0.1", "write() stores Σ v kᵀ as a (dv, dk) matrix and read() returns W q for every query")
def ex_0_1(write: Callable, read: Callable) -> None:
    def test(example):
        n, m, dk, dv, seed = example
        keys, values, queries = _gaussian(seed, n, dk), _gaussian(seed + 1, n, dv), _gaussian(seed + 2, m, dk)
        expected = prologue.outer_product_write(keys, values)
        W = _array("write(keys, values)", _call("write(keys, values)", write, keys, values))
        if W.shape == (dk, dv) and dk != dv:
            expect(False, f"write returned shape {W.shape} = (dk, dv); the memory is W = Σ v kᵀ with shape "
                          f"(dv, dk) = {(dv, dk)}, so that W @ k is a value. You built the transpose.")
        transposed = _close(W.T, to_numpy("expected", expected)) if W.shape == (dk, dk) else False
        expect_close("write(keys, values)", W, expected, atol=1e-9,
                     hint="W = Σ_i v_i k_iᵀ = values.T @ keys (shape (dv, dk))."
                     + (" Your W is its transpose: keys.T @ values." if transposed else "")
                     + " Do not normalise or average: the sum is the memory.")
        W_ref = expected
        answer = _array("read(W, queries)", _call("read(W, queries)", read, W_ref, queries))
        reference = prologue.outer_product_read(W_ref, queries)
        expect_close("read(W, queries)", answer, reference, atol=1e-9,
                     hint="`read` returns one row W q_j per query: queries @ W.T, shape (m, dv). "
                          "A (dk, m)- or (dv, m)-shaped result means the transpose is on the wrong side.")

    shapes = st.tuples(st.integers(1, 8), st.integers(1, 5), st.integers(1, 10), st.integers(1, 10), _SEEDS)
    for_all(shapes, test, max_examples=30)

    # Orthonormal keys: every pair comes back exactly (no crosstalk at all).
    for n, d in ((1, 1), (4, 4), (5, 12)):
        keys = torch.from_numpy(data.orthogonal_keys(n, d, seed=n + d))
        values = _gaussian(7 * n + d, n, 3)
        W = _call("write(keys, values)", write, keys, values)
        recalled = _array("read(write(keys, values), keys)", _call("read(W, keys)", read, W, keys))
        expect_close("read(write(K, V), K) with orthonormal K", recalled, values, atol=1e-9,
                     hint="With orthonormal keys k_iᵀk_j = δ_ij, so reading key j must return v_j exactly.")


# ------------------------------------------------------------------------------------- 0.2 crosstalk


def _simulated_crosstalk(n: int, d: int, dv: int = 16, seeds: int = 40) -> float:
    """Variance of read(write(K, V), K) - V over entries and seeds: unit random keys, N(0, 1) values."""
    total, count = 0.0, 0
    for seed in range(seeds):
        keys = torch.from_numpy(data.gaussian_keys(n, d, seed=seed))
        values = _gaussian(10_000 + seed, n, dv)
        noise = prologue.outer_product_read(prologue.outer_product_write(keys, values), keys) - values
        total += float((noise**2).sum())
        count += noise.numel()
    return total / count


@exercise("0.2", "crosstalk_variance(n, d) is (n - 1)/d, the variance a simulation measures")
def ex_0_2(crosstalk_variance: Callable) -> None:
    for n in (1, 2, 3, 10, 100, 1000):
        for d in (1, 2, 8, 64, 1000):
            got = _number(f"crosstalk_variance({n}, {d})", _call(f"crosstalk_variance({n}, {d})",
                                                                 crosstalk_variance, n, d))
            want = float(prologue.predicted_crosstalk_variance(n, d))
            if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
                continue
            if math.isclose(got, n / d, rel_tol=1e-9):
                hint = ("you counted the pair you are reading as crosstalk: the sum runs over the n - 1 "
                        "*other* pairs (i ≠ j).")
            elif math.isclose(got, (n - 1) / d**2, rel_tol=1e-9) or math.isclose(got, n / d**2, rel_tol=1e-9):
                hint = ("the variance of one overlap k_iᵀk_j of unit random keys is 1/d, not 1/d²: "
                        "d products of variance 1/d² each.")
            elif math.isclose(got, math.sqrt((n - 1) / d), rel_tol=1e-9):
                hint = "that is the standard deviation; the question asks for the variance."
            else:
                hint = ("write the read-out noise as a sum over the other pairs, Σ_{i≠j} v_i (k_iᵀk_j), "
                        "and add the variances of independent terms.")
            expect(False, f"crosstalk_variance({n}, {d}) = {got:.6g}, expected {want:.6g}: {hint}")

    for n, d in ((16, 64), (64, 32), (8, 128)):
        measured = _simulated_crosstalk(n, d)
        predicted = _number(f"crosstalk_variance({n}, {d})", crosstalk_variance(n, d))
        expect(abs(predicted - measured) <= 0.15 * measured,
               f"for n={n}, d={d} a simulation measures crosstalk variance {measured:.4f} but "
               f"crosstalk_variance predicts {predicted:.4f}.")


# ---------------------------------------------------------------------------------------- 0.3 Hopfield


@exercise("0.3", "Hebbian weights (zero diagonal, 1/d) and one synchronous sign update with sign(0) = +1")
def ex_0_3(hebbian_weights: Callable, hopfield_step: Callable) -> None:
    def test_weights(example):
        n, d, seed = example
        patterns = _pm1(seed, n, d)
        W = _array("hebbian_weights(patterns)", _call("hebbian_weights(patterns)", hebbian_weights, patterns))
        expect(W.shape == (d, d), f"hebbian_weights returned shape {W.shape}, expected (d, d) = {(d, d)}.")
        expect(np.allclose(np.diag(W), 0.0, atol=1e-12),
               f"the diagonal of W is {np.diag(W)[:4]}…, it must be 0: a neuron has no connection to itself. "
               f"Without it every pattern adds n/d to W_ii (set it with W.fill_diagonal_(0)).")
        expect_close("hebbian_weights(patterns)", W, prologue.hebbian_weights(patterns), atol=1e-9,
                     hint="W = (1/d) Σ_μ ξ^μ ξ^μᵀ with the diagonal set to 0 (divide by d, the pattern "
                          "length, not by n).")

    for_all(st.tuples(st.integers(1, 6), st.integers(2, 24), _SEEDS), test_weights)

    def test_step(example):
        n, d, m, seed = example
        W = prologue.hebbian_weights(_pm1(seed, n, d))
        states = _pm1(seed + 1, m, d)
        for state, what in ((states, f"a batch of states ({m}, {d})"), (states[0], f"one state ({d},)")):
            got = _array("hopfield_step(W, state)", _call(f"hopfield_step(W, state) on {what}",
                                                          hopfield_step, W, state))
            want = to_numpy("expected", prologue.hopfield_step(W, state))
            expect(got.shape == want.shape,
                   f"hopfield_step on {what} returned shape {got.shape}, expected {want.shape}: "
                   "state @ W.T handles one state (d,) and a batch (m, d) alike.")
            expect(np.isin(got, (-1.0, 1.0)).all(),
                   f"hopfield_step returned values other than ±1 ({np.unique(got)[:5]}…) on {what}: "
                   "torch.sign maps 0 to 0; here sign(0) = +1.")
            expect_close("hopfield_step(W, state)", got, want,
                         hint="Update every unit at once from the old state (synchronous): s' = sign(W s).")

    for_all(st.tuples(st.integers(1, 6), st.integers(2, 20), st.integers(1, 4), _SEEDS), test_step)

    # sign(0) = +1: with W = 0 every field is exactly 0, so every unit must come out +1.
    d = 6
    state = _pm1(3, 1, d)[0]
    got = _array("hopfield_step(0, state)", _call("hopfield_step(W=0, state)", hopfield_step,
                                                  torch.zeros(d, d, dtype=torch.float64), state))
    expect(np.array_equal(got, np.ones(d)),
           f"with W = 0 every local field is 0 and the convention sign(0) = +1 gives all +1, got {got}. "
           "torch.sign(0) is 0; use torch.where(h >= 0, 1.0, -1.0).")


# ------------------------------------------------------------------------ 0.4 softmax retrieval = attention


@exercise("0.4", "softmax_read matches the reference for every β (huge ones too) and is one attention step")
def ex_0_4(softmax_read: Callable) -> None:
    def test(example):
        m, n, d, dv, beta, seed = example
        queries, keys, values = _gaussian(seed, m, d), _gaussian(seed + 1, n, d), _gaussian(seed + 2, n, dv)
        got = _array("softmax_read", _call(f"softmax_read(queries, keys, values, beta={beta})",
                                           softmax_read, queries, keys, values, beta))
        expect(np.isfinite(got).all(),
               f"softmax_read returned nan/inf for β = {beta}: exp(β qᵀk) overflows. Subtract the row max "
               "of the scores before exponentiating (softmax is unchanged by a constant shift).")
        expect_close(f"softmax_read(…, beta={beta})", got, prologue.softmax_read(queries, keys, values, beta),
                     atol=1e-8, hint="Softmax over the n stored keys (dim=-1 of the (m, n) scores), then a "
                                     "weighted sum of the values: softmax(β Q Kᵀ) V.")

    betas = st.sampled_from([1e-3, 0.1, 1.0, 4.0, 30.0, 1e3, 1e5])
    shapes = st.tuples(st.integers(1, 4), st.integers(1, 10), st.integers(1, 8), st.integers(1, 6), betas,
                       _SEEDS)
    for_all(shapes, test, max_examples=40)

    # β -> ∞: one-hot on the best-matching key (the classical, "hard" retrieval), without overflow.
    queries, keys, values = _gaussian(11, 5, 8), _gaussian(12, 9, 8), _gaussian(13, 9, 3)
    for beta in (1e4, 1e6):
        got = _array("softmax_read", _call(f"softmax_read(…, beta={beta:g})", softmax_read,
                                           queries, keys, values, beta))
        nearest = values[(queries @ keys.T).argmax(dim=1)]
        expect(np.isfinite(got).all(), f"softmax_read returned nan/inf for β = {beta:g}: subtract the max "
                                       "score of each query before exp.")
        expect_close(f"softmax_read(…, beta={beta:g})", got, nearest, atol=1e-8,
                     hint="For huge β the weights become one-hot on the key with the largest score.")

    # One attention step: each query is a head with one query; every head sees the same K and V.
    from labkit.kernels.attend import reference as attention

    m, n, d, beta = 4, 7, 5, 0.8
    queries, keys, values = _gaussian(21, m, d), _gaussian(22, n, d), _gaussian(23, n, d)
    q = queries[None]  # (B=1, H=m, D)
    K = keys.expand(m, n, d)[None]  # (1, m, T=n, D)
    V = values.expand(m, n, d)[None]
    one_step = attention(q, K, V, scale=beta)[0]  # (m, D)
    got = _array("softmax_read", softmax_read(queries, keys, values, beta))
    expect_close("softmax_read vs labkit.kernels.attend.reference(scale=β)", got, one_step, atol=1e-8,
                 hint="Modern Hopfield retrieval is attention with scale β; the two must agree.")


# ------------------------------------------------------------------------------------ 0.5 capacity


def _stable_fractions(d: int, n: int, seeds: int, seed: int = 0) -> torch.Tensor:
    """Stable fraction of ``seeds`` independent Hebbian memories of n random ±1 patterns, batched: (seeds,).

    The field of the Hebbian net at a stored pattern ξ^μ is (1/d) Σ_ν ξ^ν (ξ^ν·ξ^μ) - (n/d) ξ^μ (the zero
    diagonal), computed from the (n, n) overlaps without forming W.
    """
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randint(0, 2, (seeds, n, d), generator=generator).double() * 2 - 1
    overlaps = patterns @ patterns.transpose(1, 2)  # (seeds, n, n)
    fields = (overlaps @ patterns - n * patterns) / d  # (seeds, n, d)
    step = torch.where(fields >= 0, 1.0, -1.0).to(patterns.dtype)
    return (step == patterns).all(dim=2).double().mean(dim=1)


@functools.cache
def reference_capacity(d: int = CAPACITY_D, seeds: int = CAPACITY_SEEDS) -> float:
    """labkit's measurement of the 50%-stable load at size ``d``: the load α = n/d where the mean (over
    ``seeds`` memories) fraction of stored patterns that are exact fixed points crosses 1/2."""
    ns = np.arange(max(1, int(0.12 * d)), int(0.26 * d) + 1)  # brackets the crossing (≈ 0.18 at d = 100)
    curve = np.array([float(_stable_fractions(d, int(n), seeds, seed=int(n)).mean()) for n in ns])
    return prologue.crossing(ns / d, curve, 0.5)


@exercise("0.5", "stable_fraction measures whole stored patterns that are fixed points; α_c matches labkit's")
def ex_0_5(stable_fraction: Callable, alpha_c) -> None:
    def fraction(d: int, n: int, seed: int) -> float:
        return _number(f"stable_fraction({d}, {n}, {seed})",
                       _call(f"stable_fraction({d}, {n}, {seed})", stable_fraction, d, n, seed))

    for d, n, seed in ((100, 12, 0), (64, 20, 3), (100, 25, 1)):
        f = fraction(d, n, seed)
        expect(0.0 <= f <= 1.0, f"stable_fraction({d}, {n}, {seed}) = {f:.4g} is not a fraction in [0, 1].")
        expect(abs(f * n - round(f * n)) < 1e-9,
               f"stable_fraction({d}, {n}, {seed}) = {f:.4g} is not a whole number of the n = {n} patterns "
               "over n: count a pattern as stable only if *all* of its d bits survive one step (you may be "
               "counting stable bits).")
        expect(fraction(d, n, seed) == f, f"stable_fraction({d}, {n}, {seed}) changed between two calls: "
                                          "draw the patterns from `seed` (e.g. labkit.data.binary_patterns).")
    expect(fraction(100, 1, 0) == 1.0, "a single stored pattern is always a fixed point "
                                      "(W ξ = (d-1)/d ξ), but stable_fraction(100, 1, 0) says otherwise.")

    seeds = range(40)
    for d, n in ((100, 10), (100, 18), (100, 26), (60, 14)):
        mine = np.mean([fraction(d, n, s) for s in seeds])
        ref = float(_stable_fractions(d, n, CAPACITY_SEEDS, seed=d + n).mean())
        expect(abs(mine - ref) <= 0.15,
               f"at d={d}, n={n} (α = {n / d:.2f}) your stable fraction averages {mine:.2f} over 40 seeds, "
               f"labkit measures {ref:.2f}. Likely causes: a nonzero diagonal in W (it stabilises every "
               "pattern), dividing by n instead of d, or testing an asynchronous update instead of one "
               "synchronous step.")

    alpha = _number("alpha_c", alpha_c)
    want = reference_capacity()
    if abs(alpha - want) <= CAPACITY_TOLERANCE:
        return
    if abs(alpha - 0.138) < 0.006:
        hint = ("0.138 is the d → ∞ limit for recall *with a few wrong bits*; the question asks for the "
                f"load where half of the patterns are *exact* fixed points at d = {CAPACITY_D}, read off "
                "your curve.")
    elif alpha > 1:
        hint = f"α is a load n/d, not a number of patterns: divide n by d = {CAPACITY_D}."
    else:
        hint = ("read it off your curve: the load α = n/d where the mean stable fraction crosses 1/2 "
                "(interpolate between the two n around the crossing).")
    expect(False, f"alpha_c = {alpha:.4g}, but at d = {CAPACITY_D} labkit measures the 50%-stable load at "
                  f"{want:.3f} (± {CAPACITY_TOLERANCE}): {hint}")


# ---------------------------------------------------------------------------------- 0.6 online softmax


class _Stream:
    """A one-shot iterator of (K_chunk, V_chunk) pairs that notices when old chunks are kept alive.

    A streaming solution holds O(1) chunks; a solution that stores them (``list(chunks)``) keeps every
    yielded chunk alive, which the weak references below see.
    """

    KEEP = 2  # chunks before the current one that may still be alive (a `first = next(chunks)` is fine)

    def __init__(self, K: torch.Tensor, V: torch.Tensor, size: int):
        self.K, self.V, self.size = K, V, size
        self.refs: list[weakref.ref] = []
        self.most_alive = 0
        self.yielded = 0
        self._it = self._generate()

    def _generate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.K.shape[0], self.size):
            older = self.refs[:-1]
            self.most_alive = max(self.most_alive, sum(r() is not None for r in older))
            pair = (self.K[start:start + self.size].clone(), self.V[start:start + self.size].clone())
            self.refs.append(weakref.ref(pair[0]))
            self.yielded += 1
            yield pair
            del pair

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)


def _attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, scale) -> torch.Tensor:
    from labkit.kernels.attend import reference

    return reference(q[None, None], K[None, None], V[None, None], scale=scale)[0, 0]


def _online_case(online_attend, q, K, V, size, scale, what):
    stream = _Stream(K, V, size)
    args = (q, stream) if scale is None else (q, stream, scale)
    got = _array("online_attend", _call(f"online_attend on {what}", online_attend, *args))
    expect(stream.yielded == -(-K.shape[0] // size) and next(stream, None) is None,
           f"online_attend stopped after {stream.yielded} of {-(-K.shape[0] // size)} chunks on {what}: "
           "read every chunk.")
    expect(np.isfinite(got).all(),
           f"online_attend returned nan/inf on {what}: exp of a raw score overflows (exp(710) = inf in "
           "float64). Keep a running max m and exponentiate only score - m.")
    expect_close(f"online_attend on {what}", got, _attention(q, K, V, scale), atol=1e-8,
                 hint="When a chunk raises the running max from m to m', rescale *both* the denominator l "
                      "and the accumulator by exp(m - m') before adding the new chunk. If you made two "
                      "passes over `chunks`, the second saw nothing: an iterator is consumed once.")
    return stream


@exercise("0.6", "online_attend equals attention in one pass over the chunks, stable for logits ~1e3")
def ex_0_6(online_attend: Callable) -> None:
    def test(example):
        T, D, size_seed, scale, seed = example
        size = 1 + size_seed % T
        q, K, V = _gaussian(seed, D), _gaussian(seed + 1, T, D), _gaussian(seed + 2, T, D)
        _online_case(online_attend, q, K, V, size, scale, f"T={T}, D={D}, chunks of {size}, scale={scale}")

    scales = st.sampled_from([None, 0.3, 1.0, 5.0])
    shapes = st.tuples(st.integers(1, 40), st.integers(1, 12), st.integers(0, 1000), scales, _SEEDS)
    for_all(shapes, test, max_examples=40)

    # The max keeps rising: every chunk forces a rescale of what came before.
    T, D = 24, 4
    q = torch.ones(D, dtype=torch.float64)
    K = torch.linspace(-3.0, 3.0, T, dtype=torch.float64)[:, None].repeat(1, D)
    V = _gaussian(5, T, D)
    for size in (1, 3, 5):
        _online_case(online_attend, q, K, V, size, 1.0, f"rising scores, chunks of {size}")

    # Logits of order ±1e3: exp overflows unless every exponent is score - running max.
    for size in (1, 4, 7, 32):
        q, K, V = _gaussian(31, 8), _gaussian(32, 32, 8), _gaussian(33, 32, 8)
        q = 1e3 * q / q.norm()
        K = K / K.norm(dim=1, keepdim=True)
        _online_case(online_attend, q, K, V, size, 1.0, f"logits ~ ±1e3, chunks of {size}")
    # Every logit near -1e3: a running max started at 0 instead of -inf underflows l to 0 (0/0 = nan).
    q = 1e3 * torch.ones(8, dtype=torch.float64) / 8**0.5
    K = -(torch.ones(16, 8, dtype=torch.float64) / 8**0.5 + 0.01 * _gaussian(34, 16, 8))
    V = _gaussian(35, 16, 8)
    for size in (1, 5):
        _online_case(online_attend, q, K, V, size, 1.0, f"all logits ≈ -1e3, chunks of {size}")

    # One pass, O(1) memory: the chunks already used must be released.
    q, K, V = _gaussian(41, 6), _gaussian(42, 64, 6), _gaussian(43, 64, 6)
    stream = _online_case(online_attend, q, K, V, 4, None, "64 positions in chunks of 4")
    expect(stream.most_alive <= _Stream.KEEP,
           f"online_attend kept {stream.most_alive} earlier chunks alive while reading the next one: it "
           "stores the stream (e.g. list(chunks) or torch.cat). The point is one pass in O(1) memory: "
           "update m, l and the accumulator from each chunk, then let it go.")


# ------------------------------------------------------------------------------------- 0.7 gating


def _reference_gated(keys: torch.Tensor, values: torch.Tensor, decay: float) -> torch.Tensor:
    W = None
    for t in range(keys.shape[0]):
        W = prologue.outer_product_write(keys[t:t + 1], values[t:t + 1], W, decay=decay)
    return W


@exercise("0.7", "gated_write decays the memory by λ before each write, so old pairs fade as λ^age")
def ex_0_7(gated_write: Callable) -> None:
    def test(example):
        n, dk, dv, decay, seed = example
        keys, values = _gaussian(seed, n, dk), _gaussian(seed + 1, n, dv)
        got = _array("gated_write", _call(f"gated_write(keys, values, decay={decay})",
                                          gated_write, keys, values, decay))
        want = to_numpy("expected", _reference_gated(keys, values, decay))
        if got.shape == want.shape and not _close(got, want):
            if _close(got, decay * want):
                expect(False, f"gated_write(…, decay={decay}) is λ times the expected memory: decay W "
                              "*before* adding the new pair (W ← λ W + v kᵀ), so the newest pair enters at "
                              "full strength.")
            if _close(got, to_numpy("expected", prologue.outer_product_write(keys, values))):
                expect(False, f"gated_write(…, decay={decay}) ignores λ: multiply W by λ before every write.")
            reversed_ = to_numpy("expected", _reference_gated(keys.flip(0), values.flip(0), decay))
            if _close(got, reversed_):
                expect(False, "the *first* pair decayed least: write the pairs in order, oldest first, so "
                              "the last pair is the freshest (weight λ^0) and pair t has weight λ^(n-1-t).")
        expect_close(f"gated_write(…, decay={decay})", got, want, atol=1e-9,
                     hint="W_t = λ W_{t-1} + v_t k_tᵀ from W_0 = 0, i.e. W_n = Σ_t λ^(n-1-t) v_t k_tᵀ, "
                          "shape (dv, dk).")

    decays = st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])
    shapes = st.tuples(st.integers(1, 9), st.integers(1, 8), st.integers(1, 8), decays, _SEEDS)
    for_all(shapes, test, max_examples=40)
