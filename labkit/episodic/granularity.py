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
``H_g = -\sum_u p_u \log p_u / \log n_g`` is smallest (the most peaked, i.e. most confident, relevance). The *soft
entropy router* keeps all three, weighted ``w_g ∝ 1/H_g``, and ranks turns by ``Σ_g w_g s_g(turn)`` (the score of
the unit of granularity g that holds the turn). The *rule router* reads the question: "when / first / before /
after" -> summary (dated), "still / now / both / when they" -> session, else turn. The *oracle* takes, per
question, the best granularity (an upper bound, not a method).

Not built here (MemGAS has them): Gaussian-mixture association of new memories with old ones, a keyword
granularity, PPR over the association graph and the LLM filter of retrieved memories.
"""

from __future__ import annotations

import math
import re
import time as _time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labkit.episodic.amem import KINDS, extract_entities, recall_at, topic_tags

__all__ = ["GRANULARITIES", "KINDS", "GranularIndex", "Unit", "build_units", "evaluate", "load", "recall_at",
           "route_by_rule"]

GRANULARITIES = ("turn", "session", "summary")


@dataclass(frozen=True)
class Unit:
    """A memory unit at one granularity: its text and the turn ids it covers."""

    granularity: str
    text: str
    turns: tuple[str, ...]


def _date(day: int) -> str:
    from labkit.data.worlds import format_date

    return format_date(day)


def build_units(conv, dated_turns: bool = True) -> dict[str, list[Unit]]:
    """Turn, session and summary units of a :class:`labkit.data.worlds.Conversation`.

    ``dated_turns``: a turn unit reads "speaker (session date): text" (§3 found the date is what a turn most
    lacks); False: "speaker: text". Session and summary units always carry their date."""
    units: dict[str, list[Unit]] = {g: [] for g in GRANULARITIES}
    for s in conv.sessions:
        date = _date(s.t)
        lines = []
        keep = []
        for t in s.turns:
            line = f"{t.speaker}: {t.text}"
            units["turn"].append(Unit("turn", f"{t.speaker} ({date}): {t.text}" if dated_turns else line, (t.id,)))
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

    def __init__(self, conv, embedder, temperature: float = 0.05, dated_turns: bool = True) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.embedder = embedder
        self.units = build_units(conv, dated_turns=dated_turns)
        self.vecs = {g: np.asarray(embedder.encode([u.text for u in us]), dtype=np.float32)
                     for g, us in self.units.items()}
        self.turn_row = {u.turns[0]: i for i, u in enumerate(self.units["turn"])}

    def _check_g(self, g: str) -> None:
        if g not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {g!r}")

    def scores(self, q: np.ndarray) -> dict[str, np.ndarray]:
        """Cosine of every unit with the query vector ``q: (dim,)``, per granularity."""
        return {g: self.vecs[g] @ q for g in GRANULARITIES}

    def entropy(self, s: np.ndarray, temperature: float | None = None) -> float:
        """Normalised entropy of ``softmax(s / T)`` in [0, 1] (0 for a single unit); ``T`` defaults to the index's."""
        if len(s) < 2:
            return 0.0
        z = (s - s.max()) / (self.temperature if temperature is None else temperature)
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

    def weights(self, q: np.ndarray, temperature: float | None = None) -> dict[str, float]:
        """MemGAS's soft selection: ``w_g ∝ 1 / H_g`` over the granularities (normalised to sum to 1)."""
        sc = self.scores(q)
        inv = {g: 1.0 / max(self.entropy(sc[g], temperature), 1e-6) for g in GRANULARITIES}
        z = sum(inv.values())
        return {g: v / z for g, v in inv.items()}

    def retrieve_soft(self, question: str, k: int = 5, q: np.ndarray | None = None,
                      temperature: float | None = None, weighting: str = "entropy") -> list[str]:
        """Top-``k`` turns by ``Σ_g w_g · s_g(turn)``, where ``s_g(turn)`` is the score of the granularity-g unit
        that holds the turn (its own score for "turn"; 0 when no summary holds it) and ``w_g`` = :meth:`weights`
        (``weighting="entropy"``) or 1/3 each (``"uniform"``, the ablation without the router)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if weighting not in ("entropy", "uniform"):
            raise ValueError(f"weighting must be 'entropy' or 'uniform', got {weighting!r}")
        q = np.asarray(self.embedder.encode([question]), dtype=np.float32)[0] if q is None else q
        w = self.weights(q, temperature) if weighting == "entropy" else dict.fromkeys(GRANULARITIES, 1 / 3)
        sc = self.scores(q)
        total = np.zeros(len(self.units["turn"]), dtype=np.float64)
        for g in GRANULARITIES:
            per_turn = np.zeros_like(total)
            for u, s_u in zip(self.units[g], sc[g]):
                for t in u.turns:
                    per_turn[self.turn_row[t]] = max(per_turn[self.turn_row[t]], float(s_u)) if g != "turn" else s_u
            total += w[g] * per_turn
        order = np.lexsort((np.arange(len(total)), -total))[:k]
        return [self.units["turn"][i].turns[0] for i in order]

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


def evaluate(seeds: Sequence[int] = (0, 1, 2), embedder=None, k: int = 5, n_sessions: int = 20,
             turns_per_session: int = 12, n_questions: int = 60, temperatures: Sequence[float] = (0.02, 0.05, 0.1),
             dated_turns: bool = True, progress: bool = True) -> dict:
    """Evidence recall@k (k turns returned by every method) on ``make_conversations`` QA, per kind and seed.

    Methods: each fixed granularity (turn, session, summary), the entropy router (hard: the granularity of least
    entropy; at each temperature), the soft entropy router (``w_g ∝ 1/H_g``), the same mix with equal weights,
    the rule router, and the oracle
    (per question the best fixed granularity: an upper bound, not a method). Adversarial questions have no
    evidence: they count in ``n`` and in the routers' choices only.
    Returns ``{"recall": {method: {kind: [per-seed mean]}}, "n": {kind: [per seed]}, "route": {router: {kind:
    {granularity: count}}}, "units": {granularity: mean units per conversation}, ...}``.
    """
    import torch

    from labkit.data.worlds import make_conversations, make_world
    from labkit.episodic.embed import HashingEmbedder
    from labkit.runtime import progress as _progress

    torch.set_num_threads(1)
    embedder = HashingEmbedder(dim=256) if embedder is None else embedder
    t0 = _time.perf_counter()
    rec: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    n: dict[str, list[int]] = defaultdict(list)
    route: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    n_units: dict[str, list[int]] = defaultdict(list)
    t_main = 0.05 if 0.05 in temperatures else temperatures[0]
    for seed in _progress(list(seeds), desc="granularity seeds", **({} if progress else {"disable": True})):
        conv = make_conversations(make_world(seed=seed), n_sessions=n_sessions, turns_per_session=turns_per_session,
                                  seed=seed, n_questions=n_questions)
        gi = GranularIndex(conv, embedder, temperature=t_main, dated_turns=dated_turns)
        for g in GRANULARITIES:
            n_units[g].append(len(gi.units[g]))
        per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        n_seed: dict[str, int] = defaultdict(int)
        for qa in conv.qa:
            n_seed[qa.kind] += 1
            qv = np.asarray(embedder.encode([qa.question]), dtype=np.float32)[0]
            sc = gi.scores(qv)
            picks = {f"entropy router, T={T:g}": min(GRANULARITIES, key=lambda g, T=T: (gi.entropy(sc[g], T),
                                                                                        GRANULARITIES.index(g)))
                     for T in temperatures}
            picks["rule router"] = route_by_rule(qa.question)
            for r, g in picks.items():
                route[r][qa.kind][g] += 1
            if not qa.evidence:
                continue
            res = {g: recall_at(gi.retrieve(qa.question, g, k, qv), qa.evidence) for g in GRANULARITIES}
            out = {f"fixed: {g}": v for g, v in res.items()}
            out.update({r: res[g] for r, g in picks.items()})
            out["soft entropy router"] = recall_at(gi.retrieve_soft(qa.question, k, qv), qa.evidence)
            out["equal-weight mix"] = recall_at(gi.retrieve_soft(qa.question, k, qv, weighting="uniform"),
                                                qa.evidence)
            out["oracle (upper bound)"] = max(res.values())
            for name, v in out.items():
                per[name][qa.kind].append(v)
        for name, by_kind in per.items():
            for kind, v in by_kind.items():
                rec[name][kind].append(float(np.mean(v)))
            rec[name]["all"].append(float(np.mean([x for v in by_kind.values() for x in v])))
        for kind in KINDS:
            n[kind].append(n_seed.get(kind, 0))
    return {"recall": {m: dict(v) for m, v in rec.items()}, "n": dict(n), "k": k, "seeds": list(seeds),
            "embedder": embedder.name, "route": {r: {kd: dict(v) for kd, v in d.items()} for r, d in route.items()},
            "units": {g: float(np.mean(v)) for g, v in n_units.items()}, "temperatures": list(temperatures),
            "dated_turns": dated_turns,
            "sizes": {"n_sessions": n_sessions, "turns_per_session": turns_per_session, "n_questions": n_questions},
            "seconds": _time.perf_counter() - t0}


RESULTS = Path(__file__).resolve().parents[1] / "assets" / "granularity.json"


def load(path: str | Path | None = None) -> dict:
    """The committed full run (labkit/assets/granularity.json), or the JSON at ``path``."""
    from labkit.runtime import load_results

    return load_results(RESULTS, "labkit.episodic.granularity", path, what="granularity results")


def main() -> None:  # pragma: no cover - writes the committed result
    """`python -m labkit.episodic.granularity`: full run (MiniLM, held-out seeds 3..7; turn units with and without
    their date) -> labkit/assets/granularity.json ``{"dated": ..., "undated": ...}``."""
    import json

    from labkit.episodic.embed import MiniLMEmbedder
    from labkit.episodic.hipporag import CachedEmbedder

    emb = CachedEmbedder(MiniLMEmbedder(threads=1))
    res = {"dated": evaluate(seeds=(3, 4, 5, 6, 7), embedder=emb),
           "undated": evaluate(seeds=(3, 4, 5, 6, 7), embedder=emb, dated_turns=False)}
    RESULTS.write_text(json.dumps(res, indent=1))
    for name, r_ in res.items():
        print(name)
        for m, r in r_["recall"].items():
            print(f"  {m:28s}", {kd: round(float(np.mean(v)), 3) for kd, v in r.items()})


if __name__ == "__main__":  # pragma: no cover
    main()
