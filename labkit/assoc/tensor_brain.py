r"""A small working model of the Tensor Brain (Tresp, Sharifzadeh, Konopatzki & Ma, "The Tensor Brain:
Semantic Decoding for Perception and Memory").

The paper's architecture has an **index layer** (one unit per symbol: entities, classes and attributes,
predicates, time instances; each index i owns an embedding vector a_i) and a **representation layer** q ∈ R^n,
the memoryless "blackboard" of the cognitive brain state. Perception writes q bottom-up from the senses; **semantic
decoding** reads it back as symbols with a softmax over the index layer,

    p(i | q) = softmax_i(β a_iᵀ q),

serially: first a subject, then predicates and objects, each decoded index feeding its embedding back into q
before the next step, so that a scene comes out as subject–predicate–object (SPO) triples. Memory uses the same
layers: an **episodic memory** is a time index t whose embedding a_t stores the representation q_t of that
moment (recall = restore q ← a_t and decode again); **semantic memory** is what the entity embeddings generalize
across episodes, the prior for the triples one observes. The paper's basic decoder has four layers: a sensory
buffer, the representation layer, the index layer and a working memory; here the sensory buffer is the noisy
input of ``perceive`` and the working memory is the list of decoded triples (and the saved q) ``decode`` returns.
The paper is conceptual (no reference implementation); the choices below are ours and are stated as such.

**Our model.** A generated world (``make_world``): entities with stable facts (``is_a`` a class, ``has_color``)
and episodes (subject, plus ``located_in``, ``does``, ``feels`` drawn per episode; each entity has a favourite
place, its habit). Every symbol has a random unit embedding (nearly orthogonal in n dimensions); a predicate p
also owns an orthogonal **binding matrix** R_p (MBAT's binding, ``labkit.assoc.mbat``) that marks its object's
role. A scene with subject s and one object o_p per predicate is represented as

    q = u_s + Σ_p (a_p + R_p a_{o_p})                 (``TensorBrain.represent``; u_s = s's identity vector)

and perception adds sensory noise of norm σ (``perceive``). Serial decoding (``decode``):

1. subject ``s = argmax_s softmax(β a_sᵀ q)``; embodiment ``q ← q + α a_s`` (the decoded index writes its
   embedding back: with semantic memory in a_s, this adds the prior);
2. predicates in order of ``a_pᵀ q`` (those above ``threshold``); for each, the object is read from the
   role-unbound state ``q_p = R_pᵀ q``: ``o = argmax_o softmax(β a_oᵀ q_p)``;
3. explaining away: ``q ← q − a_p − R_p a_o`` before the next predicate.

The paper lets learned nonlinear layers make each decoded symbol depend on the previous ones; our untrained
linear stand-in gets that dependence from role binding. With unit components, the crosstalk on one read-out has
standard deviation ≈ sqrt(k/n) for k superposed components, so decoding is near perfect at n = 256.

**Semantic memory** (``consolidate``): a_s ← the mean representation of s over its episodes. Stable facts keep
weight 1, episodic objects average to their frequencies, so the bilinear score ``a_sᵀ R_p a_o``
(``semantic_tensor``) is an estimate of the adjacency tensor X[s, p, o] of the knowledge graph — the RESCAL
factorization (Nickel, Tresp & Kriegel 2011) in which the embeddings are the index layer. Decoding a_s alone
recalls the stable facts and, for an episodic predicate, the habit.

**Episodic memory** (``store_episodes``): one time index per episode, a_t = q_t. Recall by time restores
q ← a_t. Recall by content is one softmax over the time indices followed by a restore,

    q ← Σ_t softmax_t(β a_tᵀ q_cue) a_t  =  ``labkit.assoc.hopfield.modern_retrieve(A_time, q_cue, β)``,

a single modern-Hopfield / attention step with keys = values = the stored states (``recall_by_cue``). The same
layout is the chapter's CA3 memory (one cue population per memory = the index, the content population = the
representation) and MBAT's records (superposed role–filler bindings).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from labkit import data
from labkit.assoc.hopfield import modern_retrieve
from labkit.assoc.mbat import binding_matrix
from labkit.runtime import progress

__all__ = [
    "EPISODIC",
    "PREDICATES",
    "SEMANTIC",
    "TensorBrain",
    "TensorBrainWorld",
    "episodic_experiment",
    "index_posterior",
    "make_world",
    "perception_experiment",
    "semantic_experiment",
]

PREDICATES = ("is_a", "has_color", "located_in", "does", "feels")
SEMANTIC = (0, 1)  # predicates whose object is a stable property of the subject
EPISODIC = (2, 3, 4)  # predicates whose object changes from episode to episode
_RANGES = {
    "is_a": ("cat", "dog", "bird", "horse", "fox"),
    "has_color": ("black", "white", "brown", "grey", "red", "golden"),
    "located_in": ("garden", "kitchen", "barn", "meadow", "forest", "river", "road", "attic"),
    "does": ("sleeps", "eats", "runs", "plays", "hides", "sings", "digs", "swims"),
    "feels": ("happy", "hungry", "tired", "scared", "curious", "calm"),
}
_NAMES = ("Ada", "Bo", "Cleo", "Dax", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lou", "Max", "Nia", "Oz",
          "Pip", "Quin", "Rex", "Sol", "Tia", "Uma", "Vic", "Wren", "Xo", "Yul", "Zed")


def _int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _real(name: str, value, low: float = 0.0, high: float = math.inf, inclusive_high: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and low <= value
    ok = ok and (value <= high if inclusive_high else value < high)
    if not ok:
        raise ValueError(f"{name} must be a number in [{low}, {high}{']' if inclusive_high else ')'}, got {value!r}")
    return float(value)


def _beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
        raise ValueError(f"beta must be a number > 0 (math.inf = argmax), got {beta!r}")
    return float(beta)


# --------------------------------------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------------------------------------


@dataclass
class TensorBrainWorld:
    """A generated world. ``concepts``: every object symbol (the ranges of the predicates, concatenated);
    ``ranges[p]``: the concept indices predicate p takes; ``semantic``: (E, 2) the stable objects (is_a,
    has_color) of each entity; ``habit``: (E,) each entity's favourite location (a concept index);
    ``episodes``: the subject (T,) and the object per predicate (T, 5) of each episode, in time order."""

    entities: list[str]
    concepts: list[str]
    predicates: tuple[str, ...]
    ranges: list[np.ndarray]
    semantic: np.ndarray
    habit: np.ndarray
    subjects: np.ndarray
    facts: np.ndarray
    meta: dict = field(default_factory=dict)

    def triples(self, t: int) -> list[tuple[str, str, str]]:
        """The SPO triples of episode t, as names."""
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < len(self.subjects):
            raise ValueError(f"t must be an episode index in 0..{len(self.subjects) - 1}, got {t!r}")
        s = self.entities[self.subjects[t]]
        return [(s, p, self.concepts[self.facts[t, j]]) for j, p in enumerate(self.predicates)]


def make_world(n_entities: int = 20, n_episodes: int = 200, habit: float = 0.6,
               seed: data.SeedLike = 0) -> TensorBrainWorld:
    """Entities with a class and a colour (stable), episodes with a place, an activity and a mood (each episode's
    place is the subject's favourite with probability ``habit``, else uniform; activity and mood uniform).
    Subjects of the episodes cycle through the entities in a random order (every entity gets ⌊T/E⌋ or more)."""
    n_entities = _int("n_entities", n_entities)
    n_episodes = _int("n_episodes", n_episodes)
    habit = _real("habit", habit, 0.0, 1.0, inclusive_high=True)
    if n_entities > 26 * 26:
        raise ValueError(f"n_entities must be <= {26 * 26}, got {n_entities}")
    g = data.rng(seed)
    names = [_NAMES[i % 26] + ("" if i < 26 else str(i // 26)) for i in range(n_entities)]
    concepts, ranges = [], []
    for p in PREDICATES:
        ranges.append(np.arange(len(concepts), len(concepts) + len(_RANGES[p])))
        concepts += list(_RANGES[p])
    semantic = np.stack([g.choice(ranges[0], n_entities), g.choice(ranges[1], n_entities)], 1)
    favourite = g.choice(ranges[2], n_entities)
    order = np.concatenate([g.permutation(n_entities) for _ in range(n_episodes // n_entities + 1)])[:n_episodes]
    facts = np.zeros((n_episodes, len(PREDICATES)), dtype=np.int64)
    facts[:, :2] = semantic[order]
    usual = g.random(n_episodes) < habit
    facts[:, 2] = np.where(usual, favourite[order], g.choice(ranges[2], n_episodes))
    facts[:, 3] = g.choice(ranges[3], n_episodes)
    facts[:, 4] = g.choice(ranges[4], n_episodes)
    return TensorBrainWorld(names, concepts, PREDICATES, ranges, semantic, favourite, order.astype(np.int64), facts,
                            {"habit": habit, "usual": usual})


# --------------------------------------------------------------------------------------------------------
# the index layer read
# --------------------------------------------------------------------------------------------------------


def index_posterior(q, A, beta: float) -> torch.Tensor:
    """The index layer's read of a representation: ``p(i | q) = softmax_i(β a_iᵀ q)``. q: (n,) or (B, n); A: (I, n),
    the embeddings as rows; beta > 0 (``math.inf``: one-hot on the argmax). Returns (I,) or (B, I). The same
    weights are the attention weights of one modern-Hopfield step with keys A."""
    beta = _beta(beta)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] < 1:
        raise ValueError(f"A must be an (I, n) tensor of embeddings with I >= 1, got {tuple(getattr(A, 'shape', ()))}")
    q = torch.as_tensor(q, dtype=A.dtype)
    if q.dim() not in (1, 2) or q.shape[-1] != A.shape[1]:
        raise ValueError(f"q must have shape (n,) or (B, n) with n = {A.shape[1]}, got {tuple(q.shape)}")
    scores = q @ A.T
    if math.isinf(beta):
        return torch.nn.functional.one_hot(scores.argmax(-1), A.shape[0]).to(A.dtype)
    return torch.softmax(beta * scores, dim=-1)


def _choose(probs: torch.Tensor, mode: str, g: np.random.Generator) -> torch.Tensor:
    if mode == "argmax":
        return probs.argmax(-1)
    cdf = probs.cumsum(-1)
    u = torch.from_numpy(g.random((probs.shape[0], 1))).to(probs.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp(max=probs.shape[1] - 1)


# --------------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------------


class TensorBrain:
    """Index layer + representation layer over a ``TensorBrainWorld``.

    Embeddings (float64, unit norm, rows): ``identity`` (E, n) each entity's sensory identity u_s; ``entity`` (E, n)
    the entity index embeddings a_s used for decoding (= identity until ``consolidate`` adds semantic memory);
    ``concept`` (C, n); ``predicate`` (5, n); ``R`` (5, n, n) orthogonal role matrices; ``time`` (T, n) the
    episodic memory (empty until ``store_episodes``).
    """

    def __init__(self, world: TensorBrainWorld, n: int = 256, seed: data.SeedLike = 0):
        if not isinstance(world, TensorBrainWorld):
            raise ValueError(f"world must be a TensorBrainWorld (make_world), got {type(world).__name__}")
        self.world = world
        self.n = _int("n", n, low=8)
        g = data.rng(seed)

        def unit(k: int) -> torch.Tensor:
            x = torch.from_numpy(g.standard_normal((k, self.n)))
            return x / x.norm(dim=1, keepdim=True)

        self.identity = unit(len(world.entities))
        self.entity = self.identity.clone()
        self.concept = unit(len(world.concepts))
        self.predicate = unit(len(world.predicates))
        self.R = torch.stack([binding_matrix(self.n, "orthogonal", g) for _ in world.predicates])
        self.time = torch.zeros(0, self.n, dtype=torch.float64)

    # ---- perception --------------------------------------------------------------------------------------

    def _scenes(self, subjects, facts) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.as_tensor(np.asarray(subjects), dtype=torch.int64).reshape(-1)
        f = torch.as_tensor(np.asarray(facts), dtype=torch.int64)
        f = f[None] if f.dim() == 1 else f
        P = len(self.world.predicates)
        if f.dim() != 2 or f.shape != (s.shape[0], P):
            raise ValueError(f"facts must have shape (B, {P}) matching {s.shape[0]} subjects, got {tuple(f.shape)}")
        if s.numel() and (s.min() < 0 or s.max() >= len(self.world.entities)):
            raise ValueError(f"subjects must be entity indices in 0..{len(self.world.entities) - 1}, got {s.tolist()}")
        known = f >= 0
        if known.any() and int(f[known].max()) >= len(self.world.concepts):
            raise ValueError(f"facts must be concept indices in 0..{len(self.world.concepts) - 1} (or -1: unknown)")
        return s, f

    def represent(self, subjects, facts) -> torch.Tensor:
        """The noise-free cognitive state of scenes: ``q = u_s + Σ_p (a_p + R_p a_{o_p})`` over the predicates with a
        known object (facts entry −1 = not in the scene: a partial scene, e.g. a memory cue). subjects: (B,) entity
        indices; facts: (B, 5) concept indices or −1. Returns (B, n)."""
        s, f = self._scenes(subjects, facts)
        q = self.identity[s].clone()
        for p in range(len(self.world.predicates)):
            known = f[:, p] >= 0
            if known.any():
                o = self.concept[f[known, p]]
                q[known] += self.predicate[p] + o @ self.R[p].T
        return q

    def perceive(self, subjects, facts, noise: float = 0.0, seed: data.SeedLike = 0) -> torch.Tensor:
        """Bottom-up perception: ``represent`` plus Gaussian sensory noise of expected norm ``noise`` (in units of one
        symbol's embedding; each read-out then sees noise of std noise/sqrt(n)). Returns (B, n)."""
        noise = _real("noise", noise)
        q = self.represent(subjects, facts)
        g = data.rng(seed)
        return q + noise / math.sqrt(self.n) * torch.from_numpy(g.standard_normal(tuple(q.shape)))

    # ---- semantic decoding -------------------------------------------------------------------------------

    def _by_role(self, x: torch.Tensor, p: torch.Tensor, transpose: bool) -> torch.Tensor:
        """Row b of x times R_{p_b}ᵀ (unbind, transpose=True) or R_{p_b} (bind), grouped by predicate."""
        out = torch.empty_like(x)
        for j in range(self.R.shape[0]):
            rows = p == j
            if rows.any():
                out[rows] = x[rows] @ (self.R[j] if transpose else self.R[j].T)
        return out

    def decode(self, q, beta: float = math.inf, alpha: float = 0.0, threshold: float = 0.5, mode: str = "argmax",
               seed: data.SeedLike = 0, subjects=None) -> dict[str, torch.Tensor]:
        """Serial semantic decoding of representations into triples (the steps in the module docstring).

        q: (n,) or (B, n). beta: inverse temperature of every softmax (``math.inf`` = argmax); alpha: embodiment
        gain (q ← q + α a_s after the subject); threshold: a predicate is decoded while ``a_pᵀ q`` exceeds it;
        mode "argmax" or "sample" (draw each symbol from its softmax); subjects: (B,) to skip step 1 (the subject
        is given, e.g. a question about it). Returns {"subject" (B,), "objects" (B, 5) concept indices (−1: the
        predicate was not decoded), "order" (B, 5) the predicates in decoding order (−1 padding), "p_subject"
        (B,) the subject's softmax probability, "p_object" (B, 5)}.
        """
        beta, alpha, threshold = _beta(beta), _real("alpha", alpha), float(threshold)
        if mode not in ("argmax", "sample"):
            raise ValueError(f"mode must be 'argmax' or 'sample', got {mode!r}")
        q = torch.as_tensor(q, dtype=torch.float64)
        if q.dim() not in (1, 2) or q.shape[-1] != self.n:
            raise ValueError(f"q must have shape (n,) or (B, n) with n = {self.n}, got {tuple(q.shape)}")
        q = (q[None] if q.dim() == 1 else q).clone()
        B, P = q.shape[0], len(self.world.predicates)
        g = data.rng(seed)
        if subjects is None:
            ps = index_posterior(q, self.entity, beta)
            s = _choose(ps, mode, g)
        else:
            s, _ = self._scenes(subjects, -np.ones((len(np.atleast_1d(subjects)), P), dtype=np.int64))
            if s.shape[0] != B:
                raise ValueError(f"subjects must hold one entity per row of q ({B}), got {s.shape[0]}")
            ps = index_posterior(q, self.entity, beta)
        p_subject = ps.gather(1, s[:, None])[:, 0]
        q = q + alpha * self.entity[s]
        objects = torch.full((B, P), -1, dtype=torch.int64)
        order = torch.full((B, P), -1, dtype=torch.int64)
        p_object = torch.zeros(B, P, dtype=torch.float64)
        active = torch.ones(B, P, dtype=torch.bool)
        rows = torch.arange(B)
        for step in range(P):
            score = torch.where(active, q @ self.predicate.T, -math.inf)
            best, p = score.max(1)
            go = best > threshold
            if not go.any():
                break
            qp = self._by_role(q, p, transpose=True)  # R_pᵀ q, row by row
            po = index_posterior(qp, self.concept, beta)
            o = _choose(po, mode, g)
            objects[rows[go], p[go]] = o[go]
            order[rows[go], step] = p[go]
            p_object[rows[go], p[go]] = po[rows, o][go]
            active[rows, p] = False
            bound = self.predicate[p] + self._by_role(self.concept[o], p, transpose=False)
            q = q - go[:, None].to(q.dtype) * bound
        return {"subject": s, "objects": objects, "order": order, "p_subject": p_subject, "p_object": p_object}

    # ---- memory ------------------------------------------------------------------------------------------

    def consolidate(self, q, subjects) -> None:
        """Semantic memory: every entity's index embedding becomes the mean of the representations of its episodes
        (``a_s ← mean_t q_t``; entities without an episode keep their identity). q: (T, n); subjects: (T,)."""
        q = torch.as_tensor(q, dtype=torch.float64)
        s = torch.as_tensor(np.asarray(subjects), dtype=torch.int64).reshape(-1)
        if q.dim() != 2 or q.shape != (s.shape[0], self.n):
            raise ValueError(f"q must have shape (T, {self.n}) with one subject per row, got {tuple(q.shape)}")
        if s.numel() and (s.min() < 0 or s.max() >= len(self.world.entities)):
            raise ValueError(f"subjects must be entity indices in 0..{len(self.world.entities) - 1}")
        E = len(self.world.entities)
        total = torch.zeros(E, self.n, dtype=torch.float64).index_add_(0, s, q)
        count = torch.bincount(s, minlength=E).to(torch.float64)
        seen = count > 0
        self.entity = self.identity.clone()
        self.entity[seen] = total[seen] / count[seen, None]

    def semantic_tensor(self) -> torch.Tensor:
        """The bilinear (RESCAL) scores ``X̂[s, p, o] = a_sᵀ R_p a_o`` of the current entity embeddings: (E, 5, C).
        After ``consolidate`` this estimates how often (s, p, o) held across the episodes."""
        return torch.einsum("sn,pnm,om->spo", self.entity, self.R, self.concept)

    def store_episodes(self, q) -> None:
        """Episodic memory: one time index per row of q (T, n), its embedding a_t = q_t (one-shot storage)."""
        q = torch.as_tensor(q, dtype=torch.float64)
        if q.dim() != 2 or q.shape[1] != self.n or q.shape[0] < 1:
            raise ValueError(f"q must have shape (T, {self.n}) with T >= 1, got {tuple(q.shape)}")
        self.time = q.clone()

    def recall_time(self, t) -> torch.Tensor:
        """Recall by time index: restore ``q ← a_t``. t: int or (B,) indices. Returns (n,) or (B, n)."""
        T = self.time.shape[0]
        idx = torch.as_tensor(np.asarray(t), dtype=torch.int64)
        if T == 0:
            raise ValueError("no episodes stored: call store_episodes first")
        if idx.numel() and (idx.min() < 0 or idx.max() >= T):
            raise ValueError(f"t must be time indices in 0..{T - 1}, got {idx.tolist()}")
        return self.time[idx].clone()

    def recall_by_cue(self, cue, beta: float) -> torch.Tensor:
        """Recall by content: ``q ← Σ_t softmax_t(β a_tᵀ cue) a_t``, one modern-Hopfield step over the time index
        (``labkit.assoc.hopfield.modern_retrieve`` with the stored states as keys and values). cue: (n,) or (B, n)."""
        if self.time.shape[0] == 0:
            raise ValueError("no episodes stored: call store_episodes first")
        return modern_retrieve(self.time, torch.as_tensor(cue, dtype=torch.float64), _beta(beta))


# --------------------------------------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------------------------------------


def _accuracy(out: dict, subjects: np.ndarray, facts: np.ndarray) -> dict[str, float]:
    s_ok = out["subject"].numpy() == subjects
    o_ok = out["objects"].numpy() == facts
    return {"subject": float(s_ok.mean()), "semantic": float(o_ok[:, list(SEMANTIC)].mean()),
            "episodic": float(o_ok[:, list(EPISODIC)].mean()),
            "scene": float((s_ok & o_ok.all(1)).mean())}


def perception_experiment(noises: Sequence[float], n: int = 256, alphas: Sequence[float] = (0.0, 1.0),
                          n_entities: int = 20, n_episodes: int = 400, n_test: int = 400, beta: float = math.inf,
                          n_seeds: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Triple decoding accuracy from noisy perception, with and without the semantic prior.

    Per seed: a world, a brain whose semantic memory is consolidated from the noise-free representations of
    ``n_episodes`` training episodes, and ``n_test`` new episodes (same entities, fresh places/activities/moods)
    perceived with sensory noise of norm σ and decoded serially with embodiment gain α (0: no prior).
    Returns {"noise" (L,), "alpha" (A,), "subject"/"semantic"/"episodic"/"scene": (n_seeds, A, L) accuracies,
    "usual_episodic"/"unusual_place": (n_seeds, A, L) place accuracy on test episodes at the favourite place and
    elsewhere}.
    """
    noises = np.asarray(noises, dtype=float)
    if noises.ndim != 1 or noises.size == 0 or noises.min() < 0:
        raise ValueError(f"noises must be a non-empty 1-D sequence of numbers >= 0, got {noises!r}")
    alphas = [_real("alpha", a) for a in alphas]
    n_seeds, n_test = _int("n_seeds", n_seeds), _int("n_test", n_test)
    keys = ("subject", "semantic", "episodic", "scene", "usual_place", "unusual_place")
    out = {k: np.zeros((n_seeds, len(alphas), len(noises))) for k in keys}
    for sd in progress(range(n_seeds), desc="tensor brain perception"):
        g = np.random.default_rng([seed, sd, 1])
        world = make_world(n_entities, n_episodes + n_test, seed=g)
        brain = TensorBrain(world, n, seed=g)
        train, test = slice(0, n_episodes), slice(n_episodes, None)
        brain.consolidate(brain.represent(world.subjects[train], world.facts[train]), world.subjects[train])
        subj, facts = world.subjects[test], world.facts[test]
        usual = world.meta["usual"][test]
        for j, sigma in enumerate(noises):
            q = brain.perceive(subj, facts, float(sigma), seed=np.random.default_rng([seed, sd, j, 2]))
            for a, alpha in enumerate(alphas):
                res = brain.decode(q, beta=beta, alpha=alpha)
                for k, v in _accuracy(res, subj, facts).items():
                    out[k][sd, a, j] = v
                place_ok = res["objects"][:, 2].numpy() == facts[:, 2]
                out["usual_place"][sd, a, j] = float(place_ok[usual].mean()) if usual.any() else math.nan
                out["unusual_place"][sd, a, j] = float(place_ok[~usual].mean()) if (~usual).any() else math.nan
    out["noise"], out["alpha"] = noises, np.asarray(alphas)
    return out


def semantic_experiment(episodes_per_entity: Sequence[int], n: int = 256, n_entities: int = 20, habit: float = 0.6,
                        noise: float = 2.0, n_seeds: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """What semantic memory generalizes across episodes, against the number of episodes per entity.

    Per seed and count k: a world with k·E episodes, perceived with sensory noise ``noise`` and consolidated.
    Returns {"k" (L,), and (n_seeds, L) each: "stable" the fraction of stable facts (class, colour) recalled by
    decoding each entity's embedding alone (q = a_s, subject given); "habit" the fraction of entities whose
    top-scoring place in ``semantic_tensor`` (X̂[s, located_in, ·] over the places) is their favourite;
    "episodic_in_semantic" the fraction of (entity, activity/mood) pairs whose top-scoring value is the most
    frequent one in the entity's episodes (without a habit, agreement is mostly chance); "tensor_corr" the
    correlation between ``semantic_tensor`` and the empirical frequencies of (s, p, o), within each predicate's
    range}.
    """
    ks = [_int("episodes_per_entity", k) for k in episodes_per_entity]
    if not ks:
        raise ValueError("episodes_per_entity must hold at least one count")
    n_seeds = _int("n_seeds", n_seeds)
    keys = ("stable", "habit", "episodic_in_semantic", "tensor_corr")
    out = {k: np.zeros((n_seeds, len(ks))) for k in keys}
    for sd in progress(range(n_seeds), desc="tensor brain semantic memory"):
        for j, k in enumerate(ks):
            g = np.random.default_rng([seed, sd, j, 3])
            world = make_world(n_entities, k * n_entities, habit=habit, seed=g)
            brain = TensorBrain(world, n, seed=g)
            q = brain.perceive(world.subjects, world.facts, noise, seed=g)
            brain.consolidate(q, world.subjects)
            E = len(world.entities)
            res = brain.decode(brain.entity, subjects=np.arange(E))
            objs = res["objects"].numpy()
            out["stable"][sd, j] = float((objs[:, list(SEMANTIC)] == world.semantic).mean())
            freq = np.zeros((E, len(PREDICATES), len(world.concepts)))
            for t in range(len(world.subjects)):
                freq[world.subjects[t], np.arange(len(PREDICATES)), world.facts[t]] += 1
            freq /= np.maximum(freq.sum(2, keepdims=True), 1)
            X = brain.semantic_tensor().numpy()
            places = world.ranges[2]
            out["habit"][sd, j] = float((places[X[:, 2, places].argmax(1)] == world.habit).mean())
            agree = [world.ranges[p][X[:, p, world.ranges[p]].argmax(1)] == freq[:, p].argmax(1) for p in (3, 4)]
            out["episodic_in_semantic"][sd, j] = float(np.mean(agree))
            mask = np.zeros_like(freq, dtype=bool)
            for p, rng in enumerate(world.ranges):
                mask[:, p, rng] = True  # compare within each predicate's range
            out["tensor_corr"][sd, j] = float(np.corrcoef(X[mask], freq[mask])[0, 1])
    out["k"] = np.asarray(ks)
    return out


def episodic_experiment(n_stored: Sequence[int], betas: Sequence[float], n: int = 256, n_entities: int = 20,
                        noise: float = 1.0, n_probe: int = 200, n_seeds: int = 2, seed: int = 0) -> dict:
    """Episodic recall by content against the number of stored episodes and β.

    Per seed and count T: a world of T episodes perceived with sensory noise ``noise`` and stored one per time
    index. A probe cues an episode with its subject, place and activity (``represent`` with the mood unknown)
    and asks for the mood: recall by cue (one softmax over the time indices, ``recall_by_cue``), then decode
    the mood from the restored state with the subject given. Returns {"T" (L,), "beta" (K,), "recall": (n_seeds,
    K, L) fraction of probes whose mood is recalled, "recall_unique" (same, over the probes with a unique cue),
    "time_hit": (n_seeds, K, L) fraction whose most probable time
    index is the cued episode, "unique": (n_seeds, L) fraction of probes whose cue matches a single stored
    episode (another episode with the same subject, place and activity makes the question ambiguous),
    "by_time": (n_seeds, L) mood accuracy of recall by time index (restore a_t and decode)}.
    """
    Ts = [_int("n_stored", T) for T in n_stored]
    betas = [_beta(b) for b in betas]
    if not Ts or not betas:
        raise ValueError("n_stored and betas must each hold at least one value")
    n_seeds, n_probe = _int("n_seeds", n_seeds), _int("n_probe", n_probe)
    out = {k: np.zeros((n_seeds, len(betas), len(Ts))) for k in ("recall", "recall_unique", "time_hit")}
    out.update(unique=np.zeros((n_seeds, len(Ts))), by_time=np.zeros((n_seeds, len(Ts))))
    for sd in progress(range(n_seeds), desc="tensor brain episodic memory"):
        for j, T in enumerate(Ts):
            g = np.random.default_rng([seed, sd, j, 4])
            world = make_world(n_entities, T, seed=g)
            brain = TensorBrain(world, n, seed=g)
            brain.store_episodes(brain.perceive(world.subjects, world.facts, noise, seed=g))
            probe = g.choice(T, min(n_probe, T), replace=False)
            cue_facts = world.facts[probe].copy()
            cue_facts[:, :2] = -1  # the cue: subject + place + activity (stable facts not needed)
            cue_facts[:, 4] = -1
            cue = brain.represent(world.subjects[probe], cue_facts)
            key = world.subjects * 10_000 + world.facts[:, 2] * 100 + world.facts[:, 3]
            unique = np.array([(key == key[t]).sum() == 1 for t in probe])
            out["unique"][sd, j] = float(unique.mean())
            restored = brain.decode(brain.recall_time(probe), subjects=world.subjects[probe])
            out["by_time"][sd, j] = float((restored["objects"][:, 4].numpy() == world.facts[probe, 4]).mean())
            for b, beta in enumerate(betas):
                w = index_posterior(cue, brain.time, beta)
                out["time_hit"][sd, b, j] = float((w.argmax(1).numpy() == probe).mean())
                q = brain.recall_by_cue(cue, beta)
                res = brain.decode(q, subjects=world.subjects[probe])
                ok = res["objects"][:, 4].numpy() == world.facts[probe, 4]
                out["recall"][sd, b, j] = float(ok.mean())
                out["recall_unique"][sd, b, j] = float(ok[unique].mean()) if unique.any() else math.nan
    out["T"], out["beta"] = np.asarray(Ts), np.asarray(betas)
    return out
