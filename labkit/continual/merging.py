r"""Model merging: combine models fine-tuned from one base into one model, in batch or one model at a time.

Every model here is a parameter dict ``name -> tensor`` fine-tuned from a shared base θ_0; its *task vector* is
τ_i = θ_i − θ_0. The batch methods see all T task vectors at once:

- ``average``: θ = (1/T) Σ_i θ_i (= θ_0 + mean τ_i);
- ``task_arithmetic``: θ = θ_0 + c Σ_i τ_i (Ilharco et al., 2023; c = 0.3 is the usual default);
- ``ties``: trim each τ_i to its top-``density`` entries by magnitude (over the whole vector), elect a sign per
  entry by the summed trimmed mass s = sign(Σ_i τ̂_i), and take the *disjoint mean* of the trimmed entries that
  agree with it; θ = θ_0 + c · merged (Yadav et al., 2023).

The continual mergers (``ContinualAverage``, ``ContinualTaskArithmetic``, ``OPCM``) see the models one at a
time and keep only the base and a running state (constant memory in T): ``update(model)``, then ``merged()``.

**OPCM** (Tang et al., 2025, "Merging Models on the Fly Without Retraining"). For every 2-D weight keep the
accumulated merged update D_t. A new τ_t is written in D_{t−1}'s singular bases, D = U S Vᵀ, as P = Uᵀ τ V; with
r the smallest rank whose singular mass Σ_{i<r} s_i / Σ_i s_i reaches α, OPCM zeroes P's diagonal and its
top-left r × r block (the masked projection, as the authors implement it):

    τ̃ = U P̃ Vᵀ,   P̃_ii = 0 ∀i,  P̃[:r, :r] = 0,      D_t = D_{t−1} + τ̃,

so ⟨τ̃, D_{t−1}⟩_F = Σ_i s_i P̃_ii = 0 and U_rᵀ τ̃ V_r = 0 (``opcm_project``; its ``projection="two_sided"`` is the
stricter (I − U_r U_rᵀ) τ (I − V_r V_rᵀ), an ablation). The merged task vector is
D_t / λ_t with λ_t chosen so that its norm is the running mean of the task vectors' norms,
‖D_t / λ_t‖ = (1/t) Σ_{i≤t} ‖τ_i‖ (norms over all 2-D weights together; λ_1 = 1, D_1 = τ_1). Parameters that
are not 2-D (biases) get the plain running average of their task vectors, as in the paper.

``merging_experiment`` reproduces the paper's regime on permuted digits (a strong base pretrained on a broad
mixture, one model fine-tuned per task, merged in several random orders) and the weak-base regime where every
merge fails; ``python -m labkit.continual.merging`` writes the full run to ``labkit/assets/merging.json``
(``load``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from labkit.continual.data import Task, permuted_digits
from labkit.continual.models import MLP, Params, ParamSource, _as_params, check_compatible, get_params, set_params
from labkit.continual.train import evaluate, train_task
from labkit.runtime import load_results

__all__ = [
    "OPCM",
    "REGIMES",
    "ContinualAverage",
    "ContinualMerger",
    "ContinualTaskArithmetic",
    "average",
    "load",
    "merge_stream",
    "merging_experiment",
    "opcm_project",
    "split_rank",
    "task_arithmetic",
    "ties",
]

REGIMES = ("strong", "weak")
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "merging.json"


# ---------------------------------------------------------------------------------------------------------
# Validation


def _params_list(models: Iterable[ParamSource], what: str) -> list[Params]:
    items = list(models)
    if not items:
        raise ValueError(f"{what} must hold at least one model (the stream is empty)")
    out = [get_params(_as_params(m, f"{what}[{i}]")) for i, m in enumerate(items)]
    for i, p in enumerate(out[1:], start=1):
        check_compatible(p, out[0], (f"{what}[{i}]", f"{what}[0]"))
    return out


def _check_finite(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or \
            not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_alpha(alpha: float) -> float:
    a = _check_finite(alpha, "alpha")
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return a


# ---------------------------------------------------------------------------------------------------------
# Batch merging


def average(models: Sequence[ParamSource]) -> Params:
    """θ = (1/T) Σ_i θ_i, parameter by parameter; every model must have the same names and shapes."""
    ps = _params_list(models, "models")
    return {n: torch.stack([p[n] for p in ps]).mean(0) for n in ps[0]}


def task_arithmetic(
    base: ParamSource, task_vectors: Sequence[Mapping[str, torch.Tensor]], scale: float = 0.3,
) -> Params:
    """θ = θ_0 + scale · Σ_i τ_i. base: params or model; task_vectors: T dicts name -> tensor like base."""
    scale = _check_finite(scale, "scale")
    b = get_params(base)
    tvs = _params_list(task_vectors, "task_vectors")
    check_compatible(tvs[0], b, ("task_vectors[0]", "base"))
    return {n: b[n] + scale * torch.stack([t[n] for t in tvs]).sum(0) for n in b}


def _ties_vector(tvs: list[Params], density: float) -> Params:
    """The TIES-merged task vector: trim (top-density of each τ_i by magnitude), elect sign, disjoint mean."""
    names = list(tvs[0])
    flat = torch.stack([torch.cat([t[n].reshape(-1) for n in names]) for t in tvs])  # (T, P)
    k = max(1, int(round(density * flat.shape[1])))
    trimmed = torch.zeros_like(flat)
    idx = flat.abs().topk(k, dim=1).indices  # exactly k entries kept per task vector
    trimmed.scatter_(1, idx, flat.gather(1, idx))
    sign = torch.sign(trimmed.sum(0))  # (P,) elected sign (0 where the mass cancels exactly)
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    merged = torch.where(count > 0, (trimmed * agree).sum(0) / count.clamp(min=1), torch.zeros(()))
    out, start = {}, 0
    for n in names:
        size = tvs[0][n].numel()
        out[n] = merged[start:start + size].reshape(tvs[0][n].shape).to(tvs[0][n].dtype)
        start += size
    return out


def ties(
    base: ParamSource, task_vectors: Sequence[Mapping[str, torch.Tensor]], density: float = 0.2, scale: float = 1.0,
) -> Params:
    """TIES merging: θ = θ_0 + scale · disjoint_mean(elect(trim(τ_1..τ_T, density))).

    Trim keeps the ``round(density · P)`` largest-magnitude entries of each task vector (P = all its entries,
    every parameter together) and zeroes the rest; the elected sign of an entry is the sign of the summed trimmed
    entries; the merged entry is the mean of the trimmed entries that are non-zero and carry the elected sign
    (0 when none does).
    """
    density = _check_finite(density, "density")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    scale = _check_finite(scale, "scale")
    b = get_params(base)
    tvs = _params_list(task_vectors, "task_vectors")
    check_compatible(tvs[0], b, ("task_vectors[0]", "base"))
    tv = _ties_vector(tvs, density)
    return {n: b[n] + scale * tv[n] for n in b}


# ---------------------------------------------------------------------------------------------------------
# OPCM's projection


def split_rank(s: torch.Tensor, alpha: float) -> int:
    """The smallest r ≥ 1 with Σ_{i<r} s_i ≥ α Σ_i s_i, for singular values s: (k,) sorted descending.

    r = 0 when s is all zero (an empty merged update has no principal subspace to protect).
    """
    alpha = _check_alpha(alpha)
    if s.ndim != 1 or len(s) == 0:
        raise ValueError(f"s must be a non-empty 1-D tensor, got shape {tuple(s.shape)}")
    total = float(s.sum())
    if total <= 0:
        return 0
    mass = torch.cumsum(s.double(), 0) / total
    return int(min(int((mass < alpha).sum()) + 1, len(s)))


PROJECTIONS = ("masked", "two_sided")


def opcm_project(delta: torch.Tensor, tau: torch.Tensor, alpha: float = 0.5, projection: str = "masked"
                 ) -> tuple[torch.Tensor, int]:
    """Project the new task vector tau (m, n) against the merged update delta (m, n) = U S Vᵀ; r = split_rank.

    In delta's singular bases tau is P = Uᵀ τ V. ``projection``:

    - "masked" (the paper's, as its authors implement it): zero P's diagonal P_ii for every i and its top-left
      r × r block, τ̃ = U P Vᵀ. ⟨τ̃, delta⟩_F = Σ_i σ_i P_ii = 0 (τ̃ is Frobenius-orthogonal to the merged update) and
      U_rᵀ τ̃ V_r = 0 (nothing lands in the dominant row × column block); the cross blocks, a new direction in
      the rows of the dominant subspace paired with columns outside it (or the reverse), are kept.
    - "two_sided": τ̃ = (I − U_r U_rᵀ) τ (I − V_r V_rᵀ): U_rᵀ τ̃ = 0 and τ̃ V_r = 0, so the cross blocks go too.
      Stricter; it removes much more of each task vector (the ablation in the chapter).

    Returns (τ̃ (m, n) in tau's dtype, r).
    """
    alpha = _check_alpha(alpha)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if delta.ndim != 2 or delta.shape != tau.shape:
        raise ValueError(f"delta and tau must be 2-D of one shape, got {tuple(delta.shape)} and {tuple(tau.shape)}")
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = split_rank(S, alpha)
    if r == 0:  # an all-zero merged update has no directions to protect
        return tau.clone(), 0
    t = tau.double()
    Ur, Vr = U[:, :r], Vh[:r].T
    if projection == "two_sided":
        t = t - Ur @ (Ur.T @ t)
        t = t - (t @ Vr) @ Vr.T
        return t.to(tau.dtype), r
    # masked, with the thin SVD: τ̃ = τ − U_r (U_rᵀ τ V_r) V_rᵀ − Σ_{i ≥ r} P_ii u_i v_iᵀ (the diagonal below the block)
    UtT = U.T @ t                                   # (k, n)
    diag = (UtT * Vh).sum(1)                        # P_ii = u_iᵀ τ v_i, (k,)
    block = UtT[:r] @ Vr                            # (r, r)
    t = t - Ur @ block @ Vr.T - (U[:, r:] * diag[r:]) @ Vh[r:]
    return t.to(tau.dtype), r


# ---------------------------------------------------------------------------------------------------------
# Continual mergers


class ContinualMerger:
    """Merge fine-tuned models one at a time with constant memory: ``update(model)`` each, ``merged()`` any time.

    base: the shared pretrained model (model or params). Every update is checked against base (names, shapes,
    finite values) and the new state is computed in full before any of it is stored, so a bad model leaves the
    merger exactly as it was.
    """

    def __init__(self, base: ParamSource) -> None:
        self.base = get_params(base)
        if not self.base:
            raise ValueError("base must have at least one parameter")
        self.n_models = 0

    def update(self, finetuned: ParamSource) -> None:
        """Fold one fine-tuned model (same names and shapes as base) into the merge."""
        check_compatible(finetuned, self.base, ("finetuned", "base"))
        p = _as_params(finetuned, "finetuned")
        tau = {n: p[n].detach().to(self.base[n].dtype) - self.base[n] for n in self.base}
        for n, t in tau.items():
            if not torch.isfinite(t).all():
                raise ValueError(f"finetuned[{n!r}] must be finite")
        new_state = self._step(tau)  # computes everything; may raise, then nothing has changed
        self._commit(new_state)
        self.n_models += 1

    def merged(self) -> Params:
        """θ_0 + the merged task vector (a new dict). ValueError before the first update (empty stream)."""
        if self.n_models == 0:
            raise ValueError("no model merged yet: call update() at least once (the stream is empty)")
        mv = self.merged_task_vector()
        return {n: self.base[n] + mv[n] for n in self.base}

    # subclasses
    def _step(self, tau: Params) -> dict:
        raise NotImplementedError

    def _commit(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def merged_task_vector(self) -> Params:
        raise NotImplementedError


class ContinualAverage(ContinualMerger):
    """Running mean of the models: after t updates, θ = θ_0 + (1/t) Σ_{i≤t} τ_i (the batch ``average``)."""

    def __init__(self, base: ParamSource) -> None:
        super().__init__(base)
        self.mean_tau: Params = {n: torch.zeros_like(v) for n, v in self.base.items()}

    def _step(self, tau: Params) -> dict:
        t = self.n_models + 1
        return {"mean_tau": {n: self.mean_tau[n] + (tau[n] - self.mean_tau[n]) / t for n in tau}}

    def merged_task_vector(self) -> Params:
        return {n: v.clone() for n, v in self.mean_tau.items()}


class ContinualTaskArithmetic(ContinualMerger):
    """Running sum of task vectors: after t updates, θ = θ_0 + scale Σ_{i≤t} τ_i (the batch ``task_arithmetic``)."""

    def __init__(self, base: ParamSource, scale: float = 0.3) -> None:
        super().__init__(base)
        self.scale = _check_finite(scale, "scale")
        self.sum_tau: Params = {n: torch.zeros_like(v) for n, v in self.base.items()}

    def _step(self, tau: Params) -> dict:
        return {"sum_tau": {n: self.sum_tau[n] + tau[n] for n in tau}}

    def merged_task_vector(self) -> Params:
        return {n: self.scale * v for n, v in self.sum_tau.items()}


class OPCM(ContinualMerger):
    """Orthogonal projection-based continual merging (Tang et al., 2025).

    State: D (name -> (m, n)) the accumulated projected task vectors of every 2-D weight, λ_t, the running mean
    norm m_t = (1/t) Σ‖τ_i‖ (‖·‖ over all 2-D weights together) and the running mean of the other parameters'
    task vectors. merged task vector: D / λ_t on 2-D weights (norm m_t), the running mean elsewhere.
    ``last_ranks`` / ``last_removed`` record, per 2-D weight, the split rank r and the fraction of ‖τ‖² the last
    projection removed. ``projection``: "masked" (the paper's, default) or "two_sided" (see ``opcm_project``).
    """

    def __init__(self, base: ParamSource, alpha: float = 0.5, projection: str = "masked") -> None:
        super().__init__(base)
        self.alpha = _check_alpha(alpha)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.projection = projection
        self.matrices = [n for n, v in self.base.items() if v.ndim == 2]
        self.D: Params = {n: torch.zeros_like(self.base[n]) for n in self.matrices}
        self.other_mean: Params = {n: torch.zeros_like(v) for n, v in self.base.items() if v.ndim != 2}
        self.lam = 1.0
        self.mean_norm = 0.0
        self.last_ranks: dict[str, int] = {}
        self.last_removed: dict[str, float] = {}

    def _step(self, tau: Params) -> dict:
        t = self.n_models + 1
        ranks, removed = {}, {}
        if t == 1:
            D = {n: tau[n].clone() for n in self.matrices}
        else:
            D = {}
            for n in self.matrices:
                proj, r = opcm_project(self.D[n], tau[n], self.alpha, self.projection)
                D[n] = self.D[n] + proj
                e = float(tau[n].double().pow(2).sum())
                ranks[n] = r
                removed[n] = 1.0 - float(proj.double().pow(2).sum()) / e if e > 0 else 0.0
        tau_norm = math.sqrt(sum(float(tau[n].double().pow(2).sum()) for n in self.matrices))
        mean_norm = self.mean_norm + (tau_norm - self.mean_norm) / t
        d_norm = math.sqrt(sum(float(D[n].double().pow(2).sum()) for n in self.matrices))
        lam = d_norm / mean_norm if mean_norm > 0 and d_norm > 0 else 1.0
        other = {n: self.other_mean[n] + (tau[n] - self.other_mean[n]) / t for n in self.other_mean}
        return {"D": D, "lam": lam, "mean_norm": mean_norm, "other_mean": other,
                "last_ranks": ranks, "last_removed": removed}

    def merged_task_vector(self) -> Params:
        out = {n: v.clone() for n, v in self.other_mean.items()}
        out.update({n: self.D[n] / self.lam for n in self.matrices})
        return {n: out[n] for n in self.base}


def merge_stream(merger: ContinualMerger, models: Iterable[ParamSource]) -> Params:
    """Feed ``models`` to ``merger`` one at a time and return the merged params; ValueError on an empty stream."""
    n = 0
    for m in models:
        merger.update(m)
        n += 1
    if n == 0:
        raise ValueError("models must hold at least one model (the stream is empty)")
    return merger.merged()


# ---------------------------------------------------------------------------------------------------------
# The regime experiment


def _cosines(tvs: list[Params]) -> np.ndarray:
    flat = torch.stack([torch.cat([t[n].reshape(-1) for n in t]) for t in tvs]).double()
    flat = flat / flat.norm(dim=1, keepdim=True)
    return (flat @ flat.T).numpy()


def _acc(model: MLP, params: Params, tasks: Sequence[Task]) -> np.ndarray:
    return evaluate(set_params(model, params), tasks)


def merging_experiment(
    regime: str = "strong",
    n_orders: int = 5,
    seed: int = 0,
    n_tasks: int = 8,
    hidden: Sequence[int] = (128, 128),
    pretrain_steps: int = 40,
    finetune_epochs: int = 5,
    lr: float = 1e-3,
    finetune_lr: float | None = 3e-4,
    ta_scale: float = 0.3,
    alpha: float = 0.5,
    ties_density: float = 0.2,
    oracle_grid: Sequence[float] = tuple(np.round(np.arange(0.05, 1.01, 0.05), 2)),
    progress: bool = False,
) -> dict:
    """The merging comparison of chapter 4 on ``n_tasks`` permuted-digits tasks, in one regime.

    regime "strong": the base MLP is pretrained for ``pretrain_steps`` Adam steps (batch 64, ``lr``) on the union of
    all tasks' training sets, a broad mixture it only half learns (≈ 45 % on every task with the defaults, as CLIP's
    zero-shot accuracy is ≈ 48 % on the paper's tasks). "weak": the base is pretrained on task 0 only (the same
    number of steps). Then one model per task is fully fine-tuned from the base (``finetune_epochs``, Adam at
    ``finetune_lr``, default 3e-4: gentle fine-tuning, None = ``lr``) and the task models are merged in ``n_orders``
    seeded random orders by continual averaging, continual task arithmetic at ``ta_scale``, OPCM(``alpha``; masked
    and two-sided projections), batch TIES (``ties_density``, scale 1) and task arithmetic with the scale of
    ``oracle_grid`` that is best *on the test sets* (the oracle). acc[method][o, t]: mean test accuracy over the t+1
    tasks merged so far in order o; the final ACC is acc[method][:, -1] (all tasks). Diagnostics: pairwise cosine
    similarity of the task vectors and the fraction of each new task vector's energy (over the 2-D weights) that
    OPCM's projection removed.
    Returns a JSON-ready dict.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    for name, v in (("n_orders", n_orders), ("n_tasks", n_tasks), ("pretrain_steps", pretrain_steps),
                    ("finetune_epochs", finetune_epochs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if n_tasks < 2:
        raise ValueError(f"n_tasks must be >= 2 to merge anything, got {n_tasks}")
    _check_alpha(alpha)
    grid = [float(c) for c in oracle_grid]
    if not grid:
        raise ValueError("oracle_grid must hold at least one scale")
    t0 = time.perf_counter()
    tasks = permuted_digits(n_tasks, seed=seed)
    torch.manual_seed(seed)
    model = MLP(hidden=tuple(hidden))
    if regime == "strong":
        mix = Task("mixture", torch.cat([t.x_train for t in tasks]), torch.cat([t.y_train for t in tasks]),
                   tasks[0].x_test, tasks[0].y_test, tasks[0].classes)
        train_task(model, mix, lr=lr, seed=seed + 1000, steps=pretrain_steps)
    else:
        train_task(model, tasks[0], lr=lr, seed=seed + 1000, steps=pretrain_steps)
    base = get_params(model)
    base_acc = evaluate(model, tasks)
    tvs, ft_acc = [], []
    it = range(n_tasks)
    if progress:
        from labkit.runtime import progress as bar

        it = bar(it, desc=f"fine-tune ({regime})", total=n_tasks)
    for k in it:
        set_params(model, base)
        train_task(model, tasks[k], epochs=finetune_epochs, lr=lr if finetune_lr is None else finetune_lr,
                   seed=seed + k)
        ft_acc.append(evaluate(model, tasks[k: k + 1])[0])
        tvs.append({n: (p.detach() - base[n]) for n, p in model.named_parameters()})
    cos = _cosines(tvs)
    rng = np.random.default_rng([seed, 7])
    orders = [rng.permutation(n_tasks) for _ in range(n_orders)]
    methods = ("average", "task_arithmetic", "opcm", "opcm_two_sided", "ties", "oracle_ta")
    acc = {m: np.zeros((n_orders, n_tasks)) for m in methods}
    oracle_scale = np.zeros((n_orders, n_tasks))
    removed = {m: np.zeros((n_orders, n_tasks - 1)) for m in ("opcm", "opcm_two_sided")}
    ranks = np.zeros((n_orders, n_tasks - 1))
    for o, order in enumerate(orders):
        mergers = {"average": ContinualAverage(base), "task_arithmetic": ContinualTaskArithmetic(base, ta_scale),
                   "opcm": OPCM(base, alpha), "opcm_two_sided": OPCM(base, alpha, "two_sided")}
        for t, k in enumerate(order):
            seen = [tasks[j] for j in order[: t + 1]]
            theta_k = {n: base[n] + tvs[k][n] for n in base}
            for name, mg in mergers.items():
                mg.update(theta_k)
                acc[name][o, t] = _acc(model, mg.merged(), seen).mean()
            if t > 0:
                w = {n: float(tvs[k][n].pow(2).sum()) for n in mergers["opcm"].last_removed}
                for m in removed:
                    removed[m][o, t - 1] = sum(w[n] * mergers[m].last_removed[n] for n in w) / sum(w.values())
                ranks[o, t - 1] = np.mean(list(mergers["opcm"].last_ranks.values()))
            sub = [tvs[j] for j in order[: t + 1]]
            acc["ties"][o, t] = _acc(model, ties(base, sub, ties_density, 1.0), seen).mean()
            summed = {n: torch.stack([s[n] for s in sub]).sum(0) for n in base}
            scores = [_acc(model, {n: base[n] + c * summed[n] for n in base}, seen).mean() for c in grid]
            best = int(np.argmax(scores))
            acc["oracle_ta"][o, t], oracle_scale[o, t] = scores[best], grid[best]
    final = {m: {"mean": float(a[:, -1].mean()), "std": float(a[:, -1].std()), "per_order": a[:, -1].tolist()}
             for m, a in acc.items()}
    # (the final ACC of average / task arithmetic / TIES / oracle is the same in every order: they are sums)
    off = cos[~np.eye(n_tasks, dtype=bool)]
    return {
        "regime": regime, "seed": seed,
        "settings": {"n_orders": n_orders, "n_tasks": n_tasks, "hidden": list(hidden),
                     "pretrain_steps": pretrain_steps, "finetune_epochs": finetune_epochs, "lr": lr,
                     "finetune_lr": lr if finetune_lr is None else finetune_lr,
                     "ta_scale": ta_scale, "alpha": alpha, "ties_density": ties_density, "oracle_grid": grid},
        "base_acc": base_acc.tolist(), "base_mean": float(base_acc.mean()),
        "finetuned_acc": [float(a) for a in ft_acc], "finetuned_mean": float(np.mean(ft_acc)),
        "orders": [o.tolist() for o in orders],
        "acc": {m: a.tolist() for m, a in acc.items()}, "final": final,
        "oracle_scale": oracle_scale.tolist(),
        "cosine": cos.tolist(), "mean_abs_cosine": float(np.abs(off).mean()),
        "opcm_removed": removed["opcm"].tolist(), "opcm_mean_removed": float(removed["opcm"].mean()),
        "opcm_two_sided_mean_removed": float(removed["opcm_two_sided"].mean()),
        "opcm_mean_rank": float(ranks.mean()),
        "seconds": time.perf_counter() - t0,
    }


FAST = {"n_orders": 2, "n_tasks": 4, "pretrain_steps": 30, "finetune_epochs": 2,
        "oracle_grid": (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)}
FULL = {"n_orders": 10, "n_tasks": 8}
SEEDS = (0, 1, 2, 3, 4)
# how the strong-base result depends on how hard the task models are fine-tuned (seed 0 only)
SENSITIVITY = ({"finetune_lr": 1e-3, "finetune_epochs": 3}, {"finetune_lr": 1e-4, "finetune_epochs": 10})


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/merging.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.continual.merging", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4 merging: strong vs weak base, ≥ 5 task orders.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = [merging_experiment(regime, seed=s, **FULL) for regime in REGIMES for s in args.seeds]
    sensitivity = [merging_experiment("strong", seed=args.seeds[0], **FULL, **extra) for extra in SENSITIVITY]
    args.out.write_text(json.dumps({"settings": FULL, "runs": runs, "sensitivity": sensitivity}))
    for r in runs + sensitivity:
        f, st = r["final"], r["settings"]
        print(r["regime"], r["seed"], f"ft lr {st['finetune_lr']:g} x{st['finetune_epochs']}",
              f"base {100 * r['base_mean']:.1f} ft {100 * r['finetuned_mean']:.1f}",
              {m: f"{100 * v['mean']:.1f}±{100 * v['std']:.1f}" for m, v in f.items()},
              f"cos {r['mean_abs_cosine']:.3f} removed {r['opcm_mean_removed']:.3f} {r['seconds']:.1f}s")


if __name__ == "__main__":
    main()
