"""Critical reading: two memory mechanisms known only from their abstracts, built and put to a controlled test.

"Synaptic Resonance" and "Contextual Memory Reweaving" (both 2025, arXiv) describe their mechanisms in words
and give no equation. To test a claim we must first choose one concrete model per abstract; every choice is
stated here and is a knob of the module.

**Synaptic Resonance** ("continuously adjusts synaptic weight matrices based on contextual relevance ...
during training and inference") becomes a Hebbian, relevance-gated fast weight on the input projection
``W`` (d → 4d) of every block's MLP, with ``x_t`` that projection's input and ``y_t = W x_t + b`` its
static output::

    ΔW_t = λ ΔW_{t-1} + η r_t y_t x_tᵀ,   ΔW_0 = 0            (the stated equation)
    out_t = y_t + ΔW_{t-1} x_t                               (read with the weights before token t)
    r_t = max(0, cos(x_t, mean(x_1 … x_{t-1})))              (relevance: agreement with the running context)

η = eta·exp(s) (plasticity; Adam moves s, so η changes by ratios) and λ = sigmoid(·) (retention) are learned
scalars per block; eta = 0.003 by default (η|x|² ≈ 0.1 for RMS-normalised x at d = 32). Because ``y_t`` is the static
response, the update is linear and unrolls to ``ΔW_{t-1} x_t = η Σ_{s<t} λ^{t-1-s} r_s (x_s·x_t) y_s``:
decayed *linear attention* with tied query and key ``x`` and value ``y`` (``hebbian_parallel``; the loop
``hebbian_recurrent`` is the specification). ``eta=0`` is the baseline model exactly.

**Contextual Memory Reweaving** ("reweaving of latent states captured at different processing layers ...
Layered Latent State Reconstruction ... without external memory modules") caches the residual stream
``h^ℓ`` at the embedding output (ℓ = 0) and after every block but the last, and adds to the last block's
output ``x_t`` a gated, learned combination of their reconstructions::

    x_t ← x_t + g ⊙ Σ_ℓ P_ℓ c^ℓ_t
    read="mean":       c^ℓ_t = RMSNorm(mean_{s ≤ t} h^ℓ_s)
    read="attention":  c^ℓ_t = Σ_{s ≤ t} softmax_s(q_t·k^ℓ_s / √d) v^ℓ_s,  q = W_q n(x), k, v = W_{k,v}^ℓ n(h^ℓ)

``g`` (a vector, init ``gate``) and the matrices are learned; ``gate=0`` is the baseline exactly.
``past=False`` restricts every read to the current position (``s = t``): the same parameters without any
past context, the control that separates "integrating past states" from "more parameters".

``critical_compare`` trains matched models (same backbone, size, steps, data and seed) on the chapter's
tasks: MQAR with power-law key frequencies on a sliding-window attention backbone (recall at two lengths,
recall of rare keys), a byte-level LM on CPython's pydoc text (perplexity, and under random token
replacement, and on its rarest bytes), and the cost (parameters, median CPU time of a training step).
``python -m labkit.memory.critical`` runs ``FULL`` and writes ``labkit/assets/critical.json`` (``load``): 63
trainings, ≈ 14 min of one CPU thread (``--seeds 0,1``: ≈ 9.5 min). The committed file was made in pieces
of ≤ 2.5 min, ``--parts mqar48 --seeds 0 --out a.json`` … then ``--merge a.json b.json … --out``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import inspect
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.data import rng
from labkit.data.recall import IGNORE, key_range, mqar
from labkit.memory.model import MemoryLM, RMSNorm
from labkit.memory.train import evaluate, train_recall
from labkit.runtime import load_results
from labkit.runtime import progress as progress_bar

__all__ = [
    "FULL", "PARTS", "QUICK", "READS", "RELEVANCES", "VARIANTS", "CriticalSettings", "MemoryReweaving",
    "SynapticResonance", "build_variant", "context_relevance", "critical_compare", "hebbian_parallel",
    "hebbian_recurrent", "key_buckets", "lm_batch_stream", "lm_eval_set", "lm_perplexity", "lm_point", "load",
    "main", "merge", "mqar_point", "mqar_zipf", "n_params", "rare_bytes", "rare_key_accuracy", "replace_tokens",
    "step_time", "strength_curve", "summarize", "table_rows", "timing_point",
]

RELEVANCES = ("context", "uniform")
READS = ("mean", "attention")


def _check_scalar(name: str, value: float, low: float = -math.inf, high: float = math.inf,
                  open_low: bool = False, open_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    bad = (value <= low if open_low else value < low) or (value >= high if open_high else value > high)
    if bad:
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, MemoryLM):
        raise TypeError(f"model must be a MemoryLM, got {type(model).__name__}")


# ------------------------------------------------------------------------------------------------------
# Synaptic Resonance: Hebbian, relevance-gated fast weights
# ------------------------------------------------------------------------------------------------------


def context_relevance(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """r_t = max(0, cos(x_t, mean(x_1 … x_{t-1}))), r_1 = 0. x: (B, T, d) -> r: (B, T).

    Causal: r_t reads only x_1 … x_t.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, d), got shape {tuple(x.shape)}")
    B, T, _ = x.shape
    prefix = torch.cumsum(x, dim=1) - x  # sum of x_1 … x_{t-1}
    count = torch.arange(T, device=x.device, dtype=x.dtype).clamp(min=1)[None, :, None]
    context = prefix / count  # (B, T, d); zero at t = 1
    cos = (x * context).sum(-1) / (x.norm(dim=-1) * context.norm(dim=-1) + eps)
    return cos.clamp(min=0.0)


def _check_hebbian(x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, d_in), got shape {tuple(x.shape)}")
    if y.dim() != 3 or y.shape[:2] != x.shape[:2]:
        raise ValueError(f"y must be (B={x.shape[0]}, T={x.shape[1]}, d_out), got shape {tuple(y.shape)}")
    if r.shape != x.shape[:2]:
        raise ValueError(f"r must be (B={x.shape[0]}, T={x.shape[1]}), got shape {tuple(r.shape)}")


def hebbian_recurrent(x: torch.Tensor, y: torch.Tensor, r: torch.Tensor, eta: float | torch.Tensor,
                      lam: float | torch.Tensor, delta0: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification, one token at a time: read ``ΔW_{t-1} x_t``, then ``ΔW_t = λ ΔW_{t-1} + η r_t y_t x_tᵀ``.

    x: (B, T, d_in) presynaptic, y: (B, T, d_out) postsynaptic, r: (B, T) relevance; ``delta0``
    (B, d_out, d_in) the fast weight before the first token (zeros if None).
    Returns (reads (B, T, d_out) with ``reads[:, t] = ΔW_{t-1} x_t``, ΔW_T (B, d_out, d_in)).
    """
    _check_hebbian(x, y, r)
    B, T, d_in = x.shape
    delta = x.new_zeros(B, y.shape[-1], d_in) if delta0 is None else delta0
    if delta.shape != (B, y.shape[-1], d_in):
        raise ValueError(f"delta0 must be (B={B}, d_out={y.shape[-1]}, d_in={d_in}), got {tuple(delta.shape)}")
    reads = []
    for t in range(T):
        reads.append(torch.einsum("boi,bi->bo", delta, x[:, t]))
        delta = lam * delta + eta * r[:, t, None, None] * y[:, t, :, None] * x[:, t, None, :]
    return torch.stack(reads, dim=1), delta


def hebbian_parallel(x: torch.Tensor, y: torch.Tensor, r: torch.Tensor, eta: float | torch.Tensor,
                     lam: float | torch.Tensor) -> torch.Tensor:
    """``ΔW_{t-1} x_t`` for every t at once (ΔW_0 = 0): ``η Σ_{s<t} λ^{t-1-s} r_s (x_s·x_t) y_s``.

    x: (B, T, d_in), y: (B, T, d_out), r: (B, T); λ in (0, 1]. Returns (B, T, d_out). O(T² (d_in + d_out)).
    """
    _check_hebbian(x, y, r)
    T = x.shape[1]
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    t = torch.arange(T, device=x.device)
    lag = (t[:, None] - 1 - t[None, :]).clamp(min=0).to(x.dtype)  # t - 1 - s
    decay = torch.where(t[None, :] < t[:, None], torch.exp(lag * torch.log(lam)), torch.zeros((), dtype=x.dtype))
    scores = (x @ x.transpose(1, 2)) * decay * r[:, None, :]  # (B, T, T): row t, column s
    return eta * (scores @ y)


class SynapticResonance(nn.Module):
    """A ``MemoryLM`` whose MLP input projections carry relevance-gated Hebbian fast weights.

    ``SynapticResonance(model, eta, lam, relevance)`` wraps ``model`` (not copied: the wrapper trains its
    weights). In every block the projection ``W`` (d → 4d) of the MLP answers ``y_t + ΔW_{t-1} x_t``
    (``hebbian_parallel``) during training and inference. ``eta`` is the initial plasticity (``eta=0``: the
    wrapped model exactly, at initialisation), ``lam`` the initial retention λ ∈ (0, 1), both learned per
    block; ``relevance`` is "context" (``context_relevance``) or "uniform" (r_t = 1).

    ``forward(tokens (B, T), state=None) -> (logits (B, T, V), state)``: whole sequences only (the fast
    weights start from zero; ``state`` must be None).
    """

    def __init__(self, model: MemoryLM, eta: float = 0.003, lam: float = 0.9, relevance: str = "context") -> None:
        super().__init__()
        _check_model(model)
        if any(block.mlp is None for block in model.blocks):
            raise ValueError("model must have MLPs (mlp=True): the fast weights live on the MLP's input projection")
        _check_scalar("eta", eta)
        _check_scalar("lam", lam, 0.0, 1.0, open_low=True, open_high=True)
        if relevance not in RELEVANCES:
            raise ValueError(f"relevance must be one of {RELEVANCES}, got {relevance!r}")
        self.model, self.relevance = model, relevance
        n = len(model.blocks)
        self.eta0 = float(eta)
        self.eta_log_scale = nn.Parameter(torch.zeros(n))  # η = eta · exp(s): positive, moves by ratios
        self.lam_logit = nn.Parameter(torch.full((n,), math.log(lam / (1.0 - lam))))
        self._active = False
        self._hooks = [block.mlp[0].register_forward_hook(self._hook(i)) for i, block in enumerate(model.blocks)]

    @property
    def eta(self) -> torch.Tensor:
        """Plasticity η per block, (n_layers,): ``eta · exp(s)`` (exactly 0 for ``eta=0``)."""
        return self.eta0 * torch.exp(self.eta_log_scale)

    @property
    def lam(self) -> torch.Tensor:
        """Retention λ per block, (n_layers,)."""
        return torch.sigmoid(self.lam_logit)

    def extra_repr(self) -> str:
        return f"relevance={self.relevance!r}"

    def _hook(self, i: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not self._active:  # the wrapped model called on its own stays the plain model
                return None
            x = inputs[0]
            r = context_relevance(x) if self.relevance == "context" else x.new_ones(x.shape[:2])
            return output + hebbian_parallel(x, output, r, self.eta[i], self.lam[i])
        return hook

    def forward(self, tokens: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        if state is not None:
            raise ValueError("SynapticResonance runs whole sequences only: state must be None, got a state")
        self._active = True
        try:
            return self.model(tokens)
        finally:
            self._active = False


# ------------------------------------------------------------------------------------------------------
# Contextual Memory Reweaving: layered latent state reconstruction
# ------------------------------------------------------------------------------------------------------


class MemoryReweaving(nn.Module):
    """A ``MemoryLM`` whose last block's output gets back a gated reconstruction of earlier layers' states.

    ``MemoryReweaving(model, gate, read, past)`` wraps ``model`` (not copied). Sources: the embedding output
    and the output of every block but the last (``n_layers`` states). ``read`` is "mean" (causal mean over
    positions ≤ t) or "attention" (one softmax head per source over positions ≤ t, no window);
    ``past=False`` reads position t only (the parameter-matched control). ``gate`` is the initial value of
    the learned gate vector g (``gate=0``: the wrapped model exactly, at initialisation).

    ``forward(tokens (B, T), state=None) -> (logits (B, T, V), state)``; whole sequences only.
    """

    def __init__(self, model: MemoryLM, gate: float = 0.1, read: str = "mean", past: bool = True) -> None:
        super().__init__()
        _check_model(model)
        _check_scalar("gate", gate)
        if read not in READS:
            raise ValueError(f"read must be one of {READS}, got {read!r}")
        if not isinstance(past, bool):
            raise ValueError(f"past must be a bool, got {past!r}")
        d, n = model.d_model, len(model.blocks)
        self.model, self.read, self.past = model, read, past
        self.norms = nn.ModuleList(RMSNorm(d) for _ in range(n))
        self.proj = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n))
        if read == "attention":
            self.query_norm = RMSNorm(d)
            self.q_proj = nn.Linear(d, d, bias=False)
            self.k_proj = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n))
            self.v_proj = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n))
        self.gate = nn.Parameter(torch.full((d,), float(gate)))

    def extra_repr(self) -> str:
        return f"read={self.read!r}, past={self.past}"

    def reconstruct(self, x: torch.Tensor, cache: Sequence[torch.Tensor]) -> torch.Tensor:
        """The reweaving term ``g ⊙ Σ_ℓ P_ℓ c^ℓ``. x: (B, T, d) the last block's output; cache: one (B, T, d)
        per source layer. Returns (B, T, d)."""
        if len(cache) != len(self.proj):
            raise ValueError(f"cache must hold {len(self.proj)} layer states, got {len(cache)}")
        T = x.shape[1]
        total = torch.zeros_like(x)
        if self.read == "attention":
            q = self.q_proj(self.query_norm(x))
            i = torch.arange(T, device=x.device)
            mask = (i[None, :] <= i[:, None]) if self.past else (i[None, :] == i[:, None])
        for ell, h in enumerate(cache):
            if self.read == "mean":
                c = h if not self.past else torch.cumsum(h, dim=1) / torch.arange(
                    1, T + 1, device=h.device, dtype=h.dtype)[None, :, None]
                c = self.norms[ell](c)
            else:
                hn = self.norms[ell](h)
                c = F.scaled_dot_product_attention(q, self.k_proj[ell](hn), self.v_proj[ell](hn), attn_mask=mask)
            total = total + self.proj[ell](c)
        return self.gate * total

    def forward(self, tokens: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        if state is not None:
            raise ValueError("MemoryReweaving runs whole sequences only: state must be None, got a state")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        m = self.model
        x = m.embed(tokens)
        cache, states = [x], []
        for i, block in enumerate(m.blocks):
            x, layer_state = block(x, None)
            states.append(layer_state)
            if i < len(m.blocks) - 1:
                cache.append(x)
        x = x + self.reconstruct(x, cache)
        return m.head(m.norm(x)), states


# ------------------------------------------------------------------------------------------------------
# Variants: one seeded backbone, then the add-on
# ------------------------------------------------------------------------------------------------------

# name -> (add-on, its options); every variant starts from the same seeded MemoryLM.
VARIANTS: dict[str, tuple[str | None, dict]] = {
    "baseline": (None, {}),
    "resonance": ("resonance", {}),
    "resonance (η=0.001)": ("resonance", {"eta": 0.001}),
    "resonance (η=0.01)": ("resonance", {"eta": 0.01}),
    "resonance (η=0.03)": ("resonance", {"eta": 0.03}),
    "resonance (uniform r)": ("resonance", {"relevance": "uniform"}),
    "reweave (mean)": ("reweave", {"read": "mean"}),
    "reweave (mean, no past)": ("reweave", {"read": "mean", "past": False}),
    "reweave (attention)": ("reweave", {"read": "attention"}),
    "reweave (attention, no past)": ("reweave", {"read": "attention", "past": False}),
}


def build_variant(variant: str, vocab_size: int, d_model: int, n_layers: int = 2, window: int | None = 16,
                  seed: int = 0, **options) -> nn.Module:
    """A ``MemoryLM`` (sliding-window attention, ``window`` tokens; None: full attention) built under
    ``torch.manual_seed(seed)``, wrapped by the add-on of ``VARIANTS[variant]`` (its options updated by
    ``options``). The backbone's weights are the same for every variant at the same seed."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    addon, defaults = VARIANTS[variant]
    torch.manual_seed(seed)
    mixer_options = {} if window is None else {"window": window}
    model = MemoryLM(vocab_size, d_model=d_model, n_layers=n_layers, mixer="attention", mixer_options=mixer_options)
    opts = {**defaults, **options}
    if addon is None:
        if opts:
            raise ValueError(f"the baseline takes no options, got {sorted(opts)}")
        return model
    return SynapticResonance(model, **opts) if addon == "resonance" else MemoryReweaving(model, **opts)


def n_params(model: nn.Module) -> int:
    """Trainable numbers of a model (shared tensors once)."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------------
# Data: MQAR with power-law key frequencies; bytes of the pydoc text
# ------------------------------------------------------------------------------------------------------


def mqar_zipf(n_examples: int, seq_len: int, n_pairs: int, vocab_size: int = 128, seed: int | np.random.Generator = 0,
              zipf_s: float = 1.2, power_a: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``labkit.data.recall.mqar`` with keys drawn by frequency: the key token k (rank k) ∝ k^(-zipf_s).

    (``mqar``'s own ``power_a`` shapes *where* the queries sit, not which keys occur: its keys are uniform.)
    Each example's n distinct keys are a weighted draw without replacement (Gumbel top-k) and replace the
    uniform keys everywhere they occur. Returns inputs, targets (n_examples, seq_len) as ``mqar``.
    """
    _check_scalar("zipf_s", zipf_s, 0.0)
    g = rng(seed)
    inputs, targets = mqar(n_examples, seq_len, n_pairs, vocab_size, seed=g, power_a=power_a)
    lo, hi = key_range(vocab_size)
    log_w = -zipf_s * np.log(np.arange(lo, hi, dtype=np.float64))  # token k has rank k
    new = lo + np.argsort(-(log_w + g.gumbel(size=(n_examples, hi - lo))), axis=1)[:, :n_pairs]  # (N, n)
    old = inputs[:, 0:2 * n_pairs:2].numpy()  # the uniform keys, as written in the pairs block
    table = np.tile(np.arange(vocab_size), (n_examples, 1))
    np.put_along_axis(table, old, new, axis=1)
    remapped = np.take_along_axis(table, inputs.numpy(), axis=1)
    return torch.from_numpy(remapped), targets


def key_buckets(vocab_size: int, n_buckets: int = 3) -> list[tuple[int, int]]:
    """The key tokens split by frequency rank into ``n_buckets`` ranges ``[lo, hi)``: frequent first, rare last."""
    lo, hi = key_range(vocab_size)
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, int) or not 1 <= n_buckets <= hi - lo:
        raise ValueError(f"n_buckets must be an int in 1..{hi - lo}, got {n_buckets!r}")
    edges = np.linspace(lo, hi, n_buckets + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(inputs[i:i + batch_size])[0] for i in range(0, len(inputs), batch_size)])
    finally:
        model.train(was_training)


def rare_key_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                      n_buckets: int = 3) -> list[dict]:
    """MQAR accuracy per key-frequency bucket (``key_buckets``): [{"keys", "queries", "accuracy"}], frequent first.

    inputs, targets: (N, T) from ``mqar_zipf``; a query's bucket is the bucket of its key token.
    """
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs and targets must have the same shape, got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    logits = _logits(model, inputs)
    mask = targets != IGNORE
    keys, right = inputs[mask], logits[mask].argmax(-1) == targets[mask]
    rows = []
    for lo, hi in key_buckets(vocab_size, n_buckets):
        sel = (keys >= lo) & (keys < hi)
        n = int(sel.sum())
        rows.append({"keys": f"{lo}-{hi - 1}", "queries": n,
                     "accuracy": float(right[sel].float().mean()) if n else None})
    return rows


def lm_batch_stream(context: int, seed: int = 0):
    """``make_batch(step, batch_size)`` of byte windows of the pydoc *train* split: inputs (B, context) and the
    next bytes as targets (B, context), every position graded. Seeded by (seed, step)."""
    from labkit.data.corpus import english_tokens

    text = torch.from_numpy(english_tokens("train").astype(np.int64))

    def make_batch(step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = np.random.default_rng(np.random.SeedSequence([int(seed), 2, int(step)]))
        starts = torch.from_numpy(g.integers(0, len(text) - context - 1, size=batch_size))
        rows = text[starts[:, None] + torch.arange(context + 1)]
        return rows[:, :-1], rows[:, 1:]

    return make_batch


def lm_eval_set(context: int, n_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_windows`` evenly spaced byte windows of the *held-out* split: inputs, targets (n_windows, context)."""
    from labkit.data.corpus import english_tokens

    text = torch.from_numpy(english_tokens("heldout").astype(np.int64))
    starts = torch.linspace(0, len(text) - context - 2, n_windows).long()
    rows = text[starts[:, None] + torch.arange(context + 1)]
    return rows[:, :-1], rows[:, 1:]


def rare_bytes(fraction: float = 0.05) -> torch.Tensor:
    """The least frequent bytes of the *train* split that together make up at most ``fraction`` of it, (256,) bool."""
    from labkit.data.corpus import english_tokens

    _check_scalar("fraction", fraction, 0.0, 1.0)
    counts = np.bincount(english_tokens("train"), minlength=256).astype(np.float64)
    order = np.argsort(counts, kind="stable")  # rarest first
    mass = np.cumsum(counts[order]) / counts.sum()
    rare = np.zeros(256, dtype=bool)
    rare[order[mass <= fraction]] = True
    return torch.from_numpy(rare)


def replace_tokens(tokens: torch.Tensor, p: float, vocab_size: int, seed: int = 0,
                   protect: torch.Tensor | None = None) -> torch.Tensor:
    """Input noise: each token replaced, with probability ``p``, by a uniform random token of ``[0, vocab_size)``.

    tokens: (B, T); ``protect`` (B, T) bool marks positions never replaced. Seeded; returns a new tensor.
    """
    _check_scalar("p", p, 0.0, 1.0)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
    if protect is not None and protect.shape != tokens.shape:
        raise ValueError(f"protect must have the shape of tokens {tuple(tokens.shape)}, got {tuple(protect.shape)}")
    g = torch.Generator().manual_seed(seed)
    hit = torch.rand(tokens.shape, generator=g) < p
    if protect is not None:
        hit &= ~protect
    noise = torch.randint(0, vocab_size, tokens.shape, generator=g)
    return torch.where(hit, noise, tokens)


def lm_perplexity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  select: torch.Tensor | None = None) -> float:
    """exp(mean next-token cross-entropy): perplexity per byte. inputs, targets: (N, T); ``select`` (N, T)
    bool keeps only those positions (default: all)."""
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs and targets must have the same shape, got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    logits = _logits(model, inputs)
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    if select is not None:
        if select.shape != targets.shape:
            raise ValueError(f"select must have the shape of targets {tuple(targets.shape)}, got {tuple(select.shape)}")
        if not bool(select.any()):
            raise ValueError("select keeps no position")
        losses = losses[select.reshape(-1)]
    return float(torch.exp(losses.mean()))


# ------------------------------------------------------------------------------------------------------
# Cost
# ------------------------------------------------------------------------------------------------------


def step_time(models: dict[str, nn.Module], inputs: torch.Tensor, targets: torch.Tensor, repeats: int = 7,
              lr: float = 1e-3) -> dict[str, dict[str, float]]:
    """Median time of one training step (forward, loss, backward, AdamW) per model, in ms:
    ``{name: {"cpu_ms", "wall_ms"}}``.

    ``cpu_ms`` is this process's CPU time (``time.process_time``): with torch on one thread it is the work
    done, and a busy shared machine does not inflate it the way it inflates ``wall_ms``. The models take
    turns within each repeat; one warm-up step each first. Trains copies: the models passed in are left
    unchanged. inputs, targets: (B, T).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    copies = {name: copy.deepcopy(m) for name, m in models.items()}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=lr) for name, m in copies.items()}
    cpu: dict[str, list[float]] = {name: [] for name in copies}
    wall: dict[str, list[float]] = {name: [] for name in copies}
    graded = targets != IGNORE
    for rep in range(repeats + 1):
        for name, m in copies.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            logits, _ = m(inputs)
            loss = F.cross_entropy(logits[graded], targets[graded])
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if rep:
                cpu[name].append(1e3 * (time.process_time() - start_cpu))
                wall[name].append(1e3 * (time.perf_counter() - start))
    return {name: {"cpu_ms": statistics.median(cpu[name]), "wall_ms": statistics.median(wall[name])}
            for name in copies}


# ------------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalSettings:
    """One controlled comparison: the variants, the MQAR and LM set-ups, the seeds and the budgets.

    ``variants`` run on every task; ``sweep_variants`` (the resonance strength sweep) on MQAR at
    ``seq_lens[0]`` only. Every model is a 2-layer ``MemoryLM`` with sliding-window attention (``window``).
    """

    variants: tuple[str, ...] = ("baseline", "resonance", "reweave (mean)", "reweave (mean, no past)",
                                 "reweave (attention)", "reweave (attention, no past)")
    sweep_variants: tuple[str, ...] = ("resonance (η=0.001)", "resonance (η=0.01)", "resonance (η=0.03)")
    seeds: tuple[int, ...] = (0, 1, 2)
    window: int = 16
    n_layers: int = 2
    # MQAR with power-law keys
    seq_lens: tuple[int, ...] = (48, 96)
    n_pairs: int = 8
    vocab_size: int = 128
    zipf_s: float = 1.2
    d_model: int = 32
    mqar_steps: int = 250
    mqar_batch: int = 32
    mqar_lr: float = 1e-2
    n_eval: int = 512
    # byte-level LM on the pydoc text
    lm_context: int = 64
    lm_d_model: int = 48
    lm_steps: int = 250
    lm_batch: int = 16
    lm_lr: float = 3e-3
    lm_eval_windows: int = 128
    noise: tuple[float, ...] = (0.0, 0.1, 0.2)
    rare_byte_fraction: float = 0.05
    # cost
    timing_repeats: int = 9
    timing_seq_len: int = 96


FULL = CriticalSettings()
QUICK = replace(FULL, variants=("baseline", "resonance", "reweave (mean)"), sweep_variants=(), seeds=(0,),
                seq_lens=(32,), mqar_steps=20, lm_steps=20, n_eval=64, lm_eval_windows=16, timing_repeats=2,
                timing_seq_len=32)
PARTS = ("mqar", "lm", "timing")


def _mqar_eval(settings: CriticalSettings, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = np.random.default_rng(np.random.SeedSequence([int(seed), 1, int(seq_len)]))
    return mqar_zipf(settings.n_eval, seq_len, settings.n_pairs, settings.vocab_size, seed=g, zipf_s=settings.zipf_s)


def _mqar_stream(settings: CriticalSettings, seq_len: int, seed: int):
    def make_batch(step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = np.random.default_rng(np.random.SeedSequence([int(seed), 0, int(seq_len), int(step)]))
        return mqar_zipf(batch_size, seq_len, settings.n_pairs, settings.vocab_size, seed=g, zipf_s=settings.zipf_s)

    return make_batch


def _learned(model: nn.Module) -> dict:
    """The add-on's learned knobs after training (η, λ per block; mean |g|)."""
    with torch.no_grad():
        if isinstance(model, SynapticResonance):
            return {"eta": [float(v) for v in model.eta], "lam": [float(v) for v in model.lam]}
        if isinstance(model, MemoryReweaving):
            return {"gate_abs_mean": float(model.gate.abs().mean())}
    return {}


def mqar_point(variant: str, settings: CriticalSettings = FULL, seq_len: int | None = None, seed: int = 0,
               steps: int | None = None) -> dict:
    """Train one variant on power-law MQAR (``mqar_zipf``) and score it on a held-out set.

    Returns {"task": "mqar", "variant", "seq_len", "seed", "steps", "accuracy", "buckets" (``rare_key_accuracy``),
    "params", "seconds", learned knobs}. ``seq_len`` defaults to ``settings.seq_lens[0]``, ``steps`` to
    ``settings.mqar_steps``. Same settings and seed: same numbers (same machine and thread count).
    """
    seq_len = settings.seq_lens[0] if seq_len is None else seq_len
    steps = settings.mqar_steps if steps is None else steps
    model = build_variant(variant, settings.vocab_size, settings.d_model, settings.n_layers, settings.window, seed=seed)
    eval_data = _mqar_eval(settings, seq_len, seed)
    out = train_recall(model, _mqar_stream(settings, seq_len, seed), steps=steps, lr=settings.mqar_lr,
                       batch_size=settings.mqar_batch, seed=seed, progress=False)
    return {"task": "mqar", "variant": variant, "seq_len": seq_len, "seed": seed, "steps": steps,
            "accuracy": evaluate(model, *eval_data),
            "buckets": rare_key_accuracy(model, *eval_data, settings.vocab_size),
            "params": n_params(model), "seconds": out["seconds"], **_learned(model)}


def lm_point(variant: str, settings: CriticalSettings = FULL, seed: int = 0, steps: int | None = None) -> dict:
    """Train one variant as a byte-level LM on the pydoc text; perplexity on held-out windows, clean and with a
    fraction ``p`` of the input bytes replaced (``settings.noise``), and on the rare bytes (``rare_bytes``).

    Returns {"task": "lm", "variant", "seq_len", "seed", "steps", "perplexity" {str(p): ppl},
    "rare_perplexity" (clean input), "params", "seconds", learned knobs}.
    """
    steps = settings.lm_steps if steps is None else steps
    model = build_variant(variant, 256, settings.lm_d_model, settings.n_layers, settings.window, seed=seed)
    out = train_recall(model, lm_batch_stream(settings.lm_context, seed), steps=steps, lr=settings.lm_lr,
                       batch_size=settings.lm_batch, seed=seed, progress=False)
    inputs, targets = lm_eval_set(settings.lm_context, settings.lm_eval_windows)
    ppl = {str(p): lm_perplexity(model, replace_tokens(inputs, p, 256, seed=1000 + seed), targets)
           for p in settings.noise}
    rare = rare_bytes(settings.rare_byte_fraction)[targets]
    return {"task": "lm", "variant": variant, "seq_len": settings.lm_context, "seed": seed, "steps": steps,
            "perplexity": ppl, "rare_perplexity": lm_perplexity(model, inputs, targets, select=rare),
            "rare_targets": int(rare.sum()), "params": n_params(model), "seconds": out["seconds"], **_learned(model)}


def timing_point(settings: CriticalSettings = FULL) -> dict:
    """Parameters and median CPU ms (``ms_per_step``) and wall ms per training step of every variant
    (``step_time`` on one MQAR batch at ``timing_seq_len``)."""
    L = settings.timing_seq_len
    models = {v: build_variant(v, settings.vocab_size, settings.d_model, settings.n_layers, settings.window, seed=0)
              for v in settings.variants}
    inputs, targets = _mqar_stream(settings, L, 0)(0, settings.mqar_batch)
    ms = step_time(models, inputs, targets, repeats=settings.timing_repeats)
    return {v: {"ms_per_step": ms[v]["cpu_ms"], "wall_ms_per_step": ms[v]["wall_ms"], "params": n_params(m),
                "seq_len": L, "batch": settings.mqar_batch} for v, m in models.items()}


def critical_compare(settings: CriticalSettings = QUICK, parts: Sequence[str] = PARTS,
                     seeds: Sequence[int] | None = None, progress: bool = False) -> dict:
    """Train every variant of ``settings`` at every seed on MQAR (each length) and the byte LM, and time them.

    ``parts`` picks from "mqar", "mqar<seq_len>" (one length), "lm", "timing", and ``seeds`` a subset of
    ``settings.seeds`` (default all): the script runs the comparison in pieces and ``merge``s them.
    Returns ``{"settings", "records", "timing", "rows"}``: ``records`` one dict per trained model
    (``mqar_point``, ``lm_point``), ``timing`` from ``timing_point``, ``rows`` the table (``summarize``).
    ``QUICK`` takes a few seconds; ``FULL`` is the committed run (minutes).
    """
    for name in (*settings.variants, *settings.sweep_variants):
        if name not in VARIANTS:
            raise ValueError(f"settings variants must be names from {list(VARIANTS)}, got {name!r}")
    if not settings.seeds or not settings.seq_lens:
        raise ValueError(f"settings need at least one seed and one seq_len, got seeds={settings.seeds}, "
                         f"seq_lens={settings.seq_lens}")
    known = {*PARTS, *(f"mqar{L}" for L in settings.seq_lens)}
    if isinstance(parts, str) or not set(parts) <= known:
        raise ValueError(f"parts must be a list of names from {sorted(known)}, got {parts!r}")
    seeds = settings.seeds if seeds is None else tuple(seeds)
    if not seeds or not set(seeds) <= set(settings.seeds):
        raise ValueError(f"seeds must be a non-empty subset of settings.seeds={settings.seeds}, got {seeds!r}")
    jobs: list[tuple] = []
    for L in settings.seq_lens:
        if "mqar" in parts or f"mqar{L}" in parts:
            sweep = settings.sweep_variants if L == settings.seq_lens[0] else ()
            jobs += [("mqar", L, v, s) for s in seeds for v in (*settings.variants, *sweep)]
    if "lm" in parts and settings.lm_steps:
        jobs += [("lm", settings.lm_context, v, s) for s in seeds for v in settings.variants]
    records = []
    for task, L, variant, seed in progress_bar(jobs, desc="critical", **({} if progress else {"disable": True})):
        records.append(mqar_point(variant, settings, L, seed) if task == "mqar" else lm_point(variant, settings, seed))
    timing = timing_point(settings) if "timing" in parts and settings.timing_repeats else {}
    result = {"settings": asdict(settings), "records": records, "timing": timing}
    result["rows"] = summarize(result)
    return result


def _summary(values: list[float | None]) -> dict:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "values": list(values)}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": [None if v is None else float(v)
                                                                         for v in values]}


def summarize(result: dict) -> list[dict]:
    """The table: one row per variant with ``{"mean", "std", "values" (per seed)}`` per measure, and for each
    measure ``Δ<measure>``, the seed-by-seed difference to the baseline (same seed, same data).

    Measures: ``mqar_T<L>`` (accuracy), ``rare_keys_T<L>`` / ``frequent_keys_T<L>`` (accuracy on the rarest /
    most frequent third of the keys), ``ppl_noise<p>`` (held-out perplexity per byte with a fraction p of the
    input bytes replaced), ``ppl_growth<p>`` (= ppl_noise<p> / ppl_noise0.0), ``ppl_rare_bytes``; and from
    the timing, ``params``, ``extra_params_%``, ``ms_per_step``, ``time_ratio`` (to the baseline)."""
    settings, records, timing = result["settings"], result["records"], result.get("timing") or {}

    def pick(task: str, variant: str, **where) -> list[dict]:
        return sorted((r for r in records if r["task"] == task and r["variant"] == variant
                       and all(r[k] == v for k, v in where.items())), key=lambda r: r["seed"])

    names = [*settings["variants"], *settings["sweep_variants"]]
    rows = []
    for variant in names:
        row: dict = {"variant": variant}
        if variant in timing:
            row["params"] = timing[variant]["params"]
            row["ms_per_step"] = timing[variant]["ms_per_step"]
            if "baseline" in timing:
                row["extra_params_%"] = 100 * (row["params"] / timing["baseline"]["params"] - 1)
                row["time_ratio"] = timing[variant]["ms_per_step"] / timing["baseline"]["ms_per_step"]
        for L in settings["seq_lens"]:
            found = pick("mqar", variant, seq_len=L)
            if found:
                row[f"mqar_T{L}"] = _summary([r["accuracy"] for r in found])
                row[f"rare_keys_T{L}"] = _summary([r["buckets"][-1]["accuracy"] for r in found])
                row[f"frequent_keys_T{L}"] = _summary([r["buckets"][0]["accuracy"] for r in found])
        lm = pick("lm", variant)
        if lm:
            for p in settings["noise"]:
                row[f"ppl_noise{p}"] = _summary([r["perplexity"][str(p)] for r in lm])
            for p in settings["noise"]:
                if p > 0:  # robustness: how much the perplexity grows under noise, seed by seed
                    row[f"ppl_growth{p}"] = _summary([r["perplexity"][str(p)] / r["perplexity"]["0.0"] for r in lm
                                                      if "0.0" in r["perplexity"]])
            row["ppl_rare_bytes"] = _summary([r["rare_perplexity"] for r in lm])
        rows.append(row)
    base = next((r for r in rows if r["variant"] == "baseline"), None)
    if base is not None:
        seeds = {r["seed"] for r in records}
        for row in rows:
            for key, value in list(row.items()):
                if isinstance(value, dict) and isinstance(base.get(key), dict) and len(value["values"]) == len(
                        base[key]["values"]) == len(seeds):
                    row[f"Δ{key}"] = _summary([None if a is None or b is None else a - b
                                               for a, b in zip(value["values"], base[key]["values"])])
    return rows


def strength_curve(result: dict, seq_len: int | None = None) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Synaptic Resonance's MQAR accuracy against its initial plasticity η, for ``viz.line_band``.

    Returns (etas ascending, accuracy (seeds, len(etas)), baseline accuracy (seeds,)) at ``seq_len``
    (default the first length), from every resonance variant with context relevance found in ``result``.
    """
    settings = result["settings"]
    seq_len = settings["seq_lens"][0] if seq_len is None else seq_len
    default = inspect.signature(SynapticResonance).parameters["eta"].default
    seeds = sorted({r["seed"] for r in result["records"]})

    def accuracies(variant: str) -> list[float] | None:
        found = {r["seed"]: r["accuracy"] for r in result["records"]
                 if r["task"] == "mqar" and r["variant"] == variant and r["seq_len"] == seq_len}
        return [found[s] for s in seeds] if set(found) == set(seeds) else None

    curve = {}
    for name, (addon, opts) in VARIANTS.items():
        if addon == "resonance" and opts.get("relevance", "context") == "context" and accuracies(name) is not None:
            curve[opts.get("eta", default)] = accuracies(name)
    base = accuracies("baseline")
    if not curve or base is None:
        raise ValueError(f"result holds no resonance sweep with a baseline at seq_len={seq_len}")
    etas = sorted(curve)
    return etas, np.array([curve[e] for e in etas]).T, np.array(base)


def table_rows(result: dict, measures: Sequence[str] | None = None, digits: int = 3) -> list[dict]:
    """``summarize`` as strings for ``viz.table``: "mean ± std" per measure (seeds), the other numbers rounded."""
    rows = result["rows"] if "rows" in result else summarize(result)
    out = []
    for row in rows:
        keep = {k: v for k, v in row.items() if measures is None or k == "variant" or k in measures}
        cells = {}
        for k, v in keep.items():
            if isinstance(v, dict):
                cells[k] = "–" if v["mean"] is None else f"{v['mean']:+.{digits}f} ± {v['std']:.{digits}f}" \
                    if k.startswith("Δ") else f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"
            elif isinstance(v, float):
                cells[k] = round(v, digits)
            else:
                cells[k] = v
        out.append(cells)
    return out


# ------------------------------------------------------------------------------------------------------
# Script: the committed results
# ------------------------------------------------------------------------------------------------------

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "critical.json"  # shipped with the package


def load(path: str | Path | None = None) -> dict:
    """The committed comparison (``labkit/assets/critical.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.memory.critical", path, what="results")


def merge(paths: Sequence[str | Path], out: str | Path | None = None) -> dict:
    """One result from several runs of the same settings with disjoint ``parts`` (or seeds): records
    concatenated, timing joined, ``rows`` recomputed, the parts' ``meta`` kept under ``meta["parts"]``.
    The settings must agree except ``seeds`` (a later run may add seeds; the result holds their union)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    if not parts:
        raise ValueError("paths must name at least one result file, got none")
    settings = {json.dumps({k: v for k, v in part["settings"].items() if k != "seeds"}, sort_keys=True)
                for part in parts}
    if len(settings) != 1:
        raise ValueError(f"the files to merge were run with different settings: {sorted(settings)}")
    seeds = sorted({s for part in parts for s in part["settings"]["seeds"]})  # parts may add seeds
    records = [r for part in parts for r in part["records"]]
    keys = [(r["task"], r["variant"], r["seq_len"], r["seed"]) for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError("the files to merge share runs; give each part different --parts")
    timing = {k: v for part in parts for k, v in (part.get("timing") or {}).items()}
    metas = [part.get("meta", {}) for part in parts]
    result = {"settings": {**parts[0]["settings"], "seeds": seeds}, "records": records, "timing": timing,
              "meta": {**metas[0], "seconds": sum(m.get("seconds", 0.0) for m in metas),
                       "cpu_seconds": sum(m.get("cpu_seconds", 0.0) for m in metas), "parts": metas}}
    result["rows"] = summarize(result)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m labkit.memory.critical", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke-test run (seconds)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated subset of mqar, mqar<seq_len>, lm, timing (default: all)")
    parser.add_argument("--seeds", default=None, help="comma-separated subset of the preset's seeds (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default labkit/assets/critical.json; --quick: /tmp/critical_quick.json)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="combine these part files into --out")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible timings)")
    args = parser.parse_args(argv)
    out = args.out or (Path("/tmp/critical_quick.json") if args.quick else RESULTS)
    if args.merge:
        result = merge(args.merge, out)
        print(f"{len(result['records'])} runs from {len(args.merge)} files -> {out}")
        return result
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    start, cpu = time.perf_counter(), time.process_time()
    seeds = None if args.seeds is None else [int(x) for x in args.seeds.split(",") if x.strip()]
    result = critical_compare(settings, parts=[p.strip() for p in args.parts.split(",") if p.strip()], seeds=seeds,
                              progress=True)
    result["meta"] = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                      "python": platform.python_version(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "platform": platform.platform(),
                      "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                      "command": " ".join(sys.argv)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{len(result['records'])} runs in {result['meta']['seconds']:.0f} s "
          f"({result['meta']['cpu_seconds']:.0f} s CPU) -> {out}")
    return result


if __name__ == "__main__":
    main()
