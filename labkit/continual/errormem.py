r"""Memories that adapt a frozen model without touching its weights: ReLoop2's error memory and CMT's compressed bank.

**ReLoop2** (Zhu et al., 2023, "Building Self-Adaptive Recommendation Models via Responsive Error Compensation Loop").
A deployed model f drifts out of date. Instead of (only) retraining it, keep an *error memory* of the most recent
observations: for each served example write its hidden representation h = φ(x) (the key) and the model's residual
error e = y − p (the value; y one-hot, p = softmax f(x)). At serving time, look up the k stored keys most similar to
φ(x) (cosine) and add their mean error to the prediction:

    ê(x) = (1/k) Σ_{i ∈ kNN(φ(x))} e_i,        p̃(x) = normalise(clip(p(x) + λ ê(x), ε, 1)).

The memory is a FIFO ring of ``capacity`` slots (the oldest slot is overwritten), so it tracks the current
distribution: this is the "fast" learner next to the slow, gradient-trained model. The loop is *prequential*: batch t
is predicted with the memory as it stood after batch t − 1, and only then are its labels revealed and written
(``prequential``). The paper stores errors in a locality-sensitive sketch; we use exact kNN over a ring buffer
(same estimator, exact neighbours, cost = slots compared per lookup).

**CMT** (Compression Memory Training, "A Memory Compression Method for Continual Knowledge Learning of LLMs").
New documents are *compressed* into memory slots and kept in a bank; the model's weights never change. A query is
matched against the bank and the retrieved memories condition the frozen model. Our toy (``cmt_experiment``): facts
are key → value pairs, a document is d = [k; E v] (key and value embedding), a query is a noisy key. A frozen reader
g(q, c) (an MLP pretrained to read the answer out of a context c) answers. The bank holds z = W_c d ∈ R^r per
document (compression ratio D / r); at query time the query is compressed by the *same* compressor,
z_q = W_c [q; 0] (*self-matching*), the top-k slots by cosine s_i are aggregated with softmax weights
(*top-aggregation*), ĉ = W_d Σ_{i∈top-k} softmax(s/τ)_i z_i, and the reader answers g(q, ĉ). The compressor W_c and
decoder W_d are trained once, on the pretraining facts only, with the *memory-aware objective* (the reader's answer
loss through the compressed memory, plus an InfoNCE term so queries match their own document's slot), never on the
stream. We compare it with fine-tuning a parametric model on each batch of new facts and with an uncompressed bank.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.continual.data import Task, drifting_stream
from labkit.continual.models import MLP
from labkit.continual.train import _positive_int, train_task
from labkit.runtime import load_results

__all__ = [
    "CompressedBank",
    "ErrorMemory",
    "compensate",
    "cmt_experiment",
    "load",
    "make_facts",
    "prequential",
    "reloop_experiment",
]

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "errormem.json"


def _check_fraction(name: str, v: float, lo: float = 0.0, hi: float = float("inf")) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {v!r}")
    return float(v)


# ---------------------------------------------------------------------------------------------------------
# ReLoop2: the error memory


class ErrorMemory:
    """FIFO memory of (key (dim,), error (n_outputs,)) pairs with k-nearest-neighbour (cosine) error look-up.

    capacity: number of slots; when full, each write overwrites the oldest slot. k: neighbours averaged per look-up
    (min(k, len) while the memory fills). Counters: ``n_writes``, ``n_lookups`` (queries answered) and
    ``n_compares`` (key comparisons made, = Σ over queries of the slots filled at the time).
    """

    def __init__(self, capacity: int, dim: int, n_outputs: int, k: int = 8) -> None:
        self.capacity = _positive_int("capacity", capacity)
        self.dim = _positive_int("dim", dim)
        self.n_outputs = _positive_int("n_outputs", n_outputs)
        self.k = _positive_int("k", k)
        self.keys = torch.zeros(self.capacity, self.dim)
        self.errors = torch.zeros(self.capacity, self.n_outputs)
        self.age = torch.zeros(self.capacity, dtype=torch.int64)  # write index of each slot (for FIFO checks)
        self.size = 0
        self._next = 0  # ring position of the next write
        self.n_writes = self.n_lookups = self.n_compares = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the stored keys and errors (float32), at capacity."""
        return 4 * self.capacity * (self.dim + self.n_outputs)

    def clear(self) -> None:
        self.size = self._next = 0

    def write(self, keys: torch.Tensor, errors: torch.Tensor) -> None:
        """keys: (B, dim), errors: (B, n_outputs); written in order, the oldest slots overwritten first."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (B, {self.dim}), got {tuple(keys.shape)}")
        if errors.ndim != 2 or errors.shape != (keys.shape[0], self.n_outputs):
            raise ValueError(f"errors must be ({keys.shape[0]}, {self.n_outputs}), got {tuple(errors.shape)}")
        keys, errors = keys.detach().float(), errors.detach().float()
        for i in range(len(keys)):
            self.keys[self._next], self.errors[self._next] = keys[i], errors[i]
            self.age[self._next] = self.n_writes
            self.n_writes += 1
            self._next = (self._next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    @torch.no_grad()
    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """keys: (B, dim) → ê: (B, n_outputs), the mean error of the k most cosine-similar stored keys (0 if empty)."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (B, {self.dim}), got {tuple(keys.shape)}")
        self.n_lookups += len(keys)
        if self.size == 0:
            return torch.zeros(len(keys), self.n_outputs)
        self.n_compares += len(keys) * self.size
        stored = F.normalize(self.keys[: self.size], dim=1)
        sim = F.normalize(keys.float(), dim=1) @ stored.T  # (B, size)
        idx = sim.topk(min(self.k, self.size), dim=1).indices  # (B, k)
        return self.errors[: self.size][idx].mean(1)


def compensate(probs: torch.Tensor, err_hat: torch.Tensor, lam: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """probs: (B, C) → p̃ = normalise(clip(probs + lam · err_hat, eps, 1)) (rows sum to 1). lam = 0 returns probs."""
    lam = _check_fraction("lam", lam)
    if probs.shape != err_hat.shape:
        raise ValueError(f"err_hat must have the shape of probs {tuple(probs.shape)}, got {tuple(err_hat.shape)}")
    if lam == 0.0:
        return probs
    p = (probs + lam * err_hat).clamp(eps, 1.0)
    return p / p.sum(1, keepdim=True)


def prequential(
    model: MLP, x: torch.Tensor, y: torch.Tensor, memory: ErrorMemory | None = None, lam: float = 1.0,
    finetune_every: int | None = None, finetune_steps: int = 10, window: int = 5, lr: float = 1e-3, seed: int = 0,
) -> dict:
    """Serve a stream prequentially: predict batch t, then reveal y[t], write its errors, maybe fine-tune.

    x: (T, B, d) inputs, y: (T, B) int64 labels. The model is a copy (the argument is left untouched).
    memory: the error memory (keys = ``model.features``, errors = one-hot(y) − softmax of the model, *not* of the
    compensated prediction); None serves the bare model. finetune_every: every that many batches, take
    ``finetune_steps`` Adam steps on the last ``window`` revealed batches (then the memory is cleared: its errors
    belong to the old model). Returns probs (T, B, C) (what was served), per-batch ``accuracy`` and ``logloss``
    (T,), ``grad_steps`` and the memory's counters.
    """
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"x must be (T, B, d) and y (T, B), got {tuple(x.shape)} and {tuple(y.shape)}")
    if finetune_every is not None:
        finetune_every = _positive_int("finetune_every", finetune_every)
    finetune_steps, window = _positive_int("finetune_steps", finetune_steps), _positive_int("window", window)
    lam = _check_fraction("lam", lam)
    model = copy.deepcopy(model)
    T, B = y.shape
    C = model.n_classes
    if memory is not None and (memory.dim != model.hidden[-1] or memory.n_outputs != C):
        raise ValueError(f"memory must be (dim={model.hidden[-1]}, n_outputs={C}), "
                         f"got ({memory.dim}, {memory.n_outputs})")
    probs = torch.empty(T, B, C)
    opt = torch.optim.Adam(model.parameters(), lr=lr) if finetune_every else None
    g = torch.Generator().manual_seed(int(seed))
    grad_steps = 0
    for t in range(T):
        model.eval()
        with torch.no_grad():
            h = model.features(x[t])
            p_model = model.head(h).softmax(-1)
            p = p_model if memory is None else compensate(p_model, memory.lookup(h), lam)
        probs[t] = p
        # the label of batch t is revealed only now
        if memory is not None:
            memory.write(h, F.one_hot(y[t], C).float() - p_model)
        if finetune_every and (t + 1) % finetune_every == 0:
            xs, ys = x[max(0, t + 1 - window): t + 1].reshape(-1, x.shape[2]), y[max(0, t + 1 - window): t + 1].reshape(-1)
            model.train()
            for _ in range(finetune_steps):
                idx = torch.randint(0, len(ys), (min(64, len(ys)),), generator=g)
                loss = F.cross_entropy(model(xs[idx]), ys[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                grad_steps += 1
            if memory is not None:
                memory.clear()
    p_true = probs.gather(2, y.unsqueeze(-1)).squeeze(-1).clamp_min(1e-7)
    out = {"probs": probs, "accuracy": (probs.argmax(-1) == y).float().mean(1).numpy(),
           "logloss": (-p_true.log()).mean(1).numpy(), "grad_steps": grad_steps}
    if memory is not None:
        out.update(slots=memory.capacity, bytes=memory.nbytes, lookups=memory.n_lookups, compares=memory.n_compares)
    return out


def reloop_experiment(
    seed: int = 0, n_batches: int = 60, batch_size: int = 32, max_drift: float = 60.0, capacity: int = 256,
    k: int = 16, lam: float = 1.0, finetune_every: int = 5, finetune_steps: int = 10, pretrain_epochs: int = 10,
    hidden: Sequence[int] = (64,), n_windows: int = 4,
) -> dict:
    """ReLoop2 on a rotating-digits stream, binary task "digit ≥ 5".

    An MLP is trained on the upright training digits, then serves a ``drifting_stream`` (rotation up to
    ``max_drift`` degrees) prequentially under five policies: ``frozen``, ``frozen+mem`` (ReLoop2), ``frozen+global``
    (memory with k = capacity: the mean recent error, a bias correction with no locality), ``finetune`` (every
    ``finetune_every`` batches) and ``finetune+mem``. Returns per-policy accuracy/log-loss per time window
    (``n_windows`` equal slices of the stream), grad steps and memory cost.
    """
    torch.manual_seed(seed)
    stream = drifting_stream(n_batches, batch_size, "rotation", max_drift=max_drift, seed=seed)
    base = stream.base
    binary = lambda y: (y >= 5).long()  # noqa: E731
    task = Task("digits>=5", base.x_train, binary(base.y_train), base.x_test, binary(base.y_test), (0, 1))
    model = MLP(64, tuple(hidden), 2)
    train_task(model, task, epochs=pretrain_epochs, seed=seed)
    x, y = stream.x, binary(stream.y)
    H = model.hidden[-1]
    policies = {
        "frozen": {},
        "frozen+mem": {"memory": ErrorMemory(capacity, H, 2, k)},
        "frozen+global": {"memory": ErrorMemory(capacity, H, 2, capacity)},
        "finetune": {"finetune_every": finetune_every},
        "finetune+mem": {"finetune_every": finetune_every, "memory": ErrorMemory(capacity, H, 2, k)},
    }
    out = {"seed": seed, "drift": stream.drift.tolist(), "policies": {}}
    for name, kw in policies.items():
        r = prequential(model, x, y, lam=lam, finetune_steps=finetune_steps, seed=seed, **kw)
        windows = np.array_split(np.arange(n_batches), n_windows)
        out["policies"][name] = {
            "accuracy": r["accuracy"].tolist(), "logloss": r["logloss"].tolist(),
            "window_accuracy": [float(r["accuracy"][w].mean()) for w in windows],
            "window_logloss": [float(r["logloss"][w].mean()) for w in windows],
            "mean_accuracy": float(r["accuracy"].mean()), "mean_logloss": float(r["logloss"].mean()),
            "grad_steps": r["grad_steps"], **{c: r[c] for c in ("slots", "bytes", "lookups", "compares") if c in r},
        }
    return out
