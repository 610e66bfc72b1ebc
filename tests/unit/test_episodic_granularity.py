"""Multi-granularity memory: units cover the conversation, routing follows the rule, retrieval respects budget."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.data.worlds import make_conversations, make_world
from labkit.episodic.embed import HashingEmbedder
from labkit.episodic.granularity import (
    GRANULARITIES,
    GranularIndex,
    build_units,
    evaluate,
    recall_at,
    route_by_rule,
)


@pytest.fixture(scope="module")
def conv():
    return make_conversations(make_world(seed=0), n_sessions=4, turns_per_session=6, seed=0, n_questions=15)


@pytest.fixture(scope="module")
def gi(conv):
    return GranularIndex(conv, HashingEmbedder(dim=128))


def test_units_cover_turns(conv):
    units = build_units(conv)
    ids = [t.id for t in conv.turns()]
    assert [u.turns[0] for u in units["turn"]] == ids
    assert sorted(t for u in units["session"] for t in u.turns) == sorted(ids)
    summ = {t for u in units["summary"] for t in u.turns}
    assert summ <= set(ids)
    fact_turns = {t.id for t in conv.turns() if t.facts}
    assert fact_turns <= summ  # every fact-bearing turn survives the extractive summary
    assert len(summ) < len(ids)  # chit-chat is dropped


def test_rule_router():
    assert route_by_rule("When did Ann move to Quenton?") == "summary"
    assert route_by_rule("What happened first: A or B?") == "summary"
    assert route_by_rule("Does Ann still live in Quenton?") == "session"
    assert route_by_rule("What is the name of Ann's cat?") == "turn"


def test_route_picks_rule_choice(gi, conv):
    for qa in conv.qa:
        assert gi.route(qa.question, "rule") == route_by_rule(qa.question)
        q = np.asarray(gi.embedder.encode([qa.question]), dtype=np.float32)[0]
        sc = gi.scores(q)
        ent = {g: gi.entropy(sc[g]) for g in GRANULARITIES}
        assert ent[gi.route(qa.question, "entropy", q)] == min(ent.values())


def test_entropy_bounds(gi):
    assert gi.entropy(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert gi.entropy(np.array([10.0, 0.0, 0.0])) < 1e-6
    assert gi.entropy(np.array([0.3])) == 0.0


def test_retrieve_budget_and_order(gi, conv):
    q = conv.qa[0].question
    for g in GRANULARITIES:
        out = gi.retrieve(q, g, k=4)
        assert len(out) == 4 and len(set(out)) == 4
    # session granularity: the first turns all come from the best-scoring session
    qv = np.asarray(gi.embedder.encode([q]), dtype=np.float32)[0]
    best = gi.units["session"][int(np.argmax(gi.vecs["session"] @ qv))]
    assert set(gi.retrieve(q, "session", k=3)) <= set(best.turns)
    assert gi.retrieve(q, "turn", k=1)[0] == gi.units["turn"][int(np.argmax(gi.vecs["turn"] @ qv))].turns[0]


def test_recall_and_bad_args(gi):
    assert recall_at(["a", "b"], ["b", "c"]) == 0.5
    assert recall_at(["a"], []) is None
    with pytest.raises(ValueError, match="granularity"):
        gi.retrieve("x y", "paragraph")
    with pytest.raises(ValueError, match="k must"):
        gi.retrieve("x y", "turn", k=0)
    with pytest.raises(ValueError, match="router"):
        gi.route("x y", "random")
    with pytest.raises(ValueError, match="temperature"):
        GranularIndex.__new__(GranularIndex).__init__(None, None, temperature=0)


def test_dated_turn_units(conv):
    dated, plain = build_units(conv)["turn"], build_units(conv, dated_turns=False)["turn"]
    t = conv.turns()[0]
    assert plain[0].text == f"{t.speaker}: {t.text}"
    assert dated[0].text.startswith(f"{t.speaker} (") and dated[0].text.endswith(f"): {t.text}")


def test_soft_router(gi, conv):
    q = conv.qa[0].question
    qv = np.asarray(gi.embedder.encode([q]), dtype=np.float32)[0]
    w = gi.weights(qv)
    assert set(w) == set(GRANULARITIES) and sum(w.values()) == pytest.approx(1.0)
    ent = {g: gi.entropy(s) for g, s in gi.scores(qv).items()}
    assert max(w, key=w.get) == min(ent, key=ent.get)  # the most peaked granularity weighs most
    for weighting in ("entropy", "uniform"):
        out = gi.retrieve_soft(q, k=5, q=qv, weighting=weighting)
        assert len(out) == 5 and len(set(out)) == 5
    with pytest.raises(ValueError, match="weighting"):
        gi.retrieve_soft(q, weighting="max")


def test_evaluate_small():
    res = evaluate(seeds=(0,), embedder=HashingEmbedder(dim=64), n_sessions=3, turns_per_session=6, n_questions=10,
                   progress=False)
    assert {"fixed: turn", "fixed: session", "fixed: summary", "soft entropy router", "rule router",
            "oracle (upper bound)"} <= set(res["recall"])
    oracle = res["recall"]["oracle (upper bound)"]
    for g in GRANULARITIES:
        for kind, v in res["recall"][f"fixed: {g}"].items():
            assert v[0] <= oracle[kind][0] + 1e-9
    assert sum(sum(c.values()) for c in res["route"]["rule router"].values()) == 10
