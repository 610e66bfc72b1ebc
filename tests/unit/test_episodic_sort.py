import numpy as np
import pytest
import torch

from labkit.episodic import sort as S

torch.set_num_threads(1)


def test_labels_correct_by_construction_and_deterministic():
    it = S.sort_items(50, 300, seed=3)
    assert np.array_equal(it, S.sort_items(50, 300, seed=3))
    assert np.array_equal(it[:, 2], (it[:, 0] < it[:, 1]).astype(int))
    assert np.array_equal(it[:, 3], np.abs(it[:, 0] - it[:, 1]))
    assert 0.35 < it[:, 2].mean() < 0.65 and (it[:, 3] >= 1).all() and it[:, :2].max() < 50


def test_items_at_fixed_distances_respect_valid():
    valid = np.ones(40, bool)
    valid[::3] = False
    it = S.sort_items(40, 25, seed=1, distances=(1, 4, 30), valid=valid)
    assert len(it) == 75 and sorted(set(it[:, 3])) == [1, 4, 30]
    assert valid[it[:, 0]].all() and valid[it[:, 1]].all()
    with pytest.raises(ValueError, match="distances"):
        S.sort_items(10, 5, distances=(10,))


def test_book_splits_are_the_lm_corpus():
    from labkit.data import corpus

    assert S.book(100, 5, "train") == corpus.english_text("train")[5:105]
    assert S.book(100, 0, "heldout") == corpus.english_text("heldout")[:100]


def test_readers():
    text = S.book(3000, 1000, "heldout")
    segs = S.segments(text, 16)
    valid = np.array([text.count(s) == 1 for s in segs])
    it = S.sort_items(len(segs), 30, seed=0, distances=(1, 2, 8, 64), valid=valid)
    assert S.accuracy(S.answer_in_context(segs, it, text), it) == 1.0
    store = S.ChunkStore(text, 64, 32)
    assert S.accuracy(S.answer_retrieved(segs, it, store), it) >= 0.95
    rag = S.answer_relevance(segs, it, store)
    near, far = it[:, 3] == 1, it[:, 3] == 64
    assert (rag[near] == it[near, 2]).mean() >= 0.9   # both segments in one retrieved chunk
    assert 0.2 < (rag[far] == it[far, 2]).mean() < 0.8  # chunk order in the prompt says nothing
    assert 0.3 < S.accuracy(S.answer_none(it, 0), it) < 0.7
    assert S.accuracy(1 - it[:, 2], it) == 0.0
    acc = S.by_distance(it[:, 2], it, (1, 2, 3))
    assert acc[:2] == [1.0, 1.0] and np.isnan(acc[2])


def test_lm_readers_and_finetune():
    from labkit.models import load

    lm = load("tinylm")
    text = S.book(1200, 0, "heldout")
    segs = S.segments(text, 16)
    it = S.sort_items(len(segs), 12, seed=0, distances=(1, 40))
    pred, fits = S.lm_order(lm, segs, it, in_context=True)
    assert pred.shape == (24,) and fits[it[:, 3] == 1].all() and not fits[it[:, 3] == 40].any()
    pred, _ = S.lm_order(lm, segs, it)
    assert (pred[it[:, 3] == 1] == it[it[:, 3] == 1, 2]).mean() >= 0.7  # adjacent: language alone orders them
    cont = S.greedy_continue(lm, segs[:3], n_new=8)
    assert len(cont) == 3 and cont == S.greedy_continue(lm, segs[:3], n_new=8)
    before = lm.embed_tokens.weight.detach().clone()
    ft = S.finetune(lm, text, steps=2, batch_size=2)
    assert torch.equal(lm.embed_tokens.weight, before) and not torch.equal(ft.embed_tokens.weight, before)
    assert 0 < S.bits_per_byte(lm, text[:300]) < 8


def test_embedder_normalised_and_deterministic():
    e = S.HashEmbedder(256).fit(["abc def", "ghi"])
    x = e.encode(["abc def", "zzz top"])
    assert x.shape == (2, 256) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.array_equal(x, S.HashEmbedder(256).fit(["abc def", "ghi"]).encode(["abc def", "zzz top"]))


def test_committed_results_are_readable():
    r = S.load()
    assert len(r["runs"]) >= 3 and all(len(v) == len(r["runs"][0]["distances"]) for v in r["runs"][0]["acc"].values())


@pytest.mark.parametrize("call,name", [(lambda: S.segments("x" * 100, 0), "seg_len"),
                                       (lambda: S.sort_items(1, 5), "n_segments"),
                                       (lambda: S.book(0), "n_chars"),
                                       (lambda: S.sort_items(10, 5, distances=(2,), valid=np.zeros(10, bool)),
                                        "valid")])
def test_bad_args(call, name):
    with pytest.raises(ValueError, match=name):
        call()
