"""A-MEM: explicit-id symmetric links, versioned evolution, link expansion in search, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.episodic.amem import (
    AMEM_VARIANTS,
    AgenticMemory,
    RuleAgent,
    auroc,
    enriched_text,
    evaluate,
    extract_entities,
    recall_at,
    topic_tags,
)
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


def _items():
    return [{"text": text, "time": float(i), "session": "s0", "speaker": sp} for i, (sp, text) in enumerate(TURNS)]


def _snapshot(m):
    notes = m.store.notes(status=None)
    links = sorted((ln.src, ln.dst, ln.kind) for n in notes for ln in m.store.links(n.id, "out"))
    return [(n.id, n.text, n.tags, n.context, n.version) for n in notes], links


def test_add_notes_equals_add_note_one_by_one(mem):
    m, _ = mem
    m2 = AgenticMemory(MemoryStore(":memory:"), m.embedder, k_links=3, link_threshold=0.9)
    res = m2.add_notes(_items())
    assert [r.note_id for r in res] == [n.id for n in m.store.notes()]
    assert _snapshot(m2) == _snapshot(m)
    assert m2.stats == m.stats
    m3 = AgenticMemory(MemoryStore(":memory:"), m.embedder, k_links=3, link_threshold=0.9)
    m3.add_notes(_items(), consolidate_every=100)  # batched re-embedding: same notes and versions here
    assert [x[:2] for x in _snapshot(m3)[0]] == [x[:2] for x in _snapshot(m)[0]]
    with pytest.raises(ValueError, match="consolidate_every"):
        m3.add_notes(_items(), consolidate_every=0)
    with pytest.raises(ValueError, match="items\\[0\\]"):
        m3.add_notes([{"text": "x", "time": None}])


def test_enriched_text_has_every_field(mem):
    m, results = mem
    note = m.store.get_note(results[4].note_id)
    text = enriched_text(note)
    assert text.startswith(note.text) and "Keywords: " in text and "Tags: travel" in text
    assert f"Context: {note.context}." in text and "speaker:" not in text
    assert enriched_text(note, fields=False) == note.text


def test_chitchat_is_not_linked():
    emb = HashingEmbedder(dim=128)
    chat = [("Ann Lee", "Haha, same here."), ("Bob Ray", "Haha, same here!"), ("Ann Lee", "I live in Lake Quendle."),
            ("Bob Ray", "I took a trip to Lake Quendle.")]
    items = [{"text": t, "time": float(i), "speaker": s} for i, (s, t) in enumerate(chat)]
    on = AgenticMemory(MemoryStore(":memory:"), emb, link_threshold=0.3,
                       agent=RuleAgent(link_threshold=0.3, link_chitchat=True))
    off = AgenticMemory(MemoryStore(":memory:"), emb, link_threshold=0.3,
                        agent=RuleAgent(link_threshold=0.3, link_chitchat=False))
    r_on, r_off = on.add_notes(items), off.add_notes(items)
    assert r_on[1].links and not r_off[1].links  # two chit-chat lines: linked only when chit-chat may link
    assert [d.note_id for d in r_off[3].links] == [r_off[2].note_id]  # the shared entity still links


def test_evolve_tags_only_keeps_context():
    emb = HashingEmbedder(dim=128)
    m = AgenticMemory(MemoryStore(":memory:"), emb, k_links=3, link_threshold=0.9,
                      agent=RuleAgent(link_threshold=0.9, evolve_fields=("tags",)))
    res = m.add_notes(_items())
    evolved = {j for r in res for j in r.evolved}
    assert evolved
    for j in evolved:
        hist = m.store.history(j)
        assert all(v.context == hist[0].context for v in hist) and hist[-1].tags != hist[0].tags
    with pytest.raises(ValueError, match="evolve_fields"):
        RuleAgent(evolve_fields=("text",))


def test_search_per_seed_order(mem):
    m, _ = mem
    q = "Where does Ann Lee live in Lake Quendle?"
    out = m.search(q, k=4, order="per-seed", links_per_seed=1)
    assert len(out) == 4 and len({x[0] for x in out}) == 4
    for pos, (j, _, via) in enumerate(out):
        if via.startswith("link:"):
            seed = int(via.split(":")[1])
            assert out[pos - 1][0] == seed  # a link comes right after the seed that brought it
            assert j in {ln.dst for ln in m.store.links(seed, "out")}
    assert [x[0] for x in m.search(q, k=3, order="per-seed", links_per_seed=0)] == \
        [x[0] for x in m.search(q, k=3, expand=False)]
    with pytest.raises(ValueError, match="order"):
        m.search(q, order="random")
    with pytest.raises(ValueError, match="links_per_seed"):
        m.search(q, order="per-seed", links_per_seed=-1)


def test_recall_and_auroc():
    assert recall_at(["a", "b"], ["b", "c"]) == 0.5
    assert recall_at(["a"], []) is None
    assert auroc([2.0, 3.0], [1.0, 0.0]) == 1.0
    assert auroc([0.0], [1.0]) == 0.0
    assert auroc([1.0], [1.0]) == 0.5
    assert np.isnan(auroc([], [1.0]))


def test_evaluate_small():
    res = evaluate(seeds=(0,), embedder=HashingEmbedder(dim=64), ks=(1, 5), n_sessions=3, turns_per_session=6,
                   n_questions=10, progress=False)
    assert set(res["recall"]) >= {"dense", "keyword (FTS5)", "A-MEM (links + evolution)", "A-MEM without evolution",
                                  "A-MEM notes, no links", "A-MEM, its own budget (k + links)"}
    for by_k in res["recall"].values():
        assert set(by_k) == {"1", "5"}
        for by_kind in by_k.values():
            assert all(0.0 <= v[0] <= 1.0 for v in by_kind.values())
            assert "adversarial" not in by_kind
    assert res["expand_size"]["5"] >= 5 - 1e-9 and sum(x[0] for x in res["n"].values()) == 10
    for name in res["stats"]:
        assert name in AMEM_VARIANTS
