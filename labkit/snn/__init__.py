"""Chapter 6, spiking memory: a leaky integrate-and-fire simulator whose synapses learn by spike timing.

- ``lif``: the neuron and the learning rule as numbers. ``LIFParams`` (current-based LIF with an exponential
  synaptic current, refractory period; validated) and its exact one-step propagator ``LIFParams.coefficients(dt)``
  -> ``LIFCoeffs``; ``STDPParams`` (pair-based STDP with exponential traces, additive bounded weights) ->
  ``STDPCoeffs``, and its pair window ``stdp_window``; ``lif_closed_form`` (the sub-threshold membrane
  potential of one neuron in continuous time, for tests and for an "exact vs Euler" figure) and
  ``first_spike_time`` (constant input; from v_reset by default).
- ``network``: ``Network``: LIF populations and spike-source populations (``add_lif``, ``add_spike_source``),
  synapse groups with dense or CSR weights, integer delays in steps and optional STDP (``connect``),
  ``run(T)`` with spike and voltage monitors, and the plotly figures ``raster_figure`` / ``voltage_figure``.
  One simulation step is done by the fused kernels ``labkit.kernels.lif_step`` (neurons + traces + STDP) and
  ``labkit.kernels.spike_propagate`` (event-driven scatter of the spiking rows into the delay ring buffer).

- ``cam``: the CA3 content-addressable memory of Casanueva-Morato et al.: cue and content populations with the
  gating cells of the paper's model, 1 ms steps, learn / recall by cue / recall by content / forget by relearning
  as scheduled operations (``CA3Memory.run``); the paper's functional, stress and application tests, a scale-up to
  64 cues x 256 bits and a capacity run, with the conversions from SpiNNaker's conventions documented.
- ``hlop``: Hebbian learning based orthogonal projection (Xiao et al.): lateral neurons that learn the principal
  subspace of each layer's inputs by a Hebbian (Oja / Sanger) rule, optionally spiking, and the projection of
  later tasks' weight updates out of it; experiments on split-digits against naive training and an SVD projection.
- ``figures``: the small experiments behind the chapter's first figures (exact vs Euler integration, STDP pairs,
  correlated inputs selected by STDP, the share of synapses event-driven propagation touches).

The submodules are imported on first use (``labkit.snn.Network`` imports ``labkit.snn.network``), so importing
``labkit.snn`` costs nothing until a name is asked for.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "CA3Memory": "cam",
    "CA3Params": "cam",
    "Learn": "cam",
    "OpResult": "cam",
    "RecallContent": "cam",
    "RecallCue": "cam",
    "HebbianSubspace": "hlop",
    "hlop_experiment": "hlop",
    "principal_angles": "hlop",
    "LIFCoeffs": "lif",
    "LIFParams": "lif",
    "STDPCoeffs": "lif",
    "STDPParams": "lif",
    "first_spike_time": "lif",
    "lif_closed_form": "lif",
    "stdp_window": "lif",
    "Network": "network",
    "Population": "network",
    "SynapseGroup": "network",
}

_MODULES = ("cam", "figures", "hlop", "lif", "network")
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        module = importlib.import_module(f"labkit.snn.{_NAMES[name]}")
        return getattr(module, name)
    if name in _MODULES:
        return importlib.import_module(f"labkit.snn.{name}")
    raise AttributeError(f"module 'labkit.snn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_MODULES])
