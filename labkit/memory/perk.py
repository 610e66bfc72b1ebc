"""PERK: long-context reading as test-time learning into a LoRA adapter (Chen et al., 2025).

A prompt-based reader keeps the context in its activations (the KV cache) and attends over all of it. PERK
instead *writes* the context into weights: an inner loop takes a few SGD steps of the causal-LM loss on the
context, updating only a low-rank adapter ``ΔW = B A`` (rank r) on the base model's linear layers; the
question is then answered from the question alone, by the adapted model. With adapter φ, context segments
``c`` (the context split into a batch of ``segment_len``-token pieces) and learned step sizes ``η_i``::

    φ_0 = φ_init                 φ_{i+1} = φ_i − η_i ∇_φ L_LM(θ, φ_i; c)        i = 0 … K−1
    outer loss:  L_QA(θ, φ_K; question, answer)        meta-trained over (θ, φ_init, η)

``L_LM`` is the next-token loss averaged over the context's tokens (``reduce="mean"``, the usual loss) or
summed over segments (``reduce="sum"``); ``switched_reduce`` reads a trained model the other way.

The outer loop differentiates through the inner one (second-order terms, ``create_graph=True``). With
``truncate = t`` only the last t inner steps are backpropagated through; the earlier steps enter as constants
added to φ_init (``φ_{K−t} = φ_init − Σ η_i stopgrad(g_i)``), so φ_init still gets a gradient: ``t = 0`` is
first-order MAML, ``t ≥ K`` the full meta-gradient.

The base model is a ``MemoryLM`` with softmax attention; ``lm_forward`` recomputes its forward from a
parameter dict with a *per-example* adapter (the adapter tensors carry a leading batch dimension), with
explicit softmax attention so the inner gradient can be differentiated again (PyTorch's fused CPU attention
has no second derivative). With a zero ``B`` it returns exactly the base model's logits.

Task (``facts``): a context of ``n_pairs`` two-token facts ``k v`` and ``n_filler`` two-token distractor items,
shuffled, then a question ``? k`` whose answer is ``v``. Vocabulary ``V``: ``0`` is the question mark ``?``,
keys ``[1, 1+K)``, values ``[1+K, 1+2K)``, distractor tokens ``[1+2K, V)`` with ``K = (V − 1) // 3``.

- the in-context reader reads ``[context, ?, k]`` and predicts ``v`` at the last position (``train_recall``);
- the PERK reader encodes ``context`` into the adapter, then reads ``[?, k]`` only (``meta_train``);
- ``perk_compare``: both at the training size, at longer contexts (more pairs, more filler), with the asked
  fact at the start / middle / end, and the inference cost (FLOPs counted by ``torch.utils.flop_counter``,
  peak live memory from the CPU profiler) against context length. ``python -m labkit.memory.perk`` runs the
  full comparison and writes ``labkit/assets/perk.json`` (``load()`` reads it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from labkit.data import SeedLike, _check_positive, rng
from labkit.data.recall import IGNORE
from labkit.memory.model import MemoryLM, RMSNorm
from labkit.memory.train import evaluate, lr_factor, train_recall
from labkit.runtime import load_results
from labkit.runtime import progress as progress_bar

__all__ = ["FAST", "FULL", "PERK", "QUERY", "Facts", "PerkSettings", "TARGETS", "fact_vocab", "facts",
           "facts_stream", "in_context_batch", "inference_cost", "lm_forward", "load", "main", "meta_train",
           "peak_bytes", "perk_compare", "perk_eval", "switched_reduce"]

QUERY = 0
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "mlp.0", "mlp.2")
POSITIONS = ("start", "middle", "end")
RESULTS = Path(__file__).resolve().parents[1] / "assets" / "perk.json"

Adapter = dict[str, tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------------------
# the task


def fact_vocab(vocab_size: int) -> dict[str, tuple[int, int]]:
    """Token ranges ``[lo, hi)`` of the keys, values and distractor tokens (``0`` is the question mark).

    ``K = (vocab_size − 1) // 3`` keys ``[1, 1+K)``, ``K`` values ``[1+K, 1+2K)``, the rest distractors.
    """
    _check_positive("vocab_size", vocab_size)
    if vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4 (question mark, a key, a value, a distractor), got {vocab_size}")
    K = (vocab_size - 1) // 3
    return {"keys": (1, 1 + K), "values": (1 + K, 1 + 2 * K), "filler": (1 + 2 * K, vocab_size)}


class Facts(NamedTuple):
    """One batch of the fact task.

    context: (N, 2·(n_pairs + n_filler)); query: (N, 2) = ``[?, k]``; answer: (N,) the value of ``k``;
    where: (N,) the item index (0-based, items are 2 tokens) of the asked fact in the context.
    """

    context: torch.Tensor
    query: torch.Tensor
    answer: torch.Tensor
    where: torch.Tensor


def _item_index(position: str | int | None, n_items: int) -> int | None:
    if position is None:
        return None
    if position == "start":
        return 0
    if position == "middle":
        return (n_items - 1) // 2
    if position == "end":
        return n_items - 1
    if isinstance(position, (int, np.integer)) and not isinstance(position, bool) and 0 <= position < n_items:
        return int(position)
    raise ValueError(f"position must be None, one of {list(POSITIONS)} or an item index in 0..{n_items - 1}, "
                     f"got {position!r}")


def facts(n_examples: int, n_pairs: int, n_filler: int = 0, vocab_size: int = 64,
          position: str | int | None = None, seed: SeedLike = 0) -> Facts:
    """A seeded batch of the fact task (see the module docstring for the layout).

    Each example draws ``n_pairs`` distinct keys and ``n_pairs`` distinct values (the facts ``k_i v_i``)
    and ``n_filler`` distractor items (two tokens each, uniform from the distractor range), shuffles the
    ``n_pairs + n_filler`` items, and asks one fact chosen uniformly. ``position`` moves the asked fact to
    item 0 ("start"), the middle item, the last item ("end") or a given item index (None: where it fell).
    """
    _check_positive("n_examples", n_examples)
    _check_positive("n_pairs", n_pairs)
    if isinstance(n_filler, bool) or not isinstance(n_filler, (int, np.integer)) or n_filler < 0:
        raise ValueError(f"n_filler must be a non-negative int, got {n_filler!r}")
    ranges = fact_vocab(vocab_size)
    K = ranges["keys"][1] - ranges["keys"][0]
    if n_pairs > K:
        raise ValueError(f"vocab_size={vocab_size} holds {K} keys, too few for n_pairs={n_pairs} distinct keys: "
                         f"vocab_size must be >= {3 * n_pairs + 2}")
    n_items = n_pairs + n_filler
    target = _item_index(position, n_items)
    g = rng(seed)
    N = n_examples
    keys = ranges["keys"][0] + np.argsort(g.random((N, K)), axis=1)[:, :n_pairs]  # (N, n_pairs) distinct
    values = ranges["values"][0] + np.argsort(g.random((N, K)), axis=1)[:, :n_pairs]
    items = np.empty((N, n_items, 2), dtype=np.int64)
    items[:, :n_pairs, 0], items[:, :n_pairs, 1] = keys, values
    items[:, n_pairs:] = g.integers(*ranges["filler"], size=(N, n_filler, 2))
    order = np.argsort(g.random((N, n_items)), axis=1)  # item slot j holds item order[j]
    items = np.take_along_axis(items, order[:, :, None], axis=1)
    asked = g.integers(0, n_pairs, size=N)  # which fact (index among the pairs) is asked
    where = np.argmax(order == asked[:, None], axis=1)  # its slot
    rows = np.arange(N)
    if target is not None:  # swap the asked fact into the target slot
        moved = items[rows, target].copy()
        items[rows, target] = items[rows, where]
        items[rows, where] = moved
        where = np.full(N, target)
    query = np.stack([np.full(N, QUERY), keys[rows, asked]], axis=1)
    return Facts(torch.from_numpy(items.reshape(N, 2 * n_items)), torch.from_numpy(query),
                 torch.from_numpy(values[rows, asked].astype(np.int64)), torch.from_numpy(where))


def in_context_batch(batch: Facts) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt-based reader's view: ``inputs = [context, ?, k]`` (N, T+2); ``targets`` is -100 except the
    last position, which holds the answer (graded as in ``labkit.memory.train.recall_loss``)."""
    inputs = torch.cat([batch.context, batch.query], dim=1)
    targets = torch.full_like(inputs, IGNORE)
    targets[:, -1] = batch.answer
    return inputs, targets


def facts_stream(n_pairs: int, n_filler: int, vocab_size: int = 64, seed: int = 0) -> Callable[[int, int], Facts]:
    """``make_batch(step, batch_size) -> Facts``: a fresh batch per step, seeded by ``(seed, step)``."""

    def make_batch(step: int, batch_size: int) -> Facts:
        g = np.random.default_rng(np.random.SeedSequence([int(seed), 7, int(step)]))
        return facts(batch_size, n_pairs, n_filler, vocab_size, seed=g)

    return make_batch


# ----------------------------------------------------------------------------------------------------------
# the base model, recomputed functionally with a per-example adapter


def _check_base(model: MemoryLM) -> None:
    if not isinstance(model, MemoryLM):
        raise ValueError(f"model must be a MemoryLM, got {type(model).__name__}")
    block = model.blocks[0]
    if model.mixer_name != "attention" or getattr(block.mixer, "window", None) is not None:
        raise ValueError(f"model must use full softmax attention (mixer='attention', no window), "
                         f"got mixer={model.mixer_name!r}")
    if block.mlp is None or not isinstance(block.norm1, RMSNorm) or model.head.weight is model.embed.weight:
        raise ValueError("model must have an MLP, RMS norms and an untied head (MemoryLM defaults)")


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            adapter: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """x: (B, M, d_in) -> (B, M, d_out): ``x Wᵀ + b + (x Aᵀ) Bᵀ`` with A: (B, r, d_in), B: (B, d_out, r)."""
    y = F.linear(x, weight, bias)
    if adapter is not None:
        A, Bm = adapter
        y = y + torch.einsum("bmr,bor->bmo", torch.einsum("bmi,bri->bmr", x, A), Bm)
    return y


def lm_forward(model: MemoryLM, tokens: torch.Tensor, adapter: Adapter | None = None,
               params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``model``'s logits recomputed from ``params`` (default: its own parameters) plus a per-example adapter.

    tokens: (B, T) or (B, N, T) — N independent sequences (segments) per example, all read with example
    b's adapter; returns logits of the same leading shape plus (V,). ``adapter`` maps a weight name (e.g.
    ``"blocks.0.mlp.0.weight"``) to ``(A (B, r, d_in), B (B, d_out, r))``. Attention is explicit softmax
    (twice differentiable); with every ``B = 0`` the result equals ``lm_forward(model, tokens)`` exactly.
    """
    _check_base(model)
    p = dict(model.named_parameters()) if params is None else params
    adapter = adapter or {}
    if tokens.dim() not in (2, 3):
        raise ValueError(f"tokens must be (B, T) or (B, N, T), got shape {tuple(tokens.shape)}")
    lead = tokens.shape[:-1]
    Bsz, T = tokens.shape[0], tokens.shape[-1]
    S = tokens.numel() // (Bsz * T)  # sequences per example
    for name, (A, Bm) in adapter.items():
        if A.shape[0] != Bsz or Bm.shape[0] != Bsz:
            raise ValueError(f"adapter[{name!r}] must have batch size {Bsz}, got {A.shape[0]} and {Bm.shape[0]}")
    d, H = model.d_model, model.blocks[0].mixer.n_heads
    x = F.embedding(tokens.reshape(Bsz, S * T), p["embed.weight"])  # (B, S·T, d)
    for i, block in enumerate(model.blocks):
        pre = f"blocks.{i}."
        h = _rms(x, p[pre + "norm1.weight"], block.norm1.eps)
        if block.conv is not None:  # causal depthwise conv per sequence, zeros before the start
            k = block.conv.kernel
            seq = F.pad(h.reshape(Bsz * S, T, d).transpose(1, 2), (k - 1, 0))
            h = F.conv1d(seq, p[pre + "conv.weight"], groups=d).transpose(1, 2).reshape(Bsz, S * T, d)
        qkv = [_linear(h, p[f"{pre}mixer.{n}.weight"], None, adapter.get(f"{pre}mixer.{n}.weight"))
               for n in ("q_proj", "k_proj", "v_proj")]
        q, kk, v = (t.reshape(Bsz * S, T, H, d // H).transpose(1, 2) for t in qkv)  # (B·S, H, T, D)
        scores = q @ kk.transpose(-1, -2) / math.sqrt(d // H)
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        y = y.transpose(1, 2).reshape(Bsz, S * T, d)
        x = x + _linear(y, p[pre + "mixer.o_proj.weight"], None, adapter.get(pre + "mixer.o_proj.weight"))
        h = _rms(x, p[pre + "norm2.weight"], block.norm2.eps)
        h = F.gelu(_linear(h, p[pre + "mlp.0.weight"], p[pre + "mlp.0.bias"], adapter.get(pre + "mlp.0.weight")))
        x = x + _linear(h, p[pre + "mlp.2.weight"], p[pre + "mlp.2.bias"], adapter.get(pre + "mlp.2.weight"))
    logits = F.linear(_rms(x, p["norm.weight"], model.norm.eps), p["head.weight"])
    return logits.reshape(*lead, T, -1)


# ----------------------------------------------------------------------------------------------------------
# PERK


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


class PERK(nn.Module):
    """A base ``MemoryLM`` plus a meta-learned LoRA initialisation and inner step sizes.

    ``rank``: the adapters' rank r (>= 1) on every weight named by ``targets`` (suffixes from ``TARGETS``)
    in every block. ``inner_steps`` (K >= 0) SGD steps of the context LM loss, step i with size
    ``exp(log_lr[i])`` (``inner_lr`` at the start; learned when ``learn_lr``). ``truncate`` (>= 0, None:
    all) is the number of last inner steps the meta-gradient goes through. ``segment_len``: the context is
    cut into pieces of this many tokens, read as a batch (it must divide the context length). ``reduce``:
    the context loss of one example is the mean over all its tokens ("mean", the usual causal-LM loss: a
    longer context dilutes every fact's gradient) or the *sum* over its segments of each segment's mean
    token loss ("sum": a fact is written with the same strength however long the context, and the loss's
    curvature grows with the number of segments).

    The adapter starts as ``A = A_init`` (Gaussian, std ``1/sqrt(d_in)``) and ``B = 0``, so the untrained
    PERK model is the base model; both are meta-learned.
    """

    def __init__(self, base: MemoryLM, rank: int = 4, inner_steps: int = 4, inner_lr: float = 1.0,
                 truncate: int | None = None, segment_len: int = 8, targets: tuple[str, ...] = TARGETS,
                 learn_lr: bool = True, reduce: str = "mean") -> None:
        super().__init__()
        _check_base(base)
        _check_int("rank", rank, 1)
        _check_int("inner_steps", inner_steps, 0)
        _check_int("segment_len", segment_len, 1)
        if truncate is not None:
            _check_int("truncate", truncate, 0)
        if not (isinstance(inner_lr, (int, float)) and not isinstance(inner_lr, bool) and 0 < inner_lr < math.inf):
            raise ValueError(f"inner_lr must be a positive finite number, got {inner_lr!r}")
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        unknown = [t for t in targets if t not in TARGETS]
        if not targets or unknown:
            raise ValueError(f"targets must be a non-empty subset of {list(TARGETS)}, got {list(targets)}")
        self.base = base
        self.rank, self.inner_steps, self.truncate, self.segment_len = rank, inner_steps, truncate, segment_len
        self.reduce = reduce
        shapes = {n: p.shape for n, p in base.named_parameters()}
        self.names = [f"blocks.{i}.{'mixer.' if t.endswith('proj') else ''}{t}.weight"
                      for i in range(len(base.blocks)) for t in targets]
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in self.names:
            d_out, d_in = shapes[name]
            key = name.replace(".", "__")
            self.lora_A[key] = nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))
            self.lora_B[key] = nn.Parameter(torch.zeros(d_out, rank))
        log_lr = torch.full((inner_steps,), math.log(inner_lr))
        self.log_lr = nn.Parameter(log_lr) if learn_lr else nn.Parameter(log_lr, requires_grad=False)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, inner_steps={self.inner_steps}, truncate={self.truncate}, " \
               f"segment_len={self.segment_len}, reduce={self.reduce!r}, adapted={len(self.names)} matrices"

    def init_adapter(self, batch_size: int) -> Adapter:
        """φ_init broadcast to ``batch_size`` examples: name -> (A (B, r, d_in), B (B, d_out, r)) (views)."""
        out = {}
        for name in self.names:
            key = name.replace(".", "__")
            out[name] = (self.lora_A[key].expand(batch_size, -1, -1), self.lora_B[key].expand(batch_size, -1, -1))
        return out

    def segments(self, context: torch.Tensor) -> torch.Tensor:
        """context: (B, T) -> (B, T / segment_len, segment_len)."""
        if context.dim() != 2:
            raise ValueError(f"context must be (B, T), got shape {tuple(context.shape)}")
        T = context.shape[1]
        if T % self.segment_len:
            raise ValueError(f"context length must be a multiple of segment_len={self.segment_len}, got {T}")
        return context.reshape(context.shape[0], T // self.segment_len, self.segment_len)

    def context_loss(self, adapter: Adapter, context: torch.Tensor) -> torch.Tensor:
        """Per-example causal-LM loss on the context's segments (see ``reduce``). Returns (B,)."""
        segs = self.segments(context)
        logits = lm_forward(self.base, segs[..., :-1], adapter)  # (B, N, S-1, V)
        loss = F.cross_entropy(logits.flatten(0, 2), segs[..., 1:].flatten(), reduction="none")
        loss = loss.reshape(segs.shape[0], segs.shape[1], -1).mean(2)  # (B, N): each segment's mean
        return loss.sum(1) if self.reduce == "sum" else loss.mean(1)

    def inner_loop(self, context: torch.Tensor, meta: bool = False, truncate: int | None = -1,
                   final_loss: bool = False) -> tuple[Adapter, list[torch.Tensor]]:
        """Encode ``context`` (B, T) into per-example adapters by ``inner_steps`` SGD steps on the LM loss.

        Only adapter tensors are updated; the base weights are read, never changed. With ``meta=True`` the
        last ``truncate`` steps keep their graph (``create_graph=True``), the earlier ones add their update
        as a constant; ``truncate=-1`` uses ``self.truncate``. Returns the adapted adapter and the context
        losses (B,) before each step (detached), plus the loss after the last step when ``final_loss``.
        """
        truncate = self.truncate if truncate == -1 else truncate
        if truncate is not None:
            _check_int("truncate", truncate, 0)
        K = self.inner_steps
        first_graph = 0 if truncate is None else max(0, K - truncate)
        adapter = self.init_adapter(context.shape[0])
        if not meta:
            adapter = {n: (A.detach(), Bm.detach()) for n, (A, Bm) in adapter.items()}
        losses = []
        with torch.enable_grad():
            for i in range(K):
                graph = meta and i >= first_graph
                if not graph:  # a constant step: differentiate w.r.t. detached copies
                    leaves = {n: (A.detach().requires_grad_(), Bm.detach().requires_grad_())
                              for n, (A, Bm) in adapter.items()}
                else:
                    leaves = adapter
                loss = self.context_loss(leaves, context)
                losses.append(loss.detach())
                flat = [t for pair in leaves.values() for t in pair]
                grads = torch.autograd.grad(loss.sum(), flat, create_graph=graph)
                if not graph:
                    grads = [g.detach() for g in grads]
                lr = self.log_lr[i].exp() if meta else self.log_lr[i].exp().detach()
                it = iter(grads)
                adapter = {n: (A - lr * next(it), Bm - lr * next(it)) for n, (A, Bm) in adapter.items()}
        if final_loss:
            with torch.no_grad():
                losses.append(self.context_loss(adapter, context))
        return adapter, losses

    def answer_logits(self, adapter: Adapter, query: torch.Tensor) -> torch.Tensor:
        """The adapted model reads only the question ``query`` (B, Tq); logits at its last position (B, V)."""
        return lm_forward(self.base, query, adapter)[:, -1]

    def forward(self, context: torch.Tensor, query: torch.Tensor, meta: bool = False) -> torch.Tensor:
        """context: (B, T), query: (B, Tq) -> answer logits (B, V)."""
        adapter, _ = self.inner_loop(context, meta=meta)
        return self.answer_logits(adapter, query)

    def meta_loss(self, batch: Facts, truncate: int | None = -1) -> tuple[torch.Tensor, int]:
        """Outer loss: cross-entropy of the answer after the inner loop (graph kept). Returns (loss, correct)."""
        adapter, _ = self.inner_loop(batch.context, meta=True, truncate=truncate)
        logits = self.answer_logits(adapter, batch.query)
        return F.cross_entropy(logits, batch.answer), int((logits.argmax(-1) == batch.answer).sum())


def meta_train(perk: PERK, make_batch: Callable[[int, int], Facts], steps: int, lr: float = 3e-3,
               weight_decay: float = 0.1, batch_size: int = 32, seed: int = 0, progress: bool = False,
               log_every: int = 10) -> dict:
    """Meta-train ``perk`` (base, adapter initialisation, inner step sizes) for ``steps`` outer steps.

    The same optimiser as ``labkit.memory.train.train_recall`` (AdamW, warm-up + cosine, clip 1.0), so the
    two readers differ only in how they read. Returns ``{"steps", "seconds", "curve"}``, ``curve`` listing
    ``(step, loss, accuracy)`` of the training batch.
    """
    _check_int("steps", steps, 1)
    torch.manual_seed(seed)
    decay = [p for n, p in perk.named_parameters() if p.requires_grad and p.dim() == 2 and "embed" not in n
             and "lora" not in n]
    rest = [p for n, p in perk.named_parameters() if p.requires_grad and not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    perk.train()
    curve = []
    start = time.perf_counter()
    for step in progress_bar(range(steps), desc="meta-train", **({} if progress else {"disable": True})):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step / steps)
        batch = make_batch(step, batch_size)
        loss, correct = perk.meta_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(perk.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step == 0 or step == steps - 1:
            curve.append((step + 1, loss.item(), correct / batch_size))
    return {"steps": steps, "seconds": time.perf_counter() - start, "curve": curve}


def perk_eval(perk: PERK, batch: Facts, batch_size: int = 256) -> dict:
    """The PERK reader (inner loop on the context, then the question alone) on ``batch``.

    Returns ``{"accuracy", "loss_before", "loss_after", "update_norm"}``: the context's LM loss per token
    (mean over all predicted tokens, whatever ``reduce``) at φ_init and after the inner loop, and the mean over
    examples of ``‖φ_K − φ_init‖`` (all adapter tensors together); a diverging inner loop shows in the last two.
    """
    correct, before, after, norm = 0, 0.0, 0.0, 0.0
    for s in range(0, len(batch.answer), batch_size):
        part = Facts(*(t[s:s + batch_size] for t in batch))
        adapter, _ = perk.inner_loop(part.context, meta=False)
        init = perk.init_adapter(len(part.answer))
        with torch.no_grad():
            correct += int((perk.answer_logits(adapter, part.query).argmax(-1) == part.answer).sum())
            before += float(_token_loss(perk, init, part.context).sum())
            after += float(_token_loss(perk, adapter, part.context).sum())
            sq = sum((a - a0).pow(2).sum((1, 2)) + (b - b0).pow(2).sum((1, 2))
                     for (a, b), (a0, b0) in zip(adapter.values(), init.values()))
            norm += float(sq.sqrt().sum())
    n = len(batch.answer)
    return {"accuracy": correct / n, "loss_before": before / n, "loss_after": after / n, "update_norm": norm / n}


def _token_loss(perk: PERK, adapter: Adapter, context: torch.Tensor) -> torch.Tensor:
    """Mean LM loss per predicted context token, per example (B,)."""
    segs = perk.segments(context)
    logits = lm_forward(perk.base, segs[..., :-1], adapter)
    loss = F.cross_entropy(logits.flatten(0, 2), segs[..., 1:].flatten(), reduction="none")
    return loss.reshape(segs.shape[0], -1).mean(1)


@contextmanager
def switched_reduce(perk: PERK, reduce: str, n_segments: int) -> Iterator[PERK]:
    """Read with the other context-loss reduction, matched at ``n_segments`` segments; restored on exit.

    ``sum`` over N segments is N × ``mean``, so the inner step size is divided (mean → sum) or multiplied
    (sum → mean) by ``n_segments``: at that context length both readings take exactly the same steps, at
    any other they differ only in how the write strength scales with length.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    _check_int("n_segments", n_segments, 1)
    old, saved = perk.reduce, perk.log_lr.detach().clone()
    shift = 0.0 if reduce == old else (math.log(n_segments) if reduce == "sum" else -math.log(n_segments))
    with torch.no_grad():
        perk.log_lr.sub_(shift)
    perk.reduce = reduce
    try:
        yield perk
    finally:
        perk.reduce = old
        with torch.no_grad():
            perk.log_lr.copy_(saved)


# ----------------------------------------------------------------------------------------------------------
# inference cost


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of live CPU tensors allocated while ``fn()`` runs (PyTorch profiler memory events).

    Allocations are attributed to the op that made them, frees to the moment the tensor died; the running
    sum over time order is the live memory, its maximum the peak (inputs and weights made before are not
    counted). CPU only.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


def inference_cost(perk: PERK, in_context: MemoryLM, batch: Facts, memory: bool = True) -> dict:
    """FLOPs (``torch.utils.flop_counter``) and peak live bytes of answering ``batch`` with each reader.

    Both readers run the same explicit-attention forward (``lm_forward``), so the counts compare the reading
    strategies, not two kernels: the in-context reader one forward over ``[context, ?, k]``; PERK the inner
    loop (K forward + backward passes over the segments, adapter gradients only) plus one forward over
    ``[?, k]``. Returns ``{"context_tokens", "in_context_flops", "perk_flops", "in_context_bytes",
    "perk_bytes", "kv_cache_bytes", "adapter_bytes"}`` (measured bytes None when ``memory`` is False). The
    last two are computed, not measured: the keys and values a fused-attention reader would keep instead of
    the score matrix (``2 · n_layers · (T + 2) · d_model`` numbers), and one example's adapter (PERK's memory
    after the inner loop, the same at every length).
    """
    inputs, _ = in_context_batch(batch)

    def read_in_context():
        with torch.no_grad():
            return lm_forward(in_context, inputs)[:, -1]

    def read_perk():
        return perk(batch.context, batch.query).detach()

    size = in_context.head.weight.element_size()
    out = {"context_tokens": int(batch.context.shape[1]),
           "kv_cache_bytes": 2 * len(in_context.blocks) * inputs.shape[1] * in_context.d_model * size,
           "adapter_bytes": sum(A[0].numel() + Bm[0].numel() for A, Bm in perk.init_adapter(1).values()) * size}
    for name, fn in (("in_context", read_in_context), ("perk", read_perk)):
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        out[f"{name}_flops"] = int(counter.get_total_flops())
        out[f"{name}_bytes"] = peak_bytes(fn) if memory else None
    return out


# ----------------------------------------------------------------------------------------------------------
# the comparison


@dataclass(frozen=True)
class PerkSettings:
    """One comparison: the task at training size, the base model, PERK's inner loop, the training budget."""

    n_pairs: int = 4
    n_filler: int = 12
    vocab_size: int = 64
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 1
    rank: int = 4
    inner_steps: int = 4
    inner_lr: float = 4.0
    truncate: int | None = None
    segment_len: int = 8
    reduce: str = "mean"
    steps: int = 300
    lr: float = 3e-3
    batch_size: int = 32
    n_eval: int = 256
    scales: tuple[int, ...] = (1, 2, 4, 8)
    cost_scales: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    memory: bool = True


FULL = PerkSettings()
# FAST: a live point for the notebook (a few seconds): half the context, 2 inner steps, 12 outer steps.
FAST = replace(FULL, n_filler=4, inner_steps=2, inner_lr=2.0, steps=12, batch_size=16, n_eval=64, scales=(1,),
               cost_scales=(1, 4), memory=False)


def _eval_sets(s: PerkSettings, seed: int) -> dict[str, Facts]:
    """Held-out batches: 'train size', '×k pairs', '×k filler' for k in scales, and the three positions."""
    sets = {}
    for i, k in enumerate(s.scales):
        g = np.random.default_rng(np.random.SeedSequence([int(seed), 11, i]))
        if k == 1:
            sets["train size"] = facts(s.n_eval, s.n_pairs, s.n_filler, s.vocab_size, seed=g)
            continue
        if k * s.n_pairs <= _n_keys(s.vocab_size):
            sets[f"x{k} pairs"] = facts(s.n_eval, k * s.n_pairs, k * s.n_filler, s.vocab_size, seed=g)
        total = k * (s.n_pairs + s.n_filler) - s.n_pairs
        sets[f"x{k} filler"] = facts(s.n_eval, s.n_pairs, total, s.vocab_size, seed=g)
    for j, pos in enumerate(POSITIONS):
        g = np.random.default_rng(np.random.SeedSequence([int(seed), 13, j]))
        sets[pos] = facts(s.n_eval, s.n_pairs, s.n_filler, s.vocab_size, position=pos, seed=g)
    return sets


def _n_keys(vocab_size: int) -> int:
    lo, hi = fact_vocab(vocab_size)["keys"]
    return hi - lo


def perk_compare(settings: PerkSettings = FULL, seed: int = 0, progress: bool = False) -> dict:
    """Train both readers (same base size, same outer steps and batches) and compare them.

    Conditions: "train size"; "x{k} pairs" (k× the pairs and k× the filler: a k× longer context with k× the
    facts, while the keys last); "x{k} filler" (the same pairs, a k× longer context); "start" / "middle" /
    "end" (the asked fact's item). Returns a dict: ``settings``; ``accuracy``: {condition: {"context_tokens",
    "n_pairs", "in_context" (accuracy), "perk" (``perk_eval``), "perk_sum" or "perk_mean" (``perk_eval`` of the
    same trained reader with the other reduction, ``switched_reduce`` at the training length), "chance"
    (1/K values), "guess_context_value" (1/n_pairs: naming a random value of the context)}};
    ``other_context``: both readers' accuracy at the training size when each question comes with another
    example's context (a reader that answers from the context falls to chance); ``cost``: one
    ``inference_cost`` record per k in ``cost_scales`` (a k× longer context); the training curves, seconds
    and the learned inner step sizes.
    """
    s = settings
    stream = facts_stream(s.n_pairs, s.n_filler, s.vocab_size, seed=seed)
    model_kw = dict(d_model=s.d_model, n_layers=s.n_layers, mixer="attention", n_heads=s.n_heads)

    torch.manual_seed(seed)
    in_context = MemoryLM(s.vocab_size, **model_kw)
    ic = train_recall(in_context, lambda step, bs: in_context_batch(stream(step, bs)), steps=s.steps, lr=s.lr,
                      batch_size=s.batch_size, seed=seed, progress=progress)

    torch.manual_seed(seed)
    perk = PERK(MemoryLM(s.vocab_size, **model_kw), rank=s.rank, inner_steps=s.inner_steps, inner_lr=s.inner_lr,
                truncate=s.truncate, segment_len=s.segment_len, reduce=s.reduce)
    pk = meta_train(perk, stream, steps=s.steps, lr=s.lr, batch_size=s.batch_size, seed=seed, progress=progress)

    K = _n_keys(s.vocab_size)
    n_train = 2 * (s.n_pairs + s.n_filler) // s.segment_len  # segments of a training context
    other = "sum" if s.reduce == "mean" else "mean"
    accuracy = {}
    for name, batch in progress_bar(_eval_sets(s, seed).items(), desc="evaluate",
                                    **({} if progress else {"disable": True})):
        n_pairs = int(((batch.context >= 1) & (batch.context < 1 + K)).sum(1)[0])  # keys in the context
        row = {"context_tokens": int(batch.context.shape[1]), "n_pairs": n_pairs,
               "in_context": evaluate(in_context, *in_context_batch(batch)), "perk": perk_eval(perk, batch)}
        with switched_reduce(perk, other, n_train):
            row[f"perk_{other}"] = perk_eval(perk, batch)
        row.update(guess_context_value=1.0 / n_pairs, chance=1.0 / K)
        accuracy[name] = row
    # control: answer each question from another example's context (rolled by one): memory, not guessing
    batch = _eval_sets(replace(s, scales=(1,)), seed)["train size"]
    other = Facts(batch.context.roll(1, 0), batch.query, batch.answer, batch.where)
    control = {"in_context": evaluate(in_context, *in_context_batch(other)),
               "perk": perk_eval(perk, other)["accuracy"]}
    cost = []
    for k in s.cost_scales:
        g = np.random.default_rng(np.random.SeedSequence([int(seed), 17, k]))
        n_pairs = min(k * s.n_pairs, K)
        batch = facts(1, n_pairs, k * (s.n_pairs + s.n_filler) - n_pairs, s.vocab_size, seed=g)
        cost.append(inference_cost(perk, in_context, batch, memory=s.memory))
    return {"settings": asdict(s), "seed": seed, "accuracy": accuracy, "other_context": control, "cost": cost,
            "in_context_curve": ic["curve"], "perk_curve": pk["curve"],
            "in_context_seconds": ic["seconds"], "perk_seconds": pk["seconds"],
            "inner_lr": [float(v) for v in perk.log_lr.detach().exp()]}


def load(path: str | Path | None = None) -> dict:
    """The committed comparison (``labkit/assets/perk.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.memory.perk", path, what="PERK results")


def main(argv: list[str] | None = None) -> dict:
    """``python -m labkit.memory.perk [--fast] [--seeds N] [--out PATH]``: run ``perk_compare``, write JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--fast", action="store_true", help="the FAST settings (a smoke run)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = FAST if args.fast else FULL
    start = time.process_time()
    runs = [perk_compare(settings, seed=seed, progress=True) for seed in range(args.seeds)]
    result = {"meta": {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
                       "python": platform.python_version(), "torch": torch.__version__, "threads": 1,
                       "cpu_seconds": round(time.process_time() - start, 1)},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
