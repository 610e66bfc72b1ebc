r"""HLOP: Hebbian learning finds the old tasks' activity subspace, and weight updates are projected out of it.

Xiao et al. (ICLR 2024, "Hebbian Learning based Orthogonal Projection for Continual Learning of Spiking Neural
Networks") protect what a layer has learned the way GPM does (Saha et al., 2021; chapter 4's FOT/OPCM
projections): if every presynaptic activity vector x̃ an old task produced lies in span(U), an update with
ΔW̃ U = 0 leaves W̃ x̃, hence the layer's output on that task, unchanged. What is new is *how U is found*: not by
an SVD of stored activities, but by k **lateral neurons** that read the layer's presynaptic activity x̃: (d,)
through weights H: (k, d) and learn them with a Hebbian/anti-Hebbian rule, on line, while the task is trained.

**The subspace rule** (Oja 1989; the paper's lateral circuit). Lateral response y = H x̃ (feed-forward,
Hebbian) and its feedback x̂ = Hᵀ y (anti-Hebbian, recurrent); over a batch X: (B, d)

    ΔH = η · (1/B) Σ_b y_b (x̃_b − Hᵀ y_b)ᵀ = η · (1/B) (Yᵀ X − Yᵀ Y H),       Y = X Hᵀ: (B, k)

``rule="oja"`` (the paper's). Its stable fixed points are the H whose rows are an orthonormal basis of the top-k
eigenspace of C = E[x̃ x̃ᵀ] (uncentred, like GPM's representation matrix), the rank-k projection HᵀH with the
least reconstruction error E‖x̃ − HᵀH x̃‖². ``rule="sanger"`` (the generalized Hebbian algorithm, Sanger 1989)
replaces Yᵀ Y by its lower triangle and converges to the eigenvectors themselves, in order. The step is
normalised, η = lr / mean_b ‖x̃_b‖² (tr C ≥ λ_max, so η λ_max ≤ lr whatever the layer's scale), with momentum m:
V ← m V + (1 − m) ΔH/η, H ← H + η V, as in the paper (the averaging keeps lr up to 4 stable; 2 by default).
No SVD or eigendecomposition is taken in this path; the projection uses the orthonormalised rows (QR of Hᵀ),
``HebbianSubspace.basis``.

**Continual use.** Before task t each layer's lateral population grows by k_t neurons (new rows initialised
orthonormal and orthogonal to the old ones); the old rows are frozen, so the new neurons see the feedback
x̂ = Hᵀ y of *all* rows and learn the principal subspace of what the old rows do not yet explain (deflation).
While task t is trained, every SGD gradient of each hidden layer is projected,

    ∇W̃ ← ∇W̃ (I − U Uᵀ),      U = orth(H_{<t}ᵀ): (d, r),      W̃ = [W b], x̃ = [x; 1]

(the bias is the weight on a constant input, so it is protected too), and the new neurons run ``hebb_iterations``
Hebbian steps on each training batch's activities (the paper's concurrent update), plus ``hebb_epochs`` passes
over the task's data once its training ends. SGD with momentum is linear in the gradients and the optimiser is
fresh for each task, so every step lies in the complement of span(U).

**Setting.** The paper's split benchmarks (10-split CIFAR-100, miniImageNet, 5-Datasets) are *task-incremental*:
one classifier head per task and the task identity given at test. Here that is ``split_digits`` with the shared
10-way head of ``labkit.continual.MLP`` masked to the task's classes (``task_logits``): the head rows of task j are
trained only on task j, and the hidden layers are shared and protected. Methods (``run_method``): ``"naive"`` (the
same SGD, no projection), ``"hlop"`` (Hebbian subspaces), ``"hlop_spiking"`` (the lateral neurons as rate-coded
spiking neurons: y is replaced by its spike count in T time steps, s · round(T · clip(y/s, −1, 1))/T, the
paper's ``hlop_spiking`` variant; the network itself stays a rate network), ``"svd"`` (GPM-like: the same ranks,
but each new block is the top-k right singular vectors of the task's residual activities X (I − UUᵀ), taken
exactly after training) and ``"joint"`` (the upper bound: at task t train on the union of tasks 0..t).
Accuracy matrices, ACC and BWT come from ``labkit.continual.AccuracyMatrix``.

``hlop_experiment`` runs every method over seeds (each seed its own class order) and returns a JSON-friendly dict;
``summary_rows`` and ``mean_matrix`` turn it into the section's table and heatmaps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.continual._checks import positive_int as _positive_int
from labkit.continual.data import N_PIXELS, Task, split_digits
from labkit.continual.federated import project_out
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import MLP

__all__ = [
    "METHODS",
    "RULES",
    "HebbianSubspace",
    "augmented_inputs",
    "evaluate_tasks",
    "hlop_experiment",
    "mean_matrix",
    "principal_angles",
    "project_gradients",
    "rank_sweep",
    "run_method",
    "subspace_convergence",
    "summary_rows",
    "svd_subspace",
    "task_accuracy",
    "task_logits",
    "train_task",
]

RULES = ("oja", "sanger")
METHODS = ("naive", "hlop", "hlop_spiking", "svd", "joint")


def _check_float(name: str, v, lo: float, hi: float, lo_open: bool = True, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    if not (ok_lo and ok_hi):
        raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {v}")
    return float(v)


def _check_batch(x: torch.Tensor, d: int, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != d or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty (B, {d}) tensor, got {shape}")
    return x


# ---------------------------------------------------------------------------------------------------------
# Lateral neurons that learn a principal subspace


class HebbianSubspace:
    """k lateral neurons with weights H: (k, d) learning the principal subspace of presynaptic activity x̃: (d,).

    lr: the normalised step (η = lr / mean ‖x̃‖², in (0, 4]); momentum: m in [0, 1); rule: "oja" (subspace rule,
    the paper's) or "sanger" (GHA, ordered eigenvectors); spiking_timesteps: None for a rate response y = H x̃,
    or T ≥ 1 to replace y by its spike count in T steps, s · round(T · clip(y/s, −1, 1)) / T with s =
    ``spiking_scale``. Rows are added with ``add_neurons`` and frozen with ``freeze`` (only the free rows learn).
    Everything is float64 and seeded by ``seed``.
    """

    def __init__(self, d: int, lr: float = 2.0, momentum: float = 0.9, rule: str = "oja",
                 spiking_timesteps: int | None = None, spiking_scale: float = 20.0, seed: int = 0) -> None:
        self.d = _positive_int("d", d)
        self.lr = _check_float("lr", lr, 0.0, 4.0)
        self.momentum = _check_float("momentum", momentum, 0.0, 1.0, lo_open=False, hi_open=True)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.rule = rule
        self.spiking_timesteps = None if spiking_timesteps is None else _positive_int("spiking_timesteps",
                                                                                       spiking_timesteps)
        self.spiking_scale = _check_float("spiking_scale", spiking_scale, 0.0, math.inf)
        self.H = torch.zeros(0, self.d, dtype=torch.float64)
        self.velocity = torch.zeros(0, self.d, dtype=torch.float64)
        self.n_fixed = 0
        self._gen = torch.Generator().manual_seed(int(seed))

    @property
    def k(self) -> int:
        """Number of lateral neurons (rows of H)."""
        return int(self.H.shape[0])

    def add_neurons(self, k: int) -> None:
        """Add k free neurons, initialised orthonormal and orthogonal to the existing rows; k + self.k ≤ d."""
        k = _positive_int("k", k)
        if self.k + k > self.d:
            raise ValueError(f"k must be at most d - (neurons already there) = {self.d - self.k}, got {k}")
        new = torch.randn(self.d, k, generator=self._gen, dtype=torch.float64)
        if self.k:
            q = torch.linalg.qr(self.H.T).Q
            new = new - q @ (q.T @ new)
        new = torch.linalg.qr(new).Q.T  # (k, d) orthonormal rows
        self.H = torch.cat([self.H, new])
        self.velocity = torch.cat([self.velocity, torch.zeros_like(new)])

    def freeze(self) -> None:
        """Freeze every current neuron (the end of a task): later steps change only neurons added afterwards."""
        self.n_fixed = self.k
        self.velocity.zero_()

    def response(self, x: torch.Tensor) -> torch.Tensor:
        """y = x Hᵀ: (B, k) for x: (B, d); quantised to spike counts when ``spiking_timesteps`` is set."""
        x = _check_batch(x, self.d).to(torch.float64)
        y = x @ self.H.T
        if self.spiking_timesteps is not None:
            s, T = self.spiking_scale, self.spiking_timesteps
            y = torch.round(torch.clamp(y / s, -1.0, 1.0) * T) * (s / T)
        return y

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The Hebbian/anti-Hebbian update direction ΔH/η: (k, d) on a batch x: (B, d) (zero on frozen rows):
        ΔH_i = (1/B) Σ_b y_bi (x_b − Σ_j y_bj H_j), the sum over every neuron j ("oja") or j ≤ i ("sanger")."""
        x = _check_batch(x, self.d).to(torch.float64)
        y = self.response(x)
        f = self.n_fixed
        yy = y[:, f:].T @ y  # (k_free, k)
        if self.rule == "sanger":
            yy = torch.tril(yy, diagonal=f)
        dh = torch.zeros_like(self.H)
        dh[f:] = (y[:, f:].T @ x - yy @ self.H) / len(x)
        return dh

    def _delta_free(self, c: torch.Tensor) -> torch.Tensor:
        """``delta`` of the free rows for a rate response, from the batch's second moment c = XᵀX/B: (d, d): with
        Y = X Hᵀ, YᵀX/B = H c and YᵀY/B = H c Hᵀ, so ΔH_free/η = H_free c − (H_free c Hᵀ) H."""
        f = self.n_fixed
        hc = self.H[f:] @ c
        yy = hc @ self.H.T
        if self.rule == "sanger":
            yy = torch.tril(yy, diagonal=f)
        return hc - yy @ self.H

    def step(self, x: torch.Tensor, iterations: int = 1) -> None:
        """``iterations`` Hebbian updates of the free neurons on the batch x: (B, d)."""
        iterations = _positive_int("iterations", iterations)
        x = _check_batch(x, self.d).to(torch.float64)
        if self.k == self.n_fixed:
            return
        energy = float(x.pow(2).sum(1).mean())
        if energy <= 0.0:
            return
        eta, m, f = self.lr / energy, self.momentum, self.n_fixed
        c = x.T @ x / len(x) if self.spiking_timesteps is None else None
        for _ in range(iterations):
            dh = self.delta(x)[f:] if c is None else self._delta_free(c)
            self.velocity[f:] = m * self.velocity[f:] + (1.0 - m) * dh
            self.H[f:] += eta * self.velocity[f:]

    def fit(self, x: torch.Tensor, epochs: int = 1, batch_size: int = 64, iterations: int = 1, seed: int = 0) -> None:
        """``epochs`` passes over x: (N, d) in seeded random minibatches, ``iterations`` steps per batch."""
        x = _check_batch(x, self.d)
        epochs, batch_size = _positive_int("epochs", epochs), _positive_int("batch_size", batch_size)
        g = torch.Generator().manual_seed(int(seed))
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), batch_size):
                self.step(x[order[i: i + batch_size]], iterations)

    def basis(self) -> torch.Tensor:
        """U: (d, k) with orthonormal columns spanning the rows of H (QR of Hᵀ; (d, 0) with no neurons)."""
        if self.k == 0:
            return torch.zeros(self.d, 0, dtype=torch.float64)
        return torch.linalg.qr(self.H.T).Q

    def orthonormality_error(self) -> float:
        """‖H Hᵀ − I‖_F: how far the learned rows are from orthonormal (0 at the rule's fixed points)."""
        return float(torch.linalg.matrix_norm(self.H @ self.H.T - torch.eye(self.k, dtype=torch.float64)))

    def __repr__(self) -> str:
        spk = "" if self.spiking_timesteps is None else f", spiking T={self.spiking_timesteps}"
        return f"HebbianSubspace(d={self.d}, k={self.k}, fixed={self.n_fixed}, rule={self.rule!r}{spk})"


# ---------------------------------------------------------------------------------------------------------
# Exact subspaces and how far two subspaces are apart (for the baseline and for measuring, not for learning)


def _as_basis(a: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) or a.ndim != 2 or a.shape[1] == 0 or a.shape[1] > a.shape[0]:
        shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"{name} must be a (d, k) tensor with 1 <= k <= d, got {shape}")
    return torch.linalg.qr(a.to(torch.float64)).Q


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Principal angles (radians, ascending, min(k_a, k_b) of them) between the column spaces of a: (d, k_a)
    and b: (d, k_b): θ_i = arccos σ_i(Q_aᵀ Q_b). All zero iff one space contains the other."""
    qa, qb = _as_basis(a, "a"), _as_basis(b, "b")
    if qa.shape[0] != qb.shape[0]:
        raise ValueError(f"a and b must have the same number of rows, got {qa.shape[0]} and {qb.shape[0]}")
    s = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return np.sort(np.arccos(s.numpy()))


def svd_subspace(x: torch.Tensor, k: int, basis: torch.Tensor | None = None) -> torch.Tensor:
    """GPM's step: extend the orthonormal basis U: (d, r) by the top-k right singular vectors of the residual
    activities X (I − UUᵀ), x: (N, d). Returns (d, r + k) float64 (k ≤ d − r)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (N, d) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    d = x.shape[1]
    basis = torch.zeros(d, 0, dtype=torch.float64) if basis is None else basis.to(torch.float64)
    if basis.ndim != 2 or basis.shape[0] != d:
        raise ValueError(f"basis must be (d, r) with d = {d}, got {tuple(basis.shape)}")
    k = _positive_int("k", k)
    if basis.shape[1] + k > d:
        raise ValueError(f"k must be at most d - r = {d - basis.shape[1]}, got {k}")
    xr = x.to(torch.float64)
    xr = xr - (xr @ basis) @ basis.T
    vh = torch.linalg.svd(xr, full_matrices=True).Vh  # (d, d), rows = right singular vectors, descending
    new = vh[:k].T
    new = new - basis @ (basis.T @ new)  # re-orthogonalise (exact only up to rounding)
    return torch.cat([basis, torch.linalg.qr(new).Q], 1)


def subspace_convergence(
    x: torch.Tensor, k: int, epochs: int = 10, batch_size: int = 64, lr: float = 2.0, momentum: float = 0.9,
    rule: str = "oja", spiking_timesteps: int | None = None, seed: int = 0, every: int = 1,
) -> dict[str, np.ndarray]:
    """Run k lateral neurons on x: (N, d) and measure, every ``every`` Hebbian steps, how far span(H) is from the
    exact top-k right singular subspace of x (``svd_subspace``).

    Returns {"step": (S,), "max_angle": (S,) degrees, "mean_angle": (S,) degrees, "energy": (S,) fraction of the
    top-k energy Σ_{i<k} σ_i² that span(H) captures, "orth_error": (S,) ‖HHᵀ − I‖_F, "sigma": (d,) singular
    values of x}.
    """
    x = x.to(torch.float64)
    every = _positive_int("every", every)
    epochs, batch_size = _positive_int("epochs", epochs), _positive_int("batch_size", batch_size)
    ref = svd_subspace(x, k)
    sigma = torch.linalg.svdvals(x)
    top = float(sigma[:k].pow(2).sum())
    hs = HebbianSubspace(x.shape[1], lr=lr, momentum=momentum, rule=rule, spiking_timesteps=spiking_timesteps,
                         seed=seed)
    hs.add_neurons(k)
    g = torch.Generator().manual_seed(int(seed) + 1)
    out: dict[str, list] = {"step": [], "max_angle": [], "mean_angle": [], "energy": [], "orth_error": []}

    def record(step: int) -> None:
        ang = np.degrees(principal_angles(hs.H.T, ref))
        u = hs.basis()
        out["step"].append(step)
        out["max_angle"].append(float(ang.max()))
        out["mean_angle"].append(float(ang.mean()))
        out["energy"].append(float((x @ u).pow(2).sum()) / top)
        out["orth_error"].append(hs.orthonormality_error())

    step = 0
    record(step)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            hs.step(x[order[i: i + batch_size]])
            step += 1
            if step % every == 0:
                record(step)
    res = {key: np.asarray(v) for key, v in out.items()}
    res["sigma"] = sigma.numpy()
    return res


# ---------------------------------------------------------------------------------------------------------
# The network side: task-incremental heads, layer activities, projected gradients


def _class_mask(classes: Sequence[int] | torch.Tensor, n_classes: int) -> torch.Tensor:
    cls = torch.as_tensor(list(classes) if not isinstance(classes, torch.Tensor) else classes, dtype=torch.long)
    if cls.numel() == 0 or cls.min() < 0 or cls.max() >= n_classes:
        raise ValueError(f"classes must be non-empty labels in 0..{n_classes - 1}, got {cls.tolist()}")
    mask = torch.zeros(n_classes, dtype=torch.bool)
    mask[cls] = True
    return mask


def task_logits(model: MLP, x: torch.Tensor, classes: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The task's head: logits (B, n_classes) with every class outside ``classes`` set to −inf.

    classes: one task's labels (shared by the batch), or a (B, n_classes) bool mask, one row per example (for
    joint training on several tasks at once).
    """
    logits = model(x)
    if isinstance(classes, torch.Tensor) and classes.dtype == torch.bool:
        if classes.shape != logits.shape:
            raise ValueError(f"a class mask must be (B, {logits.shape[1]}) = {tuple(logits.shape)}, "
                             f"got {tuple(classes.shape)}")
        mask = classes
    else:
        mask = _class_mask(classes, logits.shape[1]).expand_as(logits)
    return logits.masked_fill(~mask, float("-inf"))


@torch.no_grad()
def task_accuracy(model: MLP, task: Task) -> float:
    """Task-incremental test accuracy: arg-max over the task's own classes only (the task is known at test)."""
    was = model.training
    model.eval()
    acc = (task_logits(model, task.x_test, task.classes).argmax(-1) == task.y_test).double().mean().item()
    model.train(was)
    return float(acc)


def evaluate_tasks(model: MLP, tasks: Sequence[Task]) -> np.ndarray:
    """(len(tasks),) task-incremental accuracies: one row of the accuracy matrix."""
    return np.array([task_accuracy(model, t) for t in tasks])


def _check_mlp(model: nn.Module) -> MLP:
    if not isinstance(model, MLP):
        raise ValueError(f"model must be a labkit.continual.MLP, got {type(model).__name__}")
    return model


@torch.no_grad()
def augmented_inputs(model: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """The presynaptic activity of every hidden layer ``model.layers[l]``, bias-augmented: [a_l, 1]: (N, d_l + 1)
    float64, with a_0 = x and a_{l+1} = relu(layers[l](a_l)) (the head is not protected: each task has its own)."""
    model = _check_mlp(model)
    if x.ndim != 2 or x.shape[1] != model.d_in:
        raise ValueError(f"x must be (N, {model.d_in}), got {tuple(x.shape)}")
    out, a = [], x
    for layer in model.layers:
        out.append(torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1).to(torch.float64))
        a = F.relu(layer(a))
    return out


def project_gradients(model: MLP, bases: Sequence[torch.Tensor | None]) -> None:
    """In place, for each hidden layer l: [∇W ∇b] ← [∇W ∇b] (I − U_l U_lᵀ), U_l: (d_l + 1, r_l) orthonormal
    (None or r_l = 0: left alone). Call between ``backward`` and the optimiser step."""
    model = _check_mlp(model)
    if len(bases) != len(model.layers):
        raise ValueError(f"bases must have one entry per hidden layer ({len(model.layers)}), got {len(bases)}")
    for l, (layer, u) in enumerate(zip(model.layers, bases)):
        if u is None or u.shape[1] == 0 or layer.weight.grad is None:
            continue
        if u.ndim != 2 or u.shape[0] != layer.in_features + 1:
            raise ValueError(f"bases[{l}] must be ({layer.in_features + 1}, r), got {tuple(u.shape)}")
        gw = layer.weight.grad
        gb = layer.bias.grad if layer.bias.grad is not None else torch.zeros(len(gw), dtype=gw.dtype)
        g = project_out(torch.cat([gw, gb[:, None]], 1), u)
        layer.weight.grad.copy_(g[:, :-1])
        if layer.bias.grad is not None:
            layer.bias.grad.copy_(g[:, -1])


def train_task(
    model: MLP, task: Task, bases: Sequence[torch.Tensor | None] | None = None,
    lateral: Sequence[HebbianSubspace] | None = None, epochs: int = 10, lr: float = 0.05, momentum: float = 0.9,
    batch_size: int = 32, hebb_iterations: int = 1, seed: int = 0, mask: torch.Tensor | None = None,
) -> np.ndarray:
    """Train ``model`` on ``task`` with SGD (fresh optimiser, momentum) and the task's masked head; returns the
    per-step losses.

    bases: per hidden layer, the protected basis (``project_gradients``; None: no projection). lateral: per hidden
    layer, a ``HebbianSubspace`` that takes ``hebb_iterations`` steps on each batch's presynaptic activities before
    the gradient step (the concurrent Hebbian update). mask: (N_train, n_classes) bool, a per-example head (joint
    training over several tasks); default: the task's classes.
    """
    model = _check_mlp(model)
    epochs, batch_size = _positive_int("epochs", epochs), _positive_int("batch_size", batch_size)
    lr = _check_float("lr", lr, 0.0, math.inf)
    momentum = _check_float("momentum", momentum, 0.0, 1.0, lo_open=False, hi_open=True)
    n_layers = len(model.layers)
    for name, seq in (("bases", bases), ("lateral", lateral)):
        if seq is not None and len(seq) != n_layers:
            raise ValueError(f"{name} must have one entry per hidden layer ({n_layers}), got {len(seq)}")
    if mask is not None and mask.shape != (len(task.y_train), model.n_classes):
        raise ValueError(f"mask must be ({len(task.y_train)}, {model.n_classes}), got {tuple(mask.shape)}")
    head = _class_mask(task.classes, model.n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    g = torch.Generator().manual_seed(int(seed))
    n = len(task.y_train)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = order[i: i + batch_size]
            x, y = task.x_train[idx], task.y_train[idx]
            if lateral is not None:
                for hs, a in zip(lateral, augmented_inputs(model, x)):
                    hs.step(a, hebb_iterations)
            m = head.expand(len(idx), -1) if mask is None else mask[idx]
            loss = F.cross_entropy(task_logits(model, x, m), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if bases is not None:
                project_gradients(model, bases)
            opt.step()
            losses.append(loss.item())
    return np.asarray(losses)


def _ranks(spec: int | Sequence[int], n_layers: int, name: str) -> list[int]:
    ranks = [spec] * n_layers if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) else list(spec)
    if len(ranks) != n_layers:
        raise ValueError(f"{name} must be an int or have one entry per hidden layer ({n_layers}), got {ranks}")
    return [_positive_int(f"{name}[{i}]", r) for i, r in enumerate(ranks)]


def run_method(
    tasks: Sequence[Task], method: str = "hlop", seed: int = 0, hidden: Sequence[int] = (128, 128),
    k_first: int | Sequence[int] = (10, 20), k_inc: int | Sequence[int] = (4, 8), epochs: int = 20,
    lr: float = 0.1, momentum: float = 0.9, batch_size: int = 32, hebb_lr: float = 2.0,
    hebb_momentum: float = 0.9, hebb_iterations: int = 5, hebb_epochs: int = 0, rule: str = "oja",
    spiking_timesteps: int = 40, spiking_scale: float = 20.0,
) -> dict:
    """Train a fresh ``MLP(hidden=hidden)`` (built after ``torch.manual_seed(seed)``) on ``tasks`` in order under
    ``method`` (one of ``METHODS``); task i uses the data seed ``seed + i``.

    k_first / k_inc: lateral neurons (= protected rank) added per hidden layer for the first task and for each
    later task (the paper's hlop_out_num / hlop_out_num_inc); the total must fit in d_l + 1. "svd" uses the same
    ranks. hebb_*: the lateral neurons' step, momentum, steps per training batch and passes after the task.
    Returns {"matrix": AccuracyMatrix, "ranks": per task the protected rank of each layer, "residual": for the
    projection methods, per task and layer the fraction of the energy of all training activities of the tasks so
    far (at the current weights) that lies outside the protected subspace, ‖X (I − UUᵀ)‖²_F / ‖X‖²_F; "seconds"}.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must hold at least one Task")
    t0 = time.perf_counter()
    torch.manual_seed(int(seed))
    model = MLP(d_in=tasks[0].d_in, hidden=tuple(hidden))
    n_layers = len(model.layers)
    dims = [layer.in_features + 1 for layer in model.layers]
    k_first, k_inc = _ranks(k_first, n_layers, "k_first"), _ranks(k_inc, n_layers, "k_inc")
    for l, d in enumerate(dims):
        total = k_first[l] + k_inc[l] * (len(tasks) - 1)
        if total > d:
            raise ValueError(f"layer {l}: k_first + k_inc·(T−1) = {total} neurons must be at most its input width "
                             f"d + 1 = {d}")
    matrix = AccuracyMatrix.empty(len(tasks), [t.name for t in tasks])
    hebbian = method.startswith("hlop")
    lateral = [HebbianSubspace(d, lr=hebb_lr, momentum=hebb_momentum, rule=rule,
                               spiking_timesteps=spiking_timesteps if method == "hlop_spiking" else None,
                               spiking_scale=spiking_scale, seed=seed * 1000 + l) for l, d in enumerate(dims)] \
        if hebbian else None
    bases: list[torch.Tensor | None] = [None] * n_layers
    ranks, residual = [], []
    for i, task in enumerate(tasks):
        ks = k_first if i == 0 else k_inc
        if method == "joint":
            union = tasks[: i + 1]
            joint = Task("+".join(t.name for t in union), torch.cat([t.x_train for t in union]),
                         torch.cat([t.y_train for t in union]), torch.cat([t.x_test for t in union]),
                         torch.cat([t.y_test for t in union]), tuple(c for t in union for c in t.classes))
            mask = torch.cat([_class_mask(t.classes, model.n_classes).expand(len(t.y_train), -1) for t in union])
            train_task(model, joint, epochs=epochs, lr=lr, momentum=momentum, batch_size=batch_size, seed=seed + i,
                       mask=mask)
        elif method == "naive":
            train_task(model, task, epochs=epochs, lr=lr, momentum=momentum, batch_size=batch_size, seed=seed + i)
        elif hebbian:
            for hs, k in zip(lateral, ks):
                hs.add_neurons(k)
            train_task(model, task, bases=bases if i else None, lateral=lateral, epochs=epochs, lr=lr,
                       momentum=momentum, batch_size=batch_size, hebb_iterations=hebb_iterations, seed=seed + i)
            if hebb_epochs:
                for l, (hs, a) in enumerate(zip(lateral, augmented_inputs(model, task.x_train))):
                    hs.fit(a, epochs=hebb_epochs, batch_size=batch_size, iterations=hebb_iterations,
                           seed=seed * 1000 + 100 * i + l)
            for hs in lateral:
                hs.freeze()
            bases = [hs.basis() for hs in lateral]
        else:  # svd
            train_task(model, task, bases=bases if i else None, epochs=epochs, lr=lr, momentum=momentum,
                       batch_size=batch_size, seed=seed + i)
            bases = [svd_subspace(a, k, b if b is not None and b.shape[1] else None)
                     for a, k, b in zip(augmented_inputs(model, task.x_train), ks, bases)]
        if method in ("hlop", "hlop_spiking", "svd"):
            old = [torch.cat(a) for a in zip(*(augmented_inputs(model, t.x_train) for t in tasks[: i + 1]))]
            residual.append([float((a - (a @ u) @ u.T).pow(2).sum() / a.pow(2).sum()) for a, u in zip(old, bases)])
        ranks.append([0 if b is None else int(b.shape[1]) for b in bases])
        matrix.record(i, evaluate_tasks(model, tasks))
    return {"matrix": matrix, "ranks": ranks, "residual": residual, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------------
# The experiment, its summary and the committed full run


def hlop_experiment(
    seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] = METHODS, n_tasks: int = 5, shuffle_classes: bool = True,
    conv_k: int | None = 10, conv_epochs: int = 6, progress: bool = False, **kwargs,
) -> dict:
    """Split digits (task-incremental, ``n_tasks`` tasks) under every method and seed; with shuffle_classes each
    seed also draws its own class order. Also (unless conv_k is None) the Hebbian convergence on the first task's
    bias-augmented raw inputs (first seed): ``subspace_convergence`` with k = conv_k for the rate (oja, sanger) and
    spiking lateral neurons.
    kwargs go to ``run_method``. Returns a JSON-friendly dict: settings, per method the ACC/BWT lists, the
    accuracy matrices, ranks and residual energies, the convergence curves and timings.
    """
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods must be drawn from {METHODS}, got {m!r}")
    t0 = time.perf_counter()
    out: dict = {"settings": {"seeds": list(seeds), "methods": list(methods), "n_tasks": n_tasks,
                              "shuffle_classes": shuffle_classes, "conv_k": conv_k, "conv_epochs": conv_epochs,
                              **kwargs}, "methods": {}, "convergence": {}, "seconds": {}}
    jobs = [(m, s) for m in methods for s in seeds]
    it = jobs
    if progress:
        from labkit.runtime import progress as bar

        it = bar(jobs, desc="HLOP runs")
    for m, s in it:
        tasks = split_digits(n_tasks, seed=s, shuffle_classes=shuffle_classes)
        r = run_method(tasks, m, seed=s, **kwargs)
        res = out["methods"].setdefault(m, {"ACC": [], "BWT": [], "R": [], "names": [], "ranks": [], "residual": []})
        res["ACC"].append(r["matrix"].acc)
        res["BWT"].append(r["matrix"].bwt)
        res["R"].append(np.round(r["matrix"].R, 6).tolist())
        res["names"].append(r["matrix"].names)
        res["ranks"].append(r["ranks"])
        res["residual"].append(r["residual"])
        out["seconds"][m] = out["seconds"].get(m, 0.0) + r["seconds"]
    if conv_k is not None:
        first = split_digits(n_tasks, seed=seeds[0], shuffle_classes=shuffle_classes)[0].x_train
        x0 = torch.cat([first, torch.ones(len(first), 1)], 1)
        t1 = time.perf_counter()
        for name, kw in (("oja", {}), ("sanger", {"rule": "sanger"}),
                         ("oja, spiking T=40", {"spiking_timesteps": kwargs.get("spiking_timesteps", 40)})):
            c = subspace_convergence(x0, conv_k, epochs=conv_epochs, batch_size=kwargs.get("batch_size", 32),
                                     lr=kwargs.get("hebb_lr", 2.0), seed=seeds[0], **kw)
            out["convergence"][name] = {k: np.round(v, 5).tolist() for k, v in c.items()}
        out["seconds"]["convergence"] = time.perf_counter() - t1
    out["seconds"]["total"] = time.perf_counter() - t0
    return out


def rank_sweep(
    scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 2.4), seeds: Sequence[int] = (0, 1, 2), method: str = "hlop",
    k_first: Sequence[int] = (10, 20), k_inc: Sequence[int] = (4, 8), n_tasks: int = 5, progress: bool = False,
    **kwargs,
) -> dict:
    """How much to protect: ``method`` with every rank scaled, k_first·s and k_inc·s (rounded, ≥ 1), for each
    scale s and seed. Returns {"scales", "fraction": (S, layers) share of each layer's input width d + 1
    protected after the last task, "ACC"/"BWT"/"LA": (S, seeds) lists}. kwargs go to ``run_method``."""
    if not scales or not seeds:
        raise ValueError(f"scales and seeds must be non-empty, got {list(scales)} and {list(seeds)}")
    for sc in scales:
        _check_float("scale", sc, 0.0, math.inf)
    hidden = tuple(kwargs.get("hidden", (128, 128)))
    dims = np.array([N_PIXELS + 1, *(h + 1 for h in hidden[:-1])], dtype=float)
    out: dict = {"scales": [float(x) for x in scales], "fraction": [], "ACC": [], "BWT": [], "LA": []}
    jobs = [(sc, sd) for sc in scales for sd in seeds]
    it = jobs
    if progress:
        from labkit.runtime import progress as bar

        it = bar(jobs, desc="rank sweep")
    rows: dict[float, dict[str, list]] = {}
    for sc, sd in it:
        kf = [max(1, round(k * sc)) for k in k_first]
        ki = [max(1, round(k * sc)) for k in k_inc]
        r = run_method(split_digits(n_tasks, seed=sd, shuffle_classes=True), method, seed=sd, k_first=kf, k_inc=ki,
                       **kwargs)
        row = rows.setdefault(sc, {"ACC": [], "BWT": [], "LA": [], "ranks": r["ranks"][-1]})
        row["ACC"].append(r["matrix"].acc)
        row["BWT"].append(r["matrix"].bwt)
        row["LA"].append(r["matrix"].learning_accuracy)
    for sc in scales:
        out["fraction"].append((np.array(rows[sc]["ranks"]) / dims).tolist())
        for key in ("ACC", "BWT", "LA"):
            out[key].append(rows[sc][key])
    return out


def summary_rows(result: Mapping) -> list[dict]:
    """One row per method: ACC, BWT and learning accuracy as mean ± std over seeds (in %), and for the projection
    methods the fraction of the old tasks' activity energy left outside the protected subspace (per layer, %)."""
    rows = []
    for m, r in result["methods"].items():
        a, b = np.array(r["ACC"]) * 100, np.array(r["BWT"]) * 100
        la = np.array([np.diag(np.array(R)).mean() for R in r["R"]]) * 100
        row = {"method": m, "ACC %": f"{a.mean():.1f} ± {a.std():.1f}", "BWT %": f"{b.mean():.1f} ± {b.std():.1f}",
               "LA %": f"{la.mean():.1f} ± {la.std():.1f}"}
        res = [x[-1] for x in r["residual"] if x]
        row["energy outside U %"] = " / ".join(f"{v:.1f}" for v in np.mean(res, 0) * 100) if res else "–"
        row["seeds"] = len(a)
        rows.append(row)
    return rows


def mean_matrix(result: Mapping, method: str) -> AccuracyMatrix:
    """The accuracy matrix of ``method`` averaged over seeds, task by position in the stream ("task 1" … "task T":
    the seeds' class orders differ, so position is what they share)."""
    if method not in result["methods"]:
        raise ValueError(f"method must be one of {list(result['methods'])}, got {method!r}")
    R = np.mean(np.array(result["methods"][method]["R"]), 0)
    return AccuracyMatrix(R, [f"task {j + 1}" for j in range(len(R))])
