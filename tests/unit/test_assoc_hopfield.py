"""labkit.assoc.hopfield: the classical network stores and recalls a few patterns exactly (synchronous and
asynchronous), its energy never rises under asynchronous updates, recall collapses well above 0.138 N, the one-step
bit error follows the signal-to-noise prediction; the modern network is attention, lowers its energy, and recalls
at loads where the classical one has failed."""

from __future__ import annotations

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
