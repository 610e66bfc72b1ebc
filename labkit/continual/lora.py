r"""Parameter-efficient continual learning with LoRA: orthogonal adapters, O3 unlearning and I-LoRA.

**LoRA.** A frozen linear layer W₀: (out, in) gets a low-rank update, y = W₀x + b + s·B A x with A: (r, in),
B: (out, r), s = α/r. B starts at 0, so the adapted model *is* the base model at initialisation; only A and B
(r·(in+out) numbers per layer) are trained. ``merge`` folds the update into the weight, W = W₀ + s·BA (no extra
cost at inference), ``unmerge`` restores W₀ exactly (the merged layer keeps a copy of W₀).

**Orthogonal adapters (O-LoRA style).** For a task sequence, each task t gets its own adapter (A_t, B_t); the
earlier ones are frozen but stay on (no task id at test time). A_t's rows span the input subspace the adapter
reads; to keep task t out of the subspaces of tasks k < t the loss adds, summed over layers,

    L_orth = Σ_{k<t} ‖A_k A_tᵀ‖_F²        (A: (r, in); = Σ_{k<t} ‖A_kᵀ-column form‖² of the papers' A = our Aᵀ)

which is 0 iff every row of A_t is orthogonal to every row of every A_k; its gradient is 2 Σ_k A_t A_kᵀ A_k.

**O3 unlearning** (Gao et al., "Practical Unlearning for Large Language Models"). Each unlearning request k
("forget class c_k" here) gets its own orthogonal LoRA, trained on the forget set *only* (no retained data)
with, here, the bounded "push-away" loss L_forget = −(1/(C−1)) Σ_{c≠y} log p(c|x) (the prediction is pushed
onto the other classes; unlike gradient ascent on −CE it cannot diverge) plus λ·L_orth. An OOD detector decides
at inference whether to load the unlearning adapters: the paper trains one with a contrastive-entropy loss and a
layer-aggregated score; we **simplify** to a Mahalanobis score on the frozen base model's last hidden features
h(x), one Gaussian per request with shrunk covariance Σ_k = (1−ρ)Ŝ_k + ρ·(tr Ŝ_k/D)·I:

    d_k²(x) = (h(x) − μ_k)ᵀ Σ_k⁻¹ (h(x) − μ_k),   gate g(x) = 1[min_k (d_k²(x) − τ_k) ≤ 0]

with τ_k the ``quantile`` of d_k² over request k's own forget examples. Inputs with g = 0 run through the base
model bit for bit; inputs with g = 1 get every unlearning adapter.

**I-LoRA** (Ren et al., "Analyzing and Reducing Catastrophic Forgetting in Parameter Efficient Tuning").
Dual memory on top of experience replay: a fast learner θ_w (a LoRA trained by SGD on current + replayed
examples) and a slow learner θ_s, an interpolation of it after every step,

    θ_s ← λ θ_s + (1 − λ) θ_w         (λ = ``decay`` ∈ [0, 1)),

plus a consistency loss that ties the fast learner's outputs on the replayed examples to the slow learner's,
L = CE(f_w(x ∪ x_buf), y ∪ y_buf) + γ ‖f_w(x_buf) − f_s(x_buf)‖² (the paper matches hidden states; we match
logits). The slow learner is the model used for testing. The baseline is ER with one LoRA (same buffer).

The experiments use a base ``MLP`` trained on the plain digits; the continual tasks are the permuted-digits tasks
1..T (``permuted_digits``' task 0 is the plain digits the base was trained on).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.continual._checks import positive_int as _pos_int
from labkit.continual.data import Task, digits_split, permuted_digits
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import MLP
from labkit.continual.train import ReplayBuffer, accuracy, evaluate, train_task
from labkit.runtime import load_results

__all__ = [
    "FAST",
    "FULL",
    "LoRALinear",
    "LoRAMLP",
    "MahalanobisGate",
    "O3Unlearner",
    "ema_update",
    "ilora_experiment",
    "load",
    "lora_experiments",
    "o3_experiment",
    "olora_experiment",
    "orthogonality_loss",
    "pretrain_base",
    "push_away_loss",
]

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "lora.json"


def _check_decay(decay: float) -> float:
    if not (isinstance(decay, (int, float)) and math.isfinite(decay) and 0.0 <= decay < 1.0):
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    return float(decay)


def _nonneg(name: str, v: float) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {v}")
    return float(v)


# ---------------------------------------------------------------------------------------------------------
# LoRA layers


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (in → out) plus a list of LoRA adapters (A_k: (r, in), B_k: (out, r)).

    forward(x: (N, in), gate: None | float | (N,)) = W₀x + b + s Σ_k g·B_k A_k x with s = alpha / rank (alpha
    defaults to rank, s = 1). gate None means 1; a (N,) gate scales the adapters per example, and rows with gate 0
    are the base layer's output exactly. Only the newest adapter is trainable (``add_adapter`` freezes the rest).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        d_out, d_in = base.weight.shape
        top = min(d_in, d_out)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= top:
            raise ValueError(f"rank must be an int in 1..{top} (min of in={d_in}, out={d_out}), got {rank!r}")
        alpha = float(rank) if alpha is None else alpha
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be finite and > 0, got {alpha}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha, self.scaling = int(rank), float(alpha), float(alpha) / int(rank)
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        self._w0: torch.Tensor | None = None  # the base weight while merged

    @property
    def n_adapters(self) -> int:
        return len(self.A)

    @property
    def merged(self) -> bool:
        return self._w0 is not None

    def add_adapter(self, generator: torch.Generator | None = None) -> int:
        """Append (A, B): A ~ U(±1/√in) (LoRA's Kaiming-uniform), B = 0; freeze the older ones. Returns its index."""
        if self.merged:
            raise ValueError("cannot add an adapter to a merged layer; unmerge() first")
        for p in [*self.A, *self.B]:
            p.requires_grad_(False)
        w = self.base.weight
        bound = 1.0 / math.sqrt(self.d_in)
        a = (torch.rand(self.rank, self.d_in, generator=generator, dtype=w.dtype) * 2 - 1) * bound
        self.A.append(nn.Parameter(a))
        self.B.append(nn.Parameter(torch.zeros(self.d_out, self.rank, dtype=w.dtype)))
        return self.n_adapters - 1

    def delta_weight(self) -> torch.Tensor:
        """s Σ_k B_k A_k: (out, in)."""
        delta = torch.zeros_like(self.base.weight)
        for a, b in zip(self.A, self.B):
            delta = delta + self.scaling * (b @ a)
        return delta

    def forward(self, x: torch.Tensor, gate: torch.Tensor | float | None = None) -> torch.Tensor:
        out = F.linear(x, self.base.weight, self.base.bias)
        if self.merged:
            if gate is not None:
                raise ValueError("gate must be None for a merged layer (the update is inside the weight)")
            return out
        if not self.n_adapters:
            return out
        delta = sum((x @ a.T) @ b.T for a, b in zip(self.A, self.B)) * self.scaling
        if gate is not None:
            if isinstance(gate, torch.Tensor) and gate.ndim == 1:
                if len(gate) != len(x):
                    raise ValueError(f"gate must be (N,) with N = {len(x)}, got {tuple(gate.shape)}")
                gate = gate.to(delta.dtype)[:, None]
            delta = delta * gate
        return out + delta

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W₀ + s Σ_k B_k A_k (keeps W₀ so that ``unmerge`` is exact)."""
        if self.merged:
            raise ValueError("layer is already merged")
        self._w0 = self.base.weight.detach().clone()
        self.base.weight.add_(self.delta_weight())

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W₀ exactly (the saved copy, not W − ΔW, which would round)."""
        if not self.merged:
            raise ValueError("layer is not merged")
        self.base.weight.copy_(self._w0)
        self._w0 = None


def orthogonality_loss(A_new: torch.Tensor, A_old: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_orth = Σ_k ‖A_k A_newᵀ‖_F², A_new: (r, d), A_k: (r_k, d). 0 iff A_new's rows ⟂ every A_k's rows."""
    if A_new.ndim != 2:
        raise ValueError(f"A_new must be (r, d), got shape {tuple(A_new.shape)}")
    total = A_new.new_zeros(())
    for k, a in enumerate(A_old):
        if a.ndim != 2 or a.shape[1] != A_new.shape[1]:
            raise ValueError(f"A_old[{k}] must be (r_k, {A_new.shape[1]}), got shape {tuple(a.shape)}")
        total = total + (a @ A_new.T).pow(2).sum()
    return total


class LoRAMLP(nn.Module):
    """A copy of an ``MLP`` whose hidden layers and head are ``LoRALinear`` (base frozen): x (N, d_in) → (N, C).

    forward(x, gate) passes the per-example gate (None | float | (N,)) to every layer, so gate 0 gives the base
    MLP's logits bit for bit. With no adapter it is the base model.
    """

    def __init__(self, base: MLP, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if not isinstance(base, MLP):
            raise ValueError(f"base must be a labkit.continual.MLP, got {type(base).__name__}")
        base = copy.deepcopy(base)
        self.d_in, self.n_classes = base.d_in, base.n_classes
        names = [f"layers.{i}" for i in range(len(base.layers))] + ["head"]
        layers = []
        for name, lin in zip(names, [*base.layers, base.head]):
            try:
                layers.append(LoRALinear(lin, rank, alpha))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        self.layers = nn.ModuleList(layers[:-1])
        self.head = layers[-1]
        self.rank = int(rank)

    def lora_layers(self) -> list[LoRALinear]:
        return [*self.layers, self.head]

    @property
    def n_adapters(self) -> int:
        return self.head.n_adapters

    def add_adapter(self, seed: int = 0) -> int:
        """A new adapter on every layer (seeded A, B = 0), the older ones frozen. Returns its index."""
        g = torch.Generator().manual_seed(int(seed))
        return [layer.add_adapter(g) for layer in self.lora_layers()][-1]

    def features(self, x: torch.Tensor, gate: torch.Tensor | float | None = None) -> torch.Tensor:
        """x: (N, d_in) → last hidden representation (N, hidden[-1])."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x must be (N, {self.d_in}), got {tuple(x.shape)}")
        for layer in self.layers:
            x = F.relu(layer(x, gate))
        return x

    def forward(self, x: torch.Tensor, gate: torch.Tensor | float | None = None) -> torch.Tensor:
        return self.head(self.features(x, gate), gate)

    def merge(self) -> None:
        for layer in self.lora_layers():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.lora_layers():
            layer.unmerge()

    def orthogonality_loss(self) -> torch.Tensor:
        """Σ_layers Σ_{k < newest} ‖A_k A_newestᵀ‖_F² (0 with fewer than two adapters)."""
        total = self.head.base.weight.new_zeros(())
        for layer in self.lora_layers():
            if layer.n_adapters >= 2:
                total = total + orthogonality_loss(layer.A[-1], list(layer.A[:-1]))
        return total

    def lora_parameters(self) -> dict[str, nn.Parameter]:
        """name -> parameter for every adapter matrix (``layers.0.A.1`` ...)."""
        return {n: p for n, p in self.named_parameters() if ".A." in n or ".B." in n}

    def max_cross_cosine(self) -> float:
        """Largest |cos| between a row of the newest A and a row of an older A, over layers (0 = orthogonal)."""
        worst = 0.0
        for layer in self.lora_layers():
            if layer.n_adapters >= 2:
                new = F.normalize(layer.A[-1].detach(), dim=1)
                old = F.normalize(torch.cat([a.detach() for a in layer.A[:-1]]), dim=1)
                worst = max(worst, float((old @ new.T).abs().max()))
        return worst


@torch.no_grad()
def ema_update(slow: LoRAMLP | Mapping[str, torch.Tensor], fast: LoRAMLP | Mapping[str, torch.Tensor],
               decay: float) -> None:
    """θ_s ← decay·θ_s + (1 − decay)·θ_w, in place on ``slow``, for every adapter matrix (or every dict entry)."""
    decay = _check_decay(decay)
    s = slow.lora_parameters() if isinstance(slow, LoRAMLP) else slow
    f = fast.lora_parameters() if isinstance(fast, LoRAMLP) else fast
    if set(s) != set(f):
        raise ValueError(f"slow and fast must have the same parameter names, got {sorted(s)} and {sorted(f)}")
    for name, p in s.items():
        if p.shape != f[name].shape:
            raise ValueError(f"parameter {name!r} must have the same shape in slow and fast, "
                             f"got {tuple(p.shape)} and {tuple(f[name].shape)}")
        p.mul_(decay).add_(f[name].detach(), alpha=1.0 - decay)


# ---------------------------------------------------------------------------------------------------------
# O3: orthogonal unlearning adapters + an OOD gate


def push_away_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−(1/(C−1)) Σ_{c≠y} log p(c|x), mean over the batch: cross-entropy to the uniform distribution on the
    *other* classes. logits: (N, C), y: (N,). Bounded below by log(C−1) (reached when p(y|x) = 0)."""
    logp = F.log_softmax(logits, -1)
    C = logits.shape[1]
    others = 1.0 - F.one_hot(y, C).to(logp.dtype)
    return -(logp * others).sum(1).div(C - 1).mean()


class MahalanobisGate:
    """Forget-likeness detector on features h: (N, D): one shrunk Gaussian per unlearning request.

    ``add_request(h)`` stores μ_k, Σ_k⁻¹ (Σ_k = (1−ρ)Ŝ + ρ (tr Ŝ/D) I, ρ = shrinkage) and τ_k = the ``quantile``
    of d_k² over h. ``scores(h)``: (N, K) d_k² − τ_k; ``__call__(h)``: (N,) float gate, 1 where some score ≤ 0.
    """

    def __init__(self, shrinkage: float = 0.2, quantile: float = 0.99) -> None:
        if not (isinstance(shrinkage, (int, float)) and 0.0 < shrinkage <= 1.0):
            raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
        if not (isinstance(quantile, (int, float)) and 0.0 < quantile <= 1.0):
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.shrinkage, self.quantile = float(shrinkage), float(quantile)
        self.means: list[torch.Tensor] = []
        self.precisions: list[torch.Tensor] = []
        self.thresholds: list[float] = []

    @property
    def n_requests(self) -> int:
        return len(self.means)

    @staticmethod
    def _d2(h: torch.Tensor, mu: torch.Tensor, prec: torch.Tensor) -> torch.Tensor:
        z = h.double() - mu
        return ((z @ prec) * z).sum(1)

    def add_request(self, h: torch.Tensor) -> None:
        if h.ndim != 2 or len(h) < 2:
            raise ValueError(f"h must be (N, D) with N >= 2, got shape {tuple(h.shape)}")
        if self.means and h.shape[1] != self.means[0].shape[0]:
            raise ValueError(f"h must have {self.means[0].shape[0]} features like earlier requests, got {h.shape[1]}")
        h = h.detach().double()
        mu = h.mean(0)
        S = torch.cov(h.T, correction=1).reshape(h.shape[1], h.shape[1])
        D = S.shape[0]
        iso = float(S.trace()) / D
        cov = (1 - self.shrinkage) * S + self.shrinkage * max(iso, 1e-8) * torch.eye(D, dtype=S.dtype)
        prec = torch.linalg.inv(cov)
        d2 = self._d2(h, mu, prec)
        self.means.append(mu)
        self.precisions.append(prec)
        self.thresholds.append(float(torch.quantile(d2, self.quantile)))

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """(N, K): d_k²(h) − τ_k (≤ 0: looks like request k's forget set)."""
        if not self.means:
            return torch.empty(len(h), 0, dtype=torch.float64)
        return torch.stack([self._d2(h, m, p) - t for m, p, t in zip(self.means, self.precisions, self.thresholds)], 1)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if not self.means:
            return torch.zeros(len(h))
        return (self.scores(h) <= 0).any(1).float()


class O3Unlearner:
    """O3 on an ``MLP``: ``unlearn(x_forget, y_forget)`` adds one orthogonal LoRA per request and registers its
    forget set with the gate. ``__call__(x, gated=True)``: (N, C) logits, the adapters applied only where the gate
    fires (gated=False: always on, the ablation). Never sees retained data."""

    def __init__(self, base: MLP, rank: int = 4, lam_orth: float = 1.0, shrinkage: float = 0.2,
                 quantile: float = 0.99) -> None:
        self.model = LoRAMLP(base, rank)
        self.lam_orth = _nonneg("lam_orth", lam_orth)
        self.gate = MahalanobisGate(shrinkage, quantile)

    @torch.no_grad()
    def base_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x, gate=0.0)

    @torch.no_grad()
    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.base_features(x))

    def unlearn(self, x_forget: torch.Tensor, y_forget: torch.Tensor, steps: int = 100, lr: float = 3e-3,
                batch_size: int = 64, seed: int = 0) -> np.ndarray:
        """One unlearning request: train a new adapter on (x_forget (N, d), y_forget (N,)) with push_away_loss +
        lam_orth·L_orth (the older adapters frozen *and on*, so the request is learned on top of them). Returns the
        per-step losses."""
        steps, batch_size = _pos_int("steps", steps), _pos_int("batch_size", batch_size)
        if x_forget.ndim != 2 or y_forget.ndim != 1 or len(x_forget) != len(y_forget) or len(y_forget) < 2:
            raise ValueError(f"x_forget must be (N, d) and y_forget (N,) with N >= 2, "
                             f"got {tuple(x_forget.shape)} and {tuple(y_forget.shape)}")
        k = self.model.add_adapter(seed=seed + 7919 * (self.model.n_adapters + 1))
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        g = torch.Generator().manual_seed(int(seed) + k)
        losses = np.empty(steps)
        for step in range(steps):
            idx = torch.randint(0, len(x_forget), (min(batch_size, len(x_forget)),), generator=g)
            loss = push_away_loss(self.model(x_forget[idx]), y_forget[idx])
            loss = loss + self.lam_orth * self.model.orthogonality_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = loss.item()
        self.gate.add_request(self.base_features(x_forget))
        return losses

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, gated: bool = True) -> torch.Tensor:
        return self.model(x, self.gate_values(x) if gated else None)


class _Predict(nn.Module):
    """Wrap a callable x -> logits as a module so that ``labkit.continual.train.accuracy`` can use it."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


# ---------------------------------------------------------------------------------------------------------
# Experiments


_BASES: dict[tuple, MLP] = {}


def pretrain_base(seed: int = 0, hidden: Sequence[int] = (128, 128), epochs: int = 10, lr: float = 1e-3) -> MLP:
    """An ``MLP`` trained (Adam, batch 64) on the plain digits, all 10 classes: the frozen base of every experiment.

    Deterministic, so it is trained once per argument tuple and a fresh copy is returned each call."""
    key = (int(seed), tuple(hidden), int(epochs), float(lr))
    if key not in _BASES:
        torch.manual_seed(int(seed))
        model = MLP(hidden=tuple(hidden))
        train_task(model, digits_split(seed), epochs=epochs, lr=lr, seed=seed + 1000)
        _BASES[key] = model
    return copy.deepcopy(_BASES[key])


def _stats(values: Sequence[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "per_seed": a.tolist()}


def _summaries(mats: dict[str, list[AccuracyMatrix]]) -> dict:
    return {m: {k: _stats([am.summary()[k] for am in ams]) for k in ("ACC", "BWT", "LA", "forgetting")}
            for m, ams in mats.items()}


OLORA_METHODS = ("single_lora", "per_task_lora", "o_lora")


def olora_experiment(seeds: Sequence[int] = (0, 1, 2), n_tasks: int = 4, rank: int = 8, epochs: int = 5,
                     lr: float = 3e-3, lam_orth: float = 10.0, base_epochs: int = 10,
                     methods: Sequence[str] = OLORA_METHODS) -> dict:
    """Orthogonal adapters (one per task, older frozen, L_orth weight ``lam_orth``) vs one LoRA trained through the
    sequence, on permuted-digits tasks 1..n_tasks, from a base trained on the plain digits. Also the ablation
    "per-task LoRA, λ = 0" (same adapters, no orthogonality); ``methods`` picks a subset. Returns a JSON-ready
    dict with the accuracy matrices per method and seed, their ACC / BWT summaries, the plain-digits accuracy
    left at the end, and the largest |cos| between a new adapter's A rows and older ones."""
    n_tasks = _pos_int("n_tasks", n_tasks)
    if n_tasks < 2:
        raise ValueError(f"n_tasks must be >= 2, got {n_tasks}")
    lam_orth = _nonneg("lam_orth", lam_orth)
    t0 = time.perf_counter()
    bad = [m for m in methods if m not in OLORA_METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {OLORA_METHODS}, got {list(methods)}")
    methods = {m: {"single_lora": None, "per_task_lora": 0.0, "o_lora": lam_orth}[m] for m in methods}
    mats: dict[str, list[AccuracyMatrix]] = {m: [] for m in methods}
    plain_after, cosines = {m: [] for m in methods}, []
    for seed in seeds:
        base = pretrain_base(seed, epochs=base_epochs)
        all_tasks = permuted_digits(n_tasks + 1, seed=seed)
        plain, tasks = all_tasks[0], all_tasks[1:]
        for name, lam in methods.items():
            model = LoRAMLP(base, rank)
            am = AccuracyMatrix.empty(n_tasks, [t.name for t in tasks])
            for i, task in enumerate(tasks):
                if lam is not None or i == 0:
                    model.add_adapter(seed=seed * 100 + i)
                penalty = (lambda m, lam=lam: lam * m.orthogonality_loss()) if lam else None
                train_task(model, task, epochs=epochs, lr=lr, seed=seed + i, penalty=penalty)
                am.record(i, evaluate(model, tasks))
                if name == "o_lora" and i > 0:
                    cosines.append(model.max_cross_cosine())
            mats[name].append(am)
            plain_after[name].append(accuracy(model, plain.x_test, plain.y_test))
    return {
        "settings": {"seeds": list(seeds), "n_tasks": n_tasks, "rank": rank, "epochs": epochs, "lr": lr,
                     "lam_orth": lam_orth, "base_epochs": base_epochs, "methods": list(methods)},
        "matrices": {m: [am.to_dict() for am in ams] for m, ams in mats.items()},
        "summary": _summaries(mats),
        "plain_digits_after": {m: _stats(v) for m, v in plain_after.items()},
        "o_lora_max_cross_cosine": float(max(cosines)) if cosines else 0.0,
        "seconds": time.perf_counter() - t0,
    }


def o3_experiment(seeds: Sequence[int] = (0, 1, 2), n_requests: int = 3, rank: int = 4, steps: int = 100,
                  lr: float = 3e-3, lam_orth: float = 1.0, quantile: float = 0.99, shrinkage: float = 0.2,
                  base_epochs: int = 10) -> dict:
    """Continual unlearning of ``n_requests`` digit classes (a seeded random order) from a base MLP trained on all
    ten, by O3 (orthogonal LoRA per request + Mahalanobis gate) vs the same adapters always on (no gate).

    After each request r: test accuracy on the classes forgotten so far ("forget"), on the remaining classes
    ("retain"), the base model's retain accuracy on the same classes, the gate's firing rate on forget test
    images (true positives) and on retained test images (false positives). Forget-set *training* accuracy too.
    Returns a JSON-ready dict: per seed the curves, and the final numbers averaged over seeds."""
    n_requests = _pos_int("n_requests", n_requests)
    if n_requests > 9:
        raise ValueError(f"n_requests must be <= 9 (one class must remain), got {n_requests}")
    t0 = time.perf_counter()
    runs = []
    for seed in seeds:
        base = pretrain_base(seed, epochs=base_epochs)
        data = digits_split(seed)
        order = np.random.default_rng([int(seed), 11]).permutation(10)[:n_requests].tolist()
        o3 = O3Unlearner(base, rank, lam_orth, shrinkage, quantile)
        rows = []
        for r, c in enumerate(order):
            tr = data.y_train == c
            o3.unlearn(data.x_train[tr], data.y_train[tr], steps=steps, lr=lr, seed=seed)
            gone = torch.isin(data.y_test, torch.tensor(order[: r + 1]))
            gone_tr = torch.isin(data.y_train, torch.tensor(order[: r + 1]))
            xf, yf, xr, yr = data.x_test[gone], data.y_test[gone], data.x_test[~gone], data.y_test[~gone]
            row = {"request": r, "class": int(c), "base_retain": accuracy(base, xr, yr),
                   "base_forget": accuracy(base, xf, yf),
                   "gate_tpr": float(o3.gate_values(xf).mean()), "gate_fpr": float(o3.gate_values(xr).mean()),
                   "orth_loss": float(o3.model.orthogonality_loss().detach()),
                   "max_cross_cosine": o3.model.max_cross_cosine()}
            for name, gated in (("o3", True), ("no_gate", False)):
                f = _Predict(lambda x, gated=gated, o3=o3: o3(x, gated))
                row[name] = {"forget": accuracy(f, xf, yf), "retain": accuracy(f, xr, yr),
                             "forget_train": accuracy(f, data.x_train[gone_tr], data.y_train[gone_tr])}
            rows.append(row)
        runs.append({"seed": seed, "order": order, "rows": rows})
    final = {}
    for name in ("o3", "no_gate"):
        for key in ("forget", "retain", "forget_train"):
            final[f"{name}_{key}"] = _stats([run["rows"][-1][name][key] for run in runs])
    for key in ("base_retain", "base_forget", "gate_tpr", "gate_fpr"):
        final[key] = _stats([run["rows"][-1][key] for run in runs])
    return {"settings": {"seeds": list(seeds), "n_requests": n_requests, "rank": rank, "steps": steps, "lr": lr,
                         "lam_orth": lam_orth, "quantile": quantile, "shrinkage": shrinkage,
                         "base_epochs": base_epochs},
            "runs": runs, "final": final, "chance": 0.1, "seconds": time.perf_counter() - t0}


def _train_ilora(fast: LoRAMLP, slow: LoRAMLP | None, task: Task, buffer: ReplayBuffer, epochs: int, lr: float,
                 batch_size: int, decay: float, gamma: float, seed: int) -> None:
    """One task of ER (slow None) or I-LoRA: CE on current + replayed batch, + γ‖f_w(x_buf) − f_s(x_buf)‖², EMA."""
    n = len(task.y_train)
    per_epoch = -(-n // batch_size)
    g = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng([int(seed), 5])
    opt = torch.optim.Adam([p for p in fast.parameters() if p.requires_grad], lr=lr)
    fast.train()
    for step in range(per_epoch * epochs):
        k = step % per_epoch
        if k == 0:
            order = torch.randperm(n, generator=g)
        idx = order[k * batch_size: (k + 1) * batch_size]
        x, y = task.x_train[idx], task.y_train[idx]
        xb = None
        if len(buffer):
            xb, yb = buffer.sample(batch_size, rng)
            x, y = torch.cat([x, xb]), torch.cat([y, yb])
        logits = fast(x)
        loss = F.cross_entropy(logits, y)
        if slow is not None and xb is not None and gamma > 0:
            with torch.no_grad():
                target = slow(xb)
            loss = loss + gamma * (logits[-len(xb):] - target).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if slow is not None:
            ema_update(slow, fast, decay)


def ilora_experiment(seeds: Sequence[int] = (0, 1, 2), n_tasks: int = 4, rank: int = 8, epochs: int = 5,
                     lr: float = 3e-3, memory: int = 100, decay: float = 0.9, gamma: float = 0.1,
                     base_epochs: int = 10) -> dict:
    """I-LoRA (fast LoRA + EMA slow LoRA with decay λ, consistency weight γ on replayed examples, slow learner
    tested) vs ER with one LoRA, on permuted-digits tasks 1..n_tasks, replay memory ``memory`` examples (reservoir).
    Also the fast learner of I-LoRA (to separate the EMA's effect from the consistency loss's). JSON-ready dict."""
    n_tasks, memory = _pos_int("n_tasks", n_tasks), _pos_int("memory", memory)
    decay, gamma = _check_decay(decay), _nonneg("gamma", gamma)
    t0 = time.perf_counter()
    mats: dict[str, list[AccuracyMatrix]] = {"er_lora": [], "ilora_slow": [], "ilora_fast": []}
    for seed in seeds:
        base = pretrain_base(seed, epochs=base_epochs)
        tasks = permuted_digits(n_tasks + 1, seed=seed)[1:]
        names = [t.name for t in tasks]
        for method in ("er_lora", "ilora"):
            fast = LoRAMLP(base, rank)
            fast.add_adapter(seed=seed * 100)
            slow = copy.deepcopy(fast) if method == "ilora" else None
            buffer = ReplayBuffer(memory, seed)
            ams = {k: AccuracyMatrix.empty(n_tasks, names) for k in (["er_lora"] if slow is None
                                                                     else ["ilora_slow", "ilora_fast"])}
            for i, task in enumerate(tasks):
                _train_ilora(fast, slow, task, buffer, epochs, lr, 64, decay, gamma, seed + i)
                if slow is None:
                    ams["er_lora"].record(i, evaluate(fast, tasks))
                else:
                    ams["ilora_slow"].record(i, evaluate(slow, tasks))
                    ams["ilora_fast"].record(i, evaluate(fast, tasks))
                order = torch.randperm(len(task.y_train), generator=torch.Generator().manual_seed(seed + i))
                buffer.add(task.x_train[order], task.y_train[order], i)
            for k, am in ams.items():
                mats[k].append(am)
    return {"settings": {"seeds": list(seeds), "n_tasks": n_tasks, "rank": rank, "epochs": epochs, "lr": lr,
                         "memory": memory, "decay": decay, "gamma": gamma, "base_epochs": base_epochs},
            "matrices": {m: [am.to_dict() for am in ams] for m, ams in mats.items()},
            "summary": _summaries(mats), "seconds": time.perf_counter() - t0}


FAST = {"olora": {"seeds": (0, 1, 2), "n_tasks": 3, "epochs": 3, "base_epochs": 6,
                  "methods": ("single_lora", "o_lora")},
        "o3": {"seeds": (0, 1, 2), "n_requests": 3, "steps": 60, "base_epochs": 6},
        "ilora": {"seeds": (0, 1, 2), "n_tasks": 3, "epochs": 3, "base_epochs": 6}}
FULL = {"olora": {"seeds": (0, 1, 2, 3, 4), "n_tasks": 5, "epochs": 5},
        "o3": {"seeds": (0, 1, 2, 3, 4), "n_requests": 5, "steps": 150},
        "ilora": {"seeds": (0, 1, 2, 3, 4), "n_tasks": 5, "epochs": 5}}


LAM_SWEEP = (1.0, 100.0)  # the full run also tries these λ for O-LoRA (λ = 0 is "per_task_lora", 10 the default)


def lora_experiments(sizes: Mapping[str, Mapping] | None = None) -> dict:
    """All three experiments at ``sizes`` (``FAST`` or ``FULL``; default FAST), one thread."""
    torch.set_num_threads(1)
    sizes = FAST if sizes is None else sizes
    return {"olora": olora_experiment(**sizes["olora"]), "o3": o3_experiment(**sizes["o3"]),
            "ilora": ilora_experiment(**sizes["ilora"])}


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/lora.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.continual.lora", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - writes the full run
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4 LoRA: O-LoRA, O3 unlearning, I-LoRA (full sizes).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--fast", action="store_true", help="FAST sizes instead of FULL")
    args = parser.parse_args(argv)
    res = lora_experiments(FAST if args.fast else FULL)
    res["sizes"] = FAST if args.fast else FULL
    if not args.fast:  # how I-LoRA depends on the EMA decay λ (a slower slow learner)
        res["ilora_decay_0.99"] = ilora_experiment(**{**FULL["ilora"], "decay": 0.99})
        res["olora_lam_sweep"] = {
            str(lam): olora_experiment(**{**FULL["olora"], "lam_orth": lam, "methods": ("o_lora",)})
            for lam in LAM_SWEEP}
    args.out.write_text(json.dumps(res))
    for key in ("olora", "ilora"):
        for m, s in res[key]["summary"].items():
            print(key, m, f"ACC {100 * s['ACC']['mean']:.1f}±{100 * s['ACC']['std']:.1f}",
                  f"BWT {100 * s['BWT']['mean']:.1f}±{100 * s['BWT']['std']:.1f}", f"{res[key]['seconds']:.1f}s")
    print("o3", {k: f"{100 * v['mean']:.1f}±{100 * v['std']:.1f}" for k, v in res["o3"]["final"].items()},
          f"{res['o3']['seconds']:.1f}s")


if __name__ == "__main__":  # pragma: no cover
    main()
