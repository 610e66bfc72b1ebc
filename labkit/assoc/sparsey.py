r"""A simplified Sparsey coding field (Rinkus, "Superposed Episodic and Semantic Memory via Sparse Distributed
Representation"): single-trial learning of sparse codes that preserve similarity.

The field has Q **competitive modules** (CMs) of K binary cells each; a code is one winner per CM, so a code is
a Q-tuple of winners (an SDR with Q of Q·K cells ON) and two codes' overlap is the fraction of CMs where they
pick the same cell (``code_overlap``). Inputs are binary vectors of ``n_in`` bits. Binary weights W (n_in, Q·K)
start at 0.

**Code selection** (our simplified version of Sparsey's code selection algorithm) for an input x with |x| ON bits:

1. input match of every cell, ``V_c = Σ_i x_i W_ic / |x|`` ∈ [0, 1] (the fraction of x's bits it has learned);
2. **familiarity** ``G = mean over CMs of max_c V_c`` ∈ [0, 1]: 1 for an input seen before, ≈ 0 for a novel one;
3. in each CM the winner is ``argmax_c (V_c + noise · (1 − G) · ε_c)``, ε_c ~ U(0, 1): noise proportional to
   the input's *novelty* 1 − G. A familiar input (G = 1) reactivates its old code exactly; a novel one
   (G = 0) gets a uniformly random code; in between, a similar input keeps the winners of its similar
   predecessor in a fraction of the CMs that grows with the similarity — **similarity preservation**.

**Learning** is single-trial and Hebbian: ``W_ic ← 1`` for every ON input bit i and winning cell c (one
presentation stores the item). **Retrieval** chooses the code without noise (best match: ``argmax V`` per CM),
and ``identify`` names the stored item whose code overlaps the retrieved code most.

With one stored item x and a probe x' sharing a fraction s of x's bits, the old winner has V = s, every other cell
V = 0 and G = s, so with ``t = s / (noise (1 − s))`` the old winner survives in a CM with probability
``(1 − t^K)/K + t`` for t < 1 and 1 beyond (``predicted_code_overlap``; 1/K at s = 0): the simulation checks it.

**Capacity.** Binary weights saturate: an item stored with a random code sets each weight (i, c) with probability
(w / n_in)(1 / K), so after P items a fraction ``1 − (1 − w/(n_in K))^P`` is set (``predicted_fill``). A novel
input then finds in every CM a cell that has learned many of its bits by chance, so its familiarity G rises, the
novelty noise fades and new items receive best-match codes that collide with old ones: recall collapses
(``recall_experiment``). Cells that already hold many items learn more bits and win more often (rich get richer),
so G of a novel input rises faster than independent weights would predict.

**Episodic and semantic memory in one field.** ``superposition_experiment`` stores exemplars of a few classes
(each a noisy copy of a class prototype that is never shown) once each and measures both at once: episodic —
every exemplar keeps a code of its own and is recalled from a noisy cue; semantic — codes of same-class
exemplars overlap more than codes of different classes, the never-seen prototype looks familiar (G ≈ 1) and new
exemplars are classified by their nearest stored code. The novelty-noise scale trades one for the other.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from labkit import data
from labkit.assoc.sdr import add_noise, random_sdrs
from labkit.runtime import progress

__all__ = [
    "SparseyField",
    "code_overlap",
    "identify",
    "predicted_code_overlap",
    "recall_experiment",
    "predicted_fill",
    "similar_input",
    "similarity_experiment",
    "superposition_experiment",
]


def _int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class SparseyField:
    """A coding field of Q competitive modules of K cells over inputs of ``n_in`` bits.

    noise >= 0 scales the novelty noise of code selection (0: always best match). seed: the field's own generator
    (its noise draws), so a run is reproducible. ``W``: (n_in, Q·K) bool; ``codes``: (P, Q) int64, the codes of the
    P stored items in order; ``inputs``: (P, n_in) bool.
    """

    def __init__(self, n_in: int, Q: int, K: int, noise: float = 3.0, seed: data.SeedLike = 0):
        self.n_in, self.Q, self.K = _int("n_in", n_in), _int("Q", Q), _int("K", K, low=2)
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < float("inf"):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.g = data.rng(seed)
        self.W = torch.zeros(self.n_in, self.Q * self.K, dtype=torch.bool)
        self.codes = torch.zeros(0, self.Q, dtype=torch.int64)
        self.inputs = torch.zeros(0, self.n_in, dtype=torch.bool)

    def _inputs(self, x) -> tuple[torch.Tensor, bool]:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.bool:
            raise TypeError(f"x must be a bool tensor of shape (n_in,) or (B, n_in), got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() not in (1, 2) or x.shape[-1] != self.n_in:
            raise ValueError(f"x must have shape (n_in,) or (B, n_in) with n_in = {self.n_in}, got {tuple(x.shape)}")
        vector = x.dim() == 1
        x = x[None] if vector else x
        if x.shape[0] and int(x.sum(1).min()) == 0:
            raise ValueError("x must have at least one ON bit in every row, got an empty input")
        return x, vector

    def familiarity(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (n_in,) or (B, n_in) bool -> (V: (B, Q, K) input match of every cell in [0, 1], G: (B,) familiarity)
        (B = 1 for a 1-D x)."""
        x, _ = self._inputs(x)
        if x.shape[0] == 1:  # one input (learning): add up the weight rows of its ON bits
            V = self.W[x[0]].sum(0, dtype=torch.float64)[None] / x.sum().double()
        else:
            V = (x.double() @ self.W.double()) / x.sum(1, keepdim=True).double()
        V = V.view(-1, self.Q, self.K)
        return V, V.amax(2).mean(1)

    def choose_code(self, x, learning: bool = True) -> torch.Tensor:
        """The code of each input: per CM ``argmax(V + noise (1 − G) ε)`` when ``learning``, ``argmax V`` (best
        match, ties to the lowest index) otherwise. Nothing is stored. Returns (Q,) or (B, Q) int64."""
        xb, vector = self._inputs(x)
        V, G = self.familiarity(xb)
        score = V
        if learning and self.noise > 0:
            eps = torch.from_numpy(self.g.random(V.shape))
            score = V + self.noise * (1.0 - G)[:, None, None] * eps
        code = score.argmax(2)
        return code[0] if vector else code

    def cells(self, code: torch.Tensor) -> torch.Tensor:
        """The flat cell indices ``q·K + code[q]`` of a code (Q,) or codes (B, Q)."""
        return code + torch.arange(self.Q) * self.K

    def learn(self, x) -> torch.Tensor:
        """Present one input (n_in,) once: choose its code (with novelty noise) and set ``W_ic = 1`` for its ON bits
        i and the winning cells c. Returns the code (Q,)."""
        xb, vector = self._inputs(x)
        if not vector:
            raise ValueError(f"learn takes one input of shape (n_in,), got {tuple(x.shape)}: use store")
        code = self.choose_code(xb, learning=True)[0]
        on = torch.nonzero(xb[0]).flatten()
        self.W[on[:, None], self.cells(code)[None, :]] = True
        self.codes = torch.cat([self.codes, code[None]])
        self.inputs = torch.cat([self.inputs, xb])
        return code

    def store(self, X) -> torch.Tensor:
        """Learn the rows of X (P, n_in) in order, one presentation each. Returns their codes (P, Q)."""
        X, _ = self._inputs(X)
        return torch.stack([self.learn(row) for row in X]) if X.shape[0] else torch.zeros(0, self.Q, dtype=torch.long)

    def retrieve(self, x) -> torch.Tensor:
        """The best-match code of x (no noise). Returns (Q,) or (B, Q)."""
        return self.choose_code(x, learning=False)


def code_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of CMs in which two codes pick the same cell. a, b: (…, Q) broadcast. Returns (…) float64."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"b must have Q = {a.shape[-1]} winners like a, got {b.shape[-1]}")
    return (a == b).double().mean(-1)


def identify(field: SparseyField, code: torch.Tensor) -> torch.Tensor:
    """The stored item whose code overlaps ``code`` most (ties to the first). code: (Q,) or (B, Q). Returns ()
    or (B,) int64."""
    if field.codes.shape[0] == 0:
        raise ValueError("field must hold at least one stored item, got none")
    vector = code.dim() == 1
    c = code[None] if vector else code
    best = code_overlap(c[:, None, :], field.codes[None, :, :]).argmax(1)
    return best[0] if vector else best


def predicted_code_overlap(s, K: int, noise: float) -> np.ndarray:
    """Expected code overlap between one stored item and a probe sharing a fraction ``s`` of its bits (the field
    holds only that item): with ``t = s / (noise (1 − s))``, ``(1 − t^K)/K + t`` for t < 1, else 1."""
    K = _int("K", K, low=2)
    s = np.asarray(s, dtype=float)
    if s.size and (s.min() < 0 or s.max() > 1):
        raise ValueError(f"s must lie in [0, 1], got {s.min()}..{s.max()}")
    if not noise > 0:
        raise ValueError(f"noise must be > 0, got {noise!r}")
    with np.errstate(divide="ignore"):
        t = np.where(s < 1, s / (noise * (1 - s)), np.inf)
    return np.where(t < 1, (1 - np.minimum(t, 1) ** K) / K + t, 1.0)


def similar_input(x: torch.Tensor, keep: int, seed: data.SeedLike = 0) -> torch.Tensor:
    """A copy of the SDR x (n,) or (B, n) that keeps ``keep`` of each row's w ON bits and moves the other w − keep
    to positions that were OFF: input overlap ``keep / w``."""
    w = int(x.sum(-1).max()) if x.numel() else 0
    if isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or not 0 <= keep <= w:
        raise ValueError(f"keep must be in 0..w = 0..{w}, got {keep!r}")
    return add_noise(x, w - int(keep), seed)


def similarity_experiment(n_in: int = 256, w: int = 32, Q: int = 16, K: int = 8, keeps: Sequence[int] | None = None,
                          n_items: int = 1, n_trials: int = 50, noise: float = 3.0,
                          seed: int = 0) -> dict[str, np.ndarray]:
    """Code overlap against input similarity. Store ``n_items`` random w-bit inputs (one presentation each), then
    for each ``keep`` (default 0..w in 9 steps) make ``n_trials`` probes sharing keep of an item's w bits and
    choose their codes in learning mode (with novelty noise; nothing stored). Returns {"similarity" (S,) =
    keep / w, "code_overlap" (S,) mean over probes, "se" (S,) its standard error, "predicted" (S,)
    (``predicted_code_overlap``, exact for n_items = 1), "chance" = 1/K}."""
    n_in, w = _int("n_in", n_in), _int("w", w)
    n_items, n_trials = _int("n_items", n_items), _int("n_trials", n_trials)
    keeps = np.unique(np.linspace(0, w, 9).round().astype(int)) if keeps is None else np.asarray(keeps, dtype=int)
    g = np.random.default_rng([seed, n_in, w, Q, K])
    field = SparseyField(n_in, Q, K, noise=noise, seed=g)
    items = random_sdrs(n_items, n_in, w, g)
    field.store(items)
    which = torch.from_numpy(g.integers(n_items, size=n_trials))
    out = {"similarity": keeps / w, "code_overlap": [], "se": []}
    for keep in progress(keeps, desc="Sparsey similarity"):
        probes = similar_input(items[which], int(keep), g)
        ov = code_overlap(field.choose_code(probes, learning=True), field.codes[which]).numpy()
        out["code_overlap"].append(ov.mean())
        out["se"].append(ov.std(ddof=1) / np.sqrt(n_trials) if n_trials > 1 else np.nan)
    out = {key: np.asarray(val) for key, val in out.items()}
    out["predicted"] = predicted_code_overlap(out["similarity"], K, noise)
    out["chance"] = 1.0 / K
    return out


def predicted_fill(P, n_in: int, w: int, K: int) -> np.ndarray:
    """Expected fraction of the binary weights set after storing P random w-bit inputs with random codes:
    ``1 − (1 − w / (n_in K))^P``. P: scalar or array. Returns like P (float)."""
    n_in, w, K = _int("n_in", n_in), _int("w", w), _int("K", K, low=2)
    if w > n_in:
        raise ValueError(f"w must be <= n_in = {n_in}, got {w}")
    P = np.asarray(P, dtype=float)
    return 1.0 - (1.0 - w / (n_in * K)) ** P


def recall_experiment(n_items: Sequence[int], n_in: int = 512, w: int = 32, Q: int = 16, K: int = 8,
                      moved: int | Sequence[int] = 4, n_probe: int = 100, noise: float = 3.0, n_seeds: int = 2,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Recall after one presentation, against the number of stored items. For each P in ``n_items``, store P random
    w-bit inputs once each in a fresh field, probe up to ``n_probe`` of them with ``moved`` of their bits moved and
    retrieve (best match). Returns {"n_items" (L,), "accuracy" (n_seeds, L): the retrieved code identifies the
    right item; "code_overlap" (n_seeds, L): mean overlap of the retrieved with the stored code; "distinct"
    (n_seeds, L): fraction of the stored codes that differ from every other (as binary weights saturate, novel
    inputs look familiar, get noise-free best-match codes and the codes collapse); "fill" (n_seeds, L): fraction
    of the weights set; "novel_G" (n_seeds, L): mean familiarity of 50 fresh random inputs}. A sequence of
    ``moved`` values probes the same fields at each noise level: "accuracy" and "code_overlap" are then
    (n_seeds, L, len(moved)) and "moved" holds the levels."""
    n_seeds, n_probe = _int("n_seeds", n_seeds), _int("n_probe", n_probe)
    Ps = [_int("n_items[i]", int(P)) for P in n_items]
    levels = np.atleast_1d(np.asarray(moved))
    many = np.ndim(moved) > 0
    levels = [_int("moved", int(m), low=0) for m in levels]
    out = {key: np.zeros((n_seeds, len(Ps), len(levels))) for key in ("accuracy", "code_overlap")}
    out.update({key: np.zeros((n_seeds, len(Ps))) for key in ("distinct", "fill", "novel_G")})
    for s in progress(range(n_seeds), desc="Sparsey recall"):
        for j, P in enumerate(Ps):
            g = np.random.default_rng([seed, s, P, n_in, w, Q, K])
            field = SparseyField(n_in, Q, K, noise=noise, seed=g)
            items = random_sdrs(P, n_in, w, g)
            field.store(items)
            which = torch.from_numpy(g.permutation(P)[: min(P, n_probe)])
            for m, k in enumerate(levels):
                code = field.retrieve(add_noise(items[which], k, g))
                out["accuracy"][s, j, m] = float((identify(field, code) == which).double().mean())
                out["code_overlap"][s, j, m] = float(code_overlap(code, field.codes[which]).mean())
            _, inverse, counts = torch.unique(field.codes, dim=0, return_inverse=True, return_counts=True)
            out["distinct"][s, j] = float((counts[inverse] == 1).double().mean())
            out["fill"][s, j] = float(field.W.double().mean())
            out["novel_G"][s, j] = float(field.familiarity(random_sdrs(50, n_in, w, g))[1].mean())
    if not many:
        out["accuracy"], out["code_overlap"] = out["accuracy"][..., 0], out["code_overlap"][..., 0]
    out["n_items"] = np.asarray(Ps)
    out["moved"] = np.asarray(levels) if many else levels[0]
    return out


def superposition_experiment(noises: Sequence[float], n_classes: int = 10, per_class: int = 10, keep: int = 20,
                             n_in: int = 2048, w: int = 32, Q: int = 20, K: int = 16, moved: int = 4,
                             n_new: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Episodic and semantic memory superposed in one field, against the novelty-noise scale.

    Data: ``n_classes`` random w-bit prototypes (never stored or shown); ``per_class`` exemplars of each keep
    ``keep`` of its prototype's bits (the rest moved at random). All exemplars are stored once each, in random
    order, in a fresh field per noise value (the same data for every noise). Returns, each (len(noises),):
    "distinct" fraction of stored codes unlike every other; "episodic" fraction of exemplars whose cue (``moved``
    bits moved) retrieves a code closest to its own stored code and to no other; "within" / "between" mean code
    overlap of two stored exemplars of the same / of different classes; "G_proto" mean familiarity of the unseen
    prototypes; "G_novel" of fresh random inputs; "semantic" accuracy of labelling ``n_new`` new exemplars per
    class by the class of their nearest stored code. Also "noise" (len(noises),), "chance" = 1/K and the input
    overlaps "input_within" / "input_between" (fractions of w shared by two exemplars)."""
    n_classes, per_class = _int("n_classes", n_classes, low=2), _int("per_class", per_class)
    n_new, moved = _int("n_new", n_new), _int("moved", moved, low=0)
    g = np.random.default_rng([seed, n_in, w, Q, K, n_classes, per_class, keep])
    protos = random_sdrs(n_classes, n_in, w, g)
    label = np.repeat(np.arange(n_classes), per_class)
    items = similar_input(protos[label], keep, g)
    new_label = np.repeat(np.arange(n_classes), n_new)
    new = similar_input(protos[new_label], keep, g)
    cues = add_noise(items, moved, g)
    novel = random_sdrs(50, n_in, w, g)
    order = torch.from_numpy(g.permutation(len(label)))
    same = torch.from_numpy(label[:, None] == label[None, :])
    off = ~torch.eye(len(label), dtype=torch.bool)
    inp = (items.double() @ items.double().T) / w
    keys = ("distinct", "episodic", "within", "between", "G_proto", "G_novel", "semantic")
    out = {key: [] for key in keys}
    for i, noise in enumerate(progress(list(noises), desc="Sparsey superposition")):
        field = SparseyField(n_in, Q, K, noise=float(noise), seed=np.random.default_rng([seed, i]))
        codes = torch.empty(len(label), Q, dtype=torch.int64)
        codes[order] = field.store(items[order])
        _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
        ov = code_overlap(field.retrieve(cues)[:, None, :], codes[None, :, :])
        top = ov.max(1, keepdim=True).values
        own = ov.diagonal()
        unique = (ov == top).sum(1) == 1
        stored_ov = code_overlap(codes[:, None, :], codes[None, :, :])
        nearest = code_overlap(field.retrieve(new)[:, None, :], codes[None, :, :]).argmax(1).numpy()
        for key, val in (("distinct", (counts[inverse] == 1).double().mean()),
                         ("episodic", ((own == top[:, 0]) & unique).double().mean()),
                         ("within", stored_ov[same & off].mean()), ("between", stored_ov[~same].mean()),
                         ("G_proto", field.familiarity(protos)[1].mean()),
                         ("G_novel", field.familiarity(novel)[1].mean()),
                         ("semantic", np.mean(label[nearest] == new_label))):
            out[key].append(float(val))
    result = {key: np.asarray(val) for key, val in out.items()}
    result.update(noise=np.asarray(noises, dtype=float), chance=1.0 / K,
                  input_within=float(inp[same & off].mean()), input_between=float(inp[~same].mean()))
    return result
