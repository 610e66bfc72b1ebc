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

*Honest control.* Our stream re-draws (with replacement) from only 360 test images, so the memory often holds the
query's own source image, rotated a few degrees less: its error is a near-duplicate's. ``frozen+mem (no same image)``
tags every slot with the id of its source image and drops, for each query, the slots written from the query's own
image before the kNN look-up (ê(x) averages the k most similar *other* images). The stream is the same, so the
difference to ``frozen+mem`` is exactly the near-duplicate recall.

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

from labkit.continual.data import Task, _check_seed, digits_split, drifting_stream
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
    "run_all",
    "summarize",
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
    ``n_compares`` (key comparisons made, = Σ over queries of the slots filled at the time), ``n_excluded`` (slots
    dropped from look-ups because they share the query's source id, see ``lookup``). ``source``: (capacity,) int64,
    the source id written with each slot (−1: none).
    """

    def __init__(self, capacity: int, dim: int, n_outputs: int, k: int = 8) -> None:
        self.capacity = _positive_int("capacity", capacity)
        self.dim = _positive_int("dim", dim)
        self.n_outputs = _positive_int("n_outputs", n_outputs)
        self.k = _positive_int("k", k)
        self.keys = torch.zeros(self.capacity, self.dim)
        self.errors = torch.zeros(self.capacity, self.n_outputs)
        self.age = torch.zeros(self.capacity, dtype=torch.int64)  # write index of each slot (for FIFO checks)
        self.source = torch.full((self.capacity,), -1, dtype=torch.int64)  # source id of each slot (−1: none)
        self.size = 0
        self._next = 0  # ring position of the next write
        self.n_writes = self.n_lookups = self.n_compares = self.n_excluded = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the stored keys and errors (float32), at capacity."""
        return 4 * self.capacity * (self.dim + self.n_outputs)

    def clear(self) -> None:
        self.size = self._next = 0

    def write(self, keys: torch.Tensor, errors: torch.Tensor, source: torch.Tensor | None = None) -> None:
        """keys: (B, dim), errors: (B, n_outputs), source: (B,) int ids ≥ 0 or None (stored as −1); written in order,
        the oldest slots overwritten first."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (B, {self.dim}), got {tuple(keys.shape)}")
        if errors.ndim != 2 or errors.shape != (keys.shape[0], self.n_outputs):
            raise ValueError(f"errors must be ({keys.shape[0]}, {self.n_outputs}), got {tuple(errors.shape)}")
        source = self._check_source("source", source, len(keys))
        keys, errors = keys.detach().float(), errors.detach().float()
        for i in range(len(keys)):
            self.keys[self._next], self.errors[self._next] = keys[i], errors[i]
            self.source[self._next] = -1 if source is None else source[i]
            self.age[self._next] = self.n_writes
            self.n_writes += 1
            self._next = (self._next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    @staticmethod
    def _check_source(name: str, source: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if source is None:
            return None
        source = torch.as_tensor(source)
        if source.shape != (n,) or source.dtype not in (torch.int32, torch.int64) or bool((source < 0).any()):
            raise ValueError(f"{name} must be ({n},) non-negative int ids, got shape {tuple(source.shape)}, "
                             f"dtype {source.dtype}")
        return source.long()

    @torch.no_grad()
    def lookup(self, keys: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """keys: (B, dim) → ê: (B, n_outputs), the mean error of the k most cosine-similar stored keys (0 if empty).

        exclude: (B,) int source ids or None. Query b then ignores every slot written with source id exclude[b]
        (the honest control: no near-duplicate of the query's own image) and averages the k most similar of the
        remaining slots (fewer if fewer remain; 0 if none does).
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (B, {self.dim}), got {tuple(keys.shape)}")
        exclude = self._check_source("exclude", exclude, len(keys))
        self.n_lookups += len(keys)
        if self.size == 0:
            return torch.zeros(len(keys), self.n_outputs)
        self.n_compares += len(keys) * self.size
        stored = F.normalize(self.keys[: self.size], dim=1)
        sim = F.normalize(keys.float(), dim=1) @ stored.T  # (B, size)
        if exclude is None:
            idx = sim.topk(min(self.k, self.size), dim=1).indices  # (B, k)
            return self.errors[: self.size][idx].mean(1)
        same = self.source[: self.size].unsqueeze(0) == exclude.unsqueeze(1)  # (B, size)
        self.n_excluded += int(same.sum())
        val, idx = sim.masked_fill(same, float("-inf")).topk(min(self.k, self.size), dim=1)
        keep = torch.isfinite(val).float().unsqueeze(-1)  # (B, k): 0 for excluded slots that filled the top-k
        return (self.errors[: self.size][idx] * keep).sum(1) / keep.sum(1).clamp_min(1.0)


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
    source: torch.Tensor | None = None,
) -> dict:
    """Serve a stream prequentially: predict batch t, then reveal y[t], write its errors, maybe fine-tune.

    x: (T, B, d) inputs, y: (T, B) int64 labels. The model is a copy (the argument is left untouched).
    memory: the error memory (keys = ``model.features``, errors = one-hot(y) − softmax of the model, *not* of the
    compensated prediction); None serves the bare model. finetune_every: every that many batches, take
    ``finetune_steps`` Adam steps on the last ``window`` revealed batches (then the memory is cleared: its errors
    belong to the old model). source: (T, B) int ids of each example's source image, or None; when given, the memory
    stores them and each look-up excludes the slots of the query's own source (``ErrorMemory.lookup(exclude=...)``).
    Returns probs (T, B, C) (what was served), per-batch ``accuracy`` and ``logloss`` (T,), ``grad_steps`` and the
    memory's counters (``excluded``: slots dropped as same-source, summed over look-ups).
    """
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"x must be (T, B, d) and y (T, B), got {tuple(x.shape)} and {tuple(y.shape)}")
    if finetune_every is not None:
        finetune_every = _positive_int("finetune_every", finetune_every)
    finetune_steps, window = _positive_int("finetune_steps", finetune_steps), _positive_int("window", window)
    lam = _check_fraction("lam", lam)
    if source is not None:
        if memory is None:
            raise ValueError("source needs a memory (it only filters the memory's look-ups), got memory=None")
        source = torch.as_tensor(source)
        if source.shape != y.shape:
            raise ValueError(f"source must be (T, B) = {tuple(y.shape)}, got {tuple(source.shape)}")
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
            src = None if source is None else source[t]
            p = p_model if memory is None else compensate(p_model, memory.lookup(h, exclude=src), lam)
        probs[t] = p
        # the label of batch t is revealed only now
        if memory is not None:
            memory.write(h, F.one_hot(y[t], C).float() - p_model, source=src)
        if finetune_every and (t + 1) % finetune_every == 0:
            recent = slice(max(0, t + 1 - window), t + 1)
            xs, ys = x[recent].reshape(-1, x.shape[2]), y[recent].reshape(-1)
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
        out.update(slots=memory.capacity, bytes=memory.nbytes, lookups=memory.n_lookups, compares=memory.n_compares,
                   excluded=memory.n_excluded)
    return out


def _stream_source_ids(n_batches: int, batch_size: int, seed: int = 0, test_frac: float = 0.2) -> torch.Tensor:
    """(n_batches, batch_size) int64: the digits index of the source image of every example of
    ``drifting_stream(n_batches, batch_size, ..., seed=seed, test_frac=test_frac)``.

    ``drifting_stream`` does not return its draws, so this replays its random generator (a seeded permutation, then
    one ``integers(0, len(pool), batch_size)`` per batch); the unit tests check that the ids agree with the stream
    (labels, identical rows for repeated ids within a batch), so a change in ``data.py`` shows up there.
    """
    base = digits_split(seed, test_frac)
    pool = base.info["test_idx"]
    rng = np.random.default_rng([_check_seed(seed), 3])
    rng.permutation(64)  # the "permutation" kind's pixel permutation is drawn first, whatever the kind
    return torch.from_numpy(np.stack([pool[rng.integers(0, len(pool), batch_size)] for _ in range(n_batches)]))


def reloop_experiment(
    seed: int = 0, n_batches: int = 60, batch_size: int = 32, max_drift: float = 60.0, capacity: int = 256,
    k: int = 16, lam: float = 1.0, finetune_every: int = 5, finetune_steps: int = 10, pretrain_epochs: int = 10,
    hidden: Sequence[int] = (64,), n_windows: int = 4,
) -> dict:
    """ReLoop2 on a rotating-digits stream, binary task "digit ≥ 5".

    An MLP is trained on the upright training digits, then serves a ``drifting_stream`` (rotation up to
    ``max_drift`` degrees) prequentially under five policies: ``frozen``, ``frozen+mem`` (ReLoop2), ``frozen+global``
    (memory with k = capacity: the mean recent error, a bias correction with no locality), ``finetune`` (every
    ``finetune_every`` batches), ``finetune+mem`` and the honest control ``frozen+mem (no same image)`` (ReLoop2,
    but each query ignores the slots written from its own source image). Returns per-policy accuracy/log-loss per
    time window (``n_windows`` equal slices of the stream), grad steps and memory cost (``excluded``: same-image slots
    dropped, summed over look-ups).
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
        "frozen+mem (no same image)": {"memory": ErrorMemory(capacity, H, 2, k),
                                       "source": _stream_source_ids(n_batches, batch_size, seed)},
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
            "grad_steps": r["grad_steps"],
            **{c: r[c] for c in ("slots", "bytes", "lookups", "compares", "excluded") if c in r},
        }
    return out


# ---------------------------------------------------------------------------------------------------------
# CMT: a compressed memory bank read by a frozen model


def make_facts(n: int, d_key: int = 32, n_values: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random facts: keys (n, d_key), i.i.d. N(0, 1/d_key) entries (norm ≈ 1), values (n,) in 0..n_values−1."""
    n, d_key, n_values = _positive_int("n", n), _positive_int("d_key", d_key), _positive_int("n_values", n_values)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, d_key, generator=g) / d_key ** 0.5, torch.randint(0, n_values, (n,), generator=g)


class CompressedBank:
    """A growing bank of compressed documents: z = W_c d (r numbers per document of D) and top-k read-out.

    W_c: (r, D) compressor, W_d: (D, r) decoder (``None`` for both: the uncompressed bank, r = D). ``add(docs: (N, D))``
    appends; ``read(queries: (B, D), top_k, tau)`` matches W_c q against every slot by cosine (self-matching: the same
    compressor encodes queries and documents), keeps the top_k, and returns ĉ = W_d Σ_i softmax(s_i/τ) z_i: (B, D).
    """

    def __init__(self, D: int, W_c: torch.Tensor | None = None, W_d: torch.Tensor | None = None) -> None:
        self.D = _positive_int("D", D)
        if (W_c is None) != (W_d is None):
            raise ValueError("W_c and W_d must both be given or both be None")
        if W_c is not None and (W_c.ndim != 2 or W_c.shape[1] != D or W_d.shape != (D, W_c.shape[0])):
            raise ValueError(f"W_c must be (r, {D}) and W_d ({D}, r), got {tuple(W_c.shape)} and {tuple(W_d.shape)}")
        self.W_c = None if W_c is None else W_c.detach().float()
        self.W_d = None if W_d is None else W_d.detach().float()
        self.r = D if W_c is None else int(W_c.shape[0])
        self.slots = torch.zeros(0, self.r)

    def __len__(self) -> int:
        return int(self.slots.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored slots (float32); the compressor itself is fixed and not counted."""
        return 4 * self.slots.numel()

    def encode(self, docs: torch.Tensor) -> torch.Tensor:
        if docs.ndim != 2 or docs.shape[1] != self.D:
            raise ValueError(f"docs must be (N, {self.D}), got {tuple(docs.shape)}")
        return docs.float() if self.W_c is None else docs.float() @ self.W_c.T

    def add(self, docs: torch.Tensor) -> None:
        self.slots = torch.cat([self.slots, self.encode(docs)])

    @torch.no_grad()
    def read(self, queries: torch.Tensor, top_k: int = 1, tau: float = 0.05) -> torch.Tensor:
        top_k = _positive_int("top_k", top_k)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if len(self) == 0:
            return torch.zeros(len(queries), self.D)
        return _top_aggregate(self.encode(queries), self.slots, top_k, tau, self.W_d)


def _top_aggregate(zq: torch.Tensor, slots: torch.Tensor, top_k: int, tau: float, W_d: torch.Tensor | None,
                   return_sim: bool = False):
    sim = F.normalize(zq, dim=1) @ F.normalize(slots, dim=1).T  # (B, N)
    val, idx = sim.topk(min(top_k, slots.shape[0]), dim=1)
    z = (val / tau).softmax(1).unsqueeze(-1).mul(slots[idx]).sum(1)  # (B, r)
    c = z if W_d is None else z @ W_d.T
    return (c, sim) if return_sim else c


def _train_mlp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int,
               noise: float = 0.0, batch: int = 64) -> None:
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (min(batch, len(y)),), generator=g)
        xb = x[idx] + noise * torch.randn(x[idx].shape, generator=g) / x.shape[1] ** 0.5
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class _Reader(nn.Module):
    """The frozen model: g(q, c) = MLP([q; c]) → logits over values; q: (B, d_key), c: (B, D)."""

    def __init__(self, d_key: int, D: int, n_values: int, hidden: int = 128) -> None:
        super().__init__()
        self.d_key = d_key
        self.net = MLP(d_key + D, (hidden,), n_values)

    def forward(self, qc: torch.Tensor) -> torch.Tensor:
        return self.net(qc)


def _train_compressor(reader: _Reader, docs: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, r: int,
                      objective: str, steps: int, noise: float, top_k: int, tau: float, seed: int):
    """W_c (r, D), W_d (D, r) from the pretraining documents only: ``pca`` (reconstruction) or ``memory`` (CMT)."""
    D, d_key = docs.shape[1], keys.shape[1]
    if objective == "pca":
        _, _, V = torch.linalg.svd(docs, full_matrices=False)  # uncentred: cosine matching is about the origin
        return V[:r].clone(), V[:r].T.clone()
    g = torch.Generator().manual_seed(int(seed) + 7)
    W_c = nn.Parameter(torch.randn(r, D, generator=g) / D ** 0.5)
    W_d = nn.Parameter(torch.randn(D, r, generator=g) / r ** 0.5)
    opt = torch.optim.Adam([W_c, W_d], lr=1e-2)
    for _ in range(steps):
        idx = torch.randperm(len(values), generator=g)[:128]
        k, v, d = keys[idx], values[idx], docs[idx]
        q = k + noise * torch.randn(k.shape, generator=g) / d_key ** 0.5
        z = d @ W_c.T
        zq = torch.cat([q, torch.zeros(len(q), D - d_key)], 1) @ W_c.T
        c, sim = _top_aggregate(zq, z, top_k, tau, W_d, return_sim=True)
        answer = F.cross_entropy(reader(torch.cat([q, c], 1)), v)  # memory-aware objective
        match = F.cross_entropy(sim / tau, torch.arange(len(v)))  # self-matching (InfoNCE)
        loss = answer + match
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return W_c.detach(), W_d.detach()


def cmt_experiment(
    seed: int = 0, d_key: int = 32, n_values: int = 16, n_pretrain: int = 512, n_steps: int = 6,
    facts_per_step: int = 64,
    ratios: Sequence[int] = (2, 4, 8), noise: float = 0.3, top_k: int = 4, tau: float = 0.05,
    reader_steps: int = 1500, compressor_steps: int = 400, finetune_steps: int = 200,
    objectives: Sequence[str] = ("memory", "pca"),
) -> dict:
    """CMT toy: a stream of ``n_steps`` batches of new key → value facts answered by a frozen reader.

    Documents d = [k; E v] (D = d_key + d_val, d_val = d_key/2), queries q = k + noise·ε/√d_key (fresh ε at test).
    Policies: ``finetune`` (a parametric MLP q → v, pretrained on ``n_pretrain`` facts, fine-tuned ``finetune_steps``
    Adam steps on each new batch), ``bank-full`` (uncompressed bank, top-1), and for each ratio ρ and objective,
    ``cmt-<objective>-x<ρ>`` (r = D/ρ slots per document; ``memory``: the CMT objective, ``pca``: reconstruction).
    After each step: accuracy on that step's facts (``new``), on step 0's facts (``first``), on all stream facts so
    far (``seen``), and the bank's bytes.
    """
    for o in objectives:
        if o not in ("memory", "pca"):
            raise ValueError(f"objectives must be from ('memory', 'pca'), got {o!r}")
    d_val = max(d_key // 2, 1)
    D = d_key + d_val
    for rho in ratios:
        if isinstance(rho, bool) or not isinstance(rho, int) or not 1 <= rho <= D:
            raise ValueError(f"ratios must be ints in 1..{D}, got {rho!r}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(int(seed) + 1)
    E = torch.randn(n_values, d_val, generator=g) / d_val ** 0.5  # value embeddings (fixed, "the vocabulary")
    keys, values = make_facts(n_pretrain + n_steps * facts_per_step, d_key, n_values, seed)
    docs = torch.cat([keys, E[values]], 1)
    pre = slice(0, n_pretrain)
    steps = [slice(n_pretrain + s * facts_per_step, n_pretrain + (s + 1) * facts_per_step) for s in range(n_steps)]
    queries = keys + noise * torch.randn(keys.shape, generator=g) / d_key ** 0.5  # test queries (paraphrases)
    # the frozen reader: learns to answer from [q; c] with c the (noisy) true document of the pretraining facts
    reader = _Reader(d_key, D, n_values)
    # (half the time with the context's key part blanked, so that it reads the answer from the value part alone)
    blank = torch.cat([torch.zeros(n_pretrain, d_key), E[values[pre]]], 1)
    qc = torch.cat([torch.cat([keys[pre], docs[pre]], 1), torch.cat([keys[pre], blank], 1)])
    _train_mlp(reader, qc, values[pre].repeat(2), reader_steps, 3e-3, seed, noise=noise)
    reader.eval()
    for p in reader.parameters():
        p.requires_grad_(False)

    def answer_acc(bank: CompressedBank, sl: slice, k: int) -> float:
        q = queries[sl]
        c = bank.read(torch.cat([q, torch.zeros(len(q), d_val)], 1), k, tau)
        return float((reader(torch.cat([q, c], 1)).argmax(1) == values[sl]).float().mean())

    banks = {"bank-full": (CompressedBank(D), 1)}
    for obj in objectives:
        for rho in ratios:
            r = max(D // int(rho), 1)
            W_c, W_d = _train_compressor(reader, docs[pre], keys[pre], values[pre], r, obj, compressor_steps,
                                         noise, top_k, tau, seed)
            banks[f"cmt-{obj}-x{rho}"] = (CompressedBank(D, W_c, W_d), top_k)
    parametric = MLP(d_key, (128,), n_values)
    _train_mlp(parametric, keys[pre], values[pre], reader_steps, 3e-3, seed, noise=noise)
    out = {"seed": seed, "D": D, "policies": {n: {"new": [], "first": [], "seen": [], "bytes": []}
                                              for n in ["finetune", *banks]}}
    for s, sl in enumerate(steps):
        seen = slice(steps[0].start, sl.stop)
        _train_mlp(parametric, keys[sl], values[sl], finetune_steps, 3e-3, seed + s, noise=noise)
        with torch.no_grad():
            accs = {name: float((parametric(queries[z]).argmax(1) == values[z]).float().mean())
                    for name, z in (("new", sl), ("first", steps[0]), ("seen", seen))}
        rec = out["policies"]["finetune"]
        for m in ("new", "first", "seen"):
            rec[m].append(accs[m])
        rec["bytes"].append(4 * sum(p.numel() for p in parametric.parameters()))
        for name, (bank, k) in banks.items():
            bank.add(docs[sl])
            rec = out["policies"][name]
            for m, z in (("new", sl), ("first", steps[0]), ("seen", seen)):
                rec[m].append(answer_acc(bank, z, k))
            rec["bytes"].append(bank.nbytes)
    # how much the reader knows without any memory (zero context) about the stream facts: chance-level check
    with torch.no_grad():
        q = queries[steps[0].start:]
        out["reader_no_memory"] = float((reader(torch.cat([q, torch.zeros(len(q), D)], 1)).argmax(1)
                                         == values[steps[0].start:]).float().mean())
    return out


# ---------------------------------------------------------------------------------------------------------
# FAST / full runs and the committed results

FAST = {"reloop": {"n_batches": 40}, "cmt": {"n_steps": 4, "ratios": (2, 4), "reader_steps": 600,
                                               "compressor_steps": 200, "finetune_steps": 100}}
FULL: dict = {"reloop": {}, "cmt": {}}
SEEDS = (0, 1, 2)


def summarize(runs: Sequence[dict], metric: str) -> dict:
    """Mean and std over seeds of every policy's ``metric`` (a number or a list, element-wise)."""
    names = runs[0]["policies"]
    out = {}
    for n in names:
        a = np.array([r["policies"][n][metric] for r in runs], dtype=float)
        out[n] = {"mean": a.mean(0).tolist(), "std": a.std(0).tolist()}
    return out


def run_all(fast: bool = False, seeds: Sequence[int] = SEEDS) -> dict:
    """Both experiments over ``seeds`` (FAST: smaller settings), with wall times."""
    torch.set_num_threads(1)
    cfg = FAST if fast else FULL
    t0 = time.perf_counter()
    reloop = [reloop_experiment(seed=s, **cfg["reloop"]) for s in seeds]
    t1 = time.perf_counter()
    cmt = [cmt_experiment(seed=s, **cfg["cmt"]) for s in seeds]
    t2 = time.perf_counter()
    return {"fast": fast, "seeds": list(seeds), "reloop": reloop, "cmt": cmt,
            "seconds": {"reloop": t1 - t0, "cmt": t2 - t1}}


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/errormem.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.continual.errormem", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4: ReLoop2 error memory and CMT compressed bank, 3 seeds.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    res = run_all(False, args.seeds)
    args.out.write_text(json.dumps(res))
    for n, v in summarize(res["reloop"], "mean_accuracy").items():
        ll = summarize(res["reloop"], "mean_logloss")[n]
        print(f"reloop {n:26s} acc {100 * v['mean']:.1f}±{100 * v['std']:.1f} logloss {ll['mean']:.3f}")
    for n, v in summarize(res["cmt"], "seen").items():
        f = summarize(res["cmt"], "first")[n]
        print(f"cmt {n:16s} seen {100 * v['mean'][-1]:.1f}±{100 * v['std'][-1]:.1f} "
              f"first {100 * f['mean'][-1]:.1f} bytes {res['cmt'][0]['policies'][n]['bytes'][-1]}")
    print("seconds", res["seconds"])


if __name__ == "__main__":
    main()
