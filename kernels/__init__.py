"""Fused ops behind the book, installed as ``labkit.kernels``.

One module per op. Each holds ``reference`` (plain torch, the spec), a ``numba_...`` CPU version, a
``triton_...`` GPU version, and one public function that checks its inputs and dispatches by device and
``backend=`` ("auto" | "torch" | "numba" | "triton"). ``available_backends()`` lists what runs here.

Triton runs on the CPU only through its interpreter, and ``TRITON_INTERPRET=1`` must be set before this
package is imported (Triton reads it when the kernels are defined).
"""

from __future__ import annotations

from ._dispatch import BACKENDS, available_backends
from .attend import attend
from .delta_rule import delta_rule
from .delta_step import delta_step
from .evict_compact import evict_compact
from .lif_step import lif_step, stdp_step
from .merge_update import merge_update
from .opcm_project import opcm_project
from .ppr import ppr, ppr_transition
from .project_attend import project_attend
from .quant_attend import quant_attend
from .sdr_match import sdr_match
from .sim_topk import sim_topk
from .spike_propagate import spike_propagate
from .ties_merge import ties_merge
from .titans_update import titans_update
from .tree_attend import tree_attend
from .verify_sample import verify_sample

__all__ = ["BACKENDS", "attend", "available_backends", "delta_rule", "delta_step", "evict_compact", "lif_step",
           "merge_update", "opcm_project", "ppr", "ppr_transition", "project_attend", "quant_attend", "sdr_match",
           "sim_topk", "spike_propagate", "stdp_step", "ties_merge", "titans_update", "tree_attend", "verify_sample"]
