r"""A-MEM: an agentic memory whose notes are analysed, linked and evolved as they arrive (Xu et al., 2025).

Every turn the agent lives through becomes a *note* ``m_i = (c_i, t_i, K_i, G_i, X_i)``: content, time, keywords,
tags and a context description. Adding a note runs three steps, each a decision of a pluggable :class:`NoteAgent`
(rule-based here; an LLM client can implement the same three methods):

1. **Note construction.** Keywords ``K_i`` are the note's content words with the largest TF-IDF over the store so
   far, ``tfidf(w) = tf(w, c_i) \cdot \log\frac{1 + N}{1 + df(w)}``; tags ``G_i`` are topic cues (home, work,
   travel, pet, hobby, event, chit-chat) plus the speaker; the context ``X_i`` names the speaker, the date and the
   entities (capitalised spans). The note is embedded from *all* its fields,
   ``e_i = f(c_i \oplus K_i \oplus G_i \oplus X_i)`` (a unit vector), written as labelled fields
   ("... Keywords: a, b. Tags: home. Context: ...", :func:`enriched_text`).
2. **Link generation.** Candidates are the ``k_links`` nearest notes by cosine, ``\mathcal{N}_i = \mathrm{top}_k
   \{ e_i \cdot e_j \}`` found by :func:`labkit.kernels.sim_topk` (no N x N matrix), kept when
   ``e_i \cdot e_j \ge \tau`` (``link_threshold``), united with up to ``k_links`` most recent notes that share an
   entity. The agent decides which candidates become links (the rule: cosine >= tau or a shared entity; a
   chit-chat note, with no entity and no topic tag, is not linked by similarity alone). Links are written to the
   store's ``links`` table with **explicit note ids** (never search-rank positions) and are **symmetric**: both
   ``i \to j`` and ``j \to i`` with the same ``kind`` = ``"amem:<reason>"`` (reason ``sim``, ``entity`` or
   ``sim+entity``) and weight = cosine.
3. **Memory evolution.** For each linked neighbour the agent may rewrite its tags and context (default rule: merge
   the new note's topic tags, append "linked #i: <new context>" to the context, capped at ``max_context`` chars).
   Each rewrite is :meth:`MemoryStore.update_note` — a new *version*, the old one kept in ``note_versions`` — and the
   neighbour's embedding is refreshed lazily (A-MEM's periodic "consolidation") before the next search.

Retrieval ranks notes by ``e_j \cdot q``, takes the best ``k_seed`` as seeds, then adds their 1-hop linked notes
(ranked by their own score), then fills up with the remaining dense ranking, returning ``k`` notes in all (equal
budget with plain dense retrieval); ``order="per-seed"`` puts each seed's links right after it instead;
``search(..., budget="expand")`` returns the seeds' full 1-hop neighbourhood, as A-MEM's ``search_agentic`` does.

:func:`evaluate` measures evidence recall@k on generated LoCoMo-style conversations against dense and keyword
search and the ablations; ``python -m labkit.episodic.amem`` writes the committed run (labkit/assets/amem.json).

Where this differs from the paper: no LLM writes keywords, tags or contexts or decides links; the rule-based agent
is a transparent stand-in, so the numbers here measure the *structure* (enriched embeddings, links, evolution), not
an LLM's judgement.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from labkit.episodic.store import MemoryStore, Note

__all__ = [
    "AMEM_VARIANTS",
    "AddResult",
    "AgenticMemory",
    "KINDS",
    "LinkDecision",
    "NoteAgent",
    "NoteFields",
    "RuleAgent",
    "auroc",
    "build_memories",
    "enriched_text",
    "evaluate",
    "extract_entities",
    "load",
    "recall_at",
    "topic_tags",
]

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_CAP_SPAN = re.compile(r"[A-Z][\w'\-]*(?:\s+(?:of\s+|the\s+)?[A-Z][\w'\-]*)*")
STOPWORDS = frozenset(
    "a an the and or but if of to in on at for with from by as is are was were be been being i me my we our you "
    "your he she it they them their this that these those so too very just really honestly here there what when "
    "where which who why how do does did have has had not no yes oh hey haha lately again soon anyway last next "
    "week weekend month year days these finally started start new old big news good same more tell know mean "
    "been some all can will would could should about into up out over".split()
)
_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("home", ("moved", "live", "living", "house", "apartment")),
    ("work", ("job", "work", "working", "quit", "office", "boss")),
    ("travel", ("trip", "visit", "visited", "holiday", "travel")),
    ("pet", ("adopted", "dog", "cat", "parrot", "rabbit", "pet")),
    ("hobby", ("learning", "hobby", "practice", "lessons")),
    ("event", ("festival", "conference", "match", "concert", "went to the", "was at the")),
)


def extract_entities(text: str) -> tuple[str, ...]:
    """Capitalised spans of ``text`` (rule-based NER): "I moved to Lake Quendle" -> ("Lake Quendle",).

    A single capitalised word that starts a sentence ("Hey", "Big news") is not an entity; "I" never is.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    out: list[str] = []
    for m in _CAP_SPAN.finditer(text):
        span = m.group(0).strip()
        words = span.split()
        start = m.start()
        before = text[:start].rstrip()
        sentence_start = not before or before[-1] in ".!?:"
        if sentence_start:
            if len(words) == 1:
                continue
            if words[0].lower() in STOPWORDS:  # "Big News" -> drop the cue word, keep nothing if one word left
                words = words[1:]
                if len(words) < 1 or (len(words) == 1 and words[0].lower() in STOPWORDS):
                    continue
        if words == ["I"] or all(w.lower() in STOPWORDS for w in words):
            continue
        out.append(" ".join(words))
    return tuple(dict.fromkeys(out))


def topic_tags(text: str) -> tuple[str, ...]:
    """Topic cue tags of a text (home, work, travel, pet, hobby, event), or ("chit-chat",) when none fires."""
    low = text.lower()
    words = set(_WORD.findall(low))
    tags = [t for t, cues in _TOPICS if any((c in low) if " " in c else (c in words) for c in cues)]
    return tuple(tags) or ("chit-chat",)


def _chitchat(tags: Sequence[str], entities: Sequence[str]) -> bool:
    """A note with no topic tag and no entity: nothing an agent could connect it by."""
    return not entities and all(t == "chit-chat" or t.startswith("speaker:") for t in tags)


# ------------------------------------------------------------------------------------------------ agent protocol
@dataclass(frozen=True)
class NoteFields:
    """What note construction produces: A-MEM's keywords K, tags G, context X, and the entities used for linking."""

    keywords: tuple[str, ...]
    tags: tuple[str, ...]
    context: str
    entities: tuple[str, ...]


@dataclass(frozen=True)
class LinkDecision:
    """Link the new note to ``note_id`` (explicit id) for ``reason`` ("sim", "entity" or "sim+entity")."""

    note_id: int
    reason: str
    weight: float


@runtime_checkable
class NoteAgent(Protocol):
    """The three "LLM decisions" of A-MEM. :class:`RuleAgent` implements them with rules; an LLM client would
    implement the same methods (prompt with the note/candidates, parse a JSON answer) — never called in tests."""

    def analyze(self, text: str, speaker: str | None, when: str, df: Counter, n_docs: int) -> NoteFields:
        """Build keywords, tags and context for a new note (``df``: document frequency of words so far)."""
        ...

    def link(self, note: NoteFields, candidates: Sequence[tuple[Note, float, bool]]) -> list[LinkDecision]:
        """Choose links among candidates ``(note, cosine, shares_entity)``."""
        ...

    def evolve(self, new_id: int, note: NoteFields, neighbour: Note) -> dict[str, object] | None:
        """Return new ``tags`` / ``context`` for a linked neighbour, or None to leave it unchanged."""
        ...


class RuleAgent:
    """Rule-based :class:`NoteAgent`.

    Args:
        n_keywords: keywords per note (top TF-IDF content words).
        link_threshold: cosine a candidate needs to be linked for similarity alone (``tau``).
        entity_min_sim: cosine an entity-sharing candidate needs (-1 links every entity match).
        max_tags: cap on a note's tags after merging.
        max_context: cap on a context's length in characters (oldest appended parts dropped first).
        link_chitchat: also link notes with no entity and no topic tag by similarity (False: such a note is linked
            to nothing, and a candidate like it only through a shared entity).
        evolve_fields: what evolution may rewrite in a neighbour: ("tags", "context"), ("tags",) or ("context",).
    """

    def __init__(self, n_keywords: int = 3, link_threshold: float = 0.5, entity_min_sim: float = -1.0,
                 max_tags: int = 8, max_context: int = 400, link_chitchat: bool = False,
                 evolve_fields: Sequence[str] = ("tags", "context")) -> None:
        if not isinstance(n_keywords, int) or n_keywords < 0:
            raise ValueError(f"n_keywords must be an int >= 0, got {n_keywords!r}")
        if not -1.0 <= link_threshold <= 1.0:
            raise ValueError(f"link_threshold must be in [-1, 1], got {link_threshold}")
        if not -1.0 <= entity_min_sim <= 1.0:
            raise ValueError(f"entity_min_sim must be in [-1, 1], got {entity_min_sim}")
        if max_tags < 1:
            raise ValueError(f"max_tags must be >= 1, got {max_tags}")
        if max_context < 40:
            raise ValueError(f"max_context must be >= 40, got {max_context}")
        self.n_keywords = n_keywords
        self.link_threshold = float(link_threshold)
        self.entity_min_sim = float(entity_min_sim)
        self.max_tags = int(max_tags)
        self.max_context = int(max_context)
        self.link_chitchat = bool(link_chitchat)
        if not set(evolve_fields) <= {"tags", "context"}:
            raise ValueError(f"evolve_fields must be a subset of ('tags', 'context'), got {evolve_fields!r}")
        self.evolve_fields = tuple(evolve_fields)

    def analyze(self, text: str, speaker: str | None, when: str, df: Counter, n_docs: int) -> NoteFields:
        words = [w.lower() for w in _WORD.findall(text)]
        content = [w for w in words if w not in STOPWORDS and len(w) > 2]
        tf = Counter(content)
        scored = sorted(tf, key=lambda w: (-tf[w] * math.log((1 + n_docs) / (1 + df.get(w, 0))), w))
        keywords = tuple(scored[: self.n_keywords])
        entities = extract_entities(text)
        tags = topic_tags(text) + ((f"speaker:{speaker}",) if speaker else ())
        who = speaker or "someone"
        context = f"{who} on {when}" + (f" about {', '.join(entities)}" if entities else "")
        return NoteFields(keywords, tags, context, entities)

    def link(self, note: NoteFields, candidates: Sequence[tuple[Note, float, bool]]) -> list[LinkDecision]:
        out = []
        if not self.link_chitchat and _chitchat(note.tags, note.entities):
            return out
        for cand, sim, shared in candidates:
            if not self.link_chitchat and _chitchat(cand.tags, ()) and not shared:
                continue
            by_sim = sim >= self.link_threshold
            by_ent = shared and sim >= self.entity_min_sim
            if by_sim or by_ent:
                reason = "sim+entity" if by_sim and by_ent else ("sim" if by_sim else "entity")
                out.append(LinkDecision(cand.id, reason, float(sim)))
        return out

    def evolve(self, new_id: int, note: NoteFields, neighbour: Note) -> dict[str, object] | None:
        topics = [t for t in note.tags if not t.startswith("speaker:") and t != "chit-chat"]
        tags = list(dict.fromkeys([*neighbour.tags, *topics]))[: self.max_tags]
        parts = neighbour.context.split(" | ")
        parts.append(f"linked #{new_id}: {note.context}")
        while len(parts) > 2 and len(" | ".join(parts)) > self.max_context:
            parts.pop(1)  # keep the note's own description (part 0) and the newest links
        context = " | ".join(parts)[: self.max_context]
        if "tags" not in self.evolve_fields:
            tags = list(neighbour.tags)
        if "context" not in self.evolve_fields:
            context = neighbour.context
        if tuple(tags) == neighbour.tags and context == neighbour.context:
            return None
        return {"tags": tags, "context": context}


# ------------------------------------------------------------------------------------------------ the memory
@dataclass(frozen=True)
class AddResult:
    """What :meth:`AgenticMemory.add_note` did: the new id, its links and the neighbours it evolved."""

    note_id: int
    links: tuple[LinkDecision, ...]
    evolved: tuple[int, ...]
    fields: NoteFields = field(repr=False)


def enriched_text(note: Note, fields: bool = True) -> str:
    """The text A-MEM embeds for a note: ``c ⊕ K ⊕ G ⊕ X`` as labelled fields (``fields=False``: ``c`` only).

    "Ann: I moved to Lake Quendle. Keywords: quendle, moved. Tags: home. Context: Ann on May 2023 about Lake
    Quendle." The speaker tag is left out (the speaker is already in the content and the context).
    """
    if not fields:
        return note.text
    tags = ", ".join(t for t in note.tags if not t.startswith("speaker:"))
    return f"{note.text} Keywords: {', '.join(note.keywords)}. Tags: {tags}. Context: {note.context}."


class AgenticMemory:
    """A-MEM on a :class:`MemoryStore` (see the module docstring).

    Args:
        store: the store (its embedder is used for the plain text vectors; may be None).
        embedder: embeds the enriched note text ``c ⊕ K ⊕ G ⊕ X`` (``encode(texts) -> (N, dim)`` unit rows).
        k_links: most neighbours considered per new note (by similarity, and again by shared entity).
        link_threshold: cosine for a similarity link (passed to the default :class:`RuleAgent`).
        evolve: run memory evolution (False: links only — the "without evolution" ablation).
        agent: the decision maker (default ``RuleAgent(link_threshold=link_threshold)``).
        embed_fields: embed ``c ⊕ K ⊕ G ⊕ X`` (A-MEM); False embeds the content ``c`` only (an ablation that isolates
            the links from the enriched vectors).
        backend: :func:`labkit.kernels.sim_topk` backend for the neighbour search ("torch": one query row per
            note, where Numba's compile time would not pay).
    """

    def __init__(self, store: MemoryStore, embedder, k_links: int = 5, link_threshold: float = 0.5,
                 evolve: bool = True, agent: NoteAgent | None = None, embed_fields: bool = True,
                 backend: str = "torch") -> None:
        if not isinstance(store, MemoryStore):
            raise TypeError(f"store must be a MemoryStore, got {type(store).__name__}")
        if embedder is None or not hasattr(embedder, "encode") or not hasattr(embedder, "dim"):
            raise ValueError(f"embedder must have encode() and dim, got {embedder!r}")
        if isinstance(k_links, bool) or not isinstance(k_links, int) or k_links < 1:
            raise ValueError(f"k_links must be an int >= 1, got {k_links!r}")
        if not isinstance(link_threshold, (int, float)) or not -1.0 <= link_threshold <= 1.0:
            raise ValueError(f"link_threshold must be in [-1, 1], got {link_threshold!r}")
        self.store = store
        self.embedder = embedder
        self.k_links = k_links
        self.link_threshold = float(link_threshold)
        self.evolve = bool(evolve)
        self.embed_fields = bool(embed_fields)
        self.agent: NoteAgent = agent if agent is not None else RuleAgent(link_threshold=link_threshold)
        self.backend = backend
        self.df: Counter = Counter()
        self.entity_notes: dict[str, list[int]] = defaultdict(list)
        self._ids: list[int] = []
        self._vecs = np.zeros((0, int(embedder.dim)), dtype=np.float32)
        self._row: dict[int, int] = {}
        self._dirty: set[int] = set()
        self.stats = {"links": 0, "evolutions": 0, "consolidated": 0}
        for note in store.notes(status="active"):  # resume on an existing file
            self._index(note, extract_entities(note.text))
        if self._ids:
            self._dirty.update(self._ids)
            self.consolidate()

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def _index(self, note: Note, entities: Sequence[str], vec: np.ndarray | None = None) -> None:
        self.df.update({w.lower() for w in _WORD.findall(note.text)})
        for e in entities:
            self.entity_notes[e.lower()].append(note.id)
        self._row[note.id] = len(self._ids)
        self._ids.append(note.id)
        v = np.zeros((1, self._vecs.shape[1]), np.float32) if vec is None else vec.reshape(1, -1)
        self._vecs = np.concatenate([self._vecs, v.astype(np.float32)], axis=0)

    def consolidate(self) -> int:
        """Re-embed the notes whose fields changed since they were embedded (A-MEM's consolidation); returns how
        many were re-embedded."""
        if not self._dirty:
            return 0
        ids = sorted(self._dirty)
        notes = self.store.get_notes(ids)
        vecs = np.asarray(self.embedder.encode([enriched_text(n, self.embed_fields) for n in notes]), dtype=np.float32)
        for nid, v in zip(ids, vecs):
            self._vecs[self._row[nid]] = v
        self._dirty.clear()
        self.stats["consolidated"] += len(ids)
        return len(ids)

    # -- writing --------------------------------------------------------------------------------------------------
    def add_note(self, text: str, time: float, session: str | None = None, speaker: str | None = None,
                 when: str | None = None) -> AddResult:
        """Construct, store, link and (optionally) evolve one note. ``time``: event time (s or days, any unit);
        ``speaker`` goes into the stored text as "speaker: text"; ``when`` is a human date for the context."""
        return self.add_notes([{"text": text, "time": time, "session": session, "speaker": speaker,
                                "when": when}])[0]

    def add_notes(self, items: Sequence[dict], consolidate_every: int = 1) -> list[AddResult]:
        """Add notes in order, as :meth:`add_note` would one by one, but with the I/O batched: note construction
        runs first for all (note ``i``'s TF-IDF sees notes ``< i`` only), the notes are written in one transaction
        and their vectors encoded in one batch; then each note is linked and evolves its neighbours in order.

        ``items``: dicts with ``text``, ``time`` and optional ``session``, ``speaker``, ``when``.
        ``consolidate_every``: re-embed the evolved neighbours after every this many notes (1: before each new
        note is linked, exactly as ``add_note``; A-MEM's code consolidates after every 100 evolutions). Larger
        values batch the re-embedding; the link search then sees some neighbours' older vectors, so the links
        may differ a little.
        """
        if isinstance(consolidate_every, bool) or not isinstance(consolidate_every, int) or consolidate_every < 1:
            raise ValueError(f"consolidate_every must be an int >= 1, got {consolidate_every!r}")
        rows, fields = [], []
        df = Counter(self.df)
        for i, it in enumerate(items):
            text, time = it.get("text"), it.get("time")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"items[{i}]: text must be a non-empty str, got {text!r}")
            if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time):
                raise ValueError(f"items[{i}]: time must be a finite number, got {time!r}")
            speaker = it.get("speaker")
            full = f"{speaker}: {text}" if speaker else text
            f = self.agent.analyze(text, speaker, it.get("when") or f"t={time:g}", df, len(self._ids) + i)
            df.update({w.lower() for w in _WORD.findall(full)})
            fields.append(f)
            rows.append({"text": full, "created_at": float(time), "session": it.get("session"),
                         "keywords": list(f.keywords), "tags": list(f.tags), "context": f.context, "kind": "amem"})
        if not rows:
            return []
        ids = self.store.add_notes(rows)
        notes = self.store.get_notes(ids)
        vecs = np.asarray(self.embedder.encode([enriched_text(n, self.embed_fields) for n in notes]), dtype=np.float32)
        out = []
        for i, (note, f, vec) in enumerate(zip(notes, fields, vecs)):
            if i % consolidate_every == 0:
                self.consolidate()
            out.append(self._link_and_evolve(note, f, vec))
        return out

    def _link_and_evolve(self, note: Note, fields: NoteFields, vec: np.ndarray) -> AddResult:
        nid = note.id
        candidates = self._candidates(vec, fields.entities)
        decisions = self.agent.link(fields, candidates) if candidates else []
        self._index(note, fields.entities, vec)
        rows = []
        for d in decisions:
            kind = f"amem:{d.reason}"
            rows += [(nid, d.note_id, kind, d.weight), (d.note_id, nid, kind, d.weight)]  # symmetric
        if rows:
            self.store.link_many(rows)
            self.stats["links"] += len(decisions)
        evolved = []
        if self.evolve:
            for d in decisions:
                nb = self.store.get_note(d.note_id)
                change = self.agent.evolve(nid, fields, nb)
                if change:
                    self.store.update_note(d.note_id, reason=f"amem-evolve: linked #{nid} ({d.reason})", **change)
                    self._dirty.add(d.note_id)
                    evolved.append(d.note_id)
            self.stats["evolutions"] += len(evolved)
        return AddResult(nid, tuple(decisions), tuple(evolved), fields)

    def _candidates(self, vec: np.ndarray, entities: Sequence[str]) -> list[tuple[Note, float, bool]]:
        n = len(self._ids)
        if n == 0:
            return []
        import torch

        from labkit.kernels import sim_topk

        idx, val = sim_topk(torch.from_numpy(self._vecs), min(self.k_links, n), Q=torch.from_numpy(vec[None]),
                            backend=self.backend)
        sims = {self._ids[int(i)]: float(s) for i, s in zip(idx[0].tolist(), val[0].tolist()) if i >= 0}
        shared: set[int] = set()
        for e in entities:
            shared.update(self.entity_notes.get(e.lower(), [])[-self.k_links:])
        for j in shared - set(sims):
            sims[j] = float(self._vecs[self._row[j]] @ vec)
        ids = sorted(sims, key=lambda j: (-sims[j], j))
        notes = self.store.get_notes(ids)
        return [(nt, sims[nt.id], nt.id in shared) for nt in notes]

    # -- reading --------------------------------------------------------------------------------------------------
    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """``ids: (n,)`` and cosine ``s: (n,)`` of every note's enriched vector with the query."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty str, got {query!r}")
        self.consolidate()
        q = np.asarray(self.embedder.encode([query]), dtype=np.float32)[0]
        return np.asarray(self._ids, dtype=np.int64), self._vecs @ q

    def search(self, query: str, k: int = 5, expand: bool = True, k_seed: int | None = None,
               budget: str = "k", order: str = "pooled", links_per_seed: int = 2) -> list[tuple[int, float, str]]:
        """``[(note id, score, via)]`` with ``via`` = "dense" or "link:<seed id>".

        ``expand=False``: plain top-k over the enriched vectors. Otherwise two ways to spend the budget on links:

        - ``order="pooled"``: the top ``k_seed`` (default ``ceil(k/2)``) seeds, then all their 1-hop linked notes
          ranked by their own score, then the rest of the dense ranking;
        - ``order="per-seed"`` (A-MEM's ``search_agentic`` order): walk the dense ranking; each note taken brings up
          to ``links_per_seed`` of its linked notes (best score first) right after it.

        ``budget="k"`` returns ``k`` notes in all (equal budget with plain dense retrieval); ``budget="expand"``
        returns the top ``k_seed`` seeds and *every* linked note, as A-MEM's search does (more than ``k``).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if budget not in ("k", "expand"):
            raise ValueError(f"budget must be 'k' or 'expand', got {budget!r}")
        if order not in ("pooled", "per-seed"):
            raise ValueError(f"order must be 'pooled' or 'per-seed', got {order!r}")
        if isinstance(links_per_seed, bool) or not isinstance(links_per_seed, int) or links_per_seed < 0:
            raise ValueError(f"links_per_seed must be an int >= 0, got {links_per_seed!r}")
        k_seed = math.ceil(k / 2) if k_seed is None else k_seed
        if isinstance(k_seed, bool) or not isinstance(k_seed, int) or not 1 <= k_seed <= k:
            raise ValueError(f"k_seed must be an int in 1..k={k}, got {k_seed!r}")
        ids, s = self.scores(query)
        if len(ids) == 0:
            return []
        ranking = [int(ids[i]) for i in np.lexsort((ids, -s))]
        score = {int(ids[i]): float(s[i]) for i in range(len(ids))}
        if not expand:
            return [(j, score[j], "dense") for j in ranking[:k]]

        def neighbours(j: int) -> list[int]:
            nb = {ln.dst for ln in self.store.links(j, direction="out") if ln.kind.startswith("amem:")}
            return sorted((x for x in nb if x in score), key=lambda x: (-score[x], x))

        out: list[tuple[int, float, str]] = []
        taken: set[int] = set()
        if order == "per-seed" and budget == "k":
            for j in ranking:
                if len(out) >= k:
                    break
                if j in taken:
                    continue
                out.append((j, score[j], "dense"))
                taken.add(j)
                for x in [x for x in neighbours(j) if x not in taken][:links_per_seed]:
                    if len(out) < k:
                        out.append((x, score[x], f"link:{j}"))
                        taken.add(x)
            return out
        seeds = ranking[:k_seed]
        out = [(j, score[j], "dense") for j in seeds]
        taken = set(seeds)
        linked: dict[int, int] = {}
        for sd in seeds:
            for x in neighbours(sd):
                if x not in taken:
                    linked.setdefault(x, sd)
        for j in sorted(linked, key=lambda j: (-score[j], j)):
            out.append((j, score[j], f"link:{linked[j]}"))
            taken.add(j)
        if budget == "expand":
            return out
        out = out[:k]
        taken = {j for j, _, _ in out}
        for j in ranking:
            if len(out) >= k:
                break
            if j not in taken:
                out.append((j, score[j], "dense"))
                taken.add(j)
        return out
        out = out[:k]
        for i in order:
            if len(out) >= k:
                break
            j = int(ids[i])
            if j not in taken:
                out.append((j, score[j], "dense"))
                taken.add(j)
        return out


# ------------------------------------------------------------------------------------------------ the experiment
KINDS = ("single-hop", "multi-hop", "temporal", "knowledge-update", "adversarial")
AMEM_VARIANTS: dict[str, dict] = {  # name -> AgenticMemory / RuleAgent settings (all at the same k_links, tau)
    "A-MEM (links + evolution)": {"evolve": True},
    "A-MEM without evolution": {"evolve": False},
    "A-MEM, evolve tags only": {"evolve": True, "evolve_fields": ("tags",)},
    "A-MEM links on content vectors": {"evolve": True, "embed_fields": False},
}
RESULTS = Path(__file__).resolve().parents[1] / "assets" / "amem.json"


def recall_at(retrieved: Sequence[str], gold: Sequence[str]) -> float | None:
    """Fraction of the gold evidence ids among ``retrieved`` (None when there is no gold evidence)."""
    if not gold:
        return None
    return len(set(retrieved) & set(gold)) / len(set(gold))


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(a random positive scores above a random negative), ties count 1/2 (the Mann-Whitney AUROC)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    p, n = np.asarray(pos, dtype=np.float64)[:, None], np.asarray(neg, dtype=np.float64)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def build_memories(conv, embedder, variants: dict[str, dict] | None = None, k_links: int = 5,
                   link_threshold: float = 0.5, consolidate_every: int = 1) -> dict[str, tuple[AgenticMemory, dict]]:
    """One in-memory A-MEM per variant, fed the conversation's turns in order: ``{name: (memory, note id -> turn
    id)}``. The session date is the note's "when" (it goes into the context)."""
    from labkit.data.worlds import format_date

    variants = AMEM_VARIANTS if variants is None else variants
    day = {t.id: s.t for s in conv.sessions for t in s.turns}
    turns = conv.turns()
    items = [{"text": t.text, "time": float(day[t.id]), "session": str(t.session), "speaker": t.speaker,
              "when": format_date(day[t.id])} for t in turns]
    out = {}
    for name, cfg in variants.items():
        cfg = dict(cfg)
        agent = RuleAgent(link_threshold=link_threshold, link_chitchat=cfg.pop("link_chitchat", False),
                          evolve_fields=cfg.pop("evolve_fields", ("tags", "context")))
        m = AgenticMemory(MemoryStore(":memory:"), embedder, k_links=k_links, link_threshold=link_threshold,
                          agent=agent, **cfg)
        res = m.add_notes(items, consolidate_every=consolidate_every)
        out[name] = (m, {r.note_id: t.id for r, t in zip(res, turns)})
    return out


def evaluate(seeds: Sequence[int] = (0, 1, 2), embedder=None, ks: Sequence[int] = (1, 3, 5, 10), n_sessions: int = 20,
             turns_per_session: int = 12, n_questions: int = 60, variants: dict[str, dict] | None = None,
             consolidate_every: int = 1, progress: bool = True) -> dict:
    """Evidence recall@k on ``make_conversations`` QA, per question kind and seed, for every method at each k.

    Methods: ``dense`` (the turn "speaker: text"), ``dense, dated`` ("speaker (session date): text"), ``keyword
    (FTS5)`` and ``keyword, dated`` (BM25 over the same two texts), ``A-MEM notes, no links`` (the enriched note
    vectors of the no-evolution memory, plain top-k), each A-MEM variant at equal budget (``search(k)``) and A-MEM
    with A-MEM's own budget (the top-k notes plus *all* their linked notes, ``budget="expand"``, ``k_seed=k``),
    next to the no-link notes' top-n with n = the number of notes that budget returned for the same question.
    Adversarial questions have no evidence; for them ``abstain_auroc`` tells how well the top-1 score separates
    answerable from adversarial questions (1.0: a threshold exists that rejects every adversarial one).

    Returns ``{"recall": {method: {k: {kind: [per-seed mean]}}}, "n": {kind: [per-seed count]},
    "expand_size": {k: mean notes returned}, "abstain_auroc": {method: [per seed]}, "stats": ..., ...}``.
    """
    import time as _time

    import torch

    from labkit.data.worlds import format_date, make_conversations, make_world
    from labkit.episodic.embed import HashingEmbedder
    from labkit.runtime import progress as _progress

    torch.set_num_threads(1)
    embedder = HashingEmbedder(dim=256) if embedder is None else embedder
    ks = tuple(int(k) for k in ks)
    t0 = _time.perf_counter()
    rec: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    n: dict[str, list[int]] = defaultdict(list)
    expand_size: dict[int, list[int]] = defaultdict(list)
    auc: dict[str, list[float]] = defaultdict(list)
    stats: dict[str, list[dict]] = defaultdict(list)
    for seed in _progress(list(seeds), desc="A-MEM seeds", **({} if progress else {"disable": True})):
        conv = make_conversations(make_world(seed=seed), n_sessions=n_sessions, turns_per_session=turns_per_session,
                                  seed=seed, n_questions=n_questions)
        turns = conv.turns()
        day = {t.id: s.t for s in conv.sessions for t in s.turns}
        plain, dated = MemoryStore(":memory:", embedder=embedder), MemoryStore(":memory:", embedder=embedder)
        p_ids = plain.add_notes([f"{t.speaker}: {t.text}" for t in turns])
        d_ids = dated.add_notes([f"{t.speaker} ({format_date(day[t.id])}): {t.text}" for t in turns])
        p2t, d2t = dict(zip(p_ids, (t.id for t in turns))), dict(zip(d_ids, (t.id for t in turns)))
        mems = build_memories(conv, embedder, variants, consolidate_every=consolidate_every)
        for name, (m, _) in mems.items():
            stats[name].append(dict(m.stats))
        base = mems.get("A-MEM without evolution") or next(iter(mems.values()))
        per: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        top1: dict[str, dict[bool, list[float]]] = defaultdict(lambda: defaultdict(list))
        n_seed: dict[str, int] = defaultdict(int)
        kmax = max(ks)
        for qa in conv.qa:
            n_seed[qa.kind] += 1
            qv = np.asarray(embedder.encode([qa.question]), dtype=np.float32)[0]
            ranked = {"dense": [(p2t[i], s) for i, s in plain.dense_search(qv, kmax)],
                      "dense, dated": [(d2t[i], s) for i, s in dated.dense_search(qv, kmax)],
                      "keyword (FTS5)": [(p2t[i], s) for i, s in plain.keyword_search(qa.question, kmax)],
                      "keyword, dated": [(d2t[i], s) for i, s in dated.keyword_search(qa.question, kmax)],
                      "A-MEM notes, no links": [(base[1][i], s) for i, s, _ in base[0].search(qa.question, kmax,
                                                                                             expand=False)]}
            answerable = bool(qa.evidence)
            for name, r in ranked.items():
                top1[name][answerable].append(r[0][1] if r else -1e9)
            if not answerable:
                continue
            for k in ks:
                got = {name: [t for t, _ in r[:k]] for name, r in ranked.items()}
                for name, (m, i2t) in mems.items():
                    got[name] = [i2t[i] for i, _, _ in m.search(qa.question, k)]
                m, i2t = mems.get("A-MEM (links + evolution)", next(iter(mems.values())))
                wide = m.search(qa.question, k, k_seed=k, budget="expand")
                got["A-MEM, its own budget (k + links)"] = [i2t[i] for i, _, _ in wide]
                expand_size[k].append(len(wide))
                got["A-MEM notes, as many as its own budget"] = [  # the fair comparator of the row above
                    base[1][i] for i, _, _ in base[0].search(qa.question, max(len(wide), 1), expand=False)]
                for name, g in got.items():
                    per[name][k][qa.kind].append(recall_at(g, qa.evidence))
        for name, by_k in per.items():
            for k, by_kind in by_k.items():
                for kind, v in by_kind.items():
                    rec[name][k][kind].append(float(np.mean(v)))
                allv = [x for v in by_kind.values() for x in v]
                rec[name][k]["all"].append(float(np.mean(allv)))
        for kind in KINDS:
            n[kind].append(n_seed.get(kind, 0))
        for name, d in top1.items():
            auc[name].append(auroc(d[True], d[False]))
        plain.close()
        dated.close()
        for m, _ in mems.values():
            m.store.close()
    return {"recall": {m: {str(k): dict(v) for k, v in by_k.items()} for m, by_k in rec.items()},
            "n": dict(n), "ks": list(ks), "seeds": list(seeds), "embedder": embedder.name,
            "expand_size": {str(k): float(np.mean(v)) for k, v in expand_size.items()},
            "abstain_auroc": dict(auc), "stats": {k: v for k, v in stats.items()},
            "sizes": {"n_sessions": n_sessions, "turns_per_session": turns_per_session, "n_questions": n_questions},
            "seconds": _time.perf_counter() - t0}


def load(path: str | Path | None = None) -> dict:
    """The committed full run (labkit/assets/amem.json), or the JSON at ``path``."""
    from labkit.runtime import load_results

    return load_results(RESULTS, "labkit.episodic.amem", path, what="A-MEM results")


def main() -> None:  # pragma: no cover - writes the committed result
    """`python -m labkit.episodic.amem`: the full run (MiniLM, held-out seeds 3..7) -> labkit/assets/amem.json."""
    import json

    from labkit.episodic.embed import MiniLMEmbedder
    from labkit.episodic.hipporag import CachedEmbedder

    res = evaluate(seeds=(3, 4, 5, 6, 7), embedder=CachedEmbedder(MiniLMEmbedder(threads=1)))
    RESULTS.write_text(json.dumps(res, indent=1))
    for m, by_k in res["recall"].items():
        print(f"{m:38s}", {kd: round(float(np.mean(v)), 3) for kd, v in by_k["5"].items()})
    print(f"{res['seconds']:.0f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
