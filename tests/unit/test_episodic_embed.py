"""labkit.episodic.embed: the embedder interface, the hashing stand-in, and (slow) the real MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.episodic.embed import Embedder, HashingEmbedder, MiniLMEmbedder, get_embedder, normalize_rows


def test_hashing_shape_dtype_unit_rows_and_determinism():
    e = HashingEmbedder(dim=64, seed=3)
    texts = ["the cat sat", "a dog barked loudly", "", "!!!"]
    x = e.encode(texts)
    assert x.shape == (4, 64) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x[:2], axis=1), 1.0, atol=1e-6)
    assert np.all(x[2:] == 0)  # no word characters: a zero row, not NaN
    assert np.array_equal(x, HashingEmbedder(dim=64, seed=3).encode(texts))  # fresh instance, same vectors
    assert not np.allclose(x[:2], HashingEmbedder(dim=64, seed=4).encode(texts[:2]))
    assert e.encode([]).shape == (0, 64)
    assert isinstance(e, Embedder) and e.name != HashingEmbedder(dim=64, seed=4).name


def test_hashing_is_lexical_similarity():
    e = HashingEmbedder(dim=512, seed=0)
    a, b, c = e.encode(["Alice moved to Paris in May", "In May Alice moved to Paris", "stock prices fell sharply"])
    assert a @ b == pytest.approx(1.0, abs=1e-6)  # bag of words: order does not matter
    assert a @ c < 0.3
    x, y = e.encode(["running", "runner"])
    assert x @ y > 0.2  # shared trigrams make spellings close


def test_hashing_matches_explicit_feature_sum():
    e = HashingEmbedder(dim=32, seed=1)
    text = "Hello hello world"
    v = np.zeros(32)
    for f, w in e.features(text):
        j, s = e._bucket(f)
        v[j] += s * w
    assert np.allclose(e.encode([text])[0], v / np.linalg.norm(v), atol=1e-6)
    assert ("w:hello", 2.0) in e.features(text) and ("c:#he", 1.0) in e.features(text)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim must be an int >= 8, got 4"):
        HashingEmbedder(dim=4)
    with pytest.raises(TypeError, match="single str"):
        HashingEmbedder().encode("just one")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        HashingEmbedder().encode(["ok", 3])
    with pytest.raises(ValueError, match="name must be 'minilm' or 'hashing'"):
        get_embedder("bert")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        MiniLMEmbedder(batch_size=0)
    with pytest.raises(ValueError, match="2-D"):
        normalize_rows(np.ones(3))


def test_get_embedder_builds_lazily():
    e = get_embedder("hashing", dim=16)
    assert isinstance(e, HashingEmbedder) and e.dim == 16
    m = get_embedder("minilm")
    assert isinstance(m, MiniLMEmbedder) and m.dim == 384 and m.name == "all-MiniLM-L6-v2"  # nothing loaded yet


@pytest.mark.slow
def test_minilm_is_semantic():
    import torch

    torch.set_num_threads(1)
    m = MiniLMEmbedder(threads=1, batch_size=2)
    x = m.encode(["a dog barks", "the puppy is barking", "stock prices fell", "A DOG BARKS"])
    assert x.shape == (4, 384) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2  # paraphrase closer than an unrelated sentence
    h = HashingEmbedder().encode(["a dog barks", "the puppy is barking", "stock prices fell"])
    assert h[0] @ h[1] < 0.5  # the hashing stand-in does not see it (not semantic)
    assert m.loaded and np.allclose(m.encode(["a dog barks"]), x[:1], atol=1e-5)  # batching does not change vectors


def test_model_loading_hides_and_restores_the_progress_bar():
    from labkit.episodic.embed import _quiet_transformers

    tlog = pytest.importorskip("transformers.utils.logging")
    was = tlog.is_progress_bar_enabled()
    try:
        tlog.enable_progress_bar()
        with _quiet_transformers():
            assert not tlog.is_progress_bar_enabled()  # no "Loading weights" widget in the notebooks
        assert tlog.is_progress_bar_enabled()
        tlog.disable_progress_bar()
        with _quiet_transformers():
            pass
        assert not tlog.is_progress_bar_enabled()  # a setting the user chose stays as it was
    finally:
        (tlog.enable_progress_bar if was else tlog.disable_progress_bar)()
