"""Tests for labkit.data.worlds: determinism, ground truth, gold chains, 2-hop property, updates, errors."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from labkit.data.worlds import FUNCTIONAL, make_conversations, make_world


@pytest.fixture(scope="module")
def world():
    return make_world(3, n_people=80, n_places=20, n_orgs=20, n_events=12, hub_fraction=0.15)


def test_deterministic_and_seed_sensitive():
    a, b = make_world(7, n_people=40), make_world(7, n_people=40)
    assert [p.text for p in a.passages()] == [p.text for p in b.passages()]
    assert [q.text for q in a.questions("2hop", 20, seed=1)] == [q.text for q in b.questions("2hop", 20, seed=1)]
    ca, cb = make_conversations(a, 6, 8, seed=2), make_conversations(b, 6, 8, seed=2)
    assert [t.text for t in ca.turns()] == [t.text for t in cb.turns()] and ca.qa == cb.qa
    c = make_world(8, n_people=40)
    assert [p.text for p in a.passages()] != [p.text for p in c.passages()]


def test_fast_200_entities():
    t = time.perf_counter()
    w = make_world(0, n_people=120, n_places=30, n_orgs=30, n_events=20)
    w.questions("2hop", 100), w.questions("3hop", 100), w.distractor_passages(500)
    assert len(w.entities) == 200
    assert time.perf_counter() - t < 2.0  # well under a second on a free core


def test_triples_match_facts_and_mentions(world):
    facts = {f.triple for f in world.facts}
    seen = set()
    for p in world.passages():
        assert p.triples, p
        for s, r, o in p.triples:
            assert (s, r, o) in facts
            assert s in p.entities and o in p.entities
            seen.add((s, r, o))
        for eid, surface in p.mentions:  # every mention is written in the text and denotes its entity
            assert surface in p.text
            assert world.resolve(surface) == eid
    assert seen == facts  # every fact is stated by some passage


def test_functional_relations_have_one_current_value(world):
    cur = defaultdict(list)
    for f in world.facts:
        if f.relation in FUNCTIONAL and f.end is None:
            cur[f.subject, f.relation].append(f.object)
    assert all(len(v) == 1 for v in cur.values())


def test_changing_facts_history(world):
    changed = [p.id for p in world.of_kind("person") if len(world.history(p.id, "lives_in")) > 1]
    assert changed, "some people must move"
    for pid in changed:
        h = world.history(pid, "lives_in")
        assert all(a.end == b.start for a, b in zip(h, h[1:]))  # contiguous, no overlap
        assert world.current(pid, "lives_in") == h[-1].object
        assert world.value_at(pid, "lives_in", h[0].start) == h[0].object
        assert world.value_at(pid, "lives_in", h[-1].start - 1) == h[-2].object


@pytest.mark.parametrize("kind,hops", [("1hop", 1), ("2hop", 2), ("3hop", 3)])
def test_gold_chain_connects_question_to_answer(world, kind, hops):
    qs = world.questions(kind, 60, seed=5)
    assert len(qs) >= 20
    passages = {p.id: p for p in world.passages()}
    for q in qs:
        assert len(q.path) == len(q.support) == hops
        node = q.entity
        for (s, r, o), pid in zip(q.path, q.support):
            assert s == node
            p = passages[pid]
            assert (s, r, o) in p.triples or (r == "spouse_of" and (o, r, s) in p.triples)
            node = o
        assert node == q.answer
        assert world.entity(q.answer).name == q.answers[0]
        # changing relations use the current value
        for s, r, o in q.path:
            if r in ("lives_in", "works_at"):
                assert world.current(s, r) == o


@pytest.mark.parametrize("kind", ["2hop", "3hop"])
def test_no_single_passage_holds_question_entity_and_answer(world, kind):
    for q in world.questions(kind, 100, seed=1):
        for p in world.passages():
            assert not (q.entity in p.entities and q.answer in p.entities), (q.text, p.text)
        assert world.entity(q.answer).name not in q.text


def test_aliases_resolve_and_are_unique(world):
    table = {}
    for e in world.entities.values():
        for s in e.surface_forms:
            assert s.lower() not in table, f"{s} is ambiguous"
            table[s.lower()] = e.id
            assert world.resolve(s.upper()) == e.id
    assert sum(len(e.aliases) for e in world.entities.values()) > len(world.entities)
    assert any(s != world.entity(i).name for p in world.passages() for i, s in p.mentions)  # aliases are used
    assert world.resolve("Nobody Anywhere") is None


def test_hubs_attract_many_passages(world):
    deg = defaultdict(int)
    for p in world.passages():
        for e in p.entities:
            deg[e] += 1
    hubs = [deg[h.id] for h in world.hubs]
    others = [deg[e.id] for e in world.entities.values() if e.kind in ("place", "org") and not e.hub
              and e.attrs.get("type") != "region"]
    assert hubs and sum(hubs) / len(hubs) > 2 * sum(others) / len(others)


def test_distractors_are_hard_but_harmless(world):
    d = world.distractor_passages(200, seed=4)
    assert len(d) == 200 and len({p.id for p in d}) == 200
    world_ids = set(world.entities)
    lasts = {e.attrs["last"] for e in world.of_kind("person")}
    for p in d:
        for s, _, o in p.triples:
            assert s not in world_ids and o in world_ids  # never a new fact about a world entity
    namesakes = [m for p in d for i, m in p.mentions if i.startswith("x:person") and m.split()[-1] in lasts]
    assert len(namesakes) > 50
    hub_ids = {h.id for h in world.hubs}
    assert sum(any(e in hub_ids for e in p.entities) for p in d) > 60
    assert [p.text for p in d] == [p.text for p in world.distractor_passages(200, seed=4)]
    for p in d:  # mentions record the surface form as written (an alias when one was used)
        assert all(m in p.text for _, m in p.mentions), p


def test_conversations_identical_across_processes():
    """Set iteration order depends on PYTHONHASHSEED: two interpreters must still write the same QA."""
    import subprocess
    import sys

    code = ("from labkit.data.worlds import make_world, make_conversations;"
            "c = make_conversations(make_world(5, n_people=40), 8, 8, seed=3, n_questions=40);"
            "print(repr(c.qa))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2)}
    assert len(outs) == 1


def test_conversation_qa(world):
    conv = make_conversations(world, n_sessions=12, turns_per_session=10, seed=1, n_questions=60)
    kinds = {q.kind for q in conv.qa}
    assert kinds == {"single-hop", "multi-hop", "temporal", "knowledge-update", "adversarial"}
    ts = [s.t for s in conv.sessions]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    ids = {t.id for t in conv.turns()}
    for q in conv.qa:
        assert set(q.evidence) <= ids
        if q.kind == "adversarial":
            assert q.answers[0] == "not mentioned" and not q.evidence
        else:
            assert q.evidence
            text = " ".join(conv.turn(t).text for t in q.evidence)
            assert q.kind == "temporal" or any(a in text for a in q.answers)
        if q.kind == "knowledge-update":
            speaker = next(s for s in conv.speakers if s in q.question)
            rel = "lives_in" if "live" in q.question else "works_at"
            latest = q.answers[1] if q.question.startswith("Does") else q.answers[0]
            assert latest == conv.latest(speaker, rel)
            last_turn = conv.turn(q.evidence[-1])
            assert last_turn.facts[0][2] == latest
            # the latest value wins: no later turn reveals another value for that relation
            later = [x for x in conv.timeline if x[1] == speaker and x[2] == rel]
            assert later[-1][4] == q.evidence[-1]
        if q.kind == "adversarial" and "move to" in q.question:
            speaker = next(s for s in conv.speakers if s in q.question)
            city = q.question.rsplit("move to ", 1)[1].rstrip("?")
            assert all(not (x[1] == speaker and x[2] == "lives_in" and x[3] == city) for x in conv.timeline)


def test_summary_counts(world, capsys):
    c = world.summary()
    assert c["person"] == 80 and c["passages"] == len(world.passages())
    assert "person=80" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"n_people": -1}, "n_people"),
        ({"n_places": 1}, "n_places"),
        ({"n_orgs": 0}, "n_orgs"),
        ({"n_events": -2}, "n_events"),
        ({"hub_fraction": 1.5}, "hub_fraction"),
        ({"hub_fraction": -0.1}, "hub_fraction"),
        ({"n_hubs": 10_000}, "n_hubs"),
        ({"alias_rate": 2.0}, "alias_rate"),
        ({"hub_weight": 0.5}, "hub_weight"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_world(**kwargs)


def test_bad_arguments_questions_conversations(world):
    with pytest.raises(ValueError, match="kind"):
        world.questions("4hop", 3)
    with pytest.raises(ValueError, match="n"):
        world.questions("1hop", -1)
    with pytest.raises(ValueError, match="n_sessions"):
        make_conversations(world, n_sessions=0)
    with pytest.raises(ValueError, match="n"):
        world.distractor_passages(-5)
