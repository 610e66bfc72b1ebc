r"""Multi-granularity memory: index a conversation as turns, sessions and summaries, and pick one per query
(after MemGAS, "Towards Multi-Granularity Memory Association and Selection for Long-Term Conversational Agents").

Units. A *turn* unit is one utterance ("speaker: text"); a *session* unit is a whole session (its date and every
turn); a *summary* unit is an extractive, rule-based summary of a session: its date plus the turns that carry
content (a named entity or a topic cue, see :func:`labkit.episodic.amem.topic_tags`), chit-chat dropped. Every unit
knows the turn ids it covers.

Retrieval at granularity ``g`` at a budget of ``k`` turns: rank g's units by cosine ``s_u = e_u \cdot q``, walk
them best first and emit their turns (inside a unit, by the turn's own cosine) until ``k`` turns are out — so every
granularity is compared at the same number of returned turns.

Selection. The *entropy router* (MemGAS) turns each granularity's scores into a distribution
``p_u = \mathrm{softmax}(s_u / T)`` and picks the granularity whose normalised entropy
``H_g = -\sum_u p_u \log p_u / \log n_g`` is smallest (the most peaked, i.e. most confident, relevance). The *rule
router* reads the question: "when / first / before / after" -> summary (dated), "still / now / both / when they"
-> session, else turn. The *oracle* takes, per question, the best granularity (an upper bound, not a method).
"""

from __future__ import annotations

import math
import re
import time as _time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labkit.episodic.amem import extract_entities, topic_tags

__all__ = ["GRANULARITIES", "KINDS", "GranularIndex", "Unit", "build_units", "evaluate", "recall_at",
           "route_by_rule"]

GRANULARITIES = ("turn", "session", "summary")
KINDS = ("single-hop", "multi-hop", "temporal", "knowledge-update", "adversarial")


@dataclass(frozen=True)
class Unit:
    """A memory unit at one granularity: its text and the turn ids it covers."""

    granularity: str
    text: str
    turns: tuple[str, ...]


def _date(day: int) -> str:
    from labkit.data.worlds import format_date

    return format_date(day)


def build_units(conv) -> dict[str, list[Unit]]:
    """Turn, session and summary units of a :class:`labkit.data.worlds.Conversation`."""
    units: dict[str, list[Unit]] = {g: [] for g in GRANULARITIES}
    for s in conv.sessions:
        date = _date(s.t)
        lines = []
        keep = []
        for t in s.turns:
            line = f"{t.speaker}: {t.text}"
            units["turn"].append(Unit("turn", line, (t.id,)))
            lines.append(line)
            if extract_entities(t.text) or topic_tags(t.text) != ("chit-chat",):
                keep.append((t.id, line))
        units["session"].append(Unit("session", f"Session {s.index} ({date}). " + " ".join(lines),
                                     tuple(t.id for t in s.turns)))
        if keep:
            units["summary"].append(Unit("summary", f"{date}: " + " ".join(x[1] for x in keep),
                                         tuple(x[0] for x in keep)))
    return units


def route_by_rule(question: str) -> str:
    """The rule router: a granularity from the question's surface form (see the module docstring)."""
    if not isinstance(question, str):
        raise TypeError(f"question must be str, got {type(question).__name__}")
    q = question.lower()
    if re.search(r"\b(when did|happened first|before|after)\b", q):
        return "summary"
    if re.search(r"\b(still|now|both|when they)\b", q):
        return "session"
    return "turn"


class GranularIndex:
    """Turn / session / summary units of one conversation, embedded once.

    Args:
        conv: a Conversation.
        embedder: ``encode(texts) -> (N, dim)`` unit rows.
        temperature: softmax temperature ``T`` of the entropy router (> 0).
    """

    def __init__(self, conv, embedder, temperature: float = 0.05) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.embedder = embedder
        self.units = build_units(conv)
        self.vecs = {g: np.asarray(embedder.encode([u.text for u in us]), dtype=np.float32)
                     for g, us in self.units.items()}
        self.turn_row = {u.turns[0]: i for i, u in enumerate(self.units["turn"])}

    def _check_g(self, g: str) -> None:
        if g not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {g!r}")

    def scores(self, q: np.ndarray) -> dict[str, np.ndarray]:
        """Cosine of every unit with the query vector ``q: (dim,)``, per granularity."""
        return {g: self.vecs[g] @ q for g in GRANULARITIES}

    def entropy(self, s: np.ndarray) -> float:
        """Normalised entropy of ``softmax(s / T)`` in [0, 1] (0 for a single unit)."""
        if len(s) < 2:
            return 0.0
        z = (s - s.max()) / self.temperature
        p = np.exp(z) / np.exp(z).sum()
        return float(-(p * np.log(np.maximum(p, 1e-30))).sum() / math.log(len(s)))

    def route(self, question: str, router: str = "entropy", q: np.ndarray | None = None) -> str:
        """The granularity chosen for ``question`` by ``router`` ("entropy" or "rule")."""
        if router == "rule":
            return route_by_rule(question)
        if router != "entropy":
            raise ValueError(f"router must be 'entropy' or 'rule', got {router!r}")
        q = np.asarray(self.embedder.encode([question]), dtype=np.float32)[0] if q is None else q
        sc = self.scores(q)
        return min(GRANULARITIES, key=lambda g: (self.entropy(sc[g]), GRANULARITIES.index(g)))

    def retrieve(self, question: str, granularity: str, k: int = 5, q: np.ndarray | None = None) -> list[str]:
        """The first ``k`` turn ids from ``granularity``'s units, best unit first (turns inside a unit by score)."""
        self._check_g(granularity)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        q = np.asarray(self.embedder.encode([question]), dtype=np.float32)[0] if q is None else q
        s = self.vecs[granularity] @ q
        s_turn = self.vecs["turn"] @ q
        out: list[str] = []
        for i in np.lexsort((np.arange(len(s)), -s)):
            members = sorted(self.units[granularity][i].turns, key=lambda t: (-s_turn[self.turn_row[t]], t))
            for t in members:
                if t not in out:
                    out.append(t)
                if len(out) >= k:
                    return out
        return out


def recall_at(retrieved: Sequence[str], gold: Sequence[str]) -> float | None:
    """Fraction of gold evidence ids among ``retrieved`` (None when there is no gold evidence)."""
    if not gold:
        return None
    return len(set(retrieved) & set(gold)) / len(set(gold))


def _table(per: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    out = {}
    for method, by_kind in per.items():
        row = {kind: float(np.mean(v)) for kind, v in by_kind.items() if v}
        allv = [x for v in by_kind.values() for x in v]
        row["all"] = float(np.mean(allv)) if allv else float("nan")
        out[method] = row
    return out


def evaluate(seeds: Sequence[int] = (0, 1, 2), embedder=None, k: int = 5, n_sessions: int = 10,
             turns_per_session: int = 12, n_questions: int = 40, amem: bool = True) -> dict:
    """Recall@k of gold evidence turns on ``make_conversations`` QA, averaged over seeds, per question type.

    Methods: dense and keyword (FTS5) over turns, A-MEM (enriched, no links / links + evolution / links without
    evolution) when ``amem``, and the granularity variants (turn, session, summary, entropy router, rule router,
    oracle). Adversarial questions have no gold evidence: they are counted (``n``) but have no recall.
    Returns ``{"recall": {method: {kind: r}}, "n": {kind: count}, "route": {router: {kind: {g: share}}},
    "seconds": float, ...}``.
    """
    import torch

    from labkit.data.worlds import make_conversations, make_world
    from labkit.episodic.amem import AgenticMemory
    from labkit.episodic.embed import HashingEmbedder
    from labkit.episodic.store import MemoryStore

    torch.set_num_threads(1)
    embedder = HashingEmbedder(dim=256) if embedder is None else embedder
    t0 = _time.perf_counter()
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    n: dict[str, int] = defaultdict(int)
    route: dict[str, dict[str, dict[str, int]]] = {r: defaultdict(lambda: defaultdict(int)) for r in
                                                    ("entropy", "rule")}
    for seed in seeds:
        world = make_world(seed=seed)
        conv = make_conversations(world, n_sessions=n_sessions, turns_per_session=turns_per_session, seed=seed,
                                  n_questions=n_questions)
        turns = conv.turns()
        day = {t.id: s.t for s in conv.sessions for t in s.turns}
        plain = MemoryStore(":memory:", embedder=embedder)
        pids = plain.add_notes([{"text": f"{t.speaker}: {t.text}", "created_at": float(day[t.id]),
                                 "session": str(t.session)} for t in turns])
        pid2turn = dict(zip(pids, (t.id for t in turns)))
        mems = {}
        if amem:
            for name, evo, ef in (("A-MEM", True, True), ("A-MEM no evolution", False, True),
                                  ("A-MEM text vectors", True, False)):
                st = MemoryStore(":memory:", embedder=None)
                m = AgenticMemory(st, embedder, k_links=5, link_threshold=0.5, evolve=evo, embed_fields=ef)
                ids = [m.add_note(t.text, float(day[t.id]), session=str(t.session), speaker=t.speaker,
                                  when=_date(day[t.id])).note_id for t in turns]
                mems[name] = (m, dict(zip(ids, (t.id for t in turns))))
        gi = GranularIndex(conv, embedder)
        for qa in conv.qa:
            n[qa.kind] += 1
            qv = np.asarray(embedder.encode([qa.question]), dtype=np.float32)[0]
            for r in ("entropy", "rule"):
                route[r][qa.kind][gi.route(qa.question, r, qv)] += 1
            if not qa.evidence:
                continue
            res = {"dense": [pid2turn[i] for i, _ in plain.dense_search(qv, k)],
                   "keyword (FTS5)": [pid2turn[i] for i, _ in plain.keyword_search(qa.question, k)]}
            if amem:
                m, id2t = mems["A-MEM"]
                res["A-MEM enriched, no links"] = [id2t[i] for i, _, _ in m.search(qa.question, k, expand=False)]
                res["A-MEM (links + evolution)"] = [id2t[i] for i, _, _ in m.search(qa.question, k)]
                m2, id2t2 = mems["A-MEM no evolution"]
                res["A-MEM without evolution"] = [id2t2[i] for i, _, _ in m2.search(qa.question, k)]
                m3, id2t3 = mems["A-MEM text vectors"]
                res["A-MEM links on text vectors"] = [id2t3[i] for i, _, _ in m3.search(qa.question, k)]
            best = -1.0
            for g in GRANULARITIES:
                r_g = gi.retrieve(qa.question, g, k, qv)
                res[f"gran: {g}"] = r_g
                best = max(best, recall_at(r_g, qa.evidence))
            res["gran: entropy router"] = gi.retrieve(qa.question, gi.route(qa.question, "entropy", qv), k, qv)
            res["gran: rule router"] = gi.retrieve(qa.question, route_by_rule(qa.question), k, qv)
            for name, r_ in res.items():
                per[name][qa.kind].append(recall_at(r_, qa.evidence))
            per["gran: oracle (upper bound)"][qa.kind].append(best)
        plain.close()
        for m, _ in mems.values():
            m.store.close()
    return {"recall": _table(per), "n": dict(n), "k": k, "seeds": list(seeds), "embedder": embedder.name,
            "route": {r: {kd: dict(v) for kd, v in d.items()} for r, d in route.items()},
            "sizes": {"n_sessions": n_sessions, "turns_per_session": turns_per_session, "n_questions": n_questions},
            "seconds": _time.perf_counter() - t0}


def main() -> None:  # pragma: no cover - writes the full result
    """`python -m labkit.episodic.granularity`: full run (MiniLM, 3 seeds) -> assets/episodic_granularity.json."""
    import json
    from pathlib import Path

    from labkit.episodic.embed import MiniLMEmbedder

    res = evaluate(seeds=(0, 1, 2), embedder=MiniLMEmbedder(threads=1), n_sessions=20, turns_per_session=12,
                   n_questions=60)
    path = Path(__file__).resolve().parents[1] / "assets" / "episodic_granularity.json"
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["recall"], indent=1), res["seconds"])


if __name__ == "__main__":  # pragma: no cover
    main()
