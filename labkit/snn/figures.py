r"""Small experiments behind the figures of chapter 6, section 1 (the neuron, STDP, the simulator's backends).

- ``euler_coefficients``: forward Euler's one-step numbers for a ``LIFParams`` **without** the dt < τ guard of
  ``LIFParams.coefficients(method="euler")``: the section shows what happens past that limit.
- ``neuron_trace``: one neuron's membrane potential on the grid t_n = n·dt, stepped by the simulator's own kernel
  (``labkit.kernels.lif_step.reference``) with the exact or the Euler coefficients (no threshold: the sub-threshold
  system that ``lif_closed_form`` solves in continuous time).
- ``propagator_error``: the largest |v_grid − v_closed_form| over [0, T] for each dt, exact and Euler.
- ``stdp_pair_changes``: Δw of isolated pre/post pairs measured by running the plasticity kernel
  ``labkit.kernels.lif_step.stdp_step`` step by step (to compare with ``stdp_window``).
- ``correlated_spike_trains``: Poisson inputs of which the first ``n_corr`` share spikes with one another.
- ``stdp_demo_network``: inputs → LIF population with STDP and lateral CSR inhibition (a ``Network``, not run).
- ``event_fraction``: how much of a dense propagation the event-driven one does for a recorded raster.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from labkit import data
from labkit.snn.lif import LIFCoeffs, LIFParams, STDPParams, lif_closed_form
from labkit.snn.network import Network

__all__ = ["correlated_spike_trains", "euler_coefficients", "event_fraction", "neuron_trace", "propagator_error",
           "stdp_demo_network", "stdp_pair_changes"]


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _grid_steps(name: str, times, dt: float) -> np.ndarray:
    """Times (ms) that must lie on the grid n·dt, n >= 0, as integer steps."""
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    n = np.rint(t / dt)
    if t.size and (np.abs(t - n * dt).max() > 1e-9 * max(dt, 1.0) or n.min() < 0):
        raise ValueError(f"{name} must be >= 0 and multiples of dt = {dt}, got {t.tolist()}")
    return n.astype(np.int64)


def euler_coefficients(params: LIFParams, dt: float) -> LIFCoeffs:
    """Forward Euler as one-step numbers, for any dt > 0 (no stability guard; refractory and threshold copied):
    decay_v = 1 − dt/τ_m, gain_syn = gain_ext = R dt/τ_m, decay_syn = 1 − dt/τ_s. For dt > 2τ_s the current's
    factor |1 − dt/τ_s| exceeds 1 and the scheme diverges; ``LIFParams.coefficients`` refuses dt >= min(τ_m, τ_s)."""
    dt = _positive("dt", dt)
    p = params
    n_ref = round(p.t_ref / dt)
    return LIFCoeffs(1.0 - dt / p.tau_m, p.R * dt / p.tau_m, p.R * dt / p.tau_m, 1.0 - dt / p.tau_s, p.v_rest,
                     p.v_reset, p.v_th, n_ref)


def neuron_trace(params: LIFParams, dt: float, T: float, jumps: Sequence[tuple[float, float]] = (),
                 i_ext: float = 0.0, method: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """One neuron's sub-threshold membrane potential, stepped by ``labkit.kernels.lif_step.reference`` (the torch
    spec that every backend of the simulator's step equals).

    params: the neuron (its threshold is lifted to +inf and refractoriness dropped: this is the linear system that
    ``lif_closed_form`` solves); dt: the step (ms); T: the duration (ms, a multiple of dt); jumps: (time, w) pairs,
    the synaptic current jumping by w at each time (multiples of dt, in [0, T)); i_ext: a constant external current;
    method: "exact" (``params.coefficients(dt)``) or "euler" (``euler_coefficients``, unguarded).
    Returns (t (S+1,), v (S+1,)) with t_n = n·dt and v[0] = v_rest.
    """
    dt, T = _positive("dt", dt), _positive("T", T)
    S = int(_grid_steps("T", [T], dt)[0])
    if method == "exact":
        c = dataclasses.replace(params, t_ref=0.0).coefficients(dt)
    elif method == "euler":
        c = euler_coefficients(params, dt)
    else:
        raise ValueError(f"method must be 'exact' or 'euler', got {method!r}")
    c = c._replace(v_th=math.inf, n_ref=0)
    jumps = list(jumps)
    steps = _grid_steps("jump times", [tk for tk, _ in jumps], dt)
    if steps.size and steps.max() >= S:
        raise ValueError(f"jump times must lie in [0, T) = [0, {T}), got a maximum of {max(tk for tk, _ in jumps)}")
    I_in = np.zeros(S)
    np.add.at(I_in, steps, [float(w) for _, w in jumps])
    from labkit.kernels.lif_step import reference as lif_step

    v = torch.full((1,), params.v_rest, dtype=torch.float64)
    I = torch.zeros(1, dtype=torch.float64)
    refrac = torch.zeros(1, dtype=torch.int32)
    ext = torch.full((1,), float(i_ext), dtype=torch.float64) if i_ext else None
    slot = torch.zeros(1, dtype=torch.float64)
    out = np.empty(S + 1)
    out[0] = params.v_rest
    for n in range(S):  # step n integrates [t_n, t_{n+1}] with the input arriving at t_n
        slot[0] = I_in[n]
        lif_step(v, I, refrac, slot, c, ext)
        out[n + 1] = float(v[0])
    return np.arange(S + 1) * dt, out


def propagator_error(params: LIFParams, dts: Sequence[float], T: float, jumps: Sequence[tuple[float, float]] = (),
                     i_ext: float = 0.0) -> dict[str, np.ndarray]:
    """For each dt the largest |v_n − v(t_n)| over the grid of [0, T], v(t) = ``lif_closed_form``.
    Returns {"dt" (K,), "exact" (K,), "euler" (K,)} (Euler's error is inf or huge where it diverged)."""
    dts = [_positive("dt", d) for d in dts]
    if not dts:
        raise ValueError("dts must hold at least one step size")
    out = {"dt": np.asarray(dts), "exact": np.zeros(len(dts)), "euler": np.zeros(len(dts))}
    for k, dt in enumerate(dts):
        for method in ("exact", "euler"):
            t, v = neuron_trace(params, dt, T, jumps, i_ext, method)
            with np.errstate(over="ignore", invalid="ignore"):
                err = np.abs(v - lif_closed_form(t, params, i_ext=i_ext, jumps=jumps))
            out[method][k] = np.inf if not np.isfinite(err).all() else float(err.max())
    return out


def stdp_pair_changes(delta_t, params: STDPParams, dt: float = 1.0, w0: float | None = None,
                      backend: str = "torch") -> np.ndarray:
    """Δw of one isolated pre/post pair for each Δt = t_post − t_pre (ms, multiples of dt), measured by stepping the
    plasticity kernel ``stdp_step`` (pair k: pre neuron k and post neuron k; the weight read is W[k, k]).

    w0: the initial weight (default the middle of [w_min, w_max]; a change that would cross a bound is clipped, as
    in the simulator). Returns (K,) float64, to compare with ``stdp_window(delta_t, params)``."""
    from labkit.kernels.lif_step import stdp_step

    dt = _positive("dt", dt)
    d = np.asarray(delta_t, dtype=np.float64).reshape(-1)
    k = np.rint(d / dt).astype(np.int64)
    if d.size == 0 or np.abs(d - k * dt).max() > 1e-9 * max(dt, 1.0):
        raise ValueError(f"delta_t must be a non-empty list of multiples of dt = {dt}, got {d.tolist()}")
    w0 = 0.5 * (params.w_min + params.w_max) if w0 is None else float(w0)
    K = d.size
    start = int(np.abs(k).max()) + 1  # the earlier spike of every pair is at step >= 1
    pre_step = np.where(k >= 0, start, start - k)
    post_step = pre_step + k
    W = torch.full((K, K), w0, dtype=torch.float64)
    x = torch.zeros(K, dtype=torch.float64)
    y = torch.zeros(K, dtype=torch.float64)
    coeffs = params.coefficients(dt)
    for n in range(1, int(max(pre_step.max(), post_step.max())) + 1):
        pre = torch.from_numpy(pre_step == n)
        post = torch.from_numpy(post_step == n)
        stdp_step(W, x, y, pre, post, coeffs, backend=backend)
    return W.diagonal().numpy() - w0


def correlated_spike_trains(n: int, n_corr: int, rate_hz: float, T: float, c: float = 0.2, dt: float = 1.0,
                            seed: data.SeedLike = 0) -> list[np.ndarray]:
    """Spike times (ms, on the grid, in [dt, T]) of n inputs at ``rate_hz`` each. The first ``n_corr`` copy the
    spikes of one shared "mother" Poisson train of rate rate_hz / c, each spike with probability c (pairwise
    spike-count correlation ≈ c); the other n − n_corr are independent Poisson trains. Returns n arrays."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(n_corr, bool) or not isinstance(n_corr, numbers.Integral) or not 0 <= n_corr <= n:
        raise ValueError(f"n_corr must be an integer in 0..n = 0..{n}, got {n_corr!r}")
    rate_hz, T, dt = _positive("rate_hz", rate_hz), _positive("T", T), _positive("dt", dt)
    if not 0.0 < c <= 1.0:
        raise ValueError(f"c must be in (0, 1], got {c!r}")
    g = data.rng(seed)
    steps = int(T / dt)
    p = rate_hz * dt / 1000.0
    if p / c > 1.0:
        raise ValueError(f"rate_hz / c * dt must stay below one spike per step, got {p / c:.3g} per step")
    mother = np.nonzero(g.random(steps) < p / c)[0]
    trains = []
    for i in range(n):
        if i < n_corr:
            s = mother[g.random(mother.size) < c]
        else:
            s = np.nonzero(g.random(steps) < p)[0]
        trains.append((s + 1) * dt)
    return trains


def stdp_demo_network(inputs: list[np.ndarray], n_out: int = 10, params: LIFParams | None = None,
                      stdp: STDPParams | None = None, w_init: float = 0.5, w_inh: float = 2.0,
                      backend: str = "auto", device: str | torch.device = "cpu",
                      seed: data.SeedLike = 0) -> Network:
    """A feed-forward STDP circuit (not run): the spike sources ``inputs`` (a list of spike-time arrays, one per input)
    → ``n_out`` LIF neurons through dense plastic synapses (delay 1 step, initial weights uniform in
    [0, 2·w_init·w_max] clipped to the bounds) and all-to-all-but-self lateral inhibition among the outputs as CSR
    synapses of weight −w_inh (delay 1). Populations "input" and "output"; groups "input->output" and
    "output->output"; voltages of outputs 0 and 1 monitored. backend, device: as in ``Network``.

    Defaults: params τ_m = 10 ms, τ_s = 5 ms, R = 3 MΩ, v_rest = v_reset = −65 mV, v_th = −50 mV, t_ref = 2 ms; stdp
    τ± = 20 ms, A₊ = 0.04, A₋ = 0.048 (depression 20 % stronger, which keeps the output rate bounded), w in [0, 1]."""
    params = params or LIFParams(tau_m=10.0, tau_s=5.0, R=3.0, v_rest=-65.0, v_reset=-65.0, v_th=-50.0, t_ref=2.0)
    stdp = stdp or STDPParams(tau_plus=20.0, tau_minus=20.0, A_plus=0.04, A_minus=0.048, w_min=0.0, w_max=1.0)
    if isinstance(n_out, bool) or not isinstance(n_out, numbers.Integral) or n_out < 1:
        raise ValueError(f"n_out must be an integer >= 1, got {n_out!r}")
    g = data.rng(seed)
    net = Network(dt=1.0, backend=backend, device=device)
    inp = net.add_spike_source("input", len(inputs), inputs)
    out = net.add_lif("output", n_out, params)
    W = np.clip(g.uniform(0.0, 2.0 * w_init * stdp.w_max, (len(inputs), n_out)), stdp.w_min, stdp.w_max)
    net.connect(inp, out, weights=W, delay=1, stdp=stdp)
    if n_out > 1:
        cols = np.array([[j for j in range(n_out) if j != i] for i in range(n_out)]).reshape(-1)
        indptr = np.arange(n_out + 1) * (n_out - 1)
        net.connect(out, out, weights=(indptr, cols, np.full(cols.size, -float(w_inh))), delay=1)
    net.monitor_voltage(out, [0, 1] if n_out > 1 else [0])
    return net


def event_fraction(net: Network) -> float:
    """Synapse rows the event-driven propagation touched over the whole run, as a fraction of what a dense
    propagation (every synapse, every step) would touch: Σ_groups Σ_spikes deg(pre) / Σ_groups steps·E."""
    done = dense = 0.0
    for g in net.groups:
        counts = net.spike_counts(g.pre)
        if g.dense:
            deg = np.full(g.pre.n, g.post.n, dtype=np.float64)
        else:
            deg = np.diff(g.indptr.cpu().numpy()).astype(np.float64)
        done += float(counts @ deg)
        dense += float(net.step_count * deg.sum())
    return done / dense if dense else 0.0
