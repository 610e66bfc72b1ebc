r"""Rehearsal schedules and replay losses: the view-batch model and (H)PCR for online continual learning.

**View-batch replay** (Kang et al., 2025, "Do Your Best and Get Enough Rest for Continual Learning"). Ebbinghaus'
forgetting curve says a memory lasts longer when it is learned thoroughly and then left to rest before it is recalled.
The standard schedule shows each of the n training examples once per epoch, so the *recall interval* (steps between two
visits of one example) is about n/B steps for batch size B. The view-batch schedule puts V augmented *views* of each
example in the same batch ("do your best": B/V distinct examples per batch) and covers the n examples once every V
epochs ("get enough rest": recall interval about V·n/B steps). With the number of steps and of examples seen fixed,
V sets both: E epochs of n items hold E·n items = (visits per example) × V × n, so each example is visited E/V times
and the interval *is* V epochs (``ViewBatchSampler``). Replayed memory examples get the same treatment (``views``
copies of each retrieved example). The views here are cheap 8×8 augmentations (``DigitAugment``: a shift of up to
one pixel and Gaussian pixel noise, applied in the unpermuted image and permuted back).

**PCR / HPCR** (Lin et al., "HPCR: Holistic Proxy-based Contrastive Replay for Online Continual Learning"). Online
class-incremental learning sees the stream once, in small batches, with a small replay memory. With ẑ_i the normalised
feature of anchor i, ŵ_c the normalised class proxy (the row of the classifier) and C_B the classes present in the
(current + replayed) batch, *proxy-based contrastive replay* (PCR) is

    L_PCR = −(1/N) Σ_i log [ exp(ẑ_i·ŵ_{y_i}/τ) / Σ_{c∈C_B} exp(ẑ_i·ŵ_c/τ) ]

(cross-entropy over cosine logits whose softmax runs over the batch's classes only, so new classes do not push the
absent old proxies away). HPCR adds three components, as we read the abstract (our simplifications are stated):

- *contrastive*: when the batch holds at least ``min_batch`` samples, the anchor-to-sample pairs join the
  anchor-to-proxy pairs in one softmax, ``P_i`` = {proxy y_i} ∪ {j ≠ i: y_j = y_i} the positives:
  ℓ_i = −(1/|P_i|) Σ_{p∈P_i} log [ exp(s_ip/τ) / (Σ_{c∈C_B} exp(ẑ_i·ŵ_c/τ) + Σ_{j≠i} exp(ẑ_i·ẑ_j/τ)) ];
- *temperature*: τ plays two roles, the sharpness of the softmax p (which negatives get the gradient) and the
  gradient's scale. We decouple them as L = (τ_p/τ_g)·ℓ(τ_p), so ∂L/∂s_ic = (p_ic(τ_p) − 1[c = y_i])/τ_g;
- *distillation*: on replayed examples, the model's anchor-to-proxy distribution over the old classes is kept close to
  the one of the model frozen at the start of the current task: λ_D · KL(p_old ‖ p_new), both at τ_p.

``rehearsal_experiment("view_batch" | "online", fast, seed)`` runs the comparisons;
``python -m labkit.continual.rehearsal`` writes the full run to ``labkit/assets/rehearsal.json`` (``load``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.continual._checks import positive_int as _pos_int
from labkit.continual.data import Task, digits_split, permuted_digits, split_digits
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import MLP
from labkit.continual.train import ReplayBuffer, evaluate
from labkit.runtime import load_results

__all__ = [
    "EXPERIMENTS",
    "aggregate",
    "ONLINE_METHODS",
    "STREAMS",
    "DigitAugment",
    "ProxyClassifier",
    "ViewBatchSampler",
    "load",
    "online_run",
    "proxy_contrastive_loss",
    "proxy_distillation_loss",
    "recall_intervals",
    "rehearsal_experiment",
    "train_views",
    "view_batch_run",
]

STREAMS = ("permuted", "split")
EXPERIMENTS = ("view_batch", "online")
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "rehearsal.json"


def _seed(v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"seed must be a non-negative int, got {v!r}")
    return int(v)


def _positive(name: str, v) -> float:
    if not isinstance(v, (int, float, np.floating)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


# ---------------------------------------------------------------------------------------------------------
# The view-batch schedule


class ViewBatchSampler:
    """Index batches for ``epochs`` epochs over n examples, each example shown as ``views`` copies in one batch.

    The stream is cut into cycles of ``views`` epochs; cycle c draws a seeded permutation π_c of 0..n−1 and repeats
    every index ``views`` times in a row (π_c[0] ×V, π_c[1] ×V, ...), which fills exactly V epochs of n items. The
    streams of all cycles are concatenated, cut to epochs·n items and into batches of ``batch_size`` (the last one
    may be shorter): len(sampler) = ceil(epochs·n / batch_size) steps whatever V is, so V = 1 (standard)
    and V > 1 cost the same. batch_size must be a multiple of views, so the V copies of an example always share a batch.
    When V·n is not a multiple of B a batch may straddle two cycles (an example can then come back one step later).
    Each batch is a (≤ batch_size,) int64 tensor; iterating twice yields the same batches.
    """

    def __init__(self, n: int, batch_size: int, views: int = 1, epochs: int = 1, seed: int = 0) -> None:
        self.n, self.batch_size = _pos_int("n", n), _pos_int("batch_size", batch_size)
        self.views, self.epochs, self.seed = _pos_int("views", views), _pos_int("epochs", epochs), _seed(seed)
        if self.batch_size % self.views:
            raise ValueError(f"batch_size must be a multiple of views={self.views}, got {self.batch_size}")

    def __len__(self) -> int:
        return -(-self.epochs * self.n // self.batch_size)

    @property
    def recall_interval(self) -> float:
        """Mean number of steps between two visits of one example: V·n/B."""
        return self.views * self.n / self.batch_size

    def stream(self) -> torch.Tensor:
        """(epochs·n,) the example index of every item, in order."""
        g = torch.Generator().manual_seed(self.seed)
        cycles = -(-self.epochs // self.views)
        parts = [torch.randperm(self.n, generator=g).repeat_interleave(self.views) for _ in range(cycles)]
        return torch.cat(parts)[: self.epochs * self.n]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.stream().split(self.batch_size))


def recall_intervals(batches: Sequence[torch.Tensor], n: int) -> np.ndarray:
    """Steps between consecutive *visits* of each example (a visit = the step where it appears; copies in one batch
    count once). batches: the sampler's (≤ B,) index batches. Returns the gaps of all examples, concatenated."""
    last = np.full(_pos_int("n", n), -1, dtype=np.int64)
    gaps = []
    for step, b in enumerate(batches):
        idx = np.unique(b.numpy())
        seen = idx[last[idx] >= 0]
        gaps.append(step - last[seen])
        last[idx] = step
    return np.concatenate(gaps) if gaps else np.empty(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------
# Cheap views of 8×8 digits


class DigitAugment:
    """Random views of standardised (and possibly pixel-permuted) 8×8 digits.

    x: (N, 64) rows z[π] of standardised images z = (raw − mean)/std. Each row is un-permuted, brought back to grey
    levels, shifted by (dy, dx) drawn uniformly from {−max_shift..max_shift}² with blank fill, given Gaussian noise of
    std ``noise`` grey levels (clipped to [0, 16]), standardised and permuted again. max_shift=0 and noise=0 is the
    identity. mean, std: (64,) grey-level statistics of the training split; permutation: (64,) π or None.
    """

    def __init__(self, mean, std, permutation=None, max_shift: int = 1, noise: float = 1.0) -> None:
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        self.std = torch.as_tensor(np.asarray(std, dtype=np.float32))
        if self.mean.shape != (64,) or self.std.shape != (64,):
            raise ValueError(f"mean and std must have shape (64,), got {tuple(self.mean.shape)} and "
                             f"{tuple(self.std.shape)}")
        if (self.std <= 0).any():
            raise ValueError("std must be > 0 everywhere")
        if permutation is not None:
            perm = np.asarray(permutation)
            if perm.shape != (64,) or sorted(perm.tolist()) != list(range(64)):
                raise ValueError(f"permutation must be a permutation of 0..63, got shape {perm.shape}")
            self.permutation = torch.as_tensor(perm, dtype=torch.long)
        else:
            self.permutation = None
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or not 0 <= max_shift <= 3:
            raise ValueError(f"max_shift must be an int in 0..3, got {max_shift!r}")
        if not math.isfinite(noise) or noise < 0:
            raise ValueError(f"noise must be finite and >= 0, got {noise}")
        self.max_shift, self.noise = max_shift, float(noise)

    @classmethod
    def for_task(cls, task: Task, seed: int = 0, **kwargs) -> DigitAugment:
        """The augmenter of a ``permuted_digits``/``split_digits`` task built with ``seed`` (default test_frac)."""
        info = digits_split(_seed(seed)).info
        return cls(info["mean"], info["std"], task.info.get("permutation"), **kwargs)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 64:
            raise ValueError(f"x must be (N, 64), got {tuple(x.shape)}")
        n, s = len(x), self.max_shift
        z = x
        if self.permutation is not None:
            z = torch.empty_like(x)
            z[:, self.permutation] = x
        raw = (z * self.std + self.mean).reshape(n, 8, 8)
        if s:
            padded = F.pad(raw, (s, s, s, s))
            dy = torch.randint(-s, s + 1, (n,), generator=generator)
            dx = torch.randint(-s, s + 1, (n,), generator=generator)
            r = torch.arange(8)
            rows = (r[None, :] + s - dy[:, None])[:, :, None]  # (n, 8, 1)
            cols = (r[None, :] + s - dx[:, None])[:, None, :]  # (n, 1, 8)
            raw = padded[torch.arange(n)[:, None, None], rows, cols]
        if self.noise:
            raw = (raw + self.noise * torch.randn(raw.shape, generator=generator)).clamp(0.0, 16.0)
        out = ((raw.reshape(n, 64) - self.mean) / self.std).to(x.dtype)
        return out[:, self.permutation] if self.permutation is not None else out


# ---------------------------------------------------------------------------------------------------------
# Training with a schedule


def _replay_views(
    buffer: ReplayBuffer, n: int, views: int, rng: np.random.Generator, augs: dict[int, DigitAugment] | None,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n replayed items: n/views distinct memory slots (uniform), each repeated ``views`` times, each copy augmented
    with its own task's augmenter."""
    slots = torch.from_numpy(rng.integers(0, len(buffer), n // views)).repeat_interleave(views)
    x, y = buffer.x[slots], buffer.y[slots]
    if augs is not None:
        tasks = buffer.task[slots.numpy()]
        x = x.clone()
        for t in np.unique(tasks):
            m = torch.from_numpy(tasks == t)
            x[m] = augs[int(t)](x[m], g)
    return x, y


def train_views(
    model: nn.Module, task: Task, sampler: ViewBatchSampler, augment: DigitAugment | None = None, lr: float = 1e-3,
    seed: int = 0, buffer: ReplayBuffer | None = None, replay_batch: int | None = None,
    replay_augs: dict[int, DigitAugment] | None = None,
) -> np.ndarray:
    """Train ``model`` in place on ``task`` (Adam, cross-entropy) along ``sampler``'s batches; returns losses (steps,).

    Every item is augmented (its own draw, so the V copies of an example are V different views). With a non-empty
    ``buffer``, each step also replays ``replay_batch`` items (default: the batch size) as replay_batch/V memory
    examples × V views, augmented by ``replay_augs[task_id]``.
    """
    if len(task.y_train) != sampler.n:
        raise ValueError(f"sampler.n must equal the task's {len(task.y_train)} training examples, got {sampler.n}")
    lr = _positive("lr", lr)
    replay_batch = sampler.batch_size if replay_batch is None else _pos_int("replay_batch", replay_batch)
    if replay_batch % sampler.views:
        raise ValueError(f"replay_batch must be a multiple of views={sampler.views}, got {replay_batch}")
    g = torch.Generator().manual_seed(_seed(seed))
    rng = np.random.default_rng([seed, 7])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for idx in sampler:
        x, y = task.x_train[idx], task.y_train[idx]
        if augment is not None:
            x = augment(x, g)
        if buffer is not None and len(buffer):
            xo, yo = _replay_views(buffer, replay_batch, sampler.views, rng, replay_augs, g)
            x, y = torch.cat([x, xo]), torch.cat([y, yo])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.asarray(losses)


def _stream(stream: str, n_tasks: int, seed: int) -> list[Task]:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    return permuted_digits(n_tasks, seed=seed) if stream == "permuted" else split_digits(n_tasks, seed=seed)


def view_batch_run(
    stream: str = "permuted", views: int = 4, replay: bool = False, seed: int = 0, n_tasks: int = 4, epochs: int = 4,
    batch_size: int = 32, lr: float = 1e-3, memory: int = 200, max_shift: int = 1, noise: float = 1.0,
    hidden: Sequence[int] = (128, 128),
) -> AccuracyMatrix:
    """One stream trained task by task with the view-batch schedule (views=1: the standard schedule).

    Both schedules see the same augmented items and take the same number of steps (epochs·n/B per task). replay: a
    reservoir ``ReplayBuffer`` of ``memory`` examples, filled after each task, replayed at every step (B items, in
    B/V examples × V views). Returns the (T, T) ``AccuracyMatrix``.
    """
    seed = _seed(seed)
    tasks = _stream(stream, _pos_int("n_tasks", n_tasks), seed)
    augs = {i: DigitAugment.for_task(t, seed, max_shift=max_shift, noise=noise) for i, t in enumerate(tasks)}
    torch.manual_seed(seed)
    model = MLP(64, tuple(hidden), 10)
    buffer = ReplayBuffer(memory, seed) if replay else None
    matrix = AccuracyMatrix.empty(len(tasks), [t.name for t in tasks])
    for i, task in enumerate(tasks):
        sampler = ViewBatchSampler(len(task.y_train), batch_size, views, epochs, seed=seed * 1000 + i)
        train_views(model, task, sampler, augs[i], lr=lr, seed=seed * 1000 + i, buffer=buffer, replay_augs=augs)
        matrix.record(i, evaluate(model, tasks))
        if buffer is not None:
            order = torch.randperm(len(task.y_train), generator=torch.Generator().manual_seed(seed + i))
            buffer.add(task.x_train[order], task.y_train[order], i)
    return matrix


# ---------------------------------------------------------------------------------------------------------
# PCR / HPCR losses


def _check_zy(z: torch.Tensor, y: torch.Tensor, proxies: torch.Tensor) -> None:
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"z must be a non-empty (N, d) tensor, got shape {tuple(z.shape)}")
    if y.ndim != 1 or len(y) != len(z) or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"y must be (N,) integer labels with N = {len(z)}, got shape {tuple(y.shape)} {y.dtype}")
    if proxies.ndim != 2 or proxies.shape[1] != z.shape[1]:
        raise ValueError(f"proxies must be (C, {z.shape[1]}), got {tuple(proxies.shape)}")
    if (y < 0).any() or (y >= len(proxies)).any():
        raise ValueError(f"y must be class indices in 0..{len(proxies) - 1}, got values in "
                         f"[{int(y.min())}, {int(y.max())}]")


def proxy_contrastive_loss(
    z: torch.Tensor, y: torch.Tensor, proxies: torch.Tensor, tau: float = 0.1, tau_grad: float | None = None,
    sample_pairs: bool = False, min_batch: int = 0,
) -> torch.Tensor:
    """PCR (sample_pairs=False) or HPCR's holistic loss (sample_pairs=True) on one batch; a scalar tensor.

    z: (N, d) features (normalised inside), y: (N,) labels, proxies: (C, d) class proxies (normalised inside). The
    softmax runs over the proxies of the classes present in y, plus (when sample_pairs and N ≥ min_batch) every
    other sample j ≠ i; the positives are the anchor's proxy and the other samples of its class, averaged (see the
    module docstring). tau: the softmax temperature τ_p; tau_grad: the gradient temperature τ_g (default τ_p), the
    loss being (τ_p/τ_g) × the τ_p loss.
    """
    _check_zy(z, y, proxies)
    tau = _positive("tau", tau)
    tau_grad = tau if tau_grad is None else _positive("tau_grad", tau_grad)
    if isinstance(min_batch, bool) or not isinstance(min_batch, int) or min_batch < 0:
        raise ValueError(f"min_batch must be an int >= 0, got {min_batch!r}")
    zn, wn = F.normalize(z, dim=1), F.normalize(proxies, dim=1)
    n, c = len(z), len(proxies)
    present = torch.zeros(c, dtype=torch.bool)
    present[y] = True
    logits = (zn @ wn.T).masked_fill(~present, float("-inf"))  # (N, C)
    positive = F.one_hot(y.long(), c).bool()
    if sample_pairs and n >= min_batch:
        eye = torch.eye(n, dtype=torch.bool)
        s = (zn @ zn.T).masked_fill(eye, float("-inf"))  # (N, N)
        logits = torch.cat([logits, s], 1)
        positive = torch.cat([positive, (y[:, None] == y[None, :]) & ~eye], 1)
    log_p = F.log_softmax(logits / tau, dim=1)
    per_anchor = -(log_p.masked_fill(~positive, 0.0).sum(1) / positive.sum(1))
    return (tau / tau_grad) * per_anchor.mean()


def proxy_distillation_loss(
    z_new: torch.Tensor, proxies_new: torch.Tensor, z_old: torch.Tensor, proxies_old: torch.Tensor,
    old_classes: Sequence[int], tau: float = 0.1,
) -> torch.Tensor:
    """KL(p_old ‖ p_new) averaged over the N anchors, p = softmax over the old classes of ẑ·ŵ_c / τ.

    z_new, z_old: (N, d) features of the same inputs under the current and the frozen model; proxies_*: (C, d).
    old_classes: the classes learned before the current task (non-empty). The frozen side carries no gradient.
    """
    if z_new.shape != z_old.shape or z_new.ndim != 2:
        raise ValueError(f"z_new and z_old must be (N, d) of the same shape, got {tuple(z_new.shape)} and "
                         f"{tuple(z_old.shape)}")
    if proxies_new.shape != proxies_old.shape or proxies_new.ndim != 2 or proxies_new.shape[1] != z_new.shape[1]:
        raise ValueError(f"proxies_new and proxies_old must be (C, {z_new.shape[1]}), got "
                         f"{tuple(proxies_new.shape)} and {tuple(proxies_old.shape)}")
    cls = torch.as_tensor(list(old_classes), dtype=torch.long)
    if cls.numel() == 0 or (cls < 0).any() or (cls >= len(proxies_new)).any():
        raise ValueError(f"old_classes must be a non-empty set of class indices in 0..{len(proxies_new) - 1}, "
                         f"got {list(old_classes)}")
    tau = _positive("tau", tau)
    new = F.normalize(z_new, dim=1) @ F.normalize(proxies_new[cls], dim=1).T
    with torch.no_grad():
        old = F.normalize(z_old, dim=1) @ F.normalize(proxies_old[cls], dim=1).T
        p_old = F.softmax(old / tau, 1)
    return F.kl_div(F.log_softmax(new / tau, 1), p_old, reduction="batchmean")


class ProxyClassifier(nn.Module):
    """Cosine classifier on an ``MLP``: x: (B, 64) → logits (B, C) = ẑ ŵᵀ with ẑ = features/‖·‖ and ŵ the normalised
    rows of ``mlp.head.weight`` (the class proxies; the head's bias is unused)."""

    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.mlp = mlp

    @property
    def proxies(self) -> torch.Tensor:
        return self.mlp.head.weight

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1) @ F.normalize(self.proxies, dim=1).T


# ---------------------------------------------------------------------------------------------------------
# Online class-incremental runs

# method -> loss settings. "er": cross-entropy on the linear head; the rest: cosine logits on the proxies.
ONLINE_METHODS: dict[str, dict] = {
    "er": {"loss": "ce"},
    "pcr": {"loss": "proxy", "sample_pairs": False, "tau_grad": None, "distill": 0.0},
    "hpcr-c": {"loss": "proxy", "sample_pairs": True, "tau_grad": None, "distill": 0.0},
    "hpcr-ct": {"loss": "proxy", "sample_pairs": True, "tau_grad": "tau_g", "distill": 0.0},
    "hpcr": {"loss": "proxy", "sample_pairs": True, "tau_grad": "tau_g", "distill": "lambda_d"},
}


def online_run(
    method: str = "hpcr", seed: int = 0, n_tasks: int = 5, batch_size: int = 10, replay_batch: int = 10,
    memory: int = 200, lr: float = 0.05, tau: float = 0.1, tau_g: float = 0.05, lambda_d: float = 1.0,
    min_batch: int = 16, augment: bool = True, hidden: Sequence[int] = (128, 128),
) -> AccuracyMatrix:
    """Online class-incremental learning on split digits: one pass, batches of ``batch_size``, reservoir replay.

    Each incoming batch (task order, shuffled within a task) is joined by ``replay_batch`` memory examples (once the
    memory holds some), and — with ``augment`` — by one ``DigitAugment`` view of all of them; one SGD step (lr, momentum
    0) on the method's loss; then the incoming batch is offered to the reservoir. ``method`` ∈ ``ONLINE_METHODS``:
    "er" (cross-entropy), "pcr", "hpcr-c" (+ anchor-to-sample pairs when the batch has ≥ min_batch items), "hpcr-ct"
    (+ decoupled temperature τ_p = tau, τ_g = tau_g), "hpcr" (+ distillation λ_D = lambda_d on the replayed items
    against the model frozen at the start of the task). Evaluated after each task; returns the ``AccuracyMatrix``.
    """
    if method not in ONLINE_METHODS:
        raise ValueError(f"method must be one of {tuple(ONLINE_METHODS)}, got {method!r}")
    seed = _seed(seed)
    batch_size, replay_batch = _pos_int("batch_size", batch_size), _pos_int("replay_batch", replay_batch)
    lr, tau, tau_g = _positive("lr", lr), _positive("tau", tau), _positive("tau_g", tau_g)
    if not math.isfinite(lambda_d) or lambda_d < 0:
        raise ValueError(f"lambda_d must be finite and >= 0, got {lambda_d}")
    cfg = ONLINE_METHODS[method]
    tasks = split_digits(_pos_int("n_tasks", n_tasks), seed=seed)
    aug = DigitAugment.for_task(tasks[0], seed) if augment else None
    torch.manual_seed(seed)
    mlp = MLP(64, tuple(hidden), 10)
    model: nn.Module = mlp if cfg["loss"] == "ce" else ProxyClassifier(mlp)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    buffer = ReplayBuffer(memory, seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 8])
    matrix = AccuracyMatrix.empty(len(tasks), [t.name for t in tasks])
    distill = {None: 0.0, 0.0: 0.0, "lambda_d": lambda_d}[cfg.get("distill")]
    tau_grad = tau_g if cfg.get("tau_grad") == "tau_g" else None
    old_model, old_classes = None, []
    for i, task in enumerate(tasks):
        if i and distill:
            old_model = copy.deepcopy(model).eval()
            old_classes = sorted({c for t in tasks[:i] for c in t.classes})
        order = torch.randperm(len(task.y_train), generator=g)
        model.train()
        for idx in order.split(batch_size):
            x, y = task.x_train[idx], task.y_train[idx]
            n_cur = len(y)
            if len(buffer):
                slots = torch.from_numpy(rng.integers(0, len(buffer), replay_batch))
                x, y = torch.cat([x, buffer.x[slots]]), torch.cat([y, buffer.y[slots]])
            if aug is not None:
                x, y = torch.cat([x, aug(x, g)]), torch.cat([y, y])
            if cfg["loss"] == "ce":
                loss = F.cross_entropy(model(x), y)
            else:
                loss = proxy_contrastive_loss(model.features(x), y, model.proxies, tau, tau_grad,
                                              sample_pairs=cfg["sample_pairs"], min_batch=min_batch)
                mem = torch.ones(len(y), dtype=torch.bool)
                mem[:n_cur] = False
                if aug is not None:
                    mem[len(y) // 2: len(y) // 2 + n_cur] = False
                if old_model is not None and mem.any():
                    with torch.no_grad():
                        z_old = old_model.features(x[mem])
                    loss = loss + distill * proxy_distillation_loss(
                        model.features(x[mem]), model.proxies, z_old, old_model.proxies, old_classes, tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            buffer.add(task.x_train[idx], task.y_train[idx], i)
        matrix.record(i, evaluate(model, tasks))
    return matrix


# ---------------------------------------------------------------------------------------------------------
# Experiments

FAST = {
    "view_batch": {"stream": "permuted", "n_tasks": 3, "epochs": 4, "views": 4},
    "online": {"methods": ("er", "pcr", "hpcr")},
}
FULL = {
    "view_batch": {"streams": STREAMS, "n_tasks": {"permuted": 6, "split": 5}, "epochs": 8, "views": (2, 4)},
    "online": {"methods": tuple(ONLINE_METHODS)},
}
SEEDS = (0, 1, 2, 3, 4)


def _summary(m: AccuracyMatrix) -> dict:
    return {"ACC": m.acc, "BWT": m.bwt, "forgetting": m.forgetting, "LA": m.learning_accuracy,
            "R": np.round(m.R, 4).tolist()}


def rehearsal_experiment(experiment: str = "view_batch", fast: bool = True, seed: int = 0, **overrides) -> dict:
    """Run one comparison for one seed; a JSON-friendly dict {"experiment", "seed", "settings", "runs", "seconds"}.

    "view_batch": on ``stream`` (FAST: 3 permuted tasks × 4 epochs; full: both streams), the standard schedule
    (V = 1) against the view-batch schedule (``views``: an int, or several), each without and with a replay memory
    of 200. runs holds "<stream>/<standard|view{V}>/<none|replay>" → {ACC, BWT, forgetting, LA, R}.
    "online": split digits online (batch 10, memory 200) for ``methods`` (FAST: er, pcr, hpcr; full: every entry
    of ``ONLINE_METHODS``); runs holds method → the same summary. ``overrides`` replace the settings.
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {experiment!r}")
    seed = _seed(seed)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs: dict[str, dict] = {}
    if experiment == "view_batch":
        s = dict(FAST["view_batch"] if fast else FULL["view_batch"]) | overrides
        streams = s.pop("streams", None) or (s.pop("stream"),)
        s.pop("stream", None)
        n_tasks = s.pop("n_tasks")
        views = s.pop("views")
        all_views = (views,) if isinstance(views, int) else tuple(views)
        for stream in streams:
            nt = n_tasks[stream] if isinstance(n_tasks, dict) else n_tasks
            for schedule, v in (("standard", 1), *((f"view{v}", v) for v in all_views)):
                for rep in (False, True):
                    m = view_batch_run(stream, v, rep, seed, n_tasks=nt, **s)
                    runs[f"{stream}/{schedule}/{'replay' if rep else 'none'}"] = _summary(m)
        settings = {"streams": list(streams), "n_tasks": n_tasks, "views": list(all_views), **s}
    else:
        s = dict(FAST["online"] if fast else FULL["online"]) | overrides
        methods = s.pop("methods")
        for method in methods:
            runs[method] = _summary(online_run(method, seed, **s))
        settings = {"methods": list(methods), **s}
    return {"experiment": experiment, "seed": seed, "fast": fast, "settings": settings, "runs": runs,
            "seconds": time.perf_counter() - t0}


def aggregate(results: Sequence[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and std over seeds: run name → metric → (mean, std), from several ``rehearsal_experiment`` outputs."""
    if not results:
        raise ValueError("results must hold at least one rehearsal_experiment output")
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in results[0]["runs"]:
        out[name] = {}
        for k in ("ACC", "BWT", "forgetting", "LA"):
            v = np.array([r["runs"][name][k] for r in results])
            out[name][k] = (float(v.mean()), float(v.std()))
    return out


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/rehearsal.json``): {"view_batch": [...], "online": [...]}."""
    return load_results(RESULTS, "labkit.continual.rehearsal", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4 rehearsal: view-batch schedule and (H)PCR, full runs.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for exp in EXPERIMENTS:
        out[exp] = [rehearsal_experiment(exp, fast=False, seed=s) for s in args.seeds]
        for name, stats in aggregate(out[exp]).items():
            print(exp, name, " ".join(f"{k}={m:.3f}±{sd:.3f}" for k, (m, sd) in stats.items()), flush=True)
        print(exp, "seconds per seed:", [round(r["seconds"], 1) for r in out[exp]], flush=True)
    args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
