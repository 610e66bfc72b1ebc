"""labkit.snn.network: spike timing against closed forms (first spike and inter-spike interval under a constant
current, refractory clamp), synaptic delays exact to the step (the whole voltage trace against the closed form, CSR and
dense, delay 0), STDP through the network against hand-computed pairs (fused and separate paths), every backend
giving the same spike trains and weights on a mixed network, monitors and figures, bad input, and a 10k-neuron /
1M-synapse network running 100 steps with Numba."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from labkit.kernels import available_backends
from labkit.snn import LIFParams, Network, STDPParams
from labkit.snn.lif import first_spike_time, lif_closed_form

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
QUIET = LIFParams(tau_m=10.0, tau_s=2.0, R=1.0, v_rest=-65.0, v_reset=-65.0, v_th=1e6, t_ref=0.0)  # never fires


@pytest.mark.parametrize("t_ref", [0.0, 1.5, 4.0])
def test_constant_current_spike_times(t_ref):
    """From v_reset under a constant current the first spike is at the first grid point past the closed-form time t*,
    and then every n_ref + ceil(t*/dt) steps; during the refractory steps v is exactly v_reset."""
    p = LIFParams(tau_m=10.0, tau_s=2.0, R=2.0, v_rest=-65.0, v_reset=-70.0, v_th=-50.0, t_ref=t_ref)
    dt = 0.5
    net = Network(dt=dt, backend="torch")
    pop = net.add_lif("n", 1, p, v0=-70.0, i_ext=9.0)
    net.monitor_voltage(pop)
    net.run(120.0)
    t_star = first_spike_time(p, 9.0)
    m = math.ceil(t_star / dt)
    assert abs(t_star / dt - round(t_star / dt)) > 1e-3  # not on the grid: no rounding ambiguity
    n_ref = round(t_ref / dt)
    times, ids = net.spikes(pop)
    assert (ids == 0).all() and len(times) >= 4
    np.testing.assert_allclose(times, dt * (m + (n_ref + m) * np.arange(len(times))), rtol=0, atol=1e-12)
    vt, V, _ = net.voltages(pop)
    steps = np.rint(vt / dt).astype(int)
    spike_steps = set(np.rint(times / dt).astype(int))
    for s in spike_steps:
        for k in range(s, s + n_ref + 1):
            if k in steps:
                assert V[k - 1, 0] == -70.0
    assert (V[:, 0] < -50.0).all()


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_delays_exact_voltage_trace(dense):
    """A source spike at t = 5 through synapses with delays 0, 1, 3, 6 steps (dt = 0.5): each target's voltage equals
    the closed form with a current jump at 5 + d·dt, at every step."""
    dt = 0.5
    delays = [0, 1, 3, 6]
    w = [2.0, 1.5, -1.0, 3.0]
    net = Network(dt=dt, backend="torch")
    src = net.add_spike_source("src", 1, spike_times=[[5.0]])
    pop = net.add_lif("targets", 4, QUIET)
    if dense:  # one row of weights, each target with its own delay as a (1, 4) delay matrix
        net.connect(src, pop, torch.tensor([w], dtype=torch.float64), delay=torch.tensor([delays]))
    else:
        net.connect(src, pop, (torch.tensor([0, 4]), torch.arange(4), torch.tensor(w)), delay=torch.tensor(delays))
    net.monitor_voltage(pop)
    net.run(15.0)
    t, V, _ = net.voltages(pop)
    assert t[0] == dt and len(t) == 30
    for j in range(4):
        want = lif_closed_form(t, QUIET, jumps=[(5.0 + delays[j] * dt, w[j])])
        np.testing.assert_allclose(V[:, j], want, atol=1e-12, rtol=0)
        first = np.flatnonzero(V[:, j] != QUIET.v_rest)[0]
        assert t[first] == 5.0 + (delays[j] + 1) * dt  # moves in the step after the jump


def pair_network(backend, t_pre, t_post, fused: bool):
    """Pre (a source, or a LIF driven to spike at t_pre) → post (a LIF driven to spike at t_post) through one plastic
    synapse of weight 0.3 that is too weak to matter; the drivers spike one step earlier with a huge weight."""
    dt = 1.0
    s = STDPParams(tau_plus=15.0, tau_minus=25.0, A_plus=0.05, A_minus=0.06, w_min=0.0, w_max=1.0)
    drive = LIFParams(tau_m=10.0, tau_s=0.1, v_th=-50.0, t_ref=0.0)  # the drive decays within a step
    net = Network(dt=dt, backend=backend)
    driver_post = net.add_spike_source("drive_post", 1, spike_times=[[t - dt for t in t_post]])
    if fused:
        pre = net.add_spike_source("pre", 1, spike_times=[list(t_pre)])
        post = net.add_lif("post", 1, drive)
    else:  # the pre population is stepped after the post one: the plasticity runs as a separate stdp_step
        post = net.add_lif("post", 1, drive)
        driver_pre = net.add_spike_source("drive_pre", 1, spike_times=[[t - dt for t in t_pre]])
        pre = net.add_lif("pre", 1, drive)
        net.connect(driver_pre, pre, [[1e4]], delay=0)
    net.connect(driver_post, post, [[1e4]], delay=0)
    g = net.connect(pre, post, [[0.3]], delay=1, stdp=s)
    net.run(60.0)
    assert list(net.spikes(post)[0]) == list(t_post)
    assert list(net.spikes(pre)[0]) == list(t_pre)
    return float(g.W[0, 0]), s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
def test_stdp_pairs_through_the_network(backend, fused):
    w, s = pair_network(backend, [10.0], [17.0], fused)
    assert w == pytest.approx(0.3 + s.A_plus * math.exp(-7 / s.tau_plus), abs=1e-14)
    w, s = pair_network(backend, [17.0], [10.0], fused)
    assert w == pytest.approx(0.3 - s.A_minus * math.exp(-7 / s.tau_minus), abs=1e-14)
    w, s = pair_network(backend, [20.0], [20.0], fused)
    assert w == pytest.approx(0.3 + s.A_plus, abs=1e-14)
    w, s = pair_network(backend, [5.0, 30.0], [12.0, 33.0], fused)
    want = 0.3 + s.A_plus * math.exp(-7 / 15) - s.A_minus * math.exp(-18 / 25) + s.A_plus * (
        math.exp(-28 / 15) + math.exp(-3 / 15))
    assert w == pytest.approx(want, abs=1e-14)


def mixed_network(backend, dtype=torch.float64, T=50.0):
    g = torch.Generator().manual_seed(0)
    net = Network(dt=1.0, backend=backend, dtype=dtype)
    times = (torch.rand(60, generator=g) * 45 + 1).tolist()
    src = net.add_spike_source("input", 12, spike_times=(times, torch.randint(0, 12, (60,), generator=g).numpy()))
    a = net.add_lif("A", 40, LIFParams(tau_m=8.0, tau_s=2.0, t_ref=2.0), i_ext=14.0 + 2 * torch.rand(40, generator=g))
    b = net.add_lif("B", 30, LIFParams(tau_m=12.0, tau_s=12.0, t_ref=1.0))
    net.connect(src, a, torch.rand(12, 40, generator=g, dtype=torch.float64) * 6, delay=1,
                stdp=STDPParams(A_plus=0.3, A_minus=0.35, w_max=6.0))
    mask = torch.rand(40, 40, generator=g) < 0.15
    Wr = (torch.randn(40, 40, generator=g, dtype=torch.float64) * 3) * mask
    E = int(mask.sum())
    indptr = torch.zeros(41, dtype=torch.int64)
    indptr[1:] = torch.cumsum(mask.sum(1), 0)
    net.connect(a, a, (indptr, torch.nonzero(mask)[:, 1], Wr[mask]), delay=torch.randint(0, 4, (E,), generator=g))
    net.connect(a, b, torch.rand(40, 30, generator=g, dtype=torch.float64) * 2, delay=2)
    net.connect(b, a, torch.rand(30, 40, generator=g, dtype=torch.float64), delay=torch.randint(1, 3, (30, 40),
                                                                                                 generator=g),
                stdp=STDPParams(A_plus=0.05, A_minus=0.05, w_min=0.0, w_max=2.0))
    net.monitor_voltage(a, [0, 5, 39])
    net.run(T)
    return net


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_on_a_mixed_network(backend):
    """Sources, two LIF populations, CSR recurrence with per-synapse delays, dense feed-forward, a fused and a separate
    STDP group: spike trains, voltages and learned weights identical to the torch backend (float64)."""
    ref = mixed_network("torch")
    net = mixed_network(backend)
    for name in ("A", "B", "input"):
        for x, y in zip(ref.spikes(name), net.spikes(name)):
            np.testing.assert_array_equal(x, y)
    assert 50 < len(ref.spikes("A")[0]) and 10 < len(ref.spikes("B")[0])
    np.testing.assert_array_equal(ref.voltages("A")[1], net.voltages("A")[1])
    untrained = mixed_network("torch", T=0.0)
    for g_ref, g, g0 in zip(ref.groups, net.groups, untrained.groups):
        if g.stdp is not None:
            assert torch.equal(g_ref.W, g.W)
            assert not torch.equal(g.W, g0.W)  # it learned something


def test_float32_and_monitors_and_figures():
    net = mixed_network("torch", dtype=torch.float32)
    assert net.populations["A"].v.dtype == torch.float32 and net.t == 50.0 and net.step_count == 50
    times, ids = net.spikes("A")
    assert np.all(np.diff(times) >= 0) and ids.dtype == np.int64
    counts = net.spike_counts("A")
    assert counts.shape == (40,) and counts.sum() == len(ids)
    M = net.spike_matrix("A")
    assert M.shape == (51, 40) and M.sum() == len(ids) and not M[0].any()
    fig = net.raster_figure(title="t")
    assert isinstance(fig, go.Figure) and len(fig.data[0].x) == sum(len(net.spikes(p)[0]) for p in net.populations)
    fig = net.voltage_figure("A")
    assert len(fig.data) == 4  # three neurons and the threshold line
    net.run(5.0, show_progress=True)  # continues where it stopped; the bar is silenced by LABKIT_PROGRESS=0
    assert net.step_count == 55 and net.voltages("A")[1].shape == (55, 3)


def test_bad_input():
    net = Network(dt=1.0, backend="torch")
    src = net.add_spike_source("s", 2, spike_times=[[1.0], [2.0]])
    pop = net.add_lif("p", 3)
    with pytest.raises(ValueError, match="dt must be a positive finite number"):
        Network(dt=0.0)
    with pytest.raises(ValueError, match="a population named 'p' exists already"):
        net.add_lif("p", 2)
    with pytest.raises(ValueError, match=r"t_ref must be a whole number of steps dt = 1.0"):
        net.add_lif("q", 2, LIFParams(t_ref=1.5))
    with pytest.raises(ValueError, match=r"spike_times must be >= dt = 1.0"):
        net.add_spike_source("s0", 1, spike_times=[[0.0]])
    with pytest.raises(ValueError, match=r"spike_times neurons must lie in 0..n-1 = 0..1"):
        net.add_spike_source("s1", 2, spike_times=([3.0], [2]))
    with pytest.raises(ValueError, match="one sequence per neuron"):
        net.add_spike_source("s2", 2, spike_times=[[3.0]])
    with pytest.raises(ValueError, match=r"dense weights must have shape \(pre.n, post.n\) = \(2, 3\), got \(3, 2\)"):
        net.connect(src, pop, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"indices must lie in 0..N-1 = 0..2"):
        net.connect(src, pop, (torch.tensor([0, 1, 2]), torch.tensor([0, 3]), torch.ones(2)))
    with pytest.raises(ValueError, match="stdp needs dense"):
        net.connect(src, pop, (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.ones(2)), stdp=STDPParams())
    with pytest.raises(ValueError, match="post must be a LIF population"):
        net.connect(pop, src, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="delay must be >= 0 steps, got -1"):
        net.connect(src, pop, torch.zeros(2, 3), delay=-1)
    with pytest.raises(TypeError, match="steps, not ms"):
        net.connect(src, pop, torch.zeros(2, 3), delay=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"delay must be an int or have shape \(2, 3\)"):
        net.connect(src, pop, torch.zeros(2, 3), delay=torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="weights must be finite"):
        net.connect(src, pop, torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="no population named 'zz'"):
        net.connect("zz", pop, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"neurons must lie in 0..n-1 = 0..2"):
        net.monitor_voltage(pop, [3])
    with pytest.raises(ValueError, match="voltages exist only for LIF populations"):
        net.monitor_voltage(src)
    with pytest.raises(ValueError, match=r"i_ext must be a number or have shape \(n,\) = \(2,\)"):
        net.add_lif("r", 2, i_ext=[1.0, 2.0, 3.0])
    net.connect(src, pop, torch.ones(2, 3))
    with pytest.raises(ValueError, match="T must be a finite number of ms >= 0"):
        net.run(-1.0)
    net.run(3.0)
    with pytest.raises(RuntimeError, match="before the first run"):
        net.add_lif("late", 1)
    with pytest.raises(RuntimeError, match="before the first run"):
        net.connect(src, pop, torch.ones(2, 3))
    with pytest.raises(ValueError, match="no voltages recorded"):
        net.voltages(pop)


@pytest.mark.skipif("numba" not in CPU_BACKENDS, reason="numba is not available here")
def test_ten_thousand_neurons_one_million_synapses_numba():
    """A 10k-neuron network with 1M random CSR synapses (delays 1..5) runs 100 steps with Numba (no timing assert)."""
    N, K = 10_000, 100
    g = torch.Generator().manual_seed(0)
    net = Network(dt=1.0, backend="numba")
    pop = net.add_lif("exc", N, LIFParams(tau_m=10.0, tau_s=2.0, t_ref=2.0),
                      v0=-65.0 + 15 * torch.rand(N, generator=g), i_ext=12.0 + 6 * torch.rand(N, generator=g))
    indptr = torch.arange(N + 1, dtype=torch.int64) * K
    indices = torch.randint(0, N, (N * K,), generator=g)
    weights = torch.randn(N * K, generator=g, dtype=torch.float64) * 0.5
    net.connect(pop, pop, (indptr, indices, weights), delay=torch.randint(1, 6, (N * K,), generator=g))
    net.run(100.0)
    counts = net.spike_counts(pop)
    assert net.step_count == 100 and 0 < counts.sum() and (counts <= 100 // 3 + 1).all()  # refractory: ≤ 1 per 3


def _random_network(backend: str, seed: int, dtype: torch.dtype, stdp: bool) -> Network:
    """A small random network touching every feature the Numba fast path re-implements: several sources (with a
    duplicate spike time), LIF populations with and without i_ext / refractory / recording / voltage monitors,
    dense and CSR synapses with scalar or per-synapse delays (0 included) and one plastic group."""
    rng = np.random.default_rng(seed)
    net = Network(dt=1.0 if seed % 2 else 0.5, backend=backend, dtype=dtype)
    pops = []
    for s in range(rng.integers(1, 3)):
        n = int(rng.integers(1, 8))
        times = [list(rng.choice(np.arange(1, 40), size=rng.integers(0, 6)) * net.dt) for _ in range(n)]
        if times[0]:
            times[0] = times[0] + [times[0][0]]
        pops.append(net.add_spike_source(f"s{s}", n, times, record_spikes=bool(rng.integers(0, 2)) or s == 0))
    for k in range(rng.integers(1, 4)):
        n = int(rng.integers(1, 30))
        p = LIFParams(tau_m=float(rng.uniform(5, 20)), tau_s=float(rng.uniform(1, 8)), v_th=-55.0,
                      t_ref=float(net.dt * rng.integers(0, 4)))
        i_ext = rng.uniform(0, 12, n) if rng.integers(0, 2) else None
        pop = net.add_lif(f"l{k}", n, p, v0=rng.uniform(-70, -56, n), i_ext=i_ext,
                          record_spikes=bool(rng.integers(0, 3)))
        if rng.integers(0, 2):
            net.monitor_voltage(pop, rng.choice(n, size=min(n, 3), replace=False))
        pops.append(pop)
    lifs = [p for p in pops if p.kind == "lif"]
    for k in range(rng.integers(1, 6)):
        pre, post = pops[rng.integers(0, len(pops))], lifs[rng.integers(0, len(lifs))]
        if rng.integers(0, 2):
            W = rng.normal(2, 3, (pre.n, post.n)) * (rng.random((pre.n, post.n)) < 0.5)
            d = int(rng.integers(0, 4)) if rng.integers(0, 2) else rng.integers(0, 4, (pre.n, post.n))
            net.connect(pre, post, W, delay=d, name=f"g{k}")
        else:
            indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 6, pre.n))])
            idx, w = rng.integers(0, post.n, indptr[-1]), rng.normal(2, 3, indptr[-1])
            d = int(rng.integers(0, 4)) if rng.integers(0, 2) else rng.integers(0, 4, indptr[-1])
            net.connect(pre, post, (indptr, idx, w), delay=d, name=f"g{k}")
    if stdp:
        net.connect(pops[0], lifs[0], rng.uniform(0, 1, (pops[0].n, lifs[0].n)), delay=1, stdp=STDPParams(),
                    name="plastic")
    return net


@pytest.mark.parametrize("seed", range(12))
def test_numba_fast_path_is_bit_identical_to_the_torch_loop(seed):
    dtype = torch.float64 if seed % 3 else torch.float32
    outs = []
    for backend in ("torch", "numba"):
        net = _random_network(backend, seed, dtype, stdp=seed % 4 == 0)
        net.run(23.0, show_progress=False)
        net.run(20.0, show_progress=False)          # a continued run reuses the cached packed synapses
        out = {}
        for name, p in net.populations.items():
            out[name + " spikes"] = net.spikes(p)
            if p.kind == "lif":
                out[name + " state"] = (p.v.numpy().copy(), p.I.numpy().copy(), p.refrac.numpy().copy(),
                                        p.buffer.numpy().copy())
                if p.voltage_idx is not None:
                    out[name + " voltages"] = net.voltages(p)[:2]
        outs.append(out)
    for key, a in outs[0].items():
        for x, y in zip(a, outs[1][key]):
            np.testing.assert_array_equal(x, y, err_msg=key)
