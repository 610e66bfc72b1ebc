r"""HippoRAG: a knowledge graph of phrases searched by Personalized PageRank (Gutiérrez et al., 2024).

Offline indexing turns every passage into triples with an OpenIE step (here rule-based: relation patterns for the
world's templated sentences, entity spans resolved with a name/alias lexicon), then builds a graph whose nodes are
**phrases** (lower-cased entity surface forms):

- relation edges ``h — t`` (weight +1 per triple, both directions);
- synonym edges between phrases whose name embeddings have cosine ``≥ tau`` (weight = the cosine), so that
  ``"Bob Moreno"`` and ``"Robert Moreno"`` are one hop apart;
- a passage × node incidence ``M (n_passages, N)``, ``M[p, i] = 1`` if node i is mentioned in passage p.

Online, the query's entities (lexicon matches in the question, linked to their phrase node, or to the nearest
node by name embedding) seed Personalized PageRank. **Node specificity** (HippoRAG's IDF-like weight) is
``s_i = 1 / |P_i|`` with ``P_i`` the passages that contain node ``i``; the restart vector is ``e_q ∝ Σ_{i∈Q} s_i 1_i``.
PPR with restart probability α solves

.. math::  r = α\, e_q + (1 − α)\, P\, r,\qquad P[v, u] = w_{uv} / \sum_{v'} w_{uv'},

(HippoRAG's ``damping`` 0.5 is ``1 − α``), and a passage scores the PPR mass of the nodes it mentions,
``score(p) = Σ_i M[p, i]\, r_i``. One PPR walk spreads from the question entity across a relation edge to the
bridge entity and on into the passage of the second hop, which is why one retrieval step can find both supporting
passages of a 2-hop question, while a dense retriever only sees the text of the question.

API: ``openie(text, lexicon)``, ``openie_scores(world)``, ``HippoGraph`` (``build_graph``), ``HippoGraph.retrieve``,
``dense_retrieve``, ``keyword_retrieve``, ``recall_at_k``, ``run_experiment`` and ``load``/``main`` for the committed
full run (``python -m labkit.episodic.hipporag``).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labkit.runtime import load_results

__all__ = [
    "HippoGraph",
    "build_graph",
    "dense_retrieve",
    "keyword_retrieve",
    "link_entities",
    "load",
    "main",
    "node_specificity",
    "openie",
    "openie_scores",
    "recall_at_k",
    "run_experiment",
    "summarize",
]

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "hipporag.json"

# ------------------------------------------------------------------------------------------------ OpenIE (rules)
# A pattern per phrasing: S, O, E are entity spans, D a date; each yields the listed (subject, relation, object).
_SPAN = r"(?P<{}>.+?)"
_DATE = r"(?:\d{1,2} )?(?:January|February|March|April|May|June|July|August|September|October|November|December)?" \
        r" ?\d{4}"
_PATTERNS: list[tuple[str, tuple[tuple[str, str, str], ...]]] = [
    ("S met O at E", (("S", "met", "O"), ("S", "attended", "E"), ("O", "attended", "E"))),
    ("At E, S was introduced to O", (("S", "met", "O"), ("S", "attended", "E"), ("O", "attended", "E"))),
    ("In D, S moved to O", (("S", "lives_in", "O"),)),
    ("S relocated to O in D", (("S", "lives_in", "O"),)),
    ("After a move in D, S now lives in O", (("S", "lives_in", "O"),)),
    ("These days S lives in O", (("S", "lives_in", "O"),)),
    ("S lives in O", (("S", "lives_in", "O"),)),
    ("S has made a home in O", (("S", "lives_in", "O"),)),
    ("S rents a flat in O", (("S", "lives_in", "O"),)),
    ("In D, S started a new job at O", (("S", "works_at", "O"),)),
    ("S joined O in D", (("S", "works_at", "O"),)),
    ("S switched employers in D and now works for O", (("S", "works_at", "O"),)),
    ("S works at O", (("S", "works_at", "O"),)),
    ("S is employed by O", (("S", "works_at", "O"),)),
    ("S has a job at O", (("S", "works_at", "O"),)),
    ("S grew up in O, where they were born", (("S", "born_in", "O"),)),
    ("S was born in O", (("S", "born_in", "O"),)),
    ("S is a native of O", (("S", "born_in", "O"),)),
    ("S and O are a married couple", (("S", "spouse_of", "O"),)),
    ("S married O in D", (("S", "spouse_of", "O"),)),
    ("S is married to O", (("S", "spouse_of", "O"),)),
    ("S went to O in D", (("S", "attended", "O"),)),
    ("S was among the visitors of O", (("S", "attended", "O"),)),
    ("S attended O", (("S", "attended", "O"),)),
    ("O founded S in D", (("S", "founded_by", "O"),)),
    ("S was started by O in D", (("S", "founded_by", "O"),)),
    ("S was founded by O", (("S", "founded_by", "O"),)),
    ("S is headquartered in O", (("S", "located_in", "O"),)),
    ("S has its head office in O", (("S", "located_in", "O"),)),
    ("S is based in O", (("S", "located_in", "O"),)),
    ("S lies in O", (("S", "located_in", "O"),)),
    ("S is a town in O", (("S", "located_in", "O"),)),
    ("S is part of O", (("S", "located_in", "O"),)),
    ("S was held in O in D", (("S", "took_place_in", "O"),)),
    ("S took place in O", (("S", "took_place_in", "O"),)),
    ("O hosted S", (("S", "took_place_in", "O"),)),
    ("O ran S in D", (("S", "organized_by", "O"),)),
    ("S was organised by O", (("S", "organized_by", "O"),)),
    ("O organised S", (("S", "organized_by", "O"),)),
]


def _compile(pattern: str) -> re.Pattern[str]:
    out = []
    for tok in re.split(r"(\b[SOED]\b)", pattern):
        if tok in ("S", "O", "E"):
            out.append(_SPAN.format(tok))
        elif tok == "D":
            out.append(_DATE)
        else:
            out.append(re.escape(tok))
    return re.compile("^" + "".join(out) + r"\.?$")


_COMPILED = [(_compile(p), trip) for p, trip in _PATTERNS]
_CLAUSE = re.compile(r", (?:who works as )?an? [a-z]+,")  # "Lucia Brooks, who works as a pilot, moved ..."


def _is_name(span: str) -> bool:
    span = span.strip()
    return bool(span) and (span[0].isupper() or span[0].isdigit() or span.startswith("the "))


def openie(text: str, lexicon: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """Rule-based OpenIE of one templated sentence: ``[(subject phrase, relation, object phrase)]``.

    Phrases are lower-cased surface forms as written. With a ``lexicon`` (lower-cased surface -> entity id), a
    match whose spans are known names is preferred over one whose spans are not. Unknown sentences give [].
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    t = _CLAUSE.sub("", " ".join(text.split())).strip()
    best: list[tuple[str, str, str]] = []
    best_known = -1
    for rx, trip in _COMPILED:
        m = rx.match(t)
        if m is None:
            continue
        spans = {k: v.strip() for k, v in m.groupdict().items()}
        if not all(_is_name(v) or (v and v[0].isupper()) for v in spans.values()):
            continue
        known = sum(v.lower() in lexicon for v in spans.values()) if lexicon is not None else 0
        if known > best_known:  # first pattern wins ties (patterns are ordered most specific first)
            best_known = known
            best = [(spans[a].lower(), r, spans[b].lower()) for a, r, b in trip]
            if lexicon is None or known == len(spans):
                break
    return best


def openie_scores(world: Any, passages: Sequence[Any] | None = None) -> dict[str, float]:
    """Precision / recall / F1 of :func:`openie` against the gold triples of ``passages`` (the world's by default).

    A gold triple (ids) is written with the surface forms the passage used (``Passage.mentions``), so passages
    about entities outside the lexicon (distractors) are scored too; a predicted phrase must match exactly."""
    passages = world.passages() if passages is None else passages
    lex = world.alias_table()
    tp = n_pred = n_gold = 0
    for p in passages:
        surf = {i: m.lower() for i, m in p.mentions}
        pred = set(openie(p.text, lex))
        gold = {(surf.get(h, h), r, surf.get(t, t)) for h, r, t in p.triples}
        tp += len(pred & gold)
        n_pred += len(pred)
        n_gold += len(gold)
    prec = tp / max(n_pred, 1)
    rec = tp / max(n_gold, 1)
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / max(prec + rec, 1e-12), "n_gold": n_gold,
            "n_pred": n_pred}


# ------------------------------------------------------------------------------------------------ the graph
def node_specificity(incidence: np.ndarray) -> np.ndarray:
    """``s_i = 1 / |P_i|`` from a passage × node incidence ``(n_passages, N)`` (nonzero = mentioned); a node in no
    passage gets 1 (as HippoRAG). Returns ``(N,)`` float64."""
    inc = np.asarray(incidence)
    if inc.ndim != 2:
        raise ValueError(f"incidence must have shape (n_passages, N), got {inc.shape}")
    counts = (inc != 0).sum(0).astype(np.float64)
    return np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 1.0)


@dataclass
class HippoGraph:
    """Phrase graph + passage incidence. ``nodes`` (N,) phrases, ``passage_ids`` (n_passages,), ``incidence``
    (n_passages, N) float32 0/1, ``adjacency`` dense-free edge dict, ``node_vecs`` (N, dim) name embeddings."""

    nodes: list[str]
    passage_ids: list[str]
    incidence: np.ndarray
    edges: dict[tuple[int, int], float]
    node_vecs: np.ndarray
    lexicon: dict[str, str]
    triples: list[tuple[str, str, str]] = field(default_factory=list)
    n_synonym_edges: int = 0
    canonical: dict[str, str] | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _transition: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._index = {n: i for i, n in enumerate(self.nodes)}

    @property
    def specificity(self) -> np.ndarray:
        """``s_i = 1/|P_i|`` (N,)."""
        return node_specificity(self.incidence)

    def transition(self) -> Any:
        """The PPR transition of the (symmetric, weighted) graph, built once."""
        if self._transition is None:
            import torch

            from labkit.kernels import ppr_transition

            n = len(self.nodes)
            rows = np.array([u for (u, v) in self.edges], dtype=np.int64)
            cols = np.array([v for (u, v) in self.edges], dtype=np.int64)
            w = np.array(list(self.edges.values()), dtype=np.float64)
            order = np.lexsort((cols, rows))
            rows, cols, w = rows[order], cols[order], w[order]
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.add.at(indptr, rows + 1, 1)
            indptr = np.cumsum(indptr)
            self._transition = ppr_transition(torch.from_numpy(indptr), torch.from_numpy(cols),
                                              torch.from_numpy(w), n_nodes=n)
        return self._transition

    def seeds(self, questions: Sequence[str], embedder: Any) -> list[list[int]]:
        """Query nodes per question: lexicon matches in the text, each linked to its phrase node (exact) or else
        to the node of highest name-embedding cosine (HippoRAG's link_node_by_dpr)."""
        out = []
        for q in questions:
            ids = []
            for surface in link_entities(q, self.lexicon):
                surface = self.canonical.get(surface, surface) if self.canonical is not None else surface
                i = self._index.get(surface)
                if i is None and len(self.nodes):
                    i = int(np.argmax(self.node_vecs @ np.asarray(embedder.encode([surface]))[0]))
                if i is not None and i not in ids:
                    ids.append(i)
            out.append(ids)
        return out

    def scores(self, questions: Sequence[str], embedder: Any, alpha: float = 0.5,
               specificity: bool = True) -> np.ndarray:
        """Passage scores ``(B, n_passages)`` = PPR mass ``r (B, N)`` summed over each passage's nodes, ``r Mᵀ``.

        alpha: restart probability in (0, 1) (HippoRAG's damping 0.5 -> alpha 0.5). specificity: seed weights
        ``s_i = 1/|P_i|`` (False: uniform seeds). A question with no linked entity gets a row of zeros.
        """
        import torch

        from labkit.kernels import ppr

        if isinstance(alpha, bool) or not (isinstance(alpha, float | int) and 0 < alpha < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        seeds = self.seeds(questions, embedder)
        n = len(self.nodes)
        spec = self.specificity if specificity else np.ones(n)
        s = np.zeros((len(questions), n), dtype=np.float64)
        for b, ids in enumerate(seeds):
            s[b, ids] = spec[ids]
        ok = s.sum(1) > 0
        out = np.zeros((len(questions), len(self.passage_ids)), dtype=np.float64)
        if ok.any():
            r, _ = ppr(self.transition(), torch.from_numpy(s[ok]), alpha=float(alpha), tol=1e-8, max_iter=200,
                       backend="torch")
            out[ok] = r.numpy() @ self.incidence.T.astype(np.float64)
        return out

    def retrieve(self, questions: Sequence[str], embedder: Any, k: int = 5, alpha: float = 0.5,
                 specificity: bool = True) -> list[list[str]]:
        """Top-k passage ids per question by :meth:`scores` (ties by passage order); [] for a question with no
        linked entity."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        sc = self.scores(questions, embedder, alpha, specificity)
        return [[self.passage_ids[j] for j in np.lexsort((np.arange(len(row)), -row))[:k]] if row.any() else []
                for row in sc]


_LEX_CACHE: dict[int, tuple[Mapping[str, str], re.Pattern[str]]] = {}


def link_entities(text: str, lexicon: Mapping[str, str]) -> list[str]:
    """Lower-cased lexicon surfaces found in ``text`` (longest match first, whole words, case-insensitive)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    hit = _LEX_CACHE.get(id(lexicon))
    if hit is None or hit[0] is not lexicon:
        alts = sorted(lexicon, key=len, reverse=True)
        rx = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, alts)) + r")(?!\w)", re.IGNORECASE) if alts else None
        _LEX_CACHE.clear()
        _LEX_CACHE[id(lexicon)] = hit = (lexicon, rx)
    rx = hit[1]
    return [] if rx is None else list(dict.fromkeys(m.group(1).lower() for m in rx.finditer(text)))


def build_graph(passages: Sequence[tuple[str, str]], embedder: Any, lexicon: Mapping[str, str],
                synonym_threshold: float = 0.8, max_synonyms: int = 100, synonyms: bool = True,
                canonical: bool = False) -> HippoGraph:
    """Index ``passages`` ``[(id, text)]``: OpenIE triples -> phrase nodes, relation edges (+1 each way),
    passage–node incidence, and synonym edges (cosine of name embeddings ≥ ``synonym_threshold``, at most
    ``max_synonyms`` per node, weight = cosine; none if ``synonyms`` is False).

    canonical: an *oracle* ablation, not HippoRAG: every phrase the lexicon knows is replaced by its entity's first
    surface form, so all aliases of an entity are one node (perfect entity resolution)."""
    if not 0.0 < synonym_threshold <= 1.0:
        raise ValueError(f"synonym_threshold must be in (0, 1], got {synonym_threshold}")
    if not isinstance(max_synonyms, int) or max_synonyms < 0:
        raise ValueError(f"max_synonyms must be an int >= 0, got {max_synonyms!r}")
    index: dict[str, int] = {}
    nodes: list[str] = []
    edges: dict[tuple[int, int], float] = {}
    pids: list[str] = []
    inc_rows: list[list[int]] = []
    all_triples: list[tuple[str, str, str]] = []
    canon: dict[str, str] | None = None
    if canonical:
        first: dict[str, str] = {}
        for surface, eid in lexicon.items():
            first.setdefault(eid, surface)
        canon = {surface: first[eid] for surface, eid in lexicon.items()}
    for pid, text in passages:
        trips = openie(text, lexicon)
        if canon is not None:
            trips = [(canon.get(h, h), r, canon.get(t, t)) for h, r, t in trips]
        mentioned: list[int] = []
        for h, r, t in trips:
            for ph in (h, t):
                if ph not in index:
                    index[ph] = len(nodes)
                    nodes.append(ph)
            u, v = index[h], index[t]
            edges[(u, v)] = edges.get((u, v), 0.0) + 1.0
            edges[(v, u)] = edges.get((v, u), 0.0) + 1.0
            mentioned += [u, v]
            all_triples.append((h, r, t))
        pids.append(pid)
        inc_rows.append(sorted(set(mentioned)))
    inc = np.zeros((len(pids), len(nodes)), dtype=np.float32)
    for j, row in enumerate(inc_rows):
        inc[j, row] = 1.0
    vecs = np.asarray(embedder.encode(nodes), dtype=np.float32) if nodes else np.zeros((0, 1), np.float32)
    n_syn = 0
    if synonyms and len(nodes) > 1 and max_synonyms > 0:
        sim = vecs @ vecs.T
        np.fill_diagonal(sim, -np.inf)
        for i in range(len(nodes)):
            if sum(c.isalnum() for c in nodes[i]) <= 2:  # HippoRAG skips phrases with <= 2 alphanumerics
                continue
            cand = np.flatnonzero(sim[i] >= synonym_threshold)
            cand = cand[np.argsort(-sim[i, cand], kind="stable")][:max_synonyms]
            for j in cand:
                w = float(sim[i, j])
                for e in ((i, int(j)), (int(j), i)):
                    if e not in edges:  # a synonym pair is linked once, with weight = cosine
                        n_syn += 1
                        edges[e] = w
    g = HippoGraph(nodes, pids, inc, edges, vecs, dict(lexicon), all_triples, n_syn // 2, canon)
    return g


# ------------------------------------------------------------------------------------------------ baselines
def dense_retrieve(questions: Sequence[str], passage_ids: Sequence[str], passage_vecs: np.ndarray, embedder: Any,
                   k: int = 5) -> list[list[str]]:
    """Top-k passages by cosine of unit embeddings (``passage_vecs`` (n, dim)); ties by index."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    q = np.asarray(embedder.encode(list(questions)), dtype=np.float32)
    sims = q @ np.asarray(passage_vecs, dtype=np.float32).T
    return [[passage_ids[j] for j in np.lexsort((np.arange(len(row)), -row))[:k]] for row in sims]


def keyword_retrieve(questions: Sequence[str], passages: Sequence[tuple[str, str]], k: int = 5) -> list[list[str]]:
    """Top-k passages by FTS5 BM25 (``MemoryStore.keyword_search``, OR of the question's words) in a temporary
    SQLite store."""
    from labkit.episodic.store import MemoryStore

    with tempfile.TemporaryDirectory() as tmp, MemoryStore(Path(tmp) / "kw.db") as store:
        ids = store.add_notes([text for _, text in passages])
        to_pid = dict(zip(ids, (p for p, _ in passages), strict=True))
        return [[to_pid[i] for i, _ in store.keyword_search(q, k=k)] for q in questions]


def recall_at_k(retrieved: Sequence[Sequence[str]], support: Sequence[Sequence[str]], k: int,
                mode: str = "all") -> float:
    """Recall@k over questions. mode "all": fraction of questions whose gold supporting passages are *all* in the
    top-k; "fraction": mean fraction of each question's gold passages in the top-k (HippoRAG's retrieval_eval)."""
    if mode not in ("all", "fraction"):
        raise ValueError(f"mode must be 'all' or 'fraction', got {mode!r}")
    if len(retrieved) != len(support):
        raise ValueError(f"retrieved and support must have the same length, got {len(retrieved)} and {len(support)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not support:
        return float("nan")
    if mode == "all":
        return float(np.mean([set(g) <= set(r[:k]) for r, g in zip(retrieved, support, strict=True)]))
    return float(np.mean([len(set(g) & set(r[:k])) / len(set(g)) for r, g in zip(retrieved, support, strict=True)]))


class _Cached:
    """An embedder wrapper with a text -> vector cache (the same texts are encoded once across settings)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            for t, v in zip(new, np.asarray(self.inner.encode(new), dtype=np.float32), strict=True):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


# ------------------------------------------------------------------------------------------------ experiment
METHODS = ("dense", "keyword", "ppr", "ppr_no_spec", "ppr_no_syn", "ppr_oracle_alias")


def run_experiment(seeds: Sequence[int] = (0, 1, 2), distractors: Sequence[int] = (0, 200, 1000),
                   kinds: Sequence[str] = ("2hop", "3hop"), n_questions: int = 100, embedder: Any = "hashing",
                   synonym_threshold: float | None = None, alpha: float = 0.5,
                   world_kw: Mapping[str, Any] | None = None, ks: Sequence[int] = (2, 5, 10, 20)) -> dict[str, Any]:
    """Recall@k (all gold passages in the top-k) of dense, keyword, PPR and its ablations vs distractor count.

    embedder: "hashing" | "minilm" or an embedder object. synonym_threshold: None -> 0.8 for MiniLM (the paper's),
    0.6 for hashing. Returns {"config", "rows": [{seed, n_distractors, kind, method, recall@k...}], "openie",
    "graph", "seconds"}.
    """
    import torch

    from labkit.data.worlds import make_world
    from labkit.episodic.embed import get_embedder

    torch.set_num_threads(1)
    if not distractors or min(distractors) < 0:
        raise ValueError(f"distractors must be non-empty counts >= 0, got {distractors!r}")
    if not seeds:
        raise ValueError("seeds must be non-empty")
    name = embedder if isinstance(embedder, str) else getattr(embedder, "name", "custom")
    emb = _Cached(get_embedder(embedder) if isinstance(embedder, str) else embedder)
    tau = synonym_threshold if synonym_threshold is not None else (0.6 if "hashing" in str(name) else 0.8)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ie: list[dict[str, float]] = []
    graphs: list[dict[str, Any]] = []
    kmax = max(ks)
    for seed in seeds:
        world = make_world(seed, **dict(world_kw or {}))
        lex = world.alias_table()
        ie.append({"seed": seed, **openie_scores(world)})
        ie.append({"seed": seed, "distractors": True,
                   **openie_scores(world, world.distractor_passages(max(distractors), seed=1000 + seed))})
        base = [(p.id, p.text) for p in world.passages()]
        extra = [(p.id, p.text) for p in world.distractor_passages(max(distractors), seed=1000 + seed)]
        qs = {kind: world.questions(kind, n_questions, seed=seed) for kind in kinds}
        for nd in distractors:
            corpus = base + extra[:nd]
            pids = [p for p, _ in corpus]
            pvecs = emb.encode([t for _, t in corpus])
            g_full = build_graph(corpus, emb, lex, synonym_threshold=tau)
            g_nosyn = build_graph(corpus, emb, lex, synonyms=False)
            g_canon = build_graph(corpus, emb, lex, synonym_threshold=tau, canonical=True)
            graphs.append({"seed": seed, "n_distractors": nd, "nodes": len(g_full.nodes),
                           "edges": len(g_full.edges) // 2, "synonym_edges": g_full.n_synonym_edges})
            for kind, qlist in qs.items():
                texts = [q.text for q in qlist]
                sup = [q.support for q in qlist]
                got = {
                    "dense": dense_retrieve(texts, pids, pvecs, emb, k=kmax),
                    "keyword": keyword_retrieve(texts, corpus, k=kmax),
                    "ppr": g_full.retrieve(texts, emb, k=kmax, alpha=alpha),
                    "ppr_no_spec": g_full.retrieve(texts, emb, k=kmax, alpha=alpha, specificity=False),
                    "ppr_no_syn": g_nosyn.retrieve(texts, emb, k=kmax, alpha=alpha),
                    "ppr_oracle_alias": g_canon.retrieve(texts, emb, k=kmax, alpha=alpha),
                }
                for method, ret in got.items():
                    rows.append({"seed": seed, "n_distractors": nd, "kind": kind, "method": method,
                                 "n_questions": len(qlist),
                                 **{f"recall@{k}": recall_at_k(ret, sup, k) for k in ks},
                                 **{f"frac@{k}": recall_at_k(ret, sup, k, "fraction") for k in ks}})
    cfg = {"seeds": list(seeds), "distractors": list(distractors), "kinds": list(kinds), "n_questions": n_questions,
           "embedder": str(name), "synonym_threshold": tau, "alpha": alpha, "world_kw": dict(world_kw or {})}
    return {"config": cfg, "rows": rows, "openie": ie, "graph": graphs, "seconds": time.perf_counter() - t0}


def summarize(result: Mapping[str, Any], k: int = 5, metric: str = "recall") -> dict[tuple[str, int, str],
                                                                                    tuple[float, float]]:
    """(kind, n_distractors, method) -> (mean, std over seeds) of ``metric@k`` (metric "recall" or "frac")."""
    acc: dict[tuple[str, int, str], list[float]] = {}
    for r in result["rows"]:
        acc.setdefault((r["kind"], r["n_distractors"], r["method"]), []).append(r[f"{metric}@{k}"])
    return {key: (float(np.mean(v)), float(np.std(v))) for key, v in acc.items()}


def load(path: str | Path | None = None) -> dict[str, Any]:
    """The committed full run (labkit/assets/hipporag.json), or the JSON at ``path``."""
    return load_results(RESULTS, "labkit.episodic.hipporag", path, what="HippoRAG results")


def main(argv: Sequence[str] | None = None) -> None:
    """Full run with MiniLM, 3 seeds, distractors 0/200/1000; writes labkit/assets/hipporag.json."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--n-questions", type=int, default=100)
    a = ap.parse_args(argv)
    res = run_experiment(embedder=a.embedder, n_questions=a.n_questions)
    Path(a.out).write_text(json.dumps(res, indent=1))
    for (kind, nd, m), (mu, sd) in sorted(summarize(res).items()):
        print(f"{kind} d={nd:5d} {m:12s} R@5={mu:.3f}±{sd:.3f} R@20={summarize(res, 20)[kind, nd, m][0]:.3f}")
    print(f"{res['seconds']:.1f} s")


if __name__ == "__main__":
    main()
