r"""HippoRAG: a knowledge graph of phrases searched by Personalized PageRank (Gutiérrez et al., 2024).

Offline indexing turns every passage into triples with an OpenIE step (here rule-based: relation patterns for the
world's templated sentences, entity spans resolved with a name/alias lexicon), then builds a graph whose nodes are
**phrases** (lower-cased entity surface forms):

- relation edges ``h — t`` (weight +1 per triple, both directions);
- synonym edges between phrases whose name embeddings have cosine ``≥ tau`` (weight = the cosine), so that
  ``"Bob Moreno"`` and ``"Robert Moreno"`` are one hop apart;
- a passage × node incidence ``M (n_passages, N)``, ``M[p, i]`` = number of p's distinct triples that mention
  node i (a passage is split into sentences and each sentence parsed).

Online, the query's entities (lexicon matches in the question, linked to their phrase node, or to the nearest
node by name embedding) seed Personalized PageRank. **Node specificity** (HippoRAG's IDF-like weight) is
``s_i = 1 / |P_i|`` with ``P_i`` the passages that contain node ``i``; the restart vector is ``e_q ∝ Σ_{i∈Q} s_i 1_i``.
PPR with restart probability α solves

.. math::  r = α\, e_q + (1 − α)\, P\, r,\qquad P[v, u] = w_{uv} / \sum_{v'} w_{uv'},

(HippoRAG's ``damping`` 0.5 is ``1 − α``), and a passage scores the PPR mass of the facts it states, as in
HippoRAG's ``docs_to_facts · facts_to_phrases``: ``score(p) = Σ_{(h,r,t)∈p} (r_h + r_t) = Σ_i M[p, i]\, r_i``.
One PPR walk spreads from the question entity across a relation edge to the bridge entity and on into the
passage about the bridge, which is why one retrieval step can find both supporting passages of a 2-hop
question, while a dense retriever only sees the text of the question.

The experiment retrieves **entity pages** (:func:`entity_pages`: all one-fact passages of a world with the same
subject, like the Wikipedia paragraphs of 2WikiMultiHopQA and MuSiQue); over one-fact passages the hop-2 passage
is one of many tied passages that name the bridge, and recall@5 is near zero for every method
(:func:`unit_diagnosis`).

API: ``openie(text, lexicon)``, ``split_sentences``, ``passage_triples``, ``entity_pages``, ``openie_scores(world)``,
``HippoGraph`` (``build_graph``), ``HippoGraph.retrieve``, ``synonym_stats``, ``ppr_walk``, ``dense_retrieve``,
``keyword_retrieve``, ``recall_at_k``, ``page_questions``, ``run_experiment``, ``unit_diagnosis`` and
``load``/``main`` for the committed full run (``python -m labkit.episodic.hipporag``, about 3 min on 2 cores).
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
    "METHODS",
    "QUESTION_SETS",
    "WORLDS",
    "HippoGraph",
    "CachedEmbedder",
    "build_graph",
    "dense_retrieve",
    "entity_pages",
    "keyword_retrieve",
    "link_entities",
    "load",
    "main",
    "node_specificity",
    "openie",
    "openie_scores",
    "page_questions",
    "passage_triples",
    "ppr_walk",
    "recall_at_k",
    "run_experiment",
    "split_sentences",
    "summarize",
    "synonym_stats",
    "unit_diagnosis",
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


_SENT_END = re.compile(r"(?<=\.)\s+(?=\S)")
_ABBREV = re.compile(r"(?:^|\s)[A-Z][a-z]{0,2}\.$")  # "R.", "Pt.", "Sys." end no sentence unless doubled ("Sys..")


def split_sentences(text: str) -> list[str]:
    """Split a passage into sentences at ". " boundaries, keeping abbreviations (``R. Moreno``, ``Pt. Valmora``,
    ``Corvane Sys.``) inside their sentence: a period ends a sentence unless the word before it is a capitalised
    1-3 letter abbreviation and the period is not doubled (``"... works at Corvane Sys.. Next"``)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    out: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        head = text[start:m.start()]
        if _ABBREV.search(head) and not head.endswith(".."):
            continue
        out.append(head.strip())
        start = m.end()
    tail = text[start:].strip()
    return [x for x in out + [tail] if x]


def passage_triples(text: str, lexicon: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """The distinct OpenIE triples of a (multi-sentence) passage, in order: :func:`openie` per sentence."""
    return list(dict.fromkeys(t for sent in split_sentences(text) for t in openie(sent, lexicon)))


def entity_pages(passages: Sequence[Any]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Group one-fact passages into Wikipedia-like **entity pages**: all passages whose (first) triple has the same
    subject, in time order, joined into one text, id ``"page:<subject id>"``. Pages come in order of their first
    passage. Returns ``(pages [(page id, text)], page_of {passage id: page id})``.

    This is the retrieval unit of 2WikiMultiHopQA / MuSiQue (a paragraph about its title entity): the gold
    passages of "In which city is the employer of X based?" are X's page and the employer's page."""
    groups: dict[str, list[Any]] = {}
    for p in passages:
        subj = p.triples[0][0] if p.triples else p.id
        groups.setdefault(subj, []).append(p)
    pages, page_of = [], {}
    for subj, plist in groups.items():
        pid = f"page:{subj}"
        for q in plist:
            page_of[q.id] = pid
        pages.append((pid, " ".join(q.text for q in sorted(plist, key=lambda q: (q.t, q.id)))))
    return pages, page_of


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
    (n_passages, N) float32 triple counts, ``edges`` {(u, v): weight} both directions, ``node_vecs`` (N, dim) name
    embeddings, ``synonym_pairs`` [(i, j, cosine)] with i < j."""

    nodes: list[str]
    passage_ids: list[str]
    incidence: np.ndarray
    edges: dict[tuple[int, int], float]
    node_vecs: np.ndarray
    lexicon: dict[str, str]
    triples: list[tuple[str, str, str]] = field(default_factory=list)
    n_synonym_edges: int = 0
    canonical: dict[str, str] | None = None
    synonym_pairs: list[tuple[int, int, float]] = field(default_factory=list)
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
    """Lower-cased lexicon surfaces found in ``text`` (longest match first, whole words, case-insensitive). Like a
    named-entity tagger, a span written with no capital letter and no digit is not a name: an acronym alias such
    as "OF" does not match the word "of"."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    hit = _LEX_CACHE.get(id(lexicon))
    if hit is None or hit[0] is not lexicon:
        alts = sorted(lexicon, key=len, reverse=True)
        rx = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, alts)) + r")(?!\w)", re.IGNORECASE) if alts else None
        _LEX_CACHE.clear()
        _LEX_CACHE[id(lexicon)] = hit = (lexicon, rx)
    rx = hit[1]
    if rx is None:
        return []
    return list(dict.fromkeys(m.group(1).lower() for m in rx.finditer(text)
                              if any(c.isupper() or c.isdigit() for c in m.group(1))))


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
        trips = passage_triples(text, lexicon)
        if canon is not None:
            trips = list(dict.fromkeys((canon.get(h, h), r, canon.get(t, t)) for h, r, t in trips))
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
        inc_rows.append(mentioned)
    inc = np.zeros((len(pids), len(nodes)), dtype=np.float32)
    for j, row in enumerate(inc_rows):
        np.add.at(inc[j], row, 1.0)  # M[p, i] = number of p's distinct triples that mention node i
    vecs = np.asarray(embedder.encode(nodes), dtype=np.float32) if nodes else np.zeros((0, 1), np.float32)
    n_syn = 0
    syn_pairs: list[tuple[int, int, float]] = []
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
                if (i, int(j)) not in edges:  # a synonym pair is linked once, with weight = cosine
                    syn_pairs.append((min(i, int(j)), max(i, int(j)), w))
                for e in ((i, int(j)), (int(j), i)):
                    if e not in edges:
                        n_syn += 1
                        edges[e] = w
    g = HippoGraph(nodes, pids, inc, edges, vecs, dict(lexicon), all_triples, n_syn // 2, canon, syn_pairs)
    return g


def synonym_stats(graph: HippoGraph) -> dict[str, Any]:
    """How good the synonym edges are, judged by the lexicon (surface -> entity id): ``precision`` = fraction of
    synonym pairs that denote one entity, ``recall`` = fraction of same-entity phrase pairs (aliases written in
    different passages) that got a synonym edge, and a few ``true`` / ``false`` example pairs with their cosine."""
    lex = graph.lexicon
    ent = [lex.get(n) for n in graph.nodes]
    true = [(graph.nodes[i], graph.nodes[j], round(w, 3)) for i, j, w in graph.synonym_pairs
            if ent[i] is not None and ent[i] == ent[j]]
    false = [(graph.nodes[i], graph.nodes[j], round(w, 3)) for i, j, w in graph.synonym_pairs
             if ent[i] is None or ent[i] != ent[j]]
    by_ent: dict[str, int] = {}
    for e in ent:
        if e is not None:
            by_ent[e] = by_ent.get(e, 0) + 1
    n_alias_pairs = sum(c * (c - 1) // 2 for c in by_ent.values())
    n = len(graph.synonym_pairs)
    return {"pairs": n, "true": len(true), "alias_pairs": n_alias_pairs,
            "precision": len(true) / n if n else float("nan"),
            "recall": len(true) / n_alias_pairs if n_alias_pairs else float("nan"),
            "true_examples": sorted(true, key=lambda x: -x[2])[:6],
            "false_examples": sorted(false, key=lambda x: -x[2])[:6]}


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
    top-k; "fraction": mean fraction of each question's gold passages in the top-k (HippoRAG's retrieval_eval, the
    paper's R@2 / R@5); "any": fraction of questions with at least one gold passage in the top-k."""
    if mode not in ("all", "fraction", "any"):
        raise ValueError(f"mode must be 'all', 'fraction' or 'any', got {mode!r}")
    if len(retrieved) != len(support):
        raise ValueError(f"retrieved and support must have the same length, got {len(retrieved)} and {len(support)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not support:
        return float("nan")
    pairs = [(set(r[:k]), set(g)) for r, g in zip(retrieved, support, strict=True)]
    if mode == "all":
        return float(np.mean([g <= r for r, g in pairs]))
    if mode == "any":
        return float(np.mean([bool(g & r) for r, g in pairs]))
    return float(np.mean([len(g & r) / len(g) for r, g in pairs]))


class CachedEmbedder:
    """An embedder wrapper with a text -> vector cache (the same texts are encoded once across settings and
    across the graph, the dense index and the notebook's examples)."""

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
WORLDS: dict[str, dict[str, Any]] = {
    "crowded": {},  # make_world's defaults: 120 people share 24 cities and 30 organisations, 5 of them hubs
    "sparse": {"n_places": 120, "n_orgs": 120},  # 96 cities, 120 organisations: most entities in few pages
}
QUESTION_SETS: dict[str, dict[str, Any]] = {
    "2hop": {"max_start_passages": 5},  # a specific start entity (mentioned in <= 5 one-fact passages)
    "2hop_ctx": {"max_start_passages": 5, "context": True},  # + a second, often hub, entity named in the question
    "2hop_all": {},  # any start entity
}


def page_questions(world: Any, qset: Mapping[str, Any], n: int, seed: int,
                   page_of: Mapping[str, str]) -> tuple[list[Any], list[tuple[str, ...]]]:
    """Up to ``n`` 2-hop questions (``World.questions(**qset)``) whose two hops lie in two different entity pages,
    with their gold page ids ``(page of hop 1, page of hop 2)``."""
    qs = world.questions("2hop", 4 * n + 50, seed=seed, **dict(qset))
    out, sup = [], []
    for q in qs:
        pages = tuple(dict.fromkeys(page_of[s] for s in q.support))
        if len(pages) == 2:
            out.append(q)
            sup.append(pages)
        if len(out) == n:
            break
    return out, sup


def run_experiment(seeds: Sequence[int] = (0, 1, 2), distractors: Sequence[int] = (0, 500, 2000),
                   worlds: Mapping[str, Mapping[str, Any]] | None = None,
                   question_sets: Mapping[str, Mapping[str, Any]] | None = None, n_questions: int = 100,
                   embedder: Any = "minilm", synonym_threshold: float | None = None, alpha: float = 0.5,
                   methods: Sequence[str] = METHODS, ks: Sequence[int] = (1, 2, 5, 10, 20),
                   show_progress: bool = True) -> dict[str, Any]:
    """Retrieval of the two gold entity pages of 2-hop questions by dense, keyword, PPR and its ablations.

    The corpus is the world's entity pages (:func:`entity_pages`) plus ``n_distractors`` one-sentence pages about
    new namesake people and same-stem organisations (``World.distractor_passages``, hubs included). For every world
    (``worlds``: name -> make_world kwargs, default :data:`WORLDS`), seed and distractor count, each question set
    (``question_sets``: name -> World.questions kwargs, default :data:`QUESTION_SETS`) is scored with all-gold
    recall@k ("recall@k"), mean fraction of gold ("frac@k", the paper's R@k) and any-gold recall ("any@k").

    embedder: "hashing" | "minilm" or an embedder object. synonym_threshold: None -> 0.8 for MiniLM (the paper's),
    0.6 for hashing. alpha: PPR restart probability (0.5 = HippoRAG's damping 0.5). Returns {"config", "rows",
    "templates" (hits@5 by question template at the largest distractor count, summed over seeds), "openie",
    "graph", "seconds"}.
    """
    import torch

    from labkit.data.worlds import make_world
    from labkit.episodic.embed import get_embedder
    from labkit.runtime import progress

    torch.set_num_threads(1)
    if not distractors or min(distractors) < 0:
        raise ValueError(f"distractors must be non-empty counts >= 0, got {distractors!r}")
    if not seeds:
        raise ValueError("seeds must be non-empty")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)!r}")
    worlds = dict(WORLDS if worlds is None else worlds)
    question_sets = dict(QUESTION_SETS if question_sets is None else question_sets)
    name = embedder if isinstance(embedder, str) else getattr(embedder, "name", "custom")
    emb = embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(
        get_embedder(embedder) if isinstance(embedder, str) else embedder)
    tau = synonym_threshold if synonym_threshold is not None else (0.6 if "hashing" in str(name) else 0.8)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ie: list[dict[str, Any]] = []
    graphs: list[dict[str, Any]] = []
    templates: dict[tuple[str, str, str, str], list[int]] = {}
    kmax, nd_max = max(ks), max(distractors)
    jobs = [(wn, seed) for wn in worlds for seed in seeds]
    for wn, seed in progress(jobs, desc="HippoRAG worlds x seeds", disable=not show_progress):
        world = make_world(seed, **dict(worlds[wn]))
        lex = world.alias_table()
        pages, page_of = entity_pages(world.passages())
        extra_p = world.distractor_passages(nd_max, seed=1000 + seed)
        extra, _ = entity_pages(extra_p)
        ie.append({"world": wn, "seed": seed, "corpus": "world", **openie_scores(world)})
        ie.append({"world": wn, "seed": seed, "corpus": "distractors", **openie_scores(world, extra_p)})
        qs = {qn: page_questions(world, qkw, n_questions, seed, page_of) for qn, qkw in question_sets.items()}
        for nd in distractors:
            corpus = pages + extra[:nd]
            pids = [p for p, _ in corpus]
            need = set(methods)
            g_full = build_graph(corpus, emb, lex, synonym_threshold=tau) if need & {"ppr", "ppr_no_spec"} else None
            g_nosyn = build_graph(corpus, emb, lex, synonyms=False) if "ppr_no_syn" in need else None
            g_canon = (build_graph(corpus, emb, lex, synonym_threshold=tau, canonical=True)
                       if "ppr_oracle_alias" in need else None)
            if g_full is not None:
                st = synonym_stats(g_full)
                graphs.append({"world": wn, "seed": seed, "n_distractors": nd, "pages": len(corpus),
                               "nodes": len(g_full.nodes), "edges": len(g_full.edges) // 2,
                               "synonym_edges": g_full.n_synonym_edges, "triples": len(g_full.triples),
                               **{k: st[k] for k in ("true", "alias_pairs", "precision", "recall")}})
            pvecs = emb.encode([t for _, t in corpus]) if "dense" in need else None
            for qn, (qlist, sup) in qs.items():
                texts = [q.text for q in qlist]
                got: dict[str, list[list[str]]] = {}
                for m in methods:
                    if m == "dense":
                        got[m] = dense_retrieve(texts, pids, pvecs, emb, k=kmax)
                    elif m == "keyword":
                        got[m] = keyword_retrieve(texts, corpus, k=kmax)
                    else:
                        g = {"ppr": g_full, "ppr_no_spec": g_full, "ppr_no_syn": g_nosyn,
                             "ppr_oracle_alias": g_canon}[m]
                        got[m] = g.retrieve(texts, emb, k=kmax, alpha=alpha, specificity=m != "ppr_no_spec")
                for m, ret in got.items():
                    rows.append({"world": wn, "seed": seed, "n_distractors": nd, "questions": qn, "method": m,
                                 "n_questions": len(qlist),
                                 **{f"recall@{k}": recall_at_k(ret, sup, k) for k in ks},
                                 **{f"frac@{k}": recall_at_k(ret, sup, k, "fraction") for k in ks},
                                 **{f"any@{k}": recall_at_k(ret, sup, k, "any") for k in ks}})
                    if nd == nd_max:
                        for q, r, s in zip(qlist, ret, sup, strict=True):
                            key = (wn, qn, m, "→".join(rel for _, rel, _ in q.path))
                            acc = templates.setdefault(key, [0, 0])
                            acc[0] += 1
                            acc[1] += int(set(s) <= set(r[:5]))
    cfg = {"seeds": list(seeds), "distractors": list(distractors), "worlds": {k: dict(v) for k, v in worlds.items()},
           "question_sets": {k: dict(v) for k, v in question_sets.items()}, "n_questions": n_questions,
           "embedder": str(name), "synonym_threshold": tau, "alpha": alpha, "methods": list(methods),
           "ks": list(ks), "unit": "entity pages"}
    tmpl = [{"world": w, "questions": qn, "method": m, "template": t, "n": n, "hits@5": h}
            for (w, qn, m, t), (n, h) in sorted(templates.items())]
    return {"config": cfg, "rows": rows, "templates": tmpl, "openie": ie, "graph": graphs,
            "seconds": time.perf_counter() - t0}


def summarize(result: Mapping[str, Any], k: int = 5, metric: str = "recall", world: str | None = None,
              questions: str | None = None) -> dict[tuple[str, str, int, str], tuple[float, float]]:
    """(world, question set, n_distractors, method) -> (mean, std over seeds) of ``metric@k`` (metric "recall",
    "frac" or "any"), optionally only one world / question set."""
    acc: dict[tuple[str, str, int, str], list[float]] = {}
    for r in result["rows"]:
        if (world is not None and r["world"] != world) or (questions is not None and r["questions"] != questions):
            continue
        acc.setdefault((r["world"], r["questions"], r["n_distractors"], r["method"]), []).append(r[f"{metric}@{k}"])
    return {key: (float(np.mean(v)), float(np.std(v))) for key, v in acc.items()}


def ppr_walk(graph: HippoGraph, question: str, embedder: Any, top: int = 8, alpha: float = 0.5,
             specificity: bool = True) -> dict[str, Any]:
    """One PPR walk, for display: the seeds (phrase, weight), the ``top`` nodes by PPR mass and the ``top``
    passages by score. Returns {"seeds": [(phrase, weight)], "nodes": [(phrase, mass)], "passages": [(id,
    score)]}."""
    import torch

    from labkit.kernels import ppr

    ids = graph.seeds([question], embedder)[0]
    if not ids:
        return {"seeds": [], "nodes": [], "passages": []}
    spec = graph.specificity if specificity else np.ones(len(graph.nodes))
    s = np.zeros(len(graph.nodes))
    s[ids] = spec[ids]
    r, _ = ppr(graph.transition(), torch.from_numpy(s), alpha=float(alpha), tol=1e-10, max_iter=300,
               backend="torch")
    r = r.numpy()
    sc = graph.incidence.astype(np.float64) @ r
    order = np.lexsort((np.arange(len(r)), -r))[:top]
    porder = np.lexsort((np.arange(len(sc)), -sc))[:top]
    return {"seeds": [(graph.nodes[i], float(s[i] / s.sum())) for i in ids],
            "nodes": [(graph.nodes[i], float(r[i])) for i in order],
            "passages": [(graph.passage_ids[j], float(sc[j])) for j in porder]}


def unit_diagnosis(world: Any, embedder: Any, n_questions: int = 100, seed: int = 0, synonym_threshold: float = 0.8,
                   alpha: float = 0.5) -> dict[str, dict[str, float]]:
    """Why the retrieval unit matters: the same 2-hop questions (any start entity) retrieved over the world's
    **one-fact passages** and over its **entity pages**, no distractors. Per unit: all-gold recall@5 of PPR and
    dense, the median PPR rank (0 = first) of the hop-1 and hop-2 gold, the mean number of units that mention the
    start entity and the bridge entity."""
    emb = embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(embedder)
    lex = world.alias_table()
    pages, page_of = entity_pages(world.passages())
    units = {"passages": ([(p.id, p.text) for p in world.passages()], {p.id: p.id for p in world.passages()}),
             "pages": (pages, page_of)}
    out: dict[str, dict[str, float]] = {}
    for unit, (corpus, to_unit) in units.items():
        qs, sup = page_questions(world, {}, n_questions, seed, page_of)
        sup = [tuple(to_unit[s] for s in q.support) for q in qs]
        g = build_graph(corpus, emb, lex, synonym_threshold=synonym_threshold)
        texts = [q.text for q in qs]
        sc = g.scores(texts, emb, alpha=alpha)
        pos = {p: i for i, p in enumerate(g.passage_ids)}
        ranks = np.array([[int((row > row[pos[s]]).sum()) for s in su] for row, su in zip(sc, sup, strict=True)])
        mentions: dict[str, set[str]] = {}
        for p in world.passages():
            for e in p.entities:
                mentions.setdefault(e, set()).add(to_unit[p.id])
        top = [[g.passage_ids[j] for j in np.lexsort((np.arange(len(r)), -r))[:5]] for r in sc]
        dense = dense_retrieve(texts, g.passage_ids, emb.encode([t for _, t in corpus]), emb, k=5)
        out[unit] = {"n_units": len(corpus), "n_questions": len(qs), "ppr_recall@5": recall_at_k(top, sup, 5),
                     "dense_recall@5": recall_at_k(dense, sup, 5),
                     "median_rank_hop1": float(np.median(ranks[:, 0])),
                     "median_rank_hop2": float(np.median(ranks[:, 1])),
                     "start_units": float(np.mean([len(mentions[q.entity]) for q in qs])),
                     "bridge_units": float(np.mean([len(mentions[q.path[0][2]]) for q in qs]))}
    return out


def load(path: str | Path | None = None) -> dict[str, Any]:
    """The committed full run (labkit/assets/hipporag.json), or the JSON at ``path``."""
    return load_results(RESULTS, "labkit.episodic.hipporag", path, what="HippoRAG results")


def main(argv: Sequence[str] | None = None) -> None:
    """Full run: MiniLM, seeds 0-2, crowded and sparse worlds, 0/500/2000 distractor pages, 100 questions per set;
    writes labkit/assets/hipporag.json."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--n-questions", type=int, default=100)
    a = ap.parse_args(argv)
    res = run_experiment(embedder=a.embedder, n_questions=a.n_questions)
    from labkit.data.worlds import make_world
    from labkit.episodic.embed import get_embedder

    emb = CachedEmbedder(get_embedder(a.embedder))
    res["units"] = [{"world": wn, "seed": seed, "unit": unit, **d}
                    for wn, kw in WORLDS.items() for seed in res["config"]["seeds"]
                    for unit, d in unit_diagnosis(make_world(seed, **kw), emb, a.n_questions, seed,
                                                  res["config"]["synonym_threshold"]).items()]
    ex = build_graph(entity_pages(make_world(0, **WORLDS["sparse"]).passages())[0], emb,
                     make_world(0, **WORLDS["sparse"]).alias_table(), res["config"]["synonym_threshold"])
    res["synonym_examples"] = synonym_stats(ex)
    res["rows"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in res["rows"]]
    Path(a.out).write_text(json.dumps(res, indent=0))
    r5, f5 = summarize(res, 5), summarize(res, 5, "frac")
    for key, (mu, sd) in sorted(r5.items()):
        print(f"{key[0]:8s} {key[1]:9s} d={key[2]:5d} {key[3]:17s} all-R@5={mu:.3f}±{sd:.3f} frac@5={f5[key][0]:.3f}")
    for u in res["units"]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in u.items()})
    print(f"{res['seconds']:.1f} s")


if __name__ == "__main__":
    main()
