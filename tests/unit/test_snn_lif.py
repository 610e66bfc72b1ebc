"""labkit.snn.lif: the closed form against an independent ODE solver, the exact propagator against the closed form
(τ_s ≠ τ_m, τ_s = τ_m, τ_s within 1e-9 of τ_m, dt > τ_s), Euler's first-order convergence to it, the first-spike
time, the STDP window, and every validation error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from labkit.snn.lif import LIFCoeffs, LIFParams, STDPParams, first_spike_time, lif_closed_form, stdp_window


def step_python(c: LIFCoeffs, v: float, I: float, I_in: float = 0.0, i_ext: float = 0.0) -> tuple[float, float]:
    I1 = I + I_in
    return c.v_rest + (v - c.v_rest) * c.decay_v + I1 * c.gain_syn + i_ext * c.gain_ext, I1 * c.decay_syn


@pytest.mark.parametrize("tau_s", [2.0, 10.0, 25.0])
def test_closed_form_solves_the_ode(tau_s):
    """The closed form (with jumps and i_ext) equals scipy's adaptive solver on the ODE itself."""
    p = LIFParams(tau_m=10.0, tau_s=tau_s, R=3.0, v_rest=-65.0, v_reset=-65.0, v_th=0.0, t_ref=0.0)
    jumps = [(4.0, 1.2), (9.5, -0.5)]
    v0, I0, i_ext = -58.0, 0.4, 0.7

    def rhs(t, z):
        v, I = z
        return [(-(v - p.v_rest) + p.R * (I + i_ext)) / p.tau_m, -I / p.tau_s]

    z, t0, ts, vs = [v0, I0], 0.0, [], []
    for tk, wk in [*jumps, (30.0, 0.0)]:
        grid = np.linspace(t0, tk, 11)
        sol = solve_ivp(rhs, (t0, tk), z, t_eval=grid, rtol=1e-12, atol=1e-12, method="DOP853")
        ts.append(sol.t)
        vs.append(sol.y[0])
        z = [sol.y[0, -1], sol.y[1, -1] + wk]
        t0 = tk
    t, v = np.concatenate(ts), np.concatenate(vs)
    np.testing.assert_allclose(lif_closed_form(t, p, v0=v0, I0=I0, i_ext=i_ext, jumps=jumps), v, atol=1e-8, rtol=0)


@pytest.mark.parametrize("tau_s", [3.0, 10.0, 10.0 + 1e-9, 10.0 - 1e-7, 0.3])
@pytest.mark.parametrize("dt", [0.1, 1.0])
def test_exact_step_equals_closed_form(tau_s, dt):
    p = LIFParams(tau_m=10.0, tau_s=tau_s, R=2.0, v_rest=-70.0, v_reset=-70.0, v_th=0.0, t_ref=0.0)
    c = p.coefficients(dt)
    v, I = -62.0, 1.3
    vs = []
    for _ in range(300):
        v, I = step_python(c, v, I, i_ext=0.25)
        vs.append(v)
    t = dt * np.arange(1, 301)
    np.testing.assert_allclose(vs, lif_closed_form(t, p, v0=-62.0, I0=1.3, i_ext=0.25), atol=1e-11, rtol=0)
    assert c.decay_syn == pytest.approx(math.exp(-dt / tau_s), rel=1e-15)


def test_propagator_is_continuous_at_equal_time_constants():
    base = LIFParams(tau_m=10.0, tau_s=10.0).coefficients(1.0)
    assert base.gain_syn == pytest.approx(1.0 * 0.1 * math.exp(-0.1), rel=1e-15)  # R dt/τ e^{-dt/τ}
    for eps in (1e-12, 1e-9, 1e-6):
        near = LIFParams(tau_m=10.0, tau_s=10.0 + eps).coefficients(1.0)
        assert near.gain_syn == pytest.approx(base.gain_syn, rel=10 * eps + 1e-14)


def test_euler_converges_first_order_and_needs_small_dt():
    p = LIFParams(tau_m=10.0, tau_s=4.0, R=2.0, v_th=0.0, t_ref=0.0)
    errors = []
    for dt in (0.2, 0.1, 0.05):
        c = p.coefficients(dt, method="euler")
        v, I = -60.0, 1.0
        for _ in range(round(5.0 / dt)):
            v, I = step_python(c, v, I)
        errors.append(abs(v - float(lif_closed_form([5.0], p, v0=-60.0, I0=1.0)[0])))
    assert errors[0] > errors[1] > errors[2] > 0
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.1) and errors[1] / errors[2] == pytest.approx(2, rel=0.1)
    with pytest.raises(ValueError, match=r"dt must be < min\(tau_m, tau_s\) = 4.0 for forward Euler, got 4.0"):
        p.coefficients(4.0, method="euler")
    p.coefficients(4.0)  # the exact propagator takes any dt


def test_refractory_steps_and_pynn_names():
    assert LIFParams(t_ref=2.0).coefficients(0.5).n_ref == 4
    assert LIFParams(t_ref=0.0).coefficients(0.1).n_ref == 0
    assert LIFParams(t_ref=0.3).coefficients(0.1).n_ref == 3  # 0.3 / 0.1 is 2.9999999999999996 in floats
    with pytest.raises(ValueError, match=r"t_ref must be a whole number of steps dt = 0.4, got t_ref = 1.0"):
        LIFParams(t_ref=1.0).coefficients(0.4)
    p = LIFParams.from_pynn(cm=0.25, tau_m=3.0, tau_syn=0.3, v_rest=-60, v_reset=-60, v_thresh=-57, tau_refrac=1.0)
    assert p.R == pytest.approx(12.0) and p.tau_s == 0.3 and p.v_th == -57.0 and p.t_ref == 1.0


def test_first_spike_time():
    p = LIFParams(tau_m=10.0, R=2.0, v_rest=-65.0, v_reset=-70.0, v_th=-50.0)
    t = first_spike_time(p, i_ext=9.0)
    assert 0 < t < math.inf
    assert float(lif_closed_form([t], p, v0=-70.0, i_ext=9.0)[0]) == pytest.approx(-50.0, abs=1e-10)
    assert first_spike_time(p, i_ext=7.5) == math.inf  # v_inf = v_th exactly: never reached
    assert first_spike_time(p, i_ext=0.0, v0=-40.0) == 0.0


def test_stdp_window():
    s = STDPParams(tau_plus=10.0, tau_minus=20.0, A_plus=0.1, A_minus=0.2)
    dw = stdp_window([-20.0, -1.0, 0.0, 5.0], s)
    np.testing.assert_allclose(dw, [-0.2 * math.exp(-1), -0.2 * math.exp(-1 / 20), 0.1, 0.1 * math.exp(-0.5)])
    c = s.coefficients(2.0)
    assert (c.decay_pre, c.decay_post) == (math.exp(-0.2), math.exp(-0.1))


@pytest.mark.parametrize("kwargs, err, msg", [
    (dict(tau_m=-1.0), ValueError, r"tau_m must be > 0, got -1.0"),
    (dict(tau_s=0.0), ValueError, r"tau_s must be > 0, got 0.0"),
    (dict(R=0), ValueError, r"R must be > 0, got 0.0"),
    (dict(tau_m=float("nan")), ValueError, r"tau_m must be finite, got nan"),
    (dict(tau_m="10"), TypeError, r"tau_m must be a real number, got str"),
    (dict(t_ref=-1.0), ValueError, r"t_ref must be >= 0, got -1.0"),
    (dict(v_th=-70.0, v_reset=-65.0, v_rest=-80.0), ValueError, r"v_th must be > v_reset = -65.0, got -70.0"),
    (dict(v_th=-66.0, v_reset=-70.0, v_rest=-65.0), ValueError, r"v_th must be > v_rest = -65.0"),
])
def test_lif_params_errors(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        LIFParams(**kwargs)


def test_other_errors():
    with pytest.raises(ValueError, match=r"dt must be > 0, got 0.0"):
        LIFParams().coefficients(0.0)
    with pytest.raises(ValueError, match=r"dt must be > 0, got -1.0"):
        STDPParams().coefficients(-1.0)
    with pytest.raises(ValueError, match="method must be 'exact' or 'euler', got 'rk4'"):
        LIFParams().coefficients(1.0, method="rk4")
    with pytest.raises(ValueError, match=r"tau_plus must be > 0, got -5.0"):
        STDPParams(tau_plus=-5.0)
    with pytest.raises(ValueError, match=r"A_minus must be >= 0, got -0.1"):
        STDPParams(A_minus=-0.1)
    with pytest.raises(ValueError, match=r"w_max must be >= w_min = 1.0, got 0.5"):
        STDPParams(w_min=1.0, w_max=0.5)
    with pytest.raises(ValueError, match="t must be >= 0"):
        lif_closed_form([-1.0], LIFParams())
    with pytest.raises(ValueError, match=r"cm must be > 0, got 0.0"):
        LIFParams.from_pynn(cm=0.0)
