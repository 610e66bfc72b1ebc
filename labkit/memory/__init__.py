"""Chapter 3, neural memory: sequence mixers that store what they read, and the recall benches that test them.

- ``base``: the ``Mixer`` interface (``y, state = mixer(x, state)``), ``MemoryState`` and head helpers.
- ``attention``: softmax attention, whose memory (the KV cache) grows with the sequence.
- ``linear``: linear attention, a fixed-size outer-product memory written by addition.
- ``deltanet``: DeltaNet and Gated DeltaNet, the same memory written by the delta rule (with decay).
- ``titans``: Titans, a deep MLP memory trained online by gradient steps with momentum, and its MAG/MAC hybrids.
- ``atlas``: Atlas, a memory optimised over a window of past tokens instead of one at a time.
- ``mom``: mixture of memories, several memories with a router (its load-balancing loss is ``aux_loss``).
- ``lssl``: a linear state-space layer (HiPPO-initialised continuous-time memory, discretised).
- ``model``: ``MemoryLM``, a small language model whose blocks use any of these mixers.
- ``train``: training and evaluation on the recall tasks of ``labkit.data.recall`` (``mqar_run``: one point).
- ``sweep``: MQAR accuracy against state size for every mixer (the chapter's main figure; a CLI).
- ``hmt``: the Hierarchical Memory Transformer, segment recurrence with a searched cache of memory embeddings.
- ``perk``: PERK, a context written into a LoRA adapter by a meta-learned inner loop, against reading it in context.
- ``fastslow``: a neural memory network whose controller also takes fast steps on synthetic gradients.
- ``pointer``: pointer networks (attention as the output) against seq2seq with a fixed output dictionary.
- ``permutation``: learning a permutation from the k basis vectors with an ensemble of NTK-regime nets.
- ``critical``: Synaptic Resonance and Contextual Memory Reweaving, written down from their abstracts and tested.

Mixers are looked up by name (``make_mixer("deltanet", 64)``); the registry imports each module only
when it is used.
"""

from __future__ import annotations

import importlib

from labkit.memory.base import MemoryState, Mixer

__all__ = ["MIXERS", "MemoryState", "Mixer", "make_mixer", "mixer_class"]

# name -> "module:Class" under labkit.memory, imported on first use. A value may also be a dotted
# "package.module:Class" or a class itself (a stand-in registered by a test or a notebook).
MIXERS: dict[str, str | type] = {
    "attention": "attention:SoftmaxAttention",
    "linear": "linear:LinearAttention",
    "deltanet": "deltanet:DeltaNet",
    "gated_deltanet": "deltanet:GatedDeltaNet",
    "titans": "titans:Titans",
    "titans_mag": "titans:TitansMAG",
    "titans_mac": "titans:TitansMAC",
    "atlas": "atlas:Atlas",
    "mom": "mom:MoM",
    "lssl": "lssl:LSSL",
}


def mixer_class(name: str) -> type:
    """The class registered under ``name`` (imports its module)."""
    if name not in MIXERS:
        raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {name!r}")
    entry = MIXERS[name]
    if isinstance(entry, type):
        return entry
    module, cls = entry.split(":")
    return getattr(importlib.import_module(module if "." in module else f"labkit.memory.{module}"), cls)


def make_mixer(name: str, d_model: int, n_heads: int = 1, **options) -> Mixer:
    """A fresh mixer ``MIXERS[name](d_model, n_heads, **options)``."""
    return mixer_class(name)(d_model, n_heads=n_heads, **options)
