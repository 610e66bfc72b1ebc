r"""A CA3-like spiking content-addressable memory (Casanueva-Morato et al., "Bio-inspired computational memory
model of the Hippocampus: an approach to a neuromorphic spike-based Content-Addressable Memory").

The memory stores up to ``n_cues`` memories, one per **cue** (an address, one-hot), each a binary **content** of
``n_content`` bits. It learns a (cue, content) pair in one shot, recalls the content from its cue, recalls every
cue whose content shares at least one active bit with a content fragment, and forgets a memory when a new
content is learned on its cue. Everything is spiking neurons and synapses (``labkit.snn.Network``), 1 ms steps.

Populations (the paper's names; ``c`` = n_cues, ``k`` = n_content; 4c + 4k + 1 internal neurons):

    IL                 c + k   input spike sources: the cue one-hot, then the content bits
    cueCueRecall       c       the cue that is presented                        (slow cells)
    contCueRecall      k       the content: presented, or recalled from the cue (slow)
    contCond           k       gate: passes content → contContRecall only when no cue is active   (fast)
    contCondInt        1       interneuron: "some content is active", excites every contCond      (fast)
    contContRecall     k       the content that drives recall by content        (slow)
    cueContRecall      c       the cues recalled from content                   (fast)
    mergeCue, mergeCont c, k   merge the two pathways of each half              (slow)
    OL                 c + k   output layer: the cue part, then the content part (slow, threshold −57.5 mV)

Neurons are current-based LIF with exponential synaptic currents (PyNN ``IF_curr_exp``; ``labkit.snn.lif``):
v_rest = v_reset = −60 mV, v_th = −57 mV, τ_syn = 0.3 ms, t_ref = 1 ms; slow cells c_m = 0.27 nF, τ_m = 3 ms;
fast cells (contCond, contCondInt, cueContRecall) c_m = 0.14 nF, τ_m = 0.5 ms:

    τ_m dv/dt = −(v − v_rest) + (τ_m / c_m) I,      τ_syn dI/dt = −I,      I ← I + w at each arriving spike.

Static wiring (weight in nA, delay in ms as in the paper's configuration; "1:1" one-to-one, "all" all-to-all,
"all≠" all-to-all but self; negative = inhibitory):

    IL → cueCueRecall, IL → contCueRecall                      1:1   6      d 1
    cueCueRecall → cueContRecall                               1:1   6      d 2
    cueCueRecall → cueContRecall                               all≠  −6k    d 3   (silences other cues)
    cueCueRecall → contCond                                    all   −6     d 2   (a cue closes the gate)
    contCueRecall → contCond                                   1:1   9      d 1
    contCueRecall → contCondInt                                all   6      d 1
    contCondInt → contCond                                     all   2      d 1
    contCond → contContRecall                                  1:1   6      d 1
    cueContRecall → cueContRecall                              all≠  −6k    d 2   (competition among cues)
    cueCueRecall → mergeCue 1:1 6 d 3;  cueContRecall → mergeCue 1:1 6 d 1
    contCueRecall → mergeCont 1:1 6 d 3;  contContRecall → mergeCont 1:1 6 d 1;  merge → OL 1:1 6 d 1

Plastic: cueCueRecall → contCueRecall (W_cc, the cue → content association) and contContRecall → cueContRecall
(W_kc, content → cue), all-to-all, initial weight 0, delay 1, pair-based STDP with τ₊ = τ₋ = 3 ms, A₊ = A₋ = 6,
w ∈ [0, 6] (``labkit.snn.lif``). A single near-coincident pair saturates the weight, so learning is one-shot.

How it works (times in steps after an input spike at t). **Learn** (cue and content held for 3 steps): cue c and
the content bits fire together in cueCueRecall / contCueRecall → W_cc[c, bits] jump to w_max; the content passes
the gate (the cue's inhibition arrives one step too late to close it), contContRecall and cueContRecall[c] fire
together → W_kc[bits, c] jump to w_max. **Recall by cue** (1 step): cueCueRecall[c] → contCueRecall[bits]
through W_cc; now the cue's inhibition (−6) meets the content's excitation (+9) at contCond at the same step and
the gate stays shut. Output: the cue at t + 5, the content at t + 6. **Recall by content** (1 step): the bits pass
the gate (no cue), contContRecall[bits] → cueContRecall through W_kc: every cue with ≥ 1 of the bits fires
(t + 6 at the output). **Forgetting**: learning cue c again with new bits: the old bits fire one step after the
new ones (through the old W_cc), the cue's second spike then depresses W_cc[c, old]; the old bits also pass the
gate one step late (contCondInt's +2 arrives together with them: 9 − 6 + 2), fire contContRecall after
cueContRecall[c] and depress W_kc[old, c].

From SpiNNaker to this simulator (what we had to change, and why; ``CA3Params`` keeps every number).

1. Delays. On SpiNNaker a spike sent at step t with delay d is added to the target's input at step t + d and can
   make the target spike in that same step. Here a LIF spike is stamped at the end of its step, so the same
   timing is our delay d − 1 (``labkit.snn.network``: delay 0 = "arrives at the start of the next step"). This is
   a change of bookkeeping, not of the model: every path keeps the paper's relative timing.
2. One-step voltage jumps (``psp_match``). SpiNNaker's ``IF_curr_exp`` holds the synaptic current constant over
   the step after scaling the jump w by (τ_syn/dt)(1 − e^{−dt/τ_syn}); its voltage jump per nA is
   R (τ_syn/dt)(1 − e^{−dt/τ_syn})(1 − e^{−dt/τ_m}). The exact propagator here integrates the decaying current,
   which for the fast cells (τ_m = 0.5 ms, close to τ_syn = 0.3 ms) gives 40 % less: 0.534 vs 0.893 mV/nA
   (slow cells: 0.841 vs 0.911). The gating arithmetic 9 − 6 + 2 then never reaches threshold and the content →
   cue half of a memory is never forgotten. We scale every weight onto a population (and that population's
   STDP amplitudes and bounds) by κ = (SpiNNaker jump)/(exact jump): κ = 1.673 for fast cells, 1.084 for slow
   ones, so a single input moves the membrane as much in one step as on the paper's hardware.
3. STDP timing (``stdp_dendritic_delay``). sPyNNaker treats a plastic synapse's delay (1 step) as dendritic: a
   postsynaptic spike is paired with presynaptic spikes as if it came one step later, Δt_eff = t_post − t_pre + 1.
   With exponential traces this shift is exactly our rule (Δt = t_post − t_pre, a same-step pair counts as
   pre-before-post) with A₊' = A₊ e^{−1/τ₊} = 4.30 nA and A₋' = A₋ e^{1/τ₋} = 8.37 nA. Without it the old bits'
   content → cue synapses are depressed and re-potentiated by the same 4.3 nA during a relearn and never
   forgotten. sPyNNaker also multiplies A± by w_max (Δw = 36 nA × trace); the weights then saturate and the
   same relearn restores them (``stdp_a_times_wmax=True`` shows it), so we read A± = 6 as nA.

``CA3Params.paper()`` keeps the verbatim numbers (no 2., no 3.) so the failures can be shown; ``CA3Params()`` is the
paper with the conversions 1–3, and answers every test schedule of the paper's code exactly. Where it still
breaks, all at the maximum operation rate (the STDP traces of one operation reach into the next, Δ ≈ 5–7 ms):
(a) a content bit shared by several memories depresses its synapses onto the other memories' cueContRecall cells
by A₋' e^{−Δ/τ₋} (1–2.4 nA of 6) each time it fires, so shared bits fade from recall by content; (b) consecutive
learns leave sub-threshold cross-links W_cc[c, b'] ≈ A₊' e^{−Δ/τ₊} from the previous cue to the next content, and
a later relearn of c can promote one into a spurious bit; (c) the two inhibitions scaled by n_content (−6k nA)
leave a recall-by-content's other cueContRecall cells hyperpolarised for longer than 6 ms when k = 256; (d) a
multi-bit query whose bits belong to different memories potentiates every query bit onto every recalled cue
(reading writes, at any rate). ``CA3Params.short_traces()`` (τ± = 2 ms: our change, not the paper's) removes (a)
and (b) in our tests; ``param_variants`` also drops the n_content factor of the lateral inhibition for (c).

Operations and the schedule. An operation starts at an integer time t ≥ 1 (ms): ``Learn(cue, content)`` holds
the cue and the content bits for 3 steps (t, t+1, t+2); ``RecallCue(cue)`` and ``RecallContent(bits)`` are one
step. The paper's minimum spacing: the next operation starts ≥ 7 ms after a learn and ≥ 6 ms after a recall. A
whole schedule is turned into one input spike train and simulated by one ``Network.run``; the output layer's
spikes in each operation's window [t + 5, t_next + 5) are decoded into a cue set and a content (``OpResult``).
``CA3Memory`` keeps the two plastic weight matrices between schedules, so ``learn`` / ``recall_by_cue`` /
``recall_by_content`` can also be called one at a time (each is a schedule of one operation).

Experiments (each returns plain numbers; ``reference_results`` / ``score`` compare a run with the ideal memory):
``functional_test`` and ``paper_tests`` (the five schedules of the paper's code, ``paper_schedules``);
``stress_test`` (``random_schedule`` at the maximum rate plus a gap); ``grid_map_test`` (the application test);
``store_and_query`` / ``scale_experiment`` (64 cues × 256 bits, overlap and fragment size); ``capacity_experiment``
with its theory ``cam_fragment_theory`` and ``sdr_recall_experiment`` (the chapter's recall-vs-load comparison).
``python -m labkit.snn.cam`` (``full_run``, about 90 s on 2 cores) writes ``labkit/assets/cam_results.json``;
``load`` reads it.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from labkit.runtime import load_results, progress
from labkit.snn.lif import LIFParams, STDPParams
from labkit.snn.network import Network

__all__ = [
    "CA3Memory",
    "CA3Params",
    "GRID_STATES",
    "Learn",
    "MIN_SPACING",
    "OpResult",
    "PAPER_SYNAPSES",
    "RecallContent",
    "RecallCue",
    "cam_fragment_theory",
    "capacity_experiment",
    "exact_psp_gain",
    "full_run",
    "functional_test",
    "grid_map_test",
    "load",
    "paper_schedules",
    "paper_tests",
    "param_variants",
    "random_contents",
    "random_schedule",
    "reference_results",
    "scale_experiment",
    "score",
    "sdr_recall_experiment",
    "spinnaker_psp_gain",
    "store_and_query",
    "stress_test",
]

#: The paper's static synapses: name -> (pre, post, connector, weight nA, delay ms). Weight "-6k" rows are
#: scaled by n_content (``scale_k``); see the module docstring.
PAPER_SYNAPSES: dict[str, tuple[str, str, str, float, int, bool]] = {
    # name: (pre, post, connector, weight, delay, times n_content)
    "IL-cueCueRecall": ("IL", "cueCueRecall", "in_cue", 6.0, 1, False),
    "IL-contCueRecall": ("IL", "contCueRecall", "in_cont", 6.0, 1, False),
    "cueCueRecall-cueContRecall": ("cueCueRecall", "cueContRecall", "one", 6.0, 2, False),
    "cueCueRecall-cueContRecall-inh": ("cueCueRecall", "cueContRecall", "all_but_self", -6.0, 3, True),
    "cueCueRecall-contCond": ("cueCueRecall", "contCond", "all", -6.0, 2, False),
    "contCueRecall-contCond": ("contCueRecall", "contCond", "one", 9.0, 1, False),
    "contCueRecall-contCondInt": ("contCueRecall", "contCondInt", "all", 6.0, 1, False),
    "contCondInt-contCond": ("contCondInt", "contCond", "all", 2.0, 1, False),
    "contCond-contContRecall": ("contCond", "contContRecall", "one", 6.0, 1, False),
    "cueContRecall-cueContRecall": ("cueContRecall", "cueContRecall", "all_but_self", -6.0, 2, True),
    "cueCueRecall-mergeCue": ("cueCueRecall", "mergeCue", "one", 6.0, 3, False),
    "cueContRecall-mergeCue": ("cueContRecall", "mergeCue", "one", 6.0, 1, False),
    "contCueRecall-mergeCont": ("contCueRecall", "mergeCont", "one", 6.0, 3, False),
    "contContRecall-mergeCont": ("contContRecall", "mergeCont", "one", 6.0, 1, False),
    "mergeCue-OL": ("mergeCue", "OL", "out_cue", 6.0, 1, False),
    "mergeCont-OL": ("mergeCont", "OL", "out_cont", 6.0, 1, False),
}

#: The two plastic projections: name -> (pre, post, delay ms).
PLASTIC = {"W_cue_cont": ("cueCueRecall", "contCueRecall", 1), "W_cont_cue": ("contContRecall", "cueContRecall", 1)}

#: Population name -> (size key, cell type). Size key "c" = n_cues, "k" = n_content, "1" = one neuron.
POPULATIONS = {
    "cueCueRecall": ("c", "slow"), "contCueRecall": ("k", "slow"), "contCond": ("k", "fast"),
    "contCondInt": ("1", "fast"), "contContRecall": ("k", "slow"), "cueContRecall": ("c", "fast"),
    "mergeCue": ("c", "slow"), "mergeCont": ("k", "slow"), "OL": ("ck", "out"),
}

#: The paper's minimum spacing (ms) between an operation's start and the next one's.
MIN_SPACING = {"learn": 7, "recall_cue": 6, "recall_content": 6}
LEARN_HOLD = 3  # steps a learn holds its input
OUT_LATENCY = 5  # the output of an operation starts 5 steps after its input


def spinnaker_psp_gain(cm: float, tau_m: float, tau_syn: float, dt: float = 1.0) -> float:
    """mV per nA of a single input after one step of SpiNNaker's IF_curr_exp (current held over the step after
    the jump is scaled by (τ_syn/dt)(1 − e^{−dt/τ_syn})): ``R (τ_syn/dt)(1 − e^{−dt/τ_syn})(1 − e^{−dt/τ_m})``."""
    R = tau_m / cm
    return R * (tau_syn / dt) * -math.expm1(-dt / tau_syn) * -math.expm1(-dt / tau_m)


def exact_psp_gain(cm: float, tau_m: float, tau_syn: float, dt: float = 1.0) -> float:
    """mV per nA of a single input after one step of the exact propagator (``LIFParams.coefficients().gain_syn``)."""
    return LIFParams.from_pynn(cm=cm, tau_m=tau_m, tau_syn=tau_syn, v_rest=-60.0, v_reset=-60.0,
                               v_thresh=-57.0, tau_refrac=dt).coefficients(dt).gain_syn


@dataclass(frozen=True)
class CA3Params:
    """Every number of the model (the paper's units: nF, ms, mV, nA). ``CA3Params()`` is the working set (the
    paper's numbers with the changes explained in the module docstring); ``CA3Params.paper()`` the verbatim one.

    cm_slow, tau_m_slow / cm_fast, tau_m_fast: the two cell types; tau_syn, tau_refrac, v_rest, v_reset, v_thresh
    shared; v_thresh_out: the output layer's threshold. synapses: ``PAPER_SYNAPSES``-like mapping (weights may be
    changed); stdp_*: the plastic projections' rule (``labkit.snn.STDPParams`` convention, Δw = A·trace);
    stdp_a_times_wmax: multiply A± by w_max as sPyNNaker does; psp_match: scale weights onto each population by
    κ = spinnaker_psp_gain / exact_psp_gain; delay_offset: subtracted from every paper delay (1 = the grid
    conversion of the module docstring)."""

    cm_slow: float = 0.27
    tau_m_slow: float = 3.0
    cm_fast: float = 0.14
    tau_m_fast: float = 0.5
    tau_syn: float = 0.3
    tau_refrac: float = 1.0
    v_rest: float = -60.0
    v_reset: float = -60.0
    v_thresh: float = -57.0
    v_thresh_out: float = -57.5
    synapses: Mapping[str, tuple] = field(default_factory=lambda: dict(PAPER_SYNAPSES))
    stdp_tau_plus: float = 3.0
    stdp_tau_minus: float = 3.0
    stdp_A_plus: float = 6.0
    stdp_A_minus: float = 6.0
    stdp_w_min: float = 0.0
    stdp_w_max: float = 6.0
    stdp_a_times_wmax: bool = False
    stdp_dendritic_delay: int = 1
    psp_match: bool = True
    delay_offset: int = 1

    @classmethod
    def paper(cls) -> CA3Params:
        """The paper's numbers verbatim (no PSP matching, no dendritic-delay STDP timing); only the delay
        bookkeeping is converted."""
        return cls(stdp_dendritic_delay=0, psp_match=False)

    @classmethod
    def short_traces(cls, tau: float = 2.0) -> CA3Params:
        """Our variant: the working set with τ₊ = τ₋ = ``tau`` ms (2 by default) instead of 3, so a shared content
        bit no longer erodes the other memories' links at the maximum operation rate (not the paper's numbers)."""
        return cls(stdp_tau_plus=tau, stdp_tau_minus=tau)

    def __post_init__(self):
        for name in ("cm_slow", "tau_m_slow", "cm_fast", "tau_m_fast", "tau_syn", "stdp_tau_plus", "stdp_tau_minus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if self.stdp_w_max < self.stdp_w_min:
            raise ValueError(f"stdp_w_max must be >= stdp_w_min = {self.stdp_w_min}, got {self.stdp_w_max}")
        missing = set(PAPER_SYNAPSES) - set(self.synapses)
        if missing:
            raise ValueError(f"synapses must define every projection of PAPER_SYNAPSES, missing {sorted(missing)}")
        if isinstance(self.delay_offset, bool) or not isinstance(self.delay_offset, numbers.Integral) \
                or not 0 <= self.delay_offset <= 1:
            raise ValueError(f"delay_offset must be 0 or 1, got {self.delay_offset!r}")

    def cell(self, kind: str) -> LIFParams:
        """The LIFParams of a cell type: "slow", "fast" or "out"."""
        cm, tau_m = (self.cm_fast, self.tau_m_fast) if kind == "fast" else (self.cm_slow, self.tau_m_slow)
        v_th = self.v_thresh_out if kind == "out" else self.v_thresh
        return LIFParams.from_pynn(cm=cm, tau_m=tau_m, tau_syn=self.tau_syn, v_rest=self.v_rest,
                                   v_reset=self.v_reset, v_thresh=v_th, tau_refrac=self.tau_refrac)

    def kappa(self, kind: str) -> float:
        """The weight scale onto a cell type (1 without ``psp_match``)."""
        if not self.psp_match:
            return 1.0
        cm, tau_m = (self.cm_fast, self.tau_m_fast) if kind == "fast" else (self.cm_slow, self.tau_m_slow)
        return spinnaker_psp_gain(cm, tau_m, self.tau_syn) / exact_psp_gain(cm, tau_m, self.tau_syn)

    def stdp(self, kind: str) -> STDPParams:
        """The STDP rule of a plastic projection onto a cell type (amplitudes and bounds scaled by ``kappa``)."""
        k = self.kappa(kind) * (self.stdp_w_max if self.stdp_a_times_wmax else 1.0)
        kw = self.kappa(kind)
        dd = self.stdp_dendritic_delay
        return STDPParams(tau_plus=self.stdp_tau_plus, tau_minus=self.stdp_tau_minus,
                          A_plus=self.stdp_A_plus * k * math.exp(-dd / self.stdp_tau_plus),
                          A_minus=self.stdp_A_minus * k * math.exp(dd / self.stdp_tau_minus),
                          w_min=self.stdp_w_min * kw, w_max=self.stdp_w_max * kw)

    def with_(self, **changes) -> CA3Params:
        """A copy with some fields changed."""
        return replace(self, **changes)


# --------------------------------------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Learn:
    """Learn ``content`` (n_content,) 0/1 on ``cue``; ``t``: start time (ms) or None (as early as allowed)."""

    cue: int
    content: object
    t: int | None = None
    kind = "learn"


@dataclass(frozen=True)
class RecallCue:
    """Recall the content stored on ``cue``."""

    cue: int
    t: int | None = None
    kind = "recall_cue"


@dataclass(frozen=True)
class RecallContent:
    """Recall every cue whose content shares >= 1 active bit with ``content`` (n_content,) 0/1."""

    content: object
    t: int | None = None
    kind = "recall_content"


@dataclass
class OpResult:
    """What the output layer said about one operation: ``cues`` (n_cues,) bool and ``content`` (n_content,) bool
    (the spikes of OL's cue and content halves in the window [t + 5, t_next + 5)); ``op`` the operation, ``t`` its
    start time (ms)."""

    op: object
    t: int
    cues: np.ndarray
    content: np.ndarray

    @property
    def cue_ids(self) -> list[int]:
        """The recalled cues as indices."""
        return np.flatnonzero(self.cues).tolist()


# --------------------------------------------------------------------------------------------------------
# the memory
# --------------------------------------------------------------------------------------------------------


def _int(name: str, value, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


class CA3Memory:
    """The CA3 content-addressable memory: ``n_cues`` addresses × ``n_content`` content bits.

    params: ``CA3Params`` (default: the working set; ``CA3Params.paper()`` for the verbatim one); backend: the
    kernels' backend ("auto" | "torch" | "numba" | "triton"); seed: for ``random_contents`` only (the network
    itself is deterministic); dtype, device: of the simulation. State between schedules: the plastic weights
    ``W_cue_cont`` (n_cues, n_content) and ``W_cont_cue`` (n_content, n_cues), in the paper's nA (0 .. 6).
    """

    def __init__(self, n_cues: int, n_content: int, params: CA3Params | None = None, backend: str = "auto",
                 seed: int = 0, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"):
        self.n_cues = _int("n_cues", n_cues, low=1)
        self.n_content = _int("n_content", n_content, low=1)
        self.params = CA3Params() if params is None else params
        if not isinstance(self.params, CA3Params):
            raise TypeError(f"params must be a CA3Params or None, got {type(self.params).__name__}")
        self.backend = backend
        self.dtype = dtype
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.W_cue_cont = np.zeros((self.n_cues, self.n_content))
        self.W_cont_cue = np.zeros((self.n_content, self.n_cues))
        self.t_end = 0  # end of the last schedule (ms)
        self.network: Network | None = None  # the last schedule's network (rasters)
        self.last_ops: list = []

    @property
    def n_neurons(self) -> int:
        """Internal neurons (without the input and output layers): 4·n_cues + 4·n_content + 1."""
        return 4 * self.n_cues + 4 * self.n_content + 1

    # ---- inputs -------------------------------------------------------------------------------------

    def _cue(self, cue) -> int:
        if isinstance(cue, bool) or not isinstance(cue, numbers.Integral):
            raise ValueError(f"cue must be an integer in 0..n_cues-1 = 0..{self.n_cues - 1}, got {cue!r}")
        if not 0 <= int(cue) < self.n_cues:
            raise ValueError(f"cue must be in 0..n_cues-1 = 0..{self.n_cues - 1}, got {int(cue)}")
        return int(cue)

    def _content(self, content, name: str = "content") -> np.ndarray:
        if isinstance(content, torch.Tensor):
            content = content.detach().cpu().numpy()
        a = np.asarray(content)
        if a.ndim != 1 or a.shape[0] != self.n_content:
            raise ValueError(f"{name} must be a 1-D pattern of n_content = {self.n_content} bits, got shape "
                             f"{a.shape}")
        if a.dtype != bool:
            if not np.issubdtype(a.dtype, np.number) or not np.isin(a, (0, 1)).all():
                raise ValueError(f"{name} must be binary (0/1 or bool), got values "
                                 f"{np.unique(a)[:5].tolist()}")
            a = a.astype(bool)
        if not a.any():
            raise ValueError(f"{name} must have at least one active bit, got none")
        return a

    def schedule(self, ops: Sequence, start: int = 1, gap: int = 0) -> list[tuple[object, int]]:
        """Checked operations with start times: ops without ``t`` start ``gap`` ms after the earliest time the
        paper's spacing allows after the previous one (the first at ``start``). Returns [(op, t)]. Raises
        ValueError for a bad cue or pattern, or for an operation closer to the previous one than ``MIN_SPACING``."""
        if not isinstance(ops, Sequence) or isinstance(ops, (str, bytes)):
            raise TypeError(f"ops must be a sequence of Learn / RecallCue / RecallContent, got {type(ops).__name__}")
        start = _int("start", start, low=1)
        gap = _int("gap", gap, low=0)
        out, prev = [], None
        for i, op in enumerate(ops):
            if isinstance(op, Learn):
                op = Learn(self._cue(op.cue), self._content(op.content), op.t)
            elif isinstance(op, RecallCue):
                op = RecallCue(self._cue(op.cue), op.t)
            elif isinstance(op, RecallContent):
                op = RecallContent(self._content(op.content), op.t)
            else:
                raise TypeError(f"ops[{i}] must be a Learn, RecallCue or RecallContent, got {type(op).__name__}")
            earliest = start if prev is None else prev[1] + MIN_SPACING[prev[0].kind]
            if op.t is None:
                t = earliest if prev is None else earliest + gap
            else:
                t = _int(f"ops[{i}].t", op.t, low=start if prev is None else 1)
                if prev is not None and t < earliest:
                    raise ValueError(f"ops[{i}] ({op.kind}) starts at t = {t} ms, too close to the previous "
                                     f"{prev[0].kind} at t = {prev[1]} ms: the paper's minimum spacing after a "
                                     f"{prev[0].kind} is {MIN_SPACING[prev[0].kind]} ms (earliest t = {earliest})")
            out.append((op, t))
            prev = (op, t)
        return out

    def input_spikes(self, timed: Sequence[tuple[object, int]]) -> tuple[np.ndarray, np.ndarray]:
        """The input layer's spikes for checked operations: (times (S,) ms, neurons (S,)); neuron i < n_cues is
        cue i, n_cues + j content bit j. A learn holds its input for 3 steps."""
        times, neurons = [], []
        for op, t in timed:
            idx = []
            if op.kind in ("learn", "recall_cue"):
                idx.append(op.cue)
            if op.kind in ("learn", "recall_content"):
                idx.extend((self.n_cues + np.flatnonzero(op.content)).tolist())
            for s in range(LEARN_HOLD if op.kind == "learn" else 1):
                times.extend([t + s] * len(idx))
                neurons.extend(idx)
        return np.asarray(times, dtype=np.float64), np.asarray(neurons, dtype=np.int64)

    # ---- the network --------------------------------------------------------------------------------

    def build(self, spikes: tuple[np.ndarray, np.ndarray]) -> Network:
        """A fresh ``Network`` of the memory with the current plastic weights and the given input spikes."""
        p, c, k = self.params, self.n_cues, self.n_content
        net = Network(dt=1.0, backend=self.backend, dtype=self.dtype, device=self.device)
        pops = {"IL": net.add_spike_source("IL", c + k, spikes)}
        size = {"c": c, "k": k, "1": 1, "ck": c + k}
        for name, (key, kind) in POPULATIONS.items():
            pops[name] = net.add_lif(name, size[key], p.cell(kind))
        kind_of = {name: kind for name, (_, kind) in POPULATIONS.items()}
        for name, (pre, post, conn, w, d, times_k) in p.synapses.items():
            w = float(w) * (k if times_k else 1) * p.kappa(kind_of[post])
            M, N = pops[pre].n, pops[post].n
            delay = int(d) - p.delay_offset
            if conn in ("one", "in_cue", "in_cont", "out_cue", "out_cont"):
                off_pre = c if conn == "in_cont" else 0
                off_post = c if conn == "out_cont" else 0
                n = N if conn in ("in_cue", "in_cont") else M
                rows = np.arange(n) + off_pre
                cols = np.arange(n) + off_post
                order = np.argsort(rows)
                indptr = np.zeros(M + 1, np.int64)
                np.add.at(indptr, rows + 1, 1)
                indptr = np.cumsum(indptr)
                net.connect(pops[pre], pops[post], (indptr, cols[order], np.full(n, w)), delay=delay, name=name)
            elif conn == "all":
                net.connect(pops[pre], pops[post], np.full((M, N), w), delay=delay, name=name)
            elif conn == "all_but_self":
                net.connect(pops[pre], pops[post], w * (1.0 - np.eye(M, N)), delay=delay, name=name)
            else:
                raise ValueError(f"synapse {name!r}: unknown connector {conn!r}")
        self._groups = {}
        for name, (pre, post, d) in PLASTIC.items():
            kind = kind_of[post]
            W = getattr(self, name) * p.kappa(kind)
            self._groups[name] = net.connect(pops[pre], pops[post], W, delay=d - p.delay_offset,
                                             stdp=p.stdp(kind), name=name)
        return net

    def run(self, ops: Sequence, start: int = 1, gap: int = 0) -> list[OpResult]:
        """Run a schedule of operations (``schedule``) in one ``Network.run`` and decode each one's output window.
        The plastic weights carry over to the next call. Returns one ``OpResult`` per operation."""
        timed = self.schedule(ops, start=start, gap=gap)
        if not timed:
            return []
        net = self.build(self.input_spikes(timed))
        last_op, last_t = timed[-1]
        T = last_t + MIN_SPACING[last_op.kind] + OUT_LATENCY + 2
        net.run(float(T), show_progress=False)
        for name, g in self._groups.items():
            setattr(self, name, g.W.detach().cpu().double().numpy() / self.params.kappa(
                POPULATIONS[PLASTIC[name][1]][1]))
        self.network, self.last_ops, self.t_end = net, timed, T
        out = net.spike_matrix("OL")  # (T + 1, c + k)
        results = []
        for i, (op, t) in enumerate(timed):
            lo = t + OUT_LATENCY
            hi = (timed[i + 1][1] if i + 1 < len(timed) else t + MIN_SPACING[op.kind]) + OUT_LATENCY
            window = out[lo:min(hi, out.shape[0])].any(0)
            results.append(OpResult(op, t, window[:self.n_cues].copy(), window[self.n_cues:].copy()))
        return results

    # ---- one operation at a time ----------------------------------------------------------------------

    def learn(self, cue: int, content) -> OpResult:
        """Learn ``content`` on ``cue`` (forgetting what the cue held). Returns the output (the echoed memory)."""
        return self.run([Learn(cue, content)])[0]

    def recall_by_cue(self, cue: int) -> np.ndarray:
        """The content (n_content,) bool recalled from ``cue``."""
        return self.run([RecallCue(cue)])[0].content

    def recall_by_content(self, content) -> np.ndarray:
        """The cues (n_cues,) bool whose content shares >= 1 active bit with the fragment ``content``."""
        return self.run([RecallContent(content)])[0].cues

    def stored(self, threshold: float | None = None) -> np.ndarray:
        """What W_cue_cont holds: (n_cues, n_content) bool, a weight above ``threshold`` (default: the weight one
        input needs to fire contCueRecall on its own)."""
        if threshold is None:
            p = self.params
            gain = exact_psp_gain(p.cm_slow, p.tau_m_slow, p.tau_syn) * p.kappa("slow")
            threshold = (p.v_thresh - p.v_rest) / gain
        return self.W_cue_cont > threshold

    def raster_figure(self, title: str = "CA3 memory: spike raster"):
        """The last schedule's raster (input, the internal populations, output), with the operations marked."""
        if self.network is None:
            raise RuntimeError("run a schedule first")
        order = ["IL", "cueCueRecall", "contCueRecall", "contCond", "contCondInt", "cueContRecall",
                 "contContRecall", "mergeCue", "mergeCont", "OL"]
        fig = self.network.raster_figure(order, title=title)
        names = {"learn": "learn", "recall_cue": "recall by cue", "recall_content": "recall by content"}
        for op, t in self.last_ops:
            label = names[op.kind]
            if op.kind != "recall_content":
                label += f" {op.cue}"
            fig.add_vline(x=t, line=dict(color="#999999", width=1, dash="dash"))
            fig.add_annotation(x=t, y=1.0, yref="paper", yanchor="bottom", text=label, showarrow=False,
                               textangle=-35, xanchor="left", font=dict(size=10))
        fig.update_layout(margin=dict(t=130), height=620)
        return fig


# --------------------------------------------------------------------------------------------------------
# the ideal memory and the scores
# --------------------------------------------------------------------------------------------------------


def reference_results(ops: Sequence, n_cues: int, n_content: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """What an ideal content-addressable memory answers, per operation: (cues (n_cues,) bool, content
    (n_content,) bool). A learn echoes its own memory; recall by cue returns the cue and its stored content (none
    if the cue is empty); recall by content returns every cue whose content shares >= 1 active bit with the query,
    and the query. The spiking memory's ``OpResult`` are compared with these."""
    store: dict[int, np.ndarray] = {}
    out = []
    for op in ops:
        cues = np.zeros(n_cues, bool)
        if op.kind == "learn":
            content = np.asarray(op.content, bool)
            store[op.cue] = content
            cues[op.cue] = True
        elif op.kind == "recall_cue":
            cues[op.cue] = True
            content = store.get(op.cue, np.zeros(n_content, bool)).copy()
        else:
            content = np.asarray(op.content, bool)
            for c, stored in store.items():
                cues[c] = bool((stored & content).any())
        out.append((cues, content))
    return out


def _prf(got: np.ndarray, want: np.ndarray) -> tuple[int, int, int]:
    return int((got & want).sum()), int((got & ~want).sum()), int((~got & want).sum())


def score(results: Sequence[OpResult], n_cues: int, n_content: int) -> dict:
    """Compare a schedule's results with ``reference_results``. For recall by cue the answer is the content, for
    recall by content the set of cues. Returns {"recall_cue", "recall_content"}: {"n", "exact" (fraction answered
    exactly), "precision", "recall" (bitwise, pooled over the operations)} and "errors": [(index, kind, got, want)]
    (indices of the wrong answers as lists of active positions)."""
    want = reference_results([r.op for r in results], n_cues, n_content)
    out = {kind: {"n": 0, "exact": 0, "tp": 0, "fp": 0, "fn": 0} for kind in ("recall_cue", "recall_content")}
    errors = []
    for i, (r, (w_cues, w_content)) in enumerate(zip(results, want)):
        kind = r.op.kind
        if kind == "learn":
            continue
        got, ref = (r.content, w_content) if kind == "recall_cue" else (r.cues, w_cues)
        s = out[kind]
        s["n"] += 1
        ok = bool(np.array_equal(got, ref))
        s["exact"] += ok
        tp, fp, fn = _prf(got, ref)
        s["tp"] += tp
        s["fp"] += fp
        s["fn"] += fn
        if not ok:
            errors.append((i, kind, np.flatnonzero(got).tolist(), np.flatnonzero(ref).tolist()))
    for s in out.values():
        n, tp, fp, fn = s.pop("n"), s.pop("tp"), s.pop("fp"), s.pop("fn")
        s.update(n=n, exact=s["exact"] / n if n else float("nan"),
                 precision=tp / (tp + fp) if tp + fp else 1.0, recall=tp / (tp + fn) if tp + fn else 1.0)
    out["errors"] = errors
    return out


# --------------------------------------------------------------------------------------------------------
# the paper's tests
# --------------------------------------------------------------------------------------------------------


def _bits(n: int, idx: Sequence[int]) -> np.ndarray:
    a = np.zeros(n, bool)
    a[list(idx)] = True
    return a


def paper_schedules(n_content: int = 10) -> dict[str, list]:
    """The five test schedules of the paper's code (5 cues × 10 bits; times in ms, shifted by +1 because our first
    step ends at t = 1): "learn_recall", "learn_forget_relearn", "stress" (operations at the maximum rate: 7 ms
    after a learn, 6 after a recall; overlapping contents), "recall_content_single" (one content bit per query),
    "recall_content_several" (several bits per query)."""
    b = lambda *i: _bits(n_content, i)  # noqa: E731
    return {
        "learn_recall": [Learn(0, b(0, 1, 2, 9), 1), RecallCue(0, 11)],
        "learn_forget_relearn": [Learn(0, b(0, 1, 2, 9), 1), RecallCue(0, 11), Learn(0, b(2, 3, 8), 21),
                                 RecallCue(0, 31)],
        "stress": [Learn(4, b(7, 8, 9), 1), Learn(3, b(6, 7, 8), 8), Learn(2, b(5, 6, 7), 15), RecallCue(4, 22),
                   RecallCue(3, 28), Learn(3, b(0, 1, 5, 6, 7), 34), Learn(2, b(0, 1, 8, 9), 41), RecallCue(3, 48),
                   RecallCue(2, 54)],
        "recall_content_single": [Learn(0, b(0, 1, 2, 8, 9), 1), Learn(1, b(0, 7, 8, 9), 11),
                                  RecallContent(b(0), 21), RecallContent(b(9), 31), RecallContent(b(2), 41),
                                  RecallCue(0, 51), Learn(0, b(2, 3), 61), RecallCue(0, 71), RecallContent(b(0), 81),
                                  RecallContent(b(2), 91), RecallContent(b(9), 101)],
        "recall_content_several": [Learn(0, b(0, 1, 2), 1), Learn(1, b(1, 2, 3), 11), Learn(2, b(2, 3, 4), 21),
                                   RecallContent(b(0, 4), 31), RecallContent(b(2), 41), RecallCue(1, 51),
                                   RecallContent(b(1, 3), 61)],
    }


# --------------------------------------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------------------------------------


def random_contents(n: int, n_content: int, w: int, seed=0, orthogonal: bool = False) -> np.ndarray:
    """``n`` random contents of ``n_content`` bits with exactly ``w`` active: (n, n_content) bool. ``orthogonal``:
    no two share a bit (needs n·w <= n_content)."""
    n, n_content = _int("n", n, low=0), _int("n_content", n_content, low=1)
    w = _int("w", w, low=1, high=n_content)
    g = np.random.default_rng(seed)
    out = np.zeros((n, n_content), bool)
    if orthogonal:
        if n * w > n_content:
            raise ValueError(f"orthogonal contents need n·w <= n_content = {n_content}, got {n}·{w} = {n * w}")
        perm = g.permutation(n_content)[: n * w].reshape(n, w)
        np.put_along_axis(out, perm, True, axis=1)
    else:
        for i in range(n):
            out[i, g.choice(n_content, w, replace=False)] = True
    return out


def random_schedule(n_cues: int, n_content: int, n_ops: int, w: int, p_learn: float = 0.35,
                    fragment_bits: int = 1, seed=0) -> list:
    """A random mix of operations: with probability ``p_learn`` learn a random ``w``-bit content on a random cue
    (overwriting whatever it held), else (half and half) recall a stored cue, or recall by a fragment of
    ``fragment_bits`` active bits of a stored content. Contents overlap at random (w / n_content active)."""
    g = np.random.default_rng(seed)
    ops, store = [], {}
    for _ in range(_int("n_ops", n_ops, low=1)):
        r = g.random()
        if r < p_learn or not store:
            cue = int(g.integers(n_cues))
            content = random_contents(1, n_content, w, g)[0]
            store[cue] = content
            ops.append(Learn(cue, content))
        elif r < (1 + p_learn) / 2:
            ops.append(RecallCue(int(g.choice(sorted(store)))))
        else:
            content = store[int(g.choice(sorted(store)))]
            on = np.flatnonzero(content)
            ops.append(RecallContent(_bits(n_content, g.choice(on, min(fragment_bits, on.size), replace=False))))
    return ops


def functional_test(params: CA3Params | None = None, gap: int = 3, backend: str = "auto") -> dict:
    """The paper's functional test at 5 cues × 10 bits, operations ``gap`` ms beyond the minimum spacing (3: 10 ms
    after a learn, 9 after a recall, as in the paper's functional tests; 0: the maximum rate): learn three
    orthogonal memories, recall each by cue and by a one-bit fragment, then learn a new
    content on cue 0 (forgetting the old one) and recall both ways again. Returns {"memory" (its ``network`` holds
    the raster), "results", "reference", "score"}."""
    b = lambda *i: _bits(10, i)  # noqa: E731
    ops = [Learn(0, b(0, 1, 2, 9)), Learn(1, b(3, 4, 5)), Learn(2, b(6, 7)),
           RecallCue(0), RecallCue(1), RecallContent(b(9)), RecallContent(b(4)), RecallContent(b(6)),
           Learn(0, b(1, 8)), RecallCue(0), RecallContent(b(0)), RecallContent(b(8)), RecallCue(2)]
    mem = CA3Memory(5, 10, params, backend=backend)
    results = mem.run(ops, gap=gap)
    return {"memory": mem, "results": results, "reference": reference_results(ops, 5, 10),
            "score": score(results, 5, 10)}


def paper_tests(params: CA3Params | None = None, backend: str = "auto") -> dict[str, dict]:
    """Run every schedule of ``paper_schedules`` on a fresh 5 × 10 memory: name -> ``score``."""
    out = {}
    for name, ops in paper_schedules().items():
        mem = CA3Memory(5, 10, params, backend=backend)
        out[name] = score(mem.run(ops), 5, 10)
    return out


def stress_test(n_cues: int = 5, n_content: int = 10, n_ops: int = 60, w: int = 3, gaps: Sequence[int] = (0,),
                params: CA3Params | None = None, seeds: Sequence[int] = (0,), fragment_bits: int = 1,
                p_learn: float = 0.35, backend: str = "auto") -> dict:
    """Random schedules (``random_schedule``: overlapping w-bit contents, fragments of ``fragment_bits`` bits)
    run at the maximum rate plus each extra ``gap`` (ms). Returns {"gap" (G,), "cue_exact", "content_exact",
    "content_precision", "content_recall": (S, G) arrays over seeds × gaps, "steps" (total simulated ms)}."""
    gaps = [int(x) for x in gaps]
    keys = ("cue_exact", "content_exact", "content_precision", "content_recall")
    out = {key: np.zeros((len(seeds), len(gaps))) for key in keys}
    steps = 0
    for i, seed in enumerate(seeds):
        ops = random_schedule(n_cues, n_content, n_ops, w, p_learn, fragment_bits, seed)
        for j, gap in enumerate(gaps):
            mem = CA3Memory(n_cues, n_content, params, backend=backend)
            s = score(mem.run(ops, gap=gap), n_cues, n_content)
            steps += mem.t_end
            out["cue_exact"][i, j] = s["recall_cue"]["exact"]
            out["content_exact"][i, j] = s["recall_content"]["exact"]
            out["content_precision"][i, j] = s["recall_content"]["precision"]
            out["content_recall"][i, j] = s["recall_content"]["recall"]
    out["gap"] = np.asarray(gaps)
    out["steps"] = steps
    return out


GRID_STATES = ("free", "wall", "visited", "goal")


def grid_map_test(side: int = 4, walls: Sequence[int] = (1, 5, 6, 10, 14), goal: int = 15,
                  path: Sequence[int] = (0, 4, 8, 9, 13), params: CA3Params | None = None, gap: int = 0,
                  backend: str = "auto") -> dict:
    """The application test: a ``side`` × ``side`` grid map in the memory, one cue per cell, the content a one-hot
    cell state out of ``GRID_STATES`` (free / wall / visited / goal). Learn the map; ask "where are the walls?",
    "where is the goal?" (recall by content: every cell in that state); walk ``path`` marking cells visited (each
    a relearn that forgets "free"); ask "which cells are visited / still free?" and read a few cells by cue.
    Contents overlap completely within a state, the hardest case for recall by content. Returns {"memory",
    "results", "score", "queries": [(question, got cells, wanted cells)], "states" (final, per cell)}."""
    n = side * side
    S = len(GRID_STATES)
    state = np.zeros(n, int)
    state[list(walls)] = 1
    state[goal] = 3
    onehot = lambda s: _bits(S, [s])  # noqa: E731
    ops = [Learn(c, onehot(state[c])) for c in range(n)]
    questions = []
    for s in (1, 3):
        ops.append(RecallContent(onehot(s)))
        questions.append(f"where: {GRID_STATES[s]}?")
    for c in path:
        state[c] = 2
        ops.append(Learn(int(c), onehot(2)))
    for s in (2, 0):
        ops.append(RecallContent(onehot(s)))
        questions.append(f"where: {GRID_STATES[s]}?")
    for c in (path[0], walls[0], goal):
        ops.append(RecallCue(int(c)))
        questions.append(f"cell {c}?")
    mem = CA3Memory(n, S, params, backend=backend)
    results = mem.run(ops, gap=gap)
    ref = reference_results(ops, n, S)
    queries = []
    for r, (cues, content), q in zip([r for r in results if r.op.kind != "learn"],
                                     [x for x, r in zip(ref, results) if r.op.kind != "learn"], questions):
        if r.op.kind == "recall_content":
            queries.append((q, r.cue_ids, np.flatnonzero(cues).tolist()))
        else:
            queries.append((q, [GRID_STATES[i] for i in np.flatnonzero(r.content)],
                            [GRID_STATES[i] for i in np.flatnonzero(content)]))
    return {"memory": mem, "results": results, "score": score(results, n, S), "queries": queries,
            "states": [GRID_STATES[s] for s in state]}


def store_and_query(n_cues: int, n_content: int, contents: np.ndarray, fragment_bits: int = 1,
                    params: CA3Params | None = None, gap: int = 0, seed=0, backend: str = "auto",
                    n_queries: int | None = None, recall_cues: bool = True) -> dict:
    """Learn ``contents`` (P, n_content) on cues 0..P-1 (P <= n_cues) at the maximum rate (+ ``gap``), recall
    every cue (``recall_cues``), then query one random fragment of ``fragment_bits`` bits of each memory (or of
    ``n_queries`` random memories, with repeats when n_queries > P), all in one schedule, so the queries see
    each other's writes. Returns {"cue_exact" (fraction of cues recalled exactly), "content_exact" (fraction of
    fragment queries answered exactly per the ≥ 1-bit protocol), "content_precision", "content_recall", "unique"
    (fraction of queries answered with the fragment's own cue alone: retrieval of *the* memory), "steps",
    "score"}."""
    P = contents.shape[0]
    if P > n_cues:
        raise ValueError(f"contents must have at most n_cues = {n_cues} rows, got {P}")
    g = np.random.default_rng(seed)
    ops = [Learn(c, contents[c]) for c in range(P)] + ([RecallCue(c) for c in range(P)] if recall_cues else [])
    probe = np.arange(P) if n_queries is None else g.choice(P, n_queries, replace=n_queries > P)
    for c in probe:
        on = np.flatnonzero(contents[c])
        ops.append(RecallContent(_bits(n_content, g.choice(on, min(fragment_bits, on.size), replace=False))))
    mem = CA3Memory(n_cues, n_content, params, backend=backend)
    results = mem.run(ops, gap=gap)
    s = score(results, n_cues, n_content)
    queries = [r for r in results if r.op.kind == "recall_content"]
    unique = np.mean([r.cue_ids == [int(c)] for r, c in zip(queries, probe)])
    return {"cue_exact": s["recall_cue"]["exact"] if recall_cues else float("nan"),
            "content_exact": s["recall_content"]["exact"],
            "content_precision": s["recall_content"]["precision"], "content_recall": s["recall_content"]["recall"],
            "unique": float(unique), "steps": mem.t_end, "score": s}


def param_variants() -> dict[str, CA3Params]:
    """The parameter sets the chapter compares: "paper, verbatim" (``CA3Params.paper()``), "paper, converted"
    (``CA3Params()``), "τ± = 2 ms" (``CA3Params.short_traces()``) and "τ± = 2 ms, lateral −6 nA" (the same with
    the cueContRecall ↔ cueContRecall inhibition not scaled by n_content)."""
    lateral = dict(PAPER_SYNAPSES)
    pre, post, conn, w, d, _ = lateral["cueContRecall-cueContRecall"]
    lateral["cueContRecall-cueContRecall"] = (pre, post, conn, w, d, False)
    return {"paper, verbatim": CA3Params.paper(), "paper, converted": CA3Params(),
            "τ± = 2 ms": CA3Params.short_traces(), "τ± = 2 ms, lateral −6 nA": CA3Params.short_traces().with_(
                synapses=lateral)}


def scale_experiment(n_cues: int = 64, n_content: int = 256, cases: Sequence[tuple[str, int, int]] = (
        ("orthogonal", 4, 1), ("random", 4, 1), ("random", 8, 1), ("random", 16, 1), ("random", 32, 1)),
        variants: Sequence[str] = ("paper, converted", "τ± = 2 ms", "τ± = 2 ms, lateral −6 nA"),
        gap: int = 0, n_queries: int | None = None, seed: int = 0, backend: str = "auto") -> list[dict]:
    """The scaled-up memory: for each parameter variant (``param_variants``) and case (contents "orthogonal" or
    "random", w active bits, fragment size), learn n_cues memories, recall each by cue and query fragments
    (``store_and_query``). Returns one row per run: {"variant", "contents", "w", "fragment", "gap", "cue_exact",
    "content_exact", "content_precision", "content_recall", "steps", "seconds"}."""
    all_variants = param_variants()
    rows = []
    for name in progress(list(variants), desc=f"CAM {n_cues}x{n_content}"):
        for kind, w, fragment in cases:
            contents = random_contents(n_cues, n_content, w, seed=[seed, w], orthogonal=kind == "orthogonal")
            t0 = time.perf_counter()
            r = store_and_query(n_cues, n_content, contents, fragment, all_variants[name], gap, seed=[seed, 1],
                                backend=backend, n_queries=n_queries)
            rows.append({"variant": name, "contents": kind, "w": w, "fragment": fragment, "gap": gap,
                         **{k: float(r[k]) for k in ("cue_exact", "content_exact", "content_precision",
                                                     "content_recall")},
                         "steps": int(r["steps"]), "seconds": time.perf_counter() - t0})
    return rows


def cam_fragment_theory(P, n_content: int, w: int, fragment_bits: int) -> np.ndarray:
    """The chance that a fragment of ``fragment_bits`` active bits of one of P stored random w-bit contents brings
    back its own cue alone: recall by content fires every cue sharing >= 1 bit (an SDR match with θ = 1), so
    ``(1 − P_fm(n_content, w, θ=1, s=fragment_bits))^(P−1)`` (``labkit.assoc.sdr.false_match_probability``)."""
    from labkit.assoc.sdr import false_match_probability

    pfm = false_match_probability(n_content, w, 1, s=fragment_bits)
    return (1.0 - pfm) ** (np.asarray(P, dtype=float) - 1.0)


def capacity_experiment(n_cues: int = 32, n_content: int = 256, w: int = 8, fragment_bits: int = 4,
                        Ps: Sequence[int] = (2, 4, 8, 16, 32), seeds: Sequence[int] = (0,), gap: int = 4,
                        n_queries: int = 16, params: CA3Params | None = None, backend: str = "auto") -> dict:
    """Recall from a fragment against the load, for the chapter's comparison. For each P <= n_cues: learn P random
    w-bit contents on cues 0..P-1 (operations ``gap`` ms beyond the minimum spacing; for P < 32, 32 // P
    different content sets share the probes), then probe ``n_queries`` random memories with a fragment of
    ``fragment_bits`` of their active bits. Every probe runs on the memory as
    learned (the plastic weights are restored before each one: a multi-bit query writes, see the module
    docstring), like a read of the other memories. A probe is right when only its own cue comes back. Returns
    {"P" (L,), "load" (P / n_content), "unique": (S, L), "content_exact": (S, L) (the answer is exactly the
    ≥ 1-bit protocol's), "links_kept": (S, L) (fraction of the stored content → cue synapses above a fast
    cell's single-input threshold after learning), "theory" (L,) (``cam_fragment_theory``), "steps"}."""
    Ps = [int(P) for P in Ps]
    if max(Ps) > n_cues:
        raise ValueError(f"Ps must be <= n_cues = {n_cues} (one cue per memory), got {max(Ps)}")
    keys = ("unique", "content_exact", "links_kept")
    out = {key: np.zeros((len(seeds), len(Ps))) for key in keys}
    steps = 0
    for i, seed in enumerate(seeds):
        for j, P in enumerate(progress(Ps, desc="CAM capacity")):
            g = np.random.default_rng([seed, P, 1])
            n_sets = max(1, min(n_queries, 32 // P))  # small P: several content sets (the sets vary most)
            right, exact, kept = [], [], []
            for k in range(n_sets):
                contents = random_contents(P, n_content, w, seed=[seed, P, k])
                mem = CA3Memory(n_cues, n_content, params, backend=backend)
                mem.run([Learn(c, contents[c]) for c in range(P)], gap=gap)
                steps += mem.t_end
                p = mem.params
                gain = exact_psp_gain(p.cm_fast, p.tau_m_fast, p.tau_syn) * p.kappa("fast")
                kept.append(float((mem.W_cont_cue.T[:P][contents] > (p.v_thresh - p.v_rest) / gain).mean()))
                learned = (mem.W_cue_cont.copy(), mem.W_cont_cue.copy())
                for target in g.integers(P, size=n_queries // n_sets + (k < n_queries % n_sets)):
                    on = np.flatnonzero(contents[target])
                    fragment = _bits(n_content, g.choice(on, min(fragment_bits, on.size), replace=False))
                    mem.W_cue_cont, mem.W_cont_cue = learned[0].copy(), learned[1].copy()
                    r = mem.run([RecallContent(fragment)])[0]
                    steps += mem.t_end
                    want = np.zeros(n_cues, bool)
                    want[:P] = (contents & fragment).any(1)
                    right.append(r.cue_ids == [int(target)])
                    exact.append(bool(np.array_equal(r.cues, want)))
            out["unique"][i, j] = np.mean(right)
            out["content_exact"][i, j] = np.mean(exact)
            out["links_kept"][i, j] = np.mean(kept)
    out.update(P=np.asarray(Ps), load=np.asarray(Ps) / n_content,
               theory=cam_fragment_theory(Ps, n_content, w, fragment_bits), steps=steps)
    return out


def sdr_recall_experiment(n: int, w: int, fragment_bits: int, theta: int, Ps: Sequence[int], n_queries: int = 200,
                          seed=0, backend: str = "auto", per_set: int = 10) -> dict:
    """The SDR side of the chapter's comparison, on the task the CAM gets: store P random w-bit SDRs
    (``labkit.assoc.sdr.random_sdrs``; a new set every ``per_set`` queries), query a fragment of ``fragment_bits``
    ON bits of a random stored one,
    match every stored SDR with threshold θ (the bit-packed ``labkit.kernels.sdr_match``) and count the query
    right when only its own SDR matches. Theory: ``(1 − P_fm(n, w, θ, s=fragment_bits))^(P−1)``
    (``labkit.assoc.sdr.false_match_probability``; the fragment always matches its own SDR). Returns {"P", "load"
    (P / n), "recalled" (L,), "theory" (L,), "n_queries"}."""
    from labkit.assoc.sdr import false_match_probability, random_sdrs
    from labkit.kernels.sdr_match import pack_bits, sdr_match

    fragment_bits = _int("fragment_bits", fragment_bits, low=1, high=w)
    n_queries, per_set = _int("n_queries", n_queries, low=1), _int("per_set", per_set, low=1)
    g = np.random.default_rng(seed)
    recalled, theory = [], []
    pfm = false_match_probability(n, w, theta, s=fragment_bits)
    sizes = [per_set] * (n_queries // per_set) + ([n_queries % per_set] if n_queries % per_set else [])
    for P in Ps:
        hits = 0
        for m in sizes:  # a fresh stored set every per_set queries: the sets, not only the queries, vary
            stored = random_sdrs(int(P), n, w, g)
            target = g.integers(int(P), size=m)
            keys = np.where(stored[target].numpy(), g.random((m, n)), 2.0)
            frag = np.zeros((m, n), bool)
            np.put_along_axis(frag, np.argsort(keys, axis=1)[:, :fragment_bits], True, axis=1)
            match, _ = sdr_match(pack_bits(torch.from_numpy(frag)), pack_bits(stored), theta, backend=backend)
            own = match[torch.arange(m), torch.from_numpy(target)]
            hits += int((own & (match.sum(1) == 1)).sum())
        recalled.append(hits / n_queries)
        theory.append((1.0 - pfm) ** (int(P) - 1))
    return {"P": np.asarray(Ps), "load": np.asarray(Ps) / n, "recalled": np.asarray(recalled),
            "theory": np.asarray(theory), "n_queries": n_queries}


# --------------------------------------------------------------------------------------------------------
# the committed full run
# --------------------------------------------------------------------------------------------------------

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "cam_results.json"

#: Sizes of the full run (``main``); the notebook's FAST mode runs smaller versions live.
FULL = {"stress": dict(n_cues=16, n_content=32, n_ops=120, w=5, gaps=(0, 1, 2, 3, 5, 10), seeds=(0, 1, 2)),
        "scale": dict(n_cues=64, n_content=256),
        "fragments": dict(n_cues=64, n_content=256, cases=(("random", 8, 1), ("random", 8, 2), ("random", 8, 4))),
        "capacity": dict(n_cues=256, n_content=256, w=8, fragment_bits=4, Ps=(2, 4, 8, 16, 32, 64, 128, 256),
                         seeds=(0, 1, 2, 3, 4), gap=4, n_queries=32)}


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def full_run(backend: str = "auto") -> dict:
    """Every experiment of the chapter at full size (``FULL``): {"stress": {variant: stress_test dict}, "scale":
    rows, "fragments": rows, "capacity": capacity_experiment dict, "paper_tests": {variant: {test: exact}},
    "seconds"}."""
    t0 = time.perf_counter()
    variants = param_variants()
    out = {"stress": {}, "paper_tests": {}}
    for name in ("paper, converted", "τ± = 2 ms"):
        out["stress"][name] = stress_test(**FULL["stress"], params=variants[name], backend=backend)
    for name, p in variants.items():
        out["paper_tests"][name] = {t: {k: s[k]["exact"] for k in ("recall_cue", "recall_content")}
                                    for t, s in paper_tests(p, backend).items()}
    out["scale"] = scale_experiment(**FULL["scale"], backend=backend)
    out["fragments"] = scale_experiment(**FULL["fragments"], variants=("paper, converted", "τ± = 2 ms, lateral −6 nA"),
                                        backend=backend)
    out["capacity"] = capacity_experiment(**FULL["capacity"], backend=backend)
    out["seconds"] = time.perf_counter() - t0
    return _jsonable(out)


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/cam_results.json``, written by ``python -m labkit.snn.cam``)."""
    return load_results(RESULTS, "labkit.snn.cam", path, what="CAM results")


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - writes the full run
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 6 CA3 memory: the full-size experiments.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    res = full_run(args.backend)
    args.out.write_text(json.dumps(res))
    for row in res["scale"] + res["fragments"]:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    print({k: np.round(np.mean(v, 0), 3).tolist() for k, v in res["capacity"].items() if k in ("unique", "theory")})
    print(f"{res['seconds']:.0f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
