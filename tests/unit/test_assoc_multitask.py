"""labkit.assoc.multitask: Hebb couplings on diluted patterns (dense = factored, supervised/unsupervised formulas),
the Hopfield limit (one pattern, no dilution: m = 1), the T = 0 hierarchical state (1 − d) d^{k−1} in theory and
simulation, the parallel regime with fast noise, supervised = unsupervised in the low-storage limit, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.assoc import multitask as mt


def _flip(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    out = x.clone()
    idx = torch.from_numpy(g.choice(x.shape[-1], k, replace=False))
    out[idx] = -out[idx]
    return out


def test_patterns_and_examples_statistics():
    xi = mt.diluted_patterns(3, 20000, 0.3, seed=0)
    assert xi.shape == (3, 20000) and set(xi.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert float((xi == 0).double().mean()) == pytest.approx(0.3, abs=0.01)
    assert float(xi.mean()) == pytest.approx(0.0, abs=0.01)
    eta = mt.make_examples(xi, 5, 0.6, seed=1)
    assert eta.shape == (3, 5, 20000)
    assert torch.equal(eta == 0, (xi == 0)[:, None, :].expand_as(eta))  # a blank stays blank
    chi = (eta * xi[:, None, :])[(xi != 0)[:, None, :].expand_as(eta)]
    assert float(chi.mean()) == pytest.approx(0.6, abs=0.01)  # E[χ] = r
    torch.testing.assert_close(mt.diluted_patterns(3, 50, 0.3, seed=4), mt.diluted_patterns(3, 50, 0.3, seed=4))


def test_couplings_match_the_formulas():
    xi = mt.diluted_patterns(2, 30, 0.4, seed=2)
    J = mt.MultitaskNetwork.from_patterns(xi).couplings()
    ref = xi.T @ xi / 30
    ref.fill_diagonal_(0)
    torch.testing.assert_close(J, ref)
    eta = mt.make_examples(xi, 4, 0.5, seed=3)
    R = 0.25 + 0.75 / 4
    bar = eta.mean(1)
    sup = bar.T @ bar / (30 * R)
    sup.fill_diagonal_(0)
    torch.testing.assert_close(mt.MultitaskNetwork.from_examples(eta, 0.5, "supervised").couplings(), sup)
    uns = sum(eta[m, a][:, None] * eta[m, a][None, :] for m in range(2) for a in range(4)) / (30 * R * 4)
    uns.fill_diagonal_(0)
    torch.testing.assert_close(mt.MultitaskNetwork.from_examples(eta, 0.5, "unsupervised").couplings(), uns)
    # one perfect example: both protocols are Hebb's rule on the archetypes
    one = xi[:, None, :]
    for mode in mt.MODES:
        torch.testing.assert_close(mt.MultitaskNetwork.from_examples(one, 1.0, mode).couplings(), ref)


@settings(max_examples=25, deadline=None)
@given(N=st.integers(2, 25), P=st.integers(1, 4), B=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_factored_field_equals_dense(N, P, B, seed):
    xi = mt.diluted_patterns(P, N, 0.3, seed=seed)
    net = mt.MultitaskNetwork.from_patterns(xi)
    s = torch.from_numpy(np.where(np.random.default_rng(seed).random((B, N)) < 0.5, -1.0, 1.0))
    torch.testing.assert_close(net.field(s), s @ net.couplings().T)
    torch.testing.assert_close(mt.mattis(xi, s), s @ xi.T / N)


def test_hopfield_limit_single_pattern_is_retrieved_exactly():
    xi = mt.diluted_patterns(1, 500, 0.0, seed=5)
    net = mt.MultitaskNetwork.from_patterns(xi)
    cue = _flip(xi[0], 150, seed=6)  # 30 % of the bits wrong
    assert float(mt.mattis(xi, cue)[0]) == pytest.approx(0.4)
    final, sweeps, m = net.run(cue, T=0.0, patterns=xi)
    assert float(m[0]) == 1.0 and torch.equal(final, xi[0]) and sweeps <= 3
    eta = mt.make_examples(xi, 1, 1.0)
    for mode in mt.MODES:  # the same through the example protocols
        _, _, m = mt.MultitaskNetwork.from_examples(eta, 1.0, mode).run(cue, patterns=xi)
        assert float(m[0]) == 1.0
    assert mt.mean_field(0.0, 1, 0.0)["m"][0] == pytest.approx(1.0)


def test_curie_weiss_limit_of_the_theory_and_high_temperature():
    for T in (0.5, 0.8):  # one undiluted pattern: m = tanh(m / T)
        m = mt.mean_field(0.0, 1, T, init=[1.0])["m"][0]
        assert m == pytest.approx(math.tanh(m / T), abs=1e-8) and m > 0.5
    assert abs(mt.mean_field(0.0, 1, 1.2, init=[1.0])["m"][0]) < 1e-3  # above T_c = 1
    xi = mt.diluted_patterns(1, 800, 0.0, seed=7)
    _, _, m = mt.MultitaskNetwork.from_patterns(xi).run(xi[0], T=2.0, sweeps=20, patterns=xi, average_last=10)
    assert abs(float(m[0])) < 0.1  # paramagnet: the pattern is lost


def test_hierarchical_state_theory():
    np.testing.assert_allclose(mt.hierarchical_magnetizations(0.3, 4), [0.7, 0.21, 0.063, 0.0189])
    assert mt.hierarchical_threshold(2) == 1.0
    assert mt.hierarchical_threshold(3) == pytest.approx((math.sqrt(5) - 1) / 2, abs=1e-12)
    ths = [mt.hierarchical_threshold(P) for P in range(3, 12)]
    assert all(a > b for a, b in zip(ths, ths[1:])) and ths[-1] == pytest.approx(0.5, abs=1e-3)
    for d, P in ((0.2, 3), (0.4, 4), (0.6, 3)):  # below the threshold the T = 0 mean field is the power law
        np.testing.assert_allclose(mt.mean_field(d, P)["m"], mt.hierarchical_magnetizations(d, P), atol=1e-12)
    above = mt.mean_field(0.7, 4)["m"]  # above it the amplitudes compress
    hier = mt.hierarchical_magnetizations(0.7, 4)
    assert above[0] < hier[0] - 0.02 and above[-1] > hier[-1] + 0.02


def test_hierarchical_state_simulated_at_low_load():
    d, P, N = 0.3, 3, 3000
    res = mt.dilution_experiment([d], P, N, n_seeds=2, n_states=2, sweeps=40, seed=1)
    m = res["m"].mean(0)[0]
    # sampling error of one m is ≈ sqrt((1 − d)/N) ≈ 0.015; the smallest ones also carry the |·| of sorting
    np.testing.assert_allclose(m, mt.hierarchical_magnetizations(d, P), atol=0.03)
    assert m[0] == pytest.approx(1 - d, abs=0.01) and m[1] > 0.15 > 0.1 > m[2] > 0.03


def test_parallel_regime_with_fast_noise():
    th = mt.mean_field(0.8, 3, 0.1)["m"]
    assert mt.regime(th) == "parallel" and np.ptp(th) < 1e-6 and th[0] > 0.1
    assert mt.regime(mt.mean_field(0.1, 3, 0.3)["m"]) == "pure"
    assert mt.regime(mt.mean_field(0.9, 3, 0.5)["m"]) == "paramagnetic"
    res = mt.dilution_experiment([0.8], 3, 2500, T=0.1, n_seeds=1, n_states=2, sweeps=40, seed=2)
    assert res["m"].mean() == pytest.approx(th.mean(), abs=0.03)


def test_regime_names():
    assert mt.regime([0.001, 0.0]) == "paramagnetic"
    assert mt.regime([0.7, 0.0, 0.01]) == "pure"
    assert mt.regime([0.7, 0.21, 0.06]) == "hierarchical"
    assert mt.regime([0.2, 0.2, 0.199]) == "parallel"
    assert mt.regime([0.5]) == "parallel"


def test_examples_theory_closed_form_and_protocols_agree():
    # one pattern at T = 0: m = (1 − d)(P(χ̄ > 0) − P(χ̄ < 0)), χ̄ the mean of M signs of mean r
    d, r, M = 0.2, 0.3, 7
    p = [math.comb(M, k) * ((1 + r) / 2) ** k * ((1 - r) / 2) ** (M - k) for k in range(M + 1)]
    expected = (1 - d) * (sum(p[k] for k in range(M + 1) if 2 * k > M) - sum(p[k] for k in range(M + 1) if 2 * k < M))
    assert mt.mean_field(d, 1, 0.0, r, M)["m"][0] == pytest.approx(expected, abs=1e-12)
    res = mt.learning_experiment([1, 30], r=0.4, d=0.3, P=2, N=2500, n_seeds=2, sweeps=30, seed=3)
    sup, uns = res["supervised"].mean(0), res["unsupervised"].mean(0)
    np.testing.assert_allclose(sup[0], uns[0], atol=1e-12)  # M = 1: identical couplings
    np.testing.assert_allclose(sup[1], uns[1], atol=0.03)  # the teacher does not matter at low storage
    np.testing.assert_allclose(sup[1], res["theory"][1], atol=0.04)
    assert sup[1, 0] > sup[0, 0] + 0.3  # 30 examples teach the archetype that one example cannot


def test_learning_threshold():
    assert mt.learning_threshold([1, 10, 100], [0.1, 0.5, 0.9], 0.7) == pytest.approx(math.sqrt(10) * 10, rel=1e-9)
    assert mt.learning_threshold([1, 10], [0.8, 0.9], 0.5) == 1.0
    assert mt.learning_threshold([1, 10], [0.1, 0.2], 0.5) == math.inf
    with pytest.raises(ValueError, match="increasing"):
        mt.learning_threshold([10, 1], [0.1, 0.2], 0.5)


def test_annealing_and_determinism():
    xi = mt.diluted_patterns(3, 400, 0.3, seed=8)
    net = mt.MultitaskNetwork.from_patterns(xi)
    cue = mt.cue_state(xi, 0, 2, seed=9)
    assert torch.equal(cue[:, xi[0] != 0], xi[0, xi[0] != 0].expand(2, -1))
    a = net.run(cue, T=0.0, sweeps=20, seed=10, T_start=0.3, patterns=xi)
    b = net.run(cue, T=0.0, sweeps=20, seed=10, T_start=0.3, patterns=xi)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] >= 10  # cooling takes half the sweeps before it may stop
    fig = mt.dilution_figure([mt.dilution_experiment([0.2, 0.6], P, 200, n_seeds=1, sweeps=6) for P in (2, 3)])
    assert len(fig.layout.sliders[0].steps) == 2 and len(fig.data) == 2 * 2 + 2 * 3 + 1


def test_bad_input():
    xi = mt.diluted_patterns(2, 10, 0.5)
    net = mt.MultitaskNetwork.from_patterns(xi)
    for d in (1.0, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="d \\(dilution"):
            mt.diluted_patterns(2, 10, d)
    with pytest.raises(ValueError, match="r \\(example quality"):
        mt.make_examples(xi, 3, 0.0)
    with pytest.raises(ValueError, match="M must be an integer >= 1"):
        mt.make_examples(xi, 0, 0.5)
    with pytest.raises(ValueError, match="only -1, 0 and \\+1"):
        mt.MultitaskNetwork.from_patterns(torch.full((2, 5), 2.0))
    with pytest.raises(ValueError, match="2-D"):
        mt.MultitaskNetwork.from_patterns(torch.ones(5))
    with pytest.raises(ValueError, match="3-D"):
        mt.MultitaskNetwork.from_examples(xi, 0.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        mt.MultitaskNetwork.from_examples(xi[:, None], 0.5, "teacher")
    with pytest.raises(ValueError, match="N = 10"):
        net.field(torch.ones(11))
    with pytest.raises(ValueError, match="only \\+1 and -1"):
        net.run(torch.zeros(10))
    with pytest.raises(ValueError, match="T \\(temperature\\)"):
        net.run(torch.ones(10), T=-1.0)
    with pytest.raises(ValueError, match="T_start must be >= T"):
        net.run(torch.ones(10), T=0.5, T_start=0.1)
    with pytest.raises(ValueError, match="patterns must have N = 10"):
        net.run(torch.ones(10), patterns=torch.ones(2, 9))
    with pytest.raises(ValueError, match="index must be in 0..1"):
        mt.cue_state(xi, 2)
    with pytest.raises(ValueError, match="init must have shape"):
        mt.mean_field(0.3, 3, init=[1.0, 0.0])
    with pytest.raises(ValueError, match="ds must be"):
        mt.dilution_experiment([0.2, 1.0], 2, 10)
    with pytest.raises(ValueError, match="anneal must be"):
        mt.dilution_experiment([0.2], 2, 10, anneal=-1)
    with pytest.raises(ValueError, match="modes must be drawn"):
        mt.learning_experiment([1], 0.5, 0.2, 2, 10, modes=("teacher",))
    with pytest.raises(ValueError, match="m must be a non-empty"):
        mt.regime([])
