r"""Lifelong model editing with a side memory (WISE) and class-incremental learning with adapters (MOS).

**WISE** (Wang et al., 2024). A trained model is a *main memory* of facts. An edit (x_e, y_e) asks it to answer
y_e on x_e, on its paraphrases (generalisation) and nowhere else (locality). Three places to put edits:

- *long-term memory*: fine-tune the weights W of one layer on each edit in turn (``FTEditor``, "FT-L");
- *working memory*: store the edit's key h(x_e) (the layer's input activation) and answer y_e for any query whose
  key lies within a radius r_e of it (``RetrievalEditor``, GRACE-like; r_e is the 1 % quantile of the distances
  from h(x_e) to an irrelevant pool, so ≤ 1 % of irrelevant training inputs are captured);
- WISE (``WISEEditor``): a *side memory* W' (a copy of the layer's weight W) is the only thing edited. With the
  activation score Δ(x) = ‖(W' − W) h(x)‖₂ a router sends x through W' when Δ(x) > ε and through W otherwise,
  so below the threshold the output *is* the main model's. Editing minimises CE(f_{W'}(x_e), y_e) plus the
  margin loss (ours, after the paper's, on a batch of edit inputs E and of irrelevant inputs I)

      L_a = mean_I [Δ(x_i) − α]₊ + mean_E [β − Δ(x_e)]₊ + [γ − (min_E Δ(x_e) − max_I Δ(x_i))]₊,

  which keeps irrelevant scores under α, edit scores over β and a gap γ between them; ε = r · min over the edits
  so far of Δ(x_e) (recalibrated on the edit keys after each edit; r = ``eps_ratio`` < 1 so that the minimum-score
  edit itself is routed — with r = 1 the strict test Δ > ε always dropped it). *Knowledge sharding*: the edits are
  dealt to k shards in turn (``edits_per_shard`` each); shard i trains only the entries of W' in a random mask M_i
  of density ρ (gradient mask; the masks are independent, overlapping in ≈ ρ² of the entries, or disjoint),
  starting from the side memory W'_0 of the round; the shards are then merged with TIES
  (``labkit.continual.merging.ties``) on the shard vectors τ_i = W'_i − W'_0: W' = W'_0 + TIES(τ_1..τ_k).
  *Replay (ours)*: a shard accumulates its edits sequentially, and each new edit's loss (CE + L_a) runs over all the
  shard's edits of the round so far, not the new edit alone (``replay=True``). Without it a toy layer this small
  forgets: each edit's SGD overwrote its predecessors and only the last edit of each shard survived. The paper's
  LLM layers are large enough for sequential edits to barely interfere; here the shard's edits must be replayed.

``editing_experiment`` trains an ``MLP`` on the digits (the knowledge), picks T held-out test images as edits
with a new random label each, paraphrases them with Gaussian pixel noise, and reports reliability, generalisation
and locality after T sequential edits (the paper's "impossible triangle").

**MOS** (Sun et al., 2025). Class-incremental learning on a frozen pretrained backbone (here an ``MLP`` pretrained
on a *pretext task*, predicting the rotation 0/90/180/270° of the training images, no digit labels). Task t
trains a bottleneck adapter parallel to the backbone's last hidden layer,
φ_t(x) = relu(W₂h₁ + b₂ + U_t relu(D_t h₁)), with a temporary head on the task's classes. *Adapter merging*
(ours: the abstract leaves the rule open; we follow the paper's EMA form) trains task t through the merged
adapter θ̂_t = (1 − α)θ_t + α·mean_{k<t} θ̂_k (θ_t initialised from θ̂_{t−1}), so new adapters stay close to the
old ones and keep their prototypes compatible. Class c's prototype p_c is the mean of φ_{t(c)} over its training
data, stored when c is learned (no old data is kept); prediction is the cosine-nearest prototype. *Self-refined
adapter retrieval* (training-free): a first guess of the task from the backbone's own prototypes, t⁰ =
task(argmax_c cos(h(x), p⁰_c)); then repeat c^{k} = argmax_c cos(φ_{t^k}(x), p_c), t^{k+1} = task(c^k) until the
task stops changing; the answer is c^k. Baselines: prototypes on frozen features (SimpleCIL) and one shared adapter
fine-tuned through the tasks. ``mos_experiment`` runs them on ``split_digits``.

``python -m labkit.continual.editing`` writes the full run to ``labkit/assets/editing.json`` (``load``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.continual.data import Task, digits_split, split_digits
from labkit.continual.merging import ties
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import MLP
from labkit.continual.train import train_task
from labkit.runtime import load_results

__all__ = [
    "FAST",
    "FULL",
    "AdapterBank",
    "FTEditor",
    "RetrievalEditor",
    "WISEEditor",
    "activation_score",
    "editing_experiment",
    "knowledge_model",
    "load",
    "margin_loss",
    "merge_shards",
    "mos_experiment",
    "pretrain_pretext",
    "prototype_predict",
    "route",
    "self_refined_retrieval",
    "shard_masks",
]

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "editing.json"


def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _nonneg(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
    return float(v)


def _unit(name: str, v: float, closed_low: bool = False) -> float:
    ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or not ((0.0 <= v if closed_low else 0.0 < v) and v <= 1.0):
        raise ValueError(f"{name} must be in {'[' if closed_low else '('}0, 1], got {v!r}")
    return float(v)


# ---------------------------------------------------------------------------------------------------------
# WISE: the pieces


def activation_score(h: torch.Tensor, w_side: torch.Tensor, w_main: torch.Tensor,
                     centre: torch.Tensor | None = None) -> torch.Tensor:
    """Δ(x) = ‖(W' − W)(h − μ)‖₂ per row. h: (B, d_in), w_side, w_main: (d_out, d_in), centre μ: (d_in,) or None
    (μ = 0, the paper's score) → (B,)."""
    if w_side.shape != w_main.shape or w_side.ndim != 2:
        raise ValueError(f"w_side and w_main must be 2-D of one shape, got {tuple(w_side.shape)} and "
                         f"{tuple(w_main.shape)}")
    if h.ndim != 2 or h.shape[1] != w_main.shape[1]:
        raise ValueError(f"h must be (B, {w_main.shape[1]}), got {tuple(h.shape)}")
    if centre is not None:
        if centre.shape != (h.shape[1],):
            raise ValueError(f"centre must be ({h.shape[1]},), got {tuple(centre.shape)}")
        h = h - centre
    return (h @ (w_side - w_main).T).norm(dim=1)


def route(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The router: True (side memory) where Δ(x) > ε, False (main memory) elsewhere. scores: (B,) → (B,) bool."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if scores.ndim != 1:
        raise ValueError(f"scores must be (B,), got {tuple(scores.shape)}")
    return scores > threshold


def margin_loss(score_edit: torch.Tensor, score_irr: torch.Tensor, alpha: float, beta: float,
                gamma: float) -> torch.Tensor:
    """L_a = mean[Δ_irr − α]₊ + mean[β − Δ_edit]₊ + [γ − (min Δ_edit − max Δ_irr)]₊ (scalar).

    score_edit: (E,) scores of edit inputs, score_irr: (I,) of irrelevant inputs; need 0 <= alpha < beta.
    """
    alpha, beta, gamma = _nonneg("alpha", alpha), _nonneg("beta", beta), _nonneg("gamma", gamma)
    if not alpha < beta:
        raise ValueError(f"beta must be > alpha = {alpha}, got {beta}")
    if score_edit.ndim != 1 or score_irr.ndim != 1 or not len(score_edit) or not len(score_irr):
        raise ValueError(f"score_edit and score_irr must be non-empty 1-D, got {tuple(score_edit.shape)} and "
                         f"{tuple(score_irr.shape)}")
    return (F.relu(score_irr - alpha).mean() + F.relu(beta - score_edit).mean()
            + F.relu(gamma - (score_edit.min() - score_irr.max())))


def shard_masks(shape: Sequence[int], n_shards: int, density: float, disjoint: bool = False,
                seed: int = 0) -> torch.Tensor:
    """k random gradient masks over a weight of ``shape``: (k, *shape) bool, each with exactly round(ρ·P) entries.

    disjoint False (WISE): independent masks, two of them share ≈ ρ²·P entries. disjoint True: the masks are cut
    from one random permutation and never overlap (needs k·ρ ≤ 1).
    """
    n_shards, density = _pos_int("n_shards", n_shards), _unit("density", density)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be positive sizes, got {shape}")
    P = int(np.prod(shape))
    m = max(1, int(round(density * P)))
    if disjoint and n_shards * m > P:
        raise ValueError(f"density must be <= 1/n_shards = {1 / n_shards:.4g} for disjoint masks, got {density}")
    g = torch.Generator().manual_seed(int(seed))
    masks = torch.zeros(n_shards, P, dtype=torch.bool)
    perm = torch.randperm(P, generator=g)
    for i in range(n_shards):
        idx = perm[i * m:(i + 1) * m] if disjoint else torch.randperm(P, generator=g)[:m]
        masks[i, idx] = True
    return masks.reshape(n_shards, *shape)


def merge_shards(w0: torch.Tensor, shards: Sequence[torch.Tensor], ties_density: float = 1.0) -> torch.Tensor:
    """W' = W'_0 + TIES(τ_1..τ_k), τ_i = W'_i − W'_0 (labkit's ``ties``, scale 1). w0, shards[i]: (d_out, d_in)."""
    shards = list(shards)
    if not shards:
        raise ValueError("shards must hold at least one weight")
    for i, s in enumerate(shards):
        if s.shape != w0.shape:
            raise ValueError(f"shards[{i}] must have shape {tuple(w0.shape)}, got {tuple(s.shape)}")
    if len(shards) == 1:
        return shards[0].clone()
    merged = ties({"w": w0}, [{"w": s - w0} for s in shards], density=_unit("ties_density", ties_density))
    return merged["w"]


# ---------------------------------------------------------------------------------------------------------
# The editable model: an MLP whose last hidden layer is the memory


class _Split:
    """The MLP as key(x) = h (input of its last hidden layer), z = W h + b, logits = head(relu(z))."""

    def __init__(self, model: MLP) -> None:
        if not isinstance(model, MLP) or len(model.layers) < 1:
            raise ValueError(f"model must be an MLP with at least one hidden layer, got {type(model).__name__}")
        self.model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.layer = model.layers[-1]
        self.W, self.b = self.layer.weight.detach().clone(), self.layer.bias.detach().clone()

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.model.d_in:
            raise ValueError(f"x must be (B, {self.model.d_in}), got {tuple(x.shape)}")
        for layer in self.model.layers[:-1]:
            x = F.relu(layer(x))
        return x

    def logits(self, h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.head(F.relu(h @ W.T + (self.b if b is None else b)))


def _augment(x: torch.Tensor, n: int, sigma: float, g: torch.Generator) -> torch.Tensor:
    """x: (d,) → (1 + n, d): x and n copies with Gaussian noise of std sigma."""
    noise = torch.randn(n, x.shape[0], generator=g) * sigma
    return torch.cat([x[None], x[None] + noise])


class _Editor:
    def __init__(self, model: MLP, steps: int = 20, lr: float = 0.02, n_aug: int = 4, sigma_aug: float = 0.3,
                 seed: int = 0) -> None:
        self.net = _Split(model)
        self.steps, self.lr = _pos_int("steps", steps), float(lr)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.n_aug = int(n_aug)
        if self.n_aug < 0:
            raise ValueError(f"n_aug must be >= 0, got {n_aug}")
        self.sigma_aug = _nonneg("sigma_aug", sigma_aug)
        self.g = torch.Generator().manual_seed(int(seed))
        self.n_edits = 0

    def _check_edit(self, x: torch.Tensor, y: int) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 1 or x.shape[0] != self.net.model.d_in:
            raise ValueError(f"x must be ({self.net.model.d_in},), got {tuple(x.shape)}")
        if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or not 0 <= y < self.net.model.n_classes:
            raise ValueError(f"y must be a class in 0..{self.net.model.n_classes - 1}, got {y!r}")
        xs = _augment(x, self.n_aug, self.sigma_aug, self.g)
        return self.net.key(xs), torch.full((len(xs),), int(y))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, d) → predicted labels (B,)."""
        return self.logits(x).argmax(-1)


class FTEditor(_Editor):
    """Long-term memory: each edit fine-tunes the last hidden layer (W and b) of the model with Adam, in turn."""

    def __init__(self, model: MLP, **kw) -> None:
        super().__init__(model, **kw)
        self.W, self.b = self.net.W.clone(), self.net.b.clone()

    def edit(self, x: torch.Tensor, y: int) -> None:
        """One edit: x: (d,) must now be labelled y."""
        h, target = self._check_edit(x, y)
        W, b = self.W.clone().requires_grad_(True), self.b.clone().requires_grad_(True)
        opt = torch.optim.SGD([W, b], lr=self.lr)
        for _ in range(self.steps):
            loss = F.cross_entropy(self.net.logits(h, W, b), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.W, self.b = W.detach(), b.detach()
        self.n_edits += 1

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logits(self.net.key(x), self.W, self.b)


class RetrievalEditor(_Editor):
    """Working memory: a codebook of edit keys h(x_e) with labels y_e and radii r_e; a query within r_e of its nearest
    key answers y_e, any other query gets the main model's logits. r_e = ``radius_quantile`` of ‖h(x_e) − h(x_i)‖
    over the irrelevant pool (so that fraction of the pool is captured at most)."""

    def __init__(self, model: MLP, irrelevant: torch.Tensor, radius_quantile: float = 0.01, **kw) -> None:
        super().__init__(model, **kw)
        self.pool = self.net.key(irrelevant)
        self.q = _unit("radius_quantile", radius_quantile)
        self.keys = torch.empty(0, self.pool.shape[1])
        self.values, self.radii = torch.empty(0, dtype=torch.long), torch.empty(0)

    def edit(self, x: torch.Tensor, y: int) -> None:
        h, _ = self._check_edit(x, y)
        k = h[:1]
        r = torch.quantile(torch.cdist(k, self.pool)[0], self.q)
        self.keys, self.values = torch.cat([self.keys, k]), torch.cat([self.values, torch.tensor([int(y)])])
        self.radii = torch.cat([self.radii, r[None]])
        self.n_edits += 1

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net.key(x)
        out = self.net.logits(h, self.net.W)
        if len(self.keys):
            d = torch.cdist(h, self.keys)
            nearest = d.argmin(1)
            hit = d.gather(1, nearest[:, None])[:, 0] <= self.radii[nearest]
            onehot = F.one_hot(self.values[nearest], out.shape[1]).float() * 100.0
            out = torch.where(hit[:, None], onehot, out)
        return out


class WISEEditor(_Editor):
    """WISE: side memory W' of the last hidden layer, routed by Δ(x) = ‖(W' − W)h‖ > ε, edited in k masked shards.

    irrelevant: (N, d) inputs for the margin loss (a batch of ``n_irr`` of them each step). n_shards, density:
    k and ρ of knowledge sharding (n_shards 1 with density 1: one side memory, no sharding). edits_per_shard:
    edits dealt to each shard before moving on; after k·edits_per_shard edits the shards are merged into the
    side memory and a new round of masks starts. alpha, beta, gamma: the margin loss (activation units).
    replay: each edit's loss also covers the shard's earlier edits of the round (their augmented keys), so a shard
    keeps all of its edits. eps_ratio r ∈ (0, 1]: the router's threshold ε = r · min over edits of Δ(x_e).
    """

    def __init__(self, model: MLP, irrelevant: torch.Tensor, n_shards: int = 2, density: float = 0.2,
                 edits_per_shard: int = 50, alpha: float = 1.0, beta: float = 6.0, gamma: float = 3.0,
                 disjoint: bool = False, ties_density: float = 1.0, n_irr: int = 32, centred: bool = True,
                 replay: bool = True, eps_ratio: float = 0.9, **kw) -> None:
        super().__init__(model, **kw)
        self.pool = self.net.key(irrelevant)
        self.centre = self.pool.mean(0) if centred else None
        self.k, self.rho = _pos_int("n_shards", n_shards), _unit("density", density)
        self.per_shard, self.n_irr = _pos_int("edits_per_shard", edits_per_shard), _pos_int("n_irr", n_irr)
        margin_loss(torch.ones(1), torch.zeros(1), alpha, beta, gamma)  # validates alpha < beta, all >= 0
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.disjoint, self.ties_density = bool(disjoint), _unit("ties_density", ties_density)
        self.replay, self.eps_ratio = bool(replay), _unit("eps_ratio", eps_ratio)
        self.side = self.net.W.clone()  # W'_0 of the current round
        self.edit_keys = torch.empty(0, self.pool.shape[1])
        self._start_round()
        self.threshold = math.inf
        self._merged: torch.Tensor | None = self.side

    def _start_round(self) -> None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.g))
        self.masks = shard_masks(self.side.shape, self.k, self.rho, self.disjoint, seed)
        self.shards: list[torch.Tensor] = []
        # the round's edits of each shard (augmented keys, targets), replayed in the shard's later edits
        self.shard_data: list[tuple[torch.Tensor, torch.Tensor]] = []

    def edit(self, x: torch.Tensor, y: int) -> None:
        h, target = self._check_edit(x, y)
        x_key = h[:1]  # the edit's own key (row 0; the rest are its augmentations)
        i = (self.n_edits // self.per_shard) % self.k
        if i == 0 and self.n_edits % self.per_shard == 0 and self.n_edits > 0:  # a new round
            self.side = self.side_memory()
            self._start_round()
        if i == len(self.shards):
            self.shards.append(self.side.clone())
            self.shard_data.append((h[:0], target[:0]))
        if self.replay:  # the shard's earlier edits of this round stay in the loss
            self.shard_data[i] = (torch.cat([self.shard_data[i][0], h]), torch.cat([self.shard_data[i][1], target]))
            h, target = self.shard_data[i]
        mask = self.masks[i].float()
        W = self.shards[i].clone().requires_grad_(True)
        opt = torch.optim.SGD([W], lr=self.lr)
        for _ in range(self.steps):
            irr = self.pool[torch.randint(0, len(self.pool), (self.n_irr,), generator=self.g)]
            loss = F.cross_entropy(self.net.logits(h, W), target) + margin_loss(
                activation_score(h, W, self.net.W, self.centre), activation_score(irr, W, self.net.W, self.centre),
                self.alpha, self.beta, self.gamma)
            opt.zero_grad()
            loss.backward()
            W.grad.mul_(mask)  # only the shard's subspace moves
            opt.step()
        self.shards[i] = W.detach()
        self.n_edits += 1
        self.edit_keys = torch.cat([self.edit_keys, x_key])
        self._merged = None
        self.threshold = self.eps_ratio * float(activation_score(self.edit_keys, self.side_memory(), self.net.W,
                                                                 self.centre).min())

    def side_memory(self) -> torch.Tensor:
        """The side memory now: the current round's shards TIES-merged onto W'_0 (d_out, d_in)."""
        if self._merged is None:
            self._merged = merge_shards(self.side, self.shards, self.ties_density) if self.shards else self.side
        return self._merged

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, d) → (B, C): side-memory logits where Δ(x) > ε, the main model's logits elsewhere."""
        h = self.net.key(x)
        main = self.net.logits(h, self.net.W)
        if not self.n_edits:
            return main
        W = self.side_memory()
        side = route(activation_score(h, W, self.net.W, self.centre), self.threshold)
        return torch.where(side[:, None], self.net.logits(h, W), main)


# ---------------------------------------------------------------------------------------------------------
# The editing experiment

EDITORS = ("ft_l", "retrieval", "wise", "wise_no_shard")


def knowledge_model(seed: int = 0, n_facts: int = 600, d_key: int = 64, n_classes: int = 10,
                    hidden: Sequence[int] = (256, 256), steps: int = 800, sigma: float = 0.3,
                    ) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    """A toy knowledge model: an ``MLP`` that memorises ``n_facts`` facts key → value.

    keys: (n_facts, d_key) ~ N(0, 1) (random keys are nearly orthogonal, like an LLM's subject representations),
    values: (n_facts,) uniform labels. Trained with Adam (lr 2e-3, batch 128, ``steps``) on keys plus Gaussian noise
    of std ``sigma``, so a *paraphrase* k + σε of a fact is answered like the fact. Returns (model, keys, values).
    """
    g = torch.Generator().manual_seed(int(seed))
    keys = torch.randn(n_facts, d_key, generator=g)
    values = torch.randint(0, n_classes, (n_facts,), generator=g)
    torch.manual_seed(int(seed))
    model = MLP(d_in=d_key, hidden=tuple(hidden), n_classes=n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(_pos_int("steps", steps)):
        idx = torch.randint(0, n_facts, (128,), generator=g)
        loss = F.cross_entropy(model(keys[idx] + sigma * torch.randn(128, d_key, generator=g)), values[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), keys, values


def editing_experiment(seeds: Sequence[int] = (0, 1, 2), n_edits: Sequence[int] = (10, 50, 100),
                       methods: Sequence[str] = EDITORS, n_facts: int = 600, train_steps: int = 800,
                       sigma: float = 0.3, n_para: int = 5, n_local: int = 150, steps: int = 50, lr: float = 0.2,
                       n_shards: int = 2, density: float = 0.2, **wise_kw) -> dict:
    """Reliability / generalisation / locality after T sequential edits, per method, T and seed.

    The knowledge model: ``knowledge_model(seed, n_facts, steps=train_steps, sigma=sigma)``. The facts are split:
    the first 300 may be edited, facts [300, 300 + n_local) measure locality (agreement with the original model),
    the rest is the irrelevant pool of the margin loss and of the retrieval radius. For each T a fresh stream of T
    facts gets new labels (≠ the model's answer); each edit has ``n_para`` paraphrases k + σε (fresh noise, never
    seen while editing; editors augment with their own noise of the same σ). Editors use SGD (``steps``, ``lr``).
    WISE edits with k = ``n_shards``, ρ = ``density`` and ⌈T/k⌉ edits per shard (one round); "wise_no_shard" is
    one side memory, k = 1, ρ = 1.
    """
    for m in methods:
        if m not in EDITORS:
            raise ValueError(f"methods must be drawn from {EDITORS}, got {m!r}")
    Ts = [_pos_int("n_edits", T) for T in n_edits]
    if max(Ts) > 300:
        raise ValueError(f"n_edits must be <= 300, got {max(Ts)}")
    if n_facts < 300 + n_local + 50:
        raise ValueError(f"n_facts must be >= 350 + n_local = {350 + n_local}, got {n_facts}")
    sigma = _nonneg("sigma", sigma)
    t0 = time.perf_counter()
    res = {m: {str(T): {"reliability": [], "generalisation": [], "locality": []} for T in Ts} for m in methods}
    for seed in seeds:
        model, keys, values = knowledge_model(seed, n_facts, steps=train_steps, sigma=sigma)
        with torch.no_grad():
            pred0 = model(keys).argmax(-1)
        xl, yl = keys[300:300 + n_local], pred0[300:300 + n_local]
        pool = keys[300 + n_local:]
        rng = np.random.default_rng([seed, 11])
        for T in Ts:
            e_idx = torch.from_numpy(rng.permutation(300)[:T])
            xe = keys[e_idx]
            ye = (pred0[e_idx] + torch.from_numpy(rng.integers(1, model.n_classes, T))) % model.n_classes
            g = torch.Generator().manual_seed(seed * 1000 + T)
            xp = xe.repeat_interleave(n_para, 0) + sigma * torch.randn(T * n_para, xe.shape[1], generator=g)
            yp = ye.repeat_interleave(n_para)
            for m in methods:
                common = dict(steps=steps, lr=lr, seed=seed, sigma_aug=sigma)
                if m == "ft_l":
                    ed = FTEditor(model, **common)
                elif m == "retrieval":
                    ed = RetrievalEditor(model, pool, **common)
                else:
                    k, rho = (n_shards, density) if m == "wise" else (1, 1.0)
                    ed = WISEEditor(model, pool, n_shards=k, density=rho, edits_per_shard=-(-T // k), **common,
                                    **wise_kw)
                for j in range(T):
                    ed.edit(xe[j], int(ye[j]))
                r = res[m][str(T)]
                r["reliability"].append(float((ed.predict(xe) == ye).float().mean()))
                r["generalisation"].append(float((ed.predict(xp) == yp).float().mean()))
                r["locality"].append(float((ed.predict(xl) == yl).float().mean()))
    summary = {m: {T: {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in d.items()}
                   for T, d in per.items()} for m, per in res.items()}
    return {"settings": {"seeds": list(seeds), "n_edits": Ts, "methods": list(methods), "n_facts": n_facts,
                         "train_steps": train_steps, "sigma": sigma, "n_para": n_para, "n_local": n_local,
                         "steps": steps, "lr": lr, "n_shards": n_shards, "density": density, **wise_kw},
            "per_seed": res, "summary": summary, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------------
# MOS: pretrained backbone, adapters, prototypes, retrieval


def _rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, 64) images → (4N, 64) rotated by 0/90/180/270° and the rotation labels (4N,)."""
    img = x.reshape(-1, 8, 8)
    xs = torch.cat([torch.rot90(img, k, dims=(1, 2)).reshape(-1, 64) for k in range(4)])
    return xs, torch.arange(4).repeat_interleave(len(x))


def pretrain_pretext(seed: int = 0, hidden: Sequence[int] = (128, 128), epochs: int = 4) -> MLP:
    """The frozen "pretrained model": an ``MLP`` (4-way head) trained to tell the rotation of the digits' training
    images (no digit labels ever seen). Returns it with requires_grad off."""
    base = digits_split(seed)
    xs, ys = _rotations(base.x_train)
    xt, yt = _rotations(base.x_test)
    torch.manual_seed(seed)
    model = MLP(hidden=tuple(hidden), n_classes=4)
    train_task(model, Task("rotation", xs, ys, xt, yt, (0, 1, 2, 3)), epochs=epochs, lr=1e-3, seed=seed + 2000)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class AdapterBank(nn.Module):
    """A frozen backbone ``MLP`` and bottleneck adapters parallel to its last hidden layer.

    features(x, t) = relu(W₂h₁ + b₂ + U_t relu(D_t h₁)) with h₁ the backbone's earlier hidden output; t = None is the
    backbone alone. D_t: (r, d₁) (small random init), U_t: (d₂, r) (zero init: a new adapter starts as the backbone).
    """

    def __init__(self, backbone: MLP, rank: int = 16) -> None:
        super().__init__()
        if not isinstance(backbone, MLP) or len(backbone.layers) < 2:
            raise ValueError("backbone must be an MLP with at least two hidden layers")
        self.backbone, self.rank = backbone, _pos_int("rank", rank)
        self.adapters: list[dict[str, torch.Tensor]] = []

    def new_adapter(self, init: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        last = self.backbone.layers[-1]
        if init is not None:
            return {k: v.detach().clone().requires_grad_(True) for k, v in init.items()}
        g = torch.Generator().manual_seed(int(seed))
        D = torch.randn(self.rank, last.in_features, generator=g) / math.sqrt(last.in_features)
        return {"D": D.requires_grad_(True), "U": torch.zeros(last.out_features, self.rank, requires_grad=True)}

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for layer in self.backbone.layers[:-1]:
                x = F.relu(layer(x))
        return x

    def features(self, x: torch.Tensor, adapter: Mapping[str, torch.Tensor] | int | None = None) -> torch.Tensor:
        """x: (B, d) → (B, d₂). adapter: a dict, the index of a stored adapter, or None (backbone)."""
        if isinstance(adapter, (int, np.integer)) and not isinstance(adapter, bool):
            if not 0 <= adapter < len(self.adapters):
                raise ValueError(f"adapter must be in 0..{len(self.adapters) - 1}, got {adapter}")
            adapter = self.adapters[adapter]
        h = self.hidden(x)
        z = self.backbone.layers[-1](h)
        if adapter is not None:
            z = z + F.relu(h @ adapter["D"].T) @ adapter["U"].T
        return F.relu(z)


def prototype_predict(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine-nearest prototype: feats (B, D), protos (C, D) → indices (B,) into protos."""
    if feats.ndim != 2 or protos.ndim != 2 or feats.shape[1] != protos.shape[1] or not len(protos):
        raise ValueError(f"feats must be (B, D) and protos (C >= 1, D), got {tuple(feats.shape)} and "
                         f"{tuple(protos.shape)}")
    return (F.normalize(feats, dim=1) @ F.normalize(protos, dim=1).T).argmax(1)


def self_refined_retrieval(backbone_feats: torch.Tensor, backbone_protos: torch.Tensor, adapter_feats: torch.Tensor,
                           protos: torch.Tensor, class_task: torch.Tensor, n_iter: int = 3,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """MOS's training-free retrieval: guess the task from the backbone, then refine with the adapters' own answers.

    backbone_feats: (B, D0), backbone_protos: (C, D0); adapter_feats: (A, B, D) features of every input under every
    adapter; protos: (C, D) class prototypes (each in its own task's adapter space); class_task: (C,) the adapter
    index of each class. t⁰ = class_task[argmax cos(h, p⁰)], then up to ``n_iter`` times
    c = argmax cos(φ_t(x), p), t ← class_task[c] (stopping per input when t no longer changes).
    n_iter = 0: no refinement (the class is read with adapter t⁰). Returns (class index (B,), adapter (B,)).
    """
    if n_iter < 0 or isinstance(n_iter, bool) or not isinstance(n_iter, int):
        raise ValueError(f"n_iter must be an int >= 0, got {n_iter!r}")
    if adapter_feats.ndim != 3 or adapter_feats.shape[1] != len(backbone_feats):
        raise ValueError(f"adapter_feats must be (A, B={len(backbone_feats)}, D), got {tuple(adapter_feats.shape)}")
    if class_task.shape != (len(protos),) or class_task.min() < 0 or class_task.max() >= adapter_feats.shape[0]:
        raise ValueError(f"class_task must be ({len(protos)},) adapter indices in 0..{adapter_feats.shape[0] - 1}, "
                         f"got {class_task.tolist()}")
    if backbone_protos.shape[0] != len(protos):
        raise ValueError(f"backbone_protos must have {len(protos)} rows like protos, got {backbone_protos.shape[0]}")
    rows = torch.arange(adapter_feats.shape[1])
    t = class_task[prototype_predict(backbone_feats, backbone_protos)]
    c = prototype_predict(adapter_feats[t, rows], protos)
    for _ in range(n_iter):
        t_new = class_task[c]
        if bool((t_new == t).all()):
            break
        t = t_new
        c = prototype_predict(adapter_feats[t, rows], protos)
    return c, t


MOS_METHODS = ("simplecil", "shared_adapter", "mos", "mos_no_merge", "mos_no_refine", "mos_oracle")


def _train_adapter(bank: AdapterBank, adapter: dict, old: list[dict], merge_alpha: float, task: Task,
                   epochs: int, lr: float, seed: int) -> dict:
    """Train ``adapter`` (and a temporary head on the task's classes) through the merged adapter; return the merged."""
    classes = torch.tensor(task.classes)
    remap = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    remap[classes] = torch.arange(len(classes))
    y = remap[task.y_train]
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(bank.backbone.layers[-1].out_features, len(classes))
    with torch.no_grad():
        head.weight.copy_(0.01 * torch.randn(head.weight.shape, generator=g))
        head.bias.zero_()
    opt = torch.optim.Adam([adapter["D"], adapter["U"], *head.parameters()], lr=lr)
    mean_old = ({k: torch.stack([o[k] for o in old]).mean(0) for k in adapter} if old and merge_alpha > 0 else None)

    def merged() -> dict:
        if mean_old is None:
            return adapter
        return {k: (1 - merge_alpha) * adapter[k] + merge_alpha * mean_old[k] for k in adapter}

    h = bank.hidden(task.x_train)
    n = len(y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, 32):
            idx = order[s:s + 32]
            a = merged()
            z = bank.backbone.layers[-1](h[idx]) + F.relu(h[idx] @ a["D"].T) @ a["U"].T
            loss = F.cross_entropy(head(F.relu(z)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in merged().items()}


def _class_protos(bank: AdapterBank, task: Task, adapter) -> torch.Tensor:
    with torch.no_grad():
        f = bank.features(task.x_train, adapter)
    return torch.stack([f[task.y_train == c].mean(0) for c in task.classes])


def mos_experiment(seeds: Sequence[int] = (0, 1, 2), n_tasks: int = 5, hidden: Sequence[int] = (128, 128),
                   pretrain_epochs: int = 4, rank: int = 16, epochs: int = 10, lr: float = 3e-3,
                   merge_alpha: float = 0.5, n_iter: int = 3, methods: Sequence[str] = MOS_METHODS) -> dict:
    """MOS vs SimpleCIL vs one shared adapter on ``split_digits(n_tasks)``, one AccuracyMatrix per method and seed.

    Backbone: ``pretrain_pretext`` (rotation prediction). Each method sees the tasks in order, keeps no old data,
    and predicts among the classes seen so far with cosine prototypes. "mos": adapters trained through the merged
    adapter (``merge_alpha``) and self-refined retrieval (``n_iter``); "mos_no_merge": merge_alpha = 0 (adapters
    still initialised from the previous one); "mos_no_refine": retrieval by the backbone only (n_iter = 0);
    "mos_oracle": the true task's adapter (an upper bound on retrieval); "shared_adapter": one adapter fine-tuned
    through the tasks, old prototypes kept from when their class was learned; "simplecil": backbone prototypes.
    Returns a JSON-ready dict: matrices, ACC / forgetting per method (mean, std over seeds), retrieval accuracy.
    """
    for m in methods:
        if m not in MOS_METHODS:
            raise ValueError(f"methods must be drawn from {MOS_METHODS}, got {m!r}")
    n_tasks = _pos_int("n_tasks", n_tasks)
    if n_tasks < 2:
        raise ValueError(f"n_tasks must be >= 2, got {n_tasks}")
    merge_alpha = _unit("merge_alpha", merge_alpha, closed_low=True)
    if merge_alpha >= 1:
        raise ValueError(f"merge_alpha must be in [0, 1), got {merge_alpha}")
    t0 = time.perf_counter()
    mats: dict[str, list[AccuracyMatrix]] = {m: [] for m in methods}
    retrieval: dict[str, list[float]] = {m: [] for m in methods if m.startswith("mos")}
    for seed in seeds:
        tasks = split_digits(n_tasks, seed=seed)
        backbone = pretrain_pretext(seed, hidden, pretrain_epochs)
        variants = {"mos": (merge_alpha, n_iter), "mos_no_merge": (0.0, n_iter), "mos_no_refine": (merge_alpha, 0),
                    "mos_oracle": (merge_alpha, None)}
        trained: dict[float, tuple[AdapterBank, list]] = {}
        for m in methods:
            am = AccuracyMatrix.empty(n_tasks, [t.name for t in tasks])
            if m in variants:
                alpha, iters = variants[m]
                if alpha not in trained:  # adapters depend only on alpha: train once per alpha
                    bank = AdapterBank(backbone, rank)
                    for i, task in enumerate(tasks):
                        init = bank.adapters[-1] if bank.adapters else None
                        a = bank.new_adapter(init, seed=seed * 100 + i)
                        bank.adapters.append(_train_adapter(bank, a, bank.adapters[:], alpha, task, epochs, lr,
                                                            seed * 100 + i))
                    trained[alpha] = (bank, [])
                bank = trained[alpha][0]
            hits = []
            shared = AdapterBank(backbone, rank)
            sh_adapter = shared.new_adapter(seed=seed * 100)
            protos, bprotos, ctask, cls = [], [], [], []
            for i, task in enumerate(tasks):
                if m == "shared_adapter":
                    sh_adapter = _train_adapter(shared, shared.new_adapter(sh_adapter), [], 0.0, task, epochs, lr,
                                                seed * 100 + i)
                    protos.append(_class_protos(shared, task, sh_adapter))
                elif m != "simplecil":
                    protos.append(_class_protos(bank, task, i))
                bprotos.append(_class_protos(bank if m in variants else shared, task, None))
                ctask += [i] * len(task.classes)
                cls += list(task.classes)
                P0, C, CT = torch.cat(bprotos), torch.tensor(cls), torch.tensor(ctask)
                row = []
                for j, tj in enumerate(tasks):
                    x = tj.x_test
                    with torch.no_grad():
                        if m == "simplecil":
                            pred = C[prototype_predict(shared.features(x, None), P0)]
                        elif m == "shared_adapter":
                            pred = C[prototype_predict(shared.features(x, sh_adapter), torch.cat(protos))]
                        else:
                            af = torch.stack([bank.features(x, k) for k in range(i + 1)])
                            if iters is None:
                                t_sel = torch.full((len(x),), min(j, i), dtype=torch.long)
                                c = prototype_predict(af[t_sel, torch.arange(len(x))], torch.cat(protos))
                            else:
                                c, t_sel = self_refined_retrieval(bank.features(x, None), P0, af, torch.cat(protos),
                                                                  CT, iters)
                            pred = C[c]
                            if i == n_tasks - 1:
                                hits.append(float((t_sel == j).float().mean()))
                    row.append(float((pred == tj.y_test).float().mean()))
                am.record(i, row)
            mats[m].append(am)
            if m in retrieval:
                retrieval[m].append(float(np.mean(hits)))
    summary = {m: {k: {"mean": float(np.mean([a.summary()[k] for a in ams])),
                       "std": float(np.std([a.summary()[k] for a in ams]))} for k in ("ACC", "forgetting", "LA")}
               for m, ams in mats.items()}
    return {"settings": {"seeds": list(seeds), "n_tasks": n_tasks, "hidden": list(hidden),
                         "pretrain_epochs": pretrain_epochs, "rank": rank, "epochs": epochs, "lr": lr,
                         "merge_alpha": merge_alpha, "n_iter": n_iter},
            "matrices": {m: [a.to_dict() for a in ams] for m, ams in mats.items()}, "summary": summary,
            "retrieval_accuracy": {m: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                                   for m, v in retrieval.items()},
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------------
# Sizes, results file

FAST = {"editing": {"seeds": (0,), "n_edits": (5, 12), "train_steps": 300, "steps": 20},
        "mos": {"seeds": (0,), "pretrain_epochs": 2, "epochs": 3}}
FULL = {"editing": {"seeds": (0, 1, 2), "n_edits": (10, 50, 100)},
        "mos": {"seeds": (0, 1, 2, 3, 4)}}


def editing_experiments(sizes: Mapping[str, Mapping] | None = None) -> dict:
    """Both experiments at ``sizes`` (``FAST`` or ``FULL``; default FAST), one thread."""
    torch.set_num_threads(1)
    sizes = FAST if sizes is None else sizes
    return {"editing": editing_experiment(**sizes["editing"]), "mos": mos_experiment(**sizes["mos"])}


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/editing.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.continual.editing", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - writes the full run
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4 editing: WISE (impossible triangle) and MOS (CIL).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--fast", action="store_true", help="FAST sizes instead of FULL")
    args = parser.parse_args(argv)
    sizes = FAST if args.fast else FULL
    res = editing_experiments(sizes)
    res["sizes"] = sizes
    args.out.write_text(json.dumps(res))
    for m, per in res["editing"]["summary"].items():
        for T, s in per.items():
            print("edit", m, T, {k: f"{100 * v['mean']:.1f}±{100 * v['std']:.1f}" for k, v in s.items()})
    for m, s in res["mos"]["summary"].items():
        print("mos", m, {k: f"{100 * v['mean']:.1f}±{100 * v['std']:.1f}" for k, v in s.items()})
    print({k: f"{res[k]['seconds']:.1f}s" for k in ("editing", "mos")})


if __name__ == "__main__":  # pragma: no cover
    main()
