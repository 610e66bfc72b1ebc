"""Fast & slow learning in a neural memory network: a synthetic gradient moves the controller inside an episode
(after Fernando et al., "Fast & Slow Learning: Incorporating Synthetic Gradients in Neural Memory Controllers").

A neural memory network (NMN) for few-shot learning: a controller MLP maps an input x to h = [key, gate logit];
a support example (x_i, v_i) is *written* as the slot pair (key_i, v_i) into a memory of M slots; a query is
*read* by content, a softmax over the cosine similarity of its key to the stored keys (``read``), so its
prediction is a convex combination of the stored values (class one-hots, or regression targets). The write
(``write``) is LRU-style: the least-used slot (an empty one while any is left) is erased, and the new content
goes there with weight 1 − g or, with weight g = σ(gate), into the slots the key already resembles (merge: the
controller decides what to retain and what to overwrite).

Slow learning: the controller's weights θ are trained across episodes by backprop from the query loss L.
Fast learning: inside an episode, right after support example i is written, a synthetic-gradient module
(``SyntheticGradient``, Jaderberg et al.'s decoupled neural interface) predicts ĝ_i ≈ ∂L/∂h_i from what is local
(h_i, the key and value the memory reads at key_i before the write, and v_i), and the controller takes a step
at once,

    θ' ← θ' − α (∂h_i/∂θ')ᵀ ĝ_i,

so later supports and the queries (only the supports when ``tied=False`` gives the queries a reader of their
own) are encoded by the adapted controller θ' (reset to θ in every episode). The true ∂L/∂h_i arrives only
after the queries; it is the synthetic-gradient module's regression target (the slow teacher of the fast path).

``MODES``: "slow" (no fast step), "fastslow" (ĝ drives it), "zero" (ĝ ≡ 0: the fast path runs and must change
nothing), "random" (a random direction with ĝ's norm: is it the direction that helps?) and "oracle" (the fast
step uses the true ∂L/∂h_i of a first pass without fast steps, which reads the query labels: a perfect synthetic
gradient, not a learner). ``fastslow_compare`` trains each on the same episodes and budget and evaluates on
held-out classes (digits, sklearn's bundled 8×8 images, rotated into 40 classes) or held-out sine functions
(regression); ``python -m labkit.memory.fastslow`` runs the full comparison into ``labkit/assets/fastslow.json``
(``load``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.runtime import load_results

__all__ = [
    "FULL",
    "MODES",
    "QUICK",
    "TASKS",
    "Controller",
    "CompareSettings",
    "DigitsTask",
    "EXPERIMENTS",
    "FastSlowNMN",
    "SinusoidTask",
    "SlotMemory",
    "SyntheticGradient",
    "content_weights",
    "controller_forward",
    "empty_memory",
    "evaluate",
    "fast_step",
    "fastslow_compare",
    "load",
    "make_task",
    "read",
    "train_learner",
    "true_grads",
    "write",
]

MODES = ("slow", "fastslow", "zero", "random", "oracle")
TASKS = ("digits", "sinusoid")
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "fastslow.json"


# ---------------------------------------------------------------------------------------------------------
# The memory: M slots of (key, value), a strength (mass written) and a usage (for LRU)


@dataclass
class SlotMemory:
    """keys: (B, M, d), values: (B, M, C), strength: (B, M) (0 = empty slot), usage: (B, M) (no gradient)."""

    keys: torch.Tensor
    values: torch.Tensor
    strength: torch.Tensor
    usage: torch.Tensor

    @property
    def filled(self) -> torch.Tensor:
        """(B, M) bool: slots holding something."""
        return self.strength > 0


def empty_memory(batch: int, n_slots: int, key_dim: int, value_dim: int,
                 dtype: torch.dtype = torch.float32) -> SlotMemory:
    """B empty memories of ``n_slots`` slots."""
    for name, val in (("batch", batch), ("n_slots", n_slots), ("key_dim", key_dim), ("value_dim", value_dim)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be an int >= 1, got {val!r}")
    return SlotMemory(torch.zeros(batch, n_slots, key_dim, dtype=dtype),
                      torch.zeros(batch, n_slots, value_dim, dtype=dtype),
                      torch.zeros(batch, n_slots, dtype=dtype), torch.zeros(batch, n_slots, dtype=dtype))


def content_weights(memory: SlotMemory, query: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Content addressing: softmax over the filled slots of β·cos(query, key_j) + log strength_j.

    query: (B, d) or (B, Q, d) -> weights (B, M) or (B, Q, M). Each row sums to 1 over the filled slots and is 0
    on empty ones; a memory with no filled slot gives an all-zero row (a read of nothing).
    """
    B, M, d = memory.keys.shape
    if query.dim() not in (2, 3) or query.shape[0] != B or query.shape[-1] != d:
        raise ValueError(f"query must be (B={B}, d={d}) or (B={B}, Q, d={d}), got {tuple(query.shape)}")
    q = query[:, None] if query.dim() == 2 else query
    cos = F.normalize(q, dim=-1, eps=1e-8) @ F.normalize(memory.keys, dim=-1, eps=1e-8).transpose(1, 2)
    filled = memory.filled[:, None, :]
    logits = beta * cos + torch.log(memory.strength.clamp_min(1e-30))[:, None, :]
    logits = logits.masked_fill(~filled, float("-inf"))
    any_filled = filled.any(-1, keepdim=True)
    logits = torch.where(any_filled, logits, torch.zeros_like(logits))  # no NaN rows in the softmax
    w = torch.where(any_filled, torch.softmax(logits, dim=-1), torch.zeros_like(logits))
    return w[:, 0] if query.dim() == 2 else w


def read(memory: SlotMemory, query: torch.Tensor, beta: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Read by content: r = Σ_j w_j value_j, a convex combination of the stored values.

    query: (B, d) or (B, Q, d) -> (r: (B, C) or (B, Q, C), w: (B, M) or (B, Q, M)).
    """
    w = content_weights(memory, query, beta)
    r = w @ memory.values if w.dim() == 3 else (w[:, None] @ memory.values)[:, 0]
    return r, w


def write(memory: SlotMemory, key: torch.Tensor, value: torch.Tensor, gate: torch.Tensor,
          beta: float | torch.Tensor, decay: float = 0.95) -> SlotMemory:
    """LRU write of (key, value) with a merge gate; returns the new memory (the old one is unchanged).

    key: (B, d), value: (B, C), gate: (B,) in [0, 1]. The least-used slot (an empty one first) is erased; then
    w_w = g·w_r + (1 − g)·e_lu, where w_r = content_weights(key) over what is left and g = gate (0 when nothing is
    left). Each slot keeps the strength-weighted mean of what was written into it:
    key_j ← (s_j key_j + w_w,j key) / (s_j + w_w,j), the same for values, s_j ← s_j + w_w,j; usage ← decay·usage + w_w.
    """
    B, M, d = memory.keys.shape
    C = memory.values.shape[-1]
    if key.shape != (B, d):
        raise ValueError(f"key must be (B={B}, d={d}), got {tuple(key.shape)}")
    if value.shape != (B, C):
        raise ValueError(f"value must be (B={B}, C={C}), got {tuple(value.shape)}")
    if gate.shape != (B,):
        raise ValueError(f"gate must be (B={B},), got {tuple(gate.shape)}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    score = torch.where(memory.filled, memory.usage, torch.full_like(memory.usage, float("-inf")))
    e_lu = F.one_hot(score.argmin(-1), M).to(memory.keys.dtype)
    keep = 1.0 - e_lu
    erased = SlotMemory(memory.keys * keep[..., None], memory.values * keep[..., None], memory.strength * keep,
                        memory.usage * keep)
    w_r = content_weights(erased, key, beta)
    g = gate * erased.filled.any(-1).to(gate.dtype)
    w_w = g[:, None] * w_r + (1.0 - g)[:, None] * e_lu
    s = erased.strength + w_w
    safe = torch.where(s > 0, s, torch.ones_like(s))[..., None]
    keys = (erased.strength[..., None] * erased.keys + w_w[..., None] * key[:, None]) / safe
    values = (erased.strength[..., None] * erased.values + w_w[..., None] * value[:, None]) / safe
    return SlotMemory(keys, values, s, decay * erased.usage + w_w.detach())


# ---------------------------------------------------------------------------------------------------------
# Controller (functional, one copy of the weights per episode) and the synthetic-gradient module


def controller_forward(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """h = tanh(x W1 + b1) W2 + b2 with per-episode weights.

    params: (W1 (B, D, H), b1 (B, H), W2 (B, H, P), b2 (B, P)); x: (B, D) or (B, Q, D) -> h: (B, P) or (B, Q, P).
    """
    W1, b1, W2, b2 = params
    squeeze = x.dim() == 2
    xx = x[:, None] if squeeze else x
    if xx.dim() != 3 or xx.shape[0] != W1.shape[0] or xx.shape[-1] != W1.shape[1]:
        raise ValueError(f"x must be (B={W1.shape[0]}, [Q,] D={W1.shape[1]}), got {tuple(x.shape)}")
    h = torch.tanh(xx @ W1 + b1[:, None]) @ W2 + b2[:, None]
    return h[:, 0] if squeeze else h


class Controller(nn.Module):
    """The memory controller: x (D) -> h = [key (d), gate logit (1)], a one-hidden-layer tanh MLP."""

    def __init__(self, in_dim: int, key_dim: int = 32, hidden: int = 64, gate_bias: float = -3.0):
        super().__init__()
        for name, val in (("in_dim", in_dim), ("key_dim", key_dim), ("hidden", hidden)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}")
        l1, l2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, key_dim + 1)
        self.W1 = nn.Parameter(l1.weight.detach().t().contiguous())
        self.b1 = nn.Parameter(l1.bias.detach().clone())
        self.W2 = nn.Parameter(l2.weight.detach().t().contiguous())
        b2 = l2.bias.detach().clone()
        b2[-1] = gate_bias  # start writing mostly to fresh slots
        self.b2 = nn.Parameter(b2)
        self.key_dim = key_dim

    def batched(self, batch: int, detach: bool = False) -> list[torch.Tensor]:
        """The weights repeated for ``batch`` episodes (views: gradients flow back to the shared θ), or, with
        ``detach``, copies of their own that require grad (for fast steps when θ is not being trained)."""
        ps = (self.W1, self.b1, self.W2, self.b2)
        if detach:
            ps = tuple(p.detach().requires_grad_(True) for p in ps)
        return [p.expand(batch, *p.shape) for p in ps]


def fast_step(params: Sequence[torch.Tensor], h: torch.Tensor, grad_h: torch.Tensor, lr: float,
              create_graph: bool = False) -> list[torch.Tensor]:
    """One fast step of every episode's controller: θ'_b ← θ'_b − lr · (∂h_b/∂θ'_b)ᵀ grad_h_b.

    params: per-episode weights (B, ...) that produced h: (B, P); grad_h: (B, P), a (synthetic) ∂L/∂h. With
    ``create_graph`` the step is differentiable (the slow update sees through it); otherwise first-order.
    """
    if grad_h.shape != h.shape:
        raise ValueError(f"grad_h must have h's shape {tuple(h.shape)}, got {tuple(grad_h.shape)}")
    grads = torch.autograd.grad(h, list(params), grad_outputs=grad_h, retain_graph=True,
                                create_graph=create_graph, allow_unused=True)
    out = []
    for p, g in zip(params, grads):
        if g is None:
            out.append(p)
        else:
            out.append(p - lr * (g if create_graph else g.detach()))
    return out


class SyntheticGradient(nn.Module):
    """ĝ = S(h, m, r, v) ≈ ∂L/∂h: an MLP on what is local when support example i is written.

    h: the controller output (P = d + 1); m: the key the memory reads at h's key before the write (d: the
    content-weighted mean of the stored unit keys, what h would be confused with); r: the value read there (C);
    v: the example's own value (C). The MLP sees the unit key ĥ[:d] (addressing is by cosine), the gate logit,
    m, r and v. The last layer starts at zero (as in Jaderberg et al.): an untrained module predicts ĝ = 0.
    """

    def __init__(self, key_dim: int, value_dim: int, hidden: int = 64):
        super().__init__()
        for name, val in (("key_dim", key_dim), ("value_dim", value_dim), ("hidden", hidden)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}")
        self.h_dim, self.key_dim, self.value_dim = key_dim + 1, key_dim, value_dim
        self.net = nn.Sequential(nn.Linear(self.h_dim + key_dim + 2 * value_dim, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, self.h_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: torch.Tensor, m: torch.Tensor, r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """h: (..., d + 1), m: (..., d), r: (..., C), v: (..., C) -> ĝ: (..., d + 1)."""
        if (h.shape[-1] != self.h_dim or m.shape[-1] != self.key_dim or r.shape[-1] != self.value_dim
                or v.shape[-1] != self.value_dim):
            raise ValueError(f"expected h (..., {self.h_dim}), m (..., {self.key_dim}), r and v (..., "
                             f"{self.value_dim}), got {tuple(h.shape)}, {tuple(m.shape)}, {tuple(r.shape)}, "
                             f"{tuple(v.shape)}")
        key = F.normalize(h[..., :-1], dim=-1, eps=1e-8)
        return self.net(torch.cat([key, h[..., -1:], m, r, v], dim=-1))


# ---------------------------------------------------------------------------------------------------------
# The learner


class FastSlowNMN(nn.Module):
    """Controller + slot memory + synthetic-gradient module; ``forward`` runs a batch of episodes.

    in_dim: input size D; value_dim: C (classes of an episode, or 1 for regression); n_slots: M (None: one per
    support example); fast_lr: α of the fast step; second_order: differentiate the slow loss through the fast
    steps (else first-order); beta_init: initial read sharpness β (learned, β = softplus(raw)); tied: the queries
    are encoded by the same (fast-adapted) controller that writes; untied, by a reader of their own (same shape,
    slow weights only), so the fast steps change only how the memory is written.
    """

    def __init__(self, in_dim: int, value_dim: int, key_dim: int = 32, hidden: int = 64, sg_hidden: int = 64,
                 n_slots: int | None = None, fast_lr: float = 0.3, second_order: bool = True,
                 beta_init: float = 10.0, tied: bool = True):
        super().__init__()
        if n_slots is not None and (isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1):
            raise ValueError(f"n_slots must be None or an int >= 1, got {n_slots!r}")
        if not fast_lr >= 0:
            raise ValueError(f"fast_lr must be >= 0, got {fast_lr}")
        if not beta_init > 0:
            raise ValueError(f"beta_init must be > 0, got {beta_init}")
        self.controller = Controller(in_dim, key_dim, hidden)
        self.reader = None if tied else Controller(in_dim, key_dim, hidden)
        self.sg = SyntheticGradient(key_dim, value_dim, sg_hidden)
        self.raw_beta = nn.Parameter(torch.tensor(math.log(math.expm1(beta_init))))
        self.in_dim, self.value_dim, self.key_dim = in_dim, value_dim, key_dim
        self.n_slots, self.fast_lr, self.second_order, self.tied = n_slots, fast_lr, second_order, tied

    @property
    def beta(self) -> torch.Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, xs: torch.Tensor, vs: torch.Tensor, xq: torch.Tensor, mode: str = "slow",
                generator: torch.Generator | None = None, create_graph: bool | None = None,
                oracle_grads: torch.Tensor | None = None) -> dict:
        """Write the support set one example at a time (fast steps in between), then read the queries.

        xs: (B, S, D), vs: (B, S, C), xq: (B, Q, D). Returns {"pred": (B, Q, C) reads, "h": [S × (B, P)],
        "sg_in": (h, m, r, v) stacked (B, S, ·), detached, "g_hat": (B, S, P) the fast path's ĝ (zeros for "slow"),
        "params": the final per-episode controller weights, "query_keys": (B, Q, d)}. ``create_graph`` defaults
        to ``second_order`` in training mode and to False in eval mode. Mode "random" needs ``generator``;
        "oracle" needs ``oracle_grads`` (B, S, P), the ĝ to use at each support step (see ``true_grads``).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if xs.dim() != 3 or xs.shape[-1] != self.in_dim:
            raise ValueError(f"xs must be (B, S, D={self.in_dim}), got {tuple(xs.shape)}")
        B, S, _ = xs.shape
        if vs.shape != (B, S, self.value_dim):
            raise ValueError(f"vs must be (B={B}, S={S}, C={self.value_dim}), got {tuple(vs.shape)}")
        if xq.dim() != 3 or xq.shape[0] != B or xq.shape[-1] != self.in_dim:
            raise ValueError(f"xq must be (B={B}, Q, D={self.in_dim}), got {tuple(xq.shape)}")
        if mode == "random" and generator is None:
            raise ValueError("mode 'random' needs a generator")
        if mode == "oracle" and (oracle_grads is None or oracle_grads.shape != (B, S, self.key_dim + 1)):
            got = None if oracle_grads is None else tuple(oracle_grads.shape)
            raise ValueError(f"mode 'oracle' needs oracle_grads of shape {(B, S, self.key_dim + 1)}, got {got}")
        if create_graph is None:
            create_graph = self.second_order and self.training
        beta = self.beta
        memory = empty_memory(B, self.n_slots or S, self.key_dim, self.value_dim, dtype=xs.dtype)
        hs, ms, rs, g_hats = [], [], [], []
        graph = torch.is_grad_enabled()  # False under torch.no_grad(): the fast steps then need their own graph
        with torch.enable_grad() if mode != "slow" else contextlib.nullcontext():
            params = self.controller.batched(B, detach=mode != "slow" and not graph)
            for i in range(S):
                h = controller_forward(params, xs[:, i])
                with torch.no_grad():
                    w = content_weights(memory, h[:, :-1], beta)
                    m = (w[:, None] @ F.normalize(memory.keys, dim=-1, eps=1e-8))[:, 0]
                    r = (w[:, None] @ memory.values)[:, 0]
                g_hat = torch.zeros_like(h)
                if mode != "slow":
                    if mode in ("fastslow", "random"):
                        with torch.no_grad():
                            g_hat = self.sg(h.detach(), m, r, vs[:, i])
                        if mode == "random":
                            noise = torch.randn(h.shape, generator=generator, dtype=h.dtype)
                            g_hat = F.normalize(noise, dim=-1) * g_hat.norm(dim=-1, keepdim=True)
                    elif mode == "oracle":
                        g_hat = oracle_grads[:, i].detach()
                    new_params = fast_step(params, h, g_hat, self.fast_lr, create_graph=create_graph)
                else:
                    new_params = params
                memory = write(memory, h[:, :-1], vs[:, i], torch.sigmoid(h[:, -1]), beta)
                hs.append(h)
                ms.append(m)
                rs.append(r)
                g_hats.append(g_hat)
                params = new_params
            hq = controller_forward(params if self.tied else self.reader.batched(B), xq)
            pred, _ = read(memory, hq[..., :-1], beta)
        sg_in = (torch.stack([h.detach() for h in hs], 1), torch.stack(ms, 1), torch.stack(rs, 1), vs)
        return {"pred": pred, "h": hs, "sg_in": sg_in, "g_hat": torch.stack(g_hats, 1).detach(), "params": params,
                "query_keys": hq[..., :-1]}


# ---------------------------------------------------------------------------------------------------------
# Tasks: N-way K-shot digits (40 classes: 10 digits × 4 rotations), or sine regression


@functools.lru_cache(maxsize=2)
def _digit_images(rotations: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    if not rotations:
        return images.reshape(len(images), 64), data.target.astype(np.int64)
    xs = [np.rot90(images, k, axes=(1, 2)).reshape(len(images), 64) for k in range(4)]
    ys = [data.target * 4 + k for k in range(4)]
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


class DigitsTask:
    """N-way K-shot episodes from sklearn's bundled digits; class = digit (× 4 rotations when ``rotations``).

    Classes of ``test_digits`` are the meta-test classes ("test" split, all their images). The other classes'
    images are split in halves: "train" episodes draw from the first half of each class, "val" from the second
    (held-out images of the meta-training classes). ``rare_digit`` with ``rare_weight`` < 1 makes that digit's
    classes rare in "train" episodes (a class is drawn with probability ∝ its weight).
    """

    kind = "classification"

    def __init__(self, n_way: int = 5, k_shot: int = 1, n_query: int = 5, rotations: bool = True,
                 test_digits: Sequence[int] = (7, 8, 9), rare_digit: int | None = None, rare_weight: float = 1.0):
        for name, val in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}")
        test_digits = tuple(int(d) for d in test_digits)
        if not test_digits or any(not 0 <= d <= 9 for d in test_digits) or len(set(test_digits)) == 10:
            raise ValueError(f"test_digits must be some (not all) of 0..9, got {test_digits}")
        if rare_digit is not None and (rare_digit in test_digits or not 0 <= rare_digit <= 9):
            raise ValueError(f"rare_digit must be a meta-training digit, got {rare_digit}")
        if not 0 < rare_weight <= 1:
            raise ValueError(f"rare_weight must be in (0, 1], got {rare_weight}")
        X, y = _digit_images(rotations)
        per = 4 if rotations else 1
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.in_dim, self.value_dim = 64, n_way
        self.rare_classes = tuple(rare_digit * per + k for k in range(per)) if rare_digit is not None else ()
        test_classes = [d * per + k for d in test_digits for k in range(per)]
        train_classes = [c for c in range(10 * per) if c not in test_classes]
        need = k_shot + n_query
        self.pools: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}, "test": {}}
        for c in train_classes:
            idx = np.flatnonzero(y == c)
            self.pools["train"][c], self.pools["val"][c] = X[idx[0::2]], X[idx[1::2]]
        for c in test_classes:
            self.pools["test"][c] = X[y == c]
        self._tables = {}
        for split, pool in self.pools.items():
            if len(pool) < n_way:
                raise ValueError(f"n_way={n_way} exceeds the {len(pool)} classes of the {split!r} split")
            if min(len(v) for v in pool.values()) < need:
                raise ValueError(f"k_shot + n_query = {need} exceeds the images of a class in {split!r}")
            classes = np.array(sorted(pool))
            counts = np.array([len(pool[c]) for c in classes])
            images = np.zeros((len(classes), counts.max(), 64), np.float32)  # (classes, max images, 64), padded
            for j, c in enumerate(classes):
                images[j, :counts[j]] = pool[c]
            weights = np.array([rare_weight if (split == "train" and c in self.rare_classes) else 1.0
                                for c in classes])
            self._tables[split] = (classes, counts, images, np.log(weights))

    def sample(self, rng: np.random.Generator, batch: int, split: str = "train",
               include: Sequence[int] = (), exclude: Sequence[int] = ()) -> tuple[torch.Tensor, ...]:
        """A batch of episodes: xs (B, N·K, 64), vs (B, N·K, N) one-hot, xq (B, N·Q, 64), yq (B, N·Q) labels.

        Classes are drawn without replacement with probability ∝ weight (Gumbel top-N; rare classes only
        in "train"). ``include``: every episode holds one of these classes (drawn per episode); ``exclude``:
        classes never drawn. Labels 0..N−1 are a fresh random assignment per episode; the support order is
        shuffled.
        """
        if split not in self._tables:
            raise ValueError(f"split must be one of {tuple(self._tables)}, got {split!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        classes, counts, images, log_w = self._tables[split]
        N, K, Qn = self.n_way, self.k_shot, self.n_query
        keys = log_w - np.log(-np.log(rng.random((batch, len(classes)))))  # Gumbel: top-N ~ weighted draw
        keys[:, np.isin(classes, list(exclude))] = -np.inf
        inc = np.flatnonzero(np.isin(classes, list(include)))
        if len(include) and not len(inc):
            raise ValueError(f"include must name classes of the {split!r} split, got {list(include)}")
        if len(inc):
            keys[:, inc] = -np.inf
            keys[np.arange(batch), inc[rng.integers(len(inc), size=batch)]] = np.inf
        if np.isfinite(keys).sum(1).min() + (len(inc) > 0) < N:
            raise ValueError(f"fewer than n_way={N} classes left in {split!r} after include/exclude")
        chosen = np.argsort(-keys, axis=1, kind="stable")[:, :N]
        chosen = rng.permuted(chosen, axis=1)  # label = position: a random assignment
        pick_keys = rng.random((batch, N, images.shape[1]))
        pick_keys[np.arange(images.shape[1]) >= counts[chosen][..., None]] = 2.0  # padding never drawn
        pick = np.argsort(pick_keys, axis=-1, kind="stable")[..., :K + Qn]  # (B, N, K + Q)
        x = images[chosen[..., None], pick]  # (B, N, K + Q, 64)
        labels = np.broadcast_to(np.arange(N)[None, :, None], (batch, N, K + Qn))
        xs, ys = x[:, :, :K].reshape(batch, N * K, 64), labels[:, :, :K].reshape(batch, N * K)
        order = rng.permuted(np.broadcast_to(np.arange(N * K), (batch, N * K)), axis=1)
        xs, ys = np.take_along_axis(xs, order[..., None], 1), np.take_along_axis(ys, order, 1)
        xq, yq = x[:, :, K:].reshape(batch, N * Qn, 64), labels[:, :, K:].reshape(batch, N * Qn)
        vs = F.one_hot(torch.from_numpy(np.ascontiguousarray(ys)), N).float()
        return (torch.from_numpy(np.ascontiguousarray(xs)), vs, torch.from_numpy(np.ascontiguousarray(xq)),
                torch.from_numpy(np.ascontiguousarray(yq)))


class SinusoidTask:
    """K-shot sine regression: y = A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5] (input x / 5).

    Every split draws fresh functions; ``sample`` returns xs (B, K, 1), vs (B, K, 1), xq (B, Q, 1), yq (B, Q, 1).
    """

    kind = "regression"

    def __init__(self, k_shot: int = 10, n_query: int = 10):
        for name, val in (("k_shot", k_shot), ("n_query", n_query)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}")
        self.k_shot, self.n_query, self.in_dim, self.value_dim = k_shot, n_query, 1, 1

    def sample(self, rng: np.random.Generator, batch: int, split: str = "train", **_) -> tuple[torch.Tensor, ...]:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        amp = rng.uniform(0.1, 5.0, (batch, 1, 1))
        phase = rng.uniform(0.0, math.pi, (batch, 1, 1))
        x = rng.uniform(-5.0, 5.0, (batch, self.k_shot + self.n_query, 1))
        y = amp * np.sin(x - phase)
        t = [torch.from_numpy(a.astype(np.float32)) for a in (x / 5.0, y)]
        K = self.k_shot
        return t[0][:, :K], t[1][:, :K], t[0][:, K:], t[1][:, K:]


def make_task(task: str = "digits", **kw) -> DigitsTask | SinusoidTask:
    """``DigitsTask(**kw)`` or ``SinusoidTask(**kw)`` by name."""
    if task == "digits":
        return DigitsTask(**kw)
    if task == "sinusoid":
        return SinusoidTask(**kw)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _loss(task, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-episode loss (B,): mean query NLL of the read (classification) or MSE (regression)."""
    if task.kind == "classification":
        p = pred.gather(-1, target[..., None])[..., 0]
        return -torch.log(p.clamp_min(1e-6)).mean(-1)
    return ((pred - target) ** 2).mean((-1, -2))


def _metric(task, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-episode accuracy or MSE (B,)."""
    if task.kind == "classification":
        return (pred.argmax(-1) == target).float().mean(-1)
    return ((pred - target) ** 2).mean((-1, -2))


# ---------------------------------------------------------------------------------------------------------
# Training and evaluation


def true_grads(model: FastSlowNMN, task: DigitsTask | SinusoidTask, xs: torch.Tensor, vs: torch.Tensor,
               xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
    """∂L/∂h_i of every support example, from a pass without fast steps (L = Σ_episodes mean-query loss).

    xs: (B, S, D), vs: (B, S, C), xq: (B, Q, D), yq: the query targets -> (B, S, P), detached. It reads the
    query labels: the "oracle" mode's ĝ, never available to a learner.
    """
    with torch.enable_grad():
        out = model(xs, vs, xq, mode="slow")
        loss = _loss(task, out["pred"], yq).sum()
        grads = torch.autograd.grad(loss, out["h"])
    return torch.stack(grads, 1).detach()



def train_learner(task: DigitsTask | SinusoidTask, mode: str = "fastslow", steps: int = 300, meta_batch: int = 16,
                  lr: float = 3e-3, sg_lr: float = 3e-3, seed: int = 0, log_every: int = 10,
                  progress: bool = False, **model_kw) -> dict:
    """Meta-train one learner: ``steps`` slow updates of ``meta_batch`` episodes each.

    Per step: run the episodes (fast steps by ``mode``), loss L = Σ_episodes mean-query loss; Adam on θ and β
    (slow); the true ∂L/∂h_i of every support example is the synthetic-gradient module's regression target
    (Adam at ``sg_lr`` on ‖S(h, r, v) − ∂L/∂h‖², in every mode, so "zero" and "slow" see identical θ updates).
    Episodes depend only on ``seed``, so every mode trains on the same ones. Returns {"model", "steps",
    "loss": (points,), "cos": (points,) mean cosine(ĝ, ∂L/∂h) of the prediction made before that step's
    SG update, averaged over ``log_every`` steps, "sg_rel_err", "seconds"}.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, val in (("steps", steps), ("meta_batch", meta_batch), ("log_every", log_every)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be an int >= 1, got {val!r}")
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FastSlowNMN(task.in_dim, task.value_dim, **model_kw)
    slow_params = [p for n, p in model.named_parameters() if not n.startswith("sg.")]
    opt = torch.optim.Adam(slow_params, lr=lr)
    sg_opt = torch.optim.Adam(model.sg.parameters(), lr=sg_lr)
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    model.train()
    losses, coss, errs = [], [], []
    it = range(steps)
    if progress:
        from labkit.runtime import progress as _progress

        it = _progress(it, desc=f"train {mode}")
    for _ in it:
        xs, vs, xq, yq = task.sample(rng, meta_batch, "train")
        oracle = true_grads(model, task, xs, vs, xq, yq) if mode == "oracle" else None
        out = model(xs, vs, xq, mode=mode, generator=gen, oracle_grads=oracle)
        for h in out["h"]:
            h.retain_grad()
        loss = _loss(task, out["pred"], yq).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(slow_params, 5.0)
        opt.step()
        true_g = torch.stack([h.grad for h in out["h"]], 1)  # (B, S, P)
        pred_g = model.sg(*out["sg_in"])
        sg_loss = ((pred_g - true_g) ** 2).sum(-1).mean()
        sg_opt.zero_grad(set_to_none=True)
        sg_loss.backward()
        sg_opt.step()
        with torch.no_grad():
            ok = true_g.norm(dim=-1) > 0
            cos = F.cosine_similarity(pred_g, true_g, dim=-1)[ok].mean() if ok.any() else torch.tensor(0.0)
            err = (pred_g - true_g).norm() / true_g.norm().clamp_min(1e-12)
        losses.append(loss.item() / meta_batch)
        coss.append(cos.item())
        errs.append(err.item())
    model.eval()

    def pool(a: list[float]) -> list[float]:
        return [float(np.mean(a[i:i + log_every])) for i in range(0, len(a), log_every)]

    return {"model": model, "mode": mode, "steps": [min(i + log_every, steps) for i in range(0, steps, log_every)],
            "loss": pool(losses), "cos": pool(coss), "sg_rel_err": pool(errs), "seconds": time.perf_counter() - t0}


def evaluate(model: FastSlowNMN, task: DigitsTask | SinusoidTask, mode: str = "slow", episodes: int = 200,
             split: str = "test", seed: int = 12345, batch: int = 50, include: Sequence[int] = (),
             exclude: Sequence[int] = ()) -> float:
    """Mean accuracy (classification) or MSE (regression) over ``episodes`` episodes of ``split``.

    The episodes depend only on ``seed`` (every learner sees the same ones). Fast steps run (first-order: only
    their effect matters here) when ``mode`` is not "slow".
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model.eval()
    scores = []
    done = 0
    while done < episodes:
        n = min(batch, episodes - done)
        xs, vs, xq, yq = task.sample(rng, n, split, include=include, exclude=exclude)
        oracle = true_grads(model, task, xs, vs, xq, yq) if mode == "oracle" else None
        with torch.no_grad():
            out = model(xs, vs, xq, mode=mode, generator=gen, create_graph=False, oracle_grads=oracle)
        scores.append(_metric(task, out["pred"].detach(), yq))
        done += n
    return float(torch.cat(scores).mean())


@dataclass(frozen=True)
class CompareSettings:
    """One comparison: the budget and the learners' shared hyperparameters (the task's own go in ``task_kw``)."""

    steps: int = 150
    meta_batch: int = 16
    eval_episodes: int = 300
    fast_lr: float = 0.1
    second_order: bool = True
    tied: bool = True
    key_dim: int = 32
    hidden: int = 64
    n_slots: int | None = None
    lr: float = 3e-3
    sg_lr: float = 3e-3
    log_every: int = 10


QUICK = CompareSettings(steps=30, meta_batch=8, eval_episodes=100, key_dim=16, hidden=32, log_every=5)
FULL = CompareSettings()


def fastslow_compare(task: str = "digits", modes: Sequence[str] = ("slow", "fastslow", "zero"),
                     seeds: Sequence[int] = (0, 1, 2), fast: bool = False, settings: CompareSettings | None = None,
                     progress: bool = False, **task_kw) -> dict:
    """Train every learner in ``modes`` on the same episodes and budget for each seed; evaluate on meta-test.

    ``settings`` defaults to ``QUICK`` when ``fast`` (seconds) and to ``FULL`` otherwise; ``task_kw`` go to the
    task (``make_task``, e.g. ``k_shot=3``). Each learner is evaluated with the mode it was trained with on the
    same meta-test episodes ("test" split, seed 10 000 + seed), and every learner with a fast path also with it
    switched off ("slow"). A digits task with a ``rare_digit`` is also evaluated on held-out images of the
    meta-training classes, in episodes with and without a rare class.

    Returns {"task", "metric": "accuracy" | "mse", "modes", "seeds", "test": {mode: [per seed]}, "test_off":
    {mode: [per seed]}, "cos": {mode: (seeds, points)} cosine(ĝ, ∂L/∂h) during training, "loss": {mode: (seeds,
    points)}, "steps": [points], "settings": dict, "seconds"}, plus "val_rare" / "val_common" with a rare digit.
    """
    modes = list(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes}")
    seeds = [int(x) for x in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    s = settings or (QUICK if fast else FULL)
    the_task = make_task(task, **task_kw)
    rare = tuple(getattr(the_task, "rare_classes", ()))
    t0 = time.perf_counter()
    out = {k: {m: [] for m in modes} for k in ("test", "test_off", "cos", "loss", "val_rare", "val_common")}
    steps_axis: list[int] = []
    jobs = [(seed, m) for seed in seeds for m in modes]
    if progress:
        from labkit.runtime import progress as _progress

        jobs = _progress(jobs, desc="fast & slow")
    for seed, m in jobs:
        run = train_learner(the_task, m, steps=s.steps, meta_batch=s.meta_batch, lr=s.lr, sg_lr=s.sg_lr, seed=seed,
                            log_every=s.log_every, key_dim=s.key_dim, hidden=s.hidden, sg_hidden=s.hidden,
                            n_slots=s.n_slots, fast_lr=s.fast_lr, second_order=s.second_order, tied=s.tied)
        model, ev_seed = run["model"], 10_000 + seed
        out["test"][m].append(evaluate(model, the_task, m, s.eval_episodes, "test", seed=ev_seed))
        if m != "slow":
            out["test_off"][m].append(evaluate(model, the_task, "slow", s.eval_episodes, "test", seed=ev_seed))
        if rare:
            out["val_rare"][m].append(evaluate(model, the_task, m, s.eval_episodes, "val", seed=ev_seed, include=rare))
            out["val_common"][m].append(evaluate(model, the_task, m, s.eval_episodes, "val", seed=ev_seed,
                                                 exclude=rare))
        out["cos"][m].append(run["cos"])
        out["loss"][m].append(run["loss"])
        steps_axis = run["steps"]
    result = {"task": task, "task_kw": dict(task_kw), "metric": "accuracy" if the_task.kind == "classification"
              else "mse", "modes": modes, "seeds": seeds, "test": out["test"],
              "test_off": {m: v for m, v in out["test_off"].items() if v},
              "cos": {m: np.array(c) for m, c in out["cos"].items()},
              "loss": {m: np.array(c) for m, c in out["loss"].items()}, "steps": steps_axis,
              "settings": dict(s.__dict__), "seconds": time.perf_counter() - t0}
    if rare:
        result["val_rare"], result["val_common"] = out["val_rare"], out["val_common"]
    return result


# ---------------------------------------------------------------------------------------------------------
# The full experiment (script) and its committed results

EXPERIMENTS: dict[str, dict] = {
    # name: fastslow_compare arguments; "settings" are replaced into FULL
    "digits_1shot": dict(task="digits", k_shot=1, modes=("slow", "fastslow", "zero", "random", "oracle")),
    "digits_1shot_lr0.03": dict(task="digits", k_shot=1, modes=("fastslow", "oracle"), settings=dict(fast_lr=0.03)),
    "digits_1shot_lr0.3": dict(task="digits", k_shot=1, modes=("fastslow", "oracle"), settings=dict(fast_lr=0.3)),
    "digits_3shot_untied": dict(task="digits", k_shot=3, modes=("slow", "fastslow", "oracle"),
                                settings=dict(tied=False)),
    "digits_1shot_rare": dict(task="digits", k_shot=1, rare_digit=0, rare_weight=0.05, modes=("slow", "fastslow")),
    "sinusoid_10shot": dict(task="sinusoid", k_shot=10, modes=("slow", "fastslow", "oracle"),
                            settings=dict(fast_lr=0.01)),
}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return np.round(value, 4).tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 5)
    return value


def load(path: str | Path | None = None) -> dict:
    """The committed results (``labkit/assets/fastslow.json``) or the file at ``path``.

    {"meta": {...}, "experiments": {name: fastslow_compare's result, arrays as lists}}; see ``EXPERIMENTS``.
    """
    return load_results(RESULTS, "labkit.memory.fastslow", path, what="results")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m labkit.memory.fastslow", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default labkit/assets/fastslow.json; "
                                                                   "--quick: /tmp/fastslow_quick.json)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    parser.add_argument("--quick", action="store_true", help="QUICK settings, 1 seed (a smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or (Path("/tmp/fastslow_quick.json") if args.quick else RESULTS)
    seeds = list(range(1 if args.quick else args.seeds))
    base = QUICK if args.quick else FULL
    names = [n.strip() for n in args.only.split(",")] if args.only else list(EXPERIMENTS)
    for n in names:
        if n not in EXPERIMENTS:
            raise ValueError(f"--only must name experiments of {list(EXPERIMENTS)}, got {n!r}")
    t0, cpu0 = time.perf_counter(), time.process_time()
    results = {"meta": {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
                        "python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                        "seeds": seeds, "base_settings": dict(base.__dict__)}, "experiments": {}}
    for name in names:
        spec = dict(EXPERIMENTS[name])
        settings = CompareSettings(**{**base.__dict__, **spec.pop("settings", {})})
        r = fastslow_compare(seeds=seeds, settings=settings, **spec)
        results["experiments"][name] = _jsonable(r)
        line = ", ".join(f"{m} {np.mean(v):.3f}" for m, v in r["test"].items())
        off = ", ".join(f"{m} {np.mean(v):.3f}" for m, v in r["test_off"].items())
        print(f"{name}: {r['metric']} {line}; fast path off: {off}  ({r['seconds']:.0f} s)", flush=True)
        results["meta"]["seconds"] = time.perf_counter() - t0
        results["meta"]["cpu_seconds"] = time.process_time() - cpu0
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    print(f"-> {out} in {results['meta']['seconds']:.0f} s ({results['meta']['cpu_seconds']:.0f} s CPU)")
    return results


if __name__ == "__main__":
    main()
