"""HMT: a hierarchical memory over segments, plugged around a backbone that only sees one segment (He et al., 2024).

The input is cut into segments of ``L`` tokens and a backbone whose context is one segment reads them in turn.
Three memories carry information from one segment to the next:

- **sensory** memory: the last ``k`` token embeddings of the previous segment, put in front of this one;
- **short-term** memory: one embedding ``M_n`` per segment, written by the backbone itself (the output at a
  memory slot placed after the segment's tokens), as in the recurrent memory transformer (RMT);
- **long-term** memory: a cache of the last ``N`` memory embeddings, searched for the one this segment needs.

Segment ``n`` (tokens ``H_n``, embeddings ``X_n``) is processed in three steps:

    1. representation extraction:  S_n = BBM([X_n[0:j], T])[last]                  (T: a learned summary token)
    2. memory search:              P_n = softmax((S_n W_q)(M_{n-N..n-1} W_k)^T / √d_k) · M_{n-N..n-1}
    3. memory encoding:            Y = BBM([X_{n-1}[L-k:L], X_n[0:j], P_n, X_n[j:L], P_n]);  M_n = Y[last]

The logits of segment ``n`` are the head applied to ``Y`` at the segment's own positions, and ``M_n`` joins
the cache (the oldest entry leaves when it holds ``N``). Before the first segment the cache holds one learned
embedding ``M_0``. Without recall (``recall=False``) step 1 and 2 are skipped and ``P_n = M_{n-1}``: a flat
RMT-style recurrence that passes a single embedding along. With ``memory=False`` the backbone reads each
segment alone (the segment-limited baseline).

**One change from the paper, for causality.** The paper reads ``[P_n, H_n, P_n]``: the recalled memory sits
in front of the whole segment, but it was chosen by a summary of the segment's first ``j`` tokens, so a token
at position ``t < j - 1`` would read (through the search weights) tokens after it. Here the read slot ``P_n``
sits right after the ``j`` tokens that chose it: every logit depends only on tokens at or before its position
(a test checks this), and the first ``j`` tokens of a segment read the sensory memory only. RMT-style runs use
the same layout, so HMT and RMT differ only in the search (with ``n_cached = 1`` they are the same model).

The extra parameters over the backbone are ``M_0`` (d), and with recall ``T`` (d) and ``W_q``, ``W_k``
(2·d·d_k): ``extra_parameters``. A ``d = 4096``, 7B-parameter backbone would add 0.5%; a tiny backbone adds
much more, because 2·d² is large next to a few layers of 12·d² each.

The task (``segment_recall``) is a stream: every segment states one new key-value fact and asks for the value
of a fact stated ``distance`` segments earlier, so the segment-limited backbone is at chance by construction
and only a memory can answer. ``hmt_compare`` trains the three models on it (two stages: first as an RMT on
questions one segment back, then each variant on all distances) and scores them per distance, with HMT's
``search_accuracy`` (how often the search picks the right memory). The full run is a script
(``python -m labkit.memory.hmt``) whose JSON ships as ``labkit/assets/hmt.json`` (``load``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.data import SeedLike, rng
from labkit.data.recall import FILLER, IGNORE, key_range, value_range
from labkit.memory.base import MemoryState
from labkit.memory.model import MemoryLM
from labkit.memory.train import evaluate, train_recall
from labkit.runtime import load_results

__all__ = ["FAST", "FULL", "HMT", "RESULTS", "VARIANTS", "extra_parameter_count", "hmt_compare", "load", "main",
           "make_variant", "merge", "search_accuracy", "segment_recall", "segment_recall_baselines"]

VARIANTS = ("backbone", "rmt", "hmt")
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "hmt.json"  # shipped with the package


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def extra_parameter_count(d_model: int, memory: bool = True, recall: bool = True, d_key: int | None = None) -> int:
    """Parameters HMT adds to its backbone: ``M_0`` (d) with memory; ``T`` (d), ``W_q`` and ``W_k`` (d·d_k each)
    with recall. The closed form that ``HMT.extra_parameters`` must equal."""
    d_key = d_model if d_key is None else d_key
    return (d_model if memory else 0) + ((d_model + 2 * d_model * d_key) if recall else 0)


# ---------------------------------------------------------------------------------------------------------
# The model


class HMT(nn.Module):
    """Hierarchical memory transformer around a ``MemoryLM`` backbone with softmax attention.

    ``forward(tokens (B, T), state=None) -> (logits (B, T, vocab_size), state)``; ``T`` must be a positive
    multiple of ``segment_len`` (no padding: a padded segment would write a memory of its own). ``state`` is a
    ``MemoryState`` holding ``"cache"`` (B, C, d), C ≤ ``n_cached`` memory embeddings, oldest first, and
    ``"sensory"`` (B, k, d), the last ``k`` token embeddings read; ``forward(tokens[:, :m·L])`` then
    ``forward(tokens[:, m·L:], state)`` equals one call. Without memory the state is None.

    Options: ``memory`` (False: each segment alone, the segment-limited backbone; needs recall=False and
    sensory=0), ``recall`` (search a cache of up to ``n_cached`` memory embeddings; False: pass only the last
    one, RMT-style), ``sensory`` (k tokens carried from the previous segment, 0 ≤ k ≤ segment_len),
    ``query_len`` (j, the tokens the summary reads and after which the read slot sits, 1 ≤ j ≤ segment_len;
    default segment_len // 2), ``d_key`` (width of the search projections). ``recall_enabled`` (an attribute,
    True with recall) switches the search off at run time, for staged training. The backbone's options
    (``d_model``, ``n_layers``, ``n_heads``, ``short_conv``, ``mlp``) go to ``MemoryLM``.
    """

    def __init__(self, vocab_size: int, segment_len: int, d_model: int = 32, n_layers: int = 2, n_heads: int = 1,
                 *, memory: bool = True, recall: bool = True, sensory: int = 0, n_cached: int = 8,
                 query_len: int | None = None, d_key: int | None = None, short_conv: int = 3,
                 mlp: bool = True) -> None:
        super().__init__()
        _check_int("segment_len", segment_len, 1)
        _check_int("n_cached", n_cached, 1)
        _check_int("sensory", sensory, 0)
        if sensory > segment_len:
            raise ValueError(f"sensory must be <= segment_len={segment_len}, got {sensory}")
        query_len = max(1, segment_len // 2) if query_len is None else query_len
        _check_int("query_len", query_len, 1)
        if query_len > segment_len:
            raise ValueError(f"query_len must be <= segment_len={segment_len}, got {query_len}")
        for name, flag in (("memory", memory), ("recall", recall)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if not memory and (recall or sensory):
            raise ValueError(f"memory=False is the segment-limited backbone: it needs recall=False and sensory=0, "
                             f"got recall={recall}, sensory={sensory}")
        d_key = d_model if d_key is None else d_key
        _check_int("d_key", d_key, 1)
        self.backbone = MemoryLM(vocab_size, d_model=d_model, n_layers=n_layers, mixer="attention", n_heads=n_heads,
                                 short_conv=short_conv, mlp=mlp)
        self.vocab_size, self.d_model, self.segment_len = vocab_size, d_model, segment_len
        self.memory, self.recall, self.sensory, self.n_cached = memory, recall, sensory, n_cached
        self.query_len, self.d_key = query_len, d_key
        if memory:
            self.memory_init = nn.Parameter(torch.randn(d_model))  # M_0, at the scale of the token embeddings
        self.recall_enabled = recall  # a switch for staged training: False reads the last memory only (RMT)
        if recall:
            self.summary_token = nn.Parameter(torch.randn(d_model))  # T
            self.w_q = nn.Linear(d_model, d_key, bias=False)
            self.w_k = nn.Linear(d_model, d_key, bias=False)

    def extra_repr(self) -> str:
        return (f"segment_len={self.segment_len}, memory={self.memory}, recall={self.recall}, "
                f"sensory={self.sensory}, n_cached={self.n_cached}, query_len={self.query_len}, d_key={self.d_key}")

    @property
    def fingerprint(self) -> str:
        return f"HMT(d_model={self.d_model}, {self.extra_repr()})"

    # parameters -------------------------------------------------------------------------------------------

    def backbone_parameters(self) -> int:
        """Parameters of the backbone ``MemoryLM`` alone."""
        return sum(p.numel() for p in self.backbone.parameters())

    def extra_parameters(self) -> int:
        """Parameters HMT adds around the backbone (``M_0``, ``T``, ``W_q``, ``W_k``)."""
        return sum(p.numel() for p in self.parameters()) - self.backbone_parameters()

    def overhead(self) -> float:
        """``extra_parameters / backbone_parameters`` (the paper: 0.5%-2% on billion-parameter backbones)."""
        return self.extra_parameters() / self.backbone_parameters()

    # pieces -----------------------------------------------------------------------------------------------

    def run_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's blocks and final norm on embeddings: x (B, S, d) -> hidden states (B, S, d).

        Every call starts from an empty attention cache and convolution buffer: the backbone sees only ``x``.
        """
        for block in self.backbone.blocks:
            x, _ = block(x, None)
        return self.backbone.norm(x)

    def summaries(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1 for every segment at once: x (B, n, L, d) -> S (B, n, d), the hidden state at ``T`` after
        the segment's first ``query_len`` embeddings."""
        B, n, _, d = x.shape
        head = x[:, :, :self.query_len].reshape(B * n, self.query_len, d)
        summary = self.summary_token.expand(B * n, 1, d)
        return self.run_backbone(torch.cat([head, summary], dim=1))[:, -1].view(B, n, d)

    def search(self, summary: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2: summary (B, d), cache (B, C, d) -> recalled P (B, d) and the weights over the cache (B, C)."""
        q = self.w_q(summary)  # (B, d_k)
        k = self.w_k(cache)  # (B, C, d_k)
        weights = torch.softmax(torch.einsum("bk,bck->bc", q, k) / math.sqrt(self.d_key), dim=-1)
        return torch.einsum("bc,bcd->bd", weights, cache), weights

    # forward ----------------------------------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> MemoryState | None:
        """The state before the first segment: the cache holds ``M_0``, no sensory tokens yet."""
        if not self.memory:
            return None
        return MemoryState(self.fingerprint, {"cache": self.memory_init.expand(batch_size, 1, self.d_model)}, 0)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        if not torch.is_tensor(tokens) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ValueError(f"tokens must be a (B, T) tensor, got {shape}")
        T = tokens.shape[1]
        if T == 0 or T % self.segment_len:
            raise ValueError(f"tokens must hold a positive multiple of segment_len={self.segment_len} tokens "
                             f"(T = n_segments·segment_len, no padding), got T={T}")

    def forward(self, tokens: torch.Tensor, state: MemoryState | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, MemoryState | None]:
        """tokens (B, T) -> logits (B, T, vocab_size) and the state after the last segment.

        With ``return_weights`` (and recall) the state's tensors also hold ``"weights"`` (B, n, C): each
        segment's search weights over the cache it searched, oldest entry first, zero-padded on the left
        while the cache is not full.
        """
        self.check_tokens(tokens)
        B, T = tokens.shape
        L, j, k, d = self.segment_len, self.query_len, self.sensory, self.d_model
        n = T // L
        x = self.backbone.embed(tokens).view(B, n, L, d)
        if not self.memory and state is not None:
            raise ValueError("a model without memory takes no state, got one")
        if state is not None:
            if not isinstance(state, MemoryState):
                raise TypeError(f"state must be a MemoryState or None, got {type(state).__name__}")
            if state.owner != self.fingerprint:
                raise ValueError(f"state was made by {state.owner}, not by this model {self.fingerprint}")
            if state.tensors["cache"].shape[0] != B:
                raise ValueError(f"state holds batch size {state.tensors['cache'].shape[0]}, tokens have {B}")
        if not self.memory:  # the segment-limited backbone: every segment alone, in one batched pass
            hidden = self.run_backbone(x.reshape(B * n, L, d)).view(B, T, d)
            return self.backbone.head(hidden), None
        state = self.initial_state(B) if state is None else state
        cache, previous = state.tensors["cache"], state.tensors.get("sensory")
        recall = self.recall and self.recall_enabled
        summaries = self.summaries(x) if recall else None
        outputs, all_weights = [], []
        for i in range(n):
            seg = x[:, i]
            front = [previous] if (k and previous is not None) else []  # sensory memory (none before segment 0)
            if recall:
                read, weights = self.search(summaries[:, i], cache)
                all_weights.append(F.pad(weights, (self.n_cached - weights.shape[1], 0)))
            else:
                read = cache[:, -1]
            read = read[:, None]
            hidden = self.run_backbone(torch.cat([*front, seg[:, :j], read, seg[:, j:], read], dim=1))
            s = k if front else 0  # where the segment's tokens start
            outputs.append(torch.cat([hidden[:, s:s + j], hidden[:, s + j + 1:s + L + 1]], dim=1))
            cache = torch.cat([cache, hidden[:, -1:]], dim=1)[:, -self.n_cached:]  # M_n joins, the oldest leaves
            if k:
                previous = seg[:, L - k:]
        logits = self.backbone.head(torch.cat(outputs, dim=1))
        tensors = {"cache": cache}
        if k:
            tensors["sensory"] = previous
        if return_weights and recall:
            tensors["weights"] = torch.stack(all_weights, dim=1)
        return logits, MemoryState(self.fingerprint, tensors, state.seen + T)


def make_variant(name: str, vocab_size: int, segment_len: int, d_model: int = 32, n_layers: int = 2, *,
                 sensory: int = 0, n_cached: int = 8, **options) -> HMT:
    """One of ``VARIANTS``: "backbone" (no memory), "rmt" (recall=False, sensory=0), "hmt" (recall over
    ``n_cached`` memories, ``sensory`` tokens carried). Other keywords go to ``HMT``."""
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")
    flags = {"backbone": dict(memory=False, recall=False, sensory=0),
             "rmt": dict(memory=True, recall=False, sensory=0),
             "hmt": dict(memory=True, recall=True, sensory=sensory)}[name]
    return HMT(vocab_size, segment_len, d_model, n_layers, n_cached=n_cached, **flags, **options)


# ---------------------------------------------------------------------------------------------------------
# The task


def segment_recall(n_examples: int, n_segments: int, segment_len: int, vocab_size: int = 32,
                   distance: int | None = None, max_distance: int | None = None, query_len: int | None = None,
                   gap: int = 2, seed: SeedLike = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A stream of facts and questions, one of each per segment. Returns ``inputs, targets``, each
    (n_examples, n_segments·segment_len) int64.

    Segment ``i`` (``L`` tokens, ``j = query_len``, default ``min(L // 2, L - 3 - gap)``; give the model the
    same ``query_len``) holds::

        [ filler, query key q at a uniform position < j | q | filler, a fact k_i v_i, filler | gap filler ]
          <----- what HMT's summary reads (j tokens) --->  ^ position j: the question, graded

    The question sits at position ``j``, the first token after HMT's read slot (``HMT`` inserts the recalled
    memory between tokens ``j-1`` and ``j``). Every segment states a new fact ``k_i v_i`` after it (at a
    uniform start in ``[j+1, L-2-gap]``), and the last ``gap`` tokens are filler: a sensory memory of
    ``k <= gap`` tokens never carries a fact to the next segment, only memory embeddings do. Keys and values
    are distinct within an example (keys from ``[1, V/2)``, values from ``[V/2, V)``, as in
    ``labkit.data.recall``). Every segment ``i >= 1`` asks for the value of the fact ``d`` segments back: its
    key appears once among the first ``j`` tokens and again at position ``j``, whose target is the value
    (-100 elsewhere; segment 0 asks nothing). Nothing inside segment ``i`` tells the answer.

    ``distance=None``: ``d`` uniform in ``1 … min(i, max_distance)`` per question (training). ``distance=d``:
    the questions of segments ``i >= d`` ask at distance ``d`` and are graded; segments ``i < d`` ask at a
    uniform distance ``1 … i`` and are not graded (so the inputs look like training).
    """
    _check_int("n_examples", n_examples, 1)
    _check_int("n_segments", n_segments, 2)
    _check_int("segment_len", segment_len, 4)
    _check_int("gap", gap, 0)
    query_len = max(1, min(segment_len // 2, segment_len - 3 - gap)) if query_len is None else query_len
    _check_int("query_len", query_len, 1)
    if query_len > segment_len - 3 - gap:
        raise ValueError(f"query_len must be <= segment_len - 3 - gap = {segment_len - 3 - gap} (the question, "
                         f"a fact and {gap} filler follow the query), got {query_len}")
    max_distance = n_segments - 1 if max_distance is None else max_distance
    _check_int("max_distance", max_distance, 1)
    if distance is not None:
        _check_int("distance", distance, 1)
        if distance > n_segments - 1:
            raise ValueError(f"distance must be in 1..n_segments-1 = 1..{n_segments - 1}, got {distance}")
    (k_lo, k_hi), (v_lo, v_hi) = key_range(vocab_size), value_range(vocab_size)
    if min(k_hi - k_lo, v_hi - v_lo) < n_segments:
        raise ValueError(f"vocab_size={vocab_size} holds {k_hi - k_lo} keys and {v_hi - v_lo} values, too few "
                         f"for {n_segments} distinct facts: vocab_size must be >= {2 * n_segments + 2}")
    g = rng(seed)
    N, L, j, n = n_examples, segment_len, query_len, n_segments
    keys = k_lo + np.argsort(g.random((N, k_hi - k_lo)), axis=1)[:, :n]  # (N, n): distinct per row
    values = v_lo + np.argsort(g.random((N, v_hi - v_lo)), axis=1)[:, :n]
    fact_at = g.integers(j + 1, L - 1 - gap, size=(N, n))  # start of segment i's fact within the segment
    query_at = g.integers(0, j, size=(N, n))
    seg = np.arange(n)[None, :]
    limit = np.minimum(seg, max_distance)  # questions of segment i reach back at most min(i, max_distance)
    dist = 1 + np.floor(g.random((N, n)) * np.maximum(limit, 1)).astype(np.int64)
    graded = seg >= 1
    if distance is not None:
        fixed = seg >= distance
        dist = np.where(fixed, distance, np.minimum(dist, np.maximum(seg, 1)))
        graded = np.broadcast_to(fixed, (N, n))
    inputs = np.full((N, n * L), FILLER, dtype=np.int64)
    targets = np.full((N, n * L), IGNORE, dtype=np.int64)
    rows = np.arange(N)[:, None]
    start = seg * L
    inputs[rows, start + fact_at], inputs[rows, start + fact_at + 1] = keys, values
    asks = np.broadcast_to(seg >= 1, (N, n))
    source = np.clip(seg - dist, 0, None)  # the segment whose fact is asked
    asked_key = np.take_along_axis(keys, source, axis=1)
    asked_value = np.take_along_axis(values, source, axis=1)
    r, c = np.nonzero(asks)
    inputs[r, c * L + query_at[r, c]] = asked_key[r, c]
    inputs[r, c * L + j] = asked_key[r, c]
    r, c = np.nonzero(graded & asks)
    targets[r, c * L + j] = asked_value[r, c]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def segment_recall_baselines(n_segments: int, vocab_size: int, distances: Sequence[int] | None = None) -> dict:
    """Accuracies on ``segment_recall`` without recalling the right fact.

    - ``chance``: a uniform guess among the values, ``1 / (V - V//2)``: what a model that cannot see the
      earlier segments (the segment-limited backbone) reaches.
    - ``shortcut``: one entry per distance (default 1 … n_segments-1): a memory that kept every earlier
      value but not which key each belongs to guesses among the ``i`` values before segment ``i``; averaged
      over the graded segments ``i = d … n_segments-1``, ``(1/(n-d)) Σ_i 1/i``.
    """
    _check_int("n_segments", n_segments, 2)
    distances = list(range(1, n_segments)) if distances is None else list(distances)
    lo, hi = value_range(vocab_size)
    shortcut = [float(np.mean(1.0 / np.arange(d, n_segments))) for d in distances]
    return {"chance": 1.0 / (hi - lo), "shortcut": shortcut}


# ---------------------------------------------------------------------------------------------------------
# The experiment


@torch.no_grad()
def search_accuracy(model: HMT, inputs: torch.Tensor, targets: torch.Tensor, distance: int) -> float | None:
    """How often HMT's search puts its largest weight on the memory of the segment asked about.

    inputs, targets: (N, T) from ``segment_recall(..., distance=distance)``. At a graded question of segment
    ``i`` the search weights (padded on the left to C = ``n_cached``, oldest first) end with the memories of
    segments ``i-C … i-1``, so the right entry is ``C - distance``. None when ``distance > n_cached``: the
    fact's memory has left the cache.
    """
    if not (model.recall and model.recall_enabled):
        raise ValueError("search_accuracy needs a model with the search on (recall=True, recall_enabled)")
    if distance > model.n_cached:
        return None
    was_training = model.training
    model.eval()
    try:
        _, state = model(inputs, return_weights=True)
    finally:
        model.train(was_training)
    n = inputs.shape[1] // model.segment_len
    graded = (targets.view(len(targets), n, model.segment_len) != IGNORE).any(-1)  # (N, n)
    picked = state["weights"].argmax(-1)  # (N, n)
    return float((picked[graded] == model.n_cached - distance).float().mean())


FAST = dict(n_segments=4, segment_len=8, query_len=2, gap=2, vocab_size=16, d_model=16, n_layers=1, n_cached=3,
            sensory=0, warmup_steps=6, steps=6, batch_size=16, lr=1e-2, n_eval=64)
FULL = dict(n_segments=5, segment_len=8, query_len=2, gap=2, vocab_size=16, d_model=32, n_layers=1, n_cached=3,
            sensory=0, warmup_steps=150, steps=400, batch_size=32, lr=1e-2, n_eval=256)


def _stream(settings: dict, seed: int, stage: int, reach: int | None):
    """``make_batch(step, batch_size)`` for ``train_recall``: fresh ``segment_recall`` batches seeded by
    (seed, stage, step), questions reaching back at most ``reach`` segments."""
    n, L, V = settings["n_segments"], settings["segment_len"], settings["vocab_size"]

    def make_batch(step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return segment_recall(batch_size, n, L, V, max_distance=reach, query_len=settings["query_len"],
                              gap=settings["gap"], seed=np.random.default_rng([int(seed), stage, int(step)]))

    return make_batch


def hmt_compare(distances: Sequence[int] | None = None, seeds: Sequence[int] = (0,), variants: Sequence[str] = VARIANTS,
                fast: bool = False, progress: bool = False, **overrides) -> dict:
    """Train the variants on ``segment_recall`` and score each at each distance.

    Sizes come from ``FAST`` or ``FULL`` (overridden by keyword). Training has two stages, both with
    ``train_recall`` on fresh seeded batches:

    1. ``warmup_steps`` on questions one segment back (``max_distance=1``), with the search switched off
       (``P_n = M_{n-1}``): one memory model, built under ``torch.manual_seed(seed)``, learns to write a
       segment's fact into its memory embedding and to read it back: it is an RMT at this point.
    2. ``steps`` on questions at every distance, from a copy of that model each: "rmt" keeps passing the
       last memory only, "hmt" switches the search over its cache on. The two differ only in the search
       (and in the sensory tokens when ``sensory > 0``: the RMT reads none).

    (Without stage 1, HMT with a cache of 3, trained end to end with the search on, stayed at chance after
    400 steps in our runs (FULL sizes, seed 0, the first 120 steps on one-segment-back questions): the
    softmax over a cache of untrained memories mixes the one that holds the answer with the others, and
    neither the read nor the search gets a useful gradient.) "backbone" (no memory) trains on the same batches of both
    stages. ``n_eval`` held-out examples per distance are scored with ``evaluate``; ``distances`` defaults to
    every distance 1 … n_segments-1.

    Returns ``{"settings", "distances", "seeds", "accuracy": {variant: [[acc per distance] per seed]},
    "params": {variant: {"backbone", "extra", "overhead"}}, "seconds": {variant: [s per seed]}, "chance",
    "shortcut": [per distance], "curves": {variant: [[(step, loss, acc) …] per seed]}, "search": [[HMT's
    ``search_accuracy`` per distance] per seed]}``; a curve's steps count from the start of stage 1 (the
    memory variants share theirs).
    """
    settings = {**(FAST if fast else FULL), **overrides}
    unknown = set(overrides) - set(FULL)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(FULL)}")
    n_segments, L, V = settings["n_segments"], settings["segment_len"], settings["vocab_size"]
    distances = list(range(1, n_segments)) if distances is None else [int(dd) for dd in distances]
    for dd in distances:
        if not 1 <= dd <= n_segments - 1:
            raise ValueError(f"distances must lie in 1..n_segments-1 = 1..{n_segments - 1}, got {dd}")
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"variants must be among {VARIANTS}, got {name!r}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    baselines = segment_recall_baselines(n_segments, V, distances)
    out = {"settings": settings, "distances": distances, "seeds": list(seeds), "accuracy": {}, "params": {},
           "seconds": {}, "curves": {}, "search": [], **baselines}
    sizes = dict(d_model=settings["d_model"], n_layers=settings["n_layers"], n_cached=settings["n_cached"],
                 query_len=settings["query_len"])
    train = dict(lr=settings["lr"], batch_size=settings["batch_size"], progress=False)
    kinds = (["backbone"] if "backbone" in variants else []) + (["memory"] if {"rmt", "hmt"} & set(variants) else [])
    jobs = [(seed, kind) for seed in seeds for kind in kinds]

    def record(name: str, model: HMT, seconds: float, curve: list, eval_sets: dict) -> None:
        out["accuracy"].setdefault(name, []).append([evaluate(model, *eval_sets[dd]) for dd in distances])
        if name == "hmt":
            out["search"].append([search_accuracy(model, *eval_sets[dd], dd) for dd in distances])
        out["seconds"].setdefault(name, []).append(seconds)
        out["curves"].setdefault(name, []).append(curve)
        out["params"][name] = {"backbone": model.backbone_parameters(), "extra": model.extra_parameters(),
                               "overhead": model.overhead()}

    for seed, job in (_progress(jobs, desc="hmt_compare") if progress else jobs):
        eval_sets = {dd: segment_recall(settings["n_eval"], n_segments, L, V, distance=dd,
                                        query_len=settings["query_len"], gap=settings["gap"],
                                        seed=np.random.default_rng([int(seed), 2, dd])) for dd in distances}
        stage1, stage2 = _stream(settings, seed, 0, 1), _stream(settings, seed, 1, None)
        torch.manual_seed(seed)
        if job == "backbone":
            model = make_variant("backbone", V, L, **sizes)
            start = time.perf_counter()
            first = train_recall(model, stage1, steps=settings["warmup_steps"], seed=seed, **train)
            second = train_recall(model, stage2, steps=settings["steps"], seed=seed, **train)
            curve = first["curve"] + [(s + first["steps"], loss, acc) for s, loss, acc in second["curve"]]
            record("backbone", model, time.perf_counter() - start, curve, eval_sets)
            continue
        model = make_variant("hmt", V, L, sensory=settings["sensory"], **sizes)
        model.recall_enabled = False  # stage 1: an RMT
        start = time.perf_counter()
        first = train_recall(model, stage1, steps=settings["warmup_steps"], seed=seed, **train)
        warm_seconds, warm = time.perf_counter() - start, model.state_dict()
        for name in ("rmt", "hmt"):
            if name not in variants:
                continue
            start = time.perf_counter()
            branch = make_variant(name, V, L, sensory=settings["sensory"], **sizes)
            missing, unexpected = branch.load_state_dict(warm, strict=False)
            if missing:  # pragma: no cover - the branches only ever drop the search's parameters
                raise RuntimeError(f"stage-1 weights lack {missing}")
            second = train_recall(branch, stage2, steps=settings["steps"], seed=seed, **train)
            curve = first["curve"] + [(s + first["steps"], loss, acc) for s, loss, acc in second["curve"]]
            record(name, branch, warm_seconds + time.perf_counter() - start, curve, eval_sets)
    out["accuracy"] = {name: out["accuracy"][name] for name in variants}
    return out


def _progress(iterable, desc: str):
    from labkit.runtime import progress

    return progress(iterable, desc=desc)


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/hmt.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.memory.hmt", path, what="HMT results")


def merge(parts: Sequence[dict]) -> dict:
    """One result from several ``hmt_compare`` runs with the same settings and distances, different seeds."""
    if not parts:
        raise ValueError("parts must hold at least one result, got none")
    first = parts[0]
    for part in parts[1:]:
        for key in ("settings", "distances", "chance", "shortcut", "params"):
            if part[key] != first[key]:
                raise ValueError(f"the results to merge differ in {key!r}: {first[key]} and {part[key]}")
    seeds = [s for part in parts for s in part["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the results to merge share seeds: {seeds}")
    out = {key: first[key] for key in ("settings", "distances", "chance", "shortcut", "params")}
    out["seeds"] = seeds
    for key in ("accuracy", "seconds", "curves"):
        out[key] = {name: [x for part in parts for x in part[key][name]] for name in first[key]}
    out["search"] = [x for part in parts for x in part["search"]]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m labkit.memory.hmt", description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="the FAST configuration (seconds)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default labkit/assets/hmt.json)")
    parser.add_argument("--append", action="store_true",
                        help="add these seeds to the results already in --out (run seeds one at a time)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or (Path("/tmp/hmt_fast.json") if args.fast else RESULTS)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    start = time.perf_counter()
    result = hmt_compare(seeds=seeds, fast=args.fast, progress=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": time.perf_counter() - start,
            "seeds": list(seeds), "python": platform.python_version(), "torch": torch.__version__,
            "threads": args.threads, "command": " ".join(sys.argv)}
    if args.append and out.exists():
        before = json.loads(out.read_text())
        result = {**merge([before, result]), "meta": before["meta"] + [meta]}
    else:
        result["meta"] = [meta]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for name, accs in result["accuracy"].items():
        mean = np.mean(accs, axis=0)
        print(f"{name:>9}: " + "  ".join(f"d={dd}: {a:.2f}" for dd, a in zip(result["distances"], mean)))
    print(f"chance {result['chance']:.3f}, shortcut {np.round(result['shortcut'], 2).tolist()}; seeds "
          f"{result['seeds']}; {meta['seconds']:.0f} s -> {out}")
    return result


if __name__ == "__main__":
    main()
