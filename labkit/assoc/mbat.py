r"""MBAT, Matrix Binding of Additive Terms (Gallant & Okaywe, "Representing Objects, Relations, and Sequences";
Gallant, "Orthogonal Matrices for MBAT Vector Symbolic Architectures, and a 'Soft' VSA Representation for JSON").

A vector symbolic architecture represents structured objects as single vectors in R^d:

- **atoms**: each symbol is a random unit vector (``MBATEncoder.atom``); random vectors in high dimension are
  nearly orthogonal (cosine ~ N(0, 1/d)).
- **bundling** = sum (``bundle``): the result is similar to each term, so a bundle is a set.
- **binding** = multiplication by a random d × d matrix (``bind``: ``y = M x``): the result is dissimilar to x
  but keeps similarity (``cos(M x, M x') = cos(x, x')`` exactly when M is orthogonal), and it does not commute
  (``M_a M_b ≠ M_b M_a``), so order and roles are represented. **Unbinding** multiplies by ``M⁻¹``
  (``unbind``), which for an orthogonal M is just ``Mᵀ``.

Random matrices come in two kinds (``binding_matrix``): "gaussian", entries N(0, 1/d) (so E|Mx|² = |x|²), and
"orthogonal", Haar-random (QR of a Gaussian matrix with the sign fix). The paper's point: after k nested
bindings a Gaussian product ``M_k … M_1 x`` has a norm that drifts like a random walk in log space (and
cosine similarities drift with it), so terms bound at different depths get unequal weights in a bundle and the
transpose is only a noisy inverse; an orthogonal product preserves norms and cosines exactly at any depth
(``depth_stability`` measures both).

**JSON records.** ``MBATEncoder.encode`` maps JSON-like data to one vector: a dict is the bundle of its fields,
each field's value bound by its key's role matrix, ``Σ_k R_key · v(value)``; a list is ``Σ_i S^(i+1) · v(item)``
(powers of one sequence matrix: order matters); nested objects bind again (depth). Search then is linear
algebra: "which record has city = X" scores every record by ``⟨r, R_city · atom(X)⟩`` (≈ 1 for a match, noise of
std ≈ sqrt(fields/d) otherwise), "what is record r's city" unbinds ``R_cityᵀ r`` and picks the nearest atom
among the candidates, and a partial record is a query for nearest-neighbour search by cosine.
``record_search_experiment`` measures these accuracies against the number of records and the dimension, and
``predicted_find_accuracy`` is the Gaussian prediction for the top-1 lookup.

**Sequences** (``sequence_experiment``): a list binds item i by the i-th power of one matrix S. With a Gaussian S
the powers are products of the *same* matrix, whose eigenvalues spread over the unit disc: |S^k a| drifts far
from 1, images of unrelated vectors align with the dominant eigenvectors, and reading position k through
``(Sᵀ)^k`` fails; an orthogonal S keeps every position alike.

**Bundling capacity** (``bundle_experiment``): a bundle of m random unit atoms scores a member ≈ 1 + N(0,
(m − 1)/d) and a non-member ≈ N(0, m/d), so a membership test at 1/2 misses with probability
``Φ(−½ sqrt(d/(m − 1)))`` and false-alarms with ``Φ(−½ sqrt(d/m))`` — the crosstalk of superposition, the
same trade as an SDR union's false matches. **Soft similarity** (``soft_similarity``): two records that share
F − k of their F fields have cosine ≈ (F − k)/F, so similar JSON gives similar vectors.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import norm

from labkit import data
from labkit.runtime import progress

__all__ = [
    "KINDS",
    "MBATEncoder",
    "bind",
    "binding_matrix",
    "bundle",
    "cosine",
    "depth_stability",
    "bundle_experiment",
    "make_records",
    "predicted_find_accuracy",
    "record_search_experiment",
    "sequence_experiment",
    "soft_similarity",
    "unbind",
]

KINDS = ("gaussian", "orthogonal")


def _int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def binding_matrix(d: int, kind: str = "orthogonal", seed: data.SeedLike = 0) -> torch.Tensor:
    """A random d × d binding matrix, float64: "gaussian" (i.i.d. N(0, 1/d) entries) or "orthogonal" (Haar)."""
    d = _int("d", d)
    g = data.rng(seed)
    A = g.standard_normal((d, d))
    if _kind(kind) == "gaussian":
        return torch.from_numpy(A / math.sqrt(d))
    q, r = torch.linalg.qr(torch.from_numpy(A))
    return q * torch.sign(torch.diagonal(r))  # the sign fix makes the draw Haar-uniform


def _vectors(name: str, x, d: int) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if x.dim() not in (1, 2) or x.shape[-1] != d:
        raise ValueError(f"{name} must have shape (d,) or (m, d) with d = {d}, got {tuple(x.shape)}")
    vector = x.dim() == 1
    return (x[None] if vector else x), vector


def _matrix(M) -> torch.Tensor:
    if not isinstance(M, torch.Tensor) or M.dim() != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be a square (d, d) tensor, got {tuple(getattr(M, 'shape', ()))}")
    return M


def bind(M: torch.Tensor, x) -> torch.Tensor:
    """Bind by matrix multiplication ``y = M x``. M: (d, d); x: (d,) or (m, d) (rows bound independently)."""
    M = _matrix(M)
    x, vector = _vectors("x", x, M.shape[0])
    y = x.to(M.dtype) @ M.T
    return y[0] if vector else y


def unbind(M: torch.Tensor, y, method: str = "auto") -> torch.Tensor:
    """Undo ``bind``: "inverse" solves ``M x = y``; "transpose" returns ``Mᵀ y`` (exact for orthogonal M, a noisy
    approximation otherwise); "auto" picks "transpose" when ``MᵀM = I`` (to 1e-8) and "inverse" otherwise.
    M: (d, d); y: (d,) or (m, d). Returns like y."""
    M = _matrix(M)
    y, vector = _vectors("y", y, M.shape[0])
    if method not in ("auto", "inverse", "transpose"):
        raise ValueError(f"method must be 'auto', 'inverse' or 'transpose', got {method!r}")
    y = y.to(M.dtype)
    if method == "auto":
        eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        method = "transpose" if bool(torch.allclose(M.T @ M, eye, atol=1e-8)) else "inverse"
    x = y @ M if method == "transpose" else torch.linalg.solve(M, y.T).T
    return x[0] if vector else x


def bundle(vectors, weights=None) -> torch.Tensor:
    """Bundling = (weighted) sum of the rows. vectors: (m, d); weights: (m,) or None. Returns (d,)."""
    v = vectors if isinstance(vectors, torch.Tensor) else torch.as_tensor(np.asarray(vectors, dtype=np.float64))
    if v.dim() != 2:
        raise ValueError(f"vectors must have shape (m, d), got {tuple(v.shape)}")
    if weights is None:
        return v.sum(0)
    w = torch.as_tensor(weights, dtype=v.dtype)
    if w.shape != (v.shape[0],):
        raise ValueError(f"weights must have shape (m,) = ({v.shape[0]},), got {tuple(w.shape)}")
    return w @ v


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension (broadcast). Returns (…)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def depth_stability(d: int, depth: int, kind: str, n_seeds: int = 5, similarity: float = 0.5,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Bind a unit vector x (and a neighbour x' with cos(x, x') ≈ ``similarity``) by k = 0..depth random
    matrices, ``y_k = M_k … M_1 x``. Returns, each (n_seeds, depth + 1):
    "norm" = |y_k| / |x| (exactly 1 for orthogonal), "cosine" = cos(y_k, y'_k) (constant for orthogonal),
    "transpose" = cos(x, M_1ᵀ … M_kᵀ y_k) (recovery through transposes; 1 for orthogonal),
    "inverse" = the relative error |M_1⁻¹ … M_k⁻¹ y_k − x| / |x| (rounding only, grows with conditioning)."""
    d, depth, n_seeds = _int("d", d), _int("depth", depth, low=0), _int("n_seeds", n_seeds)
    _kind(kind)
    if not -1.0 < similarity < 1.0:
        raise ValueError(f"similarity must be in (-1, 1), got {similarity}")
    out = {key: np.zeros((n_seeds, depth + 1)) for key in ("norm", "cosine", "transpose", "inverse")}
    for s in range(n_seeds):
        g = np.random.default_rng([seed, s, d, depth])
        x = torch.from_numpy(g.standard_normal(d))
        x /= x.norm()
        e = torch.from_numpy(g.standard_normal(d))
        e -= (e @ x) * x
        e /= e.norm()
        x2 = similarity * x + math.sqrt(1 - similarity**2) * e
        Ms = [binding_matrix(d, kind, g) for _ in range(depth)]
        LUs = [torch.linalg.lu_factor(M) for M in Ms]  # factor once, solve many times
        y, y2 = x.clone(), x2.clone()
        for k in range(depth + 1):
            if k:
                y, y2 = Ms[k - 1] @ y, Ms[k - 1] @ y2
            back_t, back_i = y.clone(), y.clone()
            for M, (LU, piv) in zip(reversed(Ms[:k]), reversed(LUs[:k])):
                back_t = M.T @ back_t
                back_i = torch.linalg.lu_solve(LU, piv, back_i[:, None])[:, 0]
            out["norm"][s, k] = float(y.norm())
            out["cosine"][s, k] = float(cosine(y, y2))
            out["transpose"][s, k] = float(cosine(x, back_t))
            out["inverse"][s, k] = float((back_i - x).norm())
    return out


class MBATEncoder:
    """Encode JSON-like data (dicts, lists, strings, numbers, bools, None) as vectors in R^d by MBAT.

    d: the dimension; kind: "orthogonal" (default) or "gaussian" role matrices; seed: everything (atoms, role
    matrices) is a deterministic function of (seed, the symbol), created on first use and cached, so two encoders
    with the same seed agree. Atoms are equal for equal JSON values of the same type (1 and "1" differ).
    """

    def __init__(self, d: int, kind: str = "orthogonal", seed: int = 0):
        self.d = _int("d", d)
        self.kind = _kind(kind)
        self.seed = _int("seed", seed, low=0)
        self._atoms: dict[str, torch.Tensor] = {}
        self._roles: dict[str, torch.Tensor] = {}

    def _rng(self, *parts: str) -> np.random.Generator:
        digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest, "little")])

    @staticmethod
    def _token(value) -> str:
        if value is None or isinstance(value, (bool, str)):
            return f"{type(value).__name__}:{value}"
        if isinstance(value, numbers.Integral):
            return f"int:{int(value)}"
        if isinstance(value, numbers.Real):
            return f"float:{float(value)!r}"
        raise TypeError(f"value must be a JSON value (dict, list, str, number, bool, None), got {type(value).__name__}")

    def atom(self, value) -> torch.Tensor:
        """The random unit vector of a JSON scalar. Returns (d,) float64."""
        token = self._token(value)
        if token not in self._atoms:
            v = torch.from_numpy(self._rng("atom", token).standard_normal(self.d))
            self._atoms[token] = v / v.norm()
        return self._atoms[token]

    def role(self, key: str) -> torch.Tensor:
        """The binding matrix of a dict key (``"[]"`` is the list's sequence matrix). Returns (d, d) float64."""
        if not isinstance(key, str):
            raise TypeError(f"key must be a str (JSON object keys are strings), got {type(key).__name__}")
        if key not in self._roles:
            self._roles[key] = binding_matrix(self.d, self.kind, self._rng("role", key))
        return self._roles[key]

    def encode(self, obj) -> torch.Tensor:
        """dict → ``Σ_k role(k) · encode(v)``; list → ``Σ_i role("[]")^(i+1) · encode(item)``; scalar → ``atom``.
        An empty dict or list is the zero vector. Returns (d,) float64."""
        if isinstance(obj, dict):
            out = torch.zeros(self.d, dtype=torch.float64)
            for key, value in obj.items():
                out += self.role(key) @ self.encode(value)
            return out
        if isinstance(obj, (list, tuple)):
            out = torch.zeros(self.d, dtype=torch.float64)
            S = self.role("[]")
            for item in reversed(obj):  # Horner: S(v_0 + S(v_1 + S(v_2 ...)))
                out = S @ (self.encode(item) + out)
            return out
        return self.atom(obj)

    def encode_records(self, records: Sequence) -> torch.Tensor:
        """Encode each record. Returns (R, d)."""
        if len(records) == 0:
            return torch.zeros(0, self.d, dtype=torch.float64)
        return torch.stack([self.encode(r) for r in records])

    def probe(self, key: str, value) -> torch.Tensor:
        """The vector of one field ``{key: value}``: ``role(key) · atom(value)`` (or encode(value) if nested)."""
        return self.role(key) @ self.encode(value)

    def where(self, encoded: torch.Tensor, key: str, value, k: int | None = None,
              threshold: float = 0.5) -> torch.Tensor:
        """"Which records have key = value": indices of the records scoring ``⟨r, probe(key, value)⟩`` above
        ``threshold`` (a match scores ≈ 1, a non-match ≈ 0), best first; or the top ``k`` when k is given.
        encoded: (R, d) from ``encode_records``. Returns (n,) int64."""
        scores = self.scores(encoded, key, value)
        if k is not None:
            k = _int("k", k)
            return torch.topk(scores, min(k, scores.numel())).indices
        idx = torch.nonzero(scores > threshold).flatten()
        return idx[torch.argsort(scores[idx], descending=True)]

    def scores(self, encoded: torch.Tensor, key: str, value) -> torch.Tensor:
        """``⟨r, probe(key, value)⟩`` for every record. encoded: (R, d). Returns (R,)."""
        encoded, _ = _vectors("encoded", encoded, self.d)
        return encoded @ self.probe(key, value)

    def decode(self, vec: torch.Tensor, key: str, candidates: Sequence):
        """Read field ``key`` of an encoded dict: unbind by the transpose of its role matrix and return the
        candidate scalar whose atom is most similar. (The transpose is the exact inverse of an orthogonal role and a
        noisy one of a Gaussian role; the exact inverse of a Gaussian matrix amplifies the other fields' terms by
        its condition number, so decoding through it is far worse.)"""
        if len(candidates) == 0:
            raise ValueError("candidates must hold at least one value, got none")
        v, _ = _vectors("vec", vec, self.d)
        R = self.role(key)
        guess = unbind(R, v[0], method="transpose")
        atoms = torch.stack([self.atom(c) for c in candidates])
        return candidates[int(torch.argmax(atoms @ guess))]

    def nearest(self, encoded: torch.Tensor, query, k: int = 1) -> torch.Tensor:
        """Nearest-neighbour search: the ``k`` records most cosine-similar to ``encode(query)`` (a partial record
        works). encoded: (R, d). Returns (k,) int64, best first."""
        encoded, _ = _vectors("encoded", encoded, self.d)
        k = _int("k", k)
        sims = cosine(encoded, self.encode(query)[None])
        return torch.topk(sims, min(k, sims.numel())).indices


def make_records(n: int, n_cities: int = 20, n_jobs: int = 10, seed: data.SeedLike = 0) -> list[dict]:
    """``n`` random records ``{"name": "person<i>" (unique), "city": "city<j>", "age": 20..69, "job": "job<k>"}``."""
    n, n_cities, n_jobs = _int("n", n, low=0), _int("n_cities", n_cities), _int("n_jobs", n_jobs)
    g = data.rng(seed)
    return [{"name": f"person{i}", "city": f"city{int(g.integers(n_cities))}", "age": int(g.integers(20, 70)),
             "job": f"job{int(g.integers(n_jobs))}"} for i in range(n)]


def record_search_experiment(dims: Sequence[int], n_records: Sequence[int], kind: str = "orthogonal",
                             n_cities: int = 20, n_queries: int = 50, n_seeds: int = 2, seed: int = 0,
                             n_jobs: int = 10) -> dict[str, np.ndarray]:
    """Encode random records (``make_records``) and query them, for each dimension × number of records.

    Returns, each (len(dims), len(n_records)), averaged over seeds and ``n_queries`` queries:
    "find" = the top record for ``name = person<i>`` is record i; "decode" = decoding a record's city among all
    cities present in the records is right; "where" = the top-|S| records for ``city = X`` are exactly the S
    records in city X;
    "nearest" = the nearest record to the partial record ``{"name", "age"}`` of record i is record i."""
    _kind(kind)
    n_queries, n_seeds = _int("n_queries", n_queries), _int("n_seeds", n_seeds)
    dims = [_int("dims[i]", int(d)) for d in dims]
    n_records = [_int("n_records[i]", int(r)) for r in n_records]
    out = {key: np.zeros((len(dims), len(n_records))) for key in ("find", "decode", "where", "nearest")}
    cells = [(i, j, s) for i in range(len(dims)) for j in range(len(n_records)) for s in range(n_seeds)]
    for i, j, s in progress(cells, desc=f"MBAT records ({kind})"):
        g = np.random.default_rng([seed, s, dims[i], n_records[j]])
        records = make_records(n_records[j], n_cities=n_cities, n_jobs=n_jobs, seed=g)
        cities = sorted({rec["city"] for rec in records})  # the decoding candidates: every city present
        enc = MBATEncoder(dims[i], kind=kind, seed=int(g.integers(2**31)))
        encoded = enc.encode_records(records)
        picks = g.integers(n_records[j], size=n_queries)
        hits = {key: 0.0 for key in out}
        for r in picks:
            r = int(r)
            rec = records[r]
            hits["find"] += int(enc.where(encoded, "name", rec["name"], k=1)[0]) == r
            hits["decode"] += enc.decode(encoded[r], "city", cities) == rec["city"]
            truth = {t for t, other in enumerate(records) if other["city"] == rec["city"]}
            hits["where"] += set(enc.where(encoded, "city", rec["city"], k=len(truth)).tolist()) == truth
            hits["nearest"] += int(enc.nearest(encoded, {"name": rec["name"], "age": rec["age"]})[0]) == r
        for key in out:
            out[key][i, j] += hits[key] / n_queries / n_seeds
    return out


def predicted_find_accuracy(d: int, n_records: int, n_fields: int = 4) -> float:
    """Gaussian prediction of the top-1 lookup "which record has key = value" among ``n_records`` records of
    ``n_fields`` fields in R^d (orthogonal roles, unit atoms): the target scores t ~ N(1, (F − 1)/d), every other
    record independently N(0, F/d), so ``P = E_t[Φ(t / sqrt(F/d))^(R − 1)]`` (80-point Gauss–Hermite rule).
    Records that share a value (the same city) make the scores slightly dependent; the prediction ignores it."""
    d, R, F = _int("d", d), _int("n_records", n_records), _int("n_fields", n_fields)
    x, wts = np.polynomial.hermite_e.hermegauss(80)
    t = 1.0 + math.sqrt((F - 1) / d) * x
    return float((wts * norm.cdf(t / math.sqrt(F / d)) ** (R - 1)).sum() / wts.sum())


def sequence_experiment(d: int, length: int, kind: str, steps: int | None = None, vocab: int = 100,
                        n_seeds: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Lists as powers of one matrix. Encode ``length`` random atoms (from a vocabulary of ``vocab``) as
    ``v = Σ_i S^(i+1) a_i`` with one random S of ``kind`` and read position i back as the vocabulary atom nearest to
    ``(Sᵀ)^(i+1) v``; follow two fixed unrelated unit vectors a, b through ``steps`` powers (default ``length``).
    Returns "accuracy" (n_seeds, length): 1 where position i decodes right; "accuracy_inverse" (n_seeds, length):
    the same read through the exact inverse ``S^-(i+1) v`` (equal for orthogonal S; for a Gaussian S the inverse
    recovers a_i exactly but multiplies the other items by powers of S^-1); and, each (n_seeds, steps),
    "norm" = |S^k a| (1 for orthogonal S) and "align" = |cos(S^k a, S^k b)| (stays at |cos(a, b)| ≈ 0 for
    orthogonal S; grows as the powers of a Gaussian S collapse onto its top eigenvectors), k = 1..steps."""
    d, length, vocab, n_seeds = _int("d", d), _int("length", length), _int("vocab", vocab), _int("n_seeds", n_seeds)
    steps = length if steps is None else _int("steps", steps)
    _kind(kind)
    out = {"accuracy": np.zeros((n_seeds, length)), "accuracy_inverse": np.zeros((n_seeds, length)),
           "norm": np.zeros((n_seeds, steps)),
           "align": np.zeros((n_seeds, steps))}
    for s in range(n_seeds):
        g = np.random.default_rng([seed, s, d, length, vocab])
        S = binding_matrix(d, kind, g)
        atoms = torch.from_numpy(g.standard_normal((vocab, d)))
        atoms /= atoms.norm(dim=1, keepdim=True)
        which = torch.from_numpy(g.integers(vocab, size=length))
        v = torch.zeros(d, dtype=torch.float64)
        for i in reversed(range(length)):  # Horner: S(a_0 + S(a_1 + ...))
            v = S @ (atoms[which[i]] + v)
        back, back_inv = v, v
        LU, pivots = torch.linalg.lu_factor(S)
        for i in range(length):
            back = S.T @ back
            back_inv = torch.linalg.lu_solve(LU, pivots, back_inv[:, None])[:, 0]
            out["accuracy"][s, i] = float(int(torch.argmax(atoms @ back)) == int(which[i]))
            out["accuracy_inverse"][s, i] = float(int(torch.argmax(atoms @ back_inv)) == int(which[i]))
        y = torch.from_numpy(g.standard_normal((d, 2)))
        y /= y.norm(dim=0, keepdim=True)
        for k in range(steps):
            y = S @ y
            out["norm"][s, k] = float(y[:, 0].norm())
            out["align"][s, k] = float(cosine(y[:, 0], y[:, 1]).abs())
    return out


def bundle_experiment(dims: Sequence[int], ms: Sequence[int], n_trials: int = 200, threshold: float = 0.5,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Bundling capacity: sum m random unit atoms in R^d and test membership by ``⟨bundle, x⟩ > threshold``.
    For each (d, m), ``n_trials`` bundles each test one member and one fresh non-member. Returns, each
    (len(dims), len(ms)): "miss" and "false_positive" rates (measured) and "miss_theory" = Φ((threshold − 1) /
    sqrt((m − 1)/d)), "fp_theory" = Φ(−threshold / sqrt(m/d)); plus "dims", "ms"."""
    dims = [_int("dims[i]", int(d)) for d in dims]
    ms = [_int("ms[i]", int(m)) for m in ms]
    n_trials = _int("n_trials", n_trials)
    out = {key: np.zeros((len(dims), len(ms))) for key in ("miss", "false_positive", "miss_theory", "fp_theory")}

    def unit(g, d):
        x = torch.from_numpy(g.standard_normal((n_trials, d), dtype=np.float32))
        return x / x.norm(dim=1, keepdim=True)

    for i, d in enumerate(dims):
        for j, m in enumerate(ms):
            g = np.random.default_rng([seed, d, m])
            member, outsider = unit(g, d), unit(g, d)
            b = member.clone()
            for _ in range(m - 1):  # the other members, one at a time (memory stays n_trials × d)
                b += unit(g, d)
            out["miss"][i, j] = float(((b * member).sum(1) <= threshold).double().mean())
            out["false_positive"][i, j] = float(((b * outsider).sum(1) > threshold).double().mean())
            out["miss_theory"][i, j] = norm.cdf((threshold - 1) / math.sqrt((m - 1) / d)) if m > 1 else 0.0
            out["fp_theory"][i, j] = norm.cdf(-threshold / math.sqrt(m / d))
    out["dims"], out["ms"] = np.asarray(dims), np.asarray(ms)
    return out


def soft_similarity(d: int, n_fields: int = 8, kind: str = "orthogonal", n_pairs: int = 50,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Similar JSON → similar vectors: a random record of ``n_fields`` fields ``{"f<j>": "v<random>"}`` and a copy
    with k of its fields given new values, k = 0..F. Returns {"changed" (F + 1,), "cosine" (n_pairs, F + 1) the
    cosine of the two encodings, "predicted" (F + 1,) = (F − k)/F}."""
    d, F, n_pairs = _int("d", d), _int("n_fields", n_fields), _int("n_pairs", n_pairs)
    g = np.random.default_rng([seed, d, F])
    enc = MBATEncoder(d, kind=kind, seed=int(g.integers(2**31)))
    cos = np.zeros((n_pairs, F + 1))
    for p in range(n_pairs):
        rec = {f"f{j}": f"v{int(g.integers(10**9))}" for j in range(F)}
        base = enc.encode(rec)
        order = g.permutation(F)
        for k in range(F + 1):
            other = dict(rec)
            for j in order[:k]:
                other[f"f{j}"] = f"w{int(g.integers(10**9))}"
            cos[p, k] = float(cosine(base, enc.encode(other)))
    return {"changed": np.arange(F + 1), "cosine": cos, "predicted": (F - np.arange(F + 1)) / F}
