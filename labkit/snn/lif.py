r"""The leaky integrate-and-fire neuron with an exponential synaptic current, integrated exactly, and pair-based STDP.

The neuron (current-based LIF, PyNN's ``IF_curr_exp``). Membrane potential v, synaptic current I:

    τ_m dv/dt = −(v − v_rest) + R (I + i_ext),        τ_s dI/dt = −I,

and a presynaptic spike arriving at time t_k makes the current jump, I(t_k⁺) = I(t_k⁻) + w. When v reaches v_th the
neuron spikes, v is reset to v_reset and held there for the refractory period t_ref (the synaptic current keeps
decaying and receiving input meanwhile). ``i_ext`` is an external current held constant over a step (PyNN's
``i_offset``; per neuron). Units are the reader's: ms, mV, nA and MΩ (R = τ_m / c_m with c_m in nF) fit together.

The exact propagator. Between input jumps the system is linear, so one step of length dt from (v, I) is solved in
closed form. I decays as I(s) = I e^{−s/τ_s}. With u = v − v_rest and variation of constants,

    u(dt) = u e^{−dt/τ_m} + (R/τ_m) ∫_0^dt e^{−(dt−s)/τ_m} (I e^{−s/τ_s} + i_ext) ds
          = u e^{−dt/τ_m} + R I · τ_s/(τ_s − τ_m) · (e^{−dt/τ_s} − e^{−dt/τ_m}) + R i_ext (1 − e^{−dt/τ_m}).

The middle coefficient is 0/0 at τ_s = τ_m, where its limit is (dt/τ_m) e^{−dt/τ_m}. Writing δ = dt (1/τ_m − 1/τ_s),

    τ_s/(τ_s − τ_m) · (e^{−dt/τ_s} − e^{−dt/τ_m}) = (dt/τ_m) e^{−dt/τ_m} · φ(δ),     φ(δ) = (e^δ − 1)/δ,  φ(0) = 1,

which is evaluated with ``expm1`` and has no cancellation near τ_s = τ_m. So one step is the affine map

    v ← v_rest + (v − v_rest)·decay_v + I·gain_syn + i_ext·gain_ext,        I ← I·decay_syn,

    decay_v = e^{−dt/τ_m},  gain_syn = R (dt/τ_m) e^{−dt/τ_m} φ(δ),  gain_ext = R (1 − e^{−dt/τ_m}),
    decay_syn = e^{−dt/τ_s}.

It is exact for any dt (the CA3 model of the chapter runs dt = 1 ms with τ_s = 0.3 ms); what dt changes is only
how finely the threshold is sampled. ``coefficients(dt, method="euler")`` gives forward Euler for comparison
(decay_v = 1 − dt/τ_m, gain_syn = gain_ext = R dt/τ_m, decay_syn = 1 − dt/τ_s), which needs dt < min(τ_m, τ_s).

The time grid. The state is known at t_n = n·dt. Step n+1 integrates [t_n, t_{n+1}]: first the input arriving at
t_n is added to I (the delay ring buffer's slot n), then the propagator, then the threshold test at t_{n+1}. A
neuron that spikes at t_{n+1} is clamped at v_reset for the next n_ref = t_ref/dt steps (t_ref must be a multiple
of dt), so the shortest interval between two spikes is (n_ref + 1)·dt: in continuous time the next spike comes
strictly after t_ref, and the first grid point at which it can be seen is one step later. (Brian2 counts the
spike at the start of its step, so its ``refractory=t_ref`` equals n_ref = t_ref/dt − 1 here.)

Pair-based STDP with traces. Every presynaptic neuron carries a trace x (time constant τ₊), every postsynaptic
neuron a trace y (τ₋); both decay exponentially and jump by 1 at each of their neuron's spikes (all-to-all
pairing). At a presynaptic spike the weights of its row are depressed, w ← w − A₋·y; at a postsynaptic spike
the weights of its column are potentiated, w ← w + A₊·x; after each update w is clipped to [w_min, w_max]
(additive, bounded). A single pair with Δt = t_post − t_pre therefore changes w by

    Δw = +A₊ e^{−Δt/τ₊}  (Δt ≥ 0, pre before post),        Δw = −A₋ e^{Δt/τ₋}  (Δt < 0, post before pre),

(``stdp_window``). Pre and post spikes in the same step count as Δt = 0, i.e. potentiation (Brian2's order: the
presynaptic pathway runs first). The traces decay per step by the exact factors e^{−dt/τ±} (``STDPCoeffs``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["LIFCoeffs", "LIFParams", "STDPCoeffs", "STDPParams", "first_spike_time", "lif_closed_form",
           "stdp_window"]


class LIFCoeffs(NamedTuple):
    """One step of the neuron as numbers (what the kernels read):
    v ← v_rest + (v − v_rest)·decay_v + I·gain_syn + i_ext·gain_ext;  I ← I·decay_syn;  refractory n_ref steps."""

    decay_v: float
    gain_syn: float
    gain_ext: float
    decay_syn: float
    v_rest: float
    v_reset: float
    v_th: float
    n_ref: int


class STDPCoeffs(NamedTuple):
    """One step of STDP as numbers: x ← x·decay_pre, y ← y·decay_post; Δw = −a_minus·y (pre spike),
    +a_plus·x (post spike); w clipped to [w_min, w_max]."""

    decay_pre: float
    decay_post: float
    a_plus: float
    a_minus: float
    w_min: float
    w_max: float


def _real(name: str, value, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _phi(delta: float) -> float:
    """(e^δ − 1)/δ with φ(0) = 1, accurate near 0."""
    return 1.0 if delta == 0.0 else math.expm1(delta) / delta


def _n_steps(name: str, t: float, dt: float) -> int:
    n = round(t / dt)
    if abs(t - n * dt) > 1e-9 * max(dt, abs(t)):
        raise ValueError(f"{name} must be a whole number of steps dt = {dt}, got {name} = {t} ({t / dt:.6g} steps)")
    return int(n)


@dataclass(frozen=True)
class LIFParams:
    """A population's neuron parameters (ms, mV, nA, MΩ). Validated on construction.

    tau_m: membrane time constant (> 0); tau_s: synaptic current time constant (> 0); R: membrane resistance
    (> 0); v_rest, v_reset, v_th: resting, reset and threshold potentials (v_th > v_reset and v_th > v_rest, or the
    neuron would fire at rest); t_ref: refractory period (>= 0, a multiple of the simulation's dt)."""

    tau_m: float = 10.0
    tau_s: float = 5.0
    R: float = 1.0
    v_rest: float = -65.0
    v_reset: float = -65.0
    v_th: float = -50.0
    t_ref: float = 2.0

    def __post_init__(self):
        for name in ("tau_m", "tau_s", "R"):
            object.__setattr__(self, name, _real(name, getattr(self, name), positive=True))
        for name in ("v_rest", "v_reset", "v_th"):
            object.__setattr__(self, name, _real(name, getattr(self, name)))
        object.__setattr__(self, "t_ref", _real("t_ref", self.t_ref, nonneg=True))
        if self.v_th <= self.v_reset:
            raise ValueError(f"v_th must be > v_reset = {self.v_reset}, got {self.v_th}")
        if self.v_th <= self.v_rest:
            raise ValueError(f"v_th must be > v_rest = {self.v_rest} (else the neuron fires at rest), got {self.v_th}")

    @classmethod
    def from_pynn(cls, cm: float = 1.0, tau_m: float = 20.0, tau_syn: float = 5.0, v_rest: float = -65.0,
                  v_reset: float = -65.0, v_thresh: float = -50.0, tau_refrac: float = 0.1) -> LIFParams:
        """PyNN's ``IF_curr_exp`` names (cm in nF): R = tau_m / cm (MΩ)."""
        cm = _real("cm", cm, positive=True)
        tau_m = _real("tau_m", tau_m, positive=True)
        return cls(tau_m=tau_m, tau_s=tau_syn, R=tau_m / cm, v_rest=v_rest, v_reset=v_reset, v_th=v_thresh,
                   t_ref=tau_refrac)

    def coefficients(self, dt: float, method: str = "exact") -> LIFCoeffs:
        """The one-step propagator for steps of ``dt`` (see the module docstring). method: "exact" (any dt > 0)
        or "euler" (forward Euler, needs dt < min(tau_m, tau_s))."""
        dt = _real("dt", dt, positive=True)
        n_ref = _n_steps("t_ref", self.t_ref, dt)
        if method == "exact":
            decay_v = math.exp(-dt / self.tau_m)
            gain_syn = self.R * (dt / self.tau_m) * decay_v * _phi(dt * (1.0 / self.tau_m - 1.0 / self.tau_s))
            gain_ext = -self.R * math.expm1(-dt / self.tau_m)
            decay_syn = math.exp(-dt / self.tau_s)
        elif method == "euler":
            tau_min = min(self.tau_m, self.tau_s)
            if dt >= tau_min:
                raise ValueError(f"dt must be < min(tau_m, tau_s) = {tau_min} for forward Euler, got {dt} "
                                 f"(use method='exact', which is exact for any dt)")
            decay_v = 1.0 - dt / self.tau_m
            gain_syn = gain_ext = self.R * dt / self.tau_m
            decay_syn = 1.0 - dt / self.tau_s
        else:
            raise ValueError(f"method must be 'exact' or 'euler', got {method!r}")
        return LIFCoeffs(decay_v, gain_syn, gain_ext, decay_syn, self.v_rest, self.v_reset, self.v_th, n_ref)


@dataclass(frozen=True)
class STDPParams:
    """Pair-based STDP (all-to-all traces), additive with hard bounds. Validated on construction.

    tau_plus, tau_minus: trace time constants (ms, > 0); A_plus, A_minus: potentiation and depression amplitudes
    (>= 0); w_min <= w_max: the weight bounds."""

    tau_plus: float = 20.0
    tau_minus: float = 20.0
    A_plus: float = 0.01
    A_minus: float = 0.012
    w_min: float = 0.0
    w_max: float = 1.0

    def __post_init__(self):
        for name in ("tau_plus", "tau_minus"):
            object.__setattr__(self, name, _real(name, getattr(self, name), positive=True))
        for name in ("A_plus", "A_minus"):
            object.__setattr__(self, name, _real(name, getattr(self, name), nonneg=True))
        for name in ("w_min", "w_max"):
            object.__setattr__(self, name, _real(name, getattr(self, name)))
        if self.w_max < self.w_min:
            raise ValueError(f"w_max must be >= w_min = {self.w_min}, got {self.w_max}")

    def coefficients(self, dt: float) -> STDPCoeffs:
        """The per-step trace decays e^{−dt/τ±} and the amplitudes and bounds."""
        dt = _real("dt", dt, positive=True)
        return STDPCoeffs(math.exp(-dt / self.tau_plus), math.exp(-dt / self.tau_minus), self.A_plus, self.A_minus,
                          self.w_min, self.w_max)


def stdp_window(delta_t, params: STDPParams) -> np.ndarray:
    """Δw of one isolated pre/post pair (before clipping) as a function of Δt = t_post − t_pre (ms; array-like):
    A₊ e^{−Δt/τ₊} for Δt >= 0, −A₋ e^{Δt/τ₋} for Δt < 0."""
    d = np.asarray(delta_t, dtype=np.float64)
    return np.where(d >= 0, params.A_plus * np.exp(-np.abs(d) / params.tau_plus),
                    -params.A_minus * np.exp(-np.abs(d) / params.tau_minus))


def _syn_kernel(s: np.ndarray, tau_m: float, tau_s: float) -> np.ndarray:
    """τ_s/(τ_s − τ_m)(e^{−s/τ_s} − e^{−s/τ_m}) for s >= 0 (0 for s < 0): the potential (per unit R·I) left at time s
    by a unit current jump at 0. Stable at τ_s = τ_m (the (s/τ_m) e^{−s/τ_m} φ(δ) form for small |δ|)."""
    s = np.asarray(s, dtype=np.float64)
    out = np.zeros_like(s)
    pos = s >= 0
    sp = s[pos]
    delta = sp * (1.0 / tau_m - 1.0 / tau_s)
    small = np.abs(delta) < 0.5
    phi = np.ones_like(delta)
    nz = small & (delta != 0)
    phi[nz] = np.expm1(delta[nz]) / delta[nz]
    near = (sp / tau_m) * np.exp(-sp / tau_m) * phi
    if tau_s != tau_m:
        far = tau_s / (tau_s - tau_m) * (np.exp(-sp / tau_s) - np.exp(-sp / tau_m))
    else:
        far = near
    out[pos] = np.where(small, near, far)
    return out


def lif_closed_form(t, params: LIFParams, v0: float | None = None, I0: float = 0.0, i_ext: float = 0.0,
                    jumps=()) -> np.ndarray:
    """The sub-threshold membrane potential of one neuron in continuous time (no threshold, no reset).

    t: times (ms, array-like, >= 0); v0: v(0) (default v_rest); I0: the synaptic current at 0⁺; i_ext: a constant
    external current; jumps: (time, w) pairs, the current jumping by w at each time (> 0). Returns v(t) (float64,
    the shape of t):

        v(t) = v_rest + (v0 − v_rest) e^{−t/τ_m} + R i_ext (1 − e^{−t/τ_m}) + R Σ_k w_k K(t − t_k),
        K(s) = τ_s/(τ_s − τ_m)(e^{−s/τ_s} − e^{−s/τ_m}) for s >= 0 (with t_0 = 0, w_0 = I0).
    """
    t = np.asarray(t, dtype=np.float64)
    if t.size and float(t.min()) < 0:
        raise ValueError(f"t must be >= 0, got a minimum of {float(t.min())}")
    v0 = params.v_rest if v0 is None else _real("v0", v0)
    I0, i_ext = _real("I0", I0), _real("i_ext", i_ext)
    p = params
    v = p.v_rest + (v0 - p.v_rest) * np.exp(-t / p.tau_m) - p.R * i_ext * np.expm1(-t / p.tau_m)
    v = v + p.R * I0 * _syn_kernel(t, p.tau_m, p.tau_s)
    for tk, wk in jumps:
        tk, wk = _real("jump time", tk), _real("jump w", wk)
        # a jump at t_k acts from t_k on (the step that starts at t_k already sees it)
        v = v + p.R * wk * _syn_kernel(t - tk, p.tau_m, p.tau_s) * (t >= tk)
    return v


def first_spike_time(params: LIFParams, i_ext: float, v0: float | None = None) -> float:
    """When a neuron starting at v0 (default v_reset) with no synaptic current and a constant ``i_ext`` first reaches
    v_th: τ_m ln((v_∞ − v0)/(v_∞ − v_th)) with v_∞ = v_rest + R i_ext; ``inf`` when v_∞ <= v_th."""
    v0 = params.v_reset if v0 is None else _real("v0", v0)
    v_inf = params.v_rest + params.R * _real("i_ext", i_ext)
    if v0 >= params.v_th:
        return 0.0
    if v_inf <= params.v_th:
        return math.inf
    return params.tau_m * math.log((v_inf - v0) / (v_inf - params.v_th))
