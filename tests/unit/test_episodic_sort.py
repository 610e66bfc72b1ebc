import numpy as np
import pytest

from labkit.episodic import sort as S


def test_labels_correct_by_construction_and_deterministic():
    it = S.sort_items(50, 300, seed=3)
    assert np.array_equal(it, S.sort_items(50, 300, seed=3))
    assert np.array_equal(it[:, 2], (it[:, 0] < it[:, 1]).astype(int))
    assert np.array_equal(it[:, 3], np.abs(it[:, 0] - it[:, 1]))
    assert 0.35 < it[:, 2].mean() < 0.65 and (it[:, 3] >= 1).all() and it[:, :2].max() < 50


def test_conditions():
    text = S.book(3000)
    segs = S.segments(text, 32)
    it = S.sort_items(len(segs), 200, seed=0)
    assert S.accuracy(S.answer_in_context(segs, it, text), it) > 0.9
    assert S.accuracy(S.answer_retrieved(segs, it, S.ChunkStore(text, 64, 16)), it) > 0.9
    assert 0.35 < S.accuracy(S.answer_none(it, 0), it) < 0.65
    # flipping the answers of a perfect oracle gives 0
    assert S.accuracy(1 - it[:, 2], it) == 0.0


def test_embedder_normalised_and_deterministic():
    e = S.HashEmbedder(256).fit(["abc def", "ghi"])
    x = e.encode(["abc def", "zzz top"])
    assert x.shape == (2, 256) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.array_equal(x, S.HashEmbedder(256).fit(["abc def", "ghi"]).encode(["abc def", "zzz top"]))


@pytest.mark.parametrize("call,name", [(lambda: S.segments("x" * 100, 0), "seg_len"),
                                       (lambda: S.sort_items(1, 5), "n_segments"),
                                       (lambda: S.book(0), "n_chars")])
def test_bad_args(call, name):
    with pytest.raises(ValueError, match=name):
        call()
