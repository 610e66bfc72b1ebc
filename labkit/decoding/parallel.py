"""Parallel decoding with one model: Medusa heads and PPD prompt tokens, verified as a token tree.

Speculative decoding needs a second, *draft* model. The methods here guess several future tokens with the
**frozen model itself**, in the same forward pass that verifies the previous guesses:

* **Medusa** (Cai et al. 2024) puts K small *heads* on the last hidden state. Head i at position t guesses
  token t+2+i (the model's own ``lm_head`` gives t+1): ``MedusaHeads``, trained by ``train_medusa`` with
  cross-entropy on the true tokens while the model stays frozen.
* **PPD**, parallel prompt decoding (Chen et al. 2024, "Hardware-Aware Parallel Prompt Decoding for
  Memory-Efficient Acceleration of LLM Inference") trains only m *prompt token* embeddings
  (``PromptTokens``). Appended after position t, prompt token i sits at position t+1+i, sees the prefix
  and the earlier prompt tokens of its group, and its output guesses token t+2+i: the model does the
  guessing with its own layers. Training distils the model's own next-token distributions into them
  (``ppd_distillation_loss``, ``train_prompt_tokens``); they cost a few hundred parameters.

A guesser proposes the top-k tokens at each depth. How often rank r at depth i is right is measured once
(``acceptance_by_depth``); the **sparse tree** (``build_sparse_tree``) then keeps the n candidate nodes
most likely to be accepted, and the expected tokens per forward (``expected_accepted``) against this
machine's latency for that many input tokens picks n (``choose_tree_size``, ``plan_tree``): the
*hardware-aware* part.

**Tree decoding** (``tree_generate``): one forward of [last accepted token (the root) + the guessed
nodes] against the KV cache, each node attending only to its ancestors (``kernels.tree_attend.tree_mask``),
at depth-based positions. Walking down from the root, a child is accepted while its token equals the
model's greedy token at its parent; the longest accepted path is committed (``KVCache.select``) plus the
model's next token after it (the bonus), so every step makes at least one token and **the output equals
greedy decoding token for token**. The guesses for the next step come from the accepted node: Medusa's
heads read its hidden state; PPD's prompt tokens were attached to the likeliest nodes in the same
forward (their entries never stay in the cache), and when the accepted node carries none, the next step
guesses nothing, which costs speed, never exactness.

Shapes: tokens (B, T); hidden (B, T, d); Medusa logits (K, B, T, V); prompt embeddings (E, m, d) for E
ensemble sets of m prompt tokens; acceptance (depth, top_k); a tree is ``parents`` (N,) with
parents[0] = -1 (the root) and parents[j] < j.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.data import corpus
from labkit.data import rng as make_rng
from labkit.decoding import DecodeStats, _check_int, _check_prompt, _device, measure_latency
from labkit.kernels.tree_attend import tree_mask as ancestor_mask
from labkit.models import ASSETS
from labkit.models.tinylm import TinyLM
from labkit.runtime import BACKENDS
from labkit.runtime import progress as progress_bar

__all__ = [
    "MedusaHeads",
    "PromptTokens",
    "ResBlock",
    "acceptance_by_depth",
    "attach_prompts",
    "build_sparse_tree",
    "choose_tree_size",
    "expected_accepted",
    "load_medusa",
    "load_prompt_tokens",
    "main",
    "medusa_loss",
    "path_probabilities",
    "plan_tree",
    "ppd_distillation_loss",
    "ppd_expected_tokens",
    "prompt_carriers",
    "train_and_save",
    "train_medusa",
    "train_prompt_tokens",
    "tree_depths",
    "tree_generate",
    "tree_ranks",
]

EVAL_SEED = 2_000_003  # held-out text for acceptance: a seed the guessers' training streams never use
DEFAULT_TREE_SIZE = 16  # nodes (root included) when neither the call nor the guesser's card says otherwise
DEFAULT_TOP_K = 4  # ranks measured per depth


# --------------------------------------------------------------------------------------------------------
# 1. The guessers
# --------------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """x + SiLU(W x + b): Medusa's residual block. W and b start at zero, so the block starts as the identity."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d) -> (..., d)."""
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """K Medusa heads on a frozen TinyLM: head i = ResBlock -> its own vocabulary projection.

    Each projection starts as a copy of the model's ``lm_head`` (so an untrained head guesses what the model
    would say next, one token too early). ``forward(hidden (B, T, d)) -> logits (K, B, T, V)``: head i at
    position t guesses token t+2+i. ``acceptance`` (depth, top_k) and ``plan`` (the tree size chosen on the
    training machine) come from the card when loaded, else None.
    """

    def __init__(self, model: TinyLM, n_heads: int = 3) -> None:
        super().__init__()
        if not isinstance(model, TinyLM):
            raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
        n_heads = _check_int("n_heads", n_heads, 1)
        d, vocab = model.config.d_model, model.config.vocab_size
        self.model_id = model.model_id
        self.blocks = nn.ModuleList(ResBlock(d) for _ in range(n_heads))
        self.projections = nn.ModuleList(nn.Linear(d, vocab, bias=False) for _ in range(n_heads))
        with torch.no_grad():
            for proj in self.projections:
                proj.weight.copy_(model.lm_head.weight)
        self.to(model.lm_head.weight.device)
        self.acceptance: np.ndarray | None = None
        self.plan: dict | None = None

    @property
    def depth(self) -> int:
        """How many tokens ahead it guesses (K)."""
        return len(self.blocks)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, d) final-norm hidden states -> logits (K, B, T, V) float32."""
        return torch.stack([proj(block(hidden)) for block, proj in zip(self.blocks, self.projections)]).float()


class PromptTokens(nn.Module):
    """PPD's trained prompt tokens: ``n_ensemble`` sets of m input embeddings, (E, m, d).

    Appended after position t (``attach_prompts``), prompt token i of a set sits at position t+1+i, attends
    to the prefix up to t and to the earlier prompt tokens of its set, takes no token-shift previous token
    (its embedding replaces the whole input embedding) and its logits guess token t+2+i. The E sets of an
    ensemble run side by side; their logits are averaged per depth (``combine``). Initialised near the mean
    input embedding, with seeded noise so ensemble members differ.
    """

    def __init__(self, model: TinyLM, m: int = 3, n_ensemble: int = 1, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(model, TinyLM):
            raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
        m, n_ensemble = _check_int("m", m, 1), _check_int("n_ensemble", n_ensemble, 1)
        self.model_id = model.model_id
        with torch.no_grad():
            mean = model.embed_tokens.weight.mean(0)
            if model.embed_prev is not None:
                mean = mean + model.embed_prev.weight.mean(0)
            scale = model.embed_tokens.weight.std()
            noise = torch.randn((n_ensemble, m, mean.numel()), generator=torch.Generator().manual_seed(seed))
            init = mean.cpu() + 0.5 * scale.cpu() * noise
        self.embeddings = nn.Parameter(init.to(model.embed_tokens.weight.device))
        self.acceptance: np.ndarray | None = None
        self.plan: dict | None = None

    @property
    def m(self) -> int:
        return self.embeddings.shape[1]

    @property
    def n_ensemble(self) -> int:
        return self.embeddings.shape[0]

    @property
    def depth(self) -> int:
        """How many tokens ahead it guesses (m)."""
        return self.m

    def num_parameters(self) -> int:
        return self.embeddings.numel()

    def forward(self) -> torch.Tensor:
        """The embeddings (E, m, d)."""
        return self.embeddings

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """Average the ensemble: logits (..., E, m', V) -> (..., m', V) (m' <= m when the context cuts it)."""
        if logits.dim() < 3 or logits.shape[-3] != self.n_ensemble:
            raise ValueError(f"logits must have shape (..., E={self.n_ensemble}, m, V), got {tuple(logits.shape)}")
        return logits.mean(-3)


def _check_guesser(guesser, model: TinyLM) -> MedusaHeads | PromptTokens:
    if not isinstance(guesser, (MedusaHeads, PromptTokens)):
        raise TypeError(f"guesser must be MedusaHeads or PromptTokens, got {type(guesser).__name__}")
    if guesser.model_id != model.model_id:
        raise ValueError(f"guesser was made for the model with model_id {guesser.model_id!r}, "
                         f"got a model with model_id {model.model_id!r}")
    return guesser


def attach_prompts(
    real_mask: torch.Tensor, real_positions: torch.Tensor, anchors: torch.Tensor | Sequence[int], m: int,
    n_ensemble: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention layout of N real entries followed by prompt-token groups attached to ``anchors``.

    real_mask: (N, N) bool, [i, j] = real entry i may attend to real entry j (causal for a text, the
    ancestor mask for a tree); real_positions: (N,) their RoPE positions; anchors: (G,) real entries that
    get ``n_ensemble`` groups of ``m`` prompt tokens each. Entries are ordered anchor, ensemble member,
    depth i. Prompt token i of a group sits at ``real_positions[anchor] + 1 + i`` and attends to what its
    anchor attends to, the anchor itself, and prompt tokens 0..i of its own group. Real entries never see
    prompt tokens, so their outputs are unchanged.
    Returns mask (N + P, N + P) bool and positions (N + P,), P = G * n_ensemble * m.
    """
    anchors = torch.as_tensor(anchors, dtype=torch.long, device=real_mask.device).reshape(-1)
    N, group = real_mask.shape[0], n_ensemble * m
    P = anchors.numel() * group
    entry = torch.arange(P, device=real_mask.device)
    group_id, depth = entry // m, entry % m
    sees_real = real_mask[anchors].repeat_interleave(group, dim=0)  # (P, N)
    sees_prompts = (group_id[:, None] == group_id[None, :]) & (depth[None, :] <= depth[:, None])  # (P, P)
    mask = torch.cat([torch.cat([real_mask, real_mask.new_zeros(N, P)], dim=1),
                      torch.cat([sees_real, sees_prompts], dim=1)], dim=0)
    prompt_positions = real_positions[anchors].repeat_interleave(group) + 1 + depth
    return mask, torch.cat([real_positions, prompt_positions])


def _ppd_forward(model: TinyLM, prompts: PromptTokens, rows: torch.Tensor, anchors: torch.Tensor,
                 m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of text rows (B, T) with prompt groups after each of ``anchors`` (G,) (shared by the rows).

    Returns the text's logits (B, T, V) (exactly the model's own: the text never sees a prompt token) and the
    ensemble-averaged prompt logits (B, G, m, V): entry [b, g, i] guesses token anchors[g] + 2 + i.
    """
    B, T = rows.shape
    m = prompts.m if m is None else m
    E, G = prompts.n_ensemble, anchors.numel()
    causal = torch.ones(T, T, dtype=torch.bool, device=rows.device).tril()
    mask, positions = attach_prompts(causal, torch.arange(T, device=rows.device), anchors, m, E)
    embeds = torch.cat([model.embed(rows), prompts()[:, :m].repeat(G, 1, 1).reshape(1, G * E * m, -1)
                        .expand(B, -1, -1)], dim=1)
    tokens = torch.cat([rows, rows[:, anchors].repeat_interleave(E * m, dim=1)], dim=1)  # bookkeeping only
    logits = model(tokens, positions=positions.expand(B, -1), tree_mask=mask, embeds=embeds)
    student = prompts.combine(logits[:, T:].reshape(B, G, E, m, -1))
    return logits[:, :T], student


# --------------------------------------------------------------------------------------------------------
# 2. Training: Medusa by cross-entropy on the text, PPD by distillation from the model itself
# --------------------------------------------------------------------------------------------------------


def _frozen(model: TinyLM) -> None:
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup, then linear decay to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (steps - step) / max(1, steps - warmup))


def _optimise(parameters: list[nn.Parameter], steps: int, lr: float, step_loss, desc: str, progress: bool,
              minutes: float | None, clip: float | None = None) -> list[dict]:
    """AdamW over ``parameters`` with warmup and linear decay; ``step_loss(step)`` draws a batch and returns
    the loss. ``minutes`` caps the wall clock, ``clip`` the gradient norm. Returns the history: one dict
    per step {step, loss, lr, seconds}."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    history: list[dict] = []
    start = time.perf_counter()
    bar = progress_bar(total=steps, desc=desc, **({} if progress else {"disable": True}))
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=min(20, steps // 10 + 1))
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()
        history.append({"step": step + 1, "loss": round(float(loss.detach()), 5), "lr": optimizer.param_groups[0]["lr"],
                        "seconds": round(time.perf_counter() - start, 3)})
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        if minutes is not None and time.perf_counter() - start > 60 * minutes:
            break
    bar.close()
    return history


def medusa_loss(head_logits: torch.Tensor, row: torch.Tensor, decay: float = 0.8) -> torch.Tensor:
    """Σ_i decay^i · CE(head i at t, true token t+2+i), mean over the positions that have that token.

    head_logits: (K, B, T, V) on inputs row[:, :T]; row: (B, T + 1) the inputs and the last target.
    """
    K, B, T, V = head_logits.shape
    total = head_logits.new_zeros(())
    for i in range(K):
        n = T - 1 - i  # positions t = 0..T-2-i have a token t+2+i inside the row
        if n < 1:
            break
        total = total + decay**i * F.cross_entropy(head_logits[i, :, :n].reshape(-1, V), row[:, 2 + i:].reshape(-1))
    return total


def train_medusa(
    model: TinyLM, n_heads: int = 3, steps: int = 250, batch_size: int = 32, lr: float = 5e-3, seed: int = 0,
    progress: bool = True, decay: float = 0.8, minutes: float | None = None, english_fraction: float = 0.5,
) -> tuple[MedusaHeads, list[dict]]:
    """Train Medusa heads on the frozen ``model`` (Medusa-1). Returns (heads, history).

    Each step: a ``corpus.training_batch`` (English and packed episodes), the model's final hidden states
    without gradients, and ``medusa_loss`` (cross-entropy on the true tokens t+2+i, head i weighted decay^i)
    through the heads only. AdamW with linear warmup and decay; ``minutes`` caps the wall clock.
    history: one dict per step {step, loss, lr, seconds}.
    """
    _frozen(model)
    steps, batch_size = _check_int("steps", steps, 1), _check_int("batch_size", batch_size, 1)
    torch.manual_seed(seed)
    data = make_rng(seed)
    heads = MedusaHeads(model, n_heads)
    heads.train()
    C = model.config.context

    def step_loss(step: int) -> torch.Tensor:
        batch = corpus.training_batch(data, batch_size, C, english_fraction)
        inputs = torch.from_numpy(batch.inputs).to(_device(model))
        row = torch.cat([inputs, torch.from_numpy(batch.targets[:, -1:]).to(inputs.device)], dim=1)
        with torch.no_grad():
            _, hidden = model(inputs, return_hidden=True)
        return medusa_loss(heads(hidden), row, decay)

    history = _optimise(list(heads.parameters()), steps, lr, step_loss, "train medusa", progress, minutes, clip=1.0)
    return heads.eval(), history


def ppd_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          decay: float = 0.8) -> torch.Tensor:
    """PPD's training loss: decayed KL divergence from the teacher to the student, per prompt token.

    student_logits, teacher_logits: (N, m, V), entry [n, i] for prompt token i of example n.

        loss = mean_n Σ_{i=0}^{m-1} decay^i · KL(softmax(teacher[n, i]) ‖ softmax(student[n, i]))
        KL(p_t ‖ p_s) = Σ_v p_t(v) (log p_t(v) − log p_s(v))

    The teacher is detached (no gradient flows into it); 0 < decay <= 1 weighs far guesses less.
    Returns a scalar tensor (float32, or float64 for float64 inputs).
    """
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor (N, m, V), got "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
        if x.dim() != 3 or 0 in x.shape:
            raise ValueError(f"{name} must have shape (N, m, V) with N, m, V >= 1, got {tuple(x.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ValueError(f"decay must be a number in (0, 1], got {decay!r}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_p_student = F.log_softmax(student_logits.to(dtype), dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().to(dtype), dim=-1)
    p_teacher = log_p_teacher.exp()
    kl = torch.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), 0.0).sum(-1)  # (N, m)
    weights = decay ** torch.arange(kl.shape[1], dtype=dtype, device=kl.device)
    return (kl * weights).sum(-1).mean()


def train_prompt_tokens(
    model: TinyLM, m: int = 3, n_ensemble: int = 1, steps: int = 200, batch_size: int = 16,
    anchors_per_row: int = 32, lr: float = 5e-2, seed: int = 0, progress: bool = True, decay: float = 0.8,
    minutes: float | None = None, english_fraction: float = 0.5,
) -> tuple[PromptTokens, list[dict]]:
    """Train PPD prompt tokens on the frozen ``model`` by self-distillation. Returns (prompts, history).

    Each step draws a ``corpus.training_batch`` and ``anchors_per_row`` insertion points t (shared by the
    rows), appends a prompt group after every t and runs ONE forward over [row + all groups]
    (``attach_prompts``: the row is causal and never sees a prompt token, so its logits are the teacher's).
    Prompt token i after t is taught the model's own next-token distribution at position t+1+i
    (``ppd_distillation_loss``). Only the E·m·d prompt embeddings train. history: one dict per step.
    """
    _frozen(model)
    steps, batch_size = _check_int("steps", steps, 1), _check_int("batch_size", batch_size, 1)
    C = model.config.context
    anchors_per_row = _check_int("anchors_per_row", anchors_per_row, 1)
    if anchors_per_row > C - m:
        raise ValueError(f"anchors_per_row must be <= {C - m} (context {C} - m), got {anchors_per_row}")
    torch.manual_seed(seed)
    data = make_rng(seed)
    prompts = PromptTokens(model, m, n_ensemble, seed=seed)
    device = _device(model)

    def step_loss(step: int) -> torch.Tensor:
        batch = corpus.training_batch(data, batch_size, C, english_fraction)
        rows = torch.from_numpy(batch.inputs).to(device)
        anchors = torch.from_numpy(np.sort(data.choice(C - m, size=anchors_per_row, replace=False))).to(device)
        logits, student = _ppd_forward(model, prompts, rows, anchors)
        teacher = logits[:, anchors[:, None] + 1 + torch.arange(m, device=device)]  # (B, G, m, V)
        return ppd_distillation_loss(student.reshape(-1, m, student.shape[-1]),
                                     teacher.reshape(-1, m, teacher.shape[-1]), decay)

    history = _optimise(list(prompts.parameters()), steps, lr, step_loss, "train PPD prompts", progress, minutes)
    return prompts.eval(), history


# --------------------------------------------------------------------------------------------------------
# 3. How often the guesses are right, by depth and rank
# --------------------------------------------------------------------------------------------------------


def _heldout_rows(n_rows: int, length: int, seed: int) -> np.ndarray:
    """(n_rows, length) int64: held-out English windows and freshly drawn packed episodes, alternating."""
    g = make_rng(seed)
    rows = [corpus.english_row(g, length, split="heldout") if i % 2 == 0 else corpus.packed_row(g, length)
            for i in range(n_rows)]
    return np.array([r.tokens for r in rows], dtype=np.int64)


@torch.no_grad()
def acceptance_by_depth(
    model: TinyLM, guesser: MedusaHeads | PromptTokens, n_positions: int = 2048, top_k: int = DEFAULT_TOP_K,
    seed: int = EVAL_SEED, anchors_per_row: int = 32, batch_size: int = 16,
) -> np.ndarray:
    """acceptance[i, r] = P(the guesser's rank-r guess for depth i equals the model's greedy token there).

    On held-out text (the held-out English split and fresh packed episodes), at ``n_positions`` positions
    t: the guess for depth i (0-based) is for token t+2+i given the true prefix up to t, and the model's
    greedy token there is its argmax at position t+1+i on the true text. Ranks are disjoint events, so a
    row sums to the top-k accuracy (<= 1). Returns (depth, top_k) float64.
    """
    _check_guesser(guesser, model)
    n_positions, top_k = _check_int("n_positions", n_positions, 1), _check_int("top_k", top_k, 1)
    C, D = model.config.context, guesser.depth
    anchors_per_row = min(_check_int("anchors_per_row", anchors_per_row, 1), C - D)
    n_rows = math.ceil(n_positions / anchors_per_row)
    rows_all = torch.from_numpy(_heldout_rows(n_rows, C, seed)).to(_device(model))
    g = make_rng(seed + 1)
    hits = np.zeros((D, top_k))
    counted = 0
    for start in range(0, n_rows, batch_size):
        rows = rows_all[start:start + batch_size]
        anchors = torch.from_numpy(np.sort(g.choice(C - D, size=anchors_per_row, replace=False))).to(rows.device)
        if isinstance(guesser, MedusaHeads):
            logits, hidden = model(rows, return_hidden=True)
            guesses = guesser(hidden[:, anchors]).permute(1, 2, 0, 3)  # (B, G, K, V)
        else:
            logits, guesses = _ppd_forward(model, guesser, rows, anchors)  # (B, G, m, V)
        greedy = logits.argmax(-1)[:, anchors[:, None] + 1 + torch.arange(D, device=rows.device)]  # (B, G, D)
        ranked = guesses.topk(top_k, dim=-1).indices  # (B, G, D, top_k)
        hit = (ranked == greedy[..., None]).reshape(-1, D, top_k)[: n_positions - counted]
        hits += hit.sum(0).cpu().numpy()
        counted += hit.shape[0]
    return hits / counted


# --------------------------------------------------------------------------------------------------------
# 4. The sparse tree and its hardware-aware size
# --------------------------------------------------------------------------------------------------------


def _check_acceptance(acceptance) -> np.ndarray:
    acc = np.asarray(acceptance, dtype=np.float64)
    if acc.ndim != 2 or 0 in acc.shape:
        raise ValueError(f"acceptance must have shape (depth, top_k) with both >= 1, got {acc.shape}")
    if not np.all((acc >= 0) & (acc <= 1)):
        raise ValueError("acceptance must hold probabilities in [0, 1], got values outside")
    return acc


def _check_parents(parents) -> list[int]:
    try:
        parents = [int(p) for p in parents]
    except (TypeError, ValueError) as err:
        raise ValueError(f"parents must be a sequence of ints, got {type(parents).__name__}") from err
    if not parents or parents[0] != -1:
        raise ValueError(f"parents must start with -1 (the root), got {parents[:1]}")
    for j, p in enumerate(parents[1:], start=1):
        if not 0 <= p < j:
            raise ValueError(f"parents[{j}] must be a node in 0..{j - 1} (topological order), got {p}")
    return parents


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of every node (root 0). parents: (N,) topologically ordered, parents[0] = -1."""
    parents = _check_parents(parents)
    depths = [0] * len(parents)
    for j in range(1, len(parents)):
        depths[j] = depths[parents[j]] + 1
    return depths


def tree_ranks(parents: Sequence[int]) -> list[int]:
    """Rank of every node: its index among its siblings (the r-th most likely guess at its depth); root -1."""
    parents = _check_parents(parents)
    seen: dict[int, int] = {}
    ranks = [-1]
    for p in parents[1:]:
        ranks.append(seen.get(p, 0))
        seen[p] = ranks[-1] + 1
    return ranks


def build_sparse_tree(acceptance: np.ndarray | Sequence[Sequence[float]], n_nodes: int) -> list[int]:
    """The n_nodes-node candidate tree most likely to be accepted, grown greedily. Returns parents (N,).

    acceptance: (depth, top_k), acceptance[i, r] = P(rank-r guess at depth i+1 is right). Node 0 is the
    root (the last accepted token). A node's path probability is the product of acceptance[depth-1, rank]
    along its path; each step adds the candidate of highest path probability, where the candidates are the
    rank-0 child of every node in the tree and the next-rank sibling of every non-root node. So a child
    comes after its parent and rank r after rank r-1 (a node's rank = its index among its siblings,
    ``tree_ranks``). Returns fewer nodes only when the full depth x top_k tree is smaller than n_nodes.
    """
    acc = _check_acceptance(acceptance)
    n_nodes = _check_int("n_nodes", n_nodes, 1)
    D, K = acc.shape
    parents, depth, rank, prob = [-1], [0], [-1], [1.0]
    candidates: list[tuple[float, int, int, int, int]] = []  # (-probability, order, parent, depth, rank)
    order = 0

    def offer(parent: int, d: int, r: int) -> None:
        nonlocal order
        if d <= D and r < K:
            heapq.heappush(candidates, (-prob[parent] * acc[d - 1, r], order, parent, d, r))
            order += 1

    offer(0, 1, 0)
    while len(parents) < n_nodes and candidates:
        neg_p, _, parent, d, r = heapq.heappop(candidates)
        parents.append(parent)
        depth.append(d)
        rank.append(r)
        prob.append(-neg_p)
        offer(len(parents) - 1, d + 1, 0)  # its first child
        offer(parent, d, r + 1)  # its next sibling
    return parents


def path_probabilities(acceptance: np.ndarray, parents: Sequence[int]) -> np.ndarray:
    """P(node is on the accepted path) for every node, (N,): 1 for the root, else the product of
    acceptance[depth-1, rank] along its path (guesses at different depths taken as independent)."""
    acc = _check_acceptance(acceptance)
    depths, ranks = tree_depths(parents), tree_ranks(parents)
    if max(depths) > acc.shape[0] or max(ranks) >= acc.shape[1]:
        raise ValueError(f"parents must fit acceptance of shape {acc.shape} (depth <= {acc.shape[0]}, rank < "
                         f"{acc.shape[1]}), got depth {max(depths)} and rank {max(ranks)}")
    prob = np.ones(len(depths))
    for j in range(1, len(depths)):
        prob[j] = prob[parents[j]] * acc[depths[j] - 1, ranks[j]]
    return prob


def expected_accepted(acceptance: np.ndarray, parents: Sequence[int]) -> float:
    """Expected tokens per forward: 1 (the bonus token) + Σ over guessed nodes of their path probability."""
    return float(path_probabilities(acceptance, parents).sum())


def prompt_carriers(acceptance: np.ndarray, parents: Sequence[int], n: int) -> list[int]:
    """PPD: the ``n`` nodes that get prompt tokens: the root, then those most likely to be where
    acceptance stops.

    P(the accepted path ends at node j) = path probability of j − Σ path probabilities of its children;
    the next step has guesses only if that node carries prompt tokens. The root always carries (after a
    step without guesses only the root is verified, and it must guess again). Returns sorted node indices.
    """
    prob = path_probabilities(acceptance, parents)
    parents = _check_parents(parents)
    n = min(_check_int("n", n, 1), len(parents))
    end = prob.copy()
    for j in range(1, len(parents)):
        end[parents[j]] -= prob[j]
    others = sorted(range(1, len(parents)), key=lambda j: (-end[j], j))
    return sorted([0, *others[:n - 1]])


def ppd_expected_tokens(acceptance: np.ndarray, parents: Sequence[int], carriers: Sequence[int]) -> float:
    """Long-run tokens per forward of PPD tree decoding when only ``carriers`` carry prompt tokens.

    A guessing step makes E = ``expected_accepted`` tokens and ends on a carrier with probability q; when
    it does not, the next step has only the root (1 token) and then guesses again. Per forward:
    (E + 1 − q) / (2 − q); with every node a carrier (q = 1) it is E.
    """
    prob = path_probabilities(acceptance, parents)
    parents = _check_parents(parents)
    end = prob.copy()
    for j in range(1, len(parents)):
        end[parents[j]] -= prob[j]
    q = float(np.clip(sum(end[j] for j in set(carriers)), 0.0, 1.0))
    e = float(prob.sum())
    return (e + 1 - q) / (2 - q)


def choose_tree_size(sizes: Sequence[int], expected_tokens: Sequence[float], latency_s: Sequence[float]) -> int:
    """The tree size with the most tokens per second: argmax_i expected_tokens[i] / latency_s[i].

    sizes: candidate sizes (ints >= 1); expected_tokens: tokens per forward at each size; latency_s: seconds
    of one forward at each size (> 0). Ties go to the smallest size. Returns that size (int).
    """
    for name, seq in (("sizes", sizes), ("expected_tokens", expected_tokens), ("latency_s", latency_s)):
        if isinstance(seq, (str, bytes)) or not hasattr(seq, "__len__"):
            raise ValueError(f"{name} must be a sequence of numbers, got {type(seq).__name__}")
    if len(sizes) == 0:
        raise ValueError("sizes must hold at least one size, got an empty sequence")
    for name, seq in (("expected_tokens", expected_tokens), ("latency_s", latency_s)):
        if len(seq) != len(sizes):
            raise ValueError(f"{name} must have one entry per size ({len(sizes)}), got {len(seq)}")
    sizes = [_check_int("sizes entries", s, 1) for s in sizes]
    tokens = [float(t) for t in expected_tokens]
    latency = [float(t) for t in latency_s]
    if not all(math.isfinite(t) and t >= 0 for t in tokens):
        raise ValueError(f"expected_tokens must be finite numbers >= 0, got {list(expected_tokens)}")
    if not all(math.isfinite(t) and t > 0 for t in latency):
        raise ValueError(f"latency_s must be finite numbers > 0, got {list(latency_s)}")
    rate = [t / s for t, s in zip(tokens, latency)]
    best = max(rate)
    return min(size for size, r in zip(sizes, rate) if r == best)


def _prior_acceptance(depth: int, top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """A stand-in when a guesser has no measured acceptance: 0.6^(i+1) / 2^r at depth i, rank r."""
    return np.array([[0.6 ** (i + 1) / 2**r for r in range(top_k)] for i in range(depth)])


def _affine_latency(latency_ms: dict[int, float]) -> tuple[float, float]:
    """Least-squares t(n) = t0 + c·n through {n: ms} (c >= 0, t(1) > 0). Returns (t0, c) in ms."""
    if not latency_ms:
        raise ValueError("latency_ms must hold at least one {n: ms} entry, got an empty dict")
    n = np.array(sorted(latency_ms), dtype=np.float64)
    t = np.array([latency_ms[k] for k in sorted(latency_ms)], dtype=np.float64)
    if not np.all(np.isfinite(t) & (t > 0)) or not np.all(n >= 1):
        raise ValueError(f"latency_ms must map token counts >= 1 to ms > 0, got {latency_ms}")
    if len(n) == 1:
        return float(t[0]), 0.0
    slope, intercept = np.polyfit(n, t, 1)
    slope = max(float(slope), 0.0)
    if slope == 0.0 or intercept + slope <= 0:  # a flat or odd curve: its mean, flat
        return float(t.mean()), 0.0
    return float(intercept), slope


def plan_tree(
    model: TinyLM, guesser: MedusaHeads | PromptTokens, acceptance: np.ndarray | None = None,
    sizes: Sequence[int] = (1, 2, 4, 6, 8, 12, 16, 24, 32), latency_ms: dict[int, float] | None = None,
) -> dict:
    """Hardware-aware tree size: the size whose expected tokens per forward over this machine's forward
    latency is highest (``choose_tree_size``).

    latency_ms: {n input tokens: ms of one forward}, default ``measure_latency`` here; a straight line
    t(n) = t0 + c·n fitted to it stands for the latency of any n (single measurements on a shared CPU are
    noisy; the cost of a small forward is close to affine in n). For PPD a forward also carries the prompt
    tokens: for each tree size the number k of carrier nodes (1, 2, 4, ..., 16, the size) is chosen the same
    way, with ``ppd_expected_tokens`` and t(size + k·E·m). Returns {"size", "prompt_nodes" (PPD),
    "expected_tokens", "latency_ms", "latency_fit_ms": [t0, c], "table": the best row per size}.
    """
    _check_guesser(guesser, model)
    if acceptance is None:
        acceptance = guesser.acceptance if guesser.acceptance is not None else _prior_acceptance(guesser.depth)
    acc = _check_acceptance(acceptance)
    is_ppd = isinstance(guesser, PromptTokens)
    group = guesser.n_ensemble * guesser.m if is_ppd else 0
    rows = []
    for n in sizes:
        parents = build_sparse_tree(acc, n)
        if is_ppd:
            for k in sorted({min(k, len(parents)) for k in (1, 2, 4, 8, 16)} | {min(len(parents), 16)}):
                tokens = ppd_expected_tokens(acc, parents, prompt_carriers(acc, parents, k))
                rows.append({"size": len(parents), "prompt_nodes": k, "inputs": len(parents) + k * group,
                             "expected_tokens": round(tokens, 4)})
        else:
            rows.append({"size": len(parents), "inputs": len(parents),
                         "expected_tokens": round(expected_accepted(acc, parents), 4)})
    if latency_ms is None:
        most = max(r["inputs"] for r in rows)
        counts = sorted({n for n in (1, 2, 4, 8, 16, 32, 64) if n < most} | {most})
        latency_ms = measure_latency(model, counts, prefix_len=min(64, model.config.context - most), repeats=9)
    t0, per_token = _affine_latency(latency_ms)
    for r in rows:
        r["latency_ms"] = round(t0 + per_token * r["inputs"], 4)
        r["tokens_per_ms"] = round(r["expected_tokens"] / r["latency_ms"], 5)
    # per size keep the best carrier count, then choose the size
    per_size: dict[int, dict] = {}
    for r in rows:
        if r["size"] not in per_size or r["tokens_per_ms"] > per_size[r["size"]]["tokens_per_ms"]:
            per_size[r["size"]] = r
    table = [per_size[s] for s in sorted(per_size)]
    size = choose_tree_size([r["size"] for r in table], [r["expected_tokens"] for r in table],
                            [r["latency_ms"] / 1e3 for r in table])
    chosen = per_size[size]
    plan = {"size": size, "expected_tokens": chosen["expected_tokens"], "latency_ms": chosen["latency_ms"],
            "latency_fit_ms": [round(t0, 4), round(per_token, 5)], "table": table}
    if is_ppd:
        plan["prompt_nodes"] = chosen["prompt_nodes"]
    return plan


# --------------------------------------------------------------------------------------------------------
# 5. Tree decoding
# --------------------------------------------------------------------------------------------------------


def _resolve_tree(tree, guesser) -> list[int]:
    acc = guesser.acceptance if guesser.acceptance is not None else _prior_acceptance(guesser.depth)
    if tree is None:
        tree = (guesser.plan or {}).get("size", DEFAULT_TREE_SIZE)
    if isinstance(tree, (int, np.integer)) and not isinstance(tree, bool):
        if tree < 1:
            raise ValueError(f"tree must be a size >= 1 or a parents list, got {tree}")
        return build_sparse_tree(acc, int(tree))
    if isinstance(tree, (str, bytes, bool)) or not isinstance(tree, (Sequence, np.ndarray, torch.Tensor)):
        raise ValueError(f"tree must be None, a size >= 1 or a parents list, got {type(tree).__name__}")
    parents = _check_parents(tree.tolist() if isinstance(tree, (np.ndarray, torch.Tensor)) else tree)
    if max(tree_depths(parents)) > guesser.depth:
        raise ValueError(f"tree must be at most the guesser's depth {guesser.depth} deep, "
                         f"got depth {max(tree_depths(parents))}")
    return parents


@functools.lru_cache(maxsize=64)
def _cached_tree_mask(parents: tuple[int, ...]) -> torch.Tensor:
    """``tree_mask(parents)`` (N, N) bool, kept: most steps verify the same tree. Never modified in place."""
    return ancestor_mask(list(parents))


def _guesses_from(logits: torch.Tensor, top_k: int) -> list[list[int]]:
    """Guess logits (depth, V) -> the top_k token ids per depth."""
    return logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices.tolist()


def _prune(parents: list[int], carriers: list[int], keep_depth: int) -> tuple[list[int], list[int]]:
    """Drop the nodes deeper than keep_depth. Returns (parents, carriers), renumbered."""
    depths = tree_depths(parents)
    kept = [j for j in range(len(parents)) if depths[j] <= keep_depth]
    new_index = {old: new for new, old in enumerate(kept)}
    return [-1] + [new_index[parents[j]] for j in kept[1:]], [new_index[c] for c in carriers if c in new_index]


@torch.inference_mode()
def tree_generate(
    model: TinyLM,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    guesser: MedusaHeads | PromptTokens,
    tree: int | Sequence[int] | None = None,
    prompt_nodes: int | None = None,
    backend: str = "torch",
) -> tuple[list[int], DecodeStats]:
    """Greedy decoding that guesses with Medusa heads or PPD prompt tokens and verifies a token tree.

    tree: None (the guesser's planned size, else ``DEFAULT_TREE_SIZE``), a node count (``build_sparse_tree``
    from the guesser's measured acceptance, or a prior when it has none) or a ``parents`` list (node j's
    rank = its index among its siblings). prompt_nodes (PPD): how many nodes carry prompt tokens
    (``prompt_carriers``; default the plan's, else every node). backend: the kernel backend of the model's
    single-token steps (``TinyLM.backend``) during the call.
    Returns (new token ids, ``DecodeStats``): per verifying forward, ``accepted`` guessed tokens out of
    ``proposed`` tree nodes; ``target_calls`` counts every forward, the prefill included. The tokens equal
    ``generate(model, prompt, max_new_tokens, temperature=0)``.
    """
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    guesser = _check_guesser(guesser, model)
    sequence = _check_prompt(prompt, model, max_new_tokens)
    parents = _resolve_tree(tree, guesser)
    carriers: list[int] = []
    if isinstance(guesser, PromptTokens):
        if prompt_nodes is None:
            prompt_nodes = (guesser.plan or {}).get("prompt_nodes", len(parents))
        acc = guesser.acceptance if guesser.acceptance is not None else _prior_acceptance(guesser.depth)
        carriers = prompt_carriers(acc, parents, _check_int("prompt_nodes", prompt_nodes, 1))
    top_k = max(tree_ranks(parents)) + 1 if len(parents) > 1 else 1
    end = len(sequence) + max_new_tokens
    stats = DecodeStats()
    saved_backend, model.backend = model.backend, backend
    try:
        # Invariant between steps: the cache holds every committed token but the last one (the next root).
        cache = model.new_cache(batch_size=1)
        guesses: list[list[int]] | None = None  # guesses[i]: top-k ids for the token i+1 places after the root
        if len(sequence) > 1:
            guesses = _prefill(model, guesser, cache, sequence[:-1], top_k)
            stats.target_calls += 1
        while len(sequence) < end:
            # nodes deeper than the guesses or past the end are dropped (exactness does not depend on them)
            depth = min(len(guesses) if guesses else 0, end - len(sequence) - 1)
            step_parents, step_carriers = _prune(parents, carriers, depth)
            ranks, depths = tree_ranks(step_parents), tree_depths(step_parents)
            node_tokens = [sequence[-1]] + [guesses[d - 1][r] for d, r in zip(depths[1:], ranks[1:])]
            prev_root = sequence[-2] if len(sequence) > 1 else -1
            path, bonus, guesses = _verify(model, guesser, cache, node_tokens, step_parents, step_carriers,
                                           prev_root, top_k)
            stats.target_calls += 1
            sequence += [node_tokens[j] for j in path[1:]] + [bonus]
            stats.accepted.append(len(path) - 1)
            stats.proposed.append(len(step_parents) - 1)
    finally:
        model.backend = saved_backend
    return sequence[end - max_new_tokens:end], stats


def _forward(model: TinyLM, guesser, cache, tokens: torch.Tensor, prev: torch.Tensor, positions: torch.Tensor,
             real_mask: torch.Tensor, carriers: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One forward of N real entries (tokens, prev, positions (N,), real_mask (N, N)) and, for PPD, a prompt
    group after each carrier. Returns logits (N + P, V), hidden (N + P, d) and the prompt depth m' used
    (0: no prompt entries). Prompt token i after node s sits at position(s) + 1 + i: m' = m unless the
    context ends first."""
    embeds, mask, m_step = None, real_mask, 0
    if isinstance(guesser, PromptTokens) and carriers:
        m_step = min(guesser.m, model.config.context - 1 - int(positions[carriers].max()))
    if m_step > 0:
        E, n_groups = guesser.n_ensemble, len(carriers)
        mask, positions = attach_prompts(real_mask, positions, carriers, m_step, E)
        prompt_embeds = guesser()[:, :m_step].to(model.embed_tokens.weight.dtype).reshape(1, E * m_step, -1)
        embeds = torch.cat([model.embed(tokens, prev), prompt_embeds.repeat(1, n_groups, 1)], dim=1)
        tokens = torch.cat([tokens, tokens[:, carriers].repeat_interleave(E * m_step, dim=1)], dim=1)  # any id
        prev = torch.cat([prev, torch.full((1, n_groups * E * m_step), -1, device=prev.device)], dim=1)
    logits, hidden = model(tokens, cache=cache, positions=positions[None], tree_mask=mask, prev_tokens=prev,
                           embeds=embeds, return_hidden=True)
    return logits[0], hidden[0], m_step


def _next_guesses(guesser, logits: torch.Tensor, hidden: torch.Tensor, node: int, n_real: int,
                  carriers: list[int], m_step: int, top_k: int) -> list[list[int]] | None:
    """The guesses for the tokens after ``node``'s successor: Medusa's heads on its hidden state, or the
    (ensemble-averaged) logits of its prompt tokens; None when a PPD node carries no prompt tokens."""
    if isinstance(guesser, MedusaHeads):
        guess_logits = guesser(hidden[None, node:node + 1])[:, 0, 0]  # (K, V)
    elif m_step > 0 and node in carriers:
        size = guesser.n_ensemble * m_step
        first = n_real + carriers.index(node) * size
        guess_logits = guesser.combine(logits[first:first + size].reshape(guesser.n_ensemble, m_step, -1))
    else:
        return None
    return _guesses_from(guess_logits, top_k)


def _prefill(model: TinyLM, guesser, cache, text: list[int], top_k: int) -> list[list[int]] | None:
    """Feed ``text`` into the empty cache (PPD: with prompt tokens after its last token, dropped after);
    return the guesses for the tokens after the one that follows it."""
    device = cache.tokens.device
    N = len(text)
    tokens = torch.tensor([text], dtype=torch.long, device=device)
    prev = torch.cat([torch.full((1, 1), -1, device=device), tokens[:, :-1]], dim=1)
    causal = torch.ones(N, N, dtype=torch.bool, device=device).tril()
    carriers = [N - 1] if isinstance(guesser, PromptTokens) else []
    logits, hidden, m_step = _forward(model, guesser, cache, tokens, prev, torch.arange(N, device=device),
                                      causal, carriers)
    cache.crop(N)  # prompt-token entries never stay in the cache
    return _next_guesses(guesser, logits, hidden, N - 1, N, carriers, m_step, top_k)


def _verify(model: TinyLM, guesser, cache, node_tokens: list[int], parents: list[int], carriers: list[int],
            prev_root: int, top_k: int) -> tuple[list[int], int, list[list[int]] | None]:
    """One tree step: forward the tree, accept the longest greedy path, commit it, guess again.

    Node 0 (the root, the last committed token) sits at position cache.length, node j at cache.length +
    depth(j), with its parent's token as token-shift input. Returns (path: accepted node indices from the
    root, bonus: the model's greedy token after the path, the next guesses).
    """
    device = cache.tokens.device
    P0, N = cache.length, len(node_tokens)
    tokens = torch.tensor([node_tokens], dtype=torch.long, device=device)
    prev = torch.tensor([[prev_root] + [node_tokens[p] for p in parents[1:]]], device=device)
    positions = P0 + torch.tensor(tree_depths(parents), device=device)
    logits, hidden, m_step = _forward(model, guesser, cache, tokens, prev, positions,
                                      _cached_tree_mask(tuple(parents)).to(device), carriers)
    greedy = logits[:N].argmax(-1).tolist()  # greedy[j]: the model's next token after node j's path
    children: dict[int, list[int]] = {}
    for j in range(1, N):
        children.setdefault(parents[j], []).append(j)
    path = [0]
    while True:  # walk down while a child holds the model's greedy token after its parent
        child = next((c for c in children.get(path[-1], []) if node_tokens[c] == greedy[path[-1]]), None)
        if child is None:
            break
        path.append(child)
    # keep the cached prefix and the accepted path; drop the other nodes and every prompt-token entry
    if path == list(range(len(path))):  # the path is the first (likeliest) nodes: a cheap crop
        cache.crop(P0 + len(path))
    else:
        cache.select(torch.cat([torch.arange(P0, device=device), P0 + torch.tensor(path, device=device)]))
    node = path[-1]
    return path, greedy[node], _next_guesses(guesser, logits, hidden, node, N, carriers, m_step, top_k)


# --------------------------------------------------------------------------------------------------------
# 6. Weights: train, save, load
# --------------------------------------------------------------------------------------------------------

GUESSER_RECIPES: dict[str, dict] = {
    # Budgets in steps (deterministic); ``minutes`` is a safety cap. Both fit ~4 minutes on 2 CPU threads.
    "medusa": {"n_heads": 3, "steps": 250, "batch_size": 32, "lr": 5e-3, "decay": 0.8, "seed": 0,
               "minutes": 5.0},
    "ppd": {"m": 3, "n_ensemble": 1, "steps": 200, "batch_size": 16, "anchors_per_row": 32, "lr": 5e-2,
            "decay": 0.8, "seed": 0, "minutes": 5.0},
}
FAST_CHANGES = {"steps": 6, "batch_size": 4}


def _paths(kind: str, name: str, out: Path) -> tuple[Path, Path]:
    stem = f"{name}-{'medusa' if kind == 'medusa' else 'ppd'}"
    return out / f"{stem}.pt", out / f"{stem}.json"


def train_and_save(kind: str, name: str = "tinylm", fast: bool = False, out: Path | None = None,
                   threads: int = 2, command: str = "", **changes) -> dict:
    """Train the ``kind`` ("medusa" | "ppd") guesser for the shipped model ``name`` and save it.

    Writes ``NAME-medusa.pt`` / ``NAME-ppd.pt`` (fp16 state dict) and a ``.json`` card (config, recipe,
    trainable parameters, acceptance by depth on held-out text, the hardware-aware plan measured here,
    training minutes, command) into ``out`` (default ``labkit/assets``; ``fast``: a temporary folder).
    Returns the card.
    """
    from labkit.models import load

    if kind not in GUESSER_RECIPES:
        raise ValueError(f"kind must be one of {sorted(GUESSER_RECIPES)}, got {kind!r}")
    torch.set_num_threads(_check_int("threads", threads, 1))
    model = load(name)
    recipe = {**GUESSER_RECIPES[kind], **(FAST_CHANGES if fast else {}), **changes}
    start = time.perf_counter()
    if kind == "medusa":
        guesser, history = train_medusa(model, **recipe)
        config = {"n_heads": recipe["n_heads"]}
    else:
        guesser, history = train_prompt_tokens(model, **recipe)
        config = {"m": recipe["m"], "n_ensemble": recipe["n_ensemble"]}
    minutes = (time.perf_counter() - start) / 60
    train_threads = torch.get_num_threads()
    state = {k: v.detach().half().cpu() for k, v in guesser.state_dict().items()}
    guesser.load_state_dict({k: v.float() for k, v in state.items()})  # measure what we ship
    n_positions = 256 if fast else 4096
    acceptance = acceptance_by_depth(model, guesser, n_positions=n_positions, top_k=DEFAULT_TOP_K)
    guesser.acceptance = acceptance
    torch.set_num_threads(1)  # decoding runs one sequence at a time: plan for one thread
    plan = plan_tree(model, guesser, acceptance)
    trainable, total = guesser.num_parameters(), model.num_parameters()
    card = {
        "name": f"{name}-{kind}",
        "kind": kind,
        "base_model": name,
        "base_model_id": model.model_id,
        "config": {**config, "d_model": model.config.d_model, "vocab_size": model.config.vocab_size},
        "recipe": recipe,
        "trainable_parameters": trainable,
        "model_parameters": total,
        "trainable_percent_of_model": round(100 * trainable / total, 5),
        "acceptance_by_depth": [[round(float(a), 4) for a in row] for row in acceptance],
        "acceptance_note": f"rows: depth 1..{guesser.depth} (token t+2+i), columns: rank 0..{DEFAULT_TOP_K - 1}; "
                           f"P(rank-r guess == the model's greedy token) on {n_positions} held-out positions "
                           f"(held-out English + fresh episodes, seed {EVAL_SEED})",
        "top1_acceptance": [round(float(a), 4) for a in acceptance[:, 0]],
        "plan": plan,
        "plan_note": "hardware-aware tree size: expected tokens per forward over the forward latency measured "
                     "on the training machine, 1 thread, fitted as t0 + c*n (best row per size); "
                     "tree_generate(tree=None) uses plan['size']",
        "training": {"steps": len(history), "minutes": round(minutes, 3), "final_loss": history[-1]["loss"],
                     "first_loss": history[0]["loss"], "threads": train_threads, "plan_threads": 1},
        "provenance": {"command": command, "python": platform.python_version(), "torch": torch.__version__,
                       "numpy": np.__version__, "machine": platform.machine(), "fast": fast},
        "weights": f"{name}-{kind}.pt (fp16 torch state dict)",
    }
    out = out or (Path(tempfile.mkdtemp(prefix="labkit-parallel-")) if fast else ASSETS)
    out.mkdir(parents=True, exist_ok=True)
    weights, card_path = _paths(kind, name, out)
    torch.save(state, weights)
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    card["out"] = str(out)
    return card


def _load(kind: str, name: str, folder: Path | None):
    from labkit.models import load

    weights, card_path = _paths(kind, name, folder or ASSETS)
    if not weights.exists() or not card_path.exists():
        raise FileNotFoundError(f"no {kind} weights for {name!r} under {weights.parent}: "
                                f"run `python -m labkit.decoding.parallel {kind}`")
    card = json.loads(card_path.read_text())
    model = load(card["base_model"])
    if kind == "medusa":
        guesser = MedusaHeads(model, card["config"]["n_heads"])
    else:
        guesser = PromptTokens(model, card["config"]["m"], card["config"]["n_ensemble"])
    state = torch.load(weights, map_location="cpu", weights_only=True)
    guesser.load_state_dict({k: v.float() for k, v in state.items()})
    guesser.acceptance = np.array(card["acceptance_by_depth"])
    guesser.plan = card.get("plan")
    return guesser.eval()


def load_medusa(name: str = "tinylm", folder: Path | None = None) -> MedusaHeads:
    """The shipped Medusa heads of model ``name`` (``labkit.models.load(name)``), with acceptance and plan."""
    return _load("medusa", name, folder)


def load_prompt_tokens(name: str = "tinylm", folder: Path | None = None) -> PromptTokens:
    """The shipped PPD prompt tokens of model ``name`` (``labkit.models.load(name)``), with acceptance and plan."""
    return _load("ppd", name, folder)


def main(argv: list[str] | None = None) -> dict:
    """``python -m labkit.decoding.parallel medusa|ppd [--fast]``: train one guesser and save it."""
    parser = argparse.ArgumentParser(prog="python -m labkit.decoding.parallel",
                                     description="Train Medusa heads or PPD prompt tokens for a shipped TinyLM.")
    parser.add_argument("kind", choices=sorted(GUESSER_RECIPES))
    parser.add_argument("--name", default="tinylm", help="the base model (default tinylm)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default labkit/assets)")
    parser.add_argument("--fast", action="store_true", help="a few steps, a small evaluation, a temporary folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    changes = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    command = "python -m labkit.decoding.parallel " + " ".join(sys.argv[1:] if argv is None else argv)
    card = train_and_save(args.kind, args.name, fast=args.fast, out=args.out, threads=args.threads,
                          command=command, **changes)
    print(f"{card['name']}: {card['trainable_parameters']:,} trainable parameters "
          f"({card['trainable_percent_of_model']:.4f}% of the model), {card['training']['steps']} steps in "
          f"{card['training']['minutes']:.2f} min; top-1 acceptance by depth {card['top1_acceptance']}; "
          f"plan: {card['plan']['size']} nodes, {card['plan']['expected_tokens']:.2f} tokens/forward "
          f"-> {card['out']}")
    return card


if __name__ == "__main__":
    main()
