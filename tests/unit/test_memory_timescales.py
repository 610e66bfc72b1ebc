"""Single-neuron vs network timescales: task data, the leaky RNN, the timescale estimator, curricula, ablation."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.memory.timescales import (
    LeakyRNN,
    ablate_taus,
    autocorrelation,
    dms_data,
    make_data,
    network_timescale,
    parity_data,
    timescale_from_autocorrelation,
    train_curriculum,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------
# Data


@pytest.mark.parametrize("Ns", [[1], [2, 3, 5]])
def test_parity_targets_are_the_brute_force_parity(Ns):
    x, y, m = parity_data(17, Ns, 6, seed=3)
    assert x.shape == (6, 17, 1) and y.shape == m.shape == (6, 17, len(Ns)) and m.dtype == torch.bool
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    bits = x[..., 0].long().tolist()
    for b in range(6):
        for t in range(17):
            for k, N in enumerate(Ns):
                assert bool(m[b, t, k]) == (t >= N - 1)
                want = sum(bits[b][t - N + 1: t + 1]) % 2 if t >= N - 1 else 0
                assert y[b, t, k].item() == want


@pytest.mark.parametrize("Ns", [[1], [2, 4, 7]])
def test_dms_targets_are_the_brute_force_match(Ns):
    x, y, m = dms_data(15, Ns, 5, seed=4)
    bits = x[..., 0].long().tolist()
    for b in range(5):
        for t in range(15):
            for k, N in enumerate(Ns):
                assert bool(m[b, t, k]) == (t >= N)
                want = int(bits[b][t] == bits[b][t - N]) if t >= N else 0
                assert y[b, t, k].item() == want


def test_data_is_seeded_and_balanced():
    a, b = parity_data(50, 3, 8, seed=1), parity_data(50, 3, 8, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], parity_data(50, 3, 8, seed=2)[0])
    x, y, m = dms_data(200, 5, 64, seed=0)
    assert 0.45 < y[m].mean().item() < 0.55 and 0.45 < x.mean().item() < 0.55


@pytest.mark.parametrize("bad", [0, -1, [2, 0], [], 1.5, True])
def test_bad_N_raises(bad):
    with pytest.raises(ValueError):
        parity_data(10, bad, 2)
    with pytest.raises(ValueError):
        dms_data(10, bad, 2)


def test_unknown_task_or_mode_raises():
    with pytest.raises(ValueError, match="task"):
        make_data("copy", 10, 2, 2)
    with pytest.raises(ValueError, match="task"):
        train_curriculum("copy", "single", N_max=3)
    with pytest.raises(ValueError, match="mode"):
        train_curriculum("parity", "both", N_max=3)
    with pytest.raises(ValueError, match="N_max"):
        train_curriculum("parity", "single", N_max=1)


# ---------------------------------------------------------------------------------------------------------
# The leaky RNN


def test_shapes_and_taus_at_least_one():
    torch.manual_seed(0)
    model = LeakyRNN(n_hidden=16, n_heads=3, tau_init=2.5)
    logits, H = model(torch.rand(4, 9, 1), return_hidden=True)
    assert logits.shape == (4, 9, 3) and H.shape == (4, 9, 16)
    torch.testing.assert_close(model.taus(), torch.full((16,), 2.5))
    with torch.no_grad():
        model.raw_tau.copy_(torch.linspace(-50, 50, 16))
    assert (model.taus() >= 1).all()
    assert (LeakyRNN(8).taus() >= 1).all() and LeakyRNN(8).taus().requires_grad
    assert not LeakyRNN(8, learn_tau=False).taus().requires_grad
    with pytest.raises(ValueError):
        LeakyRNN(8, tau_init=0.5)
    with pytest.raises(ValueError):
        LeakyRNN(8, nonlinearity="gelu")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_leaky_update_and_tau_one_is_non_leaky(nonlinearity):
    torch.manual_seed(1)
    model = LeakyRNN(n_hidden=12, nonlinearity=nonlinearity)
    f = torch.tanh if nonlinearity == "tanh" else torch.relu
    x = torch.rand(3, 7, 1)
    W, U, b = model.rec.weight, model.inp.weight, model.inp.bias
    for tau in (torch.linspace(1.2, 6.0, 12), 1.0):
        model.set_taus(tau)
        tau_t = torch.as_tensor(tau).expand(12)
        if isinstance(tau, float):
            assert torch.equal(model.taus(), torch.ones(12))
        _, H = model(x, return_hidden=True)
        h = torch.zeros(3, 12)
        for t in range(7):
            pre = f(h @ W.T + x[:, t] @ U.T + b)
            h = (1 - 1 / tau_t) * h + pre / tau_t
            torch.testing.assert_close(H[:, t], h)
            if isinstance(tau, float):  # τ = 1: h_t = f(W h_{t−1} + U x_t + b) exactly
                prev = H[:, t - 1] if t else torch.zeros(3, 12)
                torch.testing.assert_close(H[:, t], f(prev @ W.T + x[:, t] @ U.T + b), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Timescales


@pytest.mark.parametrize("tau", [2.0, 5.0, 12.0])
def test_timescale_estimator_recovers_ar1_decay(tau):
    g = torch.Generator().manual_seed(0)
    phi, T = math.exp(-1 / tau), 20_000
    eps = torch.randn(4, T, 3, generator=g, dtype=torch.float64)
    x = torch.zeros_like(eps)
    for t in range(1, T):
        x[:, t] = phi * x[:, t - 1] + eps[:, t]
    ac = autocorrelation(x, 40)
    assert ac[0].item() == pytest.approx(1.0)
    assert timescale_from_autocorrelation(ac, "fit") == pytest.approx(tau, rel=0.1)
    assert timescale_from_autocorrelation(ac, "1/e") == pytest.approx(tau, rel=0.1)
    assert autocorrelation(x, 40, per_channel=True).shape == (41, 3)


def test_timescale_edge_cases():
    assert timescale_from_autocorrelation(torch.tensor([1.0, 0.9, 0.8]), "1/e") == 2.0  # never crosses: ≥ L
    assert timescale_from_autocorrelation(torch.tensor([1.0, 0.0, 0.0]), "fit") == pytest.approx(1 - 1 / math.e)
    with pytest.raises(ValueError):
        timescale_from_autocorrelation(torch.ones(3), "median")
    with pytest.raises(ValueError):
        autocorrelation(torch.ones(10), 3)  # constant
    with pytest.raises(ValueError):
        autocorrelation(torch.randn(10), 10)  # lag ≥ T


def test_network_timescale_grows_with_tau():
    torch.manual_seed(0)
    model = LeakyRNN(n_hidden=16)
    with torch.no_grad():
        model.rec.weight.zero_()
    model.set_taus(1.0)
    short = network_timescale(model, n_steps=200, batch=8)
    model.set_taus(8.0)  # with W = 0 each unit low-passes the input: AR(1) with φ = 1 − 1/8
    long = network_timescale(model, n_steps=400, batch=8)
    assert short < 1.0 and long == pytest.approx(-1 / math.log(1 - 1 / 8), rel=0.25)
    assert network_timescale(model, n_steps=200, batch=8, reduce="median") > 3


# ---------------------------------------------------------------------------------------------------------
# Curricula and ablation


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_short_curriculum_reaches_N3_on_parity(mode):
    r = train_curriculum("parity", mode, N_max=4, steps_per_level=400, seconds=8, n_hidden=32, seed=0)
    assert r["N_reached"] >= 3, r["levels"]
    assert r["seconds"] < 12
    lv = r["levels"][0]
    assert lv["N"] == 2 and lv["passed"] and lv["acc"][2] > 0.9 and lv["tau_max"] >= lv["tau_median"] >= 1
    assert r["taus"].shape == (32,) and (r["taus"] >= 1).all() and math.isfinite(r["tau_net"])
    model = r["model"]
    assert model.head_Ns == ([r["N_reached"]] if mode == "single" else list(range(2, r["N_reached"] + 1)))
    a = ablate_taus(model)
    assert set(a["acc"]) == set(model.head_Ns) and min(a["acc"].values()) > 0.85
    assert a["drop_tau1"] == pytest.approx(sum(a["acc"][n] - a["acc_tau1"][n] for n in a["Ns"]) / len(a["Ns"]))
    assert ablate_taus(model, w_noise=0.0)["drop_noise"] == 0.0
    torch.testing.assert_close(model.taus(), r["taus"])  # ablation copies, never edits


def test_ablate_taus_needs_a_task_and_Ns():
    model = LeakyRNN(8)
    with pytest.raises(ValueError, match="task"):
        ablate_taus(model, Ns=[2])
    with pytest.raises(ValueError, match="N"):
        ablate_taus(model, task="dms")
