r"""A small spiking-network simulator: LIF populations, spike sources, synapse groups with delays and STDP.

    net = Network(dt=1.0)
    inp = net.add_spike_source("input", 2, spike_times=[[5.0, 20.0], [12.0]])
    exc = net.add_lif("exc", 100, LIFParams(tau_m=10, tau_s=2), i_ext=1.0)
    net.connect(inp, exc, weights=W, delay=1, stdp=STDPParams())        # dense (2, 100), plastic
    net.connect(exc, exc, weights=(indptr, indices, w), delay=d)        # CSR, per-synapse delays
    net.monitor_voltage(exc, [0, 1, 2])
    net.run(100.0)
    times, neurons = net.spikes(exc);  net.raster_figure();  net.voltage_figure(exc)

Time. The state is known at t_n = n·dt (n = 0 at construction). One step integrates [t_n, t_{n+1}] for every LIF
population (``labkit.kernels.lif_step``: the input arriving at t_n from the delay ring buffer's slot n mod D, the
exact propagator of ``labkit.snn.lif``, refractory, threshold and reset), so LIF spikes are stamped t_{n+1}. Spike
sources emit at the grid time nearest to each given spike time (which must be >= dt, the end of the first step).
Then the plasticity of each STDP group, then every spike at t_{n+1} is propagated: a synapse with delay d (in
steps, 0..D_max) makes its target's current jump at t_{n+1+d} (``labkit.kernels.spike_propagate``; only the rows of
the neurons that spiked are touched). A delay of 1 step is PyNN's / SpiNNaker's minimum delay of dt; Brian2 stamps
the same spike at t_n (the start of its step) and its ``delay=d·dt`` is our d, its ``refractory=t_ref`` our
t_ref − dt.

Plasticity. A synapse group with ``stdp=STDPParams(...)`` has dense all-to-all weights W (M, N), presynaptic traces
x (M,) and postsynaptic traces y (N,) (see ``labkit.snn.lif`` for the rule and its order within a step). When the
group's presynaptic spikes are known by the time its postsynaptic population is stepped (a spike source, the
population itself, or a population added earlier) the update is fused into that population's ``lif_step`` call;
otherwise it runs as a separate ``stdp_step`` after all populations have stepped. The result is the same.

Monitors. Spikes of every population are recorded (``record_spikes=False`` in ``add_*`` turns it off); voltages of
the neurons named in ``monitor_voltage`` are recorded after each step (after the reset: a spiking neuron shows
v_reset at its spike time).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import torch

from labkit import viz
from labkit.runtime import progress, progress_enabled
from labkit.snn.lif import LIFParams, STDPParams

__all__ = ["Network", "Population", "SynapseGroup"]


@dataclass(eq=False)
class Population:
    """A group of n neurons: ``kind`` "lif" (with ``params``, state v, I, refrac, i_ext and the delay ring buffer)
    or "source" (spikes given in advance: ``source_steps`` / ``source_neurons``, sorted by step)."""

    name: str
    n: int
    kind: str
    params: LIFParams | None = None
    record_spikes: bool = True
    v: torch.Tensor | None = None
    I: torch.Tensor | None = None
    refrac: torch.Tensor | None = None
    i_ext: torch.Tensor | None = None
    buffer: torch.Tensor | None = None
    source_steps: np.ndarray | None = None
    source_neurons: np.ndarray | None = None
    voltage_idx: torch.Tensor | None = None
    _spike_log: list = field(default_factory=list)  # (steps (k,), neurons (k,)) numpy chunks
    _v_log: list = field(default_factory=list)  # (steps (s,), V (s, m)) numpy chunks

    def __repr__(self) -> str:
        return f"Population({self.name!r}, n={self.n}, kind={self.kind!r})"


@dataclass(eq=False)
class SynapseGroup:
    """Synapses from ``pre`` (M neurons) to ``post`` (N neurons): dense ``W`` (M, N), or CSR ``indptr`` (M+1,),
    ``indices`` (E,), ``weights`` (E,); ``delays`` an int or per-synapse integer tensor (steps); optional STDP with
    traces ``x`` (M,), ``y`` (N,)."""

    name: str
    pre: Population
    post: Population
    W: torch.Tensor | None = None
    indptr: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    delays: int | torch.Tensor = 1
    stdp: STDPParams | None = None
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None

    @property
    def dense(self) -> bool:
        return self.W is not None

    @property
    def max_delay(self) -> int:
        d = self.delays
        return int(d.max()) if isinstance(d, torch.Tensor) and d.numel() else (0 if isinstance(d, torch.Tensor)
                                                                                 else int(d))

    def __repr__(self) -> str:
        kind = "dense" if self.dense else f"CSR E={self.indices.numel()}"
        return f"SynapseGroup({self.name!r}, {self.pre.name} -> {self.post.name}, {kind}, stdp={self.stdp is not None})"


def _as_tensor(name: str, value, dtype, device) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).to(
            device=device, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from err


class Network:
    """A spiking network simulated in steps of ``dt`` (ms) with the fused kernels of ``labkit.kernels``.

    dt: the step (> 0); backend: "auto" | "torch" | "numba" | "triton" (``labkit.kernels`` resolves "auto" by
    device); dtype: torch.float64 (default) or torch.float32 for the state and weights; device: where the state lives.
    """

    def __init__(self, dt: float = 1.0, backend: str = "auto", dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu"):
        if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive finite number (ms), got {dt!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        from labkit.kernels._dispatch import check_backend

        self.device = torch.device(device)
        if backend != "auto":
            check_backend(backend, self.device, op="Network")
        self.dt = float(dt)
        self.backend = backend
        self.dtype = dtype
        self.populations: dict[str, Population] = {}
        self.groups: list[SynapseGroup] = []
        self.step_count = 0  # n: the state is at t_n = n·dt
        self._D: int | None = None  # ring-buffer slots, fixed by the first run
        self._packed: dict = {}  # id(CSR group) -> (key, indptr, packed targets) for the Numba loop

    # ---- building ------------------------------------------------------------------------------------

    @property
    def t(self) -> float:
        """The current time (ms)."""
        return self.step_count * self.dt

    def _new_name(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if name in self.populations:
            raise ValueError(f"a population named {name!r} exists already")
        if self._D is not None:
            raise RuntimeError("the network has run already: add populations and synapses before the first run()")
        return name

    def _vec(self, name: str, value, n: int, default: float) -> torch.Tensor:
        if value is None:
            return torch.full((n,), default, dtype=self.dtype, device=self.device)
        t = _as_tensor(name, value, self.dtype, self.device)
        if t.dim() == 0:
            return t.expand(n).clone()
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be a number or have shape (n,) = ({n},), got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got inf or nan")
        return t.clone()

    def add_lif(self, name: str, n: int, params: LIFParams | None = None, v0=None, i_ext=None,
                record_spikes: bool = True) -> Population:
        """A population of n LIF neurons. params: ``LIFParams`` (default ``LIFParams()``); v0: initial potential
        (number or (n,); default v_rest); i_ext: external current (number or (n,), held constant; default none,
        settable later as ``pop.i_ext``)."""
        name = self._new_name(name)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        params = LIFParams() if params is None else params
        if not isinstance(params, LIFParams):
            raise TypeError(f"params must be a LIFParams, got {type(params).__name__}")
        params.coefficients(self.dt)  # t_ref must be a whole number of steps
        pop = Population(name, int(n), "lif", params, record_spikes,
                         v=self._vec("v0", v0, n, params.v_rest),
                         I=torch.zeros(n, dtype=self.dtype, device=self.device),
                         refrac=torch.zeros(n, dtype=torch.int32, device=self.device),
                         i_ext=None if i_ext is None else self._vec("i_ext", i_ext, n, 0.0))
        self.populations[name] = pop
        return pop

    def add_spike_source(self, name: str, n: int, spike_times, record_spikes: bool = True) -> Population:
        """n neurons that spike at given times (ms). spike_times: a list of n sequences (the times of each neuron),
        or a pair (times, neurons) of equal-length arrays. Times are rounded to the grid and must be >= dt."""
        name = self._new_name(name)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if isinstance(spike_times, tuple) and len(spike_times) == 2:
            times = np.asarray(spike_times[0], dtype=np.float64).reshape(-1)
            neurons = np.asarray(spike_times[1]).reshape(-1)
            if times.shape != neurons.shape:
                raise ValueError(f"spike_times (times, neurons) must have equal lengths, got {times.size} and "
                                 f"{neurons.size}")
            if neurons.size and not np.issubdtype(neurons.dtype, np.integer):
                raise TypeError(f"spike_times neurons must be integers, got {neurons.dtype}")
        else:
            seqs = list(spike_times)
            if len(seqs) != n:
                raise ValueError(f"spike_times must list one sequence per neuron (n = {n}), got {len(seqs)}")
            times = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in seqs]) if n else np.zeros(0)
            neurons = np.concatenate([np.full(len(np.atleast_1d(s)), i) for i, s in enumerate(seqs)]) if n \
                else np.zeros(0, np.int64)
        neurons = neurons.astype(np.int64)
        if neurons.size and (neurons.min() < 0 or neurons.max() >= n):
            raise ValueError(f"spike_times neurons must lie in 0..n-1 = 0..{n - 1}, got values from {neurons.min()} "
                             f"to {neurons.max()}")
        if times.size and not np.isfinite(times).all():
            raise ValueError("spike_times must be finite")
        steps = np.rint(times / self.dt).astype(np.int64)
        if steps.size and steps.min() < 1:
            raise ValueError(f"spike_times must be >= dt = {self.dt} (the first step ends at t = dt), got "
                             f"{times.min()}")
        order = np.lexsort((neurons, steps))
        pop = Population(name, int(n), "source", None, record_spikes, source_steps=steps[order],
                         source_neurons=neurons[order])
        self.populations[name] = pop
        return pop

    def _pop(self, pop) -> Population:
        if isinstance(pop, Population):
            if self.populations.get(pop.name) is not pop:
                raise ValueError(f"population {pop.name!r} does not belong to this network")
            return pop
        if pop not in self.populations:
            raise ValueError(f"no population named {pop!r}; have {sorted(self.populations)}")
        return self.populations[pop]

    def connect(self, pre, post, weights, delay=1, stdp: STDPParams | None = None,
                name: str | None = None) -> SynapseGroup:
        """Synapses from ``pre`` (M neurons) to the LIF population ``post`` (N neurons).

        weights: dense (M, N) (tensor or array; row = presynaptic), or CSR as a tuple (indptr (M+1,), indices (E,),
        weights (E,)), a scipy.sparse matrix or a torch sparse CSR tensor. delay: steps >= 0, an int or per-synapse
        integers ((M, N) dense, (E,) CSR). stdp: ``STDPParams`` makes the group plastic (dense weights only)."""
        if self._D is not None:
            raise RuntimeError("the network has run already: add populations and synapses before the first run()")
        pre, post = self._pop(pre), self._pop(post)
        if post.kind != "lif":
            raise ValueError(f"post must be a LIF population, got the spike source {post.name!r}")
        M, N = pre.n, post.n
        name = name or f"{pre.name}->{post.name}"
        if any(g.name == name for g in self.groups):
            raise ValueError(f"a synapse group named {name!r} exists already")
        g = SynapseGroup(name, pre, post)
        if hasattr(weights, "tocsr") and not isinstance(weights, torch.Tensor):  # scipy.sparse
            weights = weights.tocsr()
            weights = (weights.indptr, weights.indices, weights.data)
        elif isinstance(weights, torch.Tensor) and weights.layout == torch.sparse_csr:
            weights = (weights.crow_indices(), weights.col_indices(), weights.values())
        if isinstance(weights, tuple):
            if len(weights) != 3:
                raise ValueError(f"CSR weights must be a tuple (indptr, indices, weights), got {len(weights)} items")
            indptr = _as_tensor("indptr", weights[0], torch.int64, self.device)
            indices = _as_tensor("indices", weights[1], torch.int64, self.device)
            w = _as_tensor("weights", weights[2], self.dtype, self.device)
            if tuple(indptr.shape) != (M + 1,):
                raise ValueError(f"indptr must have shape (M+1,) = ({M + 1},) (M = pre.n), got {tuple(indptr.shape)}")
            E = indices.numel()
            if tuple(w.shape) != (E,) or indices.dim() != 1:
                raise ValueError(f"CSR indices and weights must be 1-D of one length, got {tuple(indices.shape)} and "
                                 f"{tuple(w.shape)}")
            if int(indptr[0]) != 0 or int(indptr[-1]) != E or (M and bool((indptr[1:] < indptr[:-1]).any())):
                raise ValueError(f"indptr must rise from 0 to len(indices) = {E}")
            if E and (int(indices.min()) < 0 or int(indices.max()) >= N):
                raise ValueError(f"indices must lie in 0..N-1 = 0..{N - 1} (N = post.n), got values from "
                                 f"{int(indices.min())} to {int(indices.max())}")
            g.indptr, g.indices, g.weights = indptr, indices, w
            syn_shape = (E,)
        else:
            W = _as_tensor("weights", weights, self.dtype, self.device)
            if tuple(W.shape) != (M, N):
                raise ValueError(f"dense weights must have shape (pre.n, post.n) = ({M}, {N}), got {tuple(W.shape)}")
            g.W = W.contiguous().clone()
            syn_shape = (M, N)
        w_all = g.W if g.dense else g.weights
        if w_all.numel() and not bool(torch.isfinite(w_all).all()):
            raise ValueError("weights must be finite, got inf or nan")
        if isinstance(delay, numbers.Integral) and not isinstance(delay, bool):
            if delay < 0:
                raise ValueError(f"delay must be >= 0 steps, got {delay}")
            g.delays = int(delay)
        else:
            d = torch.as_tensor(delay if isinstance(delay, torch.Tensor) else np.asarray(delay), device=self.device)
            if d.is_floating_point() or d.dtype == torch.bool:
                raise TypeError(f"delay must be an int or integer steps per synapse, got {d.dtype} (steps, not ms)")
            if tuple(d.shape) != syn_shape:
                raise ValueError(f"delay must be an int or have shape {syn_shape} (one per synapse), got "
                                 f"{tuple(d.shape)}")
            if d.numel() and int(d.min()) < 0:
                raise ValueError(f"delay must be >= 0 steps, got a minimum of {int(d.min())}")
            g.delays = d.long().contiguous()
        if stdp is not None:
            if not isinstance(stdp, STDPParams):
                raise TypeError(f"stdp must be an STDPParams or None, got {type(stdp).__name__}")
            if not g.dense:
                raise ValueError("stdp needs dense (all-to-all) weights, got CSR weights")
            g.stdp = stdp
            g.x = torch.zeros(M, dtype=self.dtype, device=self.device)
            g.y = torch.zeros(N, dtype=self.dtype, device=self.device)
        self.groups.append(g)
        return g

    def monitor_voltage(self, pop, neurons=None) -> None:
        """Record the membrane potential of ``neurons`` (indices; None: all) of the LIF population ``pop``."""
        pop = self._pop(pop)
        if pop.kind != "lif":
            raise ValueError(f"voltages exist only for LIF populations, got the spike source {pop.name!r}")
        idx = torch.arange(pop.n) if neurons is None else torch.as_tensor(np.asarray(neurons), dtype=torch.int64)
        idx = idx.reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= pop.n):
            raise ValueError(f"neurons must lie in 0..n-1 = 0..{pop.n - 1}, got values from {int(idx.min())} to "
                             f"{int(idx.max())}")
        if pop._v_log:
            raise RuntimeError(f"{pop.name!r} already records voltages: choose the neurons before the first run")
        pop.voltage_idx = idx.to(self.device)

    # ---- running -------------------------------------------------------------------------------------

    def _prepare(self):
        from labkit.kernels._dispatch import resolve_backend

        if self._D is None:
            self._D = max([g.max_delay for g in self.groups], default=0) + 1
            for pop in self.populations.values():
                if pop.kind == "lif":
                    pop.buffer = torch.zeros(self._D, pop.n, dtype=self.dtype, device=self.device)
        backend = resolve_backend(self.backend, self.device, op="lif_step")
        lifs = [p for p in self.populations.values() if p.kind == "lif"]
        order = {id(p): k for k, p in enumerate(lifs)}
        fused, separate = {}, []
        for g in self.groups:
            if g.stdp is None:
                continue
            ready = g.pre.kind == "source" or order[id(g.pre)] <= order[id(g.post)]
            if ready and id(g.post) not in fused:
                fused[id(g.post)] = g
            else:
                separate.append(g)
        coeffs = {id(p): p.params.coefficients(self.dt) for p in lifs}
        stdp = {id(g): g.stdp.coefficients(self.dt) for g in self.groups if g.stdp is not None}
        return backend, lifs, fused, separate, coeffs, stdp

    def _source_spikes(self, pop: Population, step: int) -> torch.Tensor:
        lo, hi = np.searchsorted(pop.source_steps, [step, step + 1])
        spk = torch.zeros(pop.n, dtype=torch.bool, device=self.device)
        if hi > lo:
            spk[torch.as_tensor(pop.source_neurons[lo:hi], device=self.device)] = True
        return spk

    def run(self, T: float, show_progress: bool | None = None) -> Network:
        """Advance the network by T ms (rounded to whole steps). show_progress: a tqdm bar (None: for runs of
        1000 steps or more; ``LABKIT_PROGRESS=0`` silences it). Returns the network."""
        from labkit.kernels.lif_step import lif_step, stdp_step
        from labkit.kernels.spike_propagate import spike_propagate

        if isinstance(T, bool) or not isinstance(T, numbers.Real) or not (math.isfinite(T) and T >= 0):
            raise ValueError(f"T must be a finite number of ms >= 0, got {T!r}")
        n_steps = int(round(T / self.dt))
        backend, lifs, fused, separate, coeffs, stdp = self._prepare()
        D = self._D
        pops = list(self.populations.values())
        show = (n_steps >= 1000) if show_progress is None else bool(show_progress)
        bar = progress(range(n_steps), total=n_steps, desc=f"simulating {n_steps} steps",
                       disable=not (show and progress_enabled()))
        spk_steps = {p.name: [] for p in pops}
        spk_ids = {p.name: [] for p in pops}
        v_steps = {p.name: [] for p in lifs}
        v_vals = {p.name: [] for p in lifs}
        if backend == "numba":  # the same steps, with the compiled kernels called directly (checked once per run)
            self._run_numba(bar, n_steps, lifs, fused, separate, coeffs, stdp, spk_steps, spk_ids, v_steps, v_vals)
            bar = ()
        for _ in bar:
            n = self.step_count
            spikes = {}
            for p in pops:
                if p.kind == "source":
                    spikes[id(p)] = self._source_spikes(p, n + 1)
            for p in lifs:
                slot = p.buffer[n % D]
                g = fused.get(id(p))
                if g is None:
                    spikes[id(p)] = lif_step(p.v, p.I, p.refrac, slot, coeffs[id(p)], p.i_ext, backend=backend)
                else:
                    spikes[id(p)] = lif_step(p.v, p.I, p.refrac, slot, coeffs[id(p)], p.i_ext, W=g.W, x=g.x, y=g.y,
                                             pre_spiked=None if g.pre is p else spikes[id(g.pre)], stdp=stdp[id(g)],
                                             backend=backend)
                slot.zero_()
            for g in separate:
                stdp_step(g.W, g.x, g.y, spikes[id(g.pre)], spikes[id(g.post)], stdp[id(g)], backend=backend)
            for g in self.groups:
                idx = torch.nonzero(spikes[id(g.pre)]).flatten()
                if idx.numel():
                    if g.dense:
                        spike_propagate(g.post.buffer, n + 1, idx, g.W, delays=g.delays, backend=backend,
                                        validate=False)
                    else:
                        spike_propagate(g.post.buffer, n + 1, idx, g.weights, g.indptr, g.indices, g.delays,
                                        backend=backend, validate=False)
            for p in pops:
                if p.record_spikes:
                    idx = torch.nonzero(spikes[id(p)]).flatten()
                    if idx.numel():
                        spk_ids[p.name].append(idx.cpu().numpy())
                        spk_steps[p.name].append(np.full(idx.numel(), n + 1, np.int64))
            for p in lifs:
                if p.voltage_idx is not None:
                    v_steps[p.name].append(n + 1)
                    v_vals[p.name].append(p.v[p.voltage_idx].cpu().numpy().copy())
            self.step_count = n + 1
        for p in pops:
            if spk_ids[p.name]:
                p._spike_log.append((np.concatenate(spk_steps[p.name]), np.concatenate(spk_ids[p.name])))
            if p.kind == "lif" and v_steps[p.name]:
                p._v_log.append((np.asarray(v_steps[p.name], np.int64), np.stack(v_vals[p.name])))
        return self

    def _run_numba(self, bar, n_steps, lifs, fused, separate, coeffs, stdp, spk_steps, spk_ids, v_steps, v_vals):
        """``run``'s loop on the CPU with the Numba backend: the same kernels in the same order as the generic loop
        (``lif_step``'s and ``spike_propagate``'s Numba implementations), with their arguments prepared once per run
        instead of checked and converted every step: numpy views of the state, each population's spiking indices
        found once per step, CSR targets packed as d·N + j (cached while the synapses are unchanged)."""
        from labkit.kernels.lif_step import _check_vec, _consts, _lif_step, lif_step, stdp_step
        from labkit.kernels.spike_propagate import _csr_scatter_packed, _dense_scatter

        D = self._D
        pops = list(self.populations.values())
        n0 = self.step_count
        plastic = {id(g.pre) for g in self.groups if g.stdp is not None} | {
            id(g.post) for g in self.groups if g.stdp is not None}
        lif_args, spiked = {}, {}
        for p in lifs:
            npdt = p.v.numpy().dtype
            spiked[id(p)] = np.empty(p.n, np.bool_)
            if p.i_ext is not None:  # settable between runs: the check of lif_step
                _check_vec("i_ext", p.i_ext, p.n, self.dtype, self.device)
            i_ext = np.zeros(p.n, npdt) if p.i_ext is None else np.ascontiguousarray(p.i_ext.numpy())
            lif_args[id(p)] = (p.v.numpy(), p.I.numpy(), p.refrac.numpy(), p.buffer.numpy(), i_ext,
                               _consts(coeffs[id(p)], self.dtype, "cpu").numpy(), int(coeffs[id(p)].n_ref),
                               spiked[id(p)], np.empty((0, 0), npdt), np.empty(0, npdt), np.empty(0, npdt),
                               np.empty(0, np.bool_), True, np.zeros(6, npdt))
        sources = {}
        for p in pops:
            if p.kind == "source":  # a neuron listed twice in one step spikes once, as in _source_spikes
                steps, ids = p.source_steps, p.source_neurons
                keep = np.ones(steps.size, bool)
                keep[1:] = (steps[1:] != steps[:-1]) | (ids[1:] != ids[:-1])
                steps, ids = steps[keep], ids[keep]
                sources[id(p)] = (ids, np.searchsorted(steps, np.arange(n0 + 1, n0 + n_steps + 2)))
        prop = [(g, self._numba_synapses(g)) for g in self.groups]
        voltage = [(p, p.v.numpy(), p.voltage_idx.numpy()) for p in lifs if p.voltage_idx is not None]
        recorded = [p for p in pops if p.record_spikes]
        key = {id(p): k for k, p in enumerate(pops)}  # the loop indexes populations by position
        src_plan = [(key[id(p)], *sources[id(p)], id(p) in plastic, p.n) for p in pops if p.kind == "source"]
        lif_plan = [(key[id(p)], p, lif_args[id(p)], spiked[id(p)], fused.get(id(p)), id(p) in plastic) for p in lifs]
        sep_plan = [(g, key[id(g.pre)], key[id(g.post)]) for g in separate]
        prop_plan = [(key[id(g.pre)], g.dense, syn, g.post.n) for g, syn in prop]
        rec_plan = [(key[id(p)], p.name) for p in recorded]
        rec_steps = {p.name: [] for p in recorded}
        rec_counts = {p.name: [] for p in recorded}
        idx = [None] * len(pops)
        spikes = [None] * len(pops)  # torch bool masks, for the populations that STDP reads
        for m in bar:
            n = n0 + m
            for q, ids, bounds, is_plastic, size in src_plan:
                idx[q] = ids[bounds[m]:bounds[m + 1]]
                if is_plastic:
                    mask = torch.zeros(size, dtype=torch.bool)
                    mask[torch.from_numpy(idx[q])] = True
                    spikes[q] = mask
            for q, p, a, spk, g, is_plastic in lif_plan:
                if g is None:
                    slot = a[3][n % D]
                    _lif_step(a[0], a[1], a[2], slot, *a[4:])
                    slot.fill(0)
                    if is_plastic:
                        spikes[q] = torch.from_numpy(spk.copy())
                else:
                    slot = p.buffer[n % D]
                    spikes[q] = lif_step(p.v, p.I, p.refrac, slot, coeffs[id(p)], p.i_ext, W=g.W, x=g.x, y=g.y,
                                         pre_spiked=None if g.pre is p else spikes[key[id(g.pre)]], stdp=stdp[id(g)],
                                         backend="numba")
                    slot.zero_()
                    spk = spikes[q].numpy()
                idx[q] = np.flatnonzero(spk)
            for g, q_pre, q_post in sep_plan:
                stdp_step(g.W, g.x, g.y, spikes[q_pre], spikes[q_post], stdp[id(g)], backend="numba")
            for q, dense, syn, n_post in prop_plan:
                rows = idx[q]
                if rows.size:
                    if dense:
                        _dense_scatter(syn[0], n + 1, rows, *syn[1:])
                    else:
                        _csr_scatter_packed(syn[0], ((n + 1) % D) * n_post, rows, *syn[1:])
            for q, name in rec_plan:
                if idx[q].size:  # fresh arrays (flatnonzero) or views of this run's source arrays: kept as they are
                    spk_ids[name].append(idx[q])
                    rec_steps[name].append(n + 1)
                    rec_counts[name].append(idx[q].size)
            for p, v, vi in voltage:
                v_steps[p.name].append(n + 1)
                v_vals[p.name].append(v[vi])
            self.step_count = n + 1
        for name, steps in rec_steps.items():
            if steps:
                spk_steps[name].append(np.repeat(np.asarray(steps, np.int64), rec_counts[name]))

    def _numba_synapses(self, g: SynapseGroup) -> tuple:
        """The arguments of the Numba scatter of group g after the buffer: dense (buffer (D, N), W, delays (M, N) or
        (0, 0), d_all); CSR (flat buffer (D·N,), indptr, code, weights) with code = d·N + j, cached on the network
        while indices and delays are the same tensors, unmodified (their data pointer and version)."""
        from labkit.kernels.spike_propagate import _csr_codes

        D, N = self._D, g.post.n
        buf = g.post.buffer.numpy()
        per = isinstance(g.delays, torch.Tensor)
        if g.dense:
            d = np.ascontiguousarray(g.delays.numpy()) if per else np.zeros((0, 0), np.int64)
            return buf, np.ascontiguousarray(g.W.numpy()), d, 0 if per else int(g.delays)
        key = (g.indices.data_ptr(), g.indices._version, D) + (
            (g.delays.data_ptr(), g.delays._version) if per else (int(g.delays),))
        cache = self._packed
        if cache.get(id(g), (None,))[0] != key:
            code = _csr_codes(D, N, g.indices.numpy(), g.delays.numpy() if per else int(g.delays))
            cache[id(g)] = (key, np.ascontiguousarray(g.indptr.numpy()), code)
        _, indptr, code = cache[id(g)]
        return buf.reshape(-1), indptr, code, np.ascontiguousarray(g.weights.numpy())

    # ---- results ---------------------------------------------------------------------------------------

    def spikes(self, pop) -> tuple[np.ndarray, np.ndarray]:
        """(times (K,) ms, neurons (K,) int64) of every recorded spike of ``pop``, in time order."""
        pop = self._pop(pop)
        if not pop._spike_log:
            return np.zeros(0), np.zeros(0, np.int64)
        steps = np.concatenate([s for s, _ in pop._spike_log])
        ids = np.concatenate([i for _, i in pop._spike_log])
        return steps * self.dt, ids

    def spike_counts(self, pop) -> np.ndarray:
        """(n,) the number of recorded spikes of each neuron of ``pop``."""
        pop = self._pop(pop)
        return np.bincount(self.spikes(pop)[1], minlength=pop.n)

    def spike_matrix(self, pop) -> np.ndarray:
        """(step_count + 1, n) bool: row k marks the spikes at t_k = k·dt (row 0 is the initial state)."""
        pop = self._pop(pop)
        out = np.zeros((self.step_count + 1, pop.n), bool)
        times, ids = self.spikes(pop)
        out[np.rint(times / self.dt).astype(np.int64), ids] = True
        return out

    def voltages(self, pop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times (S,) ms, V (S, m), neurons (m,)) of the monitored neurons of ``pop`` after each step."""
        pop = self._pop(pop)
        if pop.voltage_idx is None:
            raise ValueError(f"no voltages recorded for {pop.name!r}: call monitor_voltage before run")
        neurons = pop.voltage_idx.cpu().numpy()
        if not pop._v_log:
            return np.zeros(0), np.zeros((0, neurons.size)), neurons
        steps = np.concatenate([s for s, _ in pop._v_log])
        return steps * self.dt, np.concatenate([v for _, v in pop._v_log]), neurons

    # ---- figures ---------------------------------------------------------------------------------------

    def raster_figure(self, pops=None, title: str = "Spike raster") -> go.Figure:
        """A raster of the populations ``pops`` (default: all), stacked bottom to top in the order given, through
        ``labkit.viz.raster``; time in ms."""
        pops = list(self.populations.values()) if pops is None else [self._pop(p) for p in pops]
        mats = [self.spike_matrix(p) for p in pops]
        spikes = np.concatenate(mats, axis=1) if mats else np.zeros((self.step_count + 1, 0), bool)
        fig = viz.raster(spikes, dt=self.dt, title=title)
        offsets = np.cumsum([0] + [p.n for p in pops])
        for boundary in offsets[1:-1]:
            fig.add_hline(y=boundary - 0.5, line=dict(color=viz.PALETTE[5], width=1, dash="dot"))
        fig.update_yaxes(tickvals=[(offsets[k] + offsets[k + 1] - 1) / 2 for k in range(len(pops))],
                         ticktext=[p.name for p in pops])
        fig.update_layout(xaxis_title="time (ms)", xaxis_range=[0, self.t + self.dt])
        return fig

    def voltage_figure(self, pop, title: str | None = None) -> go.Figure:
        """The recorded membrane potentials of ``pop`` (one line per monitored neuron) with the threshold dashed."""
        pop = self._pop(pop)
        times, V, neurons = self.voltages(pop)
        fig = go.Figure()
        for k, i in enumerate(neurons):
            fig.add_trace(go.Scatter(x=times, y=V[:, k], mode="lines", name=f"{pop.name}[{int(i)}]",
                                     line=dict(color=viz.PALETTE[k % len(viz.PALETTE)], width=1.5)))
        if times.size:
            viz.reference_line(fig, [times[0], times[-1]], [pop.params.v_th] * 2, name="v_th")
        fig.update_layout(title=title or f"Membrane potential: {pop.name}", xaxis_title="time (ms)",
                          yaxis_title="v (mV)")
        return fig
