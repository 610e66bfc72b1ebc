r"""Training on a stream of tasks, and the classic ways to keep the old ones: replay, EWC, joint training.

``run_sequence`` trains one model on tasks 0..T−1 in turn and tests it on every task after each, filling an
``AccuracyMatrix``. What differs is the *strategy*:

- ``"finetune"``: plain SGD (Adam) on the current task only; the naive baseline that forgets.
- ``"replay_uniform"``: a ``ReplayBuffer`` with a fixed memory budget M, filled by reservoir sampling (after n
  examples of the stream, each is in memory with probability M/n); every training batch is joined by a batch
  drawn uniformly from memory.
- ``"replay_powerlaw"``: the same memory, but the replayed task is drawn with a probability that decays as a
  power of the time since it was learned (Gandhi et al., "Catastrophic Interference is Mitigated in
  Naturalistic Power-Law Learning Environments"): while learning task t, a past task k < t is rehearsed with

      p_k = (t − k)^{−a} / Σ_{k'<t} (t − k')^{−a}          (time counted in tasks; a = 0 is uniform over tasks)

  and an example of task k is then drawn uniformly from memory (``powerlaw_probs``).
- ``"ewc"``: elastic weight consolidation (Kirkpatrick et al., 2017). After task k, store its optimum θ*_k and the
  diagonal Fisher information F_k = E_x Σ_y p_θ(y|x) (∂ log p_θ(y|x)/∂θ)² on its data (``fisher_diagonal``); the
  loss on later tasks adds λ/2 Σ_k Σ_i F_{k,i} (θ_i − θ*_{k,i})², accumulated over every task so far
  (``EWCPenalty``), whose gradient is λ Σ_k F_k ⊙ (θ − θ*_k).
- ``"joint"``: the upper bound: at task t, train (continuing) on the union of the training sets of tasks 0..t.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from labkit.continual._checks import positive_int as _positive_int
from labkit.continual.data import Task
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import Params, check_compatible, get_params

__all__ = [
    "STRATEGIES",
    "EWCPenalty",
    "FISHER_METHODS",
    "ReplayBuffer",
    "accuracy",
    "evaluate",
    "fisher_diagonal",
    "powerlaw_probs",
    "run_sequence",
    "train_task",
]

STRATEGIES = ("finetune", "replay_uniform", "replay_powerlaw", "ewc", "joint")

# A replay source: (n, rng) -> (x: (n, d), y: (n,)), or None when there is nothing to replay yet.
Replay = Callable[[int, np.random.Generator], "tuple[torch.Tensor, torch.Tensor] | None"]
Penalty = Callable[[nn.Module], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x: (N, d)`` whose arg-max logit equals ``y: (N,)``."""
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"x and y must be non-empty and of the same length, got {len(x)} and {len(y)}")
    was_training = model.training
    model.eval()
    acc = (model(x).argmax(-1) == y).float().mean().item()
    model.train(was_training)
    return float(acc)


def evaluate(model: nn.Module, tasks: Sequence[Task]) -> np.ndarray:
    """(len(tasks),) test accuracy on every task: one row of the accuracy matrix."""
    return np.array([accuracy(model, t.x_test, t.y_test) for t in tasks])


# ---------------------------------------------------------------------------------------------------------
# Replay memory and the power-law schedule


class ReplayBuffer:
    """A fixed-budget memory of (x, y, task) examples filled by reservoir sampling.

    After the stream has offered n examples, each of them is in memory with probability min(1, capacity/n),
    whatever its position in the stream: the i-th example is stored when there is room, and otherwise replaces
    a random slot with probability capacity/i (Vitter's Algorithm R). x: (capacity, d) once the first add
    fixes d.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = _positive_int("capacity", capacity)
        self.rng = np.random.default_rng([int(seed), 4])
        self.n_seen = 0
        self._size = 0
        self.x: torch.Tensor | None = None
        self.y = torch.empty(self.capacity, dtype=torch.long)
        self.task = np.full(self.capacity, -1, dtype=np.int64)
        self.stream_index = np.full(self.capacity, -1, dtype=np.int64)  # position in the stream of each slot
        self._by_task: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._size

    def add(self, x: torch.Tensor, y: torch.Tensor, task: int) -> None:
        """Offer the examples x: (n, d), y: (n,) of task ``task`` to the reservoir, in order."""
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"x must be (n, d) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.x is None:
            self.x = torch.empty(self.capacity, x.shape[1], dtype=x.dtype)
        elif x.shape[1] != self.x.shape[1]:
            raise ValueError(f"x must have {self.x.shape[1]} features like the examples in memory, got {x.shape[1]}")
        for i in range(len(x)):
            self.n_seen += 1
            if self._size < self.capacity:
                slot = self._size
                self._size += 1
            else:
                slot = int(self.rng.integers(0, self.n_seen))
                if slot >= self.capacity:
                    continue
            self.x[slot], self.y[slot] = x[i], y[i]
            self.task[slot], self.stream_index[slot] = task, self.n_seen - 1
        self._by_task = None

    @property
    def tasks(self) -> np.ndarray:
        """The distinct task ids in memory, sorted."""
        return np.unique(self.task[: self._size])

    def _slots_by_task(self) -> dict[int, np.ndarray]:
        if self._by_task is None:
            t = self.task[: self._size]
            self._by_task = {int(k): np.flatnonzero(t == k) for k in np.unique(t)}
        return self._by_task

    def sample(
        self, n: int, rng: np.random.Generator, task_probs: Mapping[int, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n examples (x: (n, d), y: (n,)), with replacement.

        task_probs None: uniform over memory slots. Otherwise a task is drawn from ``task_probs`` (task id ->
        probability; tasks absent from memory must have probability 0) and an example uniformly within it.
        """
        n = _positive_int("n", n)
        if self._size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer")
        if task_probs is None:
            idx = rng.integers(0, self._size, n)
        else:
            slots = self._slots_by_task()
            keys = list(task_probs)
            p = np.array([task_probs[k] for k in keys], dtype=np.float64)
            if (p < 0).any() or not np.isclose(p.sum(), 1.0):
                raise ValueError(f"task_probs must be non-negative and sum to 1, got {dict(task_probs)}")
            absent = [k for k, pk in zip(keys, p) if pk > 0 and k not in slots]
            if absent:
                raise ValueError(f"task_probs gives probability to tasks not in memory: {absent}")
            chosen = rng.choice(len(keys), size=n, p=p / p.sum())
            idx = np.empty(n, dtype=np.int64)
            for c in np.unique(chosen):
                where = np.flatnonzero(chosen == c)
                s = slots[keys[c]]
                idx[where] = s[rng.integers(0, len(s), len(where))]
        t = torch.from_numpy(idx)
        return self.x[t], self.y[t]


def powerlaw_probs(ages: Sequence[float] | np.ndarray, exponent: float) -> np.ndarray:
    """p_k = age_k^{−a} / Σ_k' age_k'^{−a}: rehearsal probabilities that decay as a power of the time since learning.

    ages: (K,) times since each item was learned (≥ 1; in tasks for ``run_sequence``), exponent a ≥ 0 (a = 0:
    uniform; larger a: recent items rehearsed more). Returns (K,) probabilities summing to 1.
    """
    ages = np.asarray(ages, dtype=np.float64)
    if ages.ndim != 1 or len(ages) == 0:
        raise ValueError(f"ages must be a non-empty 1-D array, got shape {ages.shape}")
    if not np.isfinite(ages).all() or (ages < 1).any():
        raise ValueError(f"ages must be finite and >= 1, got {ages.tolist()}")
    if not np.isfinite(exponent) or exponent < 0:
        raise ValueError(f"exponent must be finite and >= 0, got {exponent}")
    w = ages ** (-float(exponent))
    return w / w.sum()


# ---------------------------------------------------------------------------------------------------------
# EWC


FISHER_METHODS = ("auto", "linear", "vmap")


def fisher_diagonal(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, method: str = "auto", chunk: int = 256,
) -> Params:
    """Diagonal Fisher information of ``model`` on inputs x: (N, d), per parameter (``name -> tensor``).

    y None (default, the "true" Fisher): F = (1/N) Σ_n Σ_c p_θ(c|x_n) (∂ log p_θ(c|x_n)/∂θ)², the expectation
    over the model's own predictive distribution, computed exactly (every class, no sampling).
    y given (the "empirical" Fisher): F = (1/N) Σ_n (∂ log p_θ(y_n|x_n)/∂θ)².

    method "vmap": per-example Jacobians with ``torch.func`` (any model; slow). "linear": for models whose every
    parameter sits in an ``nn.Linear`` applied once per example (the ``MLP``), the per-example gradient of a
    weight is the outer product δ_n a_nᵀ of the layer's output gradient and input, so its square is δ_n² (a_n²)ᵀ
    and the sum over examples is one matrix product, (δ²)ᵀ a²: one backward pass per class. "auto" picks
    "linear" when it applies.
    """
    if method not in FISHER_METHODS:
        raise ValueError(f"method must be one of {FISHER_METHODS}, got {method!r}")
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    if y is not None and (y.ndim != 1 or len(y) != len(x)):
        raise ValueError(f"y must be (N,) with N = {len(x)}, got shape {tuple(y.shape)}")
    chunk = _positive_int("chunk", chunk)
    linear_ok = _all_linear(model)
    if method == "linear" and not linear_ok:
        raise ValueError("method='linear' needs every parameter of model to belong to an nn.Linear")
    use_linear = linear_ok and method != "vmap"
    fisher = {k: torch.zeros_like(v, requires_grad=False) for k, v in model.named_parameters()}
    for start in range(0, len(x), chunk):
        xc = x[start: start + chunk]
        yc = None if y is None else y[start: start + chunk]
        part = _fisher_linear(model, xc, yc) if use_linear else _fisher_vmap(model, xc, yc)
        for k in fisher:
            fisher[k] += part[k]
    return {k: v / len(x) for k, v in fisher.items()}


def _all_linear(model: nn.Module) -> bool:
    owned = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    return all(id(p) in owned for p in model.parameters())


def _fisher_linear(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> Params:
    """Σ over the chunk (not the mean) of the per-example squared gradients, via δ² and a² of every nn.Linear."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def store(module, inputs, output):
            if name in seen:
                raise ValueError(f"nn.Linear {name!r} is applied more than once per example; use method='vmap'")
            seen[name] = (inputs[0].detach(), output)
        return store

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    try:
        with torch.enable_grad():
            log_p = F.log_softmax(model(x), -1)  # (n, C)
    finally:
        for h in handles:
            h.remove()
    names = list(seen)
    outputs = [seen[n][1] for n in names]
    a2 = {n: seen[n][0].pow(2) for n in names}  # (n, in)
    prob = log_p.detach().exp()
    out = {f"{n}.{p}" if n else p: torch.zeros_like(t) for n, m in linears.items() for p, t in m.named_parameters()}
    classes = range(log_p.shape[1]) if y is None else [None]
    for c in classes:
        target = log_p[:, c] if c is not None else log_p.gather(1, y[:, None]).squeeze(1)
        deltas = torch.autograd.grad(target.sum(), outputs, retain_graph=True)  # each (n, out)
        weight = prob[:, c: c + 1] if c is not None else torch.ones(len(x), 1)
        for n, d in zip(names, deltas):
            d2 = weight * d.pow(2)
            prefix = f"{n}." if n else ""
            out[f"{prefix}weight"] += d2.T @ a2[n]
            if linears[n].bias is not None:
                out[f"{prefix}bias"] += d2.sum(0)
    return out


def _fisher_vmap(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> Params:
    """The same sum with per-example Jacobians (any model)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def log_probs(p: Params, xi: torch.Tensor) -> torch.Tensor:  # xi: (d,) -> (C,)
        return F.log_softmax(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), -1).squeeze(0)

    jac = vmap(jacrev(log_probs), in_dims=(None, 0))(params, x)  # name -> (n, C, *shape)
    if y is None:
        with torch.no_grad():
            prob = F.softmax(functional_call(model, (params, buffers), (x,)), -1)  # (n, C)
        return {k: torch.einsum("nc,nc...->...", prob, j.pow(2)) for k, j in jac.items()}
    rows = torch.arange(len(x))
    return {k: j[rows, y].pow(2).sum(0) for k, j in jac.items()}


class EWCPenalty:
    """λ/2 Σ_k Σ_i F_{k,i} (θ_i − θ*_{k,i})², one quadratic per consolidated task (``add_task``).

    Calling it on a model returns the penalty as a scalar tensor with gradient λ Σ_k F_k ⊙ (θ − θ*_k); with no
    task added yet it is 0. A sum of diagonal quadratics is one diagonal quadratic, so the tasks are folded into
    F = Σ_k F_k, the centre m = (Σ_k F_k θ*_k) / F (0 where F = 0) and a constant
    c = Σ_k Σ_i F_{k,i} θ*_{k,i}² − Σ_i F_i m_i²: the penalty is λ/2 (Σ_i F_i (θ_i − m_i)² + c) and costs the
    same after 1 task or 100.
    """

    def __init__(self, lam: float) -> None:
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be finite and >= 0, got {lam}")
        self.lam = float(lam)
        self.n_tasks = 0
        self.fisher: Params = {}  # Σ_k F_k
        self.centre: Params = {}  # m
        self._weighted: dict[str, torch.Tensor] = {}  # Σ_k F_k θ*_k (float64)
        self._square = 0.0  # Σ_k Σ_i F_{k,i} θ*_{k,i}² (float64)
        self.const = 0.0

    def add_task(self, fisher: Mapping[str, torch.Tensor], anchor: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Consolidate one task: its diagonal Fisher and the parameters θ* it ended with."""
        check_compatible(fisher, anchor, ("fisher", "anchor"))
        if self.fisher:
            check_compatible(fisher, self.fisher, ("fisher", "the tasks consolidated before"))
        for name, f in fisher.items():
            if not torch.isfinite(f).all() or (f < 0).any():
                raise ValueError(f"fisher[{name!r}] must be finite and >= 0")
        theta = get_params(anchor)
        const = 0.0
        for name, f in fisher.items():
            f64, t64 = f.detach().double(), theta[name].double()
            total = f64 + (self.fisher[name].double() if name in self.fisher else 0.0)
            weighted = f64 * t64 + self._weighted.get(name, 0.0)
            self._square += float((f64 * t64.pow(2)).sum())
            centre = torch.where(total > 0, weighted / torch.where(total > 0, total, 1.0), 0.0)
            const -= float((total * centre.pow(2)).sum())
            self._weighted[name] = weighted
            self.fisher[name] = total.to(f.dtype)
            self.centre[name] = centre.to(theta[name].dtype)
        self.const = self._square + const
        self.n_tasks += 1

    def __call__(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        if not self.n_tasks:
            return torch.zeros((), dtype=next(iter(params.values())).dtype)
        check_compatible(params, self.centre, ("model", "the consolidated tasks"))
        total = sum((self.fisher[n] * (p - self.centre[n]).pow(2)).sum() for n, p in params.items())
        return 0.5 * self.lam * (total + self.const)


# ---------------------------------------------------------------------------------------------------------
# Training


def train_task(
    model: nn.Module,
    task: Task,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    replay: Replay | None = None,
    replay_batch: int | None = None,
    penalty: Penalty | None = None,
    steps: int | None = None,
) -> np.ndarray:
    """Train ``model`` in place on ``task`` with Adam and cross-entropy; returns the per-step losses (steps,).

    epochs passes over task.x_train in seeded random order (or exactly ``steps`` minibatch steps when given).
    replay: called as replay(n, rng) each step; its (x, y) batch (n = replay_batch, default batch_size) is joined
    to the current batch, so old and new examples weigh the same in the loss. penalty: called on the model each
    step, its value added to the loss (e.g. an ``EWCPenalty``).
    """
    epochs, batch_size = _positive_int("epochs", epochs), _positive_int("batch_size", batch_size)
    replay_batch = batch_size if replay_batch is None else _positive_int("replay_batch", replay_batch)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    n = len(task.y_train)
    per_epoch = -(-n // batch_size)
    total = per_epoch * epochs if steps is None else _positive_int("steps", steps)
    g = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng([int(seed), 5])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = np.empty(total)
    order = torch.randperm(n, generator=g)
    for step in range(total):
        k = step % per_epoch
        if k == 0 and step > 0:
            order = torch.randperm(n, generator=g)
        idx = order[k * batch_size: (k + 1) * batch_size]
        x, y = task.x_train[idx], task.y_train[idx]
        if replay is not None:
            old = replay(replay_batch, rng)
            if old is not None:
                x, y = torch.cat([x, old[0]]), torch.cat([y, old[1]])
        loss = F.cross_entropy(model(x), y)
        if penalty is not None:
            loss = loss + penalty(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = loss.item()
    return losses


def _union(tasks: Sequence[Task]) -> Task:
    if len(tasks) == 1:
        return tasks[0]
    return Task("+".join(t.name for t in tasks), torch.cat([t.x_train for t in tasks]),
                torch.cat([t.y_train for t in tasks]), torch.cat([t.x_test for t in tasks]),
                torch.cat([t.y_test for t in tasks]), tuple(sorted({c for t in tasks for c in t.classes})))


def run_sequence(
    model_fn: Callable[[], nn.Module],
    tasks: Sequence[Task],
    strategy: str = "finetune",
    seed: int = 0,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    memory: int = 200,
    exponent: float = 1.0,
    ewc_lambda: float = 30.0,
    fisher_samples: int | None = 500,
    progress: bool = False,
) -> AccuracyMatrix:
    """Train a fresh ``model_fn()`` on ``tasks`` in order under ``strategy``; R[i, j] = test accuracy on task j
    after task i.

    The model is built after ``torch.manual_seed(seed)``; task i is trained with seed ``seed + i``. memory: the
    replay budget (examples) of the replay strategies; exponent: the power-law exponent a of "replay_powerlaw";
    ewc_lambda: λ of "ewc", whose Fisher uses the first ``fisher_samples`` training examples of each task (all
    when None). "joint" trains at step t on the union of tasks 0..t for the same number of epochs (so it costs
    about (t+1)× a task).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must hold at least one Task")
    if fisher_samples is not None:
        fisher_samples = _positive_int("fisher_samples", fisher_samples)
    torch.manual_seed(int(seed))
    model = model_fn()
    matrix = AccuracyMatrix.empty(len(tasks), [t.name for t in tasks])
    buffer = ReplayBuffer(memory, seed) if strategy.startswith("replay") else None
    ewc = EWCPenalty(ewc_lambda) if strategy == "ewc" else None
    iterator = range(len(tasks))
    if progress:
        from labkit.runtime import progress as progress_bar

        iterator = progress_bar(iterator, desc=f"{strategy}", total=len(tasks))
    for i in iterator:
        task = _union(tasks[: i + 1]) if strategy == "joint" else tasks[i]
        replay = None
        if buffer is not None and len(buffer):
            if strategy == "replay_uniform":
                replay = buffer.sample
            else:
                present = buffer.tasks
                probs = dict(zip(present.tolist(), powerlaw_probs(i - present, exponent)))
                replay = lambda n, rng, probs=probs: buffer.sample(n, rng, probs)  # noqa: E731
        train_task(model, task, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed + i, replay=replay,
                   penalty=ewc if (ewc is not None and ewc.n_tasks) else None)
        matrix.record(i, evaluate(model, tasks))
        if buffer is not None:
            order = torch.randperm(len(tasks[i].y_train), generator=torch.Generator().manual_seed(seed + i))
            buffer.add(tasks[i].x_train[order], tasks[i].y_train[order], i)
        if ewc is not None:
            x = tasks[i].x_train if fisher_samples is None else tasks[i].x_train[:fisher_samples]
            ewc.add_task(fisher_diagonal(model, x), model)
    return matrix
