"""Feature-axis compression of the KV cache: keep r of the head_dim coordinates of every key and value.

Each (layer, kv-head) has an orthonormal basis ``U`` (head_dim x head_dim, columns ordered most useful
first) for its keys and one for its values, and a mean ``mu``. A cache that stores rank-r coefficients
``c = (k - mu) U[:, :r]`` (r numbers per token instead of head_dim) gives back

    k_hat = mu + c U[:, :r]^T = mu + (k - mu) U_r U_r^T

This module *simulates* that cache: ``Projection.applied(model)`` routes every new key and value through
the round trip above with ``TinyLM.set_kv_transform``, before RoPE (a fixed basis cannot commute with a
rotation that differs at every position), so attention sees exactly what a rank-r cache would hold.
``nbytes_per_token`` counts what that cache stores: sum over layers/heads of (r_k + r_v) numbers.

Three ways to pick the bases:

* **PCA** (``pca_projection``): eigenvectors of the centred key / value covariance on training text.
* **DCT** (``dct_projection``): one fixed DCT-II basis for every head (the "SVD-free" idea: a fixed
  orthogonal basis instead of a data-dependent SVD); ``select="energy"`` keeps, per head, the DCT
  components with the most calibration energy (the paper's selection step) instead of the lowest frequencies.
* **MatryoshkaKV** (``train_matryoshka``): ``U = U_pca @ cayley(A)`` with A skew-symmetric (so U stays
  orthogonal and training starts at PCA), trained with nested ranks sampled per step and a distillation
  loss (KL to the frozen full model + CE on the text); ``rate_search`` then spends a byte budget per
  (layer, head, K|V) greedily.

Shapes: k, v: (B, n_kv_heads, T, head_dim); bases: (n_layers, n_kv_heads, head_dim, head_dim), column j is
basis vector j; means: (n_layers, n_kv_heads, head_dim); ranks: (n_layers, n_kv_heads) int64.

Train the shipped MatryoshkaKV bases: ``python -m labkit.kv.projection`` (writes
``labkit/assets/tinylm-matryoshka.pt`` and ``.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labkit.data import corpus
from labkit.models import ASSETS, TinyLM

__all__ = [
    "CALIBRATION_SEED", "MATRYOSHKA_NAME", "Projection", "bits_per_char", "calibration_batch", "cayley",
    "collect_kv", "dct_basis", "dct_projection", "load_matryoshka", "lookup_accuracy", "main", "pca_projection",
    "project", "rate_search", "save_matryoshka", "train_matryoshka", "uniform_ranks",
]

CALIBRATION_SEED = 2_000_017  # calibration rows: a stream neither training nor the evaluations use
MATRYOSHKA_NAME = "tinylm-matryoshka"
RateMap = dict[tuple[int, int], tuple[int, int]]


# ------------------------------------------------------------------------------------------------------
# The round trip
# ------------------------------------------------------------------------------------------------------


def project(x: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Rank-r round trip per head: ``mean + ((x - mean) U[:, :r]) U[:, :r]^T``.

    x: (B, H, T, D); mean: (H, D); basis: (H, D, D), columns ordered; rank: (H,) int, 1..D.
    Returns (B, H, T, D). The coefficients ``c`` (B, H, T, r) are what a compressed cache would store.
    Differentiable in ``mean`` and ``basis`` (the nested-rank training uses it).
    """
    D = x.shape[-1]
    keep = (torch.arange(D, device=x.device)[None, :] < rank[:, None].to(x.device)).to(x.dtype)  # (H, D)
    centred = x - mean[None, :, None, :]
    coef = torch.einsum("bhtd,hdr->bhtr", centred, basis) * keep[None, :, None, :]
    return mean[None, :, None, :] + torch.einsum("bhtr,hdr->bhtd", coef, basis)


def cayley(a: torch.Tensor) -> torch.Tensor:
    """The Cayley map ``U = (I - A)(I + A)^{-1}`` of skew-symmetric ``A`` (..., D, D): an orthogonal U, det +1.

    ``I + A`` is always invertible for skew A (its eigenvalues are 1 + i*lambda); ``(I - A)`` and
    ``(I + A)^{-1}`` commute, so U = solve(I + A, I - A). cayley(0) = I.
    """
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a must be (..., D, D) square, got shape {tuple(a.shape)}")
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    return torch.linalg.solve(eye + a, eye - a)


def dct_basis(d: int) -> torch.Tensor:
    """The orthonormal DCT-II basis (d, d) float64: column j is the j-th cosine, lowest frequency first.

    ``C[n, j] = s_j cos(pi (n + 1/2) j / d)`` with ``s_0 = sqrt(1/d)``, ``s_j = sqrt(2/d)``; C^T C = I.
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    n = torch.arange(d, dtype=torch.float64)[:, None]
    j = torch.arange(d, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (n + 0.5) * j / d) * math.sqrt(2.0 / d)
    c[:, 0] = 1.0 / math.sqrt(d)
    return c


def uniform_ranks(fraction: float, head_dim: int) -> tuple[int, int]:
    """(r_k, r_v) with r_k + r_v = floor(2 head_dim fraction) (at least 1 each): the uniform rate at a kept fraction.

    fraction in (0, 1]: 0.4 of head_dim 32 -> (13, 12), i.e. 39.1% kept (never above the budget).
    """
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    total = max(2, int(math.floor(2 * head_dim * fraction + 1e-9)))
    return (total + 1) // 2, total // 2


# ------------------------------------------------------------------------------------------------------
# The projection object
# ------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Projection:
    """Per layer / kv-head orthonormal bases and means for keys and values, plus the ranks kept (the rate map).

    key_basis, value_basis: (L, H, D, D), orthonormal columns, most important first.
    key_mean, value_mean: (L, H, D). key_rank, value_rank: (L, H) int64 in 1..D.
    ``method``: "pca", "dct", "dct-energy" or "matryoshka". ``shared_basis``: the basis is a fixed formula
    (DCT) and costs no storage beyond a per-head choice of components. ``model_id``: the model it was fit on.
    """

    key_basis: torch.Tensor
    value_basis: torch.Tensor
    key_mean: torch.Tensor
    value_mean: torch.Tensor
    key_rank: torch.Tensor
    value_rank: torch.Tensor
    method: str
    model_id: str = ""
    shared_basis: bool = False
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.key_basis.dim() != 4 or self.key_basis.shape[-1] != self.key_basis.shape[-2]:
            raise ValueError(f"key_basis must be (L, H, D, D), got {tuple(self.key_basis.shape)}")
        L, H, D, _ = self.key_basis.shape
        for name, shape in (("value_basis", (L, H, D, D)), ("key_mean", (L, H, D)), ("value_mean", (L, H, D)),
                            ("key_rank", (L, H)), ("value_rank", (L, H))):
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{name} must have shape {shape}, got {got}")
        self.key_rank = self.key_rank.to(torch.long)
        self.value_rank = self.value_rank.to(torch.long)
        for name in ("key_rank", "value_rank"):
            r = getattr(self, name)
            if int(r.min()) < 1 or int(r.max()) > D:
                raise ValueError(f"{name} must be in 1..{D}, got {int(r.min())}..{int(r.max())}")

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.key_basis.shape[0]

    @property
    def n_heads(self) -> int:
        return self.key_basis.shape[1]

    @property
    def head_dim(self) -> int:
        return self.key_basis.shape[2]

    def kept_fraction(self) -> float:
        """Average fraction of the cache kept: sum(r_k + r_v) / (2 L H D). Compression = 1 - this."""
        total = int(self.key_rank.sum() + self.value_rank.sum())
        return total / (2 * self.n_layers * self.n_heads * self.head_dim)

    def nbytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Cache bytes per token, all layers: sum over (layer, head) of (r_k + r_v) * bytes_per_element.

        The full cache holds 2 L H D * bytes_per_element. Bases are not included: see ``basis_nbytes``.
        """
        return int(self.key_rank.sum() + self.value_rank.sum()) * bytes_per_element

    def basis_nbytes(self, bytes_per_element: int = 2) -> int:
        """One-off storage of bases and means (amortised over every cached token; 0 bases for a fixed DCT)."""
        means = 2 * self.key_mean.numel() * bytes_per_element
        if self.shared_basis:  # a formula; energy selection stores a permutation (1 byte per index)
            return means + (2 * self.n_layers * self.n_heads * self.head_dim if self.method == "dct-energy" else 0)
        # only the kept columns are needed at a given rate
        cols = int(self.key_rank.sum() + self.value_rank.sum())
        return means + cols * self.head_dim * bytes_per_element

    # -- the rate map ------------------------------------------------------------------------------
    @property
    def rate_map(self) -> RateMap:
        """{(layer, head): (r_k, r_v)} for every layer and kv-head."""
        return {(layer, h): (int(self.key_rank[layer, h]), int(self.value_rank[layer, h]))
                for layer in range(self.n_layers) for h in range(self.n_heads)}

    def _check_rank(self, name: str, r: object) -> int:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= int(r) <= self.head_dim:
            raise ValueError(f"{name} must be in 1..{self.head_dim}, got {r!r}")
        return int(r)

    def with_rank(self, rank: int | tuple[int, int]) -> Projection:
        """A copy (bases shared) with one rank everywhere: ``rank`` for K and V, or ``(r_k, r_v)``."""
        rk, rv = (rank, rank) if not isinstance(rank, tuple) else rank
        rk, rv = self._check_rank("rank", rk), self._check_rank("rank", rv)
        shape = (self.n_layers, self.n_heads)
        return replace(self, key_rank=torch.full(shape, rk, dtype=torch.long),
                       value_rank=torch.full(shape, rv, dtype=torch.long))

    def with_fraction(self, fraction: float) -> Projection:
        """A copy with the uniform ranks of ``uniform_ranks(fraction, head_dim)``."""
        return self.with_rank(uniform_ranks(fraction, self.head_dim))

    def with_rate_map(self, rates: RateMap) -> Projection:
        """A copy whose listed (layer, head) entries take ranks ``(r_k, r_v)``; others keep their ranks."""
        if not isinstance(rates, dict):
            raise TypeError(f"rates must be a dict {{(layer, head): (r_k, r_v)}}, got {type(rates).__name__}")
        key_rank, value_rank = self.key_rank.clone(), self.value_rank.clone()
        for where, ranks in rates.items():
            if (not isinstance(where, tuple) or len(where) != 2
                    or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in where)):
                raise ValueError(f"rate map keys must be (layer, head) int pairs, got {where!r}")
            layer, head = int(where[0]), int(where[1])
            if not 0 <= layer < self.n_layers:
                raise ValueError(f"rate map layer must be in 0..{self.n_layers - 1}, got {layer}")
            if not 0 <= head < self.n_heads:
                raise ValueError(f"rate map head must be in 0..{self.n_heads - 1}, got {head}")
            if not isinstance(ranks, tuple) or len(ranks) != 2:
                raise ValueError(f"rate map value for {where} must be (r_k, r_v), got {ranks!r}")
            key_rank[layer, head] = self._check_rank("r_k", ranks[0])
            value_rank[layer, head] = self._check_rank("r_v", ranks[1])
        return replace(self, key_rank=key_rank, value_rank=value_rank)

    # -- applying it -------------------------------------------------------------------------------
    def check_model(self, model: TinyLM) -> None:
        """Raise ValueError unless ``model`` has this projection's layers, kv-heads and head_dim."""
        cfg = model.config
        want = (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim)
        got = (self.n_layers, self.n_heads, self.head_dim)
        if want != got:
            raise ValueError(f"projection has (layers, kv_heads, head_dim) = {got}, the model expects {want}")

    def transform(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The kv transform: k, v (B, H, T, D) of ``layer`` -> their rank-(r_k, r_v) round trips."""
        dev, dt = k.device, k.dtype
        k = project(k, self.key_mean[layer].to(dev, dt), self.key_basis[layer].to(dev, dt), self.key_rank[layer])
        v = project(v, self.value_mean[layer].to(dev, dt), self.value_basis[layer].to(dev, dt),
                    self.value_rank[layer])
        return k, v

    @contextlib.contextmanager
    def applied(self, model: TinyLM) -> Iterator[TinyLM]:
        """``with projection.applied(model): ...`` runs the model on the projected cache, then restores
        whatever kv transform the model had before."""
        self.check_model(model)
        before = model.layers[0].self_attn.kv_transform
        model.set_kv_transform(self.transform)
        try:
            yield model
        finally:
            model.set_kv_transform(before)

    def __repr__(self) -> str:
        return (f"Projection(method={self.method!r}, layers={self.n_layers}, kv_heads={self.n_heads}, "
                f"head_dim={self.head_dim}, kept={self.kept_fraction():.3f}, "
                f"bytes_per_token={self.nbytes_per_token()})")


# ------------------------------------------------------------------------------------------------------
# Calibration data and statistics
# ------------------------------------------------------------------------------------------------------


def calibration_batch(model: TinyLM, n_rows: int = 32, seed: int = CALIBRATION_SEED,
                      english_fraction: float = 0.5, length: int | None = None) -> corpus.Batch:
    """Training-distribution rows (English and packed episodes) from a stream reserved for calibration.

    Returns a ``corpus.Batch``: inputs, targets (n_rows, length) int64, mask (n_rows, length) bool.
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 1:
        raise ValueError(f"n_rows must be a positive int, got {n_rows!r}")
    length = model.config.context if length is None else length
    if not 2 <= length <= model.config.context:
        raise ValueError(f"length must be in 2..{model.config.context}, got {length}")
    return corpus.training_batch(np.random.default_rng(seed), n_rows, length, english_fraction)


@torch.no_grad()
def collect_kv(model: TinyLM, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-RoPE keys and values of every layer for ``tokens`` (B, T): each (L, H, B*T, D) float64."""
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []

    def grab(layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys.append(k.transpose(1, 0).reshape(k.shape[1], -1, k.shape[-1]).double())
        values.append(v.transpose(1, 0).reshape(v.shape[1], -1, v.shape[-1]).double())
        return k, v

    before = model.layers[0].self_attn.kv_transform
    model.set_kv_transform(grab)
    try:
        model.eval()
        model(tokens.to(model.embed_tokens.weight.device))
    finally:
        model.set_kv_transform(before)
    return torch.stack(keys).cpu(), torch.stack(values).cpu()


def _pca(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: (L, H, N, D) float64 -> mean (L, H, D), eigenvectors (L, H, D, D) by descending eigenvalue, eigenvalues."""
    mean = x.mean(2)
    xc = x - mean[:, :, None]
    cov = xc.transpose(-1, -2) @ xc / max(1, x.shape[2] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    return mean, evecs.flip(-1), evals.flip(-1)


def _calib_tokens(model: TinyLM, n_rows: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(calibration_batch(model, n_rows, seed).inputs)


def pca_projection(model: TinyLM, rank: int | tuple[int, int] | None = None, n_rows: int = 64,
                   seed: int = CALIBRATION_SEED) -> Projection:
    """Per layer / kv-head PCA of the centred pre-RoPE keys and values on ``n_rows`` calibration rows.

    rank: one rank (or (r_k, r_v)) everywhere; default head_dim (full rank: reproduces the model).
    """
    keys, values = collect_kv(model, _calib_tokens(model, n_rows, seed))
    km, kb, kev = _pca(keys)
    vm, vb, vev = _pca(values)
    D = model.config.head_dim
    shape = (model.config.n_layers, model.config.n_kv_heads)
    proj = Projection(kb.float(), vb.float(), km.float(), vm.float(), torch.full(shape, D), torch.full(shape, D),
                      method="pca", model_id=model.model_id,
                      info={"calibration_rows": n_rows, "seed": seed,
                            "key_eigenvalues": kev.float(), "value_eigenvalues": vev.float()})
    return proj if rank is None else proj.with_rank(rank)


def dct_projection(model: TinyLM, select: str = "frequency", rank: int | tuple[int, int] | None = None,
                   n_rows: int = 64, seed: int = CALIBRATION_SEED, center: bool = True) -> Projection:
    """The fixed DCT-II basis for every head (no SVD), lowest frequencies first (``select="frequency"``)
    or, per head, the DCT components in order of calibration energy (``select="energy"``).

    center: subtract the calibration mean first (as PCA does); False uses mean 0 and needs no calibration
    for ``select="frequency"``.
    """
    if select not in ("frequency", "energy"):
        raise ValueError(f"select must be 'frequency' or 'energy', got {select!r}")
    cfg = model.config
    L, H, D = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
    c = dct_basis(D)
    need_data = center or select == "energy"
    if need_data:
        keys, values = collect_kv(model, _calib_tokens(model, n_rows, seed))
        km, vm = keys.mean(2), values.mean(2)
    if not center:
        km = vm = torch.zeros(L, H, D, dtype=torch.float64)
    bases = []
    for x, mean in ((keys, km), (values, vm)) if need_data else ((None, km), (None, vm)):
        if select == "frequency":
            bases.append(c.expand(L, H, D, D).clone())
        else:  # energy of each DCT coefficient of the (centred) calibration vectors, largest first
            energy = ((x - mean[:, :, None]) @ c).pow(2).mean(2)  # (L, H, D)
            order = energy.argsort(-1, descending=True)
            bases.append(c[:, order].permute(1, 2, 0, 3))  # (D, L, H, D) -> (L, H, D, D)
    full = torch.full((L, H), D)
    proj = Projection(bases[0].float().contiguous(), bases[1].float().contiguous(), km.float(), vm.float(),
                      full, full.clone(), method="dct" if select == "frequency" else "dct-energy",
                      model_id=model.model_id, shared_basis=True,
                      info={"calibration_rows": n_rows if need_data else 0, "seed": seed, "center": center})
    return proj if rank is None else proj.with_rank(rank)


# ------------------------------------------------------------------------------------------------------
# MatryoshkaKV: Cayley-orthogonal bases trained with nested ranks
# ------------------------------------------------------------------------------------------------------


class _Trainable(torch.nn.Module):
    """U = U0 @ cayley(X - X^T) for keys and values, X initialised to 0 (U = U0 at step 0); trainable means."""

    def __init__(self, start: Projection) -> None:
        super().__init__()
        L, H, D = start.n_layers, start.n_heads, start.head_dim
        self.register_buffer("key_u0", start.key_basis.clone().float())
        self.register_buffer("value_u0", start.value_basis.clone().float())
        self.key_x = torch.nn.Parameter(torch.zeros(L, H, D, D))
        self.value_x = torch.nn.Parameter(torch.zeros(L, H, D, D))
        self.key_mean = torch.nn.Parameter(start.key_mean.clone().float())
        self.value_mean = torch.nn.Parameter(start.value_mean.clone().float())

    def bases(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.key_u0 @ cayley(self.key_x - self.key_x.transpose(-1, -2))
        v = self.value_u0 @ cayley(self.value_x - self.value_x.transpose(-1, -2))
        return k, v


def _kl_ce(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
           mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(teacher || student) per token over all positions, and CE on the masked targets. logits (B, T, V)."""
    logq = F.log_softmax(student, -1)
    logp = F.log_softmax(teacher, -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean()
    ce = F.nll_loss(logq[mask], targets[mask]) if bool(mask.any()) else student.sum() * 0
    return kl, ce


def train_matryoshka(model: TinyLM, steps: int = 300, minutes: float | None = 4.0, batch_size: int = 8,
                     lr: float = 2e-3, rank_step: int | None = None, kl_weight: float = 0.5,
                     ce_weight: float = 0.5, english_fraction: float = 0.5, seed: int = 0,
                     start: Projection | None = None, log_every: int = 10) -> tuple[Projection, list[dict]]:
    """MatryoshkaKV: train orthogonal bases (Cayley, started at PCA) with nested ranks, the model frozen.

    Each step draws, independently per (layer, kv-head, K|V), a rank from {s, 2s, ..., D} (s = rank_step,
    default D/8) and minimises ``kl_weight * KL(full model || projected) + ce_weight * CE`` on a fresh
    training batch (batch_size, context). Because a rank-r cut keeps the first r columns, one set of bases
    serves every rank. Stops after ``steps`` or ``minutes`` (None: no time cap).
    Returns (projection at full rank, history: list of {step, minutes, loss, kl, ce}).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"minutes must be > 0 or None, got {minutes!r}")
    D = model.config.head_dim
    rank_step = max(1, D // 8) if rank_step is None else rank_step
    if isinstance(rank_step, bool) or not isinstance(rank_step, int) or not 1 <= rank_step <= D:
        raise ValueError(f"rank_step must be in 1..{D}, got {rank_step!r}")
    start = pca_projection(model) if start is None else start
    start.check_model(model)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    choices = torch.arange(rank_step, D + 1, rank_step)
    if int(choices[-1]) != D:
        choices = torch.cat([choices, torch.tensor([D])])
    device = model.embed_tokens.weight.device
    params = _Trainable(start).to(device)
    opt = torch.optim.Adam(params.parameters(), lr=lr)
    L, H = start.n_layers, start.n_heads
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    before = model.layers[0].self_attn.kv_transform
    history: list[dict] = []
    t0 = time.perf_counter()
    step = 0
    try:
        while step < steps and (minutes is None or time.perf_counter() - t0 < minutes * 60):
            batch = corpus.training_batch(rng, batch_size, model.config.context, english_fraction)
            x = torch.from_numpy(batch.inputs).to(device)
            y = torch.from_numpy(batch.targets).to(device)
            mask = torch.from_numpy(batch.mask).to(device)
            with torch.no_grad():
                model.set_kv_transform(before)
                teacher = model(x)
            kr = choices[torch.randint(len(choices), (L, H))]
            vr = choices[torch.randint(len(choices), (L, H))]
            kb, vb = params.bases()

            def transform(layer, k, v, kb=kb, vb=vb, kr=kr, vr=vr):
                return (project(k, params.key_mean[layer], kb[layer], kr[layer]),
                        project(v, params.value_mean[layer], vb[layer], vr[layer]))

            model.set_kv_transform(transform)
            kl, ce = _kl_ce(model(x), teacher, y, mask)
            loss = kl_weight * kl + ce_weight * ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % log_every == 0 or step == 1:
                history.append({"step": step, "minutes": round((time.perf_counter() - t0) / 60, 4),
                                "loss": round(float(loss.detach()), 5), "kl": round(float(kl.detach()), 5),
                                "ce": round(float(ce.detach()), 5),
                                "mean_key_rank": float(kr.float().mean()),
                                "mean_value_rank": float(vr.float().mean())})
    finally:
        model.set_kv_transform(before)
        for p, g in zip(model.parameters(), frozen):
            p.requires_grad_(g)
        model.train(was_training)
    minutes_used = (time.perf_counter() - t0) / 60
    with torch.no_grad():
        kb, vb = params.bases()
    full = torch.full((L, H), D)
    proj = Projection(kb.detach().cpu(), vb.detach().cpu(), params.key_mean.detach().cpu(),
                      params.value_mean.detach().cpu(), full, full.clone(), method="matryoshka",
                      model_id=model.model_id,
                      info={"steps": step, "minutes": round(minutes_used, 3), "batch_size": batch_size, "lr": lr,
                            "rank_choices": choices.tolist(), "kl_weight": kl_weight, "ce_weight": ce_weight,
                            "english_fraction": english_fraction, "seed": seed, "start": start.method})
    return proj, history


# ------------------------------------------------------------------------------------------------------
# Greedy rate search
# ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _kl_to_full(model: TinyLM, projection: Projection, x: torch.Tensor, teacher_logp: torch.Tensor) -> float:
    with projection.applied(model):
        logq = F.log_softmax(model(x), -1)
    return float((teacher_logp.exp() * (teacher_logp - logq)).sum(-1).mean())


@torch.no_grad()
def rate_search(model: TinyLM, projection: Projection, budget: float, rank_step: int | None = None,
                min_rank: int = 1, cuts_per_round: int = 8, n_rows: int = 8, length: int = 64,
                seed: int = CALIBRATION_SEED + 1, start: RateMap | None = None,
                history: list | None = None) -> RateMap:
    """Greedy per-layer / per-head / K|V ranks meeting an average kept-fraction ``budget`` in (0, 1].

    From full rank (or ``start``), each round trial-cuts every (layer, head, K|V) rank by ``rank_step``
    (default D/8; never below ``min_rank`` >= 1), measures KL(full model || projected) on ``n_rows``
    calibration rows of ``length`` tokens, and commits the ``cuts_per_round`` cheapest cuts, one at a time,
    until ``projection.kept_fraction() <= budget``. ``cuts_per_round=1`` is the exact greedy.
    Returns the rate map {(layer, head): (r_k, r_v)}; appends {kept, kl} per round to ``history``.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget must be in (0, 1], got {budget!r}")
    projection.check_model(model)
    D = projection.head_dim
    rank_step = max(1, D // 8) if rank_step is None else rank_step
    if isinstance(rank_step, bool) or not isinstance(rank_step, int) or not 1 <= rank_step <= D:
        raise ValueError(f"rank_step must be in 1..{D}, got {rank_step!r}")
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or not 1 <= min_rank <= D:
        raise ValueError(f"min_rank must be in 1..{D}, got {min_rank!r}")
    if isinstance(cuts_per_round, bool) or not isinstance(cuts_per_round, int) or cuts_per_round < 1:
        raise ValueError(f"cuts_per_round must be a positive int, got {cuts_per_round!r}")
    L, H = projection.n_layers, projection.n_heads
    floor = min_rank / D
    if budget < floor:
        raise ValueError(f"budget must be >= min_rank / head_dim = {floor:.4f} (ranks never go below "
                         f"{min_rank}), got {budget}")
    current = projection.with_rank(D) if start is None else projection.with_rank(D).with_rate_map(start)
    batch = calibration_batch(model, n_rows, seed, length=length)
    x = torch.from_numpy(batch.inputs).to(model.embed_tokens.weight.device)
    before = model.layers[0].self_attn.kv_transform
    model.set_kv_transform(None)
    teacher = F.log_softmax(model(x), -1)
    model.set_kv_transform(before)
    while current.kept_fraction() > budget + 1e-12:
        trials = []
        for layer in range(L):
            for head in range(H):
                for which in (0, 1):
                    ranks = current.key_rank if which == 0 else current.value_rank
                    r = int(ranks[layer, head])
                    new = max(min_rank, r - rank_step)
                    if new == r:
                        continue
                    rk, rv = (new, int(current.value_rank[layer, head])) if which == 0 else (
                        int(current.key_rank[layer, head]), new)
                    cost = _kl_to_full(model, current.with_rate_map({(layer, head): (rk, rv)}), x, teacher)
                    trials.append((cost, layer, head, which, new))
        if not trials:  # everything at min_rank: cannot happen while budget >= floor
            break
        trials.sort()
        for _cost, layer, head, which, new in trials[:cuts_per_round]:
            rk, rv = int(current.key_rank[layer, head]), int(current.value_rank[layer, head])
            current = current.with_rate_map({(layer, head): (new, rv) if which == 0 else (rk, new)})
            if current.kept_fraction() <= budget + 1e-12:
                break
        if history is not None:
            history.append({"kept": round(current.kept_fraction(), 5), "kl": _kl_to_full(model, current, x, teacher)})
    return current.rate_map


# ------------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------------


def bits_per_char(model: TinyLM, projection: Projection | None, max_chars: int | None = None, **kw) -> float:
    """English bits/char of the held-out text (``labkit.train.english_bits_per_char``) under ``projection``
    (None: the full cache)."""
    from labkit.train import english_bits_per_char

    if projection is None:
        return english_bits_per_char(model, max_chars=max_chars, **kw)
    with projection.applied(model):
        return english_bits_per_char(model, max_chars=max_chars, **kw)


def lookup_accuracy(model: TinyLM, projection: Projection | None, n_pairs: int = 8, n_episodes: int = 500,
                    seed: int = 7_000_000) -> float:
    """Greedy exact match on fresh ``n_pairs``-pair lookups (``labkit.train.lookup_accuracy``) under ``projection``."""
    from labkit.train import lookup_accuracy as acc

    if projection is None:
        return acc(model, n_pairs, n_episodes, seed=seed)
    with projection.applied(model):
        return acc(model, n_pairs, n_episodes, seed=seed)


# ------------------------------------------------------------------------------------------------------
# Saving the trained bases
# ------------------------------------------------------------------------------------------------------


def save_matryoshka(projection: Projection, card: dict, folder: Path | str = ASSETS,
                    name: str = MATRYOSHKA_NAME) -> Path:
    """Write NAME.pt (bases, means and the rate map as fp32/int tensors) and NAME.json (``card``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"key_basis": projection.key_basis.float(), "value_basis": projection.value_basis.float(),
             "key_mean": projection.key_mean.float(), "value_mean": projection.value_mean.float(),
             "key_rank": projection.key_rank.to(torch.int16), "value_rank": projection.value_rank.to(torch.int16)}
    torch.save(state, folder / f"{name}.pt")
    card = {**card, "model_id": projection.model_id, "method": projection.method,
            "weights": f"{name}.pt: key/value_basis (L, H, D, D) fp32, key/value_mean (L, H, D), "
                       "key/value_rank (L, H): the rate-searched map"}
    (folder / f"{name}.json").write_text(json.dumps(card, indent=1) + "\n")
    return folder / f"{name}.pt"


def load_matryoshka(folder: Path | str = ASSETS, name: str = MATRYOSHKA_NAME) -> tuple[Projection, dict]:
    """The shipped MatryoshkaKV bases (ranks: the rate-searched map) and their card."""
    folder = Path(folder)
    path = folder / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no MatryoshkaKV bases at {path}: run `python -m labkit.kv.projection`")
    card = json.loads((folder / f"{name}.json").read_text())
    s = torch.load(path, map_location="cpu", weights_only=True)
    proj = Projection(s["key_basis"], s["value_basis"], s["key_mean"], s["value_mean"], s["key_rank"].long(),
                      s["value_rank"].long(), method="matryoshka", model_id=card.get("model_id", ""),
                      info=card.get("recipe", {}))
    return proj, card


# ------------------------------------------------------------------------------------------------------
# The script that makes the asset
# ------------------------------------------------------------------------------------------------------

FRACTIONS = (1.0, 0.75, 0.5, 0.4, 0.25)


def _measure(model: TinyLM, proj: Projection, max_chars: int | None, n_episodes: int) -> dict:
    return {"kept": round(proj.kept_fraction(), 4), "bytes_per_token": proj.nbytes_per_token(),
            "bpc": round(bits_per_char(model, proj, max_chars=max_chars), 4),
            "lookup": lookup_accuracy(model, proj, 8, n_episodes)}


def main(argv: list[str] | None = None) -> dict:
    """``python -m labkit.kv.projection [--minutes M] [--steps N] [--budget B] [--out DIR]``: train the
    MatryoshkaKV bases on the shipped tinylm, rate-search a budget, measure PCA / DCT / MatryoshkaKV, save."""
    from labkit.models import load

    parser = argparse.ArgumentParser(prog="python -m labkit.kv.projection", description=main.__doc__)
    parser.add_argument("--minutes", type=float, default=3.5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--kl-weight", type=float, default=0.5)
    parser.add_argument("--ce-weight", type=float, default=0.5)
    parser.add_argument("--cuts-per-round", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bpc-chars", type=int, default=8000, help="held-out chars for bits/char (0: all)")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    max_chars = args.bpc_chars or None
    model = load("tinylm")
    pca = pca_projection(model)
    mat, history = train_matryoshka(model, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                                    lr=args.lr, kl_weight=args.kl_weight, ce_weight=args.ce_weight, start=pca)
    print(f"trained {mat.info['steps']} steps in {mat.info['minutes']:.2f} min", flush=True)
    methods = {"pca": pca, "dct": dct_projection(model), "dct-energy": dct_projection(model, select="energy"),
               "matryoshka": mat}
    table: dict = {"full": {"bpc": round(bits_per_char(model, None, max_chars=max_chars), 4),
                            "lookup": lookup_accuracy(model, None, 8, args.episodes)}}
    for name, proj in methods.items():
        for f in FRACTIONS:
            table[f"{name}@{f}"] = row = _measure(model, proj.with_fraction(f), max_chars, args.episodes)
            print(name, f, row, flush=True)
    searched: dict = {}
    t = time.perf_counter()
    for name in ("pca", "matryoshka"):
        rates = rate_search(model, methods[name], args.budget, cuts_per_round=args.cuts_per_round)
        searched[name] = rates
        table[f"{name}@search{args.budget}"] = row = _measure(model, methods[name].with_rate_map(rates),
                                                             max_chars, args.episodes)
        print(name, "search", row, flush=True)
    search_minutes = (time.perf_counter() - t) / 60 / 2
    D = mat.head_dim
    r = max(1, round(args.budget * D))  # one side at the budget, the other at full rank
    for name in ("pca", "matryoshka"):
        table[f"{name}@keys-only{args.budget}"] = _measure(model, methods[name].with_rank((r, D)), max_chars,
                                                           args.episodes)
        table[f"{name}@values-only{args.budget}"] = _measure(model, methods[name].with_rank((D, r)), max_chars,
                                                             args.episodes)
    shipped = mat.with_rate_map(searched["matryoshka"])
    card = {
        "name": MATRYOSHKA_NAME, "model": "tinylm",
        "recipe": {**mat.info, "budget": args.budget,
                   "rate_search": {"rank_step": mat.head_dim // 8, "cuts_per_round": args.cuts_per_round,
                                   "n_rows": 8, "length": 64, "cost": "KL(full || projected)"}},
        "minutes": {"training": mat.info["minutes"], "rate_search_each": round(search_minutes, 3)},
        "metrics": table,
        "evaluation": {"bpc": f"held-out English, first {max_chars or 'all'} chars",
                       "lookup": f"8-pair, {args.episodes} episodes, seed 7_000_000"},
        "history": history,
        "rate_maps": {k: {f"{la},{h}": list(r) for (la, h), r in v.items()} for k, v in searched.items()},
        "provenance": {"command": "python -m labkit.kv.projection " + " ".join(sys.argv[1:] if argv is None else argv),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "threads": torch.get_num_threads()},
    }
    save_matryoshka(shipped, card, args.out)
    return card


if __name__ == "__main__":
    main()
