"""Chapter 6, classical associative memories: the baselines the spiking memory is compared with.

- ``hopfield``: the classical Hopfield network (Hebbian weights, synchronous and asynchronous recall, energy,
  capacity vs load against the 0.138 N line of Amit, Gutfreund & Sompolinsky and the signal-to-noise bit error
  ``Φ(−sqrt(N/P))``) and the modern one (``ξ ← X softmax(β Xᵀ ξ)``, one attention step; its energy and
  exponential capacity). Builds on the prologue's memories (``labkit.prologue``), which it imports.
- ``sdr``: sparse distributed representations (Ahmad & Hawkins): overlap, the exact false-match probability in
  log space, subsampling, the union property (the paper's approximation and the exact average), and
  simulations with binomial error bars on the bit-packed kernel ``labkit.kernels.sdr_match``.
- ``sparsey``: a simplified Sparsey coding field (Rinkus): Q winner-take-all modules of K cells, familiarity-gated
  noise in code selection (similar inputs → similar codes, novel inputs → random codes), single-trial Hebbian
  learning, best-match retrieval.
- ``multitask``: the multitasking Hebbian network (Agliari et al.): diluted patterns, Hebbian couplings from
  patterns or from noisy examples (supervised / unsupervised), Glauber dynamics, Mattis magnetizations, the
  hierarchical and parallel regimes with their low-storage mean-field theory.
- ``tensor_brain``: a small Tensor Brain (Tresp et al.): an index layer of symbols with embeddings over a
  representation layer, serial semantic decoding of triples, episodic memory as time indices, semantic memory as
  what episodes share; one index-layer step is one modern-Hopfield retrieval.
- ``mbat``: MBAT vector symbolic architecture (Gallant & Okaywe): binding by random Gaussian vs orthogonal
  matrices, bundling by sums, stability with binding depth, JSON records as vectors, searched by linear algebra.

The submodules are imported on first use (``labkit.assoc.SparseyField`` imports ``labkit.assoc.sparsey``), so
importing ``labkit.assoc`` costs nothing until a name is asked for.
"""

from __future__ import annotations

import importlib

_MODULES = ("hopfield", "mbat", "multitask", "sdr", "sparsey", "tensor_brain")
_NAMES = {
    "async_recall": "hopfield",
    "capacity_experiment": "hopfield",
    "energy": "hopfield",
    "energy_path": "hopfield",
    "modern_capacity_bound": "hopfield",
    "modern_capacity_experiment": "hopfield",
    "modern_energy": "hopfield",
    "modern_retrieve": "hopfield",
    "snr_bit_error": "hopfield",
    "sync_recall": "hopfield",
    "MBATEncoder": "mbat",
    "bind": "mbat",
    "binding_matrix": "mbat",
    "bundle": "mbat",
    "bundle_experiment": "mbat",
    "depth_stability": "mbat",
    "predicted_find_accuracy": "mbat",
    "record_search_experiment": "mbat",
    "sequence_experiment": "mbat",
    "soft_similarity": "mbat",
    "unbind": "mbat",
    "MultitaskNetwork": "multitask",
    "cue_state": "multitask",
    "diluted_patterns": "multitask",
    "dilution_experiment": "multitask",
    "dilution_figure": "multitask",
    "hierarchical_magnetizations": "multitask",
    "hierarchical_threshold": "multitask",
    "learning_experiment": "multitask",
    "learning_threshold": "multitask",
    "make_examples": "multitask",
    "mattis": "multitask",
    "mean_field": "multitask",
    "phase_diagram": "multitask",
    "regime": "multitask",
    "false_match_experiment": "sdr",
    "false_match_probability": "sdr",
    "overlap": "sdr",
    "plot_rates": "sdr",
    "random_sdrs": "sdr",
    "threshold_sweep": "sdr",
    "union_experiment": "sdr",
    "union_false_match_exact": "sdr",
    "union_false_match_probability": "sdr",
    "SparseyField": "sparsey",
    "code_overlap": "sparsey",
    "predicted_fill": "sparsey",
    "recall_experiment": "sparsey",
    "similarity_experiment": "sparsey",
    "superposition_experiment": "sparsey",
    "TensorBrain": "tensor_brain",
    "TensorBrainWorld": "tensor_brain",
    "episodic_experiment": "tensor_brain",
    "index_posterior": "tensor_brain",
    "make_world": "tensor_brain",
    "perception_experiment": "tensor_brain",
    "semantic_experiment": "tensor_brain",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"labkit.assoc.{_NAMES[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"labkit.assoc.{name}")
    raise AttributeError(f"module 'labkit.assoc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_MODULES])
