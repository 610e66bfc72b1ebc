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
