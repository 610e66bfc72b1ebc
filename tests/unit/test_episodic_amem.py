"""A-MEM: explicit-id symmetric links, versioned evolution, link expansion in search, argument checks."""

from __future__ import annotations

import pytest

from labkit.episodic.amem import AgenticMemory, RuleAgent, extract_entities, topic_tags
from labkit.episodic.embed import HashingEmbedder
from labkit.episodic.store import MemoryStore

TURNS = [
    ("Ann Lee", "I live in Lake Quendle."),
    ("Bob Ray", "The weather has been awful this week."),
    ("Ann Lee", "Big news: I moved to Port Arlow last month!"),
    ("Bob Ray", "I work at Fenstead Labs these days."),
    ("Ann Lee", "Last weekend I took a trip to Lake Quendle."),
    ("Bob Ray", "We adopted a dog named Biscuit!"),
]


@pytest.fixture()
def mem():
    emb = HashingEmbedder(dim=128)
    store = MemoryStore(":memory:", embedder=None)
    m = AgenticMemory(store, emb, k_links=3, link_threshold=0.9)  # high tau: links come from shared entities
    results = [m.add_note(text, float(i), session="s0", speaker=sp) for i, (sp, text) in enumerate(TURNS)]
    yield m, results
    store.close()


def test_entities_and_tags():
    assert extract_entities("Big news: I moved to Port Arlow last month!") == ("Port Arlow",)
    assert extract_entities("Hey, how have you been?") == ()
    assert "travel" in topic_tags("Last weekend I took a trip to Lake Quendle.")
    assert topic_tags("Haha, same here.") == ("chit-chat",)


def test_links_explicit_ids_symmetric(mem):
    m, results = mem
    r = results[4]  # the trip to Lake Quendle shares an entity with note 1 ("I live in Lake Quendle.")
    first = results[0].note_id
    assert first in [d.note_id for d in r.links]
    for d in r.links:
        assert d.reason in ("sim", "entity", "sim+entity")
        fwd = [ln for ln in m.store.links(r.note_id, "out") if ln.dst == d.note_id]
        back = [ln for ln in m.store.links(d.note_id, "out") if ln.dst == r.note_id]
        assert fwd and back and fwd[0].kind == back[0].kind == f"amem:{d.reason}"
        assert fwd[0].weight == pytest.approx(back[0].weight)
    # every stored link points at an existing note id (no positional indices)
    ids = {n.id for n in m.store.notes(status=None)}
    for n in ids:
        for ln in m.store.links(n, "out"):
            assert ln.src in ids and ln.dst in ids


def test_evolution_writes_versions(mem):
    m, results = mem
    evolved = [j for r in results for j in r.evolved]
    assert evolved, "some neighbour must evolve"
    j = evolved[0]
    hist = m.store.history(j)
    assert len(hist) >= 2
    assert hist[0].text == hist[-1].text  # the content is never rewritten
    assert hist[-1].version == len(hist)
    assert any(r.reason and r.reason.startswith("amem-evolve") for r in hist[:-1])
    assert "linked #" in hist[-1].context and "linked #" not in hist[0].context  # old context kept in history
    assert m._dirty == set() or j in m._dirty  # refreshed lazily


def test_no_evolution_keeps_version_one():
    emb = HashingEmbedder(dim=128)
    store = MemoryStore(":memory:")
    m = AgenticMemory(store, emb, k_links=3, link_threshold=0.9, evolve=False)
    for i, (sp, text) in enumerate(TURNS):
        assert m.add_note(text, float(i), speaker=sp).evolved == ()
    assert all(n.version == 1 for n in store.notes())
    assert m.stats["links"] > 0


def test_search_expands_by_links(mem):
    m, results = mem
    q = "Where does Ann Lee live in Lake Quendle?"
    plain = m.search(q, k=1, expand=False)
    out = m.search(q, k=1, expand=True, budget="expand")
    assert [x[0] for x in out[:1]] == [plain[0][0]]
    linked = {ln.dst for ln in m.store.links(plain[0][0], "out")}
    assert {x[0] for x in out[1:]} == linked
    assert all(x[2] == f"link:{plain[0][0]}" for x in out[1:])
    k5 = m.search(q, k=5)
    assert len(k5) == 5 and len({x[0] for x in k5}) == 5


def test_resume_from_existing_store(mem):
    m, _ = mem
    m2 = AgenticMemory(m.store, m.embedder, k_links=3)
    assert m2._ids == m._ids
    assert m2.search("Biscuit dog", k=1, expand=False)[0][0] == m.search("Biscuit dog", k=1, expand=False)[0][0]


def test_bad_arguments():
    store = MemoryStore(":memory:")
    emb = HashingEmbedder(dim=64)
    with pytest.raises(ValueError, match="k_links"):
        AgenticMemory(store, emb, k_links=0)
    with pytest.raises(ValueError, match="link_threshold"):
        AgenticMemory(store, emb, link_threshold=2.0)
    with pytest.raises(ValueError, match="embedder"):
        AgenticMemory(store, None)
    with pytest.raises(ValueError, match="link_threshold"):
        RuleAgent(link_threshold=-3)
    m = AgenticMemory(store, emb)
    with pytest.raises(ValueError, match="text"):
        m.add_note("   ", 0.0)
    with pytest.raises(ValueError, match="time"):
        m.add_note("hello", float("nan"))
    m.add_note("hello there", 0.0)
    with pytest.raises(ValueError, match="k_seed"):
        m.search("hello", k=2, k_seed=3)
    with pytest.raises(ValueError, match="budget"):
        m.search("hello", budget="all")
    with pytest.raises(ValueError, match="query"):
        m.search("")
