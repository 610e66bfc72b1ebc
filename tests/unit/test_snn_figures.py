"""labkit.snn.figures: the exact step equals the closed form at the CA3 paper's dt = 1 ms, τ_s = 0.3 ms while Euler
diverges there and converges at first order below τ_s; measured STDP pairs equal the window (and clip at the
bounds); correlated inputs have the rates and the sharing they promise; the STDP circuit selects its correlated
inputs and gives identical rasters in every CPU backend; the event fraction counts hand cases; bad input fails."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.kernels._dispatch import available_backends
from labkit.snn import LIFParams, Network, STDPParams, lif_closed_form, stdp_window
from labkit.snn import figures as F

CA3 = LIFParams.from_pynn(cm=0.27, tau_m=3.0, tau_syn=0.3, v_rest=-60.0, v_reset=-60.0, v_thresh=-57.0,
                          tau_refrac=1.0)
JUMPS = [(2.0, 2.0), (8.0, 2.0), (9.0, 2.0)]


def test_euler_coefficients_match_the_guarded_ones_and_go_unstable():
    p = LIFParams(tau_m=10.0, tau_s=5.0, R=2.0, t_ref=2.0)
    assert F.euler_coefficients(p, 0.5) == p.coefficients(0.5, method="euler")
    c = F.euler_coefficients(CA3, 1.0)  # the guarded version refuses this
    with pytest.raises(ValueError, match="forward Euler"):
        CA3.coefficients(1.0, method="euler")
    assert c.decay_syn == pytest.approx(1 - 1 / 0.3) and abs(c.decay_syn) > 1
    assert c.gain_syn == pytest.approx(CA3.R / 3.0)


def test_exact_trace_is_the_closed_form_at_the_ca3_step():
    t, v = F.neuron_trace(CA3, 1.0, 20.0, JUMPS)
    assert t.tolist() == list(range(21))
    np.testing.assert_allclose(v, lif_closed_form(t, CA3, jumps=JUMPS), atol=1e-10, rtol=0)
    assert v[3] > CA3.v_rest + 1.0  # the first input (at 2 ms) shows at the next grid point
    # a constant current: the closed form again, with i_ext
    t, v = F.neuron_trace(CA3, 0.5, 10.0, i_ext=0.2)
    np.testing.assert_allclose(v, lif_closed_form(t, CA3, i_ext=0.2), atol=1e-10, rtol=0)


def test_euler_diverges_above_two_tau_s_and_is_first_order_below():
    _, v = F.neuron_trace(CA3, 1.0, 20.0, JUMPS, method="euler")
    assert abs(v[-1]) > 1e5  # the current's factor is −2.33 per step
    err = F.propagator_error(CA3, [0.04, 0.02, 0.01], 20.0, JUMPS)
    assert err["exact"].max() < 1e-10
    ratios = err["euler"][:-1] / err["euler"][1:]
    assert np.all((ratios > 1.7) & (ratios < 2.3))  # halving dt halves the error


def test_stdp_pairs_equal_the_window():
    p = STDPParams(tau_plus=20.0, tau_minus=15.0, A_plus=0.04, A_minus=0.05, w_min=0.0, w_max=1.0)
    d = np.arange(-50, 51, 5.0)
    measured = F.stdp_pair_changes(d, p)
    np.testing.assert_allclose(measured, stdp_window(d, p), atol=1e-14, rtol=0)
    assert F.stdp_pair_changes([5.0], p)[0] == pytest.approx(0.04 * math.exp(-5 / 20), abs=1e-15)  # by hand
    assert F.stdp_pair_changes([0.0], p)[0] == pytest.approx(0.04)  # same step: potentiation
    assert F.stdp_pair_changes([-3.0], p)[0] == pytest.approx(-0.05 * math.exp(-3 / 15))
    # at the upper bound potentiation is clipped away, depression is not
    top = F.stdp_pair_changes([2.0, -2.0], p, w0=1.0)
    assert top[0] == 0.0 and top[1] == pytest.approx(-0.05 * math.exp(-2 / 15))
    # the CA3 rule: A = w_max = 6 makes one pairing a switch
    ca3 = STDPParams(tau_plus=3.0, tau_minus=3.0, A_plus=6.0, A_minus=6.0, w_min=0.0, w_max=6.0)
    np.testing.assert_allclose(F.stdp_pair_changes([0.0, 1.0, -1.0], ca3, w0=0.0), [6.0, 6 * math.exp(-1 / 3), 0.0])
    if "numba" in available_backends("cpu"):
        np.testing.assert_array_equal(F.stdp_pair_changes(d, p, backend="numba"), measured)


def test_stdp_pairs_on_a_finer_grid():
    p = STDPParams()
    d = np.arange(-2.0, 2.01, 0.25)
    np.testing.assert_allclose(F.stdp_pair_changes(d, p, dt=0.25), stdp_window(d, p), atol=1e-14, rtol=0)


def test_correlated_trains_have_their_rate_and_share_spikes():
    T, rate = 20000.0, 20.0
    trains = F.correlated_spike_trains(40, 20, rate, T, c=0.25, seed=3)
    assert len(trains) == 40
    counts = np.array([t.size for t in trains])
    expected = rate * T / 1000  # 400 spikes; Poisson sd 20
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))
    for t in trains:
        assert t.min() >= 1.0 and t.max() <= T and np.all(np.diff(t) > 0) and np.allclose(t, np.round(t))
    shared = len(np.intersect1d(trains[0], trains[1])) / expected  # ≈ c within the group
    assert 0.15 < shared < 0.35
    independent = len(np.intersect1d(trains[30], trains[31])) / expected  # ≈ rate·dt = 0.02 by chance
    assert independent < 0.06
    again = F.correlated_spike_trains(40, 20, rate, T, c=0.25, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(trains, again, strict=True))


def test_stdp_circuit_selects_the_correlated_inputs():
    inputs = F.correlated_spike_trains(200, 50, 15.0, 2000.0, c=0.2, seed=0)
    net = F.stdp_demo_network(inputs, n_out=10, seed=0)
    assert [g.name for g in net.groups] == ["input->output", "output->output"]
    inh = net.groups[1]
    assert inh.indices.numel() == 90 and bool((inh.weights == -2.0).all())
    rows = torch.repeat_interleave(torch.arange(10), torch.diff(inh.indptr))
    assert not bool((rows == inh.indices).any())  # no self-inhibition
    W0 = net.groups[0].W.numpy().copy()
    assert abs(W0.mean() - 0.5) < 0.05 and W0.min() >= 0 and W0.max() <= 1
    net.run(2000.0, show_progress=False)
    W = net.groups[0].W.numpy()
    assert W[:50].mean() - W[50:].mean() > 0.1  # the correlated group wins
    assert 5.0 < net.spike_counts("output").mean() / 2.0 < 80.0  # a sane output rate (Hz)


def test_stdp_circuit_is_identical_in_every_cpu_backend():
    inputs = F.correlated_spike_trains(200, 50, 15.0, 300.0, c=0.2, seed=1)
    runs = {}
    for backend in [b for b in available_backends("cpu") if b != "triton"]:  # the interpreter: tests/kernels
        net = F.stdp_demo_network(inputs, n_out=10, backend=backend, seed=1)
        net.run(300.0, show_progress=False)
        runs[backend] = (net.spike_matrix("output"), net.groups[0].W.clone())
    ref_spikes, ref_W = runs["torch"]
    assert ref_spikes.sum() > 20
    for spikes, W in runs.values():
        assert np.array_equal(spikes, ref_spikes)
        torch.testing.assert_close(W, ref_W, atol=1e-12, rtol=0)


def test_event_fraction_counts_by_hand():
    net = Network(dt=1.0, backend="torch")
    src = net.add_spike_source("s", 2, [[3.0], [5.0, 7.0]])
    post = net.add_lif("p", 3, LIFParams(), i_ext=0.0)
    net.connect(src, post, weights=np.full((2, 3), 0.1))
    net.connect(src, post, weights=([0, 1, 3], [0, 1, 2], [0.1, 0.1, 0.1]), name="csr")
    net.run(10.0)
    # dense: 3 spikes × 3 targets of 10 × 6; CSR: 1 spike × 1 + 2 spikes × 2 of 10 × 3
    assert F.event_fraction(net) == pytest.approx((9 + 5) / (60 + 30))


@pytest.mark.parametrize("call, match", [
    (lambda: F.neuron_trace(CA3, 1.0, 20.0, [(2.5, 1.0)]), "multiples of dt"),
    (lambda: F.neuron_trace(CA3, 1.0, 20.0, [(20.0, 1.0)]), r"in \[0, T\)"),
    (lambda: F.neuron_trace(CA3, 1.0, 20.0, method="rk4"), "method must be"),
    (lambda: F.neuron_trace(CA3, 0.0, 20.0), "dt must be"),
    (lambda: F.propagator_error(CA3, [], 20.0), "at least one"),
    (lambda: F.stdp_pair_changes([1.5], STDPParams()), "multiples of dt"),
    (lambda: F.stdp_pair_changes([], STDPParams()), "non-empty"),
    (lambda: F.correlated_spike_trains(10, 11, 10.0, 100.0), "n_corr must be"),
    (lambda: F.correlated_spike_trains(0, 0, 10.0, 100.0), "n must be"),
    (lambda: F.correlated_spike_trains(10, 5, 10.0, 100.0, c=0.0), "c must be"),
    (lambda: F.correlated_spike_trains(10, 5, 500.0, 100.0, c=0.2), "below one spike per step"),
    (lambda: F.correlated_spike_trains(10, 5, -1.0, 100.0), "rate_hz must be"),
    (lambda: F.stdp_demo_network([[1.0]], n_out=0), "n_out must be"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
