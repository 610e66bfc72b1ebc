"""HippoRAG: rule-based OpenIE, node specificity, PPR retrieval of a planted 2-hop chain, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.episodic.embed import HashingEmbedder
from labkit.episodic.hipporag import (
    build_graph,
    dense_retrieve,
    link_entities,
    node_specificity,
    openie,
    openie_scores,
    recall_at_k,
)

LEX = {s: s for s in ("alice smith", "zorblax labs", "quillby", "alice brown", "port vale", "carol smith",
                      "westhold", "bob smith", "robert smith")}


def test_openie_hand_made_passages():
    assert openie("Alice Smith works at Zorblax Labs.", LEX) == [("alice smith", "works_at", "zorblax labs")]
    assert openie("Zorblax Labs was started by Alice Smith in March 2001.", LEX) == [
        ("zorblax labs", "founded_by", "alice smith")]
    assert openie("Alice Smith, who works as a nurse, relocated to Quillby in May 2019.", LEX) == [
        ("alice smith", "lives_in", "quillby")]
    met = set(openie("At The Quillby Fair, Alice Smith was introduced to Carol Smith.", LEX))
    assert met == {("alice smith", "met", "carol smith"), ("alice smith", "attended", "the quillby fair"),
                   ("carol smith", "attended", "the quillby fair")}
    assert openie("Westhold hosted The Quillby Fair.", LEX) == [("the quillby fair", "took_place_in", "westhold")]
    assert openie("nothing to see here", LEX) == []


def test_openie_on_generated_world_is_exact():
    from labkit.data.worlds import make_world

    w = make_world(3, n_people=30, n_places=10, n_orgs=8, n_events=5)
    sc = openie_scores(w)
    assert sc["n_gold"] > 50 and sc["precision"] == 1.0 and sc["recall"] == 1.0


def test_node_specificity():
    inc = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(node_specificity(inc), [1 / 3, 1.0, 1.0, 1.0])
    g = build_graph([("a", "Alice Smith works at Zorblax Labs."), ("b", "Carol Smith works at Zorblax Labs."),
                     ("c", "Zorblax Labs is based in Quillby.")], HashingEmbedder(), LEX, synonyms=False)
    spec = dict(zip(g.nodes, g.specificity, strict=True))
    assert spec["zorblax labs"] == pytest.approx(1 / 3) and spec["quillby"] == pytest.approx(1.0)


def _chain():
    passages = [
        ("gold1", "Alice Smith works at Zorblax Labs."),
        ("gold2", "Zorblax Labs is headquartered in Quillby."),
        ("d1", "Alice Brown is based in Port Vale."),
        ("d2", "Carol Smith is based in Westhold."),
        ("d3", "Bob Smith lives in Westhold."),
    ]
    return passages, "In which city is the employer of Alice Smith based?"


def test_ppr_finds_planted_two_hop_chain_that_dense_misses():
    passages, q = _chain()
    emb = HashingEmbedder()
    g = build_graph(passages, emb, LEX, synonyms=False)
    assert link_entities(q, LEX) == ["alice smith"]
    ppr_top = g.retrieve([q], emb, k=2)
    pvecs = emb.encode([t for _, t in passages])
    dense_top = dense_retrieve([q], [p for p, _ in passages], pvecs, emb, k=2)
    assert set(ppr_top[0]) == {"gold1", "gold2"}
    assert "gold2" not in dense_top[0]
    assert recall_at_k(ppr_top, [("gold1", "gold2")], 2) == 1.0
    assert recall_at_k(dense_top, [("gold1", "gold2")], 2) == 0.0
    assert recall_at_k(ppr_top, [("gold1", "gold2")], 2, mode="fraction") == 1.0


def test_specificity_downweights_hub_seed():
    # Two query entities: a hub (in 6 passages) and a rare one (in 1): specificity moves restart mass to the rare one,
    # so the rare passage's lead over the best hub passage grows, and the seed weights are 1/6 vs 1.
    passages = [("rare", "Alice Smith lives in Quillby.")] + [
        (f"hub{i}", f"Carol Smith works at Zorblax Labs {i}.") for i in range(6)]
    lex = dict(LEX, **{f"zorblax labs {i}": "z" for i in range(6)})
    emb = HashingEmbedder()
    g = build_graph(passages, emb, lex, synonyms=False)
    spec = dict(zip(g.nodes, g.specificity, strict=True))
    assert spec["carol smith"] == pytest.approx(1 / 6) and spec["alice smith"] == pytest.approx(1.0)
    q = "Did Carol Smith ever meet Alice Smith?"
    with_s = g.scores([q], emb)[0]
    without = g.scores([q], emb, specificity=False)[0]
    assert with_s.sum() == pytest.approx(without.sum(), rel=0.5)  # both are PPR mass, not rescaled
    assert with_s[0] - with_s[1:].max() > without[0] - without[1:].max() + 0.05
    assert g.retrieve([q], emb, k=1)[0] == ["rare"]


def test_synonym_edges_link_aliases():
    emb = HashingEmbedder()
    passages = [("a", "Robert Smith works at Zorblax Labs."), ("b", "Bob Smith lives in Quillby.")]
    g = build_graph(passages, emb, LEX, synonym_threshold=0.3)
    i, j = g.nodes.index("robert smith"), g.nodes.index("bob smith")
    assert (i, j) in g.edges and (j, i) in g.edges and g.n_synonym_edges >= 1
    g0 = build_graph(passages, emb, LEX, synonyms=False)
    assert (i, j) not in g0.edges


def test_bad_arguments_raise():
    passages, q = _chain()
    emb = HashingEmbedder()
    g = build_graph(passages, emb, LEX, synonyms=False)
    with pytest.raises(ValueError, match="alpha"):
        g.retrieve([q], emb, alpha=1.5)
    with pytest.raises(ValueError, match="k must"):
        g.retrieve([q], emb, k=0)
    with pytest.raises(ValueError, match="synonym_threshold"):
        build_graph(passages, emb, LEX, synonym_threshold=0.0)
    with pytest.raises(ValueError, match="same length"):
        recall_at_k([["a"]], [], 2)
    with pytest.raises(ValueError, match="mode"):
        recall_at_k([["a"]], [["a"]], 2, mode="some")
    with pytest.raises(ValueError, match="incidence"):
        node_specificity(np.ones(3))
    with pytest.raises(ValueError, match="text"):
        openie(None, LEX)  # type: ignore[arg-type]


def test_canonical_oracle_merges_aliases():
    emb = HashingEmbedder()
    lex = dict(LEX, **{"robert smith": "p1", "bob smith": "p1"})
    passages = [("a", "Robert Smith works at Zorblax Labs."), ("b", "Bob Smith lives in Quillby.")]
    g = build_graph(passages, emb, lex, synonyms=False, canonical=True)
    assert len(g.nodes) == 3 and ("bob smith" in g.nodes) != ("robert smith" in g.nodes)
    assert set(g.retrieve(["Where does Bob Smith live?"], emb, k=2)[0]) == {"a", "b"}


def test_split_sentences_keeps_abbreviations():
    from labkit.episodic.hipporag import split_sentences

    text = ("R. Moreno works at Corvane Sys.. Bob Moreno lives in Pt. Valmora. In May 2019, E. Kesbury hosted "
            "2019 Kesbury Marathon. Alice Smith is married to Carol Smith.")
    assert split_sentences(text) == ["R. Moreno works at Corvane Sys..", "Bob Moreno lives in Pt. Valmora.",
                                     "In May 2019, E. Kesbury hosted 2019 Kesbury Marathon.",
                                     "Alice Smith is married to Carol Smith."]
    assert split_sentences("") == [] and split_sentences("One sentence") == ["One sentence"]
    with pytest.raises(ValueError, match="text"):
        split_sentences(3)  # type: ignore[arg-type]


def test_entity_pages_round_trip_openie_and_gold_pages():
    from labkit.data.worlds import make_world
    from labkit.episodic.hipporag import entity_pages, page_questions, passage_triples

    w = make_world(4, n_people=40, n_places=20, n_orgs=15, n_events=6)
    pages, page_of = entity_pages(w.passages())
    assert len(page_of) == len(w.passages()) and len(pages) == len(set(page_of.values()))
    lex = w.alias_table()
    text = dict(pages)
    for p in w.passages():  # every one-fact passage sits in its subject's page and is parsed there exactly
        assert page_of[p.id] == f"page:{p.triples[0][0]}" and p.text in text[page_of[p.id]]
    surf = {(p.id, i): m.lower() for p in w.passages() for i, m in p.mentions}
    gold = {pid: set() for pid, _ in pages}
    for p in w.passages():
        gold[page_of[p.id]] |= {(surf[p.id, h], r, surf[p.id, t]) for h, r, t in p.triples}
    assert all(set(passage_triples(t, lex)) == gold[pid] for pid, t in pages)
    qs, sup = page_questions(w, {"max_start_passages": 5}, 20, 0, page_of)
    assert qs and all(len(s) == 2 and s[0] != s[1] for s in sup)
    for q, s in zip(qs, sup, strict=True):  # hop 1 is on the start entity's page, hop 2 on the bridge's page
        assert s == (page_of[q.support[0]], page_of[q.support[1]])


def test_incidence_counts_triples_per_passage():
    # HippoRAG scores a passage by sum over its facts of the PPR mass of the fact's two phrases: a node in 2 of the
    # passage's triples counts twice.
    emb = HashingEmbedder()
    g = build_graph([("p", "Alice Smith works at Zorblax Labs. Alice Smith lives in Quillby."),
                     ("q", "Carol Smith lives in Quillby.")], emb, LEX, synonyms=False)
    row = dict(zip(g.nodes, g.incidence[0], strict=True))
    assert row == {"alice smith": 2.0, "zorblax labs": 1.0, "quillby": 1.0, "carol smith": 0.0}
    assert g.specificity[g.nodes.index("quillby")] == pytest.approx(0.5)


def test_recall_modes():
    ret = [["a", "x", "b"], ["y", "z", "c"]]
    sup = [("a", "b"), ("c", "d")]
    assert recall_at_k(ret, sup, 3) == 0.5 and recall_at_k(ret, sup, 2) == 0.0
    assert recall_at_k(ret, sup, 3, "fraction") == pytest.approx(0.75)
    assert recall_at_k(ret, sup, 3, "any") == 1.0 and recall_at_k(ret, sup, 2, "any") == 0.5


def test_ppr_walk_and_small_experiment():
    from labkit.episodic.hipporag import ppr_walk, run_experiment, summarize

    passages, q = _chain()
    emb = HashingEmbedder()
    g = build_graph(passages, emb, LEX, synonyms=False)
    walk = ppr_walk(g, q, emb, top=3)
    assert walk["seeds"] == [("alice smith", 1.0)] and walk["nodes"][0][0] == "alice smith"
    assert {p for p, _ in walk["passages"][:2]} == {"gold1", "gold2"}
    assert ppr_walk(g, "nothing known here", emb)["nodes"] == []
    res = run_experiment(seeds=(0,), distractors=(0, 20), worlds={"w": {"n_people": 30, "n_places": 30,
                                                                        "n_orgs": 30, "n_events": 4}},
                         question_sets={"2hop": {"max_start_passages": 5}}, n_questions=15, embedder="hashing",
                         methods=("dense", "ppr", "ppr_no_spec"), ks=(2, 5), show_progress=False)
    s = summarize(res, 5)
    assert set(s) == {("w", "2hop", nd, m) for nd in (0, 20) for m in ("dense", "ppr", "ppr_no_spec")}
    assert all(0.0 <= v[0] <= 1.0 for v in s.values())
    assert all(r["n_questions"] > 0 for r in res["rows"]) and res["templates"]
    assert s["w", "2hop", 0, "ppr"][0] >= s["w", "2hop", 0, "dense"][0]
    with pytest.raises(ValueError, match="methods"):
        run_experiment(methods=("bogus",), embedder="hashing")


def test_world_question_options_rare_start_and_context():
    # The options added to World.questions for this experiment; the defaults keep earlier questions unchanged.
    from collections import Counter

    from labkit.data.worlds import make_world

    w = make_world(3, n_people=80, n_places=20, n_orgs=20, n_events=12, hub_fraction=0.15)
    base = w.questions("2hop", 30, seed=1)
    assert [q.text for q in base] == [q.text for q in w.questions("2hop", 30, seed=1, max_start_passages=None,
                                                                  context=False)]
    n_pass = Counter(e for p in w.passages() for e in p.entities)
    rare = w.questions("2hop", 500, seed=1, max_start_passages=4)
    assert rare and all(n_pass[q.entity] <= 4 for q in rare)
    assert len(rare) < len(w.questions("2hop", 500, seed=1))
    ctx = w.questions("2hop", 40, seed=2, context=True)
    assert ctx
    lex = w.alias_table()
    for q in ctx:
        named = {lex[s] for s in link_entities(q.text, lex)}
        on_path = {x for h, _, t in q.path for x in (h, t)}
        assert q.entity in named and named - on_path, q.text  # the start entity and a second, off-path entity
        assert q.answer not in named and ",?" not in q.text and q.text.count(",") >= 1
    with pytest.raises(ValueError, match="max_start_passages"):
        w.questions("2hop", 5, max_start_passages=0)
    with pytest.raises(ValueError, match="context"):
        w.questions("2hop", 5, context="yes")  # type: ignore[arg-type]


def test_link_entities_needs_a_capital_or_digit():
    lex = {"of": "org:1", "alice smith": "p", "2015 fair": "e"}
    assert link_entities("Where was the spouse of Alice Smith born?", lex) == ["alice smith"]
    assert link_entities("Who founded OF, and who ran the 2015 Fair?", lex) == ["of", "2015 fair"]
