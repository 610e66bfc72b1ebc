"""labkit.assoc.sdr: SDR generation and noise, the hypergeometric false-match formula (hand cases, scipy, exact
rationals, huge n), subsampling, the union property (exact size distribution, the paper's approximation) and the
simulations on the bit-packed kernel, which must agree with the formulas within sampling error (fixed seeds)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.stats import hypergeom

from labkit.assoc import sdr


def test_random_sdrs_and_noise():
    x = sdr.random_sdrs(50, 200, 12, seed=3)
    assert x.shape == (50, 200) and x.dtype == torch.bool
    assert x.sum(1).tolist() == [12] * 50
    assert torch.equal(x, sdr.random_sdrs(50, 200, 12, seed=3))
    assert not torch.equal(x, sdr.random_sdrs(50, 200, 12, seed=4))
    y = sdr.add_noise(x, 5, seed=1)
    assert y.sum(1).tolist() == [12] * 50  # the weight is kept
    assert sdr.overlap(x, y).tolist() == [7] * 50  # exactly k bits moved
    assert torch.equal(sdr.add_noise(x, 0), x)
    assert sdr.random_sdrs(0, 10, 2).shape == (0, 10)


def test_overlap_hand_case():
    a = torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool)
    b = torch.tensor([[1, 0, 0, 1, 1], [0, 0, 1, 0, 1]], dtype=torch.bool)
    assert sdr.overlap(a, b).tolist() == [2, 0]


def test_false_match_hand_cases():
    # n = 4, w = 2: of the C(4,2) = 6 inputs one shares both bits, one shares none, four share one
    assert sdr.false_match_probability(4, 2, 2) == pytest.approx(1 / 6, abs=1e-15)
    assert sdr.false_match_probability(4, 2, 1) == pytest.approx(5 / 6, abs=1e-15)
    assert sdr.false_match_probability(4, 2, 0) == 1.0
    assert sdr.false_match_probability(4, 2, 3) == 0.0
    np.testing.assert_allclose(sdr.overlap_pmf(4, 2), [1 / 6, 4 / 6, 1 / 6], atol=1e-15)


def test_false_match_against_scipy_and_exact_rationals():
    for n, w, s in [(100, 10, 10), (1024, 20, 20), (2048, 40, 25), (500, 30, 60)]:
        pmf = sdr.overlap_pmf(n, w, s)
        np.testing.assert_allclose(pmf, hypergeom(n, s, w).pmf(np.arange(min(w, s) + 1)), rtol=1e-9, atol=1e-300)
        assert pmf.sum() == pytest.approx(1.0, abs=1e-10)  # lgamma rounding
        for theta in (1, 3, min(w, s) // 2, min(w, s)):
            exact = Fraction(sum(math.comb(s, b) * math.comb(n - s, w - b) for b in range(theta, min(w, s) + 1)),
                             math.comb(n, w))
            assert sdr.false_match_probability(n, w, theta, s=s) == pytest.approx(float(exact), rel=1e-9)
    # huge n stays finite and tiny (log space); more synapses or a lower threshold only raise it
    p = sdr.false_match_probability(100_000, 2000, 200)
    assert 0 < p < 1e-60
    assert sdr.false_match_probability(2048, 40, 10, s=20) < sdr.false_match_probability(2048, 40, 10, s=40)
    assert sdr.false_match_probability(2048, 40, 9) > sdr.false_match_probability(2048, 40, 10)


def test_simulation_matches_analytic_within_sampling_error():
    """The M × B pair indicators are pairwise independent, so the binomial standard error is exact."""
    for n, w, s, thetas, seed in [(256, 16, None, [1, 2, 3, 4, 5], 0), (1000, 24, None, [1, 2, 3, 4], 1),
                                  (512, 20, 10, [1, 2, 3, 4], 2)]:
        r = sdr.false_match_experiment(n, w, thetas, s=s, n_stored=400, n_queries=400, seed=seed)
        assert r["trials"] == 160_000
        p = r["analytic"]
        sigma = np.sqrt(p * (1 - p) / r["trials"])
        assert np.all(np.abs(r["rate"] - p) <= 4.5 * sigma + 1e-6), (n, w, r["rate"], p)
        assert np.all((r["lo"] <= r["rate"]) & (r["rate"] <= r["hi"]))


def test_union_size_distribution():
    n, w = 300, 10
    pmf = sdr.union_size_pmf(n, w, 1)
    assert pmf[w] == 1.0 and pmf.sum() == 1.0
    for M in (2, 7, 40):
        pmf = sdr.union_size_pmf(n, w, M)
        assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
        assert pmf[:w].sum() == 0 and pmf[min(n, M * w) + 1:].sum() == 0
        # each bit is ON with probability 1 - (1 - w/n)^M, so the mean is exactly the paper's expected size
        assert (np.arange(n + 1) * pmf).sum() == pytest.approx(sdr.expected_union_bits(n, w, M), rel=1e-10)
    # two SDRs: the union has 2w - o bits with o the hypergeometric overlap
    np.testing.assert_allclose(sdr.union_size_pmf(n, w, 2)[2 * w - np.arange(w + 1)], sdr.overlap_pmf(n, w),
                               atol=1e-14)


def test_union_false_match_simulated_exact_and_paper():
    r = sdr.union_experiment(1024, 20, [10, 25, 40], theta=10, n_unions=120, n_queries=200, seed=0)
    assert np.all(np.abs(r["rate"] - r["exact"]) <= 4.5 * r["se"] + 1e-4), (r["rate"], r["exact"], r["se"])
    # the paper's approximation (the expected union size) is close to the exact average here
    np.testing.assert_allclose(r["paper"], r["exact"], rtol=0.05)
    np.testing.assert_allclose(r["mean_union_bits"], r["expected_bits"], rtol=0.02)
    assert np.all(np.diff(r["exact"]) > 0)  # bigger unions match more random inputs
    assert sdr.union_false_match_probability(1024, 20, 1, 10) == sdr.false_match_probability(1024, 20, 10)


def test_union_with_subsampled_patterns():
    """Unions of M patterns of s bits queried by w-bit inputs (the paper's union figure: w = 200, s = 25, θ = 15)."""
    # one pattern: the union is the pattern itself, so all three agree with the plain formula
    one = sdr.false_match_probability(1000, 200, 15, s=25)
    assert sdr.union_false_match_probability(1000, 200, 1, 15, s=25) == one
    assert sdr.union_false_match_exact(1000, 200, 1, 15, s=25) == pytest.approx(one, rel=1e-12)
    # the paper's value uses the rounded expected size: M = 2 -> round(49.375) = 49 union bits
    assert sdr.expected_union_bits(1000, 25, 2) == pytest.approx(1000 * (1 - 0.975**2))
    assert sdr.union_false_match_probability(1000, 200, 2, 15, s=25) == sdr.false_match_probability(1000, 200, 15,
                                                                                                     s=49)
    r = sdr.union_experiment(1000, 200, [2, 3], theta=15, s=25, n_unions=100, n_queries=300, seed=1)
    np.testing.assert_allclose(r["expected_bits"], [49.375, 73.140625])
    assert np.all(np.abs(r["z"]) <= 4.5), (r["rate"], r["exact"], r["se"])
    assert np.all(np.abs(r["mean_union_bits"] - r["expected_bits"]) < 2)


def test_experiment_reports_z_scores():
    r = sdr.false_match_experiment(300, 12, [1, 2, 3, 13], n_stored=200, n_queries=200, seed=3)
    p, n = r["analytic"], r["trials"]
    ok = p > 0
    np.testing.assert_allclose(r["z"][ok], (r["rate"][ok] - p[ok]) / np.sqrt(p[ok] * (1 - p[ok]) / n))
    assert np.isnan(r["z"][-1]) and r["rate"][-1] == 0  # θ > w: impossible, p = 0
    assert np.array_equal(r["inside"], (r["lo"] <= p) & (p <= r["hi"]))


def test_threshold_sweep():
    r = sdr.threshold_sweep([2, 4, 6], ns=[500, 1000], sparsities=[0.01, 0.02], synapses=[10, 20])
    assert r["grid_size"] == 8
    vals = [sdr.false_match_probability(n, round(p * n), 4, s=s) for n in (500, 1000) for p in (0.01, 0.02)
            for s in (10, 20)]
    assert r["median"][1] == pytest.approx(np.median(vals)) and r["max"][1] == pytest.approx(max(vals))
    assert np.all(np.diff(r["median"]) < 0) and np.all(r["min"] <= r["median"]) and np.all(r["median"] <= r["max"])
    with pytest.raises(ValueError, match=r"sparsities must lie in \(0, 1\], got 0"):
        sdr.threshold_sweep([2], [100], [0], [5])
    with pytest.raises(ValueError, match=r"synapses must be <= every n, got s = 200 > n = 100"):
        sdr.threshold_sweep([2], [100], [0.1], [200])


def test_fast_random_subsets_are_uniform():
    g = np.random.default_rng(0)
    x = sdr._random_subsets(20_000, 100, 5, g)  # w² < n: the rejection sampler
    assert x.sum(1).tolist() == [5] * 20_000
    freq = x.double().mean(0).numpy()
    assert np.abs(freq - 0.05).max() < 5 * np.sqrt(0.05 * 0.95 / 20_000)
    pair = (x[:, 0] & x[:, 1]).double().mean()  # P(both of two given bits) = C(98, 3) / C(100, 5)
    assert float(pair) == pytest.approx(math.comb(98, 3) / math.comb(100, 5), abs=5 * np.sqrt(0.002 / 20_000))
    assert sdr._random_subsets(3, 10, 4, g).sum(1).tolist() == [4, 4, 4]  # w² >= n: falls back to random_sdrs


def test_plot_rates():
    fig = sdr.plot_rates({"a": {"x": [1, 2, 3], "rate": [0.5, 0.01, 0.0], "lo": [0.4, 0.005, 0.0],
                                "hi": [0.6, 0.02, 0.001], "theory": [0.5, 0.01, 1e-4]}}, title="t")
    names = [tr.name for tr in fig.data]
    assert names == ["a: theory", "a: simulated", "a: 0 hits (upper bound)"]
    assert list(fig.data[1].x) == [1, 2] and list(fig.data[2].y) == [0.001]  # zero hits: drawn at the upper bound
    assert fig.layout.yaxis.type == "log"
    lin = sdr.plot_rates({"b": {"x": [0, 1], "rate": [0.0, 1.0], "lo": [0.0, 0.9], "hi": [0.1, 1.0]}}, log_y=False)
    assert len(lin.data) == 1 and list(lin.data[0].y) == [0.0, 1.0]
    only = sdr.plot_rates({"c": {"x": [], "rate": [], "lo": [], "hi": [], "theory_x": [1, 2], "theory": [0.1, 0.2]}})
    assert [tr.name for tr in only.data] == ["c: theory"]


def test_noisy_match_subsampling():
    # no noise: the s synapses all see the pattern
    assert sdr.noisy_match_probability(20, 15, 10, 0) == 1.0
    # k = 10 of w = 20 moved: the 15 synapses cover Hypergeom(20, 10, 15) kept bits; >= 10 only when all 10 kept
    assert sdr.noisy_match_probability(20, 15, 10, 10) == pytest.approx(math.comb(10, 5) / math.comb(20, 15))
    assert sdr.noisy_match_probability(20, 15, 16, 0) == 0.0
    r = sdr.noisy_match_experiment(24, 12, 8, [0, 4, 8, 12], n=512, n_trials=3000, seed=1)
    sigma = np.sqrt(r["analytic"] * (1 - r["analytic"]) / 3000)
    assert np.all(np.abs(r["rate"] - r["analytic"]) <= 4.5 * sigma + 1e-9), (r["rate"], r["analytic"])


def test_binomial_interval():
    lo, hi = sdr.binomial_interval(30, 100)
    assert lo < 0.3 < hi and hi - lo < 0.2
    assert sdr.binomial_interval(0, 50)[0] == 0.0 and sdr.binomial_interval(50, 50)[1] == 1.0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: sdr.false_match_probability(10, 11, 1), ValueError, r"w must be in 1..n = 1..10, got 11"),
        (lambda: sdr.false_match_probability(10, 5, -1), ValueError, r"theta must be an integer >= 0, got -1"),
        (lambda: sdr.false_match_probability(10, 5, 1, s=20), ValueError, r"s must be in 0..n = 0..10, got 20"),
        (lambda: sdr.false_match_probability(0, 1, 1), ValueError, r"n must be an integer >= 1, got 0"),
        (lambda: sdr.random_sdrs(3, 10, 0), ValueError, r"w must be in 1..n = 1..10, got 0"),
        (lambda: sdr.add_noise(sdr.random_sdrs(2, 10, 3), 4), ValueError, r"k must be <= the ON and OFF bits"),
        (lambda: sdr.overlap(torch.ones(3), torch.ones(3)), TypeError, r"x and y must be bool tensors"),
        (lambda: sdr.overlap(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool)), ValueError,
         r"y must have n = 3 bits like x, got 4"),
        (lambda: sdr.union_size_pmf(100, 5, 0), ValueError, r"M must be an integer >= 1, got 0"),
        (lambda: sdr.noisy_match_probability(10, 12, 1, 0), ValueError, r"s must be in 0..w = 0..10, got 12"),
        (lambda: sdr.binomial_interval(5, 4), ValueError, r"hits must be in 0..trials = 0..4, got 5"),
    ],
)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
