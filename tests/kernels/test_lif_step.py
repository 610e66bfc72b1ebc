"""labkit.kernels.lif_step: every backend against the torch reference over many steps on random populations (float64
and float32, bit-for-bit: same spike trains, same states), with and without input, external current and STDP
(recurrent and feed-forward, M != N), edge sizes (0, 1, odd) and non-contiguous tensors; the membrane against the
closed-form solution of one neuron; refractory periods; STDP against hand-computed spike pairs; bad input.
Triton runs through its CPU interpreter."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.kernels import available_backends
from labkit.kernels.lif_step import lif_step, reference, stdp_step
from labkit.snn.lif import LIFParams, STDPParams, lif_closed_form

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
FAST = [b for b in ("numba", "triton") if b in CPU_BACKENDS]

PARAMS = LIFParams(tau_m=10.0, tau_s=3.0, R=1.0, v_rest=-65.0, v_reset=-70.0, v_th=-50.0, t_ref=2.0)
STDP = STDPParams(tau_plus=15.0, tau_minus=25.0, A_plus=0.05, A_minus=0.06, w_min=-0.5, w_max=1.0)


def make_state(N: int, M: int, dtype, seed: int, plastic: bool, recurrent: bool):
    g = torch.Generator().manual_seed(seed)
    st_ = dict(
        v=-70 + 22 * torch.rand(N, generator=g, dtype=torch.float64),
        I=2 * torch.rand(N, generator=g, dtype=torch.float64),
        refrac=torch.randint(0, 3, (N,), generator=g).to(torch.int32),
    )
    st_ = {k: (t.to(dtype) if t.is_floating_point() else t) for k, t in st_.items()}
    if plastic:
        M = N if recurrent else M
        st_["W"] = (torch.rand(M, N, generator=g, dtype=torch.float64) * 1.4 - 0.4).to(dtype)
        st_["x"] = torch.rand(M, generator=g, dtype=torch.float64).to(dtype)
        st_["y"] = torch.rand(N, generator=g, dtype=torch.float64).to(dtype)
    return st_


def simulate(backend, N, M, dtype, seed, steps, plastic, recurrent, with_ext, with_input=True):
    s = make_state(N, M, dtype, seed, plastic, recurrent)
    g = torch.Generator().manual_seed(seed + 1)
    c = PARAMS.coefficients(0.5)
    k = STDP.coefficients(0.5)
    i_ext = (10 + 8 * torch.rand(N, generator=g, dtype=torch.float64)).to(dtype) if with_ext else None
    trains = []
    for _ in range(steps):
        I_in = (6 * torch.rand(N, generator=g, dtype=torch.float64)).to(dtype) if with_input else None
        pre = None
        if plastic and not recurrent:
            pre = torch.rand(s["W"].shape[0], generator=g) < 0.3
        kw = dict(W=s["W"], x=s["x"], y=s["y"], pre_spiked=pre, stdp=k) if plastic else {}
        trains.append(lif_step(s["v"], s["I"], s["refrac"], I_in, c, i_ext, backend=backend, **kw).clone())
    return torch.stack(trains) if trains else torch.zeros(0, N, dtype=torch.bool), s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("N, M, plastic, recurrent, with_ext", [
    (37, 0, False, False, True), (1, 0, True, True, False), (0, 5, True, False, True), (45, 29, True, False, True),
    (64, 0, True, True, True), (33, 70, True, False, False)], ids=str)
def test_matches_reference_over_steps(backend, dtype, N, M, plastic, recurrent, with_ext):
    """50 steps: identical spike trains and identical final states (bit for bit) in every backend."""
    trains_ref, s_ref = simulate("torch", N, M, dtype, N + M, 50, plastic, recurrent, with_ext)
    trains, s = simulate(backend, N, M, dtype, N + M, 50, plastic, recurrent, with_ext)
    assert trains.dtype == torch.bool and trains.shape == (50, N)
    assert torch.equal(trains, trains_ref)
    if N > 10:
        assert 0 < int(trains.sum()) < trains.numel()  # the test exercises both spiking and silent neurons
    for key in s_ref:
        assert s[key].dtype == s_ref[key].dtype
        torch.testing.assert_close(s[key], s_ref[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("backend", FAST)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(N=st.integers(0, 40), M=st.integers(0, 40), plastic=st.booleans(), recurrent=st.booleans(),
       with_ext=st.booleans(), with_input=st.booleans(), seed=st.integers(0, 2**16))
def test_property_equals_reference(backend, N, M, plastic, recurrent, with_ext, with_input, seed):
    trains_ref, s_ref = simulate("torch", N, M, torch.float64, seed, 8, plastic, recurrent, with_ext, with_input)
    trains, s = simulate(backend, N, M, torch.float64, seed, 8, plastic, recurrent, with_ext, with_input)
    assert torch.equal(trains, trains_ref)
    for key in s_ref:
        assert torch.equal(s[key], s_ref[key]), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_written_back(backend):
    """Strided views are read and updated in place like contiguous tensors."""
    N = 21
    s = make_state(N, 0, torch.float64, 3, plastic=True, recurrent=True)
    big = {k: torch.stack([t, t.clone()], -1) for k, t in s.items()}  # every tensor as a stride-2 view
    views = {k: t[..., 0] for k, t in big.items()}
    assert not views["v"].is_contiguous()
    c, k = PARAMS.coefficients(0.5), STDP.coefficients(0.5)
    I_in = torch.linspace(0, 12, 2 * N, dtype=torch.float64)[::2]
    ref = {key: t.clone() for key, t in s.items()}
    spk_ref = reference(ref["v"], ref["I"], ref["refrac"], I_in, c, None, ref["W"], ref["x"], ref["y"], None, k)
    spk = lif_step(views["v"], views["I"], views["refrac"], I_in, c, W=views["W"], x=views["x"], y=views["y"],
                   stdp=k, backend=backend)
    assert torch.equal(spk, spk_ref) and int(spk.sum()) > 0
    for key in s:
        assert torch.equal(big[key][..., 0], ref[key]), key
        assert torch.equal(big[key][..., 1], s[key]), key  # the other half untouched


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau_s", [3.0, 10.0, 10.0 + 1e-9, 0.2], ids=lambda t: f"tau_s={t}")
def test_closed_form_single_neuron(backend, tau_s):
    """Sub-threshold: the step is exact, so v at every grid point equals the continuous solution (float64), with
    current jumps arriving mid-run and a constant external current; τ_s = τ_m and dt > τ_s included."""
    p = LIFParams(tau_m=10.0, tau_s=tau_s, R=2.0, v_rest=-65.0, v_reset=-65.0, v_th=1e9, t_ref=0.0)
    dt, steps = 0.25, 200
    c = p.coefficients(dt)
    jumps = {40: 1.5, 41: -0.7, 130: 3.0}  # step -> current jump at t = step·dt
    v = torch.tensor([-60.0], dtype=torch.float64)
    I = torch.tensor([0.8], dtype=torch.float64)
    r = torch.zeros(1, dtype=torch.int32)
    i_ext = torch.tensor([0.6], dtype=torch.float64)
    vs = []
    for n in range(steps):
        I_in = torch.tensor([jumps.get(n, 0.0)], dtype=torch.float64)
        assert not bool(lif_step(v, I, r, I_in, c, i_ext, backend=backend)[0])
        vs.append(float(v[0]))
    t = dt * torch.arange(1, steps + 1, dtype=torch.float64).numpy()
    want = lif_closed_form(t, p, v0=-60.0, I0=0.8, i_ext=0.6, jumps=[(n * dt, w) for n, w in jumps.items()])
    torch.testing.assert_close(torch.tensor(vs, dtype=torch.float64), torch.from_numpy(want), atol=1e-11, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t_ref", [0.0, 1.0, 3.0])
def test_refractory_period(backend, t_ref):
    """A strongly driven neuron fires every n_ref + 1 steps; while refractory v stays at v_reset and the synaptic
    current keeps integrating (decay + input)."""
    p = LIFParams(tau_m=5.0, tau_s=2.0, v_rest=-65.0, v_reset=-70.0, v_th=-50.0, t_ref=t_ref)
    dt = 0.5
    c = p.coefficients(dt)
    n_ref = c.n_ref
    assert n_ref == round(t_ref / dt)
    v = torch.tensor([-65.0], dtype=torch.float64)
    I = torch.zeros(1, dtype=torch.float64)
    r = torch.zeros(1, dtype=torch.int32)
    I_in = torch.tensor([1000.0], dtype=torch.float64)  # every step: far above threshold
    spikes, I_seen = [], []
    for _ in range(20):
        I_before = float(I[0])
        s = bool(lif_step(v, I, r, I_in, c, backend=backend)[0])
        spikes.append(s)
        I_seen.append((I_before, float(I[0])))
        if not s and n_ref:
            assert float(v[0]) == p.v_reset
    idx = [k for k, s in enumerate(spikes) if s]
    assert idx[0] == 0 and all(b - a == n_ref + 1 for a, b in zip(idx, idx[1:]))
    for before, after in I_seen:  # the current integrates in every step, refractory or not
        assert after == pytest.approx((before + 1000.0) * c.decay_syn, rel=1e-15)


def run_pair(backend, t_pre: list[int], t_post: list[int], steps: int = 40, w0: float = 0.3):
    """One pre and one post neuron with the given spike steps, through ``stdp_step``; returns the final weight."""
    k = STDP.coefficients(1.0)
    W = torch.tensor([[w0]], dtype=torch.float64)
    x = torch.zeros(1, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.float64)
    for n in range(steps):
        stdp_step(W, x, y, torch.tensor([n in t_pre]), torch.tensor([n in t_post]), k, backend=backend)
    return float(W[0, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_stdp_hand_computed_pairs(backend):
    """Δw = +A₊ e^{−Δt/τ₊} for pre before post, −A₋ e^{Δt/τ₋} for post before pre, +A₊ at Δt = 0; all-to-all pairs
    add up; the weight is clipped to [w_min, w_max] after each update."""
    w0 = 0.3
    ap, am, tp, tm = STDP.A_plus, STDP.A_minus, STDP.tau_plus, STDP.tau_minus
    assert run_pair(backend, [5], [12]) == pytest.approx(w0 + ap * math.exp(-7 / tp), abs=1e-15)
    assert run_pair(backend, [12], [5]) == pytest.approx(w0 - am * math.exp(-7 / tm), abs=1e-15)
    assert run_pair(backend, [9], [9]) == pytest.approx(w0 + ap, abs=1e-15)
    both = w0 + ap * (math.exp(-10 / tp) + math.exp(-4 / tp))  # pre 2, 8; post 12
    assert run_pair(backend, [2, 8], [12]) == pytest.approx(both, abs=1e-15)
    # pre 3, post 6 (+A₊e^{-3/τ₊}), pre 10 (−A₋e^{-4/τ₋} from post 6), post 11 (+A₊(e^{-8/τ₊} + e^{-1/τ₊}))
    seq = w0 + ap * math.exp(-3 / tp) - am * math.exp(-4 / tm) + ap * (math.exp(-8 / tp) + math.exp(-1 / tp))
    assert run_pair(backend, [3, 10], [6, 11]) == pytest.approx(seq, abs=1e-15)
    assert run_pair(backend, [5], [6], w0=0.99) == STDP.w_max  # clipped above
    assert run_pair(backend, list(range(10, 30)), [9], w0=-0.45) == STDP.w_min  # clipped below


@pytest.mark.parametrize("backend", BACKENDS)
def test_stdp_touches_only_spiking_rows_and_columns(backend):
    M, N = 6, 5
    k = STDP.coefficients(1.0)
    W = torch.full((M, N), 0.2, dtype=torch.float64)
    x = torch.full((M,), 0.5, dtype=torch.float64)
    y = torch.full((N,), 0.5, dtype=torch.float64)
    pre = torch.tensor([False, True, False, False, True, False])
    post = torch.tensor([False, False, True, False, False])
    stdp_step(W, x, y, pre, post, k, backend=backend)
    changed = W != 0.2
    assert changed[[1, 4]].all() and changed[:, 2].all()
    keep = torch.ones(M, N, dtype=torch.bool)
    keep[[1, 4]] = False
    keep[:, 2] = False
    assert not changed[keep].any()
    torch.testing.assert_close(x, 0.5 * k.decay_pre + pre.double(), atol=0, rtol=0)
    torch.testing.assert_close(y, 0.5 * k.decay_post + post.double(), atol=0, rtol=0)


def test_bad_input():
    c, k = PARAMS.coefficients(1.0), STDP.coefficients(1.0)
    v = torch.zeros(4, dtype=torch.float64)
    I = torch.zeros(4, dtype=torch.float64)
    r = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(TypeError, match="coeffs must be a LIFCoeffs"):
        lif_step(v, I, r, None, PARAMS)
    with pytest.raises(TypeError, match="v must be float32 or float64"):
        lif_step(v.half(), I, r, None, c)
    with pytest.raises(ValueError, match=r"I must have shape \(N,\) = \(4,\), got \(3,\)"):
        lif_step(v, I[:3], r, None, c)
    with pytest.raises(TypeError, match="refrac must have dtype torch.int32, got torch.int64"):
        lif_step(v, I, r.long(), None, c)
    with pytest.raises(TypeError, match="I_in must have dtype torch.float64"):
        lif_step(v, I, r, I.float(), c)
    with pytest.raises(ValueError, match="must be given together"):
        lif_step(v, I, r, None, c, W=torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"W must be square \(N, N\)"):
        lif_step(v, I, r, None, c, W=torch.zeros(3, 4, dtype=torch.float64), x=torch.zeros(3, dtype=torch.float64),
                 y=torch.zeros(4, dtype=torch.float64), stdp=k)
    with pytest.raises(ValueError, match="W must have N = 4 columns"):
        lif_step(v, I, r, None, c, W=torch.zeros(4, 5, dtype=torch.float64), x=torch.zeros(4, dtype=torch.float64),
                 y=torch.zeros(4, dtype=torch.float64), stdp=k)
    with pytest.raises(ValueError, match="pre_spiked is given without W"):
        lif_step(v, I, r, None, c, pre_spiked=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="stdp must be an STDPCoeffs"):
        stdp_step(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), I, torch.zeros(2,
                  dtype=torch.bool), torch.zeros(4, dtype=torch.bool), STDP)
    with pytest.raises(TypeError, match="pre_spiked must have dtype torch.bool"):
        stdp_step(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), I, torch.zeros(2),
                  torch.zeros(4, dtype=torch.bool), k)
    with pytest.raises(ValueError, match="backend must be one of"):
        lif_step(v, I, r, None, c, backend="cuda")
