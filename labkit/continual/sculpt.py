r"""Constrained full fine-tuning: keep every weight matrix's important singular directions, learn in the rest.

"Sculpting Subspaces" (Nayak et al., 2025) fine-tunes *all* weights of a model on each new task, but only in
the part of each weight matrix that earlier tasks did not claim. After task k every 2-D weight W: (m, n) is
decomposed, W = U S Vᵀ; its top singular directions (the *high-rank* part, the subspace that carries most of
W) are declared important to the tasks learned so far, and from then on every update ΔW is projected out of
them:

    ΔW ← P(ΔW) = (I − U_r U_rᵀ) ΔW (I − V_r V_rᵀ)            (side="both"; "left" / "right": one factor only)

so U_rᵀ ΔW = 0 and ΔW V_r = 0: the protected block U_rᵀ W V_r, and for inputs in span(V_r) the whole output,
stay exactly as they were. The rank is chosen *per layer* and adapts: the protected basis only grows, and
after each task it is extended by the top singular directions of the part of W it does not yet explain,
R = (I − U Uᵀ) W (left; W (I − V Vᵀ) for the right side), until the captured energy reaches a threshold τ:

    r_new = min { r : ‖Uᵀ W‖_F² + Σ_{i<r} s_i(R)² ≥ τ ‖W‖_F² }        (energy = squared singular values)

A layer whose protected subspace still explains τ of its weight energy gains no new directions; the plot of
r per layer against the number of tasks is the "how much room is left" curve.

Here the method runs on the chapter's ``MLP`` over permuted digits. The projection is applied twice each step:
to the gradient after ``backward`` (so Adam's moments only see allowed directions) and to the step itself,
W ← W_before + P(W − W_before), because Adam's per-coordinate scaling would otherwise leak a (small) component
back into the protected subspace. Biases are not constrained (they are not matrices); the paper constrains
the weight matrices of an LLM, its rank rule (from layer importance scores) and models differ from ours.
``sculpt_experiment`` compares it with fine-tuning, EWC and replay (``run_sequence``) over seeds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.continual.data import Task, permuted_digits
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import MLP
from labkit.continual.train import evaluate, run_sequence
from labkit.runtime import load_results

__all__ = [
    "SIDES",
    "SubspaceConstraint",
    "energy_rank",
    "plot_ranks",
    "extend_basis",
    "load",
    "project_update",
    "run_sculpt",
    "sculpt_experiment",
    "summary_rows",
    "train_task_constrained",
]

SIDES = ("left", "right", "both")
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "sculpt.json"


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) \
            or not math.isfinite(threshold) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    return float(threshold)


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return side


def energy_rank(s: torch.Tensor, threshold: float, captured: float = 0.0, total: float | None = None) -> int:
    """The smallest r ≥ 0 with captured + Σ_{i<r} s_i² ≥ threshold · total (s: (k,) singular values, descending).

    total defaults to Σ_i s_i² + captured (the whole energy when ``s`` are the singular values of the residual and
    ``captured`` the energy already explained). r = 0 when the target is already met; r ≤ k always.
    """
    threshold = _check_threshold(threshold)
    if s.ndim != 1:
        raise ValueError(f"s must be a 1-D tensor of singular values, got shape {tuple(s.shape)}")
    if len(s) and (s[:-1] < s[1:]).any():
        raise ValueError("s must be sorted in descending order")
    if captured < 0:
        raise ValueError(f"captured must be >= 0, got {captured}")
    e = s.double().pow(2)
    total = float(e.sum()) + captured if total is None else float(total)
    target = threshold * total
    if captured >= target or total <= 0:
        return 0
    cum = captured + torch.cumsum(e, 0)
    return int(min(int((cum < target - 1e-12 * total).sum()) + 1, len(s)))


def extend_basis(basis: torch.Tensor, directions: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
    """Orthonormal basis (d, r + r') of span(basis ∪ directions); basis: (d, r) orthonormal, directions: (d, r').

    New directions are Gram–Schmidt-ed (twice) against the old basis; ones that vanish (norm < tol) are dropped.
    """
    if basis.ndim != 2 or directions.ndim != 2 or basis.shape[0] != directions.shape[0]:
        raise ValueError(f"basis and directions must be (d, r) and (d, r'), got {tuple(basis.shape)} and "
                         f"{tuple(directions.shape)}")
    out = basis
    for j in range(directions.shape[1]):
        v = directions[:, j]
        for _ in range(2):
            v = v - out @ (out.T @ v)
        n = float(v.norm())
        if n > tol and out.shape[1] < out.shape[0]:
            out = torch.cat([out, (v / n)[:, None]], 1)
    return out


def project_update(delta: torch.Tensor, U: torch.Tensor | None, V: torch.Tensor | None) -> torch.Tensor:
    """P(Δ) = (I − U Uᵀ) Δ (I − V Vᵀ); delta: (m, n), U: (m, r_u) and V: (n, r_v) orthonormal (None: no factor)."""
    if delta.ndim != 2:
        raise ValueError(f"delta must be 2-D, got shape {tuple(delta.shape)}")
    out = delta
    if U is not None and U.shape[1]:
        if U.shape[0] != delta.shape[0]:
            raise ValueError(f"U must have {delta.shape[0]} rows like delta, got {tuple(U.shape)}")
        Ud = U.to(delta.dtype)
        out = out - Ud @ (Ud.T @ out)
    if V is not None and V.shape[1]:
        if V.shape[0] != delta.shape[1]:
            raise ValueError(f"V must have {delta.shape[1]} rows (delta's columns), got {tuple(V.shape)}")
        Vd = V.to(delta.dtype)
        out = out - (out @ Vd) @ Vd.T
    return out


class SubspaceConstraint:
    """The protected singular subspaces of a model's 2-D weights and the projection of updates out of them.

    ``update(model)`` after each task grows, per weight W: (m, n), the left basis U: (m, r_u) and/or the right
    basis V: (n, r_v) by the energy rule (module docstring). ``project_grads(model)`` (call after backward)
    and ``project_step(model, before)`` (call after the optimiser step) apply P to the gradients / the step.
    ``history``: one dict name -> (r_u, r_v) per ``update``.
    """

    def __init__(self, model: nn.Module, threshold: float = 0.9, side: str = "both",
                 names: Iterable[str] | None = None) -> None:
        self.threshold, self.side = _check_threshold(threshold), _check_side(side)
        params = dict(model.named_parameters())
        if names is None:
            names = [n for n, p in params.items() if p.ndim == 2]
        self.names = list(names)
        for n in self.names:
            if n not in params or params[n].ndim != 2:
                raise ValueError(f"names must be 2-D parameters of model, got {n!r}")
        self.U = {n: torch.zeros(params[n].shape[0], 0, dtype=torch.float64) for n in self.names}
        self.V = {n: torch.zeros(params[n].shape[1], 0, dtype=torch.float64) for n in self.names}
        self.history: list[dict[str, tuple[int, int]]] = []

    @property
    def ranks(self) -> dict[str, tuple[int, int]]:
        """name -> (r_u, r_v), the current protected ranks."""
        return {n: (self.U[n].shape[1], self.V[n].shape[1]) for n in self.names}

    def _grow(self, W: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """Extend an orthonormal basis (m, r) of W's column space side until it holds ``threshold`` of ‖W‖²."""
        total = float(W.pow(2).sum())
        captured = float((basis.T @ W).pow(2).sum())
        R = W - basis @ (basis.T @ W)
        Ur, s, _ = torch.linalg.svd(R, full_matrices=False)
        r = energy_rank(s, self.threshold, captured, total)
        return extend_basis(basis, Ur[:, :r])

    @torch.no_grad()
    def update(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        """Protect the top singular directions of each weight of ``model`` (as it is now); returns the ranks."""
        params = dict(model.named_parameters())
        for n in self.names:
            W = params[n].detach().double()
            if self.side in ("left", "both"):
                self.U[n] = self._grow(W, self.U[n])
            if self.side in ("right", "both"):
                self.V[n] = self._grow(W.T, self.V[n])
        self.history.append(self.ranks)
        return self.ranks

    def project(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """P(delta) for the weight ``name``; delta: its shape (m, n)."""
        if name not in self.U:
            raise ValueError(f"name must be one of the constrained weights {self.names}, got {name!r}")
        return project_update(delta, self.U[name], self.V[name])

    @torch.no_grad()
    def project_grads(self, model: nn.Module) -> None:
        """Replace each constrained weight's .grad by P(.grad), in place."""
        params = dict(model.named_parameters())
        for n in self.names:
            g = params[n].grad
            if g is not None:
                g.copy_(self.project(n, g))

    @torch.no_grad()
    def project_step(self, model: nn.Module, before: Mapping[str, torch.Tensor]) -> None:
        """W ← before + P(W − before) for each constrained weight: the step leaves the protected part unchanged."""
        params = dict(model.named_parameters())
        for n in self.names:
            params[n].copy_(before[n] + self.project(n, params[n] - before[n]))


# ---------------------------------------------------------------------------------------------------------
# Training


def train_task_constrained(
    model: nn.Module, task: Task, constraint: SubspaceConstraint | None = None, epochs: int = 5, lr: float = 1e-3,
    batch_size: int = 64, seed: int = 0,
) -> np.ndarray:
    """``train_task`` (Adam, cross-entropy, the same seeded batches) with the update projected by ``constraint``.

    Each step: backward, P applied to the gradients, Adam step, P applied to the step. Returns the losses (steps,).
    """
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    n = len(task.y_train)
    per_epoch = -(-n // batch_size)
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    params = dict(model.named_parameters())
    model.train()
    losses = np.empty(per_epoch * epochs)
    for step in range(per_epoch * epochs):
        k = step % per_epoch
        if k == 0:
            order = torch.randperm(n, generator=g)
        idx = order[k * batch_size: (k + 1) * batch_size]
        loss = F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if constraint is not None:
            constraint.project_grads(model)
            before = {nm: params[nm].detach().clone() for nm in constraint.names}
        opt.step()
        if constraint is not None:
            constraint.project_step(model, before)
        losses[step] = loss.item()
    return losses


def run_sculpt(
    model_fn: Callable[[], nn.Module], tasks: Sequence[Task], threshold: float = 0.9, side: str = "both",
    seed: int = 0, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64,
) -> tuple[AccuracyMatrix, SubspaceConstraint]:
    """Like ``run_sequence``: a fresh ``model_fn()`` (after torch.manual_seed(seed)) trained on the tasks in order,
    each under the subspace constraint of the tasks before it (task i with seed seed + i). Returns the accuracy
    matrix and the constraint (its ``history`` holds the protected ranks after every task)."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must hold at least one Task")
    torch.manual_seed(int(seed))
    model = model_fn()
    constraint = SubspaceConstraint(model, threshold, side)
    matrix = AccuracyMatrix.empty(len(tasks), [t.name for t in tasks])
    for i, task in enumerate(tasks):
        train_task_constrained(model, task, constraint, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed + i)
        matrix.record(i, evaluate(model, tasks))
        constraint.update(model)
    return matrix, constraint


# ---------------------------------------------------------------------------------------------------------
# The experiment

BASELINES = ("finetune", "ewc", "replay_uniform")
FAST = {"seeds": (0,), "n_tasks": 3, "epochs": 2, "thresholds": (0.5, 0.9)}
FULL = {"seeds": (0, 1, 2), "n_tasks": 8, "epochs": 5, "thresholds": (0.5, 0.7, 0.9, 0.97)}


def sculpt_experiment(
    seeds: Sequence[int] = (0, 1, 2), n_tasks: int = 8, epochs: int = 5, thresholds: Sequence[float] = (0.9,),
    side: str = "both", hidden: Sequence[int] = (128, 128), lr: float = 1e-3, memory: int = 200,
    ewc_lambda: float = 30.0, progress: bool = False,
) -> dict:
    """Permuted digits, ``n_tasks`` tasks, every seed: fine-tuning, EWC, replay (``run_sequence``) and the
    subspace-constrained run at each threshold τ. Returns per method {"ACC", "BWT"} lists over seeds, the
    accuracy-so-far curves, the protected ranks per layer and task (seeds × tasks × layers × 2), and timings.
    """
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    thresholds = [_check_threshold(t) for t in thresholds]
    t0 = time.perf_counter()
    model_fn = lambda: MLP(hidden=tuple(hidden))  # noqa: E731
    out: dict = {"settings": {"seeds": list(seeds), "n_tasks": n_tasks, "epochs": epochs, "thresholds": thresholds,
                              "side": side, "hidden": list(hidden), "lr": lr, "memory": memory,
                              "ewc_lambda": ewc_lambda}, "methods": {}, "ranks": {}, "seconds": {}}
    methods = [*BASELINES, *(f"sculpt@{t:g}" for t in thresholds)]
    it = methods
    if progress:
        from labkit.runtime import progress as bar

        it = bar(methods, desc="sculpt")
    for m in it:
        t1 = time.perf_counter()
        res = {"ACC": [], "BWT": [], "acc_so_far": [], "R": []}
        for s in seeds:
            tasks = permuted_digits(n_tasks, seed=s)
            if m in BASELINES:
                mat = run_sequence(model_fn, tasks, m, seed=s, epochs=epochs, lr=lr, memory=memory,
                                   ewc_lambda=ewc_lambda)
            else:
                mat, con = run_sculpt(model_fn, tasks, float(m.split("@")[1]), side, seed=s, epochs=epochs, lr=lr)
                out["ranks"].setdefault(m, {"layers": con.names, "ranks": []})["ranks"].append(
                    [[list(h[n]) for n in con.names] for h in con.history])
            res["ACC"].append(mat.acc)
            res["BWT"].append(mat.bwt)
            res["acc_so_far"].append(mat.acc_so_far.tolist())
            res["R"].append(mat.R.tolist())
        out["methods"][m] = res
        out["seconds"][m] = time.perf_counter() - t1
    out["seconds"]["total"] = time.perf_counter() - t0
    return out


def summary_rows(result: Mapping) -> list[dict]:
    """One row per method: ACC and BWT as mean ± std over seeds (in %)."""
    rows = []
    for m, r in result["methods"].items():
        a, b = np.array(r["ACC"]) * 100, np.array(r["BWT"]) * 100
        rows.append({"method": m, "ACC %": f"{a.mean():.1f} ± {a.std():.1f}",
                     "BWT %": f"{b.mean():.1f} ± {b.std():.1f}"})
    return rows


def plot_ranks(result: Mapping, method: str | None = None):
    """Protected rank r_u (left) of each layer against tasks learned (mean ± std over seeds)."""
    from labkit.viz import line_band

    method = method or next(iter(result["ranks"]))
    d = result["ranks"][method]
    r = np.array(d["ranks"], dtype=float)  # (seeds, tasks, layers, 2)
    T = r.shape[1]
    curves = {f"{n} (U)": r[:, :, j, 0] for j, n in enumerate(d["layers"])}
    curves.update({f"{n} (V)": r[:, :, j, 1] for j, n in enumerate(d["layers"])})
    return line_band(np.arange(1, T + 1), curves, title=f"protected rank per layer ({method})",
                     xaxis="tasks learned", yaxis="protected rank")


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/sculpt.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.continual.sculpt", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - writes the full run
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4 sculpting subspaces: full run on permuted digits.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    res = sculpt_experiment(**FULL)
    args.out.write_text(json.dumps(res))
    for row in summary_rows(res):
        print(row)
    print({k: round(v, 1) for k, v in res["seconds"].items()})


if __name__ == "__main__":  # pragma: no cover
    main()
