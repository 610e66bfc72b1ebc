"""labkit.assoc.hopfield: the classical network stores and recalls a few patterns exactly (synchronous and
asynchronous), its energy never rises under asynchronous updates, recall collapses well above 0.138 N, the one-step
bit error follows the signal-to-noise prediction; the modern network is attention, lowers its energy, and recalls
at loads where the classical one has failed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import data
from labkit.assoc import hopfield as hf


def patterns(P, N, seed=0):
    return torch.as_tensor(data.binary_patterns(P, N, seed))


def test_energy_hand_case():
    W = hf.hebbian_weights(torch.tensor([[1.0, -1.0]]))  # (1/2) [[0, -1], [-1, 0]]
    assert W.tolist() == [[0.0, -0.5], [-0.5, 0.0]]
    assert float(hf.energy(W, torch.tensor([1.0, -1.0]))) == -0.5  # the stored pattern: a minimum
    assert float(hf.energy(W, torch.tensor([1.0, 1.0]))) == 0.5
    assert hf.energy(W, torch.tensor([[1.0, -1.0], [-1.0, 1.0]])).tolist() == [-0.5, -0.5]  # and its mirror


def test_few_patterns_are_recalled_exactly():
    X = patterns(3, 120, seed=1)
    W = hf.hebbian_weights(X)
    assert torch.equal(W, W.T) and bool((W.diagonal() == 0).all())
    for recall in (lambda c: hf.sync_recall(W, c)[0], lambda c: hf.async_recall(W, c, seed=2)[0]):
        assert torch.equal(recall(X), X)  # stored patterns are fixed points
        assert torch.equal(recall(hf.flip_cue(X, 15, seed=3)), X)  # and attract cues with 15 of 120 bits flipped
    one, steps = hf.sync_recall(W, hf.flip_cue(X, 15, seed=3)[0])
    assert one.shape == (120,) and torch.equal(one, X[0]) and steps >= 1


def test_async_energy_never_increases():
    X = patterns(20, 100, seed=4)  # load 0.2: the cues wander before they settle
    W = hf.hebbian_weights(X)
    cue = torch.as_tensor(data.binary_patterns(8, 100, 5))
    state, sweeps, energies = hf.async_recall(W, cue, seed=6, return_energy=True)
    assert energies.shape == (sweeps + 1, 8)
    assert bool((energies[1:] <= energies[:-1] + 1e-12).all())
    assert bool(((state @ W) * state >= -1e-9).all())  # converged: every unit agrees with its field (or it is 0)


def test_recall_collapses_above_capacity():
    r = hf.capacity_experiment([0.05, 0.1, 0.3, 0.5], N=300, n_seeds=2, tolerance=0.02, n_probe=60, seed=0)
    assert r["recalled"].shape == (2, 4) and r["ags"] == hf.AGS_CAPACITY
    assert r["recalled"][:, 0].min() == 1.0 and r["recalled"][:, 1].min() >= 0.9
    assert r["recalled"][:, 2:].max() <= 0.05  # far above 0.138 N nothing is retrieved
    assert np.all(r["final_error"][:, 3] > 0.2)
    assert hf.ags_capacity(1000) == pytest.approx(138.0)


def test_bit_error_follows_signal_to_noise():
    N, P = 600, 120  # load 0.2: per-bit error Φ(-sqrt(5)) ≈ 1.3 %
    r = hf.capacity_experiment([P / N], N=N, n_seeds=3, n_probe=P, max_steps=1, seed=1)
    measured = r["bit_error"].mean()
    assert r["snr"][0] == pytest.approx(hf.normal_cdf(-math.sqrt(N / P)))
    assert r["snr"][0] == pytest.approx(0.0127, abs=1e-4)
    # bits of one network are not independent: compare within 20 %, not binomial error
    assert measured == pytest.approx(r["predicted"][0], rel=0.2)
    assert hf.snr_bit_error(1, 10_000) < 1e-20


def test_modern_is_attention_and_lowers_energy():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 16, generator=g, dtype=torch.float64)
    xi = torch.randn(5, 16, generator=g, dtype=torch.float64)
    beta = 0.7
    out = hf.modern_retrieve(X, xi, beta)
    sdpa = F.scaled_dot_product_attention(xi[None], X[None], X[None], scale=beta)[0]
    torch.testing.assert_close(out, sdpa)
    torch.testing.assert_close(out, torch.softmax(beta * xi @ X.T, dim=1) @ X)  # ξ_new = X softmax(β Xᵀ ξ)
    state = xi
    for _ in range(5):  # the concave-convex procedure: every update lowers the energy
        new = hf.modern_retrieve(X, state, beta)
        assert bool((hf.modern_energy(X, new, beta) <= hf.modern_energy(X, state, beta) + 1e-10).all())
        state = new
    # β = ∞ returns the best-matching pattern
    P = patterns(40, 32, seed=7)
    cue = hf.flip_cue(P[:5], 3, seed=8)
    assert torch.equal(hf.modern_retrieve(P, cue, math.inf), P[:5])


def test_modern_capacity_far_above_classical():
    r = hf.modern_capacity_experiment([0.5, 4.0], N=64, beta=1.0, flips=6, n_seeds=2, n_probe=50, seed=0)
    assert r["recalled"].min() >= 0.98  # 256 patterns in 64 units, from 6 flipped bits
    assert r["classical"][:, 1].max() == 0.0
    assert hf.demircigil_capacity(64) == pytest.approx(2.0**32)
    assert hf.demircigil_capacity(64, 0.1) < hf.demircigil_capacity(64)


def test_flip_cue_and_recall_fraction():
    X = patterns(4, 50, seed=9)
    cue = hf.flip_cue(X, 7, seed=1)
    assert (cue != X).sum(1).tolist() == [7, 7, 7, 7]
    assert hf.recall_fraction(cue, X, tolerance=0.14) == 1.0
    assert hf.recall_fraction(cue, X, tolerance=0.1) == 0.0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: hf.energy(torch.zeros(3, 3), torch.tensor([1.0, 0.0, 1.0])), ValueError, r"only \+1 and -1"),
        (lambda: hf.sync_recall(torch.zeros(3, 3), torch.ones(4)), ValueError, r"cue must have N = 3 units"),
        (lambda: hf.async_recall(torch.zeros(3, 4), torch.ones(3)), ValueError, r"W must be a square"),
        (lambda: hf.capacity_experiment([0.1], N=10, mode="random"), ValueError, r"mode must be 'sync' or 'async'"),
        (lambda: hf.capacity_experiment([-0.1], N=10), ValueError, r"loads must be a non-empty 1-D sequence"),
        (lambda: hf.modern_retrieve(torch.ones(2, 3), torch.ones(3), 0.0), ValueError, r"beta must be > 0"),
        (lambda: hf.modern_energy(torch.ones(2, 3), torch.ones(4), 1.0), ValueError, r"xi must have N = 3"),
        (lambda: hf.modern_retrieve(torch.ones(0, 3), torch.ones(3), 1.0), ValueError, r"P >= 1"),
        (lambda: hf.flip_cue(torch.ones(2, 5), 6), ValueError, r"flips must be in 0..N = 0..5, got 6"),
        (lambda: hf.demircigil_capacity(10, 0.5), ValueError, r"rho must be in \[0, 0.5\)"),
        (lambda: hf.snr_bit_error(0, 10), ValueError, r"P must be an integer >= 1, got 0"),
    ],
)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_modern_capacity_bound_closed_form():
    # at and above β* = atanh(1 − 2f) the bound is 1 + exp(N I(1 − 2f)) = 1 + demircigil_capacity²
    N, flips = 32, 8
    beta_star = math.atanh(1 - 2 * flips / N)
    top = 1 + hf.demircigil_capacity(N, flips / N) ** 2
    for beta in (beta_star, 2 * beta_star, 50.0, math.inf):
        assert hf.modern_capacity_bound(N, flips, beta) == pytest.approx(top, rel=1e-9)
    # a hand value: N = 4, no flips, β = 1: 1 + exp(4 (1 − ln cosh 1))
    assert hf.modern_capacity_bound(4, 0, 1.0) == pytest.approx(1 + math.exp(4 * (1 - math.log(math.cosh(1.0)))))
    # it grows with β up to β*, and tends to 2 as β → 0 (uniform weights: only the target alone is safe)
    betas = np.linspace(0.01, beta_star, 40)
    values = [hf.modern_capacity_bound(N, flips, b) for b in betas]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert hf.modern_capacity_bound(N, flips, 1e-9) == pytest.approx(2.0, abs=1e-6)


def test_modern_capacity_bound_ingredient_and_sufficiency():
    # the ingredient: a random ±1 pattern has E exp(β x·ξ) = cosh(β)^N; exact by enumerating all patterns
    N, beta = 8, 0.37
    allp = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=N)), dtype=torch.float64)
    xi = torch.as_tensor(data.binary_patterns(1, N, 0))[0]
    assert float(torch.exp(beta * allp @ xi).mean()) == pytest.approx(math.cosh(beta) ** N, rel=1e-12)
    # sufficiency: at P = the bound, one update still recalls at least half of the cues
    for beta in (0.2, 0.4, 1.0):
        P = int(hf.modern_capacity_bound(32, 8, beta))
        r = hf.modern_capacity_experiment([P / 32], N=32, beta=beta, flips=8, n_seeds=3, seed=1)
        assert r["recalled"].mean() >= 0.5, (beta, P, r["recalled"])


def test_energy_path():
    X = patterns(20, 100, seed=11)
    r = hf.energy_path(X, 0, 1, beta=1.0)
    D = int((X[0] != X[1]).sum())
    assert r["k"].tolist() == list(range(D + 1))
    assert np.allclose(np.diff(r["overlap"]), -2 / 100)  # one bit per step, away from X[0]
    assert r["overlap"][0] == 1.0 and r["overlap"][-1] == pytest.approx(float(X[0] @ X[1]) / 100)
    W = hf.hebbian_weights(X)
    assert r["classical"][0] == pytest.approx(float(hf.energy(W, X[0])) / 100)
    assert r["classical"][-1] == pytest.approx(float(hf.energy(W, X[1])) / 100)
    assert r["modern"][0] == pytest.approx(float(hf.modern_energy(X, X[0], 1.0)) / 100)
    # at load 0.2 both stored patterns are minima along the path, and the modern wells are linear: 2/N per flip
    assert r["classical"][1] > r["classical"][0] and r["classical"][-2] > r["classical"][-1]
    np.testing.assert_allclose(np.diff(r["modern"][:5]), 2 / 100, rtol=1e-6)
    assert "modern" not in hf.energy_path(X, 2, 3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: hf.modern_capacity_bound(32, 16, 1.0), r"flips must be an integer in 0..N/2"),
        (lambda: hf.modern_capacity_bound(32, 4, 0.0), r"beta must be a number > 0"),
        (lambda: hf.modern_capacity_bound(0, 0, 1.0), r"N must be an integer >= 1"),
        (lambda: hf.energy_path(torch.ones(2, 4), 0, 2), r"end must be a pattern index in 0..P-1 = 0..1"),
        (lambda: hf.energy_path(torch.zeros(2, 4), 0, 1), r"only \+1 and -1"),
    ],
)
def test_bad_inputs_bound_and_path(call, message):
    with pytest.raises(ValueError, match=message):
        call()
